/* specops.Attention: the builder's GroupQueryAttention (rotary embedding, grouped-query heads,
 * causal masking, the KV append) over a ragged pass, computed so that a row's result depends only
 * on its own tokens and its sequence's cache.
 *
 * Why: onnxruntime's GroupQueryAttention computes a one-token pass differently from a multi-token
 * one (so an exact engine ran every plain step two rows wide), pads the rows of a batch to the
 * widest, and runs one prompt at a time. Here a pass is any list of rows; each row names its
 * sequence's cache slot and its position, and is computed with one fixed order of operations:
 *   score_j = (sum over d, sequentially from d = 0, of q_d k_jd, one fused multiply-add per d) * scale
 *   e_j     = exp(score_j - max_j score_j)        (one exp, the same code for every element)
 *   l       = 16 lane sums (lane i: keys j = i mod 16, in order of j), added in a fixed tree
 *   out_d   = (sum over j, sequentially from j = 0, of e_j v_jd, fused) * (1 / l)
 * None of it depends on which other rows share the pass, how many there are, or where this row
 * sits among them: a one-token pass equals that token's row in any k-token or batched pass, bit for
 * bit. Rows of one sequence at consecutive positions share the loads of its keys and values (a
 * work item: up to 48 query vectors, rows x the heads of one KV head; each block of 16 keys or
 * values is read once for all of them), which is what makes a prompt chunk fast; the sums above
 * stay per query vector, in the same order (the value sums are carried across blocks in memory).
 *
 * Inputs:  qkv [B, T, (H + 2 KVH) D] float (the packed projection the builder feeds its GQA; rows
 *            flattened: B T rows), key_cache, value_cache [S, KVH, C, D] float (C a multiple of
 *            16), row_slot [B T] int32, row_pos [B T] int32, cos_cache, sin_cache [P, D/2] float.
 * Outputs: out [B, T, H D], key_cache, value_cache (bind the inputs' own buffers: written in place;
 *            otherwise the op copies the caches first).
 * Attributes: num_heads H, kv_num_heads KVH, scale (0: 1/sqrt(D)). Rotary: half-split
 *   (rotary_interleaved 0), position = row_pos.
 * Cache layout (ours, not onnxruntime's): per slot s and KV head g, keys in blocks of 16 positions,
 *   block b = [D][16] (key of position 16b + i at dimension d: element d*16 + i), so 16 keys' scores
 *   are one vector per d; values [C][D] as the shape says. Row t writes position row_pos[t] of slot
 *   row_slot[t] before any row reads (two phases), and attends to positions 0..row_pos[t] of its
 *   slot: the caller keeps positions below a row's valid (earlier passes or earlier rows of this one).
 * The portable build (-DSPECOPS_PORTABLE) runs the same sums, each in one fixed order, through
 * portable.c's AVX2 micro-kernels (score_block, weigh_values, softmax below): the invariance is the
 * same, the bits need not be the AVX-512 build's (l's lanes are added in its own tree).
 */
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ort_abi.h"
#ifdef SPECOPS_PORTABLE
#include "portable.h"
#endif

/* keys per block; query vectors a micro-kernel keeps in registers; query vectors per work item (the
 * item's scores, QITEM x keys floats, stay in L2: 1.5 MB at 8192 keys); head size */
enum { KEYS = 16, QTILE = 12, QITEM = 48, DMAX = 256 };
#define INLINE static inline __attribute__((always_inline))

typedef struct { int64_t H, KVH; float scale; } AttKernel;

typedef struct {
    const float *qkv, *cosc, *sinc;
    const int32_t *slot, *pos;
    float *kc, *vc, *out, *q;   /* q: the rotated queries [rows, H, D] */
    int64_t rows, H, KVH, D, C;
    float scale;
    int64_t *tiles;             /* [tiles, 2]: first row, row count (rows of one slot, consecutive positions) */
} Pass;

/* The calling thread's scratch, grown as needed and kept (see qmatmul.c's scratch_of). */
static float *att_scratch(size_t floats) {
    static __thread float *buffer;
    static __thread size_t size;
    if (floats > size) {
        const size_t grown = (floats + 16383) / 16384 * 16384;
        float *p = aligned_alloc(64, grown * sizeof(float));
        if (!p) return NULL;
        free(buffer);
        buffer = p;
        size = grown;
    }
    return buffer;
}

/* ---- phase 1: each row's rotary embedding and KV append --------------------------------------- */
static void rotate(const float *x, const float *c, const float *s, float *y, int64_t half) {
    for (int64_t i = 0; i < half; i++) {
        const float a = x[i], b = x[i + half];
        y[i] = a * c[i] - b * s[i];
        y[i + half] = b * c[i] + a * s[i];
    }
}

static void write_row(void *arg, size_t t) {
    const Pass *p = (const Pass *)arg;
    const int64_t D = p->D, half = D / 2, H = p->H, KVH = p->KVH;
    const float *x = p->qkv + (int64_t)t * (H + 2 * KVH) * D;
    const int64_t slot = p->slot[t], pos = p->pos[t];
    const float *c = p->cosc + pos * half, *s = p->sinc + pos * half;
    for (int64_t h = 0; h < H; h++) rotate(x + h * D, c, s, p->q + ((int64_t)t * H + h) * D, half);
    for (int64_t g = 0; g < KVH; g++) {
        float k[DMAX];
        rotate(x + (H + g) * D, c, s, k, half);
        float *kb = p->kc + ((slot * KVH + g) * p->C + pos / KEYS * KEYS) * D + pos % KEYS;
        for (int64_t d = 0; d < D; d++) kb[d * KEYS] = k[d];
        memcpy(p->vc + ((slot * KVH + g) * p->C + pos) * D, x + (H + KVH + g) * D, (size_t)D * sizeof(float));
    }
}

/* ---- phase 2: attention of one work item -------------------------------------------------------- */
#ifndef SPECOPS_PORTABLE  /* the AVX-512 micro-kernels (to softmax) */
/* e^x for x <= 0 (Cephes' expf: x = n ln2 + r, |r| <= ln2/2, a degree-6 polynomial, 2^n by scalef);
 * below -88 it is 0 as far as a softmax cares. The same code for every element. */
INLINE __m512 exp_nonpositive(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-88.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 y = _mm512_set1_ps(1.9875691500e-4f);
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.3981999507e-3f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073e-3f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894e-2f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459e-1f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201e-1f));
    y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(y, n);
}

/* Scores of NQ query vectors against NB blocks of 16 keys (one or two: a broadcast query value
 * then feeds two multiply-adds, where loads would otherwise limit): independent chains over d. */
INLINE void score_block(const float *const *q, const float *kb, int64_t D, float scale, float *const *srow,
                        int64_t at, const int NQ, const int NB) {
    __m512 acc[2][QTILE];
    for (int b = 0; b < NB; b++)
        for (int i = 0; i < NQ; i++) acc[b][i] = _mm512_setzero_ps();
    for (int64_t d = 0; d < D; d++) {
        __m512 k[2];
        for (int b = 0; b < NB; b++) k[b] = _mm512_loadu_ps(kb + b * KEYS * D + d * KEYS);
        for (int i = 0; i < NQ; i++) {
            const __m512 x = _mm512_set1_ps(q[i][d]);
            for (int b = 0; b < NB; b++) acc[b][i] = _mm512_fmadd_ps(x, k[b], acc[b][i]);
        }
    }
    for (int b = 0; b < NB; b++)
        for (int i = 0; i < NQ; i++)
            _mm512_store_ps(srow[i] + at + b * KEYS, _mm512_mul_ps(acc[b][i], _mm512_set1_ps(scale)));
}

/* acc_i[16 dims] += e_i[j] v[j] for keys j = j0..j1-1 below len_i, in order of j: one block's
 * share of out_i, carried in memory from block to block (loads and stores do not round). */
INLINE void weigh_values(const float *const *e, const int64_t *len, const float *v, int64_t D, int64_t j0,
                         int64_t j1, float *const *acc_row, const int NQ, const int NC) {
    __m512 acc[2][QTILE];  /* NC (one or two) runs of 16 dims: a broadcast weight feeds NC multiply-adds */
    for (int c = 0; c < NC; c++)
        for (int i = 0; i < NQ; i++) acc[c][i] = _mm512_load_ps(acc_row[i] + c * KEYS);
    const int64_t common = len[0] < j1 ? len[0] : j1;  /* every vector's keys (lengths ascend with i) */
    for (int64_t j = j0; j < common; j++) {
        __m512 x[2];
        for (int c = 0; c < NC; c++) x[c] = _mm512_loadu_ps(v + j * D + c * KEYS);
        for (int i = 0; i < NQ; i++) {
            const __m512 w = _mm512_set1_ps(e[i][j]);
            for (int c = 0; c < NC; c++) acc[c][i] = _mm512_fmadd_ps(w, x[c], acc[c][i]);
        }
    }
    for (int64_t j = common > j0 ? common : j0; j < j1; j++) {
        __m512 x[2];
        for (int c = 0; c < NC; c++) x[c] = _mm512_loadu_ps(v + j * D + c * KEYS);
        for (int i = 0; i < NQ; i++)
            if (j < len[i])
                for (int c = 0; c < NC; c++) acc[c][i] = _mm512_fmadd_ps(_mm512_set1_ps(e[i][j]), x[c], acc[c][i]);
    }
    for (int c = 0; c < NC; c++)
        for (int i = 0; i < NQ; i++) _mm512_store_ps(acc_row[i] + c * KEYS, acc[c][i]);
}

/* Softmax weights of scores s[0..len) in place (zeros after, to the block's end); 1 / their sum. */
static float softmax(float *s, int64_t len) {
    const int64_t blocks = (len + KEYS - 1) / KEYS;
    __m512 m = _mm512_set1_ps(-INFINITY);
    for (int64_t b = 0; b < blocks; b++) {
        const int64_t left = len - b * KEYS;
        const __mmask16 live = left >= KEYS ? 0xFFFF : (__mmask16)((1u << left) - 1);
        m = _mm512_mask_max_ps(m, live, m, _mm512_load_ps(s + b * KEYS));
    }
    const __m512 top = _mm512_set1_ps(_mm512_reduce_max_ps(m));
    __m512 sum = _mm512_setzero_ps();
    for (int64_t b = 0; b < blocks; b++) {
        const int64_t left = len - b * KEYS;
        const __mmask16 live = left >= KEYS ? 0xFFFF : (__mmask16)((1u << left) - 1);
        const __m512 e = _mm512_maskz_mov_ps(live, exp_nonpositive(_mm512_sub_ps(_mm512_load_ps(s + b * KEYS), top)));
        _mm512_store_ps(s + b * KEYS, e);
        sum = _mm512_add_ps(sum, e);  /* dead lanes add +0: the live ones' sums are unchanged */
    }
    return 1.0f / _mm512_reduce_add_ps(sum);
}
#else  /* the portable build: the same micro-kernels on AVX2 (portable.c) */
INLINE void score_block(const float *const *q, const float *kb, int64_t D, float scale, float *const *srow,
                        int64_t at, const int NQ, const int NB) {
    specops_portable_scores(q, kb, D, scale, srow, at, NQ, NB);
}
INLINE void weigh_values(const float *const *e, const int64_t *len, const float *v, int64_t D, int64_t j0,
                         int64_t j1, float *const *acc_row, const int NQ, const int NC) {
    specops_portable_values(e, len, v, D, j0, j1, acc_row, NQ, NC);
}
static float softmax(float *s, int64_t len) { return specops_portable_softmax(s, len); }
#endif

#define BY_COUNT(call, nq)                                                                      \
    switch (nq) {                                                                               \
    case 1: call(1); break; case 2: call(2); break; case 3: call(3); break; case 4: call(4); break; \
    case 5: call(5); break; case 6: call(6); break; case 7: call(7); break; case 8: call(8); break; \
    case 9: call(9); break; case 10: call(10); break; case 11: call(11); break; default: call(12); \
    }

/* Work item: tile `item / KVH` (rows of one slot at consecutive positions) x KV head `item % KVH`:
 * its query vectors are the tile's rows x the G = H / KVH heads that share the KV head. Every block
 * of 16 keys (then values) is used by all of them while it is in L1. */
static void attend(void *arg, size_t item) {
    const Pass *p = (const Pass *)arg;
    const int64_t H = p->H, KVH = p->KVH, D = p->D, G = H / KVH;
    const int64_t t0 = p->tiles[2 * (item / KVH)], rows = p->tiles[2 * (item / KVH) + 1], g = (int64_t)item % KVH;
    const int64_t slot = p->slot[t0], first = p->pos[t0], keys = first + rows;  /* the last row sees them all */
    const int64_t stride = (keys + KEYS - 1) / KEYS * KEYS, nq = rows * G, blocks = stride / KEYS;
    float *scratch = att_scratch((size_t)(nq * (stride + D)));
    if (!scratch) abort();  /* out of memory inside onnxruntime's thread pool: nothing sane to return */
    const float *kbase = p->kc + (slot * KVH + g) * p->C * D, *vbase = p->vc + (slot * KVH + g) * p->C * D;
    const float *q[QITEM + 8 * QTILE];
    float *srow[QITEM + 8 * QTILE], *arow[QITEM + 8 * QTILE];
    int64_t len[QITEM + 8 * QTILE];
    float inv[QITEM + 8 * QTILE];
    for (int64_t i = 0; i < nq; i++) {
        const int64_t t = t0 + i / G, h = g * G + i % G;
        q[i] = p->q + (t * H + h) * D;
        srow[i] = scratch + i * stride;
        arow[i] = scratch + nq * stride + i * D;  /* value sums, then the output */
        len[i] = first + i / G + 1;
    }
    for (int64_t b = 0; b < blocks; b += 2)
        for (int64_t i0 = 0; i0 < nq; i0 += QTILE) {
            const int64_t n = nq - i0 < QTILE ? nq - i0 : QTILE;
#define SCORE2(NQ) score_block(q + i0, kbase + b * KEYS * D, D, p->scale, srow + i0, b * KEYS, NQ, 2)
#define SCORE1(NQ) score_block(q + i0, kbase + b * KEYS * D, D, p->scale, srow + i0, b * KEYS, NQ, 1)
            if (b + 1 < blocks) {
                BY_COUNT(SCORE2, n)
            } else {
                BY_COUNT(SCORE1, n)
            }
#undef SCORE2
#undef SCORE1
        }
    for (int64_t i = 0; i < nq; i++) {
        inv[i] = softmax(srow[i], len[i]);
        memset(arow[i], 0, (size_t)D * sizeof(float));
    }
    for (int64_t b = 0; b < blocks; b++)
        for (int64_t i0 = 0; i0 < nq; i0 += QTILE) {
            const int64_t n = nq - i0 < QTILE ? nq - i0 : QTILE;
            for (int64_t c = 0; c < D; c += 2 * KEYS) {
                float *acc[QTILE];
                for (int64_t i = 0; i < n; i++) acc[i] = arow[i0 + i] + c;
#define WEIGH2(NQ) weigh_values((const float *const *)srow + i0, len + i0, vbase + c, D, b * KEYS, (b + 1) * KEYS, acc, NQ, 2)
#define WEIGH1(NQ) weigh_values((const float *const *)srow + i0, len + i0, vbase + c, D, b * KEYS, (b + 1) * KEYS, acc, NQ, 1)
                if (c + KEYS < D) {
                    BY_COUNT(WEIGH2, n)
                } else {
                    BY_COUNT(WEIGH1, n)
                }
#undef WEIGH2
#undef WEIGH1
            }
        }
    for (int64_t i = 0; i < nq; i++) {
        const int64_t t = t0 + i / G, h = g * G + i % G;
        float *out = p->out + (t * H + h) * D;
#ifdef SPECOPS_PORTABLE
        for (int64_t c = 0; c < D; c++) out[c] = arow[i][c] * inv[i];
#else
        const __m512 scale = _mm512_set1_ps(inv[i]);
        for (int64_t c = 0; c < D; c += KEYS) _mm512_storeu_ps(out + c, _mm512_mul_ps(_mm512_load_ps(arow[i] + c), scale));
#endif
    }
}

/* ---- the custom op ------------------------------------------------------------------------------ */
static OrtStatus *att_create(const OrtCustomOp *op, const OrtApi *api, const OrtKernelInfo *info, void **out) {
    (void)op;
    AttKernel k;
    TRY(ORT_CALL(api, KernelInfoGetAttribute_int64, AttrIntFn)(info, "num_heads", &k.H));
    TRY(ORT_CALL(api, KernelInfoGetAttribute_int64, AttrIntFn)(info, "kv_num_heads", &k.KVH));
    TRY(ORT_CALL(api, KernelInfoGetAttribute_float, AttrFloatFn)(info, "scale", &k.scale));
    if (k.H <= 0 || k.KVH <= 0 || k.H % k.KVH || k.H / k.KVH > QITEM + 8 * QTILE)
        return fail(ORT_INVALID_ARGUMENT, "specops.Attention: num_heads must be a multiple of kv_num_heads (at most 96x)");
    AttKernel *p = malloc(sizeof *p);
    if (!p) return fail(ORT_FAIL, "specops.Attention: out of memory");
    *p = k;
    *out = p;
    return NULL;
}

static OrtStatus *data_of(const OrtValue *v, void **data) {
    return ORT_CALL(g_api, GetTensorMutableData, MutableDataFn)((OrtValue *)v, data);
}

/* The cache output: the input's own buffer when the caller bound it so, else a copy of the input. */
static OrtStatus *cache_output(OrtKernelContext *ctx, size_t index, const OrtValue *in, const int64_t *dims,
                               float **cache) {
    OrtValue *out;
    void *src, *dst;
    TRY(ORT_CALL(g_api, KernelContext_GetOutput, GetOutputFn)(ctx, index, dims, 4, &out));
    TRY(data_of(in, &src));
    TRY(data_of(out, &dst));
    if (dst != src) memcpy(dst, src, (size_t)(dims[0] * dims[1] * dims[2] * dims[3]) * sizeof(float));
    *cache = (float *)dst;
    return NULL;
}

/* Groups rows into tiles: one slot, consecutive positions, at most QITEM / G rows (one at least). */
static int64_t make_tiles(const int32_t *slot, const int32_t *pos, int64_t rows, int64_t per_tile, int64_t *tiles) {
    int64_t n = 0;
    for (int64_t t = 0; t < rows; t++) {
        const int64_t *last = n ? tiles + 2 * (n - 1) : NULL;
        if (last && last[1] < per_tile && slot[t] == slot[last[0]] && pos[t] == pos[last[0]] + last[1]) {
            tiles[2 * (n - 1) + 1]++;
        } else {
            tiles[2 * n] = t;
            tiles[2 * n + 1] = 1;
            n++;
        }
    }
    return n;
}

static OrtStatus *att_compute(void *state, OrtKernelContext *ctx) {
    const AttKernel *k = (const AttKernel *)state;
    const OrtValue *in[7];
    for (size_t i = 0; i < 7; i++) TRY(ORT_CALL(g_api, KernelContext_GetInput, GetInputFn)(ctx, i, &in[i]));
    int64_t qd[8], kd[8], vd[8], sd[8], pd[8], cd[8];
    size_t nq, nk, nv, ns, np, nc;
    TRY(specops_shape_of(in[0], qd, &nq));
    TRY(specops_shape_of(in[1], kd, &nk));
    TRY(specops_shape_of(in[2], vd, &nv));
    TRY(specops_shape_of(in[3], sd, &ns));
    TRY(specops_shape_of(in[4], pd, &np));
    TRY(specops_shape_of(in[5], cd, &nc));
    const int64_t H = k->H, KVH = k->KVH;
    if (nq != 3 || qd[2] % (H + 2 * KVH))
        return fail(ORT_INVALID_ARGUMENT, "specops.Attention: qkv must be [B, T, (num_heads + 2 kv_num_heads) head_size]");
    const int64_t rows = qd[0] * qd[1], D = qd[2] / (H + 2 * KVH);
    if (D % KEYS || D > DMAX) return fail(ORT_INVALID_ARGUMENT, "specops.Attention: head size must be a multiple of 16, at most 256");
    if (nk != 4 || nv != 4 || kd[1] != KVH || kd[3] != D || kd[2] % KEYS || memcmp(kd, vd, sizeof(int64_t) * 4))
        return fail(ORT_INVALID_ARGUMENT, "specops.Attention: caches must be [slots, kv_num_heads, capacity (a multiple of 16), head_size]");
    if (ns != 1 || np != 1 || sd[0] != rows || pd[0] != rows)
        return fail(ORT_INVALID_ARGUMENT, "specops.Attention: row_slot and row_pos need one entry per row");
    if (nc != 2 || cd[1] * 2 != D)
        return fail(ORT_INVALID_ARGUMENT, "specops.Attention: cos/sin caches must be [positions, head_size / 2]");
    void *x[7];
    for (size_t i = 0; i < 7; i++) TRY(data_of(in[i], &x[i]));
    const int32_t *slot = (const int32_t *)x[3], *pos = (const int32_t *)x[4];
    for (int64_t t = 0; t < rows; t++)
        if (slot[t] < 0 || slot[t] >= kd[0] || pos[t] < 0 || pos[t] >= kd[2] || pos[t] >= cd[0])
            return fail(ORT_INVALID_ARGUMENT, "specops.Attention: a row's slot or position is outside the cache");
    int64_t od[3] = {qd[0], qd[1], H * D};
    OrtValue *out;
    void *y;
    TRY(ORT_CALL(g_api, KernelContext_GetOutput, GetOutputFn)(ctx, 0, od, 3, &out));
    TRY(data_of(out, &y));
    Pass p = {.qkv = (const float *)x[0], .cosc = (const float *)x[5], .sinc = (const float *)x[6], .slot = slot,
              .pos = pos, .out = (float *)y, .rows = rows, .H = H, .KVH = KVH, .D = D, .C = kd[2],
              .scale = k->scale != 0.0f ? k->scale : 1.0f / sqrtf((float)D)};
    TRY(cache_output(ctx, 1, in[1], kd, &p.kc));
    TRY(cache_output(ctx, 2, in[2], vd, &p.vc));
    if (rows == 0) return NULL;
    p.q = malloc((size_t)(rows * H * D) * sizeof(float));
    p.tiles = malloc((size_t)rows * 2 * sizeof(int64_t));
    OrtStatus *st = NULL;
    if (!p.q || !p.tiles) st = fail(ORT_FAIL, "specops.Attention: out of memory");
    const int64_t G = H / KVH, per_tile = G >= QITEM ? 1 : QITEM / G;
    const int64_t tiles = st ? 0 : make_tiles(slot, pos, rows, per_tile, p.tiles);
    if (!st) st = ORT_CALL(g_api, KernelContext_ParallelFor, ParallelForFn)(ctx, write_row, (size_t)rows, 0, &p);
    if (!st) st = ORT_CALL(g_api, KernelContext_ParallelFor, ParallelForFn)(ctx, attend, (size_t)(tiles * KVH), 0, &p);
    free(p.q);
    free(p.tiles);
    return st;
}

static const char *att_name(const OrtCustomOp *op) { (void)op; return "Attention"; }
static int att_input_type(const OrtCustomOp *op, size_t i) { (void)op; return i == 3 || i == 4 ? TYPE_INT32 : TYPE_FLOAT; }
static size_t att_inputs(const OrtCustomOp *op) { (void)op; return 7; }
static size_t att_outputs(const OrtCustomOp *op) { (void)op; return 3; }

OrtCustomOp specops_attention_op = {
    .version = ORT_API_USED,
    .GetName = att_name,
    .GetExecutionProviderType = specops_cpu,
    .GetInputType = att_input_type,
    .GetInputTypeCount = att_inputs,
    .GetOutputType = specops_float,
    .GetOutputTypeCount = att_outputs,
    .KernelDestroy = specops_free_state,
    .GetInputCharacteristic = specops_required,
    .GetOutputCharacteristic = specops_required,
    .GetInputMemoryType = specops_default_memory,
    .GetVariadicInputMinArity = specops_one,
    .GetVariadicInputHomogeneity = specops_one,
    .GetVariadicOutputMinArity = specops_one,
    .GetVariadicOutputHomogeneity = specops_one,
    .CreateKernelV2 = att_create,
    .KernelComputeV2 = att_compute,
    .GetStartVersion = specops_one,
    .GetEndVersion = specops_any_version,
    .GetMayInplace = specops_no_pairs,
    .ReleaseMayInplace = specops_release_pairs,
    .GetAliasMap = specops_no_pairs,
    .ReleaseAliasMap = specops_release_pairs,
};
