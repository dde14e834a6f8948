/* The part of onnxruntime's C ABI that specops' kernels use (QMatMul, Attention): declared here
 * rather than included, because onnxruntime's Python wheel ships no C headers. OrtApi is a table of
 * function pointers that only ever grows at its end; the slot numbers are those of
 * ORT_API_VERSION 17, the version the ops declare. One library: qmatmul.c registers every op. */
#ifndef SPECOPS_ORT_ABI_H
#define SPECOPS_ORT_ABI_H
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

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
    SLOT_KernelInfoGetAttribute_float = 85,
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
enum { TYPE_FLOAT = 1, TYPE_UINT8 = 2, TYPE_INT32 = 6, TYPE_INT64 = 7, IO_REQUIRED = 0, IO_OPTIONAL = 1, MEM_DEFAULT = 0 };

typedef OrtStatus *(*CreateStatusFn)(int, const char *);
typedef OrtStatus *(*GetInputFn)(const OrtKernelContext *, size_t, const OrtValue **);
typedef OrtStatus *(*GetOutputFn)(OrtKernelContext *, size_t, const int64_t *, size_t, OrtValue **);
typedef OrtStatus *(*MutableDataFn)(OrtValue *, void **);
typedef OrtStatus *(*TypeAndShapeFn)(const OrtValue *, OrtShapeInfo **);
typedef OrtStatus *(*DimsCountFn)(const OrtShapeInfo *, size_t *);
typedef OrtStatus *(*DimsFn)(const OrtShapeInfo *, int64_t *, size_t);
typedef void (*ReleaseShapeFn)(OrtShapeInfo *);
typedef OrtStatus *(*AttrFloatFn)(const OrtKernelInfo *, const char *, float *);
typedef OrtStatus *(*AttrIntFn)(const OrtKernelInfo *, const char *, int64_t *);
typedef OrtStatus *(*ParallelForFn)(const OrtKernelContext *, void (*)(void *, size_t), size_t, size_t, void *);
typedef OrtStatus *(*CreateDomainFn)(const char *, OrtCustomOpDomain **);
typedef OrtStatus *(*DomainAddFn)(OrtCustomOpDomain *, const OrtCustomOp *);
typedef OrtStatus *(*AddDomainFn)(OrtSessionOptions *, OrtCustomOpDomain *);

extern const OrtApi *g_api;  /* set by RegisterCustomOps (qmatmul.c) */

#define TRY(call) do { OrtStatus *st_ = (call); if (st_) return st_; } while (0)
static inline OrtStatus *fail(int code, const char *msg) { return ORT_CALL(g_api, CreateStatus, CreateStatusFn)(code, msg); }

/* The answers every specops op gives alike in its OrtCustomOp table. */
static inline void specops_free_state(void *state) { free(state); }
static inline const char *specops_cpu(const OrtCustomOp *op) { (void)op; return "CPUExecutionProvider"; }
static inline int specops_float(const OrtCustomOp *op, size_t i) { (void)op; (void)i; return TYPE_FLOAT; }
static inline int specops_required(const OrtCustomOp *op, size_t i) { (void)op; (void)i; return IO_REQUIRED; }
static inline int specops_default_memory(const OrtCustomOp *op, size_t i) { (void)op; (void)i; return MEM_DEFAULT; }
static inline int specops_one(const OrtCustomOp *op) { (void)op; return 1; }
static inline int specops_any_version(const OrtCustomOp *op) { (void)op; return 2147483647; }
static inline size_t specops_no_pairs(int **a, int **b) { *a = NULL; *b = NULL; return 0; }
static inline void specops_release_pairs(int *a, int *b) { (void)a; (void)b; }

/* shape of a tensor (at most 8 dimensions) */
OrtStatus *specops_shape_of(const OrtValue *v, int64_t *dims, size_t *n);
/* the Attention op's definition (attention.c), registered beside QMatMul */
extern OrtCustomOp specops_attention_op;
#endif
