/* Skinny fp32 matrix products for batched decoding: y[M,N] = x[M,K] @ W[N,K]^T (+ bias), M small.
 *
 * A decode step multiplies every weight matrix by one row per sequence in the batch. For 2-16 rows the
 * BLAS that PyTorch ships reaches ~40 GFLOPS on one core of this project's CPU (it is built for large
 * blocks), while the step is then bound by arithmetic, not by reading the weights; this kernel keeps a
 * 4 x 3 tile of dot products in registers (12 AVX2 accumulators; each weight vector loaded once and used
 * by 4 rows) and reaches ~85 GFLOPS on cache-resident matrices; with the weights streaming from memory a
 * batch-8 SmolLM2 step costs ~1.5x a batch-1 step instead of ~1.9x (benchmarks/SERVE.md).
 *
 * Layout: W is nn.Linear's (out_features, in_features), row-major, as the model holds it (no repacking,
 * no extra memory). Rows of x and y have leading dimensions ldx / ldy. Any K (masked tail loads), any N.
 * One thread. The summation order of a dot product does not depend on M or on the tile a column lands in,
 * so a row's result is the same in any batch.
 */
#include <stdint.h>

#define SK_ABI 2

int sk_abi_version(void) { return SK_ABI; }

int sk_cpu_ok(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#include <immintrin.h>

static inline float hsum8(__m256 v) {
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    a = _mm_add_ss(a, _mm_movehdup_ps(a));
    return _mm_cvtss_f32(a);
}

/* One tile: MT rows of x against NT rows of W (MT <= 4, NT <= 3, constants after inlining). */
static inline __attribute__((always_inline)) void tile(const float *x, int64_t ldx, const float *w, int64_t K,
                                                       const float *bias, float *y, int64_t ldy, int MT, int NT,
                                                       __m256i tail_mask, const float *pf) {
    __m256 acc[4][3];
    for (int i = 0; i < MT; i++)
        for (int j = 0; j < NT; j++) acc[i][j] = _mm256_setzero_ps();
    const int64_t k8 = K & ~(int64_t)7;
    int64_t k = 0;
    for (; k < k8; k += 8) {
        __m256 b[3];
        for (int j = 0; j < NT; j++) b[j] = _mm256_loadu_ps(w + j * K + k);
        if (pf && !(k & 15))             /* the same rows of the next column block, one line per 16 values */
            for (int j = 0; j < NT; j++) _mm_prefetch((const char *)(pf + j * K + k), _MM_HINT_T0);
        for (int i = 0; i < MT; i++) {
            __m256 xv = _mm256_loadu_ps(x + i * ldx + k);
            for (int j = 0; j < NT; j++) acc[i][j] = _mm256_fmadd_ps(xv, b[j], acc[i][j]);
        }
    }
    if (k < K) {
        __m256 b[3];
        for (int j = 0; j < NT; j++) b[j] = _mm256_maskload_ps(w + j * K + k, tail_mask);
        for (int i = 0; i < MT; i++) {
            __m256 xv = _mm256_maskload_ps(x + i * ldx + k, tail_mask);
            for (int j = 0; j < NT; j++) acc[i][j] = _mm256_fmadd_ps(xv, b[j], acc[i][j]);
        }
    }
    for (int i = 0; i < MT; i++)
        for (int j = 0; j < NT; j++) y[i * ldy + j] = hsum8(acc[i][j]) + (bias ? bias[j] : 0.0f);
}

/* Columns [n0, n1) for MT rows; ``ahead`` > 0: prefetch the rows that many columns further on. */
#define ROWS(MT)                                                                                         \
    static void rows_##MT(const float *x, int64_t ldx, const float *w, int64_t K, const float *bias,      \
                          float *y, int64_t ldy, int64_t n0, int64_t n1, __m256i m, int64_t ahead,      \
                          int64_t n_end) {                                                               \
        int64_t n = n0;                                                                                  \
        for (; n + 3 <= n1; n += 3)                                                                      \
            tile(x, ldx, w + n * K, K, bias ? bias + n : 0, y + n, ldy, MT, 3, m,                      \
                 ahead && n + ahead + 3 <= n_end ? w + (n + ahead) * K : 0);                            \
        if (n1 - n == 2) tile(x, ldx, w + n * K, K, bias ? bias + n : 0, y + n, ldy, MT, 2, m, 0);     \
        if (n1 - n == 1) tile(x, ldx, w + n * K, K, bias ? bias + n : 0, y + n, ldy, MT, 1, m, 0);     \
    }
ROWS(1)
ROWS(2)
ROWS(3)
ROWS(4)

/* All of y (M x N). Returns 0, or -1 on bad sizes. */
int sk_linear(const float *x, int64_t ldx, const float *w, const float *bias, float *y, int64_t ldy,
              int64_t M, int64_t N, int64_t K) {
    if (M < 0 || N < 0 || K <= 0 || ldx < K || ldy < N) return -1;
    int r = (int)(K & 7);
    __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(r), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    /* column blocks outermost: a block of W rows (~24 KiB) stays in L1 while every row tile uses it */
    int64_t NB = 3 * (6144 / K / 3);
    if (NB < 3) NB = 3;
    for (int64_t b0 = 0; b0 < N; b0 += NB) {
        int64_t b1 = b0 + NB < N ? b0 + NB : N;
        int64_t i = 0, ahead = NB;        /* the first pass over a block prefetches the next block */
        for (; i + 4 <= M; i += 4, ahead = 0)
            rows_4(x + i * ldx, ldx, w, K, bias, y + i * ldy, ldy, b0, b1, m, ahead, N);
        switch (M - i) {
            case 3: rows_3(x + i * ldx, ldx, w, K, bias, y + i * ldy, ldy, b0, b1, m, ahead, N); break;
            case 2: rows_2(x + i * ldx, ldx, w, K, bias, y + i * ldy, ldy, b0, b1, m, ahead, N); break;
            case 1: rows_1(x + i * ldx, ldx, w, K, bias, y + i * ldy, ldy, b0, b1, m, ahead, N); break;
        }
    }
    return 0;
}
#pragma GCC pop_options
