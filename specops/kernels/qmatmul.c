/* specops.QMatMul: MatMulNBits (4 or 8 bits, block 32, no zero points) for a few rows at a time.
 *
 * Why: onnxruntime's MLAS runs its int8-activation kernel for a pass of 2-16 rows at about a
 * third of a one-row pass per extra row, so verifying k proposals costs nearly k passes. Here the
 * weights sit in column tiles (16 output columns x one 32-value block = one 512-bit vector of
 * 4-value groups per step), unpacked once per tile and block, and every row of the pass reuses
 * them: a row costs 8 VNNI dot products, a convert and a multiply-add per 512 weights. Rows are
 * computed independently with one fixed order of operations, so a row's result does not depend
 * on how many rows share the pass.
 *
 * Numerics follow MLAS's accuracy level 4: each row's activations are quantized per block of 32
 * to int8 (scale = max|a| / 127, round to nearest even), dotted with the unsigned weight codes,
 * the zero point (8 or 128) is taken off through the block's activation sum, and the int32 dot is
 * scaled by both scales and summed in fp32.
 *
 * Layout (written by specops/runtime/graph.py from MatMulNBits' [N, K/32, 32*bits/8] codes):
 *   weights [N/16, K/32, 64*bits] uint8. 8 bits: step s (0..7) is 64 bytes, byte 4j+i = column j's
 *     value k = 4s+i. 4 bits: chunk c (0..3) is 64 bytes, byte 4j+i holds column j's k = 8c+i in
 *     its low nibble and k = 8c+4+i in its high nibble (steps 2c and 2c+1).
 *   scales [N/16, K/32, 16] float.
 *
 * The onnxruntime ABI below is declared here rather than included: onnxruntime's Python wheel
 * ships no C headers. OrtApi is a table of function pointers that only ever grows at its end;
 * the slot numbers are those of ORT_API_VERSION 17, the version this op declares.
 */
#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- onnxruntime C ABI: the part this library uses ---------------------------------------- */
typedef struct OrtStatus OrtStatus;
typedef struct OrtKernelInfo OrtKernelInfo;
typedef struct OrtKernelContext OrtKernelContext;
typedef struct OrtValue OrtValue;
typedef struct OrtTensorTypeAndShapeInfo OrtShapeInfo;
typedef struct OrtCustomOpDomain OrtCustomOpDomain;
typedef struct OrtSessionOptions OrtSessionOptions;
typedef void (*OrtFn)(void);
typedef struct { OrtFn fn[512]; } OrtApi;
typedef struct {
    const OrtApi *(*GetApi)(uint32_t version);
    const char *(*GetVersionString)(void);
} OrtApiBase;

enum { ORT_API_USED = 17, ORT_FAIL = 1, ORT_INVALID_ARGUMENT = 2 };
enum {  /* slots of OrtApi */
    SLOT_CreateStatus = 0,
    SLOT_CreateCustomOpDomain = 26,
    SLOT_CustomOpDomain_Add = 27,
    SLOT_AddCustomOpDomain = 28,
    SLOT_GetTensorMutableData = 51,
    SLOT_GetDimensionsCount = 61,
    SLOT_GetDimensions = 62,
    SLOT_GetTensorTypeAndShape = 65,
    SLOT_KernelInfoGetAttribute_int64 = 86,
    SLOT_KernelContext_GetInput = 90,
    SLOT_KernelContext_GetOutput = 91,
    SLOT_ReleaseTensorTypeAndShapeInfo = 99,
    SLOT_KernelContext_ParallelFor = 274,
};
#define ORT_CALL(api, slot, type) ((type)(api)->fn[SLOT_##slot])

typedef struct OrtCustomOp OrtCustomOp;
struct OrtCustomOp {  /* field order fixed by the ABI */
    uint32_t version;
    void *(*CreateKernel)(const OrtCustomOp *, const OrtApi *, const OrtKernelInfo *);
    const char *(*GetName)(const OrtCustomOp *);
    const char *(*GetExecutionProviderType)(const OrtCustomOp *);
    int (*GetInputType)(const OrtCustomOp *, size_t);
    size_t (*GetInputTypeCount)(const OrtCustomOp *);
    int (*GetOutputType)(const OrtCustomOp *, size_t);
    size_t (*GetOutputTypeCount)(const OrtCustomOp *);
    void (*KernelCompute)(void *, OrtKernelContext *);
    void (*KernelDestroy)(void *);
    int (*GetInputCharacteristic)(const OrtCustomOp *, size_t);
    int (*GetOutputCharacteristic)(const OrtCustomOp *, size_t);
    int (*GetInputMemoryType)(const OrtCustomOp *, size_t);
    int (*GetVariadicInputMinArity)(const OrtCustomOp *);
    int (*GetVariadicInputHomogeneity)(const OrtCustomOp *);
    int (*GetVariadicOutputMinArity)(const OrtCustomOp *);
    int (*GetVariadicOutputHomogeneity)(const OrtCustomOp *);
    OrtStatus *(*CreateKernelV2)(const OrtCustomOp *, const OrtApi *, const OrtKernelInfo *, void **);
    OrtStatus *(*KernelComputeV2)(void *, OrtKernelContext *);
    OrtStatus *(*InferOutputShapeFn)(const OrtCustomOp *, void *);
    int (*GetStartVersion)(const OrtCustomOp *);
    int (*GetEndVersion)(const OrtCustomOp *);
    size_t (*GetMayInplace)(int **, int **);
    void (*ReleaseMayInplace)(int *, int *);
    size_t (*GetAliasMap)(int **, int **);
    void (*ReleaseAliasMap)(int *, int *);
};
enum { TYPE_FLOAT = 1, TYPE_UINT8 = 2, IO_REQUIRED = 0, MEM_DEFAULT = 0 };

typedef OrtStatus *(*CreateStatusFn)(int, const char *);
typedef OrtStatus *(*GetInputFn)(const OrtKernelContext *, size_t, const OrtValue **);
typedef OrtStatus *(*GetOutputFn)(OrtKernelContext *, size_t, const int64_t *, size_t, OrtValue **);
typedef OrtStatus *(*MutableDataFn)(OrtValue *, void **);
typedef OrtStatus *(*TypeAndShapeFn)(const OrtValue *, OrtShapeInfo **);
typedef OrtStatus *(*DimsCountFn)(const OrtShapeInfo *, size_t *);
typedef OrtStatus *(*DimsFn)(const OrtShapeInfo *, int64_t *, size_t);
typedef void (*ReleaseShapeFn)(OrtShapeInfo *);
typedef OrtStatus *(*AttrIntFn)(const OrtKernelInfo *, const char *, int64_t *);
typedef OrtStatus *(*ParallelForFn)(const OrtKernelContext *, void (*)(void *, size_t), size_t, size_t, void *);
typedef OrtStatus *(*CreateDomainFn)(const char *, OrtCustomOpDomain **);
typedef OrtStatus *(*DomainAddFn)(OrtCustomOpDomain *, const OrtCustomOp *);
typedef OrtStatus *(*AddDomainFn)(OrtSessionOptions *, OrtCustomOpDomain *);

static const OrtApi *g_api;

#define TRY(call) do { OrtStatus *st_ = (call); if (st_) return st_; } while (0)
static OrtStatus *fail(int code, const char *msg) { return ORT_CALL(g_api, CreateStatus, CreateStatusFn)(code, msg); }

/* ---- the kernel ------------------------------------------------------------------------------ */
enum { TILE = 16, BLOCK = 32, MAX_ROWS = 12 };

typedef struct {
    const int8_t *aq;      /* [M, K] activations quantized per block */
    const float *ascale;   /* [M, K/32] */
    const int32_t *azero;  /* [M, K/32]: -zero_point * the block's sum of quantized activations */
    const uint8_t *w;      /* [N/16, K/32, 64*bits] */
    const float *wscale;   /* [N/16, K/32, 16] */
    float *y;              /* [M, N] */
    int64_t M, K, N, bits;
} Work;

/* d += per-lane dot of 4 unsigned weight bytes with the 4 signed activation bytes at a, which
 * are broadcast to every lane from memory (GCC does not fold _mm512_set1_epi32 into the
 * instruction's {1to16} operand by itself, and the separate broadcast costs an extra uop). */
static inline __attribute__((always_inline)) __m512i dot4(__m512i d, __m512i w, const int32_t *a) {
    __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(d) : "v"(w), "m"(*a));
    return d;
}

/* Rows m0..m0+R-1 of output tile t. R and BITS are constants at every call site, so the row
 * loops unroll and the accumulators live in registers. */
static inline __attribute__((always_inline)) void tile_rows(const Work *wk, int64_t t, int64_t m0, const int R,
                                                            const int BITS) {
    const int64_t K = wk->K, KB = K / BLOCK;
    const uint8_t *wt = wk->w + t * KB * 64 * BITS;
    const float *st = wk->wscale + t * KB * TILE;
    __m512 acc[MAX_ROWS];
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
    const __m512i low = _mm512_set1_epi8(0x0F);
    for (int64_t kb = 0; kb < KB; kb++) {
        __m512i w[8];
        if (BITS == 4) {
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
        const __m512 sb = _mm512_loadu_ps(st + kb * TILE);
        for (int r = 0; r < R; r++) {
            const int64_t row = m0 + r;
            const int32_t *a = (const int32_t *)(wk->aq + row * K + kb * BLOCK);
            /* a dot product's latency is several cycles: few rows run out of independent work
             * on one chain of 8 per row, so they split it (4 chains for one row, 2 up to 4 rows) */
            const int CH = R == 1 ? 4 : R <= 4 ? 2 : 1;
            __m512i d[4];
            d[0] = _mm512_set1_epi32(wk->azero[row * KB + kb]);
            for (int c = 1; c < CH; c++) d[c] = _mm512_setzero_si512();
            for (int s = 0; s < 8; s += CH)
                for (int c = 0; c < CH; c++) d[c] = dot4(d[c], w[s + c], a + s + c);
            if (CH == 4) { d[0] = _mm512_add_epi32(d[0], d[2]); d[1] = _mm512_add_epi32(d[1], d[3]); }
            if (CH >= 2) d[0] = _mm512_add_epi32(d[0], d[1]);
            const __m512i d0 = d[0];
            const __m512 dot = _mm512_cvtepi32_ps(d0);
            acc[r] = _mm512_fmadd_ps(_mm512_mul_ps(dot, _mm512_set1_ps(wk->ascale[row * KB + kb])), sb, acc[r]);
        }
    }
    for (int r = 0; r < R; r++) _mm512_storeu_ps(wk->y + (m0 + r) * wk->N + t * TILE, acc[r]);
}

#define ROWS_CASES(BITS)                                   \
    switch (R) {                                           \
    case 1: tile_rows(wk, t, m0, 1, BITS); break;          \
    case 2: tile_rows(wk, t, m0, 2, BITS); break;          \
    case 3: tile_rows(wk, t, m0, 3, BITS); break;          \
    case 4: tile_rows(wk, t, m0, 4, BITS); break;          \
    case 5: tile_rows(wk, t, m0, 5, BITS); break;          \
    case 6: tile_rows(wk, t, m0, 6, BITS); break;          \
    case 7: tile_rows(wk, t, m0, 7, BITS); break;          \
    case 8: tile_rows(wk, t, m0, 8, BITS); break;          \
    case 9: tile_rows(wk, t, m0, 9, BITS); break;          \
    case 10: tile_rows(wk, t, m0, 10, BITS); break;          \
    case 11: tile_rows(wk, t, m0, 11, BITS); break;          \
    default: tile_rows(wk, t, m0, 12, BITS); break;        \
    }

/* Every row of output tile t, in near-equal chunks of at most MAX_ROWS. */
static void run_tile(void *arg, size_t t) {
    const Work *wk = (const Work *)arg;
    const int64_t chunks = (wk->M + MAX_ROWS - 1) / MAX_ROWS;
    const int64_t per = (wk->M + chunks - 1) / chunks;
    for (int64_t m0 = 0; m0 < wk->M; m0 += per) {
        const int R = (int)(wk->M - m0 < per ? wk->M - m0 : per);
        if (wk->bits == 4) { ROWS_CASES(4) } else { ROWS_CASES(8) }
    }
}

/* Per row and block of 32: int8 codes, scale and -zero_point * sum of codes. */
static void quantize(const float *A, int64_t M, int64_t K, int32_t zero_point, int8_t *aq, float *ascale,
                     int32_t *azero) {
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
            ascale[m * KB + kb] = amax / 127.0f;
            azero[m * KB + kb] = -zero_point * _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
        }
    }
}

/* The calling thread's buffer for quantized activations, grown as needed and kept: a pass calls
 * the op once per matmul, and allocating per call churns the heap (the process grew 6% in a
 * one-minute soak that way). One per thread, so concurrent runs of a session never share it. */
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

/* ---- the custom op --------------------------------------------------------------------------- */
typedef struct { int64_t K, N, bits; } Kernel;

static OrtStatus *shape_of(const OrtValue *v, int64_t *dims, size_t *n) {
    OrtShapeInfo *info;
    TRY(ORT_CALL(g_api, GetTensorTypeAndShape, TypeAndShapeFn)(v, &info));
    OrtStatus *st = ORT_CALL(g_api, GetDimensionsCount, DimsCountFn)(info, n);
    if (!st && *n > 8) st = fail(ORT_INVALID_ARGUMENT, "specops.QMatMul: more than 8 dimensions");
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
    if ((k.bits != 4 && k.bits != 8) || k.K % BLOCK || k.N % TILE || k.K <= 0 || k.N <= 0)
        return fail(ORT_INVALID_ARGUMENT, "specops.QMatMul: needs bits 4 or 8, K a multiple of 32, N of 16");
    Kernel *p = malloc(sizeof *p);
    if (!p) return fail(ORT_FAIL, "specops.QMatMul: out of memory");
    *p = k;
    *out = p;
    return NULL;
}

static OrtStatus *compute(void *state, OrtKernelContext *ctx) {
    const Kernel *k = (const Kernel *)state;
    const OrtValue *in[3];
    for (size_t i = 0; i < 3; i++) TRY(ORT_CALL(g_api, KernelContext_GetInput, GetInputFn)(ctx, i, &in[i]));
    int64_t dims[8], wdims[8], sdims[8];
    size_t nd, nw, ns;
    TRY(shape_of(in[0], dims, &nd));
    TRY(shape_of(in[1], wdims, &nw));
    TRY(shape_of(in[2], sdims, &ns));
    const int64_t KB = k->K / BLOCK, tiles = k->N / TILE;
    if (nd < 1 || dims[nd - 1] != k->K)
        return fail(ORT_INVALID_ARGUMENT, "specops.QMatMul: input's last dimension is not K");
    if (nw != 3 || wdims[0] != tiles || wdims[1] != KB || wdims[2] != 64 * k->bits || ns != 3 ||
        sdims[0] != tiles || sdims[1] != KB || sdims[2] != TILE)
        return fail(ORT_INVALID_ARGUMENT, "specops.QMatMul: weights or scales are not in the tiled layout");
    int64_t M = 1;
    for (size_t i = 0; i + 1 < nd; i++) M *= dims[i];
    dims[nd - 1] = k->N;
    OrtValue *out;
    TRY(ORT_CALL(g_api, KernelContext_GetOutput, GetOutputFn)(ctx, 0, dims, nd, &out));
    void *a, *w, *s, *y;
    TRY(ORT_CALL(g_api, GetTensorMutableData, MutableDataFn)((OrtValue *)in[0], &a));
    TRY(ORT_CALL(g_api, GetTensorMutableData, MutableDataFn)((OrtValue *)in[1], &w));
    TRY(ORT_CALL(g_api, GetTensorMutableData, MutableDataFn)((OrtValue *)in[2], &s));
    TRY(ORT_CALL(g_api, GetTensorMutableData, MutableDataFn)(out, &y));
    if (M == 0) return NULL;
    const size_t codes = (size_t)(M * k->K + 63) / 64 * 64;
    char *scratch = scratch_of(codes + (size_t)(M * KB) * 8);
    if (!scratch) return fail(ORT_FAIL, "specops.QMatMul: out of memory");
    Work wk = {(int8_t *)scratch, (float *)(scratch + codes), (int32_t *)(scratch + codes) + M * KB,
               (const uint8_t *)w, (const float *)s, (float *)y, M, k->K, k->N, k->bits};
    quantize((const float *)a, M, k->K, k->bits == 4 ? 8 : 128, (int8_t *)wk.aq, (float *)wk.ascale,
             (int32_t *)wk.azero);
    return ORT_CALL(g_api, KernelContext_ParallelFor, ParallelForFn)(ctx, run_tile, (size_t)tiles, 0, &wk);
}

static void destroy_kernel(void *state) { free(state); }
static const char *op_name(const OrtCustomOp *op) { (void)op; return "QMatMul"; }
static const char *op_provider(const OrtCustomOp *op) { (void)op; return "CPUExecutionProvider"; }
static int input_type(const OrtCustomOp *op, size_t i) { (void)op; return i == 1 ? TYPE_UINT8 : TYPE_FLOAT; }
static size_t input_count(const OrtCustomOp *op) { (void)op; return 3; }
static int output_type(const OrtCustomOp *op, size_t i) { (void)op; (void)i; return TYPE_FLOAT; }
static size_t output_count(const OrtCustomOp *op) { (void)op; return 1; }
static int required(const OrtCustomOp *op, size_t i) { (void)op; (void)i; return IO_REQUIRED; }
static int default_memory(const OrtCustomOp *op, size_t i) { (void)op; (void)i; return MEM_DEFAULT; }
static int one(const OrtCustomOp *op) { (void)op; return 1; }
static int start_version(const OrtCustomOp *op) { (void)op; return 1; }
static int end_version(const OrtCustomOp *op) { (void)op; return 2147483647; }
static size_t no_pairs(int **a, int **b) { *a = NULL; *b = NULL; return 0; }
static void release_pairs(int *a, int *b) { (void)a; (void)b; }

static OrtCustomOp g_op = {
    .version = ORT_API_USED,
    .GetName = op_name,
    .GetExecutionProviderType = op_provider,
    .GetInputType = input_type,
    .GetInputTypeCount = input_count,
    .GetOutputType = output_type,
    .GetOutputTypeCount = output_count,
    .KernelDestroy = destroy_kernel,
    .GetInputCharacteristic = required,
    .GetOutputCharacteristic = required,
    .GetInputMemoryType = default_memory,
    .GetVariadicInputMinArity = one,
    .GetVariadicInputHomogeneity = one,
    .GetVariadicOutputMinArity = one,
    .GetVariadicOutputHomogeneity = one,
    .CreateKernelV2 = create_kernel,
    .KernelComputeV2 = compute,
    .GetStartVersion = start_version,
    .GetEndVersion = end_version,
    .GetMayInplace = no_pairs,
    .ReleaseMayInplace = release_pairs,
    .GetAliasMap = no_pairs,
    .ReleaseAliasMap = release_pairs,
};

/* 1 when this CPU runs the kernel (AVX-512 with VNNI); the loader checks before registering. */
int specops_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vnni");
}

/* The entry point onnxruntime's register_custom_ops_library calls. */
OrtStatus *RegisterCustomOps(OrtSessionOptions *options, const OrtApiBase *base) {
    g_api = base->GetApi(ORT_API_USED);
    if (!g_api) return NULL;  /* an onnxruntime older than 1.17: nothing registered, the graph load fails */
    if (!specops_supported())
        return fail(ORT_FAIL, "specops.QMatMul needs AVX-512 VNNI, which this CPU lacks");
    OrtCustomOpDomain *domain;
    TRY(ORT_CALL(g_api, CreateCustomOpDomain, CreateDomainFn)("specops", &domain));
    TRY(ORT_CALL(g_api, CustomOpDomain_Add, DomainAddFn)(domain, &g_op));
    return ORT_CALL(g_api, AddCustomOpDomain, AddDomainFn)(options, domain);
}
