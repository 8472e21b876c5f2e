/*
 * What the two kernel files of r3mes.model.kernels share: instruction-set names, error codes
 * and the thread pool (defined in ternary.c, used by head.c).
 */
#ifndef R3MES_KERNELS_H
#define R3MES_KERNELS_H

#include <stdint.h>

enum {
    ISA_SCALAR = 0,
    ISA_AVX2 = 1,
    ISA_AVX512BW = 2,
    ISA_AVX512VNNI = 3,
    ISA_NEON = 4,
    ISA_NEON_DOTPROD = 5,
    ISA_COUNT = 6
};

#define ERR_ARGS -1
#define ERR_ISA -2
#define ERR_THREAD -3
#define ERR_MEMORY -4

/* Work on [lo, hi) of a job; which thread runs a range never changes the bits it writes. */
typedef void (*r3_range_fn)(const void *job, int64_t lo, int64_t hi);

/* Run fn over [0, total) in units of `grain` on up to `threads` threads (the caller is one),
 * on ternary.c's persistent pool. */
__attribute__((visibility("hidden"))) int r3_run_parallel(r3_range_fn fn, const void *job,
                                                          int64_t total, int64_t grain,
                                                          int threads);

int r3mes_ternary_isa_supported(int isa);

#endif
