/* Checks every supported ISA of ternary.c against a plain reference, forward and gradient, and
 * the fused linear of every ISA and thread count against the scalar path's bits; and head.c's
 * bfloat16 head, forward and gradient, on every ISA and thread count against the scalar bits
 * (which are checked against a double-precision reference). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
int r3mes_ternary_isa_supported(int);
int r3mes_ternary_matmul(const int8_t*, const uint8_t*, int32_t*, int64_t, int64_t, int64_t, int, int);
int r3mes_ternary_matmul_t(const float*, const uint8_t*, float*, int64_t, int64_t, int64_t, int, int);
int r3mes_ternary_linear(const float*, const uint8_t*, const float*, float*, int64_t, int64_t, int64_t, int, int);
int r3mes_bf16_linear(const float*, const uint16_t*, float*, int64_t, int64_t, int64_t, int, int);
int r3mes_bf16_matmul_t(const float*, const uint16_t*, float*, int64_t, int64_t, int64_t, int, int);
static unsigned s = 12345; static unsigned rnd(void) { s = s * 1103515245u + 12345u; return s >> 8; }
static float bf16f(uint16_t b) { uint32_t u = (uint32_t)b << 16; float f; memcpy(&f, &u, 4); return f; }
static int check_head(void) {
    int shapes[][3] = {{1,16,4},{1,2560,9},{3,100,7},{5,517,70},{9,33,13},{7,48,301},{17,45,23},{70,130,9}};
    int bad = 0;
    for (int si = 0; si < 8; si++) {
        int m = shapes[si][0], k = shapes[si][1], n = shapes[si][2];
        uint16_t *w = malloc(2 * (size_t)n * k);
        float *x = malloc(4 * (size_t)m * k), *g = malloc(4 * (size_t)m * n);
        float *ref = malloc(4 * (size_t)m * n), *out = malloc(4 * (size_t)m * n);
        float *gref = malloc(4 * (size_t)m * k), *gout = malloc(4 * (size_t)m * k);
        for (int i = 0; i < n * k; i++) w[i] = (uint16_t)(0x3c00 + rnd() % 0x0800) ^ (uint16_t)(rnd() & 1 ? 0x8000 : 0);
        for (int i = 0; i < m * k; i++) x[i] = (float)((int)(rnd() % 20001) - 10000) / 3333.0f;
        for (int i = 0; i < m * n; i++) g[i] = (float)((int)(rnd() % 2001) - 1000) / 997.0f;
        if (r3mes_bf16_linear(x, w, ref, m, k, n, 0, 1) || r3mes_bf16_matmul_t(g, w, gref, m, k, n, 0, 1)) bad++;
        for (int i = 0; i < m; i++) for (int o = 0; o < n; o++) {
            double a = 0, mag = 0;
            for (int c = 0; c < k; c++) { double t = (double)x[i*k+c] * bf16f(w[o*k+c]); a += t; mag += fabs(t); }
            if (fabs(a - ref[i*n+o]) > 1e-5 * mag + 1e-30) { printf("head fwd off shape %d\n", si); bad++; }
        }
        for (int i = 0; i < m; i++) for (int c = 0; c < k; c++) {
            double a = 0, mag = 0;
            for (int o = 0; o < n; o++) { double t = (double)g[i*n+o] * bf16f(w[o*k+c]); a += t; mag += fabs(t); }
            if (fabs(a - gref[i*k+c]) > 1e-5 * mag + 1e-30) { printf("head grad off shape %d\n", si); bad++; }
        }
        for (int isa = 0; isa < 6; isa++) {
            if (!r3mes_ternary_isa_supported(isa)) continue;
            for (int th = 1; th <= 3; th++) {
                if (r3mes_bf16_linear(x, w, out, m, k, n, isa, th) || memcmp(out, ref, 4 * (size_t)m * n)) { printf("head fwd mismatch isa %d shape %d th %d\n", isa, si, th); bad++; }
                if (r3mes_bf16_matmul_t(g, w, gout, m, k, n, isa, th) || memcmp(gout, gref, 4 * (size_t)m * k)) { printf("head grad mismatch isa %d shape %d th %d\n", isa, si, th); bad++; }
            }
        }
        free(w); free(x); free(g); free(ref); free(out); free(gref); free(gout);
    }
    return bad;
}
int main(void) {
    int shapes[][3] = {{1,64,4},{3,100,7},{5,517,70},{9,130,33},{4,256,16},{6,2560,13}};
    int bad = check_head();
    for (int si = 0; si < 6; si++) {
        int m = shapes[si][0], k = shapes[si][1], n = shapes[si][2], R = (n + 3) / 4;
        int8_t *w = malloc(n * k), *x = malloc(m * k); uint8_t *p = calloc(R * k, 1);
        float *g = malloc(sizeof(float) * m * n), *gref = NULL;
        for (int i = 0; i < n * k; i++) w[i] = (int)(rnd() % 3) - 1;
        for (int i = 0; i < m * k; i++) x[i] = (int8_t)(rnd() % 256 - 128);
        for (int i = 0; i < m * n; i++) g[i] = (float)((int)(rnd() % 2001) - 1000) / 997.0f;
        for (int r = 0; r < R; r++) for (int c = 0; c < k; c++) {
            uint8_t b = 0;
            for (int q = 0; q < 4; q++) { int o = r + q * R; b |= (uint8_t)((o < n ? w[o * k + c] + 1 : 1) << (2 * q)); }
            p[r * k + c] = b;
        }
        int32_t *ref = malloc(4 * m * n), *out = malloc(4 * m * n);
        for (int i = 0; i < m; i++) for (int o = 0; o < n; o++) { int32_t a = 0; for (int c = 0; c < k; c++) a += w[o*k+c] * x[i*k+c]; ref[i*n+o] = a; }
        float *gout = malloc(sizeof(float) * m * k); gref = malloc(sizeof(float) * m * k);
        if (r3mes_ternary_matmul_t(g, p, gref, m, k, n, 0, 1)) bad++;
        float *xf = malloc(sizeof(float) * m * k), *lref = malloc(sizeof(float) * m * n), *lout = malloc(sizeof(float) * m * n);
        float ws = 1.7f;
        for (int i = 0; i < m * k; i++) xf[i] = (float)((int)(rnd() % 20001) - 10000) / (float)(1 + i % 7) * (i % m == 1 ? 1e-30f : 1.0f);
        if (r3mes_ternary_linear(xf, p, &ws, lref, m, k, n, 0, 1)) bad++;
        for (int i = 0; i < m; i++) for (int o = 0; o < n; o++) if (lref[i * n + o] != lref[i * n + o]) { printf("linear NaN shape %d\n", si); bad++; }
        for (int isa = 0; isa < 6; isa++) {
            if (!r3mes_ternary_isa_supported(isa)) continue;
            for (int th = 1; th <= 3; th++) {
                if (r3mes_ternary_matmul(x, p, out, m, k, n, isa, th) || memcmp(out, ref, 4 * m * n)) { printf("fwd mismatch isa %d shape %d th %d\n", isa, si, th); bad++; }
                if (r3mes_ternary_matmul_t(g, p, gout, m, k, n, isa, th) || memcmp(gout, gref, sizeof(float) * m * k)) { printf("bwd mismatch isa %d shape %d th %d\n", isa, si, th); bad++; }
                if (r3mes_ternary_linear(xf, p, &ws, lout, m, k, n, isa, th) || memcmp(lout, lref, sizeof(float) * m * n)) { printf("linear mismatch isa %d shape %d th %d\n", isa, si, th); bad++; }
            }
        }
    }
    for (int isa = 0; isa < 6; isa++) printf("isa %d supported %d\n", isa, r3mes_ternary_isa_supported(isa));
    printf("%s\n", bad ? "FAIL" : "OK");
    return bad != 0;
}
