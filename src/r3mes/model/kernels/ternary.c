/*
 * Ternary matrix products on 2-bit packed weights (BitNet b1.58), for r3mes.model.kernels.
 *
 * Packing (transformers' `pack_weights`, r3mes.model.bitlinear.pack_ternary): a weight
 * W (N, K) with values in {-1, 0, 1} is held as uint8 P (R, K), R = ceil(N / 4); byte P[r, k]
 * holds W[r + b*R, k] + 1 in bits 2b..2b+1 for b = 0..3.  One pass over packed row r is
 * therefore four dot products (output rows r, r+R, r+2R, r+3R), reading K contiguous bytes.
 *
 * Forward: out[m, o] = sum_k W[o, k] * x[m, k] with int8 x and int32 accumulation, computed
 * as sum_k code[o, k] * x[m, k] - sum_k x[m, k] (code = W + 1 in {0, 1, 2} is unsigned, which
 * is what the x86 u8 x s8 instructions want).  Integer sums are exact, so every path below
 * (scalar, AVX2, AVX-512BW, AVX-512 VNNI, NEON, NEON dotprod) and every thread count gives
 * the same bits.
 *
 * Input gradient: out[m, k] = sum_o g[m, o] * W[o, k] in float32, on the same packing.  Each
 * output element adds the terms w * g (exact: w is -1, 0 or 1) in one fixed order, r outer
 * and b inner, on every path, so it too is bit-identical across paths and thread counts
 * (though not equal to a BLAS matmul, whose order is its own).
 *
 * Fused linear (`r3mes_ternary_linear`): BitLinear's whole frozen forward in one call, float32
 * activations in and float32 out.  Per token (row) it does what r3mes.model.bitlinear's torch
 * code does, in the same float32 operations and order, so the bits are the same:
 *     amax  = max_k |x[k]|                      (NaN if any x[k] is NaN, like torch.amax)
 *     scale = (1 / max(amax, 1e-5f)) * 127      (torch: 127.0 / t is t.reciprocal() * 127)
 *     code  = clamp(rint(x[k] * scale), -128, 127) as int8 (NaN -> 0, as torch's cast gives)
 *     out   = (float)(int32 sum of code * W) / (scale * weight_scale)
 * rint is round-half-even (torch.round); no step is a multiply-add, and the file is built
 * with -ffp-contract=off, so no compiler may fuse one.  Rows are quantized on the pool too
 * when there are enough of them.
 *
 * Work is split by output rows (forward: packed rows; gradient: columns k) over pthreads.
 * Plain C11 with per-function target attributes: no Python or torch headers are needed, and
 * the library is loaded with ctypes.
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>

#if defined(__x86_64__) || defined(__i386__)
#define R3_X86 1
#include <immintrin.h>
#endif
#if defined(__aarch64__)
#define R3_ARM 1
#include <arm_neon.h>
#if defined(__linux__)
#include <sys/auxv.h>
#endif
#if defined(__APPLE__)
#include <sys/sysctl.h>
#endif
#endif

#define R3_EXPORT __attribute__((visibility("default")))

#include "kernels.h"

#define RBLOCK 8 /* forward: packed rows per block, so a block of activation rows stays in L1 */
#define KTILE 256 /* gradient: columns per tile, so a tile of packed bytes stays in L2 */

#define ACT_MAX 127.0f /* bitlinear.ACT_MAX */
#define ACT_EPS 1e-5f  /* bitlinear.SCALE_EPS as torch's clamp converts it: to float32 */
#define QUANT_GRAIN 32768 /* fused linear: activation values per quantization unit */

typedef struct {
    const int8_t *x;      /* (M, K) */
    const int32_t *xsum;  /* (M,) */
    const uint8_t *p;     /* (R, K) */
    int32_t *out;         /* (M, N); the fused linear: the memory of fout */
    float *fout;          /* fused linear: (M, N) float32 = out / den[m], in place, or NULL */
    const float *den;     /* fused linear: (M,) */
    int64_t m, k, n, r;
} fwd_job;

typedef struct {
    const float *x; /* (M, K) float32 activations */
    float wscale;   /* the layer's weight_scale */
    int8_t *codes;  /* (M, K) out: int8 codes */
    int32_t *xsum;  /* (M,) out: sum of each row's codes */
    float *den;     /* (M,) out: scale * weight_scale */
    int64_t m, k;
} quant_job;

typedef struct {
    const float *g;   /* (M, N) */
    const uint8_t *p; /* (R, K) */
    float *out;       /* (M, K) */
    int64_t m, k, n, r;
} bwd_job;

static inline void store4(const fwd_job *j, int64_t r, int64_t m, const int32_t s[4]) {
    for (int b = 0; b < 4; b++) {
        int64_t o = r + b * j->r;
        if (o < j->n) j->out[m * j->n + o] = s[b] - j->xsum[m];
    }
}

/* sum_k code_b(p[k]) * x[k] for k in [k0, k1), added into s[0..3] */
static inline void tail4(const uint8_t *p, const int8_t *x, int64_t k0, int64_t k1, int32_t s[4]) {
    for (int64_t k = k0; k < k1; k++) {
        int32_t xv = x[k];
        uint8_t byte = p[k];
        s[0] += (int32_t)(byte & 3) * xv;
        s[1] += (int32_t)((byte >> 2) & 3) * xv;
        s[2] += (int32_t)((byte >> 4) & 3) * xv;
        s[3] += (int32_t)((byte >> 6) & 3) * xv;
    }
}

/* ---------------------------------------------------------------- activation quantization */

/* torch: ACT_MAX / amax.clamp(min=SCALE_EPS) == amax.clamp(...).reciprocal() * ACT_MAX */
static inline float act_scale(float amax) {
    float a = amax < ACT_EPS ? ACT_EPS : amax; /* clamp(min=): NaN stays NaN */
    float r = 1.0f / a;
    return r * ACT_MAX;
}

/* torch: (x * scale).round().clamp(-128, 127).to(int8); NaN (x = +-inf with scale 0, or a
 * NaN scale) is cast to 0 by torch on this platform, and here by definition */
static inline int32_t act_code(float v, float scale) {
    float t = rintf(v * scale);
    if (isnan(t)) return 0;
    t = t < -ACT_MAX - 1.0f ? -ACT_MAX - 1.0f : t;
    t = t > ACT_MAX ? ACT_MAX : t;
    return (int32_t)t;
}

/* Fused linear, after a unit of packed rows [r0, r1) is summed: its outputs (4 contiguous runs
 * per activation row) from int32 to float32 divided by den[m], in place (torch:
 * acc.float() / den; a correctly rounded division, vectorized by the compiler or not). */
static void rescale_rows(const fwd_job *j, int64_t r0, int64_t r1) {
    for (int64_t m = 0; m < j->m; m++) {
        float *row = j->fout + m * j->n;
        const float d = j->den[m];
        for (int b = 0; b < 4; b++) {
            int64_t o0 = r0 + b * j->r, o1 = r1 + b * j->r < j->n ? r1 + b * j->r : j->n;
            for (int64_t o = o0; o < o1; o++) {
                int32_t v;
                memcpy(&v, row + o, sizeof v); /* the int32 sum store4 left there */
                row[o] = (float)v / d;
            }
        }
    }
}

static inline float amax_tail(const float *x, int64_t k0, int64_t k1, float amax, int *nan) {
    for (int64_t c = k0; c < k1; c++) {
        float a = fabsf(x[c]);
        if (a > amax)
            amax = a;
        else if (isnan(a))
            *nan = 1;
    }
    return amax;
}

static inline int32_t codes_tail(const float *x, int8_t *q, int64_t k0, int64_t k1, float scale) {
    int32_t sum = 0;
    for (int64_t c = k0; c < k1; c++) {
        int32_t v = act_code(x[c], scale);
        q[c] = (int8_t)v;
        sum += v;
    }
    return sum;
}

static inline void quant_finish(const quant_job *j, int64_t m, float scale, int32_t sum) {
    j->xsum[m] = sum;
    j->den[m] = scale * j->wscale; /* torch: input_scale * weight_scale */
}

static void quant_scalar(const quant_job *j, int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; m++) {
        const float *x = j->x + m * j->k;
        int nan = 0;
        float amax = amax_tail(x, 0, j->k, 0.0f, &nan);
        float scale = act_scale(nan ? NAN : amax);
        quant_finish(j, m, scale, codes_tail(x, j->codes + m * j->k, 0, j->k, scale));
    }
}

/* ---------------------------------------------------------------- scalar */

static void fwd_scalar(const fwd_job *j, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *p = j->p + r * j->k;
        for (int64_t m = 0; m < j->m; m++) {
            int32_t s[4] = {0, 0, 0, 0};
            tail4(p, j->x + m * j->k, 0, j->k, s);
            store4(j, r, m, s);
        }
    }
}

/* The gradient tile loop, shared by every path.  Up to 4 gradient rows go through one pass
 * over the packed tile, so each packed byte is decoded once for all of them; `AXPY4` adds
 * the four weight rows held by one packed row, for each gradient row t < mb. */
#define R3_BWD_BODY(AXPY4)                                                             \
    for (int64_t c0 = k0; c0 < k1; c0 += KTILE) {                                      \
        int64_t c1 = c0 + KTILE < k1 ? c0 + KTILE : k1;                                 \
        for (int64_t m0 = 0; m0 < j->m; m0 += 4) {                                      \
            int mb = j->m - m0 < 4 ? (int)(j->m - m0) : 4;                              \
            float *acc[4];                                                              \
            for (int t = 0; t < mb; t++) {                                              \
                acc[t] = j->out + (m0 + t) * j->k;                                      \
                for (int64_t c = c0; c < c1; c++) acc[t][c] = 0.0f;                     \
            }                                                                           \
            for (int64_t r = 0; r < j->r; r++) {                                        \
                float gv[4][4];                                                         \
                for (int t = 0; t < mb; t++)                                            \
                    for (int b = 0; b < 4; b++) {                                       \
                        int64_t o = r + b * j->r;                                       \
                        gv[t][b] = o < j->n ? j->g[(m0 + t) * j->n + o] : 0.0f;         \
                    }                                                                   \
                AXPY4(j->p + r * j->k, gv, acc, mb, c0, c1);                            \
            }                                                                           \
        }                                                                               \
    }

static inline void axpy4_scalar(const uint8_t *p, const float gv[4][4], float *const acc[4],
                                int mb, int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; c++) {
        uint8_t byte = p[c];
        float w[4];
        for (int b = 0; b < 4; b++) w[b] = (float)((int)((byte >> (2 * b)) & 3) - 1);
        for (int t = 0; t < mb; t++) {
            float a = acc[t][c];
            for (int b = 0; b < 4; b++) a += w[b] * gv[t][b];
            acc[t][c] = a;
        }
    }
}

static void bwd_scalar(const bwd_job *j, int64_t k0, int64_t k1) { R3_BWD_BODY(axpy4_scalar) }

/* ---------------------------------------------------------------- x86 */
#ifdef R3_X86

#define T_AVX2 __attribute__((target("avx2,fma")))
#define T_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,fma")))
#define T_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma")))

T_AVX2 static inline int32_t hsum256(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

/* The scalar quantization's operations 8 lanes at a time: max is exact in any order; the
 * multiply is correctly rounded in a lane as in scalar code; round to nearest even, min/max
 * and the int conversion of an integer are exact. */
T_AVX2 static void quant_avx2(const quant_job *j, int64_t m0, int64_t m1) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 lo = _mm256_set1_ps(-ACT_MAX - 1.0f), hi = _mm256_set1_ps(ACT_MAX);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int64_t m = m0; m < m1; m++) {
        const float *x = j->x + m * j->k;
        int8_t *q = j->codes + m * j->k;
        __m256 mx = _mm256_setzero_ps(), unordered = _mm256_setzero_ps();
        int64_t k = 0;
        for (; k + 8 <= j->k; k += 8) {
            __m256 a = _mm256_and_ps(_mm256_loadu_ps(x + k), absmask);
            unordered = _mm256_or_ps(unordered, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
            mx = _mm256_max_ps(mx, a);
        }
        float lanes[8];
        _mm256_storeu_ps(lanes, mx);
        int nan = _mm256_movemask_ps(unordered) != 0;
        float amax = amax_tail(lanes, 0, 8, 0.0f, &nan);
        amax = amax_tail(x, k, j->k, amax, &nan);
        float scale = act_scale(nan ? NAN : amax);
        const __m256 sv = _mm256_set1_ps(scale);
        __m256i sum = _mm256_setzero_si256();
        for (k = 0; k + 32 <= j->k; k += 32) {
            __m256i c[4];
            for (int i = 0; i < 4; i++) {
                __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + k + 8 * i), sv);
                v = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                __m256 bad = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
                v = _mm256_andnot_ps(bad, _mm256_min_ps(_mm256_max_ps(v, lo), hi));
                c[i] = _mm256_cvtps_epi32(v);
                sum = _mm256_add_epi32(sum, c[i]);
            }
            /* int32 -> int8 (values already in range): the packs interleave 128-bit lanes */
            __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(c[0], c[1]),
                                           _mm256_packs_epi32(c[2], c[3]));
            _mm256_storeu_si256((__m256i *)(q + k), _mm256_permutevar8x32_epi32(b, order));
        }
        quant_finish(j, m, scale, hsum256(sum) + codes_tail(x, q, k, j->k, scale));
    }
}

/* One packed row r against activation rows m0..m0+MB-1 (MB = 1, 2 or 4, a constant after
 * inlining, so the accumulators stay in registers): 4*MB dot products. */
#define R3_BLOCK256(NAME, MB)                                                            \
    T_AVX2 static inline void NAME(const fwd_job *j, const uint8_t *p, int64_t r, int64_t m0) { \
        const __m256i mask3 = _mm256_set1_epi8(3);                                      \
        const __m256i ones = _mm256_set1_epi16(1);                                      \
        const int64_t kv = j->k & ~(int64_t)31;                                         \
        __m256i a[MB][4];                                                               \
        for (int t = 0; t < MB; t++)                                                    \
            for (int b = 0; b < 4; b++) a[t][b] = _mm256_setzero_si256();               \
        for (int64_t k = 0; k < kv; k += 32) {                                          \
            __m256i pv = _mm256_loadu_si256((const __m256i *)(p + k));                  \
            __m256i c[4];                                                               \
            c[0] = _mm256_and_si256(pv, mask3);                                         \
            c[1] = _mm256_and_si256(_mm256_srli_epi16(pv, 2), mask3);                   \
            c[2] = _mm256_and_si256(_mm256_srli_epi16(pv, 4), mask3);                   \
            c[3] = _mm256_and_si256(_mm256_srli_epi16(pv, 6), mask3);                   \
            for (int t = 0; t < MB; t++) {                                              \
                __m256i xv = _mm256_loadu_si256((const __m256i *)(j->x + (m0 + t) * j->k + k)); \
                /* u8 {0,1,2} x s8: pair sums fit int16 (2*2*128 = 512), no saturation */ \
                for (int b = 0; b < 4; b++)                                             \
                    a[t][b] = _mm256_add_epi32(                                         \
                        a[t][b], _mm256_madd_epi16(_mm256_maddubs_epi16(c[b], xv), ones)); \
            }                                                                           \
        }                                                                               \
        for (int t = 0; t < MB; t++) {                                                  \
            int32_t s[4];                                                               \
            for (int b = 0; b < 4; b++) s[b] = hsum256(a[t][b]);                        \
            tail4(p, j->x + (m0 + t) * j->k, kv, j->k, s);                              \
            store4(j, r, m0 + t, s);                                                    \
        }                                                                               \
    }

R3_BLOCK256(blk_avx2_1, 1)
R3_BLOCK256(blk_avx2_2, 2)

T_AVX2 static void fwd_avx2(const fwd_job *j, int64_t r0, int64_t r1) {
    for (int64_t rb = r0; rb < r1; rb += RBLOCK) {
        int64_t re = rb + RBLOCK < r1 ? rb + RBLOCK : r1;
        int64_t m0 = 0;
        for (; m0 + 2 <= j->m; m0 += 2)
            for (int64_t r = rb; r < re; r++) blk_avx2_2(j, j->p + r * j->k, r, m0);
        for (; m0 < j->m; m0++)
            for (int64_t r = rb; r < re; r++) blk_avx2_1(j, j->p + r * j->k, r, m0);
    }
}

/* AVX-512: masked loads cover the tail of K; DOT is VNNI's dpbusd or maddubs + madd */
#define R3_BLOCK512(NAME, TARGET, DOT, MB)                                               \
    TARGET static inline void NAME(const fwd_job *j, const uint8_t *p, int64_t r, int64_t m0) { \
        const __m512i mask3 = _mm512_set1_epi8(3);                                      \
        const __m512i ones = _mm512_set1_epi16(1);                                      \
        (void)ones;                                                                     \
        __m512i a[MB][4];                                                               \
        for (int t = 0; t < MB; t++)                                                    \
            for (int b = 0; b < 4; b++) a[t][b] = _mm512_setzero_si512();               \
        for (int64_t k = 0; k < j->k; k += 64) {                                        \
            int64_t left = j->k - k;                                                    \
            __mmask64 km = left >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << left) - 1);   \
            __m512i pv = _mm512_maskz_loadu_epi8(km, p + k);                            \
            __m512i c[4];                                                               \
            c[0] = _mm512_and_si512(pv, mask3);                                         \
            c[1] = _mm512_and_si512(_mm512_srli_epi16(pv, 2), mask3);                   \
            c[2] = _mm512_and_si512(_mm512_srli_epi16(pv, 4), mask3);                   \
            c[3] = _mm512_and_si512(_mm512_srli_epi16(pv, 6), mask3);                   \
            for (int t = 0; t < MB; t++) {                                              \
                __m512i xv = _mm512_maskz_loadu_epi8(km, j->x + (m0 + t) * j->k + k);   \
                for (int b = 0; b < 4; b++) a[t][b] = DOT(a[t][b], c[b], xv);           \
            }                                                                           \
        }                                                                               \
        for (int t = 0; t < MB; t++) {                                                  \
            int32_t s[4];                                                               \
            for (int b = 0; b < 4; b++) s[b] = _mm512_reduce_add_epi32(a[t][b]);        \
            store4(j, r, m0 + t, s);                                                    \
        }                                                                               \
    }

#define R3_FWD512(NAME, TARGET, DOT)                                                    \
    R3_BLOCK512(NAME##_1, TARGET, DOT, 1)                                               \
    R3_BLOCK512(NAME##_4, TARGET, DOT, 4)                                               \
    TARGET static void NAME(const fwd_job *j, int64_t r0, int64_t r1) {                 \
        for (int64_t rb = r0; rb < r1; rb += RBLOCK) {                                  \
            int64_t re = rb + RBLOCK < r1 ? rb + RBLOCK : r1;                           \
            int64_t m0 = 0;                                                             \
            for (; m0 + 4 <= j->m; m0 += 4)                                             \
                for (int64_t r = rb; r < re; r++) NAME##_4(j, j->p + r * j->k, r, m0);  \
            for (; m0 < j->m; m0++)                                                     \
                for (int64_t r = rb; r < re; r++) NAME##_1(j, j->p + r * j->k, r, m0);  \
        }                                                                               \
    }

#define DOT_BW(acc, c, x) _mm512_add_epi32((acc), _mm512_madd_epi16(_mm512_maddubs_epi16((c), (x)), ones))
#define DOT_VNNI(acc, c, x) _mm512_dpbusd_epi32((acc), (c), (x))

R3_FWD512(fwd_avx512bw, T_AVX512, DOT_BW)
R3_FWD512(fwd_avx512vnni, T_VNNI, DOT_VNNI)

/* gradient: 8 (AVX2) or 16 (AVX-512) columns per step, the same add order as the scalar path */
T_AVX2 static inline void axpy4_avx2(const uint8_t *p, const float gv[4][4],
                                     float *const acc[4], int mb, int64_t c0, int64_t c1) {
    const __m256i mask3 = _mm256_set1_epi32(3);
    const __m256i one = _mm256_set1_epi32(1);
    int64_t c = c0;
    for (; c + 8 <= c1; c += 8) {
        __m256i bytes = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p + c)));
        __m256 w[4];
        for (int b = 0; b < 4; b++) {
            __m256i code = _mm256_and_si256(_mm256_srli_epi32(bytes, 2 * b), mask3);
            w[b] = _mm256_cvtepi32_ps(_mm256_sub_epi32(code, one));
        }
        for (int t = 0; t < mb; t++) {
            __m256 a = _mm256_loadu_ps(acc[t] + c);
            for (int b = 0; b < 4; b++) /* w * g is exact, so fma == mul + add */
                a = _mm256_fmadd_ps(w[b], _mm256_set1_ps(gv[t][b]), a);
            _mm256_storeu_ps(acc[t] + c, a);
        }
    }
    axpy4_scalar(p, gv, acc, mb, c, c1);
}

T_AVX512 static inline void axpy4_avx512(const uint8_t *p, const float gv[4][4],
                                         float *const acc[4], int mb, int64_t c0, int64_t c1) {
    const __m512i mask3 = _mm512_set1_epi32(3);
    const __m512i one = _mm512_set1_epi32(1);
    int64_t c = c0;
    for (; c + 16 <= c1; c += 16) {
        __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p + c)));
        __m512 w[4];
        for (int b = 0; b < 4; b++) {
            __m512i code = _mm512_and_si512(_mm512_srli_epi32(bytes, 2 * b), mask3);
            w[b] = _mm512_cvtepi32_ps(_mm512_sub_epi32(code, one));
        }
        for (int t = 0; t < mb; t++) {
            __m512 a = _mm512_loadu_ps(acc[t] + c);
            for (int b = 0; b < 4; b++) a = _mm512_fmadd_ps(w[b], _mm512_set1_ps(gv[t][b]), a);
            _mm512_storeu_ps(acc[t] + c, a);
        }
    }
    axpy4_scalar(p, gv, acc, mb, c, c1);
}

T_AVX2 static void bwd_avx2(const bwd_job *j, int64_t k0, int64_t k1) { R3_BWD_BODY(axpy4_avx2) }
T_AVX512 static void bwd_avx512(const bwd_job *j, int64_t k0, int64_t k1) {
    R3_BWD_BODY(axpy4_avx512)
}

#endif /* R3_X86 */

/* ---------------------------------------------------------------- ARM */
#ifdef R3_ARM

static inline int32x4_t dot_neon(int32x4_t acc, int8x16_t c, int8x16_t x) {
    int16x8_t lo = vmull_s8(vget_low_s8(c), vget_low_s8(x));
    int16x8_t hi = vmull_s8(vget_high_s8(c), vget_high_s8(x));
    return vpadalq_s16(vpadalq_s16(acc, lo), hi);
}

#define R3_FWDNEON(NAME, TARGET, DOT)                                                   \
    TARGET static void NAME(const fwd_job *j, int64_t r0, int64_t r1) {                 \
        const uint8x16_t mask3 = vdupq_n_u8(3);                                         \
        const int64_t kv = j->k & ~(int64_t)15;                                         \
        for (int64_t r = r0; r < r1; r++) {                                             \
            const uint8_t *p = j->p + r * j->k;                                         \
            for (int64_t m0 = 0; m0 < j->m; m0 += 2) {                                  \
                const int8_t *x0 = j->x + m0 * j->k;                                    \
                const int8_t *x1 = m0 + 1 < j->m ? x0 + j->k : x0;                      \
                int32x4_t a[2][4];                                                      \
                for (int b = 0; b < 4; b++) a[0][b] = a[1][b] = vdupq_n_s32(0);         \
                for (int64_t k = 0; k < kv; k += 16) {                                  \
                    uint8x16_t pv = vld1q_u8(p + k);                                    \
                    int8x16_t c[4];                                                     \
                    c[0] = vreinterpretq_s8_u8(vandq_u8(pv, mask3));                    \
                    c[1] = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(pv, 2), mask3));     \
                    c[2] = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(pv, 4), mask3));     \
                    c[3] = vreinterpretq_s8_u8(vshrq_n_u8(pv, 6));                      \
                    int8x16_t xv0 = vld1q_s8(x0 + k), xv1 = vld1q_s8(x1 + k);           \
                    for (int b = 0; b < 4; b++) {                                       \
                        a[0][b] = DOT(a[0][b], c[b], xv0);                              \
                        a[1][b] = DOT(a[1][b], c[b], xv1);                              \
                    }                                                                   \
                }                                                                       \
                for (int t = 0; t < 2 && m0 + t < j->m; t++) {                          \
                    int32_t s[4];                                                       \
                    for (int b = 0; b < 4; b++) s[b] = vaddvq_s32(a[t][b]);             \
                    tail4(p, t ? x1 : x0, kv, j->k, s);                                 \
                    store4(j, r, m0 + t, s);                                            \
                }                                                                       \
            }                                                                           \
        }                                                                               \
    }

#define T_NONE
#define T_DOTPROD __attribute__((target("arch=armv8.2-a+dotprod")))
#define DOT_SDOT(acc, c, x) vdotq_s32((acc), (c), (x))

R3_FWDNEON(fwd_neon, T_NONE, dot_neon)
R3_FWDNEON(fwd_neon_dotprod, T_DOTPROD, DOT_SDOT)

static inline void axpy4_neon(const uint8_t *p, const float gv[4][4], float *const acc[4],
                              int mb, int64_t c0, int64_t c1) {
    const uint32x4_t mask3 = vdupq_n_u32(3);
    const int32x4_t one = vdupq_n_s32(1);
    int64_t c = c0;
    for (; c + 4 <= c1; c += 4) {
        uint32x4_t bytes = {p[c], p[c + 1], p[c + 2], p[c + 3]};
        float32x4_t w[4];
        for (int b = 0; b < 4; b++) {
            uint32x4_t code = vandq_u32(vshlq_u32(bytes, vdupq_n_s32(-2 * b)), mask3);
            w[b] = vcvtq_f32_s32(vsubq_s32(vreinterpretq_s32_u32(code), one));
        }
        for (int t = 0; t < mb; t++) {
            float32x4_t a = vld1q_f32(acc[t] + c);
            for (int b = 0; b < 4; b++) a = vfmaq_n_f32(a, w[b], gv[t][b]);
            vst1q_f32(acc[t] + c, a);
        }
    }
    axpy4_scalar(p, gv, acc, mb, c, c1);
}

static void bwd_neon(const bwd_job *j, int64_t k0, int64_t k1) { R3_BWD_BODY(axpy4_neon) }

#endif /* R3_ARM */

/* ---------------------------------------------------------------- dispatch */

typedef void (*fwd_fn)(const fwd_job *, int64_t, int64_t);
typedef void (*bwd_fn)(const bwd_job *, int64_t, int64_t);
typedef void (*quant_fn)(const quant_job *, int64_t, int64_t);

R3_EXPORT int r3mes_ternary_isa_supported(int isa) {
    switch (isa) {
    case ISA_SCALAR:
        return 1;
#ifdef R3_X86
    case ISA_AVX2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case ISA_AVX512BW:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl");
    case ISA_AVX512VNNI:
        return r3mes_ternary_isa_supported(ISA_AVX512BW) &&
               __builtin_cpu_supports("avx512vnni");
#endif
#ifdef R3_ARM
    case ISA_NEON:
        return 1;
    case ISA_NEON_DOTPROD:
#if defined(__linux__) && defined(HWCAP_ASIMDDP)
        return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#elif defined(__APPLE__)
        {
            int value = 0;
            size_t size = sizeof(value);
            if (sysctlbyname("hw.optional.arm.FEAT_DotProd", &value, &size, NULL, 0) != 0)
                return 0;
            return value != 0;
        }
#else
        return 0;
#endif
#endif
    default:
        return 0;
    }
}

R3_EXPORT int r3mes_ternary_best_isa(void) {
    static const int order[] = {ISA_AVX512VNNI, ISA_AVX512BW, ISA_AVX2, ISA_NEON_DOTPROD,
                                ISA_NEON};
    for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++)
        if (r3mes_ternary_isa_supported(order[i])) return order[i];
    return ISA_SCALAR;
}

static fwd_fn fwd_for(int isa) {
    switch (isa) {
    case ISA_SCALAR:
        return fwd_scalar;
#ifdef R3_X86
    case ISA_AVX2:
        return fwd_avx2;
    case ISA_AVX512BW:
        return fwd_avx512bw;
    case ISA_AVX512VNNI:
        return fwd_avx512vnni;
#endif
#ifdef R3_ARM
    case ISA_NEON:
        return fwd_neon;
    case ISA_NEON_DOTPROD:
        return fwd_neon_dotprod;
#endif
    default:
        return NULL;
    }
}

/* every path quantizes to the same bits; the x86 vector paths do it 8 lanes at a time */
static quant_fn quant_for(int isa) {
#ifdef R3_X86
    if (isa == ISA_AVX2 || isa == ISA_AVX512BW || isa == ISA_AVX512VNNI) return quant_avx2;
#endif
    (void)isa;
    return quant_scalar;
}

static bwd_fn bwd_for(int isa) {
    switch (isa) {
    case ISA_SCALAR:
        return bwd_scalar;
#ifdef R3_X86
    case ISA_AVX2:
        return bwd_avx2;
    case ISA_AVX512BW:
    case ISA_AVX512VNNI:
        return bwd_avx512;
#endif
#ifdef R3_ARM
    case ISA_NEON:
    case ISA_NEON_DOTPROD:
        return bwd_neon;
#endif
    default:
        return NULL;
    }
}

/* ---------------------------------------------------------------- threads */

enum { SLICE_FWD = 0, SLICE_BWD = 1, SLICE_QUANT = 2, SLICE_RANGE = 3 };

typedef struct {
    int kind;
    fwd_fn fwd;
    bwd_fn bwd;
    quant_fn quant;
    r3_range_fn range; /* SLICE_RANGE: another file's kernel (head.c) */
    const void *job;
    int64_t lo, hi;
} slice;

static void run_slice(const slice *s) {
    if (s->kind == SLICE_RANGE)
        s->range(s->job, s->lo, s->hi);
    else if (s->kind == SLICE_BWD)
        s->bwd((const bwd_job *)s->job, s->lo, s->hi);
    else if (s->kind == SLICE_QUANT)
        s->quant((const quant_job *)s->job, s->lo, s->hi);
    else {
        const fwd_job *j = (const fwd_job *)s->job;
        s->fwd(j, s->lo, s->hi);
        if (j->fout) rescale_rows(j, s->lo, s->hi);
    }
}


/* A persistent pool, woken per call, with work handed out in small units from one atomic
 * counter.  Two things made the old scheme (create N-1 threads per call, split the rows into
 * N fixed ranges, join) slower at 2 threads than at 1 on a busy machine: a fixed range waits
 * for its thread to be scheduled, however long that takes, and every call paid for thread
 * creation (about 210 calls per decoded token).  Here the caller works too and claims units
 * until none is left; a worker that wakes late finds nothing to claim and goes back to sleep,
 * so a call waits only for units already being computed, never for a thread to start.
 * Idle workers sleep on a condition variable (no spinning that would compete with torch's
 * own threads).  Which thread computes a unit never changes its bits: every output element is
 * computed by one unit, in the same order, whoever runs it.
 *
 * Claims carry the call's generation in the counter's high 32 bits, so a worker still holding
 * an earlier call's parameters can never claim a unit of a later call.  One call uses the pool
 * at a time; a concurrent caller (another Python thread: ctypes releases the GIL) runs its
 * units itself rather than waiting.  After fork() the child starts with an empty pool. */

#define MAX_WORKERS 255

typedef struct {
    slice proto;
    int64_t total, grain, units;
    uint32_t gen;
} pool_job;

static struct {
    pthread_mutex_t mu, use;
    pthread_cond_t wake, finished;
    int workers, want, atfork;
    pool_job job;
    _Atomic uint64_t ticket; /* gen << 32 | next unit */
    _Atomic int64_t done;    /* units finished in the current call */
} pool = {.mu = PTHREAD_MUTEX_INITIALIZER,
            .use = PTHREAD_MUTEX_INITIALIZER,
            .wake = PTHREAD_COND_INITIALIZER,
            .finished = PTHREAD_COND_INITIALIZER};

static void run_unit(const pool_job *job, int64_t u) {
    slice s = job->proto;
    s.lo = u * job->grain;
    s.hi = s.lo + job->grain < job->total ? s.lo + job->grain : job->total;
    run_slice(&s);
}

/* Claim and run units of `job` until none is left; returns how many this thread ran. */
static int64_t drain(const pool_job *job) {
    int64_t ran = 0;
    for (;;) {
        uint64_t t = atomic_load(&pool.ticket);
        if ((uint32_t)(t >> 32) != job->gen || (int64_t)(t & 0xffffffffu) >= job->units) break;
        if (!atomic_compare_exchange_weak(&pool.ticket, &t, t + 1)) continue;
        run_unit(job, (int64_t)(t & 0xffffffffu));
        ran++;
        if (atomic_fetch_add(&pool.done, 1) + 1 == job->units) {
            pthread_mutex_lock(&pool.mu);
            pthread_cond_broadcast(&pool.finished);
            pthread_mutex_unlock(&pool.mu);
        }
    }
    return ran;
}

/* arg: the worker's index in the low 8 bits, above them the last generation it need not run */
static void *worker_main(void *arg) {
    int index = (int)((uintptr_t)arg & 0xff);
    uint32_t seen = (uint32_t)((uintptr_t)arg >> 8);
    pthread_mutex_lock(&pool.mu);
    for (;;) {
        while (pool.job.gen == seen) pthread_cond_wait(&pool.wake, &pool.mu);
        seen = pool.job.gen;
        if (index >= pool.want) continue;
        pool_job job = pool.job;
        pthread_mutex_unlock(&pool.mu);
        drain(&job);
        pthread_mutex_lock(&pool.mu);
    }
    return NULL;
}

static void pool_after_fork_child(void) {
    /* only the forking thread survives: forget the workers, reset the locks */
    pthread_mutex_init(&pool.mu, NULL);
    pthread_mutex_init(&pool.use, NULL);
    pthread_cond_init(&pool.wake, NULL);
    pthread_cond_init(&pool.finished, NULL);
    pool.workers = 0;
    pool.want = 0;
}

/* Start workers until `n` exist (under pool.mu); returns how many there are. */
static int pool_grow(int n) {
    if (!pool.atfork) {
        pthread_atfork(NULL, NULL, pool_after_fork_child);
        pool.atfork = 1;
    }
    while (pool.workers < n) {
        pthread_t id;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        uintptr_t arg = (uintptr_t)pool.job.gen << 8 | (uintptr_t)pool.workers;
        int rc = pthread_create(&id, &attr, worker_main, (void *)arg);
        pthread_attr_destroy(&attr);
        if (rc != 0) break;
        pool.workers++;
    }
    return pool.workers;
}

/* Run [0, total) in units of `grain` on up to `threads` threads (the caller is one). */
static int run_split(slice proto, int64_t total, int64_t grain, int threads) {
    int64_t units = (total + grain - 1) / grain;
    if (threads > units) threads = (int)units;
    if (threads > MAX_WORKERS + 1) threads = MAX_WORKERS + 1;
    if (threads <= 1 || units > 0xffffffffLL || pthread_mutex_trylock(&pool.use) != 0) {
        slice s = proto; /* one thread, or the pool is busy with another call: run inline */
        s.lo = 0;
        s.hi = total;
        run_slice(&s);
        return 0;
    }
    pthread_mutex_lock(&pool.mu);
    int helpers = pool_grow(threads - 1);
    pool_job job = {proto, total, grain, units, pool.job.gen + 1};
    if (job.gen == 0) job.gen = 1; /* 0 never names a call */
    pool.job = job;
    pool.want = helpers;
    atomic_store(&pool.done, 0);
    atomic_store(&pool.ticket, (uint64_t)job.gen << 32);
    if (helpers > 0) pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.mu);
    drain(&job);
    if (atomic_load(&pool.done) < units) {
        pthread_mutex_lock(&pool.mu);
        while (atomic_load(&pool.done) < units) pthread_cond_wait(&pool.finished, &pool.mu);
        pthread_mutex_unlock(&pool.mu);
    }
    pthread_mutex_unlock(&pool.use);
    return 0;
}

int r3_run_parallel(r3_range_fn fn, const void *job, int64_t total, int64_t grain, int threads) {
    slice proto = {SLICE_RANGE, NULL, NULL, NULL, fn, job, 0, 0};
    return run_split(proto, total, grain, threads);
}

/* ---------------------------------------------------------------- entry points */

/* out (m, n) int32 = x (m, k) int8  @  W^T, W (n, k) ternary packed as p (ceil(n/4), k) */
R3_EXPORT int r3mes_ternary_matmul(const int8_t *x, const uint8_t *p, int32_t *out, int64_t m,
                                   int64_t k, int64_t n, int isa, int threads) {
    if (!x || !p || !out || m <= 0 || k <= 0 || n <= 0) return ERR_ARGS;
    if (!r3mes_ternary_isa_supported(isa)) return ERR_ISA;
    fwd_fn fn = fwd_for(isa);
    if (!fn) return ERR_ISA;
    int32_t *xsum = (int32_t *)malloc((size_t)m * sizeof(int32_t));
    if (!xsum) return ERR_MEMORY;
    for (int64_t i = 0; i < m; i++) {
        int32_t s = 0;
        for (int64_t c = 0; c < k; c++) s += x[i * k + c];
        xsum[i] = s;
    }
    fwd_job job = {x, xsum, p, out, NULL, NULL, m, k, n, (n + 3) / 4};
    slice proto = {SLICE_FWD, fn, NULL, NULL, NULL, &job, 0, 0};
    int rc = run_split(proto, job.r, RBLOCK, threads);
    free(xsum);
    return rc;
}

/* out (m, k) float32 = g (m, n) float32  @  W, W (n, k) ternary packed as p (ceil(n/4), k) */
R3_EXPORT int r3mes_ternary_matmul_t(const float *g, const uint8_t *p, float *out, int64_t m,
                                     int64_t k, int64_t n, int isa, int threads) {
    if (!g || !p || !out || m <= 0 || k <= 0 || n <= 0) return ERR_ARGS;
    if (!r3mes_ternary_isa_supported(isa)) return ERR_ISA;
    bwd_fn fn = bwd_for(isa);
    if (!fn) return ERR_ISA;
    bwd_job job = {g, p, out, m, k, n, (n + 3) / 4};
    slice proto = {SLICE_BWD, NULL, fn, NULL, NULL, &job, 0, 0};
    return run_split(proto, k, KTILE, threads);
}

/* out (m, n) float32 = BitLinear's frozen forward (no bias) of x (m, k) float32: per-row int8
 * quantization, x_codes @ W^T in int32, rescale; W (n, k) ternary packed as p (ceil(n/4), k),
 * *wscale its weight_scale.  The same bits as the torch ops it replaces (see the top). */
R3_EXPORT int r3mes_ternary_linear(const float *x, const uint8_t *p, const float *wscale,
                                   float *out, int64_t m, int64_t k, int64_t n, int isa,
                                   int threads) {
    if (!x || !p || !wscale || !out || m <= 0 || k <= 0 || n <= 0) return ERR_ARGS;
    if (!r3mes_ternary_isa_supported(isa)) return ERR_ISA;
    fwd_fn fn = fwd_for(isa);
    if (!fn) return ERR_ISA;
    /* codes, then the per-row sums and denominators, in one block */
    size_t code_bytes = ((size_t)m * (size_t)k + 63) & ~(size_t)63;
    char *block = (char *)malloc(code_bytes + (size_t)m * (sizeof(int32_t) + sizeof(float)));
    if (!block) return ERR_MEMORY;
    int8_t *codes = (int8_t *)block;
    int32_t *xsum = (int32_t *)(block + code_bytes);
    float *den = (float *)(xsum + m);
    quant_job qj = {x, *wscale, codes, xsum, den, m, k};
    int64_t rows_per_unit = QUANT_GRAIN / k > 0 ? QUANT_GRAIN / k : 1;
    slice qs = {SLICE_QUANT, NULL, NULL, quant_for(isa), NULL, &qj, 0, 0};
    int rc = run_split(qs, m, rows_per_unit, threads);
    if (rc == 0) {
        fwd_job job = {codes, xsum, p, (int32_t *)(void *)out, out, den, m, k, n, (n + 3) / 4};
        slice proto = {SLICE_FWD, fn, NULL, NULL, NULL, &job, 0, 0};
        rc = run_split(proto, job.r, RBLOCK, threads);
    }
    free(block);
    return rc;
}
