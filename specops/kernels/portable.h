/* The portable build's kernels (portable.c), for CPUs without AVX-512: declared for qmatmul.c and
 * attention.c, which call them where the AVX-512 build runs its own (#ifdef SPECOPS_PORTABLE). */
#ifndef SPECOPS_PORTABLE_H
#define SPECOPS_PORTABLE_H
#include <stdint.h>

/* 1 when this CPU runs the portable build (AVX2 and FMA, the OS saving their registers). */
int specops_portable_cpu(void);

/* QMatMul's fp32 path for rows 0..rows-1 of output tile t (qmatmul.c's layout): a [rows, K]
 * activations, asum [rows, K/32] their block sums (NULL without mins), y [rows, N]. */
void specops_portable_fp32_rows(const float *a, const float *asum, int64_t K, const uint8_t *w, const float *wscale,
                                const float *wmin, float zero_point, int bits, float *y, int64_t N, int64_t t,
                                int rows);
/* Block sums of `blocks` blocks of 32 activations, one fixed order. */
void specops_portable_block_sums(const float *a, int64_t blocks, float *asum);

/* Attention's micro-kernels (see attention.c: the same arguments as its AVX-512 ones). */
void specops_portable_scores(const float *const *q, const float *kb, int64_t D, float scale, float *const *srow,
                             int64_t at, int nq, int nb);
void specops_portable_values(const float *const *e, const int64_t *len, const float *v, int64_t D, int64_t j0,
                             int64_t j1, float *const *acc_row, int nq, int nc);
float specops_portable_softmax(float *s, int64_t len);
#endif
