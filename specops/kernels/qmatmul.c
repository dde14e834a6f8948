/* specops.QMatMul: MatMulNBits (4 or 8 bits, block 32) for a few rows at a time, at the precision
 * the service chose: fp32, bf16 or int8 activations.
 *
 * Why: a verify pass multiplies a handful of rows by every weight; onnxruntime's MLAS spends about
 * a third of a one-row pass per extra row. Here the weights sit in column tiles (16 output columns
 * x one 32-value block), each unpacked once per group of rows and reused by every row of the group.
 * Rows are computed independently, each with one fixed order of operations, so a row's result does
 * not depend on how many rows share the pass or which rows they are.
 *
 * The weight of column n at k is  d * code + m  (d, m per column and block of 32):
 *   - Q4_1 (the GGUF's own blocks, served as shipped): 4-bit code 0..15, scale d, minimum m;
 *   - symmetric (MatMulNBits without zero points): code - zero_point (8 or 128), m = 0.
 * The three precisions (input `precision`):
 *   FP32 (0): the fp32 activations dotted with the codes per block in four fixed chains, scaled by
 *     d, plus m * (the block's activation sum): the model's own math, in another order of sums.
 *   BF16 (1): activations rounded to bf16 (nearest even), codes exact in bf16, `vdpbf16ps` dots per
 *     block in four fixed chains; the block's dot scaled by d, plus m * (the block's fp32 activation
 *     sum). Needs AVX-512 BF16.
 *   INT8X3 (7): three int8 levels per activation (about fp32's precision), three VNNI dots.
 *   INT8 (2): MLAS accuracy level 4's numerics: activations quantized per block to int8
 *     (scale max|a|/127, nearest even), `vpdpbusd` with the unsigned codes, the zero point off
 *     through the block's code sum, scaled by both scales; m * scale * (sum of the block's codes).
 *     Needs AVX-512 VNNI.
 *
 * Layout (written by specops/runtime/kernels.py `tile_weights`):
 *   weights [N/16, K/32, 64*bits] uint8. 8 bits: step s (0..7) is 64 bytes, byte 4j+i = column j's
 *     code at k = 4s+i. 4 bits: chunk c (0..3) is 64 bytes, byte 4j+i holds column j's k = 8c+i in
 *     its low nibble and k = 8c+4+i in its high nibble.
 *   scales, mins [N/16, K/32, 16] float (mins optional: absent = 0).
 * Inputs: A [..., K] float, weights, scales, precision (int64 [1]: 0 fp32, 1 bf16, 2 int8 on the best
 * path here, 7 int8x3, or a path by name: 3 bf16 AVX-512, 4 int8 VNNI, 5 int8 AMX, 6 bf16 AMX, 8 int8x3
 * AMX, 9 int8x3 VNNI, 10 fp32 portable; a graph input,
 * so one session runs every precision and the service can time them), mins (optional).
 * Attributes: K, N, bits, zero_point (the codes' offset without mins), has_min.
 *
 * The onnxruntime ABI this library uses is declared in ort_abi.h. RegisterCustomOps (at the end)
 * registers both of the library's ops, QMatMul and Attention (attention.c), in domain "specops".
 * The portable build (-DSPECOPS_PORTABLE, for CPUs without AVX-512; see portable.c) leaves the
 * AVX-512 and AMX paths out by #if and runs fp32 on portable.c's kernel (path 10).
 */
#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "ort_abi.h"
#ifdef SPECOPS_PORTABLE
#include "portable.h"
#endif

const OrtApi *g_api;

/* ---- the kernel ------------------------------------------------------------------------------ */
enum { TILE = 16, BLOCK = 32 };
enum { FP32 = 0, BF16 = 1, INT8 = 2 };  /* precisions: the op's precision input, best path for each */
enum { BF16_AVX512 = 3, INT8_VNNI = 4, INT8_AMX = 5, BF16_AMX = 6 };  /* or a path, named */
enum { INT8X3 = 7, INT8X3_AMX = 8, INT8X3_VNNI = 9 };  /* three int8 levels: precision, paths */
enum { FP32_PORTABLE = 10, PATHS = 11 };  /* the portable build's one path (portable.c); codes in all */
enum { ROWS_INT8 = 12, ROWS_FP32 = 4, ROWS_BF16 = 4, ROWS_X3 = 5 };  /* rows a group keeps in registers */
#define INLINE static inline __attribute__((always_inline))

typedef struct {
    const float *a;         /* [M, K] activations */
    const int8_t *aq;       /* int8: [M, K] codes, per block; int8x3: [3, M, K], a level each */
    const uint32_t *ab;     /* bf16: [M, K/32, 16] pairs of bf16 activations (see bf16_pairs) */
    const float *ascale;    /* int8: [M, K/32]; int8x3: [M, K/32, 3] */
    const int32_t *azero;   /* int8: [M, K/32] -zero_point * the block's sum of codes; int8x3: [M, K/32, 3] */
    const float *asum;      /* int8: scale * sum of codes; fp32, bf16, int8x3: sum of the activations. [M, K/32] */
    const uint8_t *w;       /* [N/16, K/32, 64*bits] */
    const float *wscale;    /* [N/16, K/32, 16] */
    const float *wmin;      /* [N/16, K/32, 16] or NULL */
    float *y;               /* [M, N] */
    int64_t M, K, N, bits, zero_point;
    int precision;          /* FP32, BF16, INT8 or INT8X3: what the activations become */
    int path;               /* FP32, BF16_AVX512, INT8_VNNI, INT8_AMX or BF16_AMX: which code runs */
} Work;

#ifndef SPECOPS_PORTABLE  /* the AVX-512 and AMX paths (to amx_permitted) */
/* Inline-assembly forms with the activation broadcast from memory ({1to16}): GCC does not fold a
 * separate broadcast into these instructions by itself, and the extra uop costs. */
INLINE __m512i dot_u8s8(__m512i d, __m512i w, const int32_t *a) {
    __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(d) : "v"(w), "m"(*a));
    return d;
}
INLINE __m512 fma_bcast(__m512 acc, __m512 w, const float *a) {
    __asm__("vfmadd231ps %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(w), "m"(*a));
    return acc;
}
INLINE __m512 dot_bf16(__m512 acc, __m512i w, const uint32_t *a) {
    __asm__("vdpbf16ps %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(w), "m"(*a));
    return acc;
}

/* The 8 steps of a tile's block (step s: 16 columns x k = 4s..4s+3, a byte each): 4-bit codes
 * unpacked from their chunks (chunk c holds steps 2c in its low nibbles, 2c+1 in its high ones). */
INLINE void codes_of_block(const uint8_t *wt, int64_t kb, const int BITS, __m512i w[8]) {
    if (BITS == 4) {
        const __m512i low = _mm512_set1_epi8(0x0F);
        const uint8_t *p = wt + kb * 256;
        for (int c = 0; c < 4; c++) {
            const __m512i v = _mm512_loadu_si512((const void *)(p + 64 * c));
            w[2 * c] = _mm512_and_si512(v, low);
            w[2 * c + 1] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
        }
    } else {
        const uint8_t *p = wt + kb * 512;
        for (int s = 0; s < 8; s++) w[s] = _mm512_loadu_si512((const void *)(p + 64 * s));
    }
}

/* ---- INT8: rows m0..m0+R-1 of output tile t. R and BITS are constants at every call site, so the
 * row loops unroll and the accumulators live in registers. */
INLINE void int8_rows(const Work *wk, int64_t t, int64_t m0, const int R, const int BITS) {
    const int64_t K = wk->K, KB = K / BLOCK;
    const uint8_t *wt = wk->w + t * KB * 64 * BITS;
    const float *st = wk->wscale + t * KB * TILE;
    const float *mt = wk->wmin ? wk->wmin + t * KB * TILE : NULL;
    __m512 acc[ROWS_INT8];
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
    for (int64_t kb = 0; kb < KB; kb++) {
        __m512i w[8];
        codes_of_block(wt, kb, BITS, w);
        const __m512 sb = _mm512_loadu_ps(st + kb * TILE);
        for (int r = 0; r < R; r++) {
            const int64_t row = m0 + r;
            const int32_t *a = (const int32_t *)(wk->aq + row * K + kb * BLOCK);
            /* a dot product's latency is several cycles: few rows run out of independent work on
             * one chain of 8 per row, so they split it (integer sums: the order does not matter) */
            const int CH = R == 1 ? 4 : R <= 4 ? 2 : 1;
            __m512i d[4];
            d[0] = _mm512_set1_epi32(wk->azero[row * KB + kb]);
            for (int c = 1; c < CH; c++) d[c] = _mm512_setzero_si512();
            for (int s = 0; s < 8; s += CH)
                for (int c = 0; c < CH; c++) d[c] = dot_u8s8(d[c], w[s + c], a + s + c);
            if (CH == 4) { d[0] = _mm512_add_epi32(d[0], d[2]); d[1] = _mm512_add_epi32(d[1], d[3]); }
            if (CH >= 2) d[0] = _mm512_add_epi32(d[0], d[1]);
            const __m512 dot = _mm512_cvtepi32_ps(d[0]);
            acc[r] = _mm512_fmadd_ps(_mm512_mul_ps(dot, _mm512_set1_ps(wk->ascale[row * KB + kb])), sb, acc[r]);
            if (mt) acc[r] = _mm512_fmadd_ps(_mm512_loadu_ps(mt + kb * TILE), _mm512_set1_ps(wk->asum[row * KB + kb]),
                                             acc[r]);
        }
    }
    for (int r = 0; r < R; r++) _mm512_storeu_ps(wk->y + (m0 + r) * wk->N + t * TILE, acc[r]);
}

/* ---- INT8X3: each activation as three int8 levels, a = s1 q1 + s2 q2 + s3 q3 (s2 = s1/254,
 * s3 = s2/254: each level quantizes what the previous one left, so the remainder is at most
 * max|a| / (127 * 254 * 254 * 2), 6e-8 of the block's largest, about fp32's own rounding). Three
 * exact VNNI dots per block and row, combined in fp32 as ((q1.c) s1 + (q2.c) s2) + (q3.c) s3, times
 * d, plus m * the block's fp32 activation sum: fp32's answers from integer dots (1.6x int8's time
 * for a row alone, 2.4x for four rows: one 4096 x 2048 matmul, one thread, VNNI, this machine). */
INLINE void x3_rows(const Work *wk, int64_t t, int64_t m0, const int R, const int BITS) {
    const int64_t K = wk->K, KB = K / BLOCK, MK = wk->M * K;
    const uint8_t *wt = wk->w + t * KB * 64 * BITS;
    const float *st = wk->wscale + t * KB * TILE;
    const float *mt = wk->wmin ? wk->wmin + t * KB * TILE : NULL;
    __m512 acc[ROWS_X3];
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
    for (int64_t kb = 0; kb < KB; kb++) {
        __m512i w[8];
        codes_of_block(wt, kb, BITS, w);
        const __m512 d = _mm512_loadu_ps(st + kb * TILE);
        for (int r = 0; r < R; r++) {
            const int64_t row = m0 + r, at = (row * KB + kb) * 3;
            __m512i dot[3];
            for (int l = 0; l < 3; l++) {  /* integer sums: two chains for a lone row, same result */
                const int32_t *a = (const int32_t *)(wk->aq + l * MK + row * K + kb * BLOCK);
                __m512i c0 = _mm512_set1_epi32(wk->azero[at + l]), c1 = _mm512_setzero_si512();
                for (int s = 0; s < 8; s += 2) {
                    c0 = dot_u8s8(c0, w[s], a + s);
                    if (R == 1) c1 = dot_u8s8(c1, w[s + 1], a + s + 1);
                    else c0 = dot_u8s8(c0, w[s + 1], a + s + 1);
                }
                dot[l] = R == 1 ? _mm512_add_epi32(c0, c1) : c0;
            }
            const float *sc = wk->ascale + at;
            __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(dot[0]), _mm512_set1_ps(sc[0]));
            v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[1]), _mm512_set1_ps(sc[1]), v);
            v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[2]), _mm512_set1_ps(sc[2]), v);
            acc[r] = _mm512_fmadd_ps(v, d, acc[r]);
            if (mt) acc[r] = _mm512_fmadd_ps(_mm512_loadu_ps(mt + kb * TILE),
                                             _mm512_set1_ps(wk->asum[row * KB + kb]), acc[r]);
        }
    }
    for (int r = 0; r < R; r++) _mm512_storeu_ps(wk->y + (m0 + r) * wk->N + t * TILE, acc[r]);
}

/* The end of a block for one row of the fp32 and bf16 paths: its four chains summed
 * (c0+c1)+(c2+c3), times d, plus m * the block's activation sum where the weights have minimums. */
INLINE __m512 block_end(__m512 acc, const __m512 ch[4], __m512 d, const float *m, float asum) {
    const __m512 dot = _mm512_add_ps(_mm512_add_ps(ch[0], ch[1]), _mm512_add_ps(ch[2], ch[3]));
    acc = _mm512_fmadd_ps(dot, d, acc);
    return m ? _mm512_fmadd_ps(_mm512_loadu_ps(m), _mm512_set1_ps(asum), acc) : acc;
}

/* ---- FP32: per block and row, the activations dotted with the codes' values (exact in fp32) in
 * four fixed chains (k's position in its group of 8 picks the chain), summed (c0+c1)+(c2+c3),
 * scaled by d, plus m * the block's activation sum: d * (a . code) + m * sum(a), the block's
 * share of a . (d * code + m) with no rounding of its weights. */
INLINE void fp32_rows(const Work *wk, int64_t t, int64_t m0, const int R, const int BITS) {
    const int64_t K = wk->K, KB = K / BLOCK;
    const uint8_t *wt = wk->w + t * KB * 64 * BITS;
    const float *st = wk->wscale + t * KB * TILE;
    const float *mt = wk->wmin ? wk->wmin + t * KB * TILE : NULL;
    const float zp = mt ? 0.0f : (float)wk->zero_point;
    /* 4 bits: a nibble indexes this table of code values (vpermps reads an index's low 4 bits) */
    const __m512 table = _mm512_sub_ps(_mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                       _mm512_set1_ps(zp));
    const __m512i byte = _mm512_set1_epi32(0xFF);
    __m512 acc[ROWS_FP32];
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
    for (int64_t kb = 0; kb < KB; kb++) {
        const float *a = wk->a + m0 * K + kb * BLOCK;
        __m512 ch[ROWS_FP32][4];
        for (int r = 0; r < R; r++)
            for (int c = 0; c < 4; c++) ch[r][c] = _mm512_setzero_ps();
        if (BITS == 4) {
            for (int c = 0; c < 4; c++) {
                const __m512i v = _mm512_loadu_si512((const void *)(wt + kb * 256 + 64 * c));
                for (int j = 0; j < 8; j++) {  /* nibble j of each column's 4 bytes: k = 8c + j/2 + 4(j%2) */
                    const __m512 w = _mm512_permutexvar_ps(j ? _mm512_srli_epi32(v, 4 * j) : v, table);
                    const int k = 8 * c + j / 2 + 4 * (j % 2);
                    for (int r = 0; r < R; r++) ch[r][j % 4] = fma_bcast(ch[r][j % 4], w, a + r * K + k);
                }
            }
        } else {
            for (int s = 0; s < 8; s++) {
                const __m512i v = _mm512_loadu_si512((const void *)(wt + kb * 512 + 64 * s));
                for (int i = 0; i < 4; i++) {  /* byte i of each column's 4: k = 4s + i */
                    const __m512i u = _mm512_and_si512(i ? _mm512_srli_epi32(v, 8 * i) : v, byte);
                    const __m512 w = _mm512_sub_ps(_mm512_cvtepi32_ps(u), _mm512_set1_ps(zp));
                    for (int r = 0; r < R; r++) ch[r][i] = fma_bcast(ch[r][i], w, a + r * K + 4 * s + i);
                }
            }
        }
        const __m512 d = _mm512_loadu_ps(st + kb * TILE);
        for (int r = 0; r < R; r++)
            acc[r] = block_end(acc[r], ch[r], d, mt ? mt + kb * TILE : NULL, mt ? wk->asum[(m0 + r) * KB + kb] : 0.0f);
    }
    for (int r = 0; r < R; r++) _mm512_storeu_ps(wk->y + (m0 + r) * wk->N + t * TILE, acc[r]);
}

/* ---- BF16: pairs of k per 32-bit lane, in the order 4 bits unpack them cheaply:
 * within each group of 8 (k = 8c..8c+7), pair q = 0..3 holds (k0,k2), (k1,k3), (k4,k6), (k5,k7)
 * (low half first). The activations are laid out in the same pairs (bf16_pairs). */
#define BF16_FN __attribute__((target("avx512f,avx512bw,avx512bf16")))
static const uint8_t PAIR_FIRST[4] = {0, 1, 4, 5};

/* Group c of a tile's block as four vectors of 16 columns x one pair, exact bf16 codes. */
INLINE BF16_FN void bf16_weights(const uint8_t *blockp, int c, const int BITS, __m512i table, float zp,
                                 __m512i w[4]) {
    if (BITS == 4) {
        /* a 16-bit word's low 5 bits index the table of 32 words (entry e = bf16((e & 15) - zp)):
         * word 0 of a column's 4 bytes is k0 (+ a bit of k4, masked by the table), word 1 is k2 */
        const __m512i v = _mm512_loadu_si512((const void *)(blockp + 64 * c));
        w[0] = _mm512_permutexvar_epi16(v, table);
        w[1] = _mm512_permutexvar_epi16(_mm512_srli_epi16(v, 8), table);
        w[2] = _mm512_permutexvar_epi16(_mm512_srli_epi16(v, 4), table);
        w[3] = _mm512_permutexvar_epi16(_mm512_srli_epi16(v, 12), table);
    } else {
        /* small integers are exact in bf16: a float's top 16 bits; pair (k, k+2) = (low, high) */
        const __m512i byte = _mm512_set1_epi32(0xFF), high = _mm512_set1_epi32((int)0xFFFF0000u);
        for (int h = 0; h < 2; h++) {
            const __m512i v = _mm512_loadu_si512((const void *)(blockp + 64 * (2 * c + h)));
            __m512i f[4];
            for (int i = 0; i < 4; i++)
                f[i] = _mm512_castps_si512(_mm512_sub_ps(
                    _mm512_cvtepi32_ps(_mm512_and_si512(i ? _mm512_srli_epi32(v, 8 * i) : v, byte)), _mm512_set1_ps(zp)));
            w[2 * h] = _mm512_or_si512(_mm512_and_si512(f[2], high), _mm512_srli_epi32(f[0], 16));
            w[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(f[3], high), _mm512_srli_epi32(f[1], 16));
        }
    }
}

INLINE BF16_FN void bf16_rows(const Work *wk, int64_t t, int64_t m0, const int R, const int BITS) {
    const int64_t K = wk->K, KB = K / BLOCK;
    const uint8_t *wt = wk->w + t * KB * 64 * BITS;
    const float *st = wk->wscale + t * KB * TILE;
    const float *mt = wk->wmin ? wk->wmin + t * KB * TILE : NULL;
    const float zp = mt ? 0.0f : (float)wk->zero_point;
    uint16_t words[32];
    for (int e = 0; e < 32; e++) {
        const float f = (float)(e & 15) - zp;
        uint32_t bits;
        memcpy(&bits, &f, 4);
        words[e] = (uint16_t)(bits >> 16);  /* exact: small integers */
    }
    const __m512i table = _mm512_loadu_si512((const void *)words);
    __m512 acc[ROWS_BF16];
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
    for (int64_t kb = 0; kb < KB; kb++) {
        __m512 ch[ROWS_BF16][4];
        for (int r = 0; r < R; r++)
            for (int q = 0; q < 4; q++) ch[r][q] = _mm512_setzero_ps();
        for (int c = 0; c < 4; c++) {
            __m512i w[4];
            bf16_weights(wt + kb * 32 * BITS * 2, c, BITS, table, zp, w);
            for (int r = 0; r < R; r++) {
                const uint32_t *a = wk->ab + ((m0 + r) * KB + kb) * 16 + 4 * c;
                for (int q = 0; q < 4; q++) ch[r][q] = dot_bf16(ch[r][q], w[q], a + q);
            }
        }
        const __m512 d = _mm512_loadu_ps(st + kb * TILE);
        for (int r = 0; r < R; r++)
            acc[r] = block_end(acc[r], ch[r], d, mt ? mt + kb * TILE : NULL, mt ? wk->asum[(m0 + r) * KB + kb] : 0.0f);
    }
    for (int r = 0; r < R; r++) _mm512_storeu_ps(wk->y + (m0 + r) * wk->N + t * TILE, acc[r]);
}

/* ---- AMX: Intel's tile registers (Sapphire Rapids and later), one block of 32 per tile product.
 * INT8: C[rows, 16] int32 = A (the rows' int8 codes of the block, 32 bytes a row) . B (the block's
 * weight codes, 8 rows of 16 columns x 4 bytes: the tiled layout's steps as they are) with
 * TDPBSUD (signed activations, unsigned codes); the same epilogue as int8_rows, so every row is
 * bit for bit what the VNNI path computes. BF16: C[rows, 16] fp32 = A (the rows' bf16 pairs of
 * the block, 64 bytes a row) . B (16 rows of pairs, from bf16_weights) with TDPBF16PS, then d * C
 * + m * the block's activation sum; it sums in its own order, so a bf16 pass runs on AMX for
 * every row count or not at all. Linux grants the tile state on request (amx_permitted). */
#define AMX_FN __attribute__((target("avx512f,avx512bw,avx512bf16,amx-tile,amx-int8,amx-bf16")))
enum { ROWS_AMX = 16, AMX_INT8_FROM = 3 };  /* int8 groups of fewer rows run on VNNI: same bits, less setup */

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} TileConfig;

/* tmm0 = C [rows x 64 bytes], tmm1 = A [rows x a_bytes], tmm2 = B [b_rows x 64 bytes] */
static AMX_FN void amx_configure(int rows, int a_bytes, int b_rows) {
    TileConfig cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    cfg.rows[0] = (uint8_t)rows, cfg.colsb[0] = 64;
    cfg.rows[1] = (uint8_t)rows, cfg.colsb[1] = (uint16_t)a_bytes;
    cfg.rows[2] = (uint8_t)b_rows, cfg.colsb[2] = 64;
    _tile_loadconfig(&cfg);
}

/* A block's B tile: the 8 steps of 64 bytes as stored (8 bits), or unpacked into `steps` (4). */
static inline AMX_FN const uint8_t *amx_b_tile(const uint8_t *wt, int64_t kb, int BITS, uint8_t *steps) {
    if (BITS == 8) return wt + kb * 512;
    __m512i w[8];
    codes_of_block(wt, kb, 4, w);
    for (int s = 0; s < 8; s++) _mm512_store_si512((void *)(steps + 64 * s), w[s]);
    return steps;
}

static AMX_FN void amx_int8_rows(const Work *wk, int64_t t, int64_t m0, int R) {
    const int64_t K = wk->K, KB = K / BLOCK;
    const int BITS = (int)wk->bits;
    const uint8_t *wt = wk->w + t * KB * 64 * BITS;
    const float *st = wk->wscale + t * KB * TILE;
    const float *mt = wk->wmin ? wk->wmin + t * KB * TILE : NULL;
    __attribute__((aligned(64))) uint8_t steps[8 * 64];
    __attribute__((aligned(64))) int32_t c[ROWS_AMX * TILE];
    __m512 acc[ROWS_AMX];
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
    amx_configure(R, BLOCK, 8);
    for (int64_t kb = 0; kb < KB; kb++) {
        const uint8_t *b = amx_b_tile(wt, kb, BITS, steps);
        _tile_zero(0);
        _tile_loadd(1, wk->aq + m0 * K + kb * BLOCK, K);
        _tile_loadd(2, b, 64);
        _tile_dpbsud(0, 1, 2);
        _tile_stored(0, c, 64);
        const __m512 sb = _mm512_loadu_ps(st + kb * TILE);
        for (int r = 0; r < R; r++) {
            const int64_t row = m0 + r;
            const __m512i d = _mm512_add_epi32(_mm512_set1_epi32(wk->azero[row * KB + kb]),
                                               _mm512_load_si512((const void *)(c + r * TILE)));
            const __m512 dot = _mm512_cvtepi32_ps(d);
            acc[r] = _mm512_fmadd_ps(_mm512_mul_ps(dot, _mm512_set1_ps(wk->ascale[row * KB + kb])), sb, acc[r]);
            if (mt) acc[r] = _mm512_fmadd_ps(_mm512_loadu_ps(mt + kb * TILE), _mm512_set1_ps(wk->asum[row * KB + kb]),
                                             acc[r]);
        }
    }
    _tile_release();
    for (int r = 0; r < R; r++) _mm512_storeu_ps(wk->y + (m0 + r) * wk->N + t * TILE, acc[r]);
}

static AMX_FN void amx_bf16_rows(const Work *wk, int64_t t, int64_t m0, int R) {
    const int64_t K = wk->K, KB = K / BLOCK;
    const int BITS = (int)wk->bits;
    const uint8_t *wt = wk->w + t * KB * 64 * BITS;
    const float *st = wk->wscale + t * KB * TILE;
    const float *mt = wk->wmin ? wk->wmin + t * KB * TILE : NULL;
    const float zp = mt ? 0.0f : (float)wk->zero_point;
    uint16_t words[32];
    for (int e = 0; e < 32; e++) {
        const float f = (float)(e & 15) - zp;
        uint32_t fbits;
        memcpy(&fbits, &f, 4);
        words[e] = (uint16_t)(fbits >> 16);
    }
    const __m512i table = _mm512_loadu_si512((const void *)words);
    __attribute__((aligned(64))) uint32_t pairs[16 * TILE];
    __attribute__((aligned(64))) float c[ROWS_AMX * TILE];
    __m512 acc[ROWS_AMX];
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
    amx_configure(R, 64, 16);
    for (int64_t kb = 0; kb < KB; kb++) {
        for (int ch = 0; ch < 4; ch++) {  /* B row p = 4ch + q: pair q of group ch, 16 columns */
            __m512i w[4];
            if (BITS == 4) bf16_weights(wt + kb * 256, ch, 4, table, zp, w);
            else bf16_weights(wt + kb * 512, ch, 8, table, zp, w);
            for (int q = 0; q < 4; q++) _mm512_store_si512((void *)(pairs + (4 * ch + q) * TILE), w[q]);
        }
        _tile_zero(0);
        _tile_loadd(1, wk->ab + (m0 * KB + kb) * 16, KB * 64);
        _tile_loadd(2, pairs, 64);
        _tile_dpbf16ps(0, 1, 2);
        _tile_stored(0, c, 64);
        const __m512 d = _mm512_loadu_ps(st + kb * TILE);
        for (int r = 0; r < R; r++) {
            acc[r] = _mm512_fmadd_ps(_mm512_load_ps(c + r * TILE), d, acc[r]);
            if (mt) acc[r] = _mm512_fmadd_ps(_mm512_loadu_ps(mt + kb * TILE),
                                             _mm512_set1_ps(wk->asum[(m0 + r) * KB + kb]), acc[r]);
        }
    }
    _tile_release();
    for (int r = 0; r < R; r++) _mm512_storeu_ps(wk->y + (m0 + r) * wk->N + t * TILE, acc[r]);
}

/* INT8X3 on AMX: the three levels' codes against one B tile into three C tiles (tmm0, tmm3, tmm4),
 * then x3_rows' epilogue: bit for bit the VNNI path's numbers. */
static AMX_FN void amx_x3_rows(const Work *wk, int64_t t, int64_t m0, int R) {
    const int64_t K = wk->K, KB = K / BLOCK, MK = wk->M * K;
    const int BITS = (int)wk->bits;
    const uint8_t *wt = wk->w + t * KB * 64 * BITS;
    const float *st = wk->wscale + t * KB * TILE;
    const float *mt = wk->wmin ? wk->wmin + t * KB * TILE : NULL;
    __attribute__((aligned(64))) uint8_t steps[8 * 64];
    __attribute__((aligned(64))) int32_t c[3][ROWS_AMX * TILE];
    __m512 acc[ROWS_AMX];
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
    TileConfig cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int i = 0; i < 5; i++) cfg.rows[i] = (uint8_t)R, cfg.colsb[i] = 64;
    cfg.colsb[1] = BLOCK;  /* A: one level's codes of the block */
    cfg.rows[2] = 8;       /* B */
    _tile_loadconfig(&cfg);
    for (int64_t kb = 0; kb < KB; kb++) {
        const uint8_t *b = amx_b_tile(wt, kb, BITS, steps);
        _tile_loadd(2, b, 64);
        _tile_zero(0);
        _tile_loadd(1, wk->aq + m0 * K + kb * BLOCK, K);
        _tile_dpbsud(0, 1, 2);
        _tile_stored(0, c[0], 64);
        _tile_zero(3);
        _tile_loadd(1, wk->aq + MK + m0 * K + kb * BLOCK, K);
        _tile_dpbsud(3, 1, 2);
        _tile_stored(3, c[1], 64);
        _tile_zero(4);
        _tile_loadd(1, wk->aq + 2 * MK + m0 * K + kb * BLOCK, K);
        _tile_dpbsud(4, 1, 2);
        _tile_stored(4, c[2], 64);
        const __m512 d = _mm512_loadu_ps(st + kb * TILE);
        for (int r = 0; r < R; r++) {
            const int64_t row = m0 + r, at = (row * KB + kb) * 3;
            __m512i dot[3];
            for (int l = 0; l < 3; l++)
                dot[l] = _mm512_add_epi32(_mm512_set1_epi32(wk->azero[at + l]),
                                          _mm512_load_si512((const void *)(c[l] + r * TILE)));
            const float *sc = wk->ascale + at;
            __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(dot[0]), _mm512_set1_ps(sc[0]));
            v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[1]), _mm512_set1_ps(sc[1]), v);
            v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[2]), _mm512_set1_ps(sc[2]), v);
            acc[r] = _mm512_fmadd_ps(v, d, acc[r]);
            if (mt) acc[r] = _mm512_fmadd_ps(_mm512_loadu_ps(mt + kb * TILE),
                                             _mm512_set1_ps(wk->asum[row * KB + kb]), acc[r]);
        }
    }
    _tile_release();
    for (int r = 0; r < R; r++) _mm512_storeu_ps(wk->y + (m0 + r) * wk->N + t * TILE, acc[r]);
}

/* Linux hands a process the AMX tile state only when asked (arch_prctl ARCH_REQ_XCOMP_PERM for
 * XFEATURE_XTILEDATA); 1 once granted. */
static int amx_permitted(void) {
    static int granted = -1;
    if (granted < 0) {
        unsigned long mask = 0;
        granted = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0 &&
                  syscall(SYS_arch_prctl, 0x1022 /* ARCH_GET_XCOMP_PERM */, &mask) == 0 && (mask >> 18 & 1);
    }
    return granted;
}
#endif  /* SPECOPS_PORTABLE */

/* ---- one output tile, every row, in near-equal groups of at most `most` rows ------------------ */
#define CASES(FN, BITS, MOST)                                                       \
    switch (R > MOST ? MOST : R) {                                                  \
    case 1: FN(wk, t, m0, 1, BITS); break;                                          \
    case 2: FN(wk, t, m0, 2, BITS); break;                                          \
    case 3: FN(wk, t, m0, 3, BITS); break;                                          \
    case 4: FN(wk, t, m0, 4, BITS); break;                                          \
    case 5: if (MOST >= 5) FN(wk, t, m0, 5 > MOST ? MOST : 5, BITS); break;         \
    case 6: if (MOST >= 6) FN(wk, t, m0, 6 > MOST ? MOST : 6, BITS); break;         \
    case 7: if (MOST >= 7) FN(wk, t, m0, 7 > MOST ? MOST : 7, BITS); break;         \
    case 8: if (MOST >= 8) FN(wk, t, m0, 8 > MOST ? MOST : 8, BITS); break;         \
    case 9: if (MOST >= 9) FN(wk, t, m0, 9 > MOST ? MOST : 9, BITS); break;         \
    case 10: if (MOST >= 10) FN(wk, t, m0, 10 > MOST ? MOST : 10, BITS); break;     \
    case 11: if (MOST >= 11) FN(wk, t, m0, 11 > MOST ? MOST : 11, BITS); break;     \
    default: if (MOST >= 12) FN(wk, t, m0, 12 > MOST ? MOST : 12, BITS); break;     \
    }

/* Rows begin..end-1 of tile t in groups of at most `most` (as even as they come). */
INLINE void groups(const Work *wk, int64_t most, void (*group)(const Work *, int64_t, int64_t, int), int64_t t,
                   int64_t begin, int64_t end) {
    const int64_t chunks = (end - begin + most - 1) / most;
    const int64_t per = (end - begin + chunks - 1) / chunks;
    for (int64_t m0 = begin; m0 < end; m0 += per) group(wk, t, m0, (int)(end - m0 < per ? end - m0 : per));
}

#ifndef SPECOPS_PORTABLE
static void int8_group(const Work *wk, int64_t t, int64_t m0, int R) {
    if (wk->bits == 4) { CASES(int8_rows, 4, ROWS_INT8) } else { CASES(int8_rows, 8, ROWS_INT8) }
}
static void x3_group(const Work *wk, int64_t t, int64_t m0, int R) {
    if (wk->bits == 4) { CASES(x3_rows, 4, ROWS_X3) } else { CASES(x3_rows, 8, ROWS_X3) }
}
static void fp32_group(const Work *wk, int64_t t, int64_t m0, int R) {
    if (wk->bits == 4) { CASES(fp32_rows, 4, ROWS_FP32) } else { CASES(fp32_rows, 8, ROWS_FP32) }
}
static BF16_FN void bf16_group(const Work *wk, int64_t t, int64_t m0, int R) {
    if (wk->bits == 4) { CASES(bf16_rows, 4, ROWS_BF16) } else { CASES(bf16_rows, 8, ROWS_BF16) }
}

static AMX_FN void amx_int8_group(const Work *wk, int64_t t, int64_t m0, int R) {
    if (R < AMX_INT8_FROM) int8_group(wk, t, m0, R);
    else amx_int8_rows(wk, t, m0, R);
}

static AMX_FN void amx_x3_group(const Work *wk, int64_t t, int64_t m0, int R) {
    if (R < AMX_INT8_FROM) x3_group(wk, t, m0, R);
    else amx_x3_rows(wk, t, m0, R);
}
#else  /* the portable build's fp32 path: rows m0..m0+R-1 of tile t on portable.c's kernel */
static void portable_group(const Work *wk, int64_t t, int64_t m0, int R) {
    specops_portable_fp32_rows(wk->a + m0 * wk->K, wk->wmin ? wk->asum + m0 * (wk->K / BLOCK) : NULL, wk->K, wk->w,
                               wk->wscale, wk->wmin, wk->wmin ? 0.0f : (float)wk->zero_point, (int)wk->bits,
                               wk->y + m0 * wk->N, wk->N, t, R);
}
#endif

/* Work item i: output tile i % (N/16) for the rows of block i / (N/16). A prompt chunk's rows come
 * in blocks of ROW_BLOCK, so that a block's activations stay in cache while every tile reads them
 * (one block of all the rows: 256 rows ran at a fifth of 15 rows' rate per row). How rows are
 * grouped never changes a row's result. */
enum { ROW_BLOCK = 48 };

static void run_tile(void *arg, size_t i) {
    const Work *wk = (const Work *)arg;
    const int64_t tiles = wk->N / TILE, t = (int64_t)i % tiles, begin = (int64_t)i / tiles * ROW_BLOCK;
    const int64_t end = begin + ROW_BLOCK < wk->M ? begin + ROW_BLOCK : wk->M;
#ifdef SPECOPS_PORTABLE
    groups(wk, ROW_BLOCK, portable_group, t, begin, end);
#else
    switch (wk->path) {
    case FP32: groups(wk, ROWS_FP32, fp32_group, t, begin, end); break;
    case BF16_AVX512: groups(wk, ROWS_BF16, bf16_group, t, begin, end); break;
    case INT8_AMX: groups(wk, ROWS_AMX, amx_int8_group, t, begin, end); break;
    case INT8X3_VNNI: groups(wk, ROWS_X3, x3_group, t, begin, end); break;
    case INT8X3_AMX: groups(wk, ROWS_AMX, amx_x3_group, t, begin, end); break;
    case BF16_AMX: groups(wk, ROWS_AMX, amx_bf16_rows, t, begin, end); break;
    default: groups(wk, ROWS_INT8, int8_group, t, begin, end); break;
    }
#endif
}

/* ---- per-row preparation of the activations ---------------------------------------------------- */
#ifndef SPECOPS_PORTABLE  /* (to bf16_pairs) */
/* INT8, per row and block of 32: codes, scale, -zero_point * sum of codes, scale * sum of codes. */
static void quantize_int8(const float *A, int64_t M, int64_t K, int32_t zero_point, int8_t *aq, float *ascale,
                          int32_t *azero, float *asum) {
    const int64_t KB = K / BLOCK;
    for (int64_t m = 0; m < M; m++) {
        for (int64_t kb = 0; kb < KB; kb++) {
            const float *x = A + m * K + kb * BLOCK;
            const __m512 x0 = _mm512_loadu_ps(x), x1 = _mm512_loadu_ps(x + 16);
            const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
            const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
            const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(x0, _mm512_set1_ps(inv)));
            const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(x1, _mm512_set1_ps(inv)));
            _mm_storeu_si128((__m128i *)(aq + m * K + kb * BLOCK), _mm512_cvtepi32_epi8(q0));
            _mm_storeu_si128((__m128i *)(aq + m * K + kb * BLOCK + 16), _mm512_cvtepi32_epi8(q1));
            const int32_t sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
            ascale[m * KB + kb] = amax / 127.0f;
            azero[m * KB + kb] = -zero_point * sum;
            asum[m * KB + kb] = ascale[m * KB + kb] * (float)sum;
        }
    }
}

/* INT8X3, per row and block: three levels of int8 codes, their scales and -zero_point * the sums
 * of their codes, and the fp32 sum of the activations. A level's codes saturate at +-127 (a
 * remainder a rounding past half a step would otherwise wrap). */
static void quantize_x3(const float *A, int64_t M, int64_t K, int32_t zero_point, int8_t *aq, float *ascale,
                        int32_t *azero, float *asum) {
    const int64_t KB = K / BLOCK;
    for (int64_t m = 0; m < M; m++) {
        for (int64_t kb = 0; kb < KB; kb++) {
            const float *x = A + m * K + kb * BLOCK;
            __m512 r0 = _mm512_loadu_ps(x), r1 = _mm512_loadu_ps(x + 16);
            asum[m * KB + kb] = _mm512_reduce_add_ps(_mm512_add_ps(r0, r1));
            float scale = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(r0), _mm512_abs_ps(r1))) / 127.0f;
            for (int l = 0; l < 3; l++) {
                const float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
                const __m512i q0 = _mm512_max_epi32(_mm512_min_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(r0, _mm512_set1_ps(inv))),
                                                                     _mm512_set1_epi32(127)), _mm512_set1_epi32(-127));
                const __m512i q1 = _mm512_max_epi32(_mm512_min_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(r1, _mm512_set1_ps(inv))),
                                                                     _mm512_set1_epi32(127)), _mm512_set1_epi32(-127));
                int8_t *out = aq + l * M * K + m * K + kb * BLOCK;
                _mm_storeu_si128((__m128i *)out, _mm512_cvtepi32_epi8(q0));
                _mm_storeu_si128((__m128i *)(out + 16), _mm512_cvtepi32_epi8(q1));
                ascale[(m * KB + kb) * 3 + l] = scale;
                azero[(m * KB + kb) * 3 + l] = -zero_point * _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
                r0 = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(q0), _mm512_set1_ps(scale), r0);  /* what is left */
                r1 = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(q1), _mm512_set1_ps(scale), r1);
                scale = scale / 254.0f;
            }
        }
    }
}

/* BF16, per row and block: the 32 activations rounded to bf16 (nearest even) in pair order, and
 * their fp32 sum (one fixed order: the two halves added lane by lane, then a fixed reduction). */
static BF16_FN void bf16_pairs(const float *A, int64_t M, int64_t K, uint32_t *ab, float *asum) {
    const int64_t KB = K / BLOCK;
    uint16_t order[32];  /* pair p = 4c+q: words 2p, 2p+1 = k = 8c + PAIR_FIRST[q], that + 2 */
    for (int p = 0; p < 16; p++) {
        order[2 * p] = (uint16_t)(8 * (p / 4) + PAIR_FIRST[p % 4]);
        order[2 * p + 1] = (uint16_t)(order[2 * p] + 2);
    }
    const __m512i perm = _mm512_loadu_si512((const void *)order);
    for (int64_t m = 0; m < M; m++) {
        for (int64_t kb = 0; kb < KB; kb++) {
            const float *x = A + m * K + kb * BLOCK;
            const __m512 x0 = _mm512_loadu_ps(x), x1 = _mm512_loadu_ps(x + 16);
            const __m512i natural = (__m512i)_mm512_cvtne2ps_pbh(x1, x0);  /* words 0..15 = x0, 16..31 = x1 */
            _mm512_storeu_si512((void *)(ab + (m * KB + kb) * 16), _mm512_permutexvar_epi16(perm, natural));
            asum[m * KB + kb] = _mm512_reduce_add_ps(_mm512_add_ps(x0, x1));
        }
    }
}
#endif  /* SPECOPS_PORTABLE */

/* The calling thread's scratch buffer, grown as needed and kept: a pass calls the op once per
 * matmul, and allocating per call churns the heap (the process grew 6% in a one-minute soak that
 * way). One per thread, so concurrent runs of a session never share it. */
static char *scratch_of(size_t bytes) {
    static __thread char *buffer;
    static __thread size_t size;
    if (bytes > size) {
        const size_t grown = (bytes + 65535) / 65536 * 65536;
        char *p = aligned_alloc(64, grown);
        if (!p) return NULL;
        free(buffer);
        buffer = p;
        size = grown;
    }
    return buffer;
}

/* Fills the precision's per-row inputs of `wk` in the thread's scratch; 0 when out of memory. */
static int prepare_rows(Work *wk) {
    const int64_t M = wk->M, K = wk->K, KB = K / BLOCK;
    const size_t per_block = (size_t)(M * KB) * 4;  /* one float or int32 per row and block */
    if (wk->precision == FP32) {  /* the activations as they are; their block sums for the minimums */
        if (!wk->wmin) return 1;
        float *asum = (float *)scratch_of(per_block);
        if (!asum) return 0;
#ifdef SPECOPS_PORTABLE
        specops_portable_block_sums(wk->a, M * KB, asum);
#else
        for (int64_t i = 0; i < M * KB; i++) {
            const float *x = wk->a + i * BLOCK;
            asum[i] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_loadu_ps(x), _mm512_loadu_ps(x + 16)));
        }
#endif
        wk->asum = asum;
        return 1;
    }
#ifdef SPECOPS_PORTABLE
    return 0;  /* not reached: the portable build runs fp32 only (specops_path_of) */
#else
    if (wk->precision == INT8X3) {
        const size_t codes = (size_t)(3 * M * K + 63) / 64 * 64;
        char *s = scratch_of(codes + 7 * per_block);
        if (!s) return 0;
        wk->aq = (const int8_t *)s;
        wk->ascale = (const float *)(s + codes);
        wk->azero = (const int32_t *)(s + codes + 3 * per_block);
        wk->asum = (const float *)(s + codes + 6 * per_block);
        quantize_x3(wk->a, M, K, wk->wmin ? 0 : (int32_t)wk->zero_point, (int8_t *)wk->aq, (float *)wk->ascale,
                    (int32_t *)wk->azero, (float *)wk->asum);
        return 1;
    }
    if (wk->precision == BF16) {
        char *s = scratch_of((size_t)(M * K) * 2 + per_block);
        if (!s) return 0;
        wk->ab = (const uint32_t *)s;
        wk->asum = (const float *)(s + (size_t)(M * K) * 2);
        bf16_pairs(wk->a, M, K, (uint32_t *)wk->ab, (float *)wk->asum);
        return 1;
    }
    const size_t codes = (size_t)(M * K + 63) / 64 * 64;
    char *s = scratch_of(codes + 3 * per_block);
    if (!s) return 0;
    wk->aq = (const int8_t *)s;
    wk->ascale = (const float *)(s + codes);
    wk->azero = (const int32_t *)(s + codes + per_block);
    wk->asum = (const float *)(s + codes + 2 * per_block);
    quantize_int8(wk->a, M, K, wk->wmin ? 0 : (int32_t)wk->zero_point, (int8_t *)wk->aq, (float *)wk->ascale,
                  (int32_t *)wk->azero, (float *)wk->asum);
    return 1;
#endif
}

/* Paths switched off by the loader (a path that failed its self-check at load), bit per path. */
static int g_disabled;

void specops_disable_path(int path) { if (path > FP32 && path < PATHS) g_disabled |= 1 << path; }

/* Which paths this CPU runs, bit per path: FP32 (AVX-512 F/BW), BF16_AVX512 (+ AVX-512 BF16),
 * INT8_VNNI (+ AVX-512 VNNI), INT8_AMX and BF16_AMX (AMX-INT8 / AMX-BF16, the tile state granted);
 * less the disabled ones. The portable build: FP32_PORTABLE (AVX2 and FMA) alone. */
int specops_paths(void) {
#ifdef SPECOPS_PORTABLE
    return specops_portable_cpu() ? 1 << FP32_PORTABLE & ~g_disabled : 0;
#else
    __builtin_cpu_init();
    if (!(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw"))) return 0;
    const int bf16 = __builtin_cpu_supports("avx512bf16"), vnni = __builtin_cpu_supports("avx512vnni");
    const int tiles = __builtin_cpu_supports("amx-tile") && amx_permitted();
    int mask = 1 << FP32;
    if (bf16) mask |= 1 << BF16_AVX512;
    if (vnni) mask |= 1 << INT8_VNNI | 1 << INT8X3_VNNI;
    if (tiles && vnni && __builtin_cpu_supports("amx-int8")) mask |= 1 << INT8_AMX | 1 << INT8X3_AMX;
    if (tiles && bf16 && __builtin_cpu_supports("amx-bf16")) mask |= 1 << BF16_AMX;
    return mask & ~g_disabled;
#endif
}

/* The path a precision (or a named path) runs on here: AMX first where it runs; -1 = none. */
int specops_path_of(int precision) {
    const int paths = specops_paths();
    const int order[3][2] = {{FP32, FP32}, {BF16_AMX, BF16_AVX512}, {INT8_AMX, INT8_VNNI}};
    if (precision >= PATHS || precision < 0) return -1;
    if (precision == INT8X3) return paths >> INT8X3_AMX & 1 ? INT8X3_AMX : paths >> INT8X3_VNNI & 1 ? INT8X3_VNNI : -1;
    if (precision > INT8) return paths >> precision & 1 ? precision : -1;  /* a named path */
    if (precision == FP32 && paths >> FP32_PORTABLE & 1) return FP32_PORTABLE;
    for (int i = 0; i < 2; i++)
        if (paths >> order[precision][i] & 1) return order[precision][i];
    return -1;
}

/* Which precisions this CPU runs: bit FP32, BF16, INT8, INT8X3. */
int specops_precisions(void) {
    int mask = 0;
    for (int p = FP32; p <= INT8; p++) mask |= (specops_path_of(p) >= 0) << p;
    mask |= (specops_path_of(INT8X3) >= 0) << INT8X3;
    return mask;
}

/* 1 when this CPU runs the kernel at all (the loader checks before registering). */
int specops_supported(void) { return specops_precisions() != 0; }

/* ---- the custom op --------------------------------------------------------------------------- */

typedef struct { int64_t K, N, bits, zero_point, has_min; } Kernel;

OrtStatus *specops_shape_of(const OrtValue *v, int64_t *dims, size_t *n) {
    OrtShapeInfo *info;
    TRY(ORT_CALL(g_api, GetTensorTypeAndShape, TypeAndShapeFn)(v, &info));
    OrtStatus *st = ORT_CALL(g_api, GetDimensionsCount, DimsCountFn)(info, n);
    if (!st && *n > 8) st = fail(ORT_INVALID_ARGUMENT, "specops: a tensor of more than 8 dimensions");
    if (!st) st = ORT_CALL(g_api, GetDimensions, DimsFn)(info, dims, *n);
    ORT_CALL(g_api, ReleaseTensorTypeAndShapeInfo, ReleaseShapeFn)(info);
    return st;
}

static OrtStatus *create_kernel(const OrtCustomOp *op, const OrtApi *api, const OrtKernelInfo *info, void **out) {
    (void)op;
    Kernel k;
    AttrIntFn attr = ORT_CALL(api, KernelInfoGetAttribute_int64, AttrIntFn);
    TRY(attr(info, "K", &k.K));
    TRY(attr(info, "N", &k.N));
    TRY(attr(info, "bits", &k.bits));
    TRY(attr(info, "zero_point", &k.zero_point));
    TRY(attr(info, "has_min", &k.has_min));
    if ((k.bits != 4 && k.bits != 8) || k.K % BLOCK || k.N % TILE || k.K <= 0 || k.N <= 0)
        return fail(ORT_INVALID_ARGUMENT, "specops.QMatMul: needs bits 4 or 8, K a multiple of 32, N of 16");
    Kernel *p = malloc(sizeof *p);
    if (!p) return fail(ORT_FAIL, "specops.QMatMul: out of memory");
    *p = k;
    *out = p;
    return NULL;
}

static OrtStatus *check_tiled(const OrtValue *v, const Kernel *k, int64_t last, const char *what) {
    int64_t dims[8];
    size_t n;
    TRY(specops_shape_of(v, dims, &n));
    if (n != 3 || dims[0] != k->N / TILE || dims[1] != k->K / BLOCK || dims[2] != last)
        return fail(ORT_INVALID_ARGUMENT, what);
    return NULL;
}

static OrtStatus *compute(void *state, OrtKernelContext *ctx) {
    const Kernel *k = (const Kernel *)state;
    const size_t inputs = k->has_min ? 5 : 4;
    const OrtValue *in[5] = {NULL, NULL, NULL, NULL, NULL};
    for (size_t i = 0; i < inputs; i++) TRY(ORT_CALL(g_api, KernelContext_GetInput, GetInputFn)(ctx, i, &in[i]));
    if (k->has_min && !in[4]) return fail(ORT_INVALID_ARGUMENT, "specops.QMatMul: has_min=1 without a mins input");
    int64_t dims[8];
    size_t nd;
    TRY(specops_shape_of(in[0], dims, &nd));
    if (nd < 1 || dims[nd - 1] != k->K)
        return fail(ORT_INVALID_ARGUMENT, "specops.QMatMul: input's last dimension is not K");
    TRY(check_tiled(in[1], k, 64 * k->bits, "specops.QMatMul: weights are not in the tiled layout"));
    TRY(check_tiled(in[2], k, TILE, "specops.QMatMul: scales are not in the tiled layout"));
    if (k->has_min) TRY(check_tiled(in[4], k, TILE, "specops.QMatMul: mins are not in the tiled layout"));
    int64_t M = 1;
    for (size_t i = 0; i + 1 < nd; i++) M *= dims[i];
    dims[nd - 1] = k->N;
    OrtValue *out;
    TRY(ORT_CALL(g_api, KernelContext_GetOutput, GetOutputFn)(ctx, 0, dims, nd, &out));
    void *data[5] = {NULL, NULL, NULL, NULL, NULL}, *y;
    for (size_t i = 0; i < inputs; i++)
        TRY(ORT_CALL(g_api, GetTensorMutableData, MutableDataFn)((OrtValue *)in[i], &data[i]));
    TRY(ORT_CALL(g_api, GetTensorMutableData, MutableDataFn)(out, &y));
    const int64_t asked = *(const int64_t *)data[3];
    const int path = asked >= 0 && asked < PATHS ? specops_path_of((int)asked) : -1;
    if (path < 0)
        return fail(ORT_INVALID_ARGUMENT, "specops.QMatMul: precision must be 0 (fp32), 1 (bf16, needs AVX-512 "
                                          "BF16), 2 (int8, needs AVX-512 VNNI), 7 (int8x3, VNNI) or a path 3-6, 8-10, one this CPU runs");
    const int precision = path == BF16_AVX512 || path == BF16_AMX ? BF16 : path == FP32 || path == FP32_PORTABLE ? FP32
                          : path == INT8X3_VNNI || path == INT8X3_AMX ? INT8X3 : INT8;
    if (M == 0) return NULL;
    Work wk = {.a = (const float *)data[0], .w = (const uint8_t *)data[1], .wscale = (const float *)data[2],
               .wmin = (const float *)data[4], .y = (float *)y, .M = M, .K = k->K, .N = k->N, .bits = k->bits,
               .zero_point = k->zero_point, .precision = precision, .path = path};
    if (!prepare_rows(&wk)) return fail(ORT_FAIL, "specops.QMatMul: out of memory");
    const size_t items = (size_t)(k->N / TILE) * (size_t)((M + ROW_BLOCK - 1) / ROW_BLOCK);
    return ORT_CALL(g_api, KernelContext_ParallelFor, ParallelForFn)(ctx, run_tile, items, 0, &wk);
}

static const char *op_name(const OrtCustomOp *op) { (void)op; return "QMatMul"; }
static int input_type(const OrtCustomOp *op, size_t i) { (void)op; return i == 1 ? TYPE_UINT8 : i == 3 ? TYPE_INT64 : TYPE_FLOAT; }
static size_t input_count(const OrtCustomOp *op) { (void)op; return 5; }
static size_t output_count(const OrtCustomOp *op) { (void)op; return 1; }
static int input_characteristic(const OrtCustomOp *op, size_t i) { (void)op; return i == 4 ? IO_OPTIONAL : IO_REQUIRED; }

static OrtCustomOp g_op = {
    .version = ORT_API_USED,
    .GetName = op_name,
    .GetExecutionProviderType = specops_cpu,
    .GetInputType = input_type,
    .GetInputTypeCount = input_count,
    .GetOutputType = specops_float,
    .GetOutputTypeCount = output_count,
    .KernelDestroy = specops_free_state,
    .GetInputCharacteristic = input_characteristic,
    .GetOutputCharacteristic = specops_required,
    .GetInputMemoryType = specops_default_memory,
    .GetVariadicInputMinArity = specops_one,
    .GetVariadicInputHomogeneity = specops_one,
    .GetVariadicOutputMinArity = specops_one,
    .GetVariadicOutputHomogeneity = specops_one,
    .CreateKernelV2 = create_kernel,
    .KernelComputeV2 = compute,
    .GetStartVersion = specops_one,
    .GetEndVersion = specops_any_version,
    .GetMayInplace = specops_no_pairs,
    .ReleaseMayInplace = specops_release_pairs,
    .GetAliasMap = specops_no_pairs,
    .ReleaseAliasMap = specops_release_pairs,
};

/* The entry point onnxruntime's register_custom_ops_library calls. */
OrtStatus *RegisterCustomOps(OrtSessionOptions *options, const OrtApiBase *base) {
    g_api = base->GetApi(ORT_API_USED);
    if (!g_api) return NULL;  /* an onnxruntime older than 1.17: nothing registered, the graph load fails */
    if (!specops_supported())
#ifdef SPECOPS_PORTABLE
        return fail(ORT_FAIL, "specops.QMatMul's portable build needs AVX2 and FMA, which this CPU lacks");
#else
        return fail(ORT_FAIL, "specops.QMatMul needs AVX-512 (F, BW), which this CPU lacks");
#endif
    OrtCustomOpDomain *domain;
    TRY(ORT_CALL(g_api, CreateCustomOpDomain, CreateDomainFn)("specops", &domain));
    TRY(ORT_CALL(g_api, CustomOpDomain_Add, DomainAddFn)(domain, &g_op));
    TRY(ORT_CALL(g_api, CustomOpDomain_Add, DomainAddFn)(domain, &specops_attention_op));
    return ORT_CALL(g_api, AddCustomOpDomain, AddDomainFn)(options, domain);
}
