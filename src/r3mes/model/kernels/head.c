/*
 * The language-model head on a bfloat16 weight, for r3mes.model.kernels (see head.py).
 *
 * A 2B-4T checkpoint stores its tied embedding / head (128256 x 2560) in bfloat16: 656 MB, a
 * third of what a decoded token reads.  Held as float32 it is 1.31 GB and half the bytes of a
 * token.  These kernels keep it as stored and widen each bfloat16 to float32 in registers
 * (exact: a bfloat16 is the high half of a float32), so the head costs 2 bytes per weight.
 *
 * Forward: out[m, n] = sum_k x[m, k] * w[n, k], float32 x (M, K), bfloat16 w (N, K), float32
 * out (M, N).  Every element is the same function of its inputs on every path and at every
 * thread count: K is padded with zeros to a multiple of 16; lane l (0..15) accumulates the
 * products of k = l mod 16 in ascending k with a fused multiply-add (one rounding, as fmaf);
 * the 16 lanes are then summed as s_i = l_i + l_{i+8} (i < 8), s_i += s_{i+4} (i < 4),
 * s_i += s_{i+2} (i < 2), s_0 + s_1 - the order an AVX-512 register, two AVX2 registers and
 * four NEON registers reduce in, and what the scalar path spells out.
 *
 * Input gradient: out[m, k] = sum_n g[m, n] * w[n, k] (g float32 (M, N)), each element one
 * fused multiply-add per n in ascending n, on every path (vector lanes run along k, so a lane
 * is one output element and the order is the same whatever the width).
 *
 * Work is split by output rows (forward: n; gradient: k) on ternary.c's thread pool.
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#define H_X86 1
#include <immintrin.h>
#endif
#if defined(__aarch64__)
#define H_ARM 1
#include <arm_neon.h>
#endif

#define R3_EXPORT __attribute__((visibility("default")))

#define LANES 16
#define HEAD_GRAIN 128 /* forward: head rows per unit of the pool */
#define MCHUNK 64      /* forward: activation rows whose floats stay in L2 across head rows */
#define GRAD_KTILE 64  /* gradient: columns per unit (four AVX-512 registers per row) */
#define GRAD_NTILE 128 /* gradient: head rows widened at a time (128 x 64 floats: 32 KB, L1) */

typedef struct {
    const float *x;    /* (M, K) */
    const uint16_t *w; /* (N, K) bfloat16 bits */
    float *out;        /* (M, N) */
    int64_t m, k, n;
} head_job;

typedef struct {
    const float *g;    /* (M, N) */
    const uint16_t *w; /* (N, K) */
    float *out;        /* (M, K) */
    int64_t m, k, n;
} head_grad_job;

static inline float bf16_to_float(uint16_t bits) {
    uint32_t wide = (uint32_t)bits << 16;
    float f;
    memcpy(&f, &wide, sizeof f);
    return f;
}

static inline float tree16(const float lane[LANES]) {
    float s[8];
    for (int i = 0; i < 8; i++) s[i] = lane[i] + lane[i + 8];
    for (int i = 0; i < 4; i++) s[i] = s[i] + s[i + 4];
    for (int i = 0; i < 2; i++) s[i] = s[i] + s[i + 2];
    return s[0] + s[1];
}

/* ---------------------------------------------------------------- scalar */

static float dot_scalar(const float *x, const uint16_t *w, int64_t k) {
    float lane[LANES] = {0};
    int64_t padded = (k + LANES - 1) / LANES * LANES;
    for (int64_t c = 0; c < padded; c++) {
        float xv = c < k ? x[c] : 0.0f, wv = c < k ? bf16_to_float(w[c]) : 0.0f;
        lane[c % LANES] = fmaf(xv, wv, lane[c % LANES]);
    }
    return tree16(lane);
}

static void fwd_scalar(const void *job, int64_t n0, int64_t n1) {
    const head_job *j = (const head_job *)job;
    for (int64_t n = n0; n < n1; n++)
        for (int64_t m = 0; m < j->m; m++)
            j->out[m * j->n + n] = dot_scalar(j->x + m * j->k, j->w + n * j->k, j->k);
}

/* Gradient, one unit: columns [k0, k1) (at most GRAD_KTILE) of every row of out.  A tile of
 * GRAD_NTILE head rows is widened to float32 once (32 KB, stays in L1), then each gradient row
 * runs through it: `full` (a vector path, for a whole GRAD_KTILE-wide tile) or the plain loop,
 * which adds in the same order - n ascending, one fused multiply-add each. */
typedef void (*gtile_fn)(const float *wf, int64_t rows, const float *g, float *acc);
/* widen `rows` rows of GRAD_KTILE bfloat16 (row stride k) into wf; exact, so any path will do */
typedef void (*widen_fn)(const uint16_t *w, int64_t k, int64_t rows, float *wf);

/* two gradient rows at once (more independent accumulators than one row has), or NULL */
typedef void (*gtile2_fn)(const float *wf, int64_t rows, const float *g0, const float *g1,
                          float *acc0, float *acc1);

typedef struct {
    gtile_fn full;
    widen_fn widen;
    gtile2_fn full2;
} grad_path;

static void grad_tile(const head_grad_job *j, int64_t k0, int64_t k1, const grad_path *path) {
    float wf[GRAD_NTILE * GRAD_KTILE];
    const int64_t width = k1 - k0;
    for (int64_t m = 0; m < j->m; m++) memset(j->out + m * j->k + k0, 0, (size_t)width * sizeof(float));
    for (int64_t n0 = 0; n0 < j->n; n0 += GRAD_NTILE) {
        const int64_t rows = n0 + GRAD_NTILE < j->n ? GRAD_NTILE : j->n - n0;
        if (path && width == GRAD_KTILE)
            path->widen(j->w + n0 * j->k + k0, j->k, rows, wf);
        else
            for (int64_t r = 0; r < rows; r++) {
                const uint16_t *w = j->w + (n0 + r) * j->k + k0;
                for (int64_t c = 0; c < width; c++) wf[r * GRAD_KTILE + c] = bf16_to_float(w[c]);
            }
        int64_t m = 0;
        if (path && path->full2 && width == GRAD_KTILE)
            for (; m + 2 <= j->m; m += 2) {
                const float *g = j->g + m * j->n + n0;
                float *acc = j->out + m * j->k + k0;
                path->full2(wf, rows, g, g + j->n, acc, acc + j->k);
            }
        for (; m < j->m; m++) {
            float *acc = j->out + m * j->k + k0;
            const float *g = j->g + m * j->n + n0;
            if (path && width == GRAD_KTILE) {
                path->full(wf, rows, g, acc);
                continue;
            }
            for (int64_t c = 0; c < width; c++) {
                float a = acc[c];
                for (int64_t r = 0; r < rows; r++) a = fmaf(g[r], wf[r * GRAD_KTILE + c], a);
                acc[c] = a;
            }
        }
    }
}

/* a range of columns (one unit of the pool, or all of them on one thread), tile by tile */
static void grad_tiles(const head_grad_job *j, int64_t k0, int64_t k1, const grad_path *path) {
    for (int64_t c = k0; c < k1; c += GRAD_KTILE)
        grad_tile(j, c, c + GRAD_KTILE < k1 ? c + GRAD_KTILE : k1, path);
}

static void grad_scalar(const void *job, int64_t k0, int64_t k1) {
    grad_tiles((const head_grad_job *)job, k0, k1, NULL);
}

/* The padded tail of K, shared by the vector paths that have no masked loads: copy the last
 * partial group of 16 into zeroed buffers and run one more step on them. */
typedef struct {
    float x[4][LANES];
    uint16_t w[4][LANES];
} tail_buf;

static inline void fill_tail(tail_buf *t, const float *const *xr, int mb, const uint16_t *const *wr,
                             int nb, int64_t k0, int64_t k) {
    memset(t, 0, sizeof *t);
    for (int i = 0; i < mb; i++) memcpy(t->x[i], xr[i] + k0, (size_t)(k - k0) * sizeof(float));
    for (int i = 0; i < nb; i++) memcpy(t->w[i], wr[i] + k0, (size_t)(k - k0) * sizeof(uint16_t));
}

/* rows [r0, r0 + want) of a (rows, k) matrix, the missing ones repeating the last real row,
 * so a block at the edge computes (and then does not store) duplicates */
#define EDGE_ROWS(PTRS, BASE, R0, WANT, HAVE, K)                                       \
    for (int i_ = 0; i_ < (WANT); i_++)                                                 \
        (PTRS)[i_] = (BASE) + ((R0) + (i_ < (HAVE) ? i_ : (HAVE) - 1)) * (K)

/* The forward loop nest shared by the vector paths: head rows in blocks of NB, activation
 * rows in chunks of MCHUNK (kept in cache across the head rows) and blocks of MB. */
#define HEAD_FWD_BODY(BLOCK, MB, NB)                                                   \
    const head_job *j = (const head_job *)job;                                         \
    for (int64_t mc = 0; mc < j->m; mc += MCHUNK) {                                    \
        int64_t mend = mc + MCHUNK < j->m ? mc + MCHUNK : j->m;                         \
        for (int64_t n = n0; n < n1; n += NB) {                                        \
            int nb = n1 - n < NB ? (int)(n1 - n) : NB;                                  \
            for (int64_t m = mc; m < mend; m += MB) {                                  \
                int mb = mend - m < MB ? (int)(mend - m) : MB;                          \
                BLOCK(j, m, mb, n, nb);                                                 \
            }                                                                           \
        }                                                                               \
    }

/* ---------------------------------------------------------------- x86 */
#ifdef H_X86

#define T_AVX2 __attribute__((target("avx2,fma")))
#define T_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,fma")))

T_AVX2 static inline __m256 widen8(const uint16_t *w) {
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)w));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

/* lanes 0..7 in lo, 8..15 in hi: the tree of tree16 */
T_AVX2 static inline float tree_avx2(__m256 lo, __m256 hi) {
    __m256 s8 = _mm256_add_ps(lo, hi);
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}

/* AVX2: one activation row against 4 head rows, 16 lanes each in two registers */
T_AVX2 static inline void block_avx2(const head_job *j, int64_t m, int mb, int64_t n, int nb) {
    (void)mb;
    const uint16_t *wr[4];
    EDGE_ROWS(wr, j->w, n, 4, nb, j->k);
    const float *x = j->x + m * j->k;
    __m256 lo[4], hi[4];
    for (int b = 0; b < 4; b++) lo[b] = hi[b] = _mm256_setzero_ps();
    int64_t c = 0;
    for (; c + LANES <= j->k; c += LANES) {
        __m256 x0 = _mm256_loadu_ps(x + c), x1 = _mm256_loadu_ps(x + c + 8);
        for (int b = 0; b < 4; b++) {
            lo[b] = _mm256_fmadd_ps(x0, widen8(wr[b] + c), lo[b]);
            hi[b] = _mm256_fmadd_ps(x1, widen8(wr[b] + c + 8), hi[b]);
        }
    }
    if (c < j->k) {
        tail_buf t;
        fill_tail(&t, &x, 1, wr, 4, c, j->k);
        __m256 x0 = _mm256_loadu_ps(t.x[0]), x1 = _mm256_loadu_ps(t.x[0] + 8);
        for (int b = 0; b < 4; b++) {
            lo[b] = _mm256_fmadd_ps(x0, widen8(t.w[b]), lo[b]);
            hi[b] = _mm256_fmadd_ps(x1, widen8(t.w[b] + 8), hi[b]);
        }
    }
    for (int b = 0; b < nb; b++) j->out[m * j->n + n + b] = tree_avx2(lo[b], hi[b]);
}

T_AVX2 static void fwd_avx2(const void *job, int64_t n0, int64_t n1) {
    HEAD_FWD_BODY(block_avx2, 1, 4)
}

T_AVX512 static inline __m512 widen16(__m256i bits) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

T_AVX512 static inline float tree_avx512(__m512 v) {
    __m256 lo = _mm512_castps512_ps256(v);
    __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    return tree_avx2(lo, hi);
}

/* AVX-512: MB activation rows x 4 head rows, one register of 16 lanes per product.  MB is a
 * constant in each instance (1, 2 or 4), so a single row (decoding) does no wasted work. */
#define R3_BLOCK512(NAME, MB)                                                          \
    T_AVX512 static inline void NAME(const head_job *j, int64_t m,                       \
                                     const uint16_t *const wr[4],                        \
                                     int64_t n, int nb) {                                \
        const float *xr[MB];                                                            \
        for (int t = 0; t < MB; t++) xr[t] = j->x + (m + t) * j->k;                     \
        __m512 acc[MB][4];                                                              \
        for (int t = 0; t < MB; t++)                                                    \
            for (int b = 0; b < 4; b++) acc[t][b] = _mm512_setzero_ps();                \
        for (int64_t c = 0; c < j->k; c += LANES) {                                     \
            int left = j->k - c < LANES ? (int)(j->k - c) : LANES;                      \
            __mmask16 keep = (__mmask16)((1u << left) - 1u); /* zeros past K */         \
            __m512 w[4];                                                                \
            for (int b = 0; b < 4; b++)                                                 \
                w[b] = widen16(_mm256_maskz_loadu_epi16(keep, wr[b] + c));              \
            for (int t = 0; t < MB; t++) {                                              \
                __m512 xv = _mm512_maskz_loadu_ps(keep, xr[t] + c);                     \
                for (int b = 0; b < 4; b++) acc[t][b] = _mm512_fmadd_ps(xv, w[b], acc[t][b]); \
            }                                                                           \
        }                                                                               \
        for (int t = 0; t < MB; t++)                                                    \
            for (int b = 0; b < nb; b++) j->out[(m + t) * j->n + n + b] = tree_avx512(acc[t][b]); \
    }

R3_BLOCK512(block512_1, 1)
R3_BLOCK512(block512_2, 2)
R3_BLOCK512(block512_4, 4)

T_AVX512 static inline void block_avx512(const head_job *j, int64_t m, int mb, int64_t n, int nb) {
    const uint16_t *wr[4];
    EDGE_ROWS(wr, j->w, n, 4, nb, j->k);
    int64_t t = 0;
    for (; t + 4 <= mb; t += 4) block512_4(j, m + t, wr, n, nb);
    for (; t + 2 <= mb; t += 2) block512_2(j, m + t, wr, n, nb);
    for (; t < mb; t++) block512_1(j, m + t, wr, n, nb);
}

T_AVX512 static void fwd_avx512(const void *job, int64_t n0, int64_t n1) {
    HEAD_FWD_BODY(block_avx512, 4, 4)
}

/* gradient: one row through a widened tile, 64 columns in 8 (AVX2) or 4 (AVX-512) registers */
T_AVX2 static void gtile_avx2(const float *wf, int64_t rows, const float *g, float *acc) {
    __m256 a[8];
    for (int i = 0; i < 8; i++) a[i] = _mm256_loadu_ps(acc + 8 * i);
    for (int64_t r = 0; r < rows; r++) {
        __m256 gv = _mm256_set1_ps(g[r]);
        for (int i = 0; i < 8; i++)
            a[i] = _mm256_fmadd_ps(gv, _mm256_loadu_ps(wf + r * GRAD_KTILE + 8 * i), a[i]);
    }
    for (int i = 0; i < 8; i++) _mm256_storeu_ps(acc + 8 * i, a[i]);
}

T_AVX512 static void gtile_avx512(const float *wf, int64_t rows, const float *g, float *acc) {
    __m512 a[4];
    for (int i = 0; i < 4; i++) a[i] = _mm512_loadu_ps(acc + 16 * i);
    for (int64_t r = 0; r < rows; r++) {
        __m512 gv = _mm512_set1_ps(g[r]);
        for (int i = 0; i < 4; i++)
            a[i] = _mm512_fmadd_ps(gv, _mm512_loadu_ps(wf + r * GRAD_KTILE + 16 * i), a[i]);
    }
    for (int i = 0; i < 4; i++) _mm512_storeu_ps(acc + 16 * i, a[i]);
}

T_AVX2 static void widen_avx2(const uint16_t *w, int64_t k, int64_t rows, float *wf) {
    for (int64_t r = 0; r < rows; r++)
        for (int i = 0; i < GRAD_KTILE; i += 8) _mm256_storeu_ps(wf + r * GRAD_KTILE + i, widen8(w + r * k + i));
}

T_AVX512 static void widen_avx512(const uint16_t *w, int64_t k, int64_t rows, float *wf) {
    for (int64_t r = 0; r < rows; r++)
        for (int i = 0; i < GRAD_KTILE; i += 16)
            _mm512_storeu_ps(wf + r * GRAD_KTILE + i,
                             widen16(_mm256_loadu_si256((const __m256i *)(w + r * k + i))));
}

/* 8 accumulators in flight: a row alone has 4, and a fused multiply-add's latency (4 cycles
 * on two ports) would leave half of the FMA units idle */
T_AVX512 static void gtile2_avx512(const float *wf, int64_t rows, const float *g0, const float *g1,
                                   float *acc0, float *acc1) {
    __m512 a[4], b[4];
    for (int i = 0; i < 4; i++) {
        a[i] = _mm512_loadu_ps(acc0 + 16 * i);
        b[i] = _mm512_loadu_ps(acc1 + 16 * i);
    }
    for (int64_t r = 0; r < rows; r++) {
        __m512 ga = _mm512_set1_ps(g0[r]), gb = _mm512_set1_ps(g1[r]);
        for (int i = 0; i < 4; i++) {
            __m512 w = _mm512_loadu_ps(wf + r * GRAD_KTILE + 16 * i);
            a[i] = _mm512_fmadd_ps(ga, w, a[i]);
            b[i] = _mm512_fmadd_ps(gb, w, b[i]);
        }
    }
    for (int i = 0; i < 4; i++) {
        _mm512_storeu_ps(acc0 + 16 * i, a[i]);
        _mm512_storeu_ps(acc1 + 16 * i, b[i]);
    }
}

static const grad_path GRAD_AVX2 = {gtile_avx2, widen_avx2, NULL};
static const grad_path GRAD_AVX512 = {gtile_avx512, widen_avx512, gtile2_avx512};

static void grad_avx2(const void *job, int64_t k0, int64_t k1) {
    grad_tiles((const head_grad_job *)job, k0, k1, &GRAD_AVX2);
}

static void grad_avx512(const void *job, int64_t k0, int64_t k1) {
    grad_tiles((const head_grad_job *)job, k0, k1, &GRAD_AVX512);
}

#endif /* H_X86 */

/* ---------------------------------------------------------------- ARM */
#ifdef H_ARM

static inline float32x4_t widen4(const uint16_t *w) {
    return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(w), 16));
}

/* lanes 0..3, 4..7, 8..11, 12..15 in a[0..3]: the tree of tree16 */
static inline float tree_neon(const float32x4_t a[4]) {
    float32x4_t s4 = vaddq_f32(vaddq_f32(a[0], a[2]), vaddq_f32(a[1], a[3]));
    float32x2_t s2 = vadd_f32(vget_low_f32(s4), vget_high_f32(s4));
    return vget_lane_f32(s2, 0) + vget_lane_f32(s2, 1);
}

/* one activation row against 4 head rows, 16 lanes each in four registers */
static inline void block_neon(const head_job *j, int64_t m, int mb, int64_t n, int nb) {
    (void)mb;
    const uint16_t *wr[4];
    EDGE_ROWS(wr, j->w, n, 4, nb, j->k);
    const float *x = j->x + m * j->k;
    float32x4_t acc[4][4];
    for (int b = 0; b < 4; b++)
        for (int q = 0; q < 4; q++) acc[b][q] = vdupq_n_f32(0.0f);
    int64_t c = 0;
    for (; c + LANES <= j->k; c += LANES)
        for (int q = 0; q < 4; q++) {
            float32x4_t xv = vld1q_f32(x + c + 4 * q);
            for (int b = 0; b < 4; b++) acc[b][q] = vfmaq_f32(acc[b][q], xv, widen4(wr[b] + c + 4 * q));
        }
    if (c < j->k) {
        tail_buf t;
        fill_tail(&t, &x, 1, wr, 4, c, j->k);
        for (int q = 0; q < 4; q++) {
            float32x4_t xv = vld1q_f32(t.x[0] + 4 * q);
            for (int b = 0; b < 4; b++) acc[b][q] = vfmaq_f32(acc[b][q], xv, widen4(t.w[b] + 4 * q));
        }
    }
    for (int b = 0; b < nb; b++) j->out[m * j->n + n + b] = tree_neon(acc[b]);
}

static void fwd_neon(const void *job, int64_t n0, int64_t n1) { HEAD_FWD_BODY(block_neon, 1, 4) }

static void gtile_neon(const float *wf, int64_t rows, const float *g, float *acc) {
    float32x4_t a[16];
    for (int i = 0; i < 16; i++) a[i] = vld1q_f32(acc + 4 * i);
    for (int64_t r = 0; r < rows; r++)
        for (int i = 0; i < 16; i++) a[i] = vfmaq_n_f32(a[i], vld1q_f32(wf + r * GRAD_KTILE + 4 * i), g[r]);
    for (int i = 0; i < 16; i++) vst1q_f32(acc + 4 * i, a[i]);
}

static void widen_neon(const uint16_t *w, int64_t k, int64_t rows, float *wf) {
    for (int64_t r = 0; r < rows; r++)
        for (int i = 0; i < GRAD_KTILE; i += 4) vst1q_f32(wf + r * GRAD_KTILE + i, widen4(w + r * k + i));
}

static const grad_path GRAD_NEON = {gtile_neon, widen_neon, NULL};

static void grad_neon(const void *job, int64_t k0, int64_t k1) {
    grad_tiles((const head_grad_job *)job, k0, k1, &GRAD_NEON);
}

#endif /* H_ARM */

/* ---------------------------------------------------------------- dispatch and entry points */

static r3_range_fn fwd_for(int isa) {
    switch (isa) {
    case ISA_SCALAR:
        return fwd_scalar;
#ifdef H_X86
    case ISA_AVX2:
        return fwd_avx2;
    case ISA_AVX512BW:
    case ISA_AVX512VNNI:
        return fwd_avx512;
#endif
#ifdef H_ARM
    case ISA_NEON:
    case ISA_NEON_DOTPROD:
        return fwd_neon;
#endif
    default:
        return NULL;
    }
}

static r3_range_fn grad_for(int isa) {
    switch (isa) {
    case ISA_SCALAR:
        return grad_scalar;
#ifdef H_X86
    case ISA_AVX2:
        return grad_avx2;
    case ISA_AVX512BW:
    case ISA_AVX512VNNI:
        return grad_avx512;
#endif
#ifdef H_ARM
    case ISA_NEON:
    case ISA_NEON_DOTPROD:
        return grad_neon;
#endif
    default:
        return NULL;
    }
}

/* out (m, n) float32 = x (m, k) float32 @ W^T, W (n, k) bfloat16 */
R3_EXPORT int r3mes_bf16_linear(const float *x, const uint16_t *w, float *out, int64_t m,
                                int64_t k, int64_t n, int isa, int threads) {
    if (!x || !w || !out || m <= 0 || k <= 0 || n <= 0) return ERR_ARGS;
    if (!r3mes_ternary_isa_supported(isa)) return ERR_ISA;
    r3_range_fn fn = fwd_for(isa);
    if (!fn) return ERR_ISA;
    head_job job = {x, w, out, m, k, n};
    return r3_run_parallel(fn, &job, n, HEAD_GRAIN, threads);
}

/* out (m, k) float32 = g (m, n) float32 @ W, W (n, k) bfloat16 */
R3_EXPORT int r3mes_bf16_matmul_t(const float *g, const uint16_t *w, float *out, int64_t m,
                                  int64_t k, int64_t n, int isa, int threads) {
    if (!g || !w || !out || m <= 0 || k <= 0 || n <= 0) return ERR_ARGS;
    if (!r3mes_ternary_isa_supported(isa)) return ERR_ISA;
    r3_range_fn fn = grad_for(isa);
    if (!fn) return ERR_ISA;
    head_grad_job job = {g, w, out, m, k, n};
    return r3_run_parallel(fn, &job, k, GRAD_KTILE, threads);
}
