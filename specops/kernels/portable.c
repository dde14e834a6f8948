/* The portable build of specops' kernels: QMatMul's fp32 path and Attention's micro-kernels in
 * plain C, for CPUs with AVX2 and FMA but no AVX-512 (Zen 2/3, Haswell to client Xeons).
 *
 * kernels.py compiles qmatmul.c, attention.c and this file a second time with -DSPECOPS_PORTABLE
 * (which leaves their AVX-512 and AMX code out) and `-O3 -mavx2 -mfma -ffp-contract=off`. The
 * invariance the service needs (a row's result does not depend on how many rows share its pass)
 * then follows from the code itself: every sum below is written in one fixed order, each row on
 * its own, multiply-adds are explicit (_mm256_fmadd_ps: one rounding), and with contraction
 * off the compiler fuses nothing else, so the vectorizer may spread independent columns, keys or
 * dimensions over lanes but never reorders a sum. The numbers are the AVX-512 build's maths, not its bits (its lane reductions differ).
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "portable.h"

enum { TILE = 16, BLOCK = 32, KEYS = 16, GROUP = 48 };

int specops_portable_cpu(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

/* ---- QMatMul, fp32 ---------------------------------------------------------------------------- */
/* One tile's block as w[k][column] = code - zp (exact in fp32). 4 bits: chunk c's 32-bit word of
 * column j holds k = 8c + n/2 + 4 (n % 2) in its nibble n; 8 bits: step s's word, k = 4s + byte. */
static inline __attribute__((always_inline)) void block_values(const uint8_t *block, const int bits, float zp,
                                                                float w[BLOCK][TILE]) {
    const __m256 z = _mm256_set1_ps(zp);
    const __m256i mask = _mm256_set1_epi32(bits == 4 ? 15 : 255);
    for (int c = 0; c < (bits == 4 ? 4 : 8); c++) {
        const __m256i v[2] = {_mm256_loadu_si256((const __m256i *)(block + 64 * c)),
                              _mm256_loadu_si256((const __m256i *)(block + 64 * c + 32))};
        for (int n = 0; n < 32 / bits; n++) {
            const int k = bits == 4 ? 8 * c + n / 2 + 4 * (n % 2) : 4 * c + n;
            for (int h = 0; h < 2; h++) {
                const __m256i code = _mm256_and_si256(_mm256_srli_epi32(v[h], bits * n), mask);
                const __m256 f = _mm256_cvtepi32_ps(code);
                _mm256_store_ps(w[k] + 8 * h, zp == 0.0f ? f : _mm256_sub_ps(f, z));  /* Q4_1: no offset */
            }
        }
    }
}

/* One row's block: a . code for 16 columns (halves of 8) in four chains, k mod 4 picking the
 * chain, k ascending, each step one fused multiply-add; dot[h] = (c0 + c1) + (c2 + c3). */
static inline __attribute__((always_inline)) void block_dot(const float *x, const float w[BLOCK][TILE], __m256 dot[2]) {
    __m256 c[4][2];
    for (int i = 0; i < 4; i++) c[i][0] = c[i][1] = _mm256_setzero_ps();
    for (int k = 0; k < BLOCK; k += 4)
        for (int i = 0; i < 4; i++) {
            const __m256 xk = _mm256_broadcast_ss(x + k + i);
            for (int h = 0; h < 2; h++) c[i][h] = _mm256_fmadd_ps(xk, _mm256_load_ps(w[k + i] + 8 * h), c[i][h]);
        }
    for (int h = 0; h < 2; h++) dot[h] = _mm256_add_ps(_mm256_add_ps(c[0][h], c[1][h]), _mm256_add_ps(c[2][h], c[3][h]));
}

/* block_dot for a row alone (a decoding step), the codes converted in registers as they are used
 * instead of unpacked into w first: the same multiply-adds in the same order (k = 4m + i is step m
 * of chain i: chunk c's low nibbles are m = 2c, its high ones m = 2c + 1), so the same bits. */
static inline __attribute__((always_inline)) void lone_dot(const uint8_t *block, const int bits, float zp,
                                                            const float *x, __m256 dot[2]) {
    const __m256 z = _mm256_set1_ps(zp);
    const __m256i mask = _mm256_set1_epi32(bits == 4 ? 15 : 255);
    __m256 c[4][2];
    for (int i = 0; i < 4; i++) c[i][0] = c[i][1] = _mm256_setzero_ps();
    for (int m = 0; m < 8; m++) {  /* 4 bits: chunk m / 2, nibbles of half m % 2; 8 bits: step m */
        const uint8_t *words = block + 64 * (bits == 4 ? m / 2 : m);
        const __m256i v[2] = {_mm256_loadu_si256((const __m256i *)words), _mm256_loadu_si256((const __m256i *)(words + 32))};
        for (int i = 0; i < 4; i++) {
            const int shift = bits == 4 ? 8 * i + 4 * (m % 2) : 8 * i;
            const __m256 xk = _mm256_broadcast_ss(x + 4 * m + i);
            for (int h = 0; h < 2; h++) {
                const __m256 f = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(v[h], shift), mask));
                c[i][h] = _mm256_fmadd_ps(xk, zp == 0.0f ? f : _mm256_sub_ps(f, z), c[i][h]);
            }
        }
    }
    for (int h = 0; h < 2; h++) dot[h] = _mm256_add_ps(_mm256_add_ps(c[0][h], c[1][h]), _mm256_add_ps(c[2][h], c[3][h]));
}

/* Per row and block: block_dot, times d, plus m * the block's activation sum; blocks in order.
 * A block is unpacked once for every row of the call (a row alone: lone_dot). */
void specops_portable_fp32_rows(const float *a, const float *asum, int64_t K, const uint8_t *w, const float *wscale,
                                const float *wmin, float zero_point, int bits, float *y, int64_t N, int64_t t,
                                int rows) {
    const int64_t KB = K / BLOCK;
    const uint8_t *wt = w + t * KB * 64 * bits;
    const float *st = wscale + t * KB * TILE, *mt = wmin ? wmin + t * KB * TILE : NULL;
    float acc[GROUP][TILE] __attribute__((aligned(32))), wv[BLOCK][TILE] __attribute__((aligned(32)));
    for (int done = 0; done < rows; done += GROUP) {  /* the caller's groups are at most GROUP rows */
        const int n = rows - done < GROUP ? rows - done : GROUP;
        memset(acc, 0, sizeof acc);
        for (int64_t kb = 0; kb < KB; kb++) {
            const uint8_t *block = wt + kb * 64 * bits;
            if (n > 1) {  /* constant widths and offsets: unrolled */
                if (bits == 4 && zero_point == 0.0f) block_values(block, 4, 0.0f, wv);
                else if (bits == 4) block_values(block, 4, zero_point, wv);
                else block_values(block, 8, zero_point, wv);
            }
            for (int r = 0; r < n; r++) {
                const float *x = a + (done + r) * K + kb * BLOCK;
                __m256 dot[2];
                if (n > 1) block_dot(x, wv, dot);
                else if (bits == 4 && zero_point == 0.0f) lone_dot(block, 4, 0.0f, x, dot);
                else if (bits == 4) lone_dot(block, 4, zero_point, x, dot);
                else lone_dot(block, 8, zero_point, x, dot);
                for (int h = 0; h < 2; h++) {
                    __m256 v = _mm256_fmadd_ps(dot[h], _mm256_loadu_ps(st + kb * TILE + 8 * h),
                                               _mm256_load_ps(acc[r] + 8 * h));
                    if (mt) v = _mm256_fmadd_ps(_mm256_loadu_ps(mt + kb * TILE + 8 * h),
                                                _mm256_set1_ps(asum[(done + r) * KB + kb]), v);
                    _mm256_store_ps(acc[r] + 8 * h, v);
                }
            }
        }
        for (int r = 0; r < n; r++) memcpy(y + (done + r) * N + t * TILE, acc[r], sizeof acc[r]);
    }
}

/* Eight lanes (lane i: x[i], x[i+8], x[i+16], x[i+24] in that order), then halves added. */
void specops_portable_block_sums(const float *a, int64_t blocks, float *asum) {
    for (int64_t b = 0; b < blocks; b++) {
        const float *x = a + b * BLOCK;
        float s[8];
        for (int i = 0; i < 8; i++) s[i] = ((x[i] + x[i + 8]) + x[i + 16]) + x[i + 24];
        for (int w = 4; w; w >>= 1)
            for (int i = 0; i < w; i++) s[i] += s[i + w];
        asum[b] = s[0];
    }
}

/* ---- Attention ---------------------------------------------------------------------------------- */
#define INLINE static inline __attribute__((always_inline))

/* Scores of NQ query vectors (NQ = 4 or 1: the same sums either way) against one block of 16 keys
 * ([D][16]): per key, sum over d from 0 of fused q_d k_d, then times the scale. */
INLINE void scores_of(const float *const *q, const float *k, int64_t D, float scale, float *const *out, int64_t at,
                      const int NQ) {
    __m256 acc[4][2];
    for (int i = 0; i < NQ; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    for (int64_t d = 0; d < D; d++) {
        const __m256 k0 = _mm256_loadu_ps(k + d * KEYS), k1 = _mm256_loadu_ps(k + d * KEYS + 8);
        for (int i = 0; i < NQ; i++) {
            const __m256 x = _mm256_broadcast_ss(q[i] + d);
            acc[i][0] = _mm256_fmadd_ps(x, k0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(x, k1, acc[i][1]);
        }
    }
    for (int i = 0; i < NQ; i++)
        for (int h = 0; h < 2; h++) _mm256_storeu_ps(out[i] + at + 8 * h, _mm256_mul_ps(acc[i][h], _mm256_set1_ps(scale)));
}

void specops_portable_scores(const float *const *q, const float *kb, int64_t D, float scale, float *const *srow,
                             int64_t at, int nq, int nb) {
    for (int b = 0; b < nb; b++) {
        int i = 0;
        for (; i + 4 <= nq; i += 4) scores_of(q + i, kb + b * KEYS * D, D, scale, srow + i, at + b * KEYS, 4);
        for (; i < nq; i++) scores_of(q + i, kb + b * KEYS * D, D, scale, srow + i, at + b * KEYS, 1);
    }
}

/* acc_i[8 NV dims] += e_i[j] v[j] for keys j = j0..end-1, in order of j, for NQ query vectors
 * that all see those keys: one fused multiply-add per key and dimension, whatever NQ is. */
INLINE void values_of(const float *const *e, const float *v, int64_t D, int64_t j0, int64_t end,
                      float *const *acc_row, const int NQ, const int NV) {
    __m256 acc[4][4];
    for (int i = 0; i < NQ; i++)
        for (int c = 0; c < NV; c++) acc[i][c] = _mm256_loadu_ps(acc_row[i] + 8 * c);
    for (int64_t j = j0; j < end; j++) {
        __m256 x[4];
        for (int c = 0; c < NV; c++) x[c] = _mm256_loadu_ps(v + j * D + 8 * c);
        for (int i = 0; i < NQ; i++) {
            const __m256 w = _mm256_broadcast_ss(e[i] + j);
            for (int c = 0; c < NV; c++) acc[i][c] = _mm256_fmadd_ps(w, x[c], acc[i][c]);
        }
    }
    for (int i = 0; i < NQ; i++)
        for (int c = 0; c < NV; c++) _mm256_storeu_ps(acc_row[i] + 8 * c, acc[i][c]);
}

/* acc_i[16 nc dims] += e_i[j] v[j] for keys j = j0..j1-1 below len_i (lengths ascend with i):
 * groups of query vectors over the keys all of them see, then each alone over the rest. */
void specops_portable_values(const float *const *e, const int64_t *len, const float *v, int64_t D, int64_t j0,
                             int64_t j1, float *const *acc_row, int nq, int nc) {
    const int group = nc == 2 ? 2 : 4;  /* 8 accumulators in registers */
    for (int i0 = 0; i0 < nq; i0 += group) {
        const int n = nq - i0 < group ? nq - i0 : group;
        const int64_t common = len[i0] < j1 ? len[i0] : j1;
        if (n == group && common > j0) {
            if (nc == 2) values_of(e + i0, v, D, j0, common, acc_row + i0, 2, 4);
            else values_of(e + i0, v, D, j0, common, acc_row + i0, 4, 2);
        }
        for (int i = i0; i < i0 + n; i++) {
            const int64_t from = n == group && common > j0 ? common : j0, end = len[i] < j1 ? len[i] : j1;
            if (nc == 2) values_of(e + i, v, D, from, end, acc_row + i, 1, 4);
            else values_of(e + i, v, D, from, end, acc_row + i, 1, 2);
        }
    }
}

/* e^x for x <= 0 (Cephes' expf, as attention.c's: x = n ln2 + r, a degree-6 polynomial in r,
 * 2^n from its exponent bits); x is held at -87 or above (2^n stays a normal number; e^-87 is
 * 1.6e-38, nothing beside a softmax's largest weight, 1). */
INLINE __m256 exp_nonpositive(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(bits));
}

/* Softmax weights of s[0..len) in place (zeros after, to the block's end); 1 / their sum, summed
 * in 16 lanes (lane i: keys j = i mod 16, in order of j; a dead lane adds +0), the lanes then
 * added halves first (i + 8 into i, then i + 4, i + 2, i + 1). */
float specops_portable_softmax(float *s, int64_t len) {
    const int64_t blocks = (len + KEYS - 1) / KEYS;
    __m256 m = _mm256_set1_ps(-INFINITY);
    for (int64_t j = 0; j + 8 <= len; j += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(s + j));
    float lanes[8];
    _mm256_storeu_ps(lanes, m);
    float top = -INFINITY;
    for (int i = 0; i < 8; i++) top = lanes[i] > top ? lanes[i] : top;
    for (int64_t j = len / 8 * 8; j < len; j++) top = s[j] > top ? s[j] : top;  /* a maximum: any order */
    const __m256 t = _mm256_set1_ps(top);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256 sum[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t b = 0; b < blocks; b++)
        for (int h = 0; h < 2; h++) {
            const int64_t left = len - b * KEYS - 8 * h;  /* live keys from here on */
            const __m256 live = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(left > 8 ? 8 : (int)left), lane));
            float *at = s + b * KEYS + 8 * h;
            const __m256 e = _mm256_and_ps(live, exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(at), t)));
            _mm256_storeu_ps(at, e);
            sum[h] = _mm256_add_ps(sum[h], e);
        }
    const __m256 s8 = _mm256_add_ps(sum[0], sum[1]);  /* lanes i + 8 into i */
    const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    const __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
    return 1.0f / _mm_cvtss_f32(s1);
}
