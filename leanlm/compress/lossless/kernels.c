/* Decoders of the leanlm lossless format, version 2 (the encoders are in numba: see rans32.py, huffman.py).
 *
 * Built on first use by cext.py with the system C compiler into the leanlm cache directory, loaded with
 * ctypes (which releases the GIL during every call, so chunks decode on parallel threads). One entry point
 * decodes one chunk of one tensor straight into the caller's destination buffer:
 *
 *   ll_decode_chunk(words, nwords, rows, nfields, tables, ntables, patt, pstride, bits, pb,
 *                   n, out, width, isa, scratch, scratch_bytes)  ->  0, or (field << 8 | error code)
 *
 * (scratch: ll_scratch_bytes() bytes of the caller's, one buffer per thread)
 *
 * Field modes (rows: mode, word offset, word count, aux): CONST (aux = symbol), RAW (bit-packed LSB-first,
 * `bits` wide), RANS32 (32 interleaved 32-bit rANS states, 16-bit renormalisation words, aux = table
 * offset), HUFF (4 interleaved canonical Huffman bit streams, lengths <= 12, aux = table offset).
 * Stream layouts are specified in rans32.py and huffman.py. Every read is bounds-checked (the SIMD loops
 * run only while a whole round of reads is in bounds; the tails are scalar and checked); a stream is
 * accepted only when it ends exactly where the encoder ended it.
 *
 * isa: 0 = best available (runtime CPU dispatch), 1 = portable scalar, 2 = AVX2, 3 = AVX-512 (F).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define LL_X86 1
#else
#define LL_X86 0
#endif

enum { M_CONST = 0, M_RAW = 1, M_RANS64 = 2, M_RANS32 = 3, M_HUFF = 4 };
enum { E_SHORT = 1, E_STATE = 2, E_TABLE = 3, E_RAW = 4, E_MODE = 5, E_RANGE = 6, E_MEM = 7, E_ISA = 8 };
enum { ISA_BEST = 0, ISA_SCALAR = 1, ISA_AVX2 = 2, ISA_AVX512 = 3 };

#define LANES 32
#define RANS_L (1u << 16)
#define BLOCK 2048            /* values per L1-sized decode block */
#define HSTREAMS 4
#define HBLOCK 1024           /* values per Huffman block; block b belongs to stream b % 4 */
#define HBITS 12              /* Huffman lookup width = maximum code length */
#define MAX_RAW 3             /* raw fields merged in the same pass as the coded field */

typedef struct {
    const uint8_t *bytes;     /* packed words of the field */
    int bits;                 /* 1, 2, 4 or 8 */
    const uint32_t *patt;     /* value -> bits in the output */
} raw_field;

/* ------------------------------------------------------------------------------ merge / raw */

/* One raw field of 1, 2, 4 or 8 bits ORed into a block already holding the coded field (L1-resident). */
#define RAW_LOOP(T, B)                                                                         \
    do {                                                                                       \
        const uint8_t *src = r->bytes;                                                         \
        for (int64_t k = 0; k < cnt; k++) {                                                    \
            int64_t i = base + k;                                                              \
            o[k] |= (T)p[(src[(i * B) >> 3] >> ((i * B) & 7)) & ((1u << B) - 1)];              \
        }                                                                                      \
    } while (0)

#define MERGE_BLOCK(T)                                                                         \
    do {                                                                                       \
        T *o = (T *)out + base;                                                                \
        if (first) for (int64_t k = 0; k < cnt; k++) o[k] = (T)map[idx[k]];                    \
        else for (int64_t k = 0; k < cnt; k++) o[k] |= (T)map[idx[k]];                         \
        for (int q = 0; q < nraw; q++) {                                                       \
            const raw_field *r = raw + q;                                                      \
            const uint32_t *p = r->patt;                                                       \
            switch (r->bits) {                                                                 \
            case 1: RAW_LOOP(T, 1); break;                                                     \
            case 2: RAW_LOOP(T, 2); break;                                                     \
            case 4: RAW_LOOP(T, 4); break;                                                     \
            default: RAW_LOOP(T, 8); break;                                                    \
            }                                                                                  \
        }                                                                                      \
    } while (0)

/* Copy a finished block to the destination; large aligned spans with non-temporal stores (no read for
 * ownership of destination lines that are about to be overwritten whole). */
static void store_block(uint8_t *dst, const uint8_t *src, int64_t nbytes) {
#if LL_X86
    if (nbytes >= 1024) {
        int64_t head = (16 - ((uintptr_t)dst & 15)) & 15;
        memcpy(dst, src, head);
        int64_t k = head;
        for (; k + 16 <= nbytes; k += 16)
            _mm_stream_si128((__m128i *)(dst + k), _mm_loadu_si128((const __m128i *)(src + k)));
        memcpy(dst + k, src + k, nbytes - k);
        return;
    }
#endif
    memcpy(dst, src, nbytes);
}

static void merge_into(void *out, int width, int first, int64_t base, int64_t cnt, const uint32_t *idx,
                       const uint32_t *map, const raw_field *raw, int nraw, int simd);

/* out[base + k] (=|) map[idx[k]] | raw fields, k < cnt. A first field is assembled in an L1 block and
 * streamed out; otherwise the destination is updated in place. */
static void merge(void *out, int width, int first, int64_t base, int64_t cnt, const uint32_t *idx,
                  const uint32_t *map, const raw_field *raw, int nraw, int simd) {
    if (!first || cnt > BLOCK * 2) { merge_into(out, width, first, base, cnt, idx, map, raw, nraw, simd); return; }
    uint32_t tmp[BLOCK * 2 + 16];
    uint8_t *t = (uint8_t *)tmp - (base * width & 15) + 16;   /* same alignment as the destination */
    merge_into(t - base * width, width, 1, base, cnt, idx, map, raw, nraw, simd);
    store_block((uint8_t *)out + base * width, t, cnt * width);
}

#if LL_X86
/* bf16 max with the raw nibble in bits 0-3 (patt = identity): 16 values per step, one gather of the slot's
 * pattern, the nibbles unpacked from 8 bytes; returns how many values it did (a multiple of 16). */
__attribute__((target("avx512f,avx512bw")))
static int64_t merge_nib16_avx512(uint16_t *o, const uint8_t *nb, int64_t cnt, const uint32_t *idx,
                                  const uint32_t *map) {
    const __m128i lo4 = _mm_set1_epi8(15);
    int64_t k = 0;
    for (; k + 16 <= cnt; k += 16) {
        __m512i v = _mm512_i32gather_epi32(_mm512_loadu_si512((const void *)(idx + k)), (const void *)map, 4);
        __m128i b = _mm_loadl_epi64((const __m128i *)(nb + (k >> 1)));
        __m128i n = _mm_unpacklo_epi8(_mm_and_si128(b, lo4), _mm_and_si128(_mm_srli_epi16(b, 4), lo4));
        v = _mm512_or_si512(v, _mm512_cvtepu8_epi32(n));
        _mm256_storeu_si256((__m256i *)(o + k), _mm512_cvtepi32_epi16(v));
    }
    return k;
}
#endif

static void merge_into(void *out, int width, int first, int64_t base, int64_t cnt, const uint32_t *idx,
                       const uint32_t *map, const raw_field *raw, int nraw, int simd) {
    if (width == 2 && first && nraw == 1 && raw[0].bits == 4 && !(base & 1)) {   /* bf16 / fp16 max */
        uint16_t *o = (uint16_t *)out + base;
        const uint8_t *nb = raw[0].bytes + (base >> 1);
        const uint32_t *p = raw[0].patt;
        int64_t done = 0;
#if LL_X86
        if (simd) done = merge_nib16_avx512(o, nb, cnt, idx, map);
#endif
        o += done; nb += done >> 1; idx += done; cnt -= done;
        for (int64_t k = 0; k + 1 < cnt; k += 2) {
            uint8_t b = nb[k >> 1];
            o[k] = (uint16_t)(map[idx[k]] | p[b & 15]);
            o[k + 1] = (uint16_t)(map[idx[k + 1]] | p[b >> 4]);
        }
        if (cnt & 1) o[cnt - 1] = (uint16_t)(map[idx[cnt - 1]] | p[nb[(cnt - 1) >> 1] & 15]);
        return;
    }
    if (width == 1) MERGE_BLOCK(uint8_t);
    else if (width == 2) MERGE_BLOCK(uint16_t);
    else MERGE_BLOCK(uint32_t);
}

/* Any-width raw field (1..16 bits), whole chunk. */
static int unpack(const uint32_t *w, int64_t nw, int bits, const uint32_t *patt, void *out, int width,
                  int first, int64_t n) {
    if (nw != (n * bits + 31) / 32) return E_RAW;
    uint64_t acc = 0;
    int nb = 0;
    int64_t p = 0;
    uint32_t m = (1u << bits) - 1;
    for (int64_t i = 0; i < n; i++) {
        if (nb < bits) { acc |= (uint64_t)w[p++] << nb; nb += 32; }
        uint32_t v = patt[acc & m];
        acc >>= bits;
        nb -= bits;
        if (width == 1) { uint8_t *o = out; o[i] = first ? (uint8_t)v : (uint8_t)(o[i] | v); }
        else if (width == 2) { uint16_t *o = out; o[i] = first ? (uint16_t)v : (uint16_t)(o[i] | v); }
        else { uint32_t *o = out; o[i] = first ? v : (o[i] | v); }
    }
    return 0;
}

static void fill_const(void *out, int width, int first, int64_t n, uint32_t v) {
    if (width == 1) { uint8_t *o = out; for (int64_t i = 0; i < n; i++) o[i] = first ? (uint8_t)v : (uint8_t)(o[i] | v); }
    else if (width == 2) { uint16_t *o = out; for (int64_t i = 0; i < n; i++) o[i] = first ? (uint16_t)v : (uint16_t)(o[i] | v); }
    else { uint32_t *o = out; for (int64_t i = 0; i < n; i++) o[i] = first ? v : (o[i] | v); }
}

/* ------------------------------------------------------------------------------ rANS32 tables */

/* Table at tables[at]: lo, count, freq[count] (sum 2**pb). lut[slot] = freq | (slot - cum) << 16;
 * smap[slot] = output pattern of the slot's symbol. */
static int rans_tables(const uint16_t *t, int64_t nt, int64_t at, const uint32_t *patt, int alphabet, int pb,
                       uint32_t *lut, uint32_t *smap) {
    if (at < 0 || at + 2 > nt) return E_TABLE;
    int64_t lo = t[at], cnt = t[at + 1];
    if (lo + cnt > alphabet || at + 2 + cnt > nt) return E_TABLE;
    int64_t total = 0;
    for (int64_t k = 0; k < cnt; k++) total += t[at + 2 + k];
    if (total != (1 << pb)) return E_TABLE;
    uint32_t slot = 0;
    for (int64_t k = 0; k < cnt; k++) {
        uint32_t f = t[at + 2 + k];
        if (f >= (1u << pb)) return E_TABLE;   /* a single symbol is a CONST field, never coded */
        for (uint32_t b = 0; b < f; b++, slot++) { lut[slot] = f | (b << 16); smap[slot] = patt[lo + k]; }
    }
    return 0;
}

/* ------------------------------------------------------------------------------ rANS32 decode */

typedef struct {
    const uint16_t *w;        /* renormalisation words */
    int64_t nw, ptr;
    uint32_t x[LANES];
} rans_state;

/* Stream: [nwords16] [32 states] [words16 (padded to u32)]. */
static int rans_open(const uint32_t *s, int64_t ns, rans_state *st) {
    if (ns < 1 + LANES) return E_SHORT;
    int64_t nw = s[0];
    if (ns != 1 + LANES + (nw + 1) / 2) return E_SHORT;
    for (int j = 0; j < LANES; j++) {
        st->x[j] = s[1 + j];
        if (st->x[j] < RANS_L) return E_STATE;
    }
    st->w = (const uint16_t *)(s + 1 + LANES);
    st->nw = nw;
    st->ptr = 0;
    return 0;
}

static const uint16_t ZERO16 = 0;

/* Scalar: `rounds` rounds of 32 symbols (and then `tail` < 32 symbols) -> slots into idx. Branch-free,
 * the renormalisation word read clamped in bounds; a stream that needed more words fails the end check. */
static void rans_scalar(rans_state *st, const uint32_t *lut, uint32_t mask, int pb, uint32_t *idx,
                        int64_t rounds, int tail) {
    const uint16_t *w = st->nw ? st->w : &ZERO16;
    int64_t last = st->nw ? st->nw - 1 : 0;
    int64_t ptr = st->ptr;
    uint32_t x[LANES];
    memcpy(x, st->x, sizeof x);
    for (int64_t r = 0; r <= rounds; r++) {
        int lanes = r < rounds ? LANES : tail;
        for (int j = 0; j < lanes; j++) {
            uint32_t s = x[j] & mask, e = lut[s];
            uint32_t y = (e & 0xFFFF) * (x[j] >> pb) + (e >> 16);
            uint32_t word = w[ptr < last ? ptr : last];
            int need = y < RANS_L;
            x[j] = need ? (y << 16) | word : y;
            ptr += need;
            *idx++ = s;
        }
    }
    memcpy(st->x, x, sizeof x);
    st->ptr = ptr;
}

#if LL_X86
/* AVX2: four 8-lane vectors per round; renormalisation words by one load + a permutation chosen by the
 * lane mask (the k lanes that need a word take the next k words in lane order). */
static uint32_t PERM8[256][8];
static int perm8_ready = 0;

static void perm8_init(void) {
    if (perm8_ready) return;
    for (int m = 0; m < 256; m++) {
        int k = 0;
        for (int j = 0; j < 8; j++) PERM8[m][j] = (m >> j & 1) ? (uint32_t)k++ : 0;
    }
    perm8_ready = 1;
}

__attribute__((target("avx2,bmi2,popcnt")))
static void rans_avx2(rans_state *st, const uint32_t *lut, uint32_t mask, int pb, uint32_t *idx, int64_t rounds) {
    __m256i x[4];
    for (int v = 0; v < 4; v++) x[v] = _mm256_loadu_si256((const __m256i *)(st->x + 8 * v));
    const __m256i vm = _mm256_set1_epi32((int)mask), lo16 = _mm256_set1_epi32(0xFFFF), zero = _mm256_setzero_si256();
    const __m128i sh = _mm_cvtsi32_si128(pb);
    int64_t ptr = st->ptr, r = 0;
    const uint16_t *w = st->w;
    for (; r < rounds && ptr + LANES <= st->nw; r++) {
        for (int v = 0; v < 4; v++) {
            __m256i s = _mm256_and_si256(x[v], vm);
            __m256i e = _mm256_i32gather_epi32((const int *)lut, s, 4);
            __m256i y = _mm256_add_epi32(_mm256_mullo_epi32(_mm256_and_si256(e, lo16), _mm256_srl_epi32(x[v], sh)),
                                         _mm256_srli_epi32(e, 16));
            __m256i need = _mm256_cmpeq_epi32(_mm256_srli_epi32(y, 16), zero);
            unsigned m = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(need));
            __m256i words = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(w + ptr)));
            words = _mm256_permutevar8x32_epi32(words, _mm256_loadu_si256((const __m256i *)PERM8[m]));
            x[v] = _mm256_blendv_epi8(y, _mm256_or_si256(_mm256_slli_epi32(y, 16), words), need);
            ptr += __builtin_popcount(m);
            _mm256_storeu_si256((__m256i *)(idx + 8 * v), s);
        }
        idx += LANES;
    }
    for (int v = 0; v < 4; v++) _mm256_storeu_si256((__m256i *)(st->x + 8 * v), x[v]);
    st->ptr = ptr;
    if (r < rounds) rans_scalar(st, lut, mask, pb, idx, rounds - r, 0);
}

/* One AVX-512 rANS step of 16 lanes: slots s = x & mask -> the new states; the renormalisation words are
 * expanded into the lanes that need them (*ptr advances by their count). */
__attribute__((target("avx512f,popcnt"), always_inline))
static inline __m512i rans16_step(__m512i x, __m512i s, const uint32_t *lut, __m128i sh, const uint16_t *w,
                                  int64_t *ptr) {
    const __m512i lo16 = _mm512_set1_epi32(0xFFFF), L = _mm512_set1_epi32(RANS_L);
    __m512i e = _mm512_i32gather_epi32(s, (const void *)lut, 4);
    __m512i y = _mm512_add_epi32(_mm512_mullo_epi32(_mm512_and_si512(e, lo16), _mm512_srl_epi32(x, sh)),
                                 _mm512_srli_epi32(e, 16));
    __mmask16 need = _mm512_cmplt_epu32_mask(y, L);
    __m512i words = _mm512_maskz_expand_epi32(need, _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(w + *ptr))));
    *ptr += __builtin_popcount((unsigned)need);
    return _mm512_mask_mov_epi32(y, need, _mm512_or_si512(_mm512_slli_epi32(y, 16), words));
}

/* AVX-512F: two 16-lane vectors per round. */
__attribute__((target("avx512f,popcnt")))
static void rans_avx512(rans_state *st, const uint32_t *lut, uint32_t mask, int pb, uint32_t *idx, int64_t rounds) {
    __m512i x[2];
    for (int v = 0; v < 2; v++) x[v] = _mm512_loadu_si512((const void *)(st->x + 16 * v));
    const __m512i vm = _mm512_set1_epi32((int)mask);
    const __m128i sh = _mm_cvtsi32_si128(pb);
    int64_t ptr = st->ptr, r = 0;
    for (; r < rounds && ptr + LANES <= st->nw; r++) {
        for (int v = 0; v < 2; v++) {
            __m512i s = _mm512_and_si512(x[v], vm);
            x[v] = rans16_step(x[v], s, lut, sh, st->w, &ptr);
            _mm512_storeu_si512((void *)(idx + 16 * v), s);
        }
        idx += LANES;
    }
    for (int v = 0; v < 2; v++) _mm512_storeu_si512((void *)(st->x + 16 * v), x[v]);
    st->ptr = ptr;
    if (r < rounds) rans_scalar(st, lut, mask, pb, idx, rounds - r, 0);
}

/* AVX-512, bf16 max fused: the rANS rounds and the merge in one loop (the pattern gather and the nibble
 * unpack are off the state chain, so they fill its latency); out[r * 32 + lane] = smap[slot] | nibble.
 * Returns the rounds done (it stops early where a whole round's words are not in bounds). */
__attribute__((target("avx512f,avx512bw,popcnt")))
static int64_t rans_avx512_fused(rans_state *st, const uint32_t *lut, const uint32_t *smap, uint32_t mask, int pb,
                                 const uint8_t *nb, uint16_t *o, int64_t rounds) {
    __m512i x[2];
    for (int v = 0; v < 2; v++) x[v] = _mm512_loadu_si512((const void *)(st->x + 16 * v));
    const __m512i vm = _mm512_set1_epi32((int)mask);
    const __m128i sh = _mm_cvtsi32_si128(pb), lo4 = _mm_set1_epi8(15);
    int64_t ptr = st->ptr, r = 0;
    for (; r < rounds && ptr + LANES <= st->nw; r++) {
        for (int v = 0; v < 2; v++) {
            __m512i s = _mm512_and_si512(x[v], vm);
            __m512i pat = _mm512_i32gather_epi32(s, (const void *)smap, 4);
            x[v] = rans16_step(x[v], s, lut, sh, st->w, &ptr);
            __m128i b = _mm_loadl_epi64((const __m128i *)(nb + 16 * r + 8 * v));
            __m128i n = _mm_unpacklo_epi8(_mm_and_si128(b, lo4), _mm_and_si128(_mm_srli_epi16(b, 4), lo4));
            pat = _mm512_or_si512(pat, _mm512_cvtepu8_epi32(n));
            _mm256_storeu_si256((__m256i *)(o + 32 * r + 16 * v), _mm512_cvtepi32_epi16(pat));
        }
    }
    for (int v = 0; v < 2; v++) _mm512_storeu_si512((void *)(st->x + 16 * v), x[v]);
    st->ptr = ptr;
    return r;
}
#endif

static int rans_end(const rans_state *st) {
    if (st->ptr > st->nw) return E_SHORT;
    for (int j = 0; j < LANES; j++) if (st->x[j] != RANS_L) return E_STATE;
    return st->ptr == st->nw ? 0 : E_STATE;
}

static int decode_rans32(const uint32_t *s, int64_t ns, const uint32_t *lut, const uint32_t *smap, int pb,
                         int64_t n, void *out, int width, int first, const raw_field *raw, int nraw, int isa,
                         uint32_t *idx) {
    rans_state st;
    int err = rans_open(s, ns, &st);
    if (err) return err;
    uint32_t mask = (1u << pb) - 1;
    int simd = 0;                     /* the vector merge: AVX-512, one 4-bit raw field in bits 0-3 */
    if (isa == ISA_AVX512 && width == 2 && first && nraw == 1 && raw[0].bits == 4) {
        simd = 1;
        for (uint32_t b = 0; b < 16; b++) simd &= raw[0].patt[b] == b;
    }
    for (int64_t base = 0; base < n; base += BLOCK) {
        int64_t cnt = n - base < BLOCK ? n - base : BLOCK;
        int64_t rounds = cnt / LANES;
        int tail = (int)(cnt % LANES);
#if LL_X86
        if (simd) {                   /* fused decode + merge straight into the destination, then the rest */
            int64_t done = rans_avx512_fused(&st, lut, smap, mask, pb, raw[0].bytes + (base >> 1),
                                             (uint16_t *)out + base, rounds);
            int64_t left = rounds - done;
            rans_scalar(&st, lut, mask, pb, idx, left, tail);
            if (left * LANES + tail)
                merge(out, width, first, base + done * LANES, left * LANES + tail, idx, smap, raw, nraw, 0);
            continue;
        }
        if (isa == ISA_AVX512) rans_avx512(&st, lut, mask, pb, idx, rounds);
        else if (isa == ISA_AVX2) rans_avx2(&st, lut, mask, pb, idx, rounds);
        else rans_scalar(&st, lut, mask, pb, idx, rounds, 0);
        if (tail) rans_scalar(&st, lut, mask, pb, idx + rounds * LANES, 0, tail);
#else
        rans_scalar(&st, lut, mask, pb, idx, rounds, tail);
#endif
#ifndef LL_NOMERGE
        merge(out, width, first, base, cnt, idx, smap, raw, nraw, simd);
#endif
    }
#if LL_X86
    _mm_sfence();
#endif
    return rans_end(&st);
}

/* ------------------------------------------------------------------------------ Huffman */

/* Table at tables[at]: lo, count, len[count] (0 = unused symbol, else 1..12, a complete prefix code).
 * Multi-symbol lookup: lut[12 bits] = up to 3 symbols (16 bits each) | bits used << 48 | count << 56;
 * one[12 bits] = the first symbol | its length << 16 (block tails). */
static int huff_tables(const uint16_t *t, int64_t nt, int64_t at, int alphabet, uint64_t *lut, uint32_t *one) {
    if (at < 0 || at + 2 > nt) return E_TABLE;
    int64_t lo = t[at], cnt = t[at + 1];
    if (lo + cnt > alphabet || at + 2 + cnt > nt || cnt < 2) return E_TABLE;
    int nlen[HBITS + 1] = {0};
    for (int64_t k = 0; k < cnt; k++) {
        if (t[at + 2 + k] > HBITS) return E_TABLE;
        nlen[t[at + 2 + k]]++;
    }
    nlen[0] = 0;
    uint32_t code = 0, next[HBITS + 2];
    int64_t kraft = 0;
    for (int l = 1; l <= HBITS; l++) {
        code = (code + nlen[l - 1]) << 1;
        next[l] = code;
        kraft += (int64_t)nlen[l] << (HBITS - l);
    }
    if (kraft != (1 << HBITS)) return E_TABLE;    /* not a complete prefix code */
    for (int64_t k = 0; k < cnt; k++) {
        int l = t[at + 2 + k];
        if (!l) continue;
        uint32_t c = next[l]++, rev = 0;
        for (int b = 0; b < l; b++) rev |= ((c >> b) & 1) << (l - 1 - b);
        for (uint32_t i = rev; i < (1u << HBITS); i += 1u << l) one[i] = (uint32_t)(lo + k) | (uint32_t)l << 16;
    }
    for (uint32_t i = 0; i < (1u << HBITS); i++) {
        uint64_t e = 0;
        int used = 0, c = 0;
        while (c < 3) {
            uint32_t o = one[(i >> used) & ((1u << HBITS) - 1)];
            int l = (int)(o >> 16);
            if (used + l > HBITS) break;
            e |= (uint64_t)(o & 0xFFFF) << (16 * c);
            used += l;
            c++;
        }
        lut[i] = e | (uint64_t)used << 48 | (uint64_t)c << 56;
    }
    return 0;
}

typedef struct {
    const uint8_t *b;
    int64_t nbytes, bits, pos;   /* stream bytes (padded by >= 8), bits written, bits read */
} bitin;

static inline uint64_t peek(const bitin *s) {
    int64_t p = s->pos >> 3;
    uint64_t v;
    if (p > s->nbytes - 8) p = s->nbytes - 8;   /* clamped: memory-safe; overruns fail the end check */
    memcpy(&v, s->b + p, 8);
    return v >> (s->pos & 7);
}

/* Stream: [bits of stream 0..3] [stream 0 bytes, padded: ceil(bits/8) + 8 rounded up to u32] ... */
static int decode_huff(const uint32_t *s, int64_t ns, const uint64_t *lut, const uint32_t *one, const uint32_t *smap, int64_t n,
                       void *out, int width, int first, const raw_field *raw, int nraw, uint32_t *idx) {
    if (ns < HSTREAMS) return E_SHORT;
    bitin st[HSTREAMS];
    int64_t at = HSTREAMS;
    for (int k = 0; k < HSTREAMS; k++) {
        int64_t nb = ((int64_t)s[k] + 7) / 8 + 8, nw = (nb + 3) / 4;
        if (at + nw > ns) return E_SHORT;
        st[k].b = (const uint8_t *)(s + at);
        st[k].nbytes = nw * 4;
        st[k].bits = s[k];
        st[k].pos = 0;
        at += nw;
    }
    if (at != ns) return E_STATE;
    const uint32_t M = (1u << HBITS) - 1;
    uint16_t sym[HSTREAMS * HBLOCK + 4];
    int plain = width == 2 && nraw == 1 && raw[0].bits == 8;   /* the bf16 fast layout, checked table by table */
    for (uint32_t a = 0; a < 256 && plain; a++)
        plain = smap[a] == a << 7 && raw[0].patt[a] == ((a & 0x7F) | ((a & 0x80) << 8));
    for (int64_t base = 0; base < n; base += HSTREAMS * HBLOCK) {
        int64_t total = n - base < HSTREAMS * HBLOCK ? n - base : HSTREAMS * HBLOCK;
        int64_t end[HSTREAMS], o[HSTREAMS];
        for (int k = 0; k < HSTREAMS; k++) {
            o[k] = (int64_t)k * HBLOCK < total ? (int64_t)k * HBLOCK : total;
            end[k] = (int64_t)(k + 1) * HBLOCK < total ? (int64_t)(k + 1) * HBLOCK : total;
        }
        /* lock-step while every stream has room for the 4 symbols an entry writes (independent chains
         * overlap); positions kept in locals so they stay in registers */
        {
            int64_t p0 = st[0].pos, p1 = st[1].pos, p2 = st[2].pos, p3 = st[3].pos;
            int64_t o0 = o[0], o1 = o[1], o2 = o[2], o3 = o[3];
            const int64_t e0 = end[0] - 4, e1 = end[1] - 4, e2 = end[2] - 4, e3 = end[3] - 4;
#define HSTEP(k, p, oo)                                                                        \
            {                                                                                  \
                int64_t b = p >> 3;                                                            \
                uint64_t v;                                                                    \
                if (b > st[k].nbytes - 8) b = st[k].nbytes - 8;                                \
                memcpy(&v, st[k].b + b, 8);                                                    \
                uint64_t e = lut[(v >> (p & 7)) & M];                                          \
                memcpy(sym + oo, &e, 8);                                                       \
                p += (e >> 48) & 0xFF;                                                         \
                oo += e >> 56;                                                                 \
            }
            while (o0 <= e0 && o1 <= e1 && o2 <= e2 && o3 <= e3) {
                HSTEP(0, p0, o0) HSTEP(1, p1, o1) HSTEP(2, p2, o2) HSTEP(3, p3, o3)
            }
#undef HSTEP
            st[0].pos = p0; st[1].pos = p1; st[2].pos = p2; st[3].pos = p3;
            o[0] = o0; o[1] = o1; o[2] = o2; o[3] = o3;
        }
        for (int k = 0; k < HSTREAMS; k++) {
            while (o[k] < end[k]) {                   /* tail: one symbol per lookup */
                uint32_t e = one[peek(&st[k]) & M];
                sym[o[k]++] = (uint16_t)e;
                st[k].pos += e >> 16;
            }
        }
        if (width == 2 && first && nraw == 1 && raw[0].bits == 8) {   /* bf16 fast: one pass, no copy */
            uint16_t tmp[HSTREAMS * HBLOCK + 8];
            const uint8_t *rb = raw[0].bytes + base;
            const uint32_t *p = raw[0].patt;
            if (plain) {   /* exponent in bits 7-14, the raw byte's bit 7 the sign: shifts, vectorised */
                for (int64_t k = 0; k < total; k++)
                    tmp[k] = (uint16_t)((sym[k] << 7) | (rb[k] & 0x7F) | ((rb[k] & 0x80) << 8));
            } else {
                for (int64_t k = 0; k < total; k++) tmp[k] = (uint16_t)(smap[sym[k]] | p[rb[k]]);
            }
            store_block((uint8_t *)out + base * 2, (const uint8_t *)tmp, total * 2);
            continue;
        }
        for (int64_t k = 0; k < total; k++) idx[k] = sym[k];
#ifndef LL_NOMERGE
        for (int64_t q = 0; q < total; q += BLOCK) {
            int64_t c = total - q < BLOCK ? total - q : BLOCK;
            merge(out, width, first, base + q, c, idx + q, smap, raw, nraw, 0);
        }
#endif
    }
#if LL_X86
    _mm_sfence();
#endif
    for (int k = 0; k < HSTREAMS; k++) if (st[k].pos != st[k].bits) return E_STATE;
    return 0;
}

/* ------------------------------------------------------------------------------ dispatch */

int ll_cpu_isa(void) {
#if LL_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return ISA_AVX512;
    if (__builtin_cpu_supports("avx2")) return ISA_AVX2;
#endif
    return ISA_SCALAR;
}

int ll_abi_version(void) { return 3; }

/* lut (2**15 u32) + smap (2**16 u32: also Huffman's symbol map) + idx (4 * HBLOCK + 64 u32) + Huffman lut */
#define LL_SCRATCH_BYTES ((int64_t)((1 << 15) + (1 << 16) + HSTREAMS * HBLOCK + 64) * 4 + ((int64_t)8 << HBITS))
int64_t ll_scratch_bytes(void) { return LL_SCRATCH_BYTES; }

int64_t ll_decode_chunk(const uint32_t *words, int64_t nwords, const int64_t *rows, int nfields,
                        const uint16_t *tables, int64_t ntables, const uint32_t *patt, int64_t pstride,
                        const int32_t *bits, int pb, int64_t n, void *out, int width, int isa,
                        void *scratch, int64_t scratch_bytes) {
    int best = ll_cpu_isa();
    if (isa == ISA_BEST) isa = best;
    if (isa > best) return E_ISA;
#if LL_X86
    if (isa == ISA_AVX2) perm8_init();
#endif
    if (pb < 8 || pb > 15 || nfields < 1 || (width != 1 && width != 2 && width != 4)) return E_TABLE;
    /* validate every row's word range */
    for (int f = 0; f < nfields; f++) {
        const int64_t *r = rows + 4 * f;
        if (r[1] < 0 || r[2] < 0 || r[1] + r[2] > nwords) return (int64_t)f << 8 | E_RANGE;
        if (bits[f] < 1 || bits[f] > 16 || pstride < (1 << bits[f])) return (int64_t)f << 8 | E_TABLE;
    }
    /* fused path: field 0 coded, every other field raw with 1/2/4/8 bits (merged in the same pass) */
    int fused = rows[0] == M_RANS32 || rows[0] == M_HUFF;
    int nraw = 0;
    raw_field raw[MAX_RAW];
    for (int f = 1; f < nfields && fused; f++) {
        const int64_t *r = rows + 4 * f;
        int b = bits[f];
        if (r[0] != M_RAW || nraw == MAX_RAW || !(b == 1 || b == 2 || b == 4 || b == 8)) { fused = 0; break; }
        if (r[2] != (n * b + 31) / 32) return (int64_t)f << 8 | E_RAW;
        raw[nraw].bytes = (const uint8_t *)(words + r[1]);
        raw[nraw].bits = b;
        raw[nraw].patt = patt + f * pstride;
        nraw++;
    }
    if (!fused) nraw = 0;
    /* scratch (caller's, reused across calls: no allocation here, so threads never meet in the allocator) */
    if (!scratch || scratch_bytes < LL_SCRATCH_BYTES) return E_MEM;
    uint32_t *lut = (uint32_t *)scratch, *smap = lut + (1 << 15), *idx = smap + (1 << 16);
    uint64_t *hlut = (uint64_t *)(idx + HSTREAMS * HBLOCK + 64);
    int64_t result = 0;
    int last = fused ? 1 : nfields;
    for (int f = 0; f < last && !result; f++) {
        const int64_t *r = rows + 4 * f;
        const uint32_t *p = patt + f * pstride, *w = words + r[1];
        int alphabet = 1 << bits[f], first = f == 0;
        int err = 0;
        const raw_field *rf = f == 0 ? raw : NULL;
        int nr = f == 0 ? nraw : 0;
        switch (r[0]) {
        case M_CONST:
            if (r[2] != 0 || r[3] < 0 || r[3] >= alphabet) { err = E_RANGE; break; }
            fill_const(out, width, first, n, p[r[3]]);
            break;
        case M_RAW:
            err = unpack(w, r[2], bits[f], p, out, width, first, n);
            break;
        case M_RANS32:
            err = rans_tables(tables, ntables, r[3], p, alphabet, pb, lut, smap);
            if (!err) err = decode_rans32(w, r[2], lut, smap, pb, n, out, width, first, rf, nr, isa, idx);
            break;
        case M_HUFF:
            err = huff_tables(tables, ntables, r[3], alphabet, hlut, lut);
            if (!err) {
                for (int a = 0; a < alphabet; a++) smap[a] = p[a];
                err = decode_huff(w, r[2], hlut, lut, smap, n, out, width, first, rf, nr, idx);
            }
            break;
        default:
            err = E_MODE;
        }
        if (err) result = (int64_t)f << 8 | err;
    }
    return result;
}
