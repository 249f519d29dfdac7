/* Decoders of the leanlm lossless format, version 2 (the encoders are in numba: see rans32.py, huffman.py).
 *
 * Built on first use by cext.py with the system C compiler into the leanlm cache directory, loaded with
 * ctypes (which releases the GIL during every call, so shares of chunks decode on parallel threads). One
 * entry point decodes a table of jobs, one job per chunk of any tensor, each straight into its destination:
 *
 *   ll_decode_jobs(jobs, njobs, isa, scratch, scratch_bytes)  ->  failed jobs (each job's status set:
 *                                                                 0, or field << 8 | error code)
 *   ll_decode_blocks(jobs, cuts, nblocks, next, isa, scratch, scratch_bytes)  ->  the same, for blocks of
 *                                                                 jobs that threads take in turn
 *
 * (ll_job below; scratch: ll_scratch_bytes() bytes of the caller's, one buffer per thread). Neighbouring
 * bf16 max-mode chunks decode two at a time in lock-step (four independent rANS state vectors), through a
 * one-lookup table (freq | bias | symbol), with scalar loads in place of gathers (measured faster on
 * this Zen 4: vpgatherdd is microcoded); Huffman streams read through 64-bit bit buffers refilled without
 * branches, up to 5 symbols of an 8-bit alphabet per lookup.
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
enum { FUSED_BF16 = 1, FUSED_F16 = 2 };   /* fused_case's answers */

#define LANES 32
#define RANS_L (1u << 16)
#define BLOCK 2048            /* values per L1-sized decode block */
#define HSTREAMS 4
#define HBLOCK 1024           /* values per Huffman block; block b belongs to stream b % 4 */
#define HBITS 12              /* Huffman lookup width = maximum code length */
#define HNARROW 5             /* symbols per lookup entry for alphabets of <= 256 symbols */
#define MAX_RAW 3             /* raw fields merged in the same pass as the coded field */

typedef struct {
    const uint8_t *bytes;     /* packed words of the field */
    int bits;                 /* 1, 2, 4 or 8 */
    const uint32_t *patt;     /* value -> bits in the output */
    int shift;                /* patt[v] == v << shift for every v (then merged by shifts), else -1 */
} raw_field;

/* ------------------------------------------------------------------------------ merge / raw */

/* One raw field of 1, 2, 4 or 8 bits ORed into a block already holding the coded field (L1-resident): a
 * byte field whose pattern is a shift (fp32's low mantissa bytes) by shifts, which gcc vectorises (1.3x the
 * whole fp32 decode; narrower fields by shifts measured slower than the table); the others through the
 * pattern table. */
#define RAW_LOOP(T, B)                                                                         \
    do {                                                                                       \
        const uint8_t *src = r->bytes;                                                         \
        const int sh = r->shift;                                                               \
        if (sh >= 0 && B == 8) {                                                               \
            const uint8_t *s8 = src + base;                                                    \
            for (int64_t k = 0; k < cnt; k++) o[k] |= (T)((T)s8[k] << sh);                     \
        } else {                                                                               \
            for (int64_t k = 0; k < cnt; k++) {                                                \
                int64_t i = base + k;                                                          \
                o[k] |= (T)p[(src[(i * B) >> 3] >> ((i * B) & 7)) & ((1u << B) - 1)];          \
            }                                                                                  \
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
                       const uint32_t *map, const raw_field *raw, int nraw);

/* out[base + k] (=|) map[idx[k]] | raw fields, k < cnt. A first field is assembled in an L1 block and
 * streamed out; otherwise the destination is updated in place. */
static void merge(void *out, int width, int first, int64_t base, int64_t cnt, const uint32_t *idx,
                  const uint32_t *map, const raw_field *raw, int nraw) {
    if (!first || cnt > BLOCK * 2) { merge_into(out, width, first, base, cnt, idx, map, raw, nraw); return; }
    uint32_t tmp[BLOCK * 2 + 16];
    uint8_t *t = (uint8_t *)tmp - (base * width & 15) + 16;   /* same alignment as the destination */
    merge_into(t - base * width, width, 1, base, cnt, idx, map, raw, nraw);
    store_block((uint8_t *)out + base * width, t, cnt * width);
}


static void merge_into(void *out, int width, int first, int64_t base, int64_t cnt, const uint32_t *idx,
                       const uint32_t *map, const raw_field *raw, int nraw) {
    if (width == 2 && first && nraw == 1 && raw[0].bits == 4 && !(base & 1)) {   /* bf16 / fp16 max */
        uint16_t *o = (uint16_t *)out + base;
        const uint8_t *nb = raw[0].bytes + (base >> 1);
        const uint32_t *p = raw[0].patt;
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

/* A frequency table at tables[at] (lo, count, freq[count]) within bounds, its frequencies summing to 2**pb,
 * none the whole range (a single symbol is a CONST field, never coded); its lo, count and largest freq. */
static int table_check(const uint16_t *t, int64_t nt, int64_t at, int alphabet, int pb, int64_t *lo, int64_t *cnt,
                       uint32_t *fmax) {
    if (at < 0 || at + 2 > nt) return E_TABLE;
    *lo = t[at];
    *cnt = t[at + 1];
    if (*lo + *cnt > alphabet || at + 2 + *cnt > nt) return E_TABLE;
    int64_t total = 0;
    *fmax = 0;
    for (int64_t k = 0; k < *cnt; k++) {
        total += t[at + 2 + k];
        if (t[at + 2 + k] > *fmax) *fmax = t[at + 2 + k];
    }
    if (total != (1 << pb) || *fmax >= (1u << pb)) return E_TABLE;
    return 0;
}

/* Table at tables[at]: lo, count, freq[count] (sum 2**pb). lut[slot] = freq | (slot - cum) << 16;
 * smap[slot] = output pattern of the slot's symbol. */
static int rans_tables(const uint16_t *t, int64_t nt, int64_t at, const uint32_t *patt, int alphabet, int pb,
                       uint32_t *lut, uint32_t *smap) {
    int64_t lo, cnt;
    uint32_t fmax;
    int err = table_check(t, nt, at, alphabet, pb, &lo, &cnt, &fmax);
    if (err) return err;
    uint32_t slot = 0;
    for (int64_t k = 0; k < cnt; k++) {
        uint32_t f = t[at + 2 + k];
        for (uint32_t b = 0; b < f; b++, slot++) { lut[slot] = f | (b << 16); smap[slot] = patt[lo + k]; }
    }
    return 0;
}

/* The bf16 fused table: one 32-bit entry per slot, freq | (slot - cum) << 10 | symbol << 20, so the decoder
 * needs one gather per value (the pattern follows from the symbol by shifts, see fused_case). Possible when
 * every frequency is below 2**10 (a symbol of at most 1/16 of the values at pb = 14: the rule for
 * exponent-and-mantissa symbols); returns 0, -1 when a frequency is too large (use rans_tables), or an
 * error code. */
#if LL_X86
/* The fused table's slots 8 at a time (on AVX-512 too: a 16-wide fill measured no faster); each symbol's
 * run is written in whole vectors (up to 7 slots past its end, overwritten by the next symbol's run or left
 * in the slack past 2**pb: the scratch holds 2**15 + 64 bytes). */
__attribute__((target("avx2")))
static void fill_fused_avx2(uint32_t *lut, const uint16_t *freq, int64_t cnt, int64_t lo) {
    const __m256i iota = _mm256_slli_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), 10);
    const __m256i step = _mm256_set1_epi32(8 << 10);
    uint32_t slot = 0;
    for (int64_t k = 0; k < cnt; k++) {
        uint32_t f = freq[k];
        __m256i v = _mm256_add_epi32(_mm256_set1_epi32((int)(f | (uint32_t)(lo + k) << 20)), iota);
        for (uint32_t b = 0; b < f; b += 8, v = _mm256_add_epi32(v, step))
            _mm256_storeu_si256((__m256i *)(lut + slot + b), v);
        slot += f;
    }
}
#endif

static int rans_table_fused(const uint16_t *t, int64_t nt, int64_t at, int alphabet, int pb, uint32_t *lut, int isa) {
    int64_t lo, cnt;
    uint32_t fmax;
    int err = table_check(t, nt, at, alphabet, pb, &lo, &cnt, &fmax);
    if (err) return err;
    if (fmax >= 1024) return -1;
#if LL_X86
    if (isa == ISA_AVX512 || isa == ISA_AVX2) { fill_fused_avx2(lut, t + at + 2, cnt, lo); return 0; }
#endif
    uint32_t slot = 0;
    for (int64_t k = 0; k < cnt; k++) {
        uint32_t f = t[at + 2 + k], sym = (uint32_t)(lo + k) << 20;
        for (uint32_t b = 0; b < f; b++, slot++) lut[slot] = f | b << 10 | sym;
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

/* The AVX2 renormalisation of 8 new states y: the lanes below RANS_L take the next words in lane order
 * (one load + a PERM8 permutation); *ptr advances by their count. */
__attribute__((target("avx2,bmi2,popcnt"), always_inline))
static inline __m256i renorm8(__m256i y, const uint16_t *w, int64_t *ptr) {
    __m256i need = _mm256_cmpeq_epi32(_mm256_srli_epi32(y, 16), _mm256_setzero_si256());
    unsigned m = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(need));
    __m256i words = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(w + *ptr)));
    words = _mm256_permutevar8x32_epi32(words, _mm256_loadu_si256((const __m256i *)PERM8[m]));
    *ptr += __builtin_popcount(m);
    return _mm256_blendv_epi8(y, _mm256_or_si256(_mm256_slli_epi32(y, 16), words), need);
}

__attribute__((target("avx2,bmi2,popcnt")))
static void rans_avx2(rans_state *st, const uint32_t *lut, uint32_t mask, int pb, uint32_t *idx, int64_t rounds) {
    __m256i x[4];
    for (int v = 0; v < 4; v++) x[v] = _mm256_loadu_si256((const __m256i *)(st->x + 8 * v));
    const __m256i vm = _mm256_set1_epi32((int)mask), lo16 = _mm256_set1_epi32(0xFFFF);
    const __m128i sh = _mm_cvtsi32_si128(pb);
    int64_t ptr = st->ptr, r = 0;
    const uint16_t *w = st->w;
    for (; r < rounds && ptr + LANES <= st->nw; r++) {
        for (int v = 0; v < 4; v++) {
            __m256i s = _mm256_and_si256(x[v], vm);
            __m256i e = _mm256_i32gather_epi32((const int *)lut, s, 4);
            __m256i y = _mm256_add_epi32(_mm256_mullo_epi32(_mm256_and_si256(e, lo16), _mm256_srl_epi32(x[v], sh)),
                                         _mm256_srli_epi32(e, 16));
            x[v] = renorm8(y, w, &ptr);
            _mm256_storeu_si256((__m256i *)(idx + 8 * v), s);
        }
        idx += LANES;
    }
    for (int v = 0; v < 4; v++) _mm256_storeu_si256((__m256i *)(st->x + 8 * v), x[v]);
    st->ptr = ptr;
    if (r < rounds) rans_scalar(st, lut, mask, pb, idx, rounds - r, 0);
}

/* AVX2, bf16 max fused (the AVX-512 path's design on 8-lane vectors): one table lookup per value as 8
 * scalar loads assembled in registers by extract / insert (stores to a buffer and one vector load stall on
 * store forwarding, 6-8% slower; vpgatherdd ~5% slower), renorm8, the output pattern from the symbol by
 * shifts, merged with the raw nibbles; returns the 8 values as 32-bit lanes (the caller packs two). */
__attribute__((target("avx2,bmi2,popcnt"), always_inline))
static inline __m256i fused8(__m256i *xp, __m256i vm, const uint32_t *lut, __m128i sh, const uint16_t *w,
                             int64_t *ptr, const uint8_t *nb) {
    const __m256i m10 = _mm256_set1_epi32(0x3FF), one = _mm256_set1_epi32(1);
    const __m128i lo4 = _mm_set1_epi8(15);
    __m256i x = *xp;
    __m256i sv = _mm256_and_si256(x, vm);
    __m128i slo = _mm256_castsi256_si128(sv), shi = _mm256_extracti128_si256(sv, 1);
    uint64_t s0 = (uint64_t)_mm_cvtsi128_si64(slo), s1 = (uint64_t)_mm_extract_epi64(slo, 1);
    uint64_t s2 = (uint64_t)_mm_cvtsi128_si64(shi), s3 = (uint64_t)_mm_extract_epi64(shi, 1);
    __m128i elo = _mm_cvtsi32_si128((int)lut[(uint32_t)s0]);
    elo = _mm_insert_epi32(elo, (int)lut[s0 >> 32], 1);
    elo = _mm_insert_epi32(elo, (int)lut[(uint32_t)s1], 2);
    elo = _mm_insert_epi32(elo, (int)lut[s1 >> 32], 3);
    __m128i ehi = _mm_cvtsi32_si128((int)lut[(uint32_t)s2]);
    ehi = _mm_insert_epi32(ehi, (int)lut[s2 >> 32], 1);
    ehi = _mm_insert_epi32(ehi, (int)lut[(uint32_t)s3], 2);
    ehi = _mm_insert_epi32(ehi, (int)lut[s3 >> 32], 3);
    __m256i e = _mm256_inserti128_si256(_mm256_castsi128_si256(elo), ehi, 1);
    __m256i y = _mm256_add_epi32(_mm256_mullo_epi32(_mm256_and_si256(e, m10), _mm256_srl_epi32(x, sh)),
                                 _mm256_and_si256(_mm256_srli_epi32(e, 10), m10));
    *xp = renorm8(y, w, ptr);
    __m256i sym = _mm256_srli_epi32(e, 20);
    __m256i pat = _mm256_or_si256(_mm256_slli_epi32(_mm256_and_si256(sym, one), 15),
                                  _mm256_slli_epi32(_mm256_srli_epi32(sym, 1), 4));
    __m128i b = _mm_cvtsi32_si128(*(const int32_t *)nb);
    __m128i n = _mm_unpacklo_epi8(_mm_and_si128(b, lo4), _mm_and_si128(_mm_srli_epi16(b, 4), lo4));
    return _mm256_or_si256(pat, _mm256_cvtepu8_epi32(n));
}

/* 16 values (two vectors of 32-bit lanes, each < 2**16) -> 16 uint16 in order. */
__attribute__((target("avx2"), always_inline))
static inline void store16(uint16_t *o, __m256i a, __m256i b) {
    __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xD8);
    _mm256_storeu_si256((__m256i *)o, p);
}

/* Returns the rounds done (it stops early where a whole round's words are not in bounds). */
__attribute__((target("avx2,bmi2,popcnt")))
static int64_t rans_avx2_fused(rans_state *st, const uint32_t *lut, uint32_t mask, int pb,
                               const uint8_t *nb, uint16_t *o, int64_t rounds) {
    __m256i x[4];
    for (int v = 0; v < 4; v++) x[v] = _mm256_loadu_si256((const __m256i *)(st->x + 8 * v));
    const __m256i vm = _mm256_set1_epi32((int)mask);
    const __m128i sh = _mm_cvtsi32_si128(pb);
    int64_t ptr = st->ptr, r = 0;
    for (; r < rounds && ptr + LANES <= st->nw; r++) {
        const uint8_t *b = nb + 16 * r;
        __m256i p0 = fused8(&x[0], vm, lut, sh, st->w, &ptr, b);
        __m256i p1 = fused8(&x[1], vm, lut, sh, st->w, &ptr, b + 4);
        store16(o + 32 * r, p0, p1);
        __m256i p2 = fused8(&x[2], vm, lut, sh, st->w, &ptr, b + 8);
        __m256i p3 = fused8(&x[3], vm, lut, sh, st->w, &ptr, b + 12);
        store16(o + 32 * r + 16, p2, p3);
    }
    for (int v = 0; v < 4; v++) _mm256_storeu_si256((__m256i *)(st->x + 8 * v), x[v]);
    st->ptr = ptr;
    return r;
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

/* AVX-512, bf16 max fused: the rANS rounds and the merge in one loop, one table lookup per value (the
 * combined table of rans_table_fused) done as 16 scalar loads, not a vpgatherdd (microcoded on Zen 4). The
 * slots go through memory: one vector store, eight 64-bit loads (two slots each; `volatile` keeps gcc from
 * turning them back into 16 vpextrd + GPR/XMM moves, which cost 1.25x the time of the whole decode on
 * MiniLM), and the entries are loaded straight into lanes (vmovd / vpinsrd). out = pattern(symbol) | nibble,
 * pattern(sym) = sign (sym & 1) in bit 15, sym >> 1 in bits 4-14. (On AVX2 the same memory round trip was
 * 6% slower than fused8's register extracts, so fused8 keeps those.) */
__attribute__((target("avx512f,avx512bw,popcnt"), always_inline))
static inline __m512i fused16(__m512i x, __m512i vm, const uint32_t *lut, __m128i sh, const uint16_t *w,
                              int64_t *ptr, const uint8_t *nb, const uint8_t *tb, uint16_t *o, const int kind) {
    const __m128i lo4 = _mm_set1_epi8(15);
    const __m512i m10 = _mm512_set1_epi32(0x3FF), L = _mm512_set1_epi32(RANS_L), one = _mm512_set1_epi32(1);
    uint64_t sl[8] __attribute__((aligned(64)));
    _mm512_store_si512((void *)sl, _mm512_and_si512(x, vm));
    const volatile uint64_t *vs = sl;
    __m128i q[4];
    for (int k = 0; k < 4; k++) {
        uint64_t a = vs[2 * k], b = vs[2 * k + 1];
        __m128i v = _mm_cvtsi32_si128((int)lut[(uint32_t)a]);
        v = _mm_insert_epi32(v, (int)lut[a >> 32], 1);
        v = _mm_insert_epi32(v, (int)lut[(uint32_t)b], 2);
        q[k] = _mm_insert_epi32(v, (int)lut[b >> 32], 3);
    }
    __m512i e = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_inserti128_si256(_mm256_castsi128_si256(q[0]), q[1], 1)),
                                   _mm256_inserti128_si256(_mm256_castsi128_si256(q[2]), q[3], 1), 1);
    __m512i y = _mm512_add_epi32(_mm512_mullo_epi32(_mm512_and_si512(e, m10), _mm512_srl_epi32(x, sh)),
                                 _mm512_and_si512(_mm512_srli_epi32(e, 10), m10));
    __mmask16 need = _mm512_cmplt_epu32_mask(y, L);
    __m512i words = _mm512_maskz_expand_epi32(need, _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(w + *ptr))));
    *ptr += __builtin_popcount((unsigned)need);
    x = _mm512_mask_mov_epi32(y, need, _mm512_or_si512(_mm512_slli_epi32(y, 16), words));
    __m512i sym = _mm512_srli_epi32(e, 20);
    __m512i pat = _mm512_or_si512(_mm512_slli_epi32(_mm512_and_si512(sym, one), 15),
                                  _mm512_slli_epi32(_mm512_srli_epi32(sym, 1), kind == FUSED_F16 ? 6 : 4));
    if (kind == FUSED_F16) {          /* the 2-bit field (bits 4-5): 16 values in 4 bytes, 2 bits each */
        uint32_t t;
        memcpy(&t, tb, 4);
        const __m512i shifts = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        __m512i two = _mm512_and_si512(_mm512_srlv_epi32(_mm512_set1_epi32((int)t), shifts), _mm512_set1_epi32(3));
        pat = _mm512_or_si512(pat, _mm512_slli_epi32(two, 4));
    }
    __m128i b = _mm_loadl_epi64((const __m128i *)nb);
    __m128i n = _mm_unpacklo_epi8(_mm_and_si128(b, lo4), _mm_and_si128(_mm_srli_epi16(b, 4), lo4));
    pat = _mm512_or_si512(pat, _mm512_cvtepu8_epi32(n));
    _mm256_storeu_si256((__m256i *)o, _mm512_cvtepi32_epi16(pat));
    return x;
}

/* Returns the rounds done (it stops early where a whole round's words are not in bounds). */
__attribute__((target("avx512f,avx512bw,popcnt")))
static int64_t rans_avx512_fused(rans_state *st, const uint32_t *lut, uint32_t mask, int pb,
                                 const uint8_t *nb, const uint8_t *tb, uint16_t *o, int64_t rounds, int kind) {
    __m512i x0 = _mm512_loadu_si512((const void *)st->x), x1 = _mm512_loadu_si512((const void *)(st->x + 16));
    const __m512i vm = _mm512_set1_epi32((int)mask);
    const __m128i sh = _mm_cvtsi32_si128(pb);
    int64_t ptr = st->ptr, r = 0;
    for (; r < rounds && ptr + LANES <= st->nw; r++) {   /* kind is constant in each loop (two copies) */
        if (kind == FUSED_F16) {
            x0 = fused16(x0, vm, lut, sh, st->w, &ptr, nb + 16 * r, tb + 8 * r, o + 32 * r, FUSED_F16);
            x1 = fused16(x1, vm, lut, sh, st->w, &ptr, nb + 16 * r + 8, tb + 8 * r + 4, o + 32 * r + 16, FUSED_F16);
        } else {
            x0 = fused16(x0, vm, lut, sh, st->w, &ptr, nb + 16 * r, NULL, o + 32 * r, FUSED_BF16);
            x1 = fused16(x1, vm, lut, sh, st->w, &ptr, nb + 16 * r + 8, NULL, o + 32 * r + 16, FUSED_BF16);
        }
    }
    _mm512_storeu_si512((void *)st->x, x0);
    _mm512_storeu_si512((void *)(st->x + 16), x1);
    st->ptr = ptr;
    return r;
}

/* Two chunks in lock-step: four independent state vectors per round instead of two, so one chunk's gathers
 * and multiplies fill the other's latency (the state chain, not throughput, bounds one chunk). */
__attribute__((target("avx512f,avx512bw,popcnt")))
static int64_t rans_avx512_fused2(rans_state *sa, rans_state *sb, const uint32_t *luta, const uint32_t *lutb,
                                  uint32_t mask, int pb, const uint8_t *nba, const uint8_t *nbb,
                                  const uint8_t *tba, const uint8_t *tbb, uint16_t *oa, uint16_t *ob, int64_t rounds,
                                  int kind) {
    __m512i a0 = _mm512_loadu_si512((const void *)sa->x), a1 = _mm512_loadu_si512((const void *)(sa->x + 16));
    __m512i b0 = _mm512_loadu_si512((const void *)sb->x), b1 = _mm512_loadu_si512((const void *)(sb->x + 16));
    const __m512i vm = _mm512_set1_epi32((int)mask);
    const __m128i sh = _mm_cvtsi32_si128(pb);
    int64_t pa = sa->ptr, pbb = sb->ptr, r = 0;
    for (; r < rounds && pa + LANES <= sa->nw && pbb + LANES <= sb->nw; r++) {   /* kind constant per copy */
        if (kind == FUSED_F16) {
            a0 = fused16(a0, vm, luta, sh, sa->w, &pa, nba + 16 * r, tba + 8 * r, oa + 32 * r, FUSED_F16);
            b0 = fused16(b0, vm, lutb, sh, sb->w, &pbb, nbb + 16 * r, tbb + 8 * r, ob + 32 * r, FUSED_F16);
            a1 = fused16(a1, vm, luta, sh, sa->w, &pa, nba + 16 * r + 8, tba + 8 * r + 4, oa + 32 * r + 16, FUSED_F16);
            b1 = fused16(b1, vm, lutb, sh, sb->w, &pbb, nbb + 16 * r + 8, tbb + 8 * r + 4, ob + 32 * r + 16, FUSED_F16);
        } else {
            a0 = fused16(a0, vm, luta, sh, sa->w, &pa, nba + 16 * r, NULL, oa + 32 * r, FUSED_BF16);
            b0 = fused16(b0, vm, lutb, sh, sb->w, &pbb, nbb + 16 * r, NULL, ob + 32 * r, FUSED_BF16);
            a1 = fused16(a1, vm, luta, sh, sa->w, &pa, nba + 16 * r + 8, NULL, oa + 32 * r + 16, FUSED_BF16);
            b1 = fused16(b1, vm, lutb, sh, sb->w, &pbb, nbb + 16 * r + 8, NULL, ob + 32 * r + 16, FUSED_BF16);
        }
    }
    _mm512_storeu_si512((void *)sa->x, a0);
    _mm512_storeu_si512((void *)(sa->x + 16), a1);
    _mm512_storeu_si512((void *)sb->x, b0);
    _mm512_storeu_si512((void *)(sb->x + 16), b1);
    sa->ptr = pa;
    sb->ptr = pbb;
    return r;
}
#endif

static int rans_end(const rans_state *st) {
    if (st->ptr > st->nw) return E_SHORT;
    for (int j = 0; j < LANES; j++) if (st->x[j] != RANS_L) return E_STATE;
    return st->ptr == st->nw ? 0 : E_STATE;
}

/* The fused bf16 path, for values [start, n) of a chunk whose state has decoded [0, start) (start a
 * multiple of 32, so value i is lane i % 32's): whole rounds straight into the destination, the rest
 * (rounds whose words reach the stream's end, the tail) scalar, same order. lut: rans_table_fused. */
static void rans_fused_rest(rans_state *st, const uint32_t *lut, int pb, const uint8_t *nb, const uint8_t *tb,
                            uint16_t *o, int64_t start, int64_t n, int isa, int kind) {
    uint32_t mask = (1u << pb) - 1;
#if LL_X86
    if (isa == ISA_AVX512)
        start += rans_avx512_fused(st, lut, mask, pb, nb + (start >> 1), kind == FUSED_F16 ? tb + (start >> 2) : NULL,
                                   o + start, (n - start) / LANES, kind) * LANES;
    else if (isa == ISA_AVX2 && kind == FUSED_BF16)
        start += rans_avx2_fused(st, lut, mask, pb, nb + (start >> 1), o + start, (n - start) / LANES) * LANES;
#else
    (void)isa;
#endif
    const uint16_t *w = st->nw ? st->w : &ZERO16;
    int64_t last = st->nw ? st->nw - 1 : 0, ptr = st->ptr;
    for (int64_t i = start; i < n; i++) {
        int j = (int)(i % LANES);
        uint32_t x = st->x[j], e = lut[x & mask];
        uint32_t y = (e & 0x3FF) * (x >> pb) + ((e >> 10) & 0x3FF);
        uint32_t word = w[ptr < last ? ptr : last];
        int need = y < RANS_L;
        st->x[j] = need ? (y << 16) | word : y;
        ptr += need;
        uint32_t sym = e >> 20, nib = (nb[i >> 1] >> ((i & 1) * 4)) & 15;
        o[i] = kind == FUSED_F16
                   ? (uint16_t)(((sym & 1) << 15) | ((sym >> 1) << 6) | (((tb[i >> 2] >> ((i & 3) * 2)) & 3) << 4) | nib)
                   : (uint16_t)(((sym & 1) << 15) | ((sym >> 1) << 4) | nib);
    }
    st->ptr = ptr;
}

/* Which fused case is this chunk's field 0? FUSED_BF16 (AVX-512 or AVX2): 16-bit values, a 12-bit coded field
 * laid out as bf16 max's (sign from symbol bit 0, bits 4-14 from the rest), one 4-bit raw field in bits 0-3.
 * FUSED_F16 (AVX-512): fp16 max's 10-bit coded field (sign, then bits 6-14), a 4-bit raw field in bits 0-3
 * and a 2-bit one in bits 4-5. 0 otherwise (the general path). */
static int fused_case(int isa, int width, int first, const uint32_t *patt0, int bits0, const raw_field *raw,
                      int nraw) {
    if (!(isa == ISA_AVX512 || isa == ISA_AVX2) || !(width == 2 && first && nraw >= 1 && raw[0].bits == 4)) return 0;
    for (uint32_t b = 0; b < 16; b++) if (raw[0].patt[b] != b) return 0;
    int top = bits0 == 12 && nraw == 1 ? 4 : bits0 == 10 && nraw == 2 && raw[1].bits == 2 && isa == ISA_AVX512 ? 6 : 0;
    if (!top) return 0;
    for (uint32_t b = 0; top == 6 && b < 4; b++) if (raw[1].patt[b] != b << 4) return 0;
    for (uint32_t v = 0; v < (1u << bits0); v++) if (patt0[v] != (((v & 1) << 15) | ((v >> 1) << top))) return 0;
    return top == 4 ? FUSED_BF16 : FUSED_F16;
}

static int decode_rans32(const uint32_t *s, int64_t ns, const uint32_t *lut, const uint32_t *smap, int fused,
                         int pb, int64_t n, void *out, int width, int first, const raw_field *raw, int nraw, int isa,
                         uint32_t *idx) {
    rans_state st;
    int err = rans_open(s, ns, &st);
    if (err) return err;
    if (fused) {                      /* decode + merge straight into the destination */
        rans_fused_rest(&st, lut, pb, raw[0].bytes, fused == FUSED_F16 ? raw[1].bytes : NULL, (uint16_t *)out, 0, n,
                        isa, fused);
        return rans_end(&st);
    }
    uint32_t mask = (1u << pb) - 1;
    for (int64_t base = 0; base < n; base += BLOCK) {
        int64_t cnt = n - base < BLOCK ? n - base : BLOCK;
        int64_t rounds = cnt / LANES;
        int tail = (int)(cnt % LANES);
#if LL_X86
        if (isa == ISA_AVX512) rans_avx512(&st, lut, mask, pb, idx, rounds);
        else if (isa == ISA_AVX2) rans_avx2(&st, lut, mask, pb, idx, rounds);
        else rans_scalar(&st, lut, mask, pb, idx, rounds, 0);
        if (tail) rans_scalar(&st, lut, mask, pb, idx + rounds * LANES, 0, tail);
#else
        rans_scalar(&st, lut, mask, pb, idx, rounds, tail);
#endif
#ifndef LL_NOMERGE
        merge(out, width, first, base, cnt, idx, smap, raw, nraw);
#endif
    }
#if LL_X86
    _mm_sfence();
#endif
    return rans_end(&st);
}

/* ------------------------------------------------------------------------------ Huffman */

/* Table at tables[at]: lo, count, len[count] (0 = unused symbol, else 1..12, a complete prefix code).
 * Multi-symbol lookup: lut[12 bits] = up to 3 symbols (16 bits each) | bits used << 48 | count << 56, or for
 * alphabets of at most 256 symbols (narrow) up to HNARROW symbols of 8 bits each;
 * one[12 bits] = the first symbol | its length << 16 (block tails). */
static int huff_tables(const uint16_t *t, int64_t nt, int64_t at, int alphabet, uint64_t *lut, uint32_t *one,
                       int narrow) {
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
        while (c < (narrow ? HNARROW : 3)) {
            uint32_t o = one[(i >> used) & ((1u << HBITS) - 1)];
            int l = (int)(o >> 16);
            if (used + l > HBITS) break;
            e |= narrow ? (uint64_t)(o & 0xFF) << (8 * c) : (uint64_t)(o & 0xFFFF) << (16 * c);
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
static int decode_huff(const uint32_t *s, int64_t ns, const uint64_t *lut, const uint32_t *one, const uint32_t *smap,
                       int alphabet, int64_t n,
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
    uint8_t sym8[HSTREAMS * HBLOCK + 8];
    int narrow = alphabet <= 256;
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
        /* lock-step rounds: each stream refills a 64-bit bit buffer (branch-free: at least 56 valid bits
         * after it) and makes 4 lookups of at most 12 bits; the four streams' chains overlap. A round runs
         * only while every stream has room for its symbols (8-byte writes) and 8 readable bytes; the
         * rest of the block is decoded one symbol per lookup from the exact position. */
#define HSTEP(k, buf)                                                                          \
            {                                                                                  \
                uint64_t e = lut[bb##k & M];                                                   \
                memcpy(buf + o##k, &e, 8);                                                     \
                unsigned u = (unsigned)(e >> 48) & 0xFF;                                       \
                bb##k >>= u; bc##k -= u;                                                       \
                o##k += e >> 56;                                                               \
            }
#define HREFILL(k)                                                                             \
            {                                                                                  \
                uint64_t v;                                                                    \
                memcpy(&v, st[k].b + q##k, 8);                                                 \
                bb##k |= v << bc##k;                                                           \
                q##k += (63 - bc##k) >> 3;                                                     \
                bc##k |= 56;                                                                   \
            }
#define HINIT(k)                                                                               \
            int64_t q##k = st[k].pos >> 3, bc##k = 0, o##k = o[k];                             \
            uint64_t bb##k = 0;                                                                \
            const int64_t e##k = end[k] - room, z##k = st[k].nbytes - 8;                       \
            if (q##k <= z##k) { HREFILL(k) bb##k >>= st[k].pos & 7; bc##k -= st[k].pos & 7; }  \
            else ok = 0;
#define HLOCKSTEP(buf, T, CAP)                                                                 \
        {                                                                                      \
            const int64_t room = 4 * CAP + 8 / (int64_t)sizeof(T);                             \
            int ok = 1;                                                                        \
            HINIT(0) HINIT(1) HINIT(2) HINIT(3)                                                \
            if (ok) {                                                                          \
                while (o0 <= e0 && o1 <= e1 && o2 <= e2 && o3 <= e3 &&                         \
                       q0 <= z0 && q1 <= z1 && q2 <= z2 && q3 <= z3) {                         \
                    HREFILL(0) HREFILL(1) HREFILL(2) HREFILL(3)                                \
                    HSTEP(0, buf) HSTEP(1, buf) HSTEP(2, buf) HSTEP(3, buf)                            \
                    HSTEP(0, buf) HSTEP(1, buf) HSTEP(2, buf) HSTEP(3, buf)                            \
                    HSTEP(0, buf) HSTEP(1, buf) HSTEP(2, buf) HSTEP(3, buf)                            \
                    HSTEP(0, buf) HSTEP(1, buf) HSTEP(2, buf) HSTEP(3, buf)                            \
                }                                                                              \
                st[0].pos = q0 * 8 - bc0; st[1].pos = q1 * 8 - bc1;                            \
                st[2].pos = q2 * 8 - bc2; st[3].pos = q3 * 8 - bc3;                            \
                o[0] = o0; o[1] = o1; o[2] = o2; o[3] = o3;                                    \
            }                                                                                  \
            for (int k = 0; k < HSTREAMS; k++) {       /* each stream's rest on its own */     \
                int64_t q = st[k].pos >> 3, bc = 0, ok_ = o[k];                                \
                uint64_t bb = 0;                                                               \
                const int64_t z = st[k].nbytes - 8;                                            \
                if (q <= z) {                                                                  \
                    uint64_t v; memcpy(&v, st[k].b + q, 8);                                    \
                    bb = v >> (st[k].pos & 7); bc = 56 - (st[k].pos & 7); q += 7;              \
                }                                                                              \
                while (q <= z && ok_ < end[k]) {      /* >= 56 - 12 valid bits per lookup */   \
                    if (ok_ + 8 / (int64_t)sizeof(T) <= end[k]) {                              \
                        uint64_t e = lut[bb & M];                                              \
                        memcpy(buf + ok_, &e, 8);                                              \
                        unsigned u = (unsigned)(e >> 48) & 0xFF;                               \
                        bb >>= u; bc -= u; ok_ += e >> 56;                                     \
                    } else {                                                                   \
                        uint32_t e = one[bb & M];                                              \
                        buf[ok_++] = (T)e;                                                     \
                        bb >>= e >> 16; bc -= e >> 16;                                         \
                    }                                                                          \
                    uint64_t v; memcpy(&v, st[k].b + q, 8);                                    \
                    bb |= v << bc; q += (63 - bc) >> 3; bc |= 56;                              \
                }                                                                              \
                if (bc) st[k].pos = q * 8 - bc;                                                \
                o[k] = ok_;                                                                    \
                while (o[k] < end[k]) {                   /* the stream's last bytes */        \
                    uint32_t e = one[peek(&st[k]) & M];                                        \
                    buf[o[k]++] = (T)e;                                                        \
                    st[k].pos += e >> 16;                                                      \
                }                                                                              \
            }                                                                                  \
        }
        if (narrow) HLOCKSTEP(sym8, uint8_t, HNARROW) else HLOCKSTEP(sym, uint16_t, 3)
#undef HLOCKSTEP
#undef HINIT
#undef HREFILL
#undef HSTEP
        if (width == 2 && first && nraw == 1 && raw[0].bits == 8) {   /* bf16 fast: one pass, no copy */
            uint16_t tmp[HSTREAMS * HBLOCK + 8];
            const uint8_t *rb = raw[0].bytes + base;
            const uint32_t *p = raw[0].patt;
            if (plain && narrow) {   /* exponent in bits 7-14, the raw byte's bit 7 the sign: shifts, vectorised,
                                      * straight into the destination */
                uint16_t *o = (uint16_t *)out + base;
                for (int64_t k = 0; k < total; k++)
                    o[k] = (uint16_t)((sym8[k] << 7) | (rb[k] & 0x7F) | ((rb[k] & 0x80) << 8));
                continue;
            } else if (narrow) {
                for (int64_t k = 0; k < total; k++) tmp[k] = (uint16_t)(smap[sym8[k]] | p[rb[k]]);
            } else {
                for (int64_t k = 0; k < total; k++) tmp[k] = (uint16_t)(smap[sym[k]] | p[rb[k]]);
            }
            store_block((uint8_t *)out + base * 2, (const uint8_t *)tmp, total * 2);
            continue;
        }
        if (narrow) for (int64_t k = 0; k < total; k++) idx[k] = sym8[k];
        else for (int64_t k = 0; k < total; k++) idx[k] = sym[k];
#ifndef LL_NOMERGE
        for (int64_t q = 0; q < total; q += BLOCK) {
            int64_t c = total - q < BLOCK ? total - q : BLOCK;
            merge(out, width, first, base + q, c, idx + q, smap, raw, nraw);
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

int ll_abi_version(void) { return 5; }

/* lut (2**15 u32) + smap (2**16 u32: also Huffman's symbol map) + idx (4 * HBLOCK + 64 u32) + Huffman lut;
 * a second lut for the partner chunk of a lock-step pair */
#define LL_SCRATCH_ONE ((int64_t)((1 << 15) + (1 << 16) + HSTREAMS * HBLOCK + 64) * 4 + ((int64_t)8 << HBITS))
#define LL_SCRATCH_BYTES (LL_SCRATCH_ONE + (int64_t)(1 << 15) * 4 + 64)   /* + the vector fills' overrun */
int64_t ll_scratch_bytes(void) { return LL_SCRATCH_BYTES; }

/* One chunk of one tensor to decode (all fields 8 bytes; the Python side builds arrays of these). */
typedef struct {
    const uint32_t *words; int64_t nwords;
    const int64_t *rows; int64_t nfields;       /* rows: nfields x (mode, word offset, word count, aux) */
    const uint16_t *tables; int64_t ntables;
    const uint32_t *patt; int64_t pstride;      /* per field: symbol -> bits in the value */
    const int32_t *bits; int64_t pb;
    int64_t n; void *out; int64_t width;        /* n values of `width` bytes at out */
    int64_t status;                             /* set: 0, or field << 8 | error code */
} ll_job;

/* The shift s with patt[v] == v << s for every v < 2**bits, or -1. */
static int pattern_shift(const uint32_t *patt, int bits) {
    if (patt[1] == 0 || (patt[1] & (patt[1] - 1))) return -1;
    int sh = __builtin_ctz(patt[1]);
    if (sh + bits > 32) return -1;
    for (uint32_t v = 0; v < (1u << bits); v++) if (patt[v] != v << sh) return -1;
    return sh;
}

/* Validate a job; fill its raw fields when field 0 is coded and every other field raw 1/2/4/8 bits (they
 * merge in the same pass). Returns 0 or field << 8 | error; *fused, *nraw describe the fused case. */
static int64_t job_check(const ll_job *j, raw_field *raw, int *nraw, int *fused) {
    if (j->pb < 8 || j->pb > 15 || j->nfields < 1 || (j->width != 1 && j->width != 2 && j->width != 4)) return E_TABLE;
    for (int f = 0; f < j->nfields; f++) {
        const int64_t *r = j->rows + 4 * f;
        if (r[1] < 0 || r[2] < 0 || r[1] + r[2] > j->nwords) return (int64_t)f << 8 | E_RANGE;
        if (j->bits[f] < 1 || j->bits[f] > 16 || j->pstride < (1 << j->bits[f])) return (int64_t)f << 8 | E_TABLE;
    }
    *fused = j->rows[0] == M_RANS32 || j->rows[0] == M_HUFF;
    *nraw = 0;
    for (int f = 1; f < j->nfields && *fused; f++) {
        const int64_t *r = j->rows + 4 * f;
        int b = j->bits[f];
        if (r[0] != M_RAW || *nraw == MAX_RAW || !(b == 1 || b == 2 || b == 4 || b == 8)) { *fused = 0; break; }
        if (r[2] != (j->n * b + 31) / 32) return (int64_t)f << 8 | E_RAW;
        raw[*nraw].bytes = (const uint8_t *)(j->words + r[1]);
        raw[*nraw].bits = b;
        raw[*nraw].patt = j->patt + f * j->pstride;
        raw[*nraw].shift = pattern_shift(raw[*nraw].patt, b);
        (*nraw)++;
    }
    if (!*fused) *nraw = 0;
    return 0;
}

static int64_t decode_job(const ll_job *j, int isa, uint8_t *scratch) {
    raw_field raw[MAX_RAW];
    int nraw, fused;
    int64_t result = job_check(j, raw, &nraw, &fused);
    if (result) return result;
    uint32_t *lut = (uint32_t *)scratch, *smap = lut + (1 << 15), *idx = smap + (1 << 16);
    uint64_t *hlut = (uint64_t *)(idx + HSTREAMS * HBLOCK + 64);
    int64_t n = j->n;
    int width = (int)j->width, pb = (int)j->pb;
    int last = fused ? 1 : (int)j->nfields;
    for (int f = 0; f < last && !result; f++) {
        const int64_t *r = j->rows + 4 * f;
        const uint32_t *p = j->patt + f * j->pstride, *w = j->words + r[1];
        int alphabet = 1 << j->bits[f], first = f == 0;
        int err = 0;
        const raw_field *rf = f == 0 ? raw : NULL;
        int nr = f == 0 ? nraw : 0;
        switch (r[0]) {
        case M_CONST:
            if (r[2] != 0 || r[3] < 0 || r[3] >= alphabet) { err = E_RANGE; break; }
            fill_const(j->out, width, first, n, p[r[3]]);
            break;
        case M_RAW:
            err = unpack(w, r[2], j->bits[f], p, j->out, width, first, n);
            break;
        case M_RANS32: {
            int fz = fused_case(isa, width, first, p, j->bits[f], rf, nr);
            err = fz ? rans_table_fused(j->tables, j->ntables, r[3], alphabet, pb, lut, isa) : -1;
            if (err < 0) { fz = 0; err = rans_tables(j->tables, j->ntables, r[3], p, alphabet, pb, lut, smap); }
            if (!err) err = decode_rans32(w, r[2], lut, smap, fz, pb, n, j->out, width, first, rf, nr, isa, idx);
            break;
        }
        case M_HUFF:
            err = huff_tables(j->tables, j->ntables, r[3], alphabet, hlut, lut, alphabet <= 256);
            if (!err) {
                for (int a = 0; a < alphabet; a++) smap[a] = p[a];
                err = decode_huff(w, r[2], hlut, lut, smap, alphabet, n, j->out, width, first, rf, nr, idx);
            }
            break;
        default:
            err = E_MODE;
        }
        if (err) result = (int64_t)f << 8 | err;
    }
    return result;
}

/* A pair of fused bf16 rANS chunks (same pb) decoded in lock-step for their common whole rounds, each then
 * finished on its own. Returns 0 when both were decoded (statuses set), 1 when the pair does not qualify. */
static int decode_pair(ll_job *ja, ll_job *jb, int isa, uint8_t *scratch) {
#if LL_X86
    raw_field ra[MAX_RAW], rb[MAX_RAW];
    int na, nb, fa, fb;
    if (isa != ISA_AVX512 || ja->pb != jb->pb || ja->rows[0] != M_RANS32 || jb->rows[0] != M_RANS32) return 1;
    if (job_check(ja, ra, &na, &fa) || job_check(jb, rb, &nb, &fb) || !fa || !fb) return 1;
    int kind = fused_case(isa, (int)ja->width, 1, ja->patt, ja->bits[0], ra, na);
    if (!kind || fused_case(isa, (int)jb->width, 1, jb->patt, jb->bits[0], rb, nb) != kind) return 1;
    int pb = (int)ja->pb;
    uint32_t *luta = (uint32_t *)scratch, *lutb = (uint32_t *)(scratch + LL_SCRATCH_ONE);
    if (rans_table_fused(ja->tables, ja->ntables, ja->rows[3], 1 << ja->bits[0], pb, luta, isa) ||
        rans_table_fused(jb->tables, jb->ntables, jb->rows[3], 1 << jb->bits[0], pb, lutb, isa)) return 1;
    rans_state sa, sb;
    if (rans_open(ja->words + ja->rows[1], ja->rows[2], &sa) || rans_open(jb->words + jb->rows[1], jb->rows[2], &sb))
        return 1;                     /* decode_job reports the error */
    int64_t ra_ = ja->n / LANES, rb_ = jb->n / LANES;
    const uint8_t *ta = kind == FUSED_F16 ? ra[1].bytes : NULL, *tb = kind == FUSED_F16 ? rb[1].bytes : NULL;
    int64_t done = rans_avx512_fused2(&sa, &sb, luta, lutb, (1u << pb) - 1, pb, ra[0].bytes, rb[0].bytes, ta, tb,
                                      (uint16_t *)ja->out, (uint16_t *)jb->out, ra_ < rb_ ? ra_ : rb_, kind);
    rans_fused_rest(&sa, luta, pb, ra[0].bytes, ta, (uint16_t *)ja->out, done * LANES, ja->n, isa, kind);
    rans_fused_rest(&sb, lutb, pb, rb[0].bytes, tb, (uint16_t *)jb->out, done * LANES, jb->n, isa, kind);
    ja->status = rans_end(&sa);
    jb->status = rans_end(&sb);
    return 0;
#else
    (void)ja; (void)jb; (void)isa; (void)scratch;
    return 1;
#endif
}

static int resolve_isa(int isa) {
    int best = ll_cpu_isa();
    if (isa == ISA_BEST) isa = best;
    if (isa > best) return -1;
#if LL_X86
    if (isa == ISA_AVX2) perm8_init();
#endif
    return isa;
}

/* Decode jobs[0..njobs) in order, neighbouring fused bf16 rANS chunks two at a time; every job's status is
 * set. Returns the number of failed jobs (or -E_MEM / -E_ISA for the call as a whole). */
int64_t ll_decode_jobs(ll_job *jobs, int64_t njobs, int isa, void *scratch, int64_t scratch_bytes) {
    isa = resolve_isa(isa);
    if (isa < 0) return -E_ISA;
    if (!scratch || scratch_bytes < LL_SCRATCH_BYTES) return -E_MEM;
    int64_t bad = 0;
    for (int64_t i = 0; i < njobs; i++) {
        if (i + 1 < njobs && !decode_pair(jobs + i, jobs + i + 1, isa, scratch)) {
            bad += (jobs[i].status != 0) + (jobs[i + 1].status != 0);
            i++;
            continue;
        }
        jobs[i].status = decode_job(jobs + i, isa, scratch);
        bad += jobs[i].status != 0;
    }
    return bad;
}

/* Blocks of jobs shared among threads: jobs[cuts[b] .. cuts[b + 1]) is block b; each calling thread (one
 * ctypes call per thread, its own scratch) takes the next block from the shared counter *next until none is
 * left, so a thread that drew cheap blocks takes more and the threads finish together (to within one
 * block). Returns the number of failed jobs this thread decoded, or -E_MEM / -E_ISA before any work. */
int64_t ll_decode_blocks(ll_job *jobs, const int64_t *cuts, int64_t nblocks, int64_t *next, int isa,
                         void *scratch, int64_t scratch_bytes) {
    if (resolve_isa(isa) < 0) return -E_ISA;
    if (!scratch || scratch_bytes < LL_SCRATCH_BYTES) return -E_MEM;
    int64_t bad = 0;
    for (;;) {
        int64_t b = __atomic_fetch_add(next, 1, __ATOMIC_RELAXED);
        if (b >= nblocks) return bad;
        bad += ll_decode_jobs(jobs + cuts[b], cuts[b + 1] - cuts[b], isa, scratch, scratch_bytes);
    }
}
