/*
 * klcl — knowledge-distillation losses on any OpenCL device.
 *
 * One call computes a loss of the family in docs/LOSSES.md (forward and reverse KL, soft and hard
 * cross-entropy, generalized JSD, skew KL, total variation, the combined KD objective) over N rows of
 * teacher and student logits, optionally with the gradient with respect to the student logits, on an
 * OpenCL device or on the built-in CPU reference (plain C, double precision).
 *
 * Typical use:
 *
 *     klcl_context *ctx;
 *     if (klcl_context_create(NULL, &ctx) != KLCL_OK) { ... }      // device from KLCL_DEVICE or the default
 *     klcl_loss_desc desc;
 *     klcl_loss_desc_init(&desc, KLCL_LOSS_KL);
 *     desc.tau = 2.0f; desc.scale = 4.0f; desc.reduction = KLCL_REDUCTION_BATCHMEAN;
 *     klcl_batch b = KLCL_BATCH_INIT;
 *     b.rows = n; b.vocab = v;
 *     b.teacher = klcl_host_tensor(teacher_logits, v);           // row stride v
 *     b.student = klcl_host_tensor(student_logits, v);
 *     b.grad    = klcl_host_tensor(grad_out, v);                 // optional
 *     klcl_result r;
 *     klcl_status st = klcl_compute(ctx, &desc, &b, &r);
 *     if (st != KLCL_OK) fprintf(stderr, "%s: %s\n", klcl_status_string(st), klcl_last_error(ctx));
 *     klcl_context_destroy(ctx);
 *
 * Threads: a klcl_context is used by one thread at a time (like a zstd context: one context per thread):
 * every function that takes a context, klcl_compute_async and klcl_async_result included, must not run
 * concurrently with another call on the same context. Distinct contexts may be used from distinct threads
 * at once, also on the same device (tested: several contexts computing from several threads give the same
 * bits as one thread). The event klcl_compute_async returns may be waited on from any thread. Functions that
 * take no context (klcl_list_devices, klcl_status_string, the version functions, klcl_convert,
 * klcl_reference_row) are safe to call from any thread.
 *
 * Errors: every function returns a klcl_status. The library never prints, never calls exit() or abort(),
 * and never crashes on bad arguments: it returns a status and keeps a message naming the argument on the
 * context (klcl_last_error). Negative statuses are OpenCL's own error codes (CL_OUT_OF_RESOURCES, ...);
 * positive ones are klcl's.
 */
#ifndef KLCL_H
#define KLCL_H

#include <stddef.h>
#include <stdint.h>

#define CL_TARGET_OPENCL_VERSION 120
#include <CL/cl.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Version: compile-time macros here, run-time functions below. CMake reads these three lines. */
#define KLCL_VERSION_MAJOR 0
#define KLCL_VERSION_MINOR 1
#define KLCL_VERSION_PATCH 0
#define KLCL_VERSION_NUMBER (KLCL_VERSION_MAJOR * 10000 + KLCL_VERSION_MINOR * 100 + KLCL_VERSION_PATCH)

#if defined(KLCL_STATIC_DEFINE)
#define KLCL_API
#elif defined(_WIN32)
#ifdef KLCL_BUILDING
#define KLCL_API __declspec(dllexport)
#else
#define KLCL_API __declspec(dllimport)
#endif
#else
#define KLCL_API __attribute__((visibility("default")))
#endif

/* ---------------------------------------------------------------------------------------------------- */
/* Status                                                                                                 */
/* ---------------------------------------------------------------------------------------------------- */

/* 0 is success; negative values are OpenCL error codes passed through unchanged (CL_BUILD_PROGRAM_FAILURE,
 * CL_MEM_OBJECT_ALLOCATION_FAILURE, ...); positive values are klcl's own band. */
typedef enum klcl_status {
    KLCL_OK = 0,
    KLCL_ERR_NULL_POINTER = 1,       /* a required pointer argument is NULL */
    KLCL_ERR_INVALID_SHAPE = 2,      /* rows or vocab is 0, a stride is smaller than the row width */
    KLCL_ERR_INVALID_VALUE = 3,      /* tau <= 0, beta/lambda/alpha outside [0, 1], unknown enum, ... */
    KLCL_ERR_LABEL_OUT_OF_RANGE = 4, /* a label outside [0, vocab) that is not ignore_index */
    KLCL_ERR_BUFFER_TOO_SMALL = 5,   /* a cl_mem is smaller than offset + the extent the shape needs */
    KLCL_ERR_MISALIGNED = 6,         /* a cl_mem offset is not a multiple of the element size */
    KLCL_ERR_NO_DEVICE = 7,          /* no OpenCL device matches the request */
    KLCL_ERR_OUT_OF_HOST_MEMORY = 8, /* malloc failed */
    KLCL_ERR_KERNEL_SOURCE = 9,      /* a kernel file under KLCL_KERNEL_DIR could not be read */
    KLCL_ERR_UNSUPPORTED = 10,       /* valid request this build or backend cannot serve (see message) */
    KLCL_ERR_NONFINITE_ARG = 11,     /* a float parameter is NaN or infinite */
    KLCL_STATUS_SIGNED_ = -0x7fffffff - 1 /* not a status: keeps the type signed for OpenCL's codes */
} klcl_status;

/* A constant English name and short meaning for any status, OpenCL codes included. Never NULL. */
KLCL_API const char *klcl_status_string(int status);

/* ---------------------------------------------------------------------------------------------------- */
/* Version                                                                                                */
/* ---------------------------------------------------------------------------------------------------- */

KLCL_API unsigned klcl_version_number(void);   /* KLCL_VERSION_NUMBER of the library actually linked */
KLCL_API const char *klcl_version_string(void); /* "MAJOR.MINOR.PATCH" */

/* ---------------------------------------------------------------------------------------------------- */
/* Devices                                                                                                */
/* ---------------------------------------------------------------------------------------------------- */

typedef struct klcl_device_info {
    char id[16];             /* "P:D": what KLCL_DEVICE or klcl_context_options.device accepts */
    unsigned platform_index; /* index among the platforms the loader lists */
    unsigned device_index;   /* index among that platform's devices */
    char name[128];          /* CL_DEVICE_NAME */
    char platform_name[128]; /* CL_PLATFORM_NAME */
    char driver_version[64]; /* CL_DRIVER_VERSION */
    int is_gpu;              /* CL_DEVICE_TYPE_GPU */
    int is_cpu;              /* CL_DEVICE_TYPE_CPU */
    uint64_t global_mem_bytes;
    uint64_t max_alloc_bytes;
    unsigned compute_units;
} klcl_device_info;

/* Lists the OpenCL devices. Writes up to `capacity` entries to `out` (may be NULL when capacity is 0) and
 * the number of devices found to *count. A platform whose devices cannot be queried is skipped, not fatal;
 * no OpenCL platform at all gives KLCL_OK with *count = 0. The CPU reference is not listed: it is always
 * there, under the name "cpu". Thread-safe. */
KLCL_API klcl_status klcl_list_devices(klcl_device_info *out, size_t capacity, size_t *count);

/* ---------------------------------------------------------------------------------------------------- */
/* Context                                                                                                */
/* ---------------------------------------------------------------------------------------------------- */

typedef struct klcl_context klcl_context;

typedef struct klcl_context_options {
    /* Which device: NULL means the environment variable KLCL_DEVICE, and when that is unset or empty the
     * first GPU, else the first OpenCL device of any type, else the CPU reference. Accepted forms:
     *   "P:D"    platform and device index, as klcl_list_devices reports them;
     *   "cpu"    the CPU reference (no OpenCL at all);
     *   "opencl" the default OpenCL device, failing with KLCL_ERR_NO_DEVICE instead of falling back;
     *   other    a case-insensitive substring of the device name or of the platform name: the first match. */
    const char *device;
    /* Adopt a caller's OpenCL objects instead: when `queue` is set, klcl uses it (and its context and
     * device) and `device` is ignored. The caller keeps ownership: klcl retains them while the klcl
     * context lives and releases only its own references. `cl_ctx` may be NULL (taken from the queue);
     * when given it must be the queue's context. An out-of-order queue is refused (KLCL_ERR_UNSUPPORTED):
     * klcl orders its steps by the queue. */
    cl_context cl_ctx;
    cl_command_queue queue;
    /* Verify mode: every klcl_compute also runs the CPU reference on the same inputs and reports the
     * largest differences in klcl_result. Also enabled by the environment variable KLCL_VERIFY=1. Costs
     * the reference's time and, for cl_mem inputs, a download. */
    int verify;
    /* Host logits (and a host gradient) larger than the device are streamed: klcl_compute uploads them
     * in chunks of rows through two sets of device buffers, the upload of the next chunk overlapping the
     * kernels of the current one (on a second queue of the same device). Rows per chunk: 0 (default)
     * sizes chunks from the device's memory (a quarter of CL_DEVICE_GLOBAL_MEM_SIZE for both sets, no
     * buffer above CL_DEVICE_MAX_MEM_ALLOC_SIZE) unless the environment variable KLCL_CHUNK_ROWS gives a
     * number. Results are bit-identical for every chunk size: rows are reduced independently and summed
     * in row order. cl_mem tensors are never chunked. */
    size_t chunk_rows;
} klcl_context_options;

#define KLCL_CONTEXT_OPTIONS_INIT {NULL, NULL, NULL, 0, 0}

/* Creates a context on the chosen device: an OpenCL context and in-order queue of its own, unless a queue
 * is adopted. `options` may be NULL (all defaults). The kernels are built on first use (or by
 * klcl_context_prepare), once per context. On failure *out is NULL; when the failure is that no device
 * matches, the status is KLCL_ERR_NO_DEVICE. */
KLCL_API klcl_status klcl_context_create(const klcl_context_options *options, klcl_context **out);

/* Frees the context and everything it allocated; releases (never destroys) adopted OpenCL objects.
 * NULL is accepted and ignored. */
KLCL_API void klcl_context_destroy(klcl_context *ctx);

/* Builds the kernels now rather than on the first klcl_compute. On CL_BUILD_PROGRAM_FAILURE the compiler's
 * log is readable with klcl_build_log. KLCL_OK at once on the CPU reference.
 *
 * Built programs are cached on disk as device binaries, keyed by a hash of the kernel source, the build
 * options, the device name and vendor, the driver, device and platform versions, and the cache format;
 * written to a temporary file and renamed; any failure to read or write the cache is a miss. Folder:
 * $KLCL_CACHE_DIR, else $XDG_CACHE_HOME/klcl, else $HOME/.cache/klcl. On by default; KLCL_CACHE=off
 * turns it off.
 *
 * The kernels are built in groups, one program each: every loss's row and gradient kernels, and the
 * shared ones (reductions, sparse teacher, conversions). klcl_context_prepare builds every fp32 group;
 * without it a context builds the groups its calls use, when they first use them. */
KLCL_API klcl_status klcl_context_prepare(klcl_context *ctx);

/* 1 when every fp32 kernel group the context has built came from the binary cache (after
 * klcl_context_prepare or a compute). */
KLCL_API int klcl_context_cache_hit(const klcl_context *ctx);

/* Whether the context computes with the CPU reference (1) or an OpenCL device (0). */
KLCL_API int klcl_context_is_reference(const klcl_context *ctx);

/* Description of the context's device ("cpu reference" or the OpenCL device name). Owned by the context. */
KLCL_API const char *klcl_context_device_name(const klcl_context *ctx);

/* The OpenCL objects the context uses (NULL on the CPU reference). Owned by the context: retain them to
 * keep them past klcl_context_destroy. Use these to create cl_mem tensors for klcl_compute. */
KLCL_API cl_context klcl_context_cl_context(const klcl_context *ctx);
KLCL_API cl_command_queue klcl_context_cl_queue(const klcl_context *ctx);

/* The message of the last failed call on this context, naming the argument or the OpenCL call; "" when
 * the last call succeeded. Owned by the context, valid until the next call on it. NULL ctx gives "". */
KLCL_API const char *klcl_last_error(const klcl_context *ctx);

/* The compiler's log of the last kernel build on this context ("" if none). Owned by the context. */
KLCL_API const char *klcl_build_log(const klcl_context *ctx);

/* ---------------------------------------------------------------------------------------------------- */
/* Losses                                                                                                 */
/* ---------------------------------------------------------------------------------------------------- */

typedef enum klcl_loss {
    KLCL_LOSS_KL = 0,      /* KL(p||q), forward KL */
    KLCL_LOSS_RKL = 1,     /* KL(q||p), reverse KL */
    KLCL_LOSS_SOFT_CE = 2, /* H(p, q) = kl + H(p) */
    KLCL_LOSS_CE = 3,      /* -log q_y with label smoothing and z-loss; needs labels, no teacher */
    KLCL_LOSS_JSD = 4,     /* beta*KL(p||m) + (1-beta)*KL(q||m), m = beta*p + (1-beta)*q; beta 0 is kl, 1 is rkl */
    KLCL_LOSS_SKL = 5,     /* KL(p || lambda*p + (1-lambda)*q) */
    KLCL_LOSS_SRKL = 6,    /* KL(q || (1-lambda)*p + lambda*q) */
    KLCL_LOSS_TVD = 7,     /* 1/2 sum |p - q| */
    KLCL_LOSS_KD = 8       /* alpha*ce(tau=1) + (1-alpha)*scale*kl(tau); needs labels */
} klcl_loss;
#define KLCL_LOSS_COUNT 9

typedef enum klcl_reduction {
    KLCL_REDUCTION_NONE = 0,     /* per-row values (klcl_batch.row_loss); result.loss is their sum */
    KLCL_REDUCTION_SUM = 1,      /* sum over rows */
    KLCL_REDUCTION_MEAN = 2,     /* sum / rows not skipped; 0 when every row is skipped */
    KLCL_REDUCTION_BATCHMEAN = 3 /* sum / rows (PyTorch kl_div 'batchmean') */
} klcl_reduction;

/* Names as LOSSES.md spells them ("kl", "rkl", ..., "none", "sum", ...). NULL for an unknown value. */
KLCL_API const char *klcl_loss_name(klcl_loss loss);
KLCL_API const char *klcl_reduction_name(klcl_reduction reduction);
/* The reverse: KLCL_OK and *out set, or KLCL_ERR_INVALID_VALUE for an unknown name. */
KLCL_API klcl_status klcl_loss_from_name(const char *name, klcl_loss *out);
KLCL_API klcl_status klcl_reduction_from_name(const char *name, klcl_reduction *out);

/* Teacher and student heads of different widths (batch->teacher_vocab != batch->vocab), LOSSES.md. */
typedef enum klcl_vocab_policy {
    KLCL_VOCAB_TRUNCATE = 0, /* both sides use the first min(V_t, V_s) columns, renormalised (default) */
    KLCL_VOCAB_PAD = 1       /* the narrower side's missing columns are logits of -inf (probability 0) */
} klcl_vocab_policy;

/* What to compute. Initialise with klcl_loss_desc_init, then change what differs from the defaults. */
typedef struct klcl_loss_desc {
    klcl_loss loss;
    klcl_reduction reduction; /* default mean */
    float tau;                /* temperature > 0 (1/tau finite as a float), default 1 */
    float softcap;            /* c > 0 applies logit <- c*tanh(logit/c) before tau; 0 (default) means none */
    float scale;              /* multiplies every per-row loss and the gradient, default 1 (tau^2: Hinton) */
    float beta;               /* jsd, in [0, 1], default 0.5 */
    float lambda;             /* skl, srkl: in [0, 1], default 0.1 */
    float alpha;              /* kd: weight of the hard-label term, in [0, 1], default 0.5 */
    float label_smoothing;    /* ce: epsilon in [0, 1], default 0 (kd's hard term is plain ce) */
    float z_loss;             /* ce: weight of lse(z_s)^2, >= 0, default 0 (not applied by kd) */
    int32_t ignore_index;     /* label marking a row to skip, default -100 */
    int vocab_policy;         /* klcl_vocab_policy: teacher and student rows of different widths */
} klcl_loss_desc;

/* Fills *desc with LOSSES.md's defaults for `loss`. Returns KLCL_ERR_NULL_POINTER or
 * KLCL_ERR_INVALID_VALUE for an unknown loss. */
KLCL_API klcl_status klcl_loss_desc_init(klcl_loss_desc *desc, klcl_loss loss);

/* Element types of the logit matrices (teacher, student) and of the gradient, and of the fused path's
 * hidden states, heads, biases and gradients. Half-precision values are widened exactly to fp32 in the
 * kernels (fp16 from its bits, so devices without cl_khr_fp16 take them too; bf16 by its 16 bits); a
 * half-precision gradient is computed in fp32 and rounded once, to nearest even. */
typedef enum klcl_dtype {
    KLCL_DTYPE_F32 = 0,  /* IEEE binary32 (the default of a zero-initialised tensor) */
    KLCL_DTYPE_F16 = 1,  /* IEEE binary16 */
    KLCL_DTYPE_BF16 = 2  /* bfloat16: the upper 16 bits of a binary32 */
} klcl_dtype;
#define KLCL_DTYPE_COUNT 3

/* "f32", "f16", "bf16"; NULL for an unknown value. Bytes per element: 4, 2, 2; 0 for an unknown value. */
KLCL_API const char *klcl_dtype_name(klcl_dtype dtype);
KLCL_API size_t klcl_dtype_size(klcl_dtype dtype);

/* Converts `count` elements from one type to another (fp32 <-> fp16 <-> bf16): widening is exact,
 * narrowing rounds to nearest even (overflow gives infinity, NaN stays NaN). src and dst must not overlap
 * unless they are the same pointer with the same type. KLCL_ERR_INVALID_VALUE for an unknown type,
 * KLCL_ERR_NULL_POINTER for a NULL pointer with count > 0. Thread-safe. */
KLCL_API klcl_status klcl_convert(const void *src, klcl_dtype from, void *dst, klcl_dtype to, size_t count);

/* A matrix or vector the call reads or writes: host memory, or a caller-owned cl_mem of the context's
 * OpenCL context (no copies). Exactly one of `host` and `mem` is set for a tensor in use; both NULL means
 * "not given". Element types: teacher, student and grad take any klcl_dtype, as do the fused path's
 * hidden, weight, bias, teacher_logits and gradients; labels are int32, mask uint8 and row_loss fp32,
 * whose dtype must stay KLCL_DTYPE_F32 (0). */
typedef struct klcl_tensor {
    void *host;       /* host pointer (read for inputs, written for outputs) */
    cl_mem mem;       /* or a device buffer */
    size_t offset;    /* bytes from the start of `mem` (multiple of the element size); ignored for host */
    size_t stride;    /* matrices: elements between the starts of consecutive rows, >= the row width; 0
                         means the row width. Ignored for the per-row vectors (labels, mask, row_loss),
                         which are contiguous. */
    klcl_dtype dtype; /* element type of a logit or gradient matrix; 0 is fp32 */
} klcl_tensor;

/* Helpers that fill a klcl_tensor of fp32 elements (stride 0 means contiguous rows); set .dtype after
 * for half precision. */
KLCL_API klcl_tensor klcl_host_tensor(const void *host, size_t stride);
KLCL_API klcl_tensor klcl_mem_tensor(cl_mem mem, size_t offset_bytes, size_t stride);

typedef struct klcl_batch {
    size_t rows;         /* N >= 1 */
    size_t vocab;        /* V_s >= 1, the width of the student rows (and of the teacher's, unless
                            teacher_vocab says otherwise) */
    klcl_tensor teacher; /* N x V_t logits; optional for ce (then only its teacher metrics are NaN) */
    klcl_tensor student; /* N x V_s logits */
    klcl_tensor labels;  /* optional N int32; required for ce and kd. With any loss, a row whose label is
                            ignore_index is skipped, and the labels feed result.accuracy. Labels index the
                            columns the loss uses: [0, V_s), and [0, min(V_t, V_s)) under truncate */
    klcl_tensor mask;    /* optional N uint8; 0 skips the row */
    klcl_tensor grad;    /* optional output, N x V_s: d(reduced loss)/d(student logits); for reduction
                            none, each row holds the gradient of its own loss. Skipped rows get zeros;
                            student columns a truncated loss does not use get zeros; columns past V_s in
                            a strided row are left untouched */
    klcl_tensor row_loss; /* optional output, N fp32: per-row loss after scale (skipped rows 0) */
    size_t teacher_vocab; /* V_t, the width of the teacher rows; 0 means V_s. When it differs from V_s,
                             desc->vocab_policy decides (LOSSES.md "Vocabulary mismatch") */
    int teacher_logprobs; /* 1: the teacher rows are log-probabilities already (log-softmax output, or an
                             offline store): at tau = 1 without softcap they are used as log p as they
                             are, with no second normalisation; otherwise they are treated as logits
                             (which log-probabilities are, up to a constant) */
} klcl_batch;

#define KLCL_BATCH_INIT {0}

/* Summary of a call. Entropies, agreement and accuracy are means over the rows used (not skipped and
 * finite); they are NaN when no row qualifies (accuracy also when there are no labels, teacher metrics
 * for ce without a teacher). */
typedef struct klcl_result {
    double loss;                /* the reduced value (for reduction none: the sum of the per-row values) */
    size_t rows_used;           /* rows not skipped by mask or ignore_index */
    size_t rows_skipped;        /* rows skipped by mask or ignore_index */
    size_t rows_nonfinite;      /* used rows whose loss is NaN or infinite */
    size_t first_nonfinite[8];  /* the first min(8, rows_nonfinite) of them, in row order */
    size_t rows_with_teacher;   /* finite used rows with a usable teacher row: what teacher_entropy and
                                   top1_agreement average over (to combine results of several calls) */
    double teacher_entropy;     /* mean H(p) at tau, nats */
    double student_entropy;     /* mean H(q) at tau, nats */
    double top1_agreement;      /* fraction of rows with argmax p == argmax q (ties: lowest index) */
    double accuracy;            /* fraction of rows with argmax q == label */
    int verified;               /* 1 when verify mode compared this call with the CPU reference */
    double verify_max_loss_err; /* max over rows of |device - reference| / max(1, |reference|) */
    double verify_max_grad_err; /* max over entries of |device - reference| / (1e-6 + 1e-4 |reference|),
                                   gradients taken before scale and denominator; <= 1 is within contract */
    int verify_ok;              /* 1 when both are within LOSSES.md's tolerances */
} klcl_result;

/* Computes the loss described by `desc` over the batch, and the gradient when batch->grad is given, in
 * one call. Blocks until outputs in host memory are written (and, for cl_mem outputs, until the device has
 * finished). `result` may be NULL. Outputs are bit-identical across runs for the same inputs, device and
 * library version. On an error nothing is guaranteed about the outputs except that they are not written
 * past their extents, and the context stays usable.
 *
 * Special values (LOSSES.md): a logit of -inf is probability 0 (0 log 0 = 0); p > 0 where q = 0 gives +inf
 * for kl; a row holding NaN or +inf, or whose logits are all -inf, is invalid: its loss and gradient are
 * NaN, other rows are unaffected, and result->rows_nonfinite counts it. The reduced value then follows
 * IEEE arithmetic (NaN). Host inputs are uploaded into device scratch the context keeps (grown to the
 * largest batch seen, freed by klcl_context_destroy); cl_mem tensors are used in place.
 *
 * Argument errors (status, and the message names the argument):
 *   KLCL_ERR_NULL_POINTER       ctx, desc or batch is NULL; student missing; teacher missing (not ce);
 *                                labels missing for ce and kd
 *   KLCL_ERR_INVALID_SHAPE      rows or vocab 0; a stride smaller than vocab; vocab > 2^31 - 1
 *   KLCL_ERR_INVALID_VALUE      tau <= 0 or so small that 1/tau overflows a float; softcap < 0; beta, lambda, alpha, label_smoothing outside [0, 1];
 *                                z_loss < 0; unknown loss or reduction; both host and mem set
 *   KLCL_ERR_NONFINITE_ARG      a float parameter of desc is NaN or infinite
 *   KLCL_ERR_LABEL_OUT_OF_RANGE a label outside [0, vocab) not equal to ignore_index (the message names
 *                                the first such row)
 *   KLCL_ERR_BUFFER_TOO_SMALL   a cl_mem cannot hold offset + extent
 *   KLCL_ERR_MISALIGNED         a cl_mem offset not a multiple of its element size
 *   KLCL_ERR_UNSUPPORTED        a cl_mem tensor on the CPU reference
 * OpenCL failures return OpenCL's code with the failing call named in klcl_last_error. */
KLCL_API klcl_status klcl_compute(klcl_context *ctx, const klcl_loss_desc *desc, const klcl_batch *batch,
                                  klcl_result *result);

/* ---------------------------------------------------------------------------------------------------- */
/* Asynchronous use                                                                                       */
/* ---------------------------------------------------------------------------------------------------- */

/* For training code that overlaps the loss with other work on the device. */
typedef struct klcl_async {
    cl_uint num_wait;          /* events the call's first kernel waits for (e.g. the forward pass) */
    const cl_event *wait_list; /* NULL exactly when num_wait is 0 */
    cl_event *event;           /* optional out: complete when every output of the call is written (gradient,
                                  row_loss, loss); the caller releases it with clReleaseEvent */
    cl_mem loss;               /* optional: the reduced loss, one fp32 written at byte loss_offset */
    size_t loss_offset;
} klcl_async;

#define KLCL_ASYNC_INIT {0, NULL, NULL, NULL, 0}

/* Enqueues what klcl_compute does on the context's queue and returns without waiting. Every tensor of the
 * batch must be a cl_mem (a host tensor is KLCL_ERR_INVALID_VALUE, naming it). The reduction runs on the
 * device (one work-group, fixed order: deterministic, but the reduced loss may differ in its last bits from
 * klcl_compute's host sum in double), so the gradient's `mean` denominator never goes through the host.
 * For a caller's queue adopted at klcl_context_create, the kernels follow whatever the caller enqueued
 * before, in queue order, as well as the wait list. Argument errors are reported at once, like
 * klcl_compute's (labels in a cl_mem are checked on the device: see klcl_async_result). Verify mode does
 * not apply. KLCL_ERR_UNSUPPORTED on the CPU reference. The buffers must stay valid until the event
 * completes; klcl_context_destroy waits for a call in flight. */
KLCL_API klcl_status klcl_compute_async(klcl_context *ctx, const klcl_loss_desc *desc, const klcl_batch *batch,
                                        const klcl_async *async);

/* Waits for the latest klcl_compute_async on the context and fills `result` (may be NULL) as klcl_compute
 * would, from the per-row results (reduced on the host in double). A label outside the loss's columns that
 * is not ignore_index is reported here (KLCL_ERR_LABEL_OUT_OF_RANGE, naming the row; the gradient rows of
 * such rows were written as zeros). KLCL_ERR_INVALID_VALUE when no asynchronous call is pending: each call
 * has one result, and a new call replaces a pending one. */
KLCL_API klcl_status klcl_async_result(klcl_context *ctx, klcl_result *result);

/* The CPU reference for one row, in double precision, independent of any context: the per-row loss after
 * scale (skipping is the caller's business) and, when grad is not NULL, d(row loss)/d(student logits)
 * (after scale, denominator 1) into grad[0..vocab). `label` is used by ce and kd (and ignored otherwise).
 * Sets *teacher_entropy / *student_entropy when not NULL. Returns KLCL_ERR_* for invalid arguments like
 * klcl_compute. Thread-safe. */
KLCL_API klcl_status klcl_reference_row(const klcl_loss_desc *desc, size_t vocab, const float *teacher,
                                        const float *student, int32_t label, double *loss, double *grad,
                                        double *teacher_entropy, double *student_entropy);

/* ---------------------------------------------------------------------------------------------------- */
/* Fused linear + loss (built with CLBlast)                                                               */
/* ---------------------------------------------------------------------------------------------------- */

/* For language-model distillation the logits are the largest tensor of a step (N tokens x V vocabulary).
 * klcl_compute_fused takes the hidden states and the output heads instead and never holds all N x V
 * logits: it walks the rows in chunks; per chunk a CLBlast GEMM makes the chunk's logits (chunk x V),
 * klcl's kernels compute the loss and write d loss / d logits over them in place, and further GEMMs fold
 * that into d loss / d hidden (per chunk) and d loss / d weight and d loss / d bias (accumulated). Device
 * memory for logits is chunk x V (twice that when the teacher is given as hidden states too), whatever N.
 * Half-precision tensors add their fp32 copies: V x D x 4 bytes for a half head (weight) or grad_weight,
 * chunk x D x 4 for half hidden states or grad_hidden, V x 4 for a half bias or grad_bias; host tensors
 * also take an upload buffer in their own type (V x D x 2 bytes for a half head). All of it is counted in
 * klcl_fused_info.device_bytes, and none of it grows with N.
 *
 * The math is the loss of `desc` (docs/LOSSES.md) on the logits z = hidden . weight^T + bias:
 *     z_s[i][v] = sum_d H_s[i][d] W_s[v][d] + b_s[v],   and likewise the teacher's, or given logits;
 *     dH_s = dZ . W_s,   dW_s = dZ^T . H_s,   db_s[v] = sum_i dZ[i][v],
 * with dZ the gradient klcl_compute gives for the reduction of desc. Products are CLBlast's fp32 GEMMs.
 * Results match one klcl_compute over the full logits up to the rounding of the GEMMs and of the order the
 * chunks are summed in.
 *
 * Element types: the hidden states, heads and biases of both layers, teacher_logits, grad_hidden,
 * grad_weight and grad_bias may each be fp32, fp16 or bf16 (klcl_tensor.dtype), independently. The
 * arithmetic is fp32 whatever the types: half-precision inputs are widened exactly to fp32 on the device
 * (hidden states chunk by chunk, a head or bias once per call, teacher_logits by the loss kernels as they
 * read them), the products are the same fp32 GEMMs, dW and db are summed in fp32 across the chunks (and,
 * with options->accumulate, start from the widened values of the caller's grad_weight and grad_bias), and
 * each half-precision gradient is rounded once, to nearest even, as it is written. Half inputs therefore
 * give what the same values in fp32 give, and a half gradient is that fp32 result rounded once: within
 * the fp32 accuracy plus half an ulp of its type. tests/test_fused.c holds it to exactly that, against a
 * double-precision reference on the widened inputs (docs/LOSSES.md, "Half-precision inputs and outputs").
 *
 * Availability: klcl_fused_supported() is 0 when the library was built without CLBlast
 * (-DKLCL_WITH_CLBLAST=OFF); every function of this section then returns KLCL_ERR_UNSUPPORTED. The fused
 * path needs an OpenCL device: on the CPU reference it returns KLCL_ERR_UNSUPPORTED too. */

/* A linear layer's input and weights: logits = hidden . weight^T + bias. Matrices are row-major, fp32,
 * fp16 or bf16 (each tensor its own dtype), with a row stride in elements (klcl_tensor.stride, 0 meaning
 * dense), host memory or cl_mem as for klcl_compute. */
typedef struct klcl_linear {
    size_t dim;         /* D >= 1: width of a hidden state (columns of hidden and of weight) */
    size_t vocab;       /* V >= 1: rows of weight (output features); the teacher's must equal the student's */
    klcl_tensor hidden; /* N x D hidden states */
    klcl_tensor weight; /* V x D head, the layout of torch.nn.Linear.weight */
    klcl_tensor bias;   /* optional, V */
} klcl_linear;

typedef struct klcl_fused_batch {
    size_t rows;                /* N >= 1 tokens */
    klcl_linear student;        /* required: hidden and weight (bias optional) */
    klcl_linear teacher;        /* the teacher as hidden states and head (its dim may differ from the
                                   student's), or else ... */
    klcl_tensor teacher_logits; /* ... as N x V logits (stride >= V). Exactly one of teacher.hidden and
                                   teacher_logits for every loss but ce, which may have neither */
    klcl_tensor labels;         /* optional N int32, required for ce and kd; ignore_index skips a row */
    klcl_tensor mask;           /* optional N uint8; 0 skips the row */
    klcl_tensor grad_hidden;    /* optional output, N x D_s: d(reduced loss)/d student.hidden */
    klcl_tensor grad_weight;    /* optional output, V x D_s: d(reduced loss)/d student.weight */
    klcl_tensor grad_bias;      /* optional output, V: d(reduced loss)/d student.bias (the column sums of
                                   the logits' gradient; allowed without a bias) */
    klcl_tensor row_loss;       /* optional output, N fp32: per-row loss after scale (skipped rows 0) */
} klcl_fused_batch;

#define KLCL_FUSED_BATCH_INIT {0}

typedef struct klcl_fused_options {
    /* Rows per chunk. 0 chooses from the device's memory: the logits buffers take at most a quarter of
     * the free global memory (where the driver reports it, else of the global memory), at most
     * CL_DEVICE_MAX_MEM_ALLOC_SIZE each and at most 256 MiB each, whole multiples of 64 rows when that
     * leaves at least 64; never more than N. Larger chunks make larger, faster GEMMs; memory grows
     * with chunk x V, not with N. */
    size_t chunk_rows;
    /* 1: add this call's gradients into grad_weight and grad_bias (gradient accumulation over
     * micro-batches) instead of overwriting them. grad_hidden is always overwritten. */
    int accumulate;
} klcl_fused_options;

#define KLCL_FUSED_OPTIONS_INIT {0, 0}

/* What a call did, for logs and benchmarks. */
typedef struct klcl_fused_info {
    size_t chunk_rows;   /* rows per chunk used (the last chunk may be shorter) */
    size_t chunks;       /* number of chunks */
    size_t device_bytes; /* device memory this call held at its peak, not counting the caller's cl_mem
                            tensors: logits chunks, uploads of host tensors, fp32 copies of half-precision
                            ones (V x D x 4 bytes for a half head), and the context's scratch */
} klcl_fused_info;

/* 1 when this library was built with CLBlast, so that klcl_compute_fused can work; 0 otherwise. */
KLCL_API int klcl_fused_supported(void);

/* Compiles CLBlast's GEMM kernels and klcl's loss kernels for the context's device now, by running one
 * small product of every shape klcl_compute_fused uses. CLBlast compiles its kernels on first use, and that
 * can take seconds (PoCL: about 7 s); call this at start-up so that the first training step does not
 * pay it. CLBlast keeps compiled programs per OpenCL context for the life of the process: later calls, and
 * later klcl contexts that share the OpenCL context, are quick.
 * Errors: KLCL_ERR_NULL_POINTER (ctx), KLCL_ERR_UNSUPPORTED (no CLBlast in this build, or the CPU
 * reference), OpenCL codes (the failing call named in klcl_last_error). Same threading rule as the
 * context: one thread at a time. */
KLCL_API klcl_status klcl_fused_warm(klcl_context *ctx);

/* Computes the loss described by `desc` on the logits of batch->student (and the teacher's) without
 * materialising all of them, and the gradients that are asked for (grad_hidden, grad_weight, grad_bias);
 * none asked for means the loss only. `options` may be NULL (defaults: automatic chunk, overwrite);
 * `result` and `info` may be NULL. `result` is what klcl_compute would report over the full logits: the
 * reduced loss (sum accumulated in double), rows used, skipped and non-finite, metrics. Reduction none
 * writes the per-row values to row_loss and gives the gradients of their sum. Blocks until every output is
 * written (for cl_mem outputs, until the device has finished). Outputs must not overlap inputs. Verify
 * mode (KLCL_VERIFY) does not apply to this call: result->verified is 0.
 *
 * Labels and mask are read on the host first (downloaded when they are cl_mem): the mean's denominator
 * counts the rows not skipped before any chunk runs. Host hidden states are uploaded chunk by chunk, host
 * weights once per call, each in its own type; fp32 cl_mem tensors are used in place, and half-precision
 * ones are read or written where they are by the conversions. Temporary device buffers are freed before
 * return; the context's scratch grows to one chunk's needs. Same threading rule as klcl_compute.
 *
 * Argument errors (status, and the message names the argument, e.g. "batch->teacher.vocab"):
 *   KLCL_ERR_NULL_POINTER       ctx, desc or batch NULL; student.hidden or student.weight missing; teacher
 *                                missing (neither teacher.hidden nor teacher_logits, loss not ce); one of
 *                                teacher.hidden and teacher.weight without the other; labels missing for
 *                                ce and kd
 *   KLCL_ERR_INVALID_SHAPE      rows, dim or vocab 0; vocab > 2^31 - 1; teacher.vocab differs from
 *                                student.vocab; a stride smaller than the row width; sizes that overflow
 *   KLCL_ERR_INVALID_VALUE      desc out of range (as klcl_compute); both host and mem set on a tensor;
 *                                both teacher.hidden and teacher_logits given; accumulate not 0 or 1; a
 *                                dtype that is not a klcl_dtype, or not 0 on labels, mask or row_loss
 *   KLCL_ERR_NONFINITE_ARG      a float parameter of desc is NaN or infinite
 *   KLCL_ERR_LABEL_OUT_OF_RANGE a label outside [0, vocab) not equal to ignore_index (names the row)
 *   KLCL_ERR_BUFFER_TOO_SMALL   a cl_mem cannot hold offset + extent
 *   KLCL_ERR_MISALIGNED         a cl_mem offset not a multiple of its element size (4 for fp32 and the
 *                                labels, 2 for fp16 and bf16, 1 for the mask)
 *   KLCL_ERR_UNSUPPORTED        built without CLBlast; the context is the CPU reference; CLBlast refused
 *                                a product with one of its own codes (the message gives it)
 * OpenCL failures (CL_MEM_OBJECT_ALLOCATION_FAILURE for a chunk that does not fit: set a smaller
 * options->chunk_rows) return OpenCL's code, the failing call named in klcl_last_error. */
KLCL_API klcl_status klcl_compute_fused(klcl_context *ctx, const klcl_loss_desc *desc,
                                        const klcl_fused_batch *batch, const klcl_fused_options *options,
                                        klcl_result *result, klcl_fused_info *info);

/* ---------------------------------------------------------------------------------------------------- */
/* Sparse (top-k) teacher                                                                                 */
/* ---------------------------------------------------------------------------------------------------- */

/* The teacher given per row as its top k tokens (int32 indices) and their fp32 log-probabilities, as
 * offline teacher jobs store it, against dense student logits [N x V]. The student is q = softmax(
 * softcap(s) / tau) over the full V, as in klcl_compute; the teacher's log-probabilities are used as they
 * are (softcap applies to the student only). Two policies decide what the teacher is outside its k tokens
 * (LOSSES.md, "Sparse teacher"):
 *
 *   KLCL_SPARSE_RENORM  p_i proportional to exp(lp_i / tau) over the k tokens, 0 on every other token; the
 *                       loss is the dense loss between that p (over V) and q. kl with k = 1 is cross-entropy
 *                       with the teacher's top token as label. rkl is +inf wherever q has mass outside the
 *                       k tokens (mass against probability 0; gradient NaN for that row): use the tail
 *                       policy for rkl.
 *   KLCL_SPARSE_TAIL    k + 1 categories, the k tokens and one bucket for every other token. Teacher:
 *                       p_i = exp(lp_i), p_tail = max(0, 1 - sum_i p_i), tempered at tau != 1 as if the
 *                       bucket were one token (p proportional to exp(log p / tau), normalised). Student:
 *                       q_i from the full softmax, q_tail = the sum of q over the tokens outside the k. The
 *                       loss is the dense loss over the k + 1 categories; the gradient reaches the tokens
 *                       outside the k through q_tail. With k = V the bucket holds no token and is left out.
 *
 * With k = V both policies are the dense loss on the teacher's log-probabilities. */
typedef enum klcl_sparse_policy {
    KLCL_SPARSE_RENORM = 0, /* renormalise the teacher over its k tokens */
    KLCL_SPARSE_TAIL = 1    /* keep the teacher's leftover mass in one bucket for the other tokens */
} klcl_sparse_policy;

#define KLCL_SPARSE_K_MAX 1024 /* the largest k a call accepts */

typedef struct klcl_sparse_teacher {
    size_t k;                  /* tokens per row, 1 <= k <= min(vocab, KLCL_SPARSE_K_MAX) */
    klcl_tensor indices;       /* N x k int32 token indices, row stride in elements (0 means k); each row's
                                  indices distinct and in [0, vocab), in any order */
    klcl_tensor logprobs;      /* N x k fp32 log-probabilities of those tokens, same layout rules */
    klcl_sparse_policy policy; /* default (0) renorm */
} klcl_sparse_teacher;

#define KLCL_SPARSE_TEACHER_INIT {0}

/* klcl_compute with a sparse teacher: batch->teacher must be unset, batch->vocab is the width of the
 * student rows, and the teacher is `sparse`. Supports the losses kl, rkl, soft_ce, jsd (beta 0 and 1 are
 * kl and rkl, as for klcl_compute) and tvd; any other loss gives KLCL_ERR_UNSUPPORTED. Labels, mask,
 * ignore_index, reductions, scale, softcap, tau, grad, row_loss, result and verify mode behave as in
 * klcl_compute, and the outputs are bit-identical across runs likewise. result->teacher_entropy is the
 * entropy of the policy's teacher distribution (over the k tokens, or the k tokens and the bucket);
 * top-1 agreement compares the teacher's top token (largest lp, ties to the lowest token index) with the
 * student's argmax over V. A teacher log-probability of NaN or +inf makes its row invalid (NaN), as does a
 * renorm teacher whose k log-probabilities are all -inf.
 *
 * The student logits and the gradient may be fp32, fp16 or bf16 (their dtype, as in klcl_compute); the
 * log-probabilities are fp32. Host inputs larger than the device are streamed in chunks of rows as in
 * klcl_compute (klcl_context_options.chunk_rows, KLCL_CHUNK_ROWS), with bit-identical results for every
 * chunk size. batch->teacher_vocab and batch->teacher_logprobs must
 * be 0 (the teacher's width is vocab, and its values are log-probabilities already).
 *
 * Rows skipped by mask or ignore_index are not read, so their indices may hold anything (padding).
 * Errors are those of klcl_compute, and:
 *   KLCL_ERR_NULL_POINTER   sparse is NULL; sparse->indices or sparse->logprobs missing
 *   KLCL_ERR_INVALID_SHAPE  k is 0, larger than vocab or than KLCL_SPARSE_K_MAX; a stride smaller than k
 *   KLCL_ERR_INVALID_VALUE  batch->teacher, teacher_vocab or teacher_logprobs is set; unknown policy; a used
 *                           row whose indices repeat or fall outside [0, vocab) (the message names the
 *                           first such row; for cl_mem indices
 *                           the device checks them and the call fails before any gradient is written)
 *   KLCL_ERR_UNSUPPORTED    a loss other than kl, rkl, soft_ce, jsd and tvd
 * Thread safety as klcl_compute (one context per thread). */
KLCL_API klcl_status klcl_compute_sparse(klcl_context *ctx, const klcl_loss_desc *desc, const klcl_batch *batch,
                                         const klcl_sparse_teacher *sparse, klcl_result *result);

/* The CPU reference for one sparse-teacher row, in double precision, independent of any context: the row
 * loss after scale and, when grad is not NULL, d(row loss)/d(student logits) after scale (denominator 1)
 * into grad[0..vocab). `indices` and `logprobs` hold the row's k entries. Sets *teacher_entropy and
 * *student_entropy when not NULL. Returns the argument errors of klcl_compute_sparse for this row
 * (KLCL_ERR_INVALID_VALUE for repeated or out-of-range indices). Thread-safe. */
KLCL_API klcl_status klcl_reference_sparse_row(const klcl_loss_desc *desc, klcl_sparse_policy policy, size_t vocab,
                                               const float *student, size_t k, const int32_t *indices,
                                               const float *logprobs, double *loss, double *grad,
                                               double *teacher_entropy, double *student_entropy);

/* ---------------------------------------------------------------------------------------------------- */
/* Tuning: the row kernels' work-group size, vector width and row split, per device                     */
/* ---------------------------------------------------------------------------------------------------- */

/* The row kernels run work-groups of one size (a row per work-group, or several short rows per
 * work-group, or a long row over several work-groups: klcl_context_row_strategy); the size is chosen when
 * a context builds its kernels, in this order (the first that applies):
 *   1. the environment variable KLCL_WORK_GROUP (1 to 4096);
 *   2. this device's entry in the tuning table (klcl_tune writes it);
 *   3. the built-in default: 1 on CPU devices, 256 elsewhere;
 * and then clamped to what the device and the built kernels allow (a power of two, at most
 * CL_DEVICE_MAX_WORK_GROUP_SIZE and the kernels' CL_KERNEL_WORK_GROUP_SIZE, within local memory).
 *
 * The tuning table is a text file: $KLCL_TUNE_FILE when set, else tuning.tsv in the folder of the binary
 * cache (klcl_context_prepare). Its rows are keyed by device name, vendor, driver version, platform
 * version and klcl version, so a new driver or library version falls back to the default until tuned
 * again. A table that is missing, unreadable, damaged or truncated is a miss (the default applies), never
 * an error. Three settings are tuned and chosen in the same order (the tuner's candidate, the environment,
 * the table, the built-in): the work-group size, the vector width (klcl_context_vector_width) and the
 * fewest columns per part when a row is split across work-groups (klcl_context_split_columns). When rows
 * are split and when they share a work-group otherwise follows a fixed rule (klcl_context_row_strategy).
 * The format names its columns so that more can be added. */

typedef enum klcl_work_group_source {
    KLCL_WORK_GROUP_DEFAULT = 0, /* the built-in default (also: the CPU reference, which has none) */
    KLCL_WORK_GROUP_TABLE = 1,   /* this device's entry in the tuning table */
    KLCL_WORK_GROUP_ENV = 2,     /* KLCL_WORK_GROUP */
    KLCL_WORK_GROUP_FORCED = 3   /* a candidate klcl_tune is timing (its own contexts only) */
} klcl_work_group_source;

/* "default", "table", "env", "forced"; NULL for an unknown value. */
KLCL_API const char *klcl_work_group_source_name(klcl_work_group_source source);

/* The work-group size the context's row kernels use, after clamping, and where the request came from.
 * Builds the kernels first when they are not built yet (as klcl_context_prepare does; a build failure is
 * returned). On the CPU reference: *size 0 and KLCL_WORK_GROUP_DEFAULT. `source` may be NULL. */
KLCL_API klcl_status klcl_context_work_group(klcl_context *ctx, size_t *size, klcl_work_group_source *source);

/* Floats per vector load of the context's row and gradient kernels (8 or 16): KLCL_VECTOR_WIDTH, else the
 * tuning table's vector_width, else 16 on a CPU device whose preferred float vector is 16 wide and 8
 * elsewhere. Builds the kernels first as klcl_context_work_group does; `source` as there. On the CPU
 * reference: *width 0. */
KLCL_API klcl_status klcl_context_vector_width(klcl_context *ctx, int *width, klcl_work_group_source *source);

/* The fewest columns per part when klcl_compute splits rows too few to fill the device across work-groups
 * (klcl_context_row_strategy; never fewer than 8 vectors per work-item either): KLCL_SPLIT_COLUMNS (a power
 * of two from 64 to 2^30), else the tuning table's split_columns, else 262144 on CPU devices and 4096
 * elsewhere. KLCL_ROW_SPLIT, which fixes the parts outright, takes precedence over it. Builds the kernels
 * first as klcl_context_work_group does; `source` as there. On the CPU reference: *columns 0. */
KLCL_API klcl_status klcl_context_split_columns(klcl_context *ctx, size_t *columns, klcl_work_group_source *source);

/* How klcl_compute reduces a batch of `rows` x `vocab` logits (teacher and student of that width) on this
 * context: `team` work-items reduce each row, a power of two dividing the work-group size (KLCL_WG / team
 * rows share a work-group; 1 on CPU devices), and each row is cut into `parts` column ranges reduced by
 * separate work-groups and then merged (1: rows are not split). Rows are split only when they are too few
 * to fill the device, into parts of klcl_context_split_columns columns or more, and teams are narrower
 * than the work-group only for short rows; the environment variables KLCL_ROW_SPLIT and KLCL_TEAM override
 * the choice (read when the kernels are built). The choice depends on the call's rows and vocab, the
 * device, the work-group size, the vector width and the split columns, never on how host inputs are
 * chunked. A split row sums in another order and may differ from an unsplit one in its last bits; the same
 * call on the same context always gives the same bits. Builds the kernels first when they are not built
 * yet (a build failure is returned). `team` and `parts` may be NULL; on the CPU reference both are 0.
 * KLCL_ERR_INVALID_SHAPE when rows or vocab is 0. */
KLCL_API klcl_status klcl_context_row_strategy(klcl_context *ctx, size_t rows, size_t vocab, size_t *team,
                                               size_t *parts);

/* The tuning table's path ($KLCL_TUNE_FILE, else tuning.tsv in the cache folder) into out[cap].
 * KLCL_ERR_UNSUPPORTED when no folder can be named (none of KLCL_CACHE_DIR, XDG_CACHE_HOME, HOME is set),
 * KLCL_ERR_INVALID_VALUE when cap is too small. Thread-safe. */
KLCL_API klcl_status klcl_tune_table_path(char *out, size_t cap);

/* This context's device entry in the table: *work_group is the stored size, or 0 when the table has no
 * usable entry for it (any failure to read is a miss). KLCL_ERR_UNSUPPORTED on the CPU reference. */
KLCL_API klcl_status klcl_tune_table_get(klcl_context *ctx, size_t *work_group);

/* Stores `work_group` (a power of two from 1 to 4096) as this context's device entry, replacing an older
 * one and keeping the other devices' rows. The file is written to a temporary name and renamed, so a
 * reader sees the old table or the new one; a damaged old table is replaced. Two writers at once may
 * lose one of their rows, never damage the file. Contexts created afterwards use the entry; this one
 * keeps its size. Errors name the file (klcl_last_error). */
KLCL_API klcl_status klcl_tune_table_set(klcl_context *ctx, size_t work_group);

/* What klcl_tune measures. Initialise with KLCL_TUNE_OPTIONS_INIT; zero fields take the defaults. */
typedef struct klcl_tune_options {
    const size_t *vocabs;   /* vocabularies to time (each gives the cases kl and kl+grad); NULL: 32768 and
                               131072. At most KLCL_TUNE_MAX_CASES / 2 */
    size_t vocab_count;
    size_t rows;            /* rows per call; 0: as many as fit in max_tensor_bytes */
    size_t max_tensor_bytes; /* 0: 32 MiB per logits tensor */
    double sample_seconds;  /* one timed sample repeats the call until about this long (at the default
                               size); 0: 0.1 */
    int reps;               /* timed samples per candidate and case, the median kept; 0: 5; at most 101 */
    size_t max_work_group;  /* largest candidate; 0: what the device and the kernels allow */
    int dry_run;            /* 1: measure and report, leave the table alone */
    const size_t *sizes;    /* only these candidates (powers of two, at most max_work_group); NULL: every
                               power of two up to the limit. `klcl tune` passes the sizes that passed the
                               check in a child process */
    size_t size_count;
    const size_t *split_vocabs; /* vocabularies of the split phase, one row each (the rows a split is for);
                                   NULL: 65536, 262144 and 1048576. At most KLCL_TUNE_MAX_CASES / 2 */
    size_t split_vocab_count;
    int vector_width;       /* the width the work-group sizes are checked and timed at (8 or 16); 0: what a
                               context on the device would use (KLCL_VECTOR_WIDTH, the table, the default) */
    int check_only;         /* 1: build and check the sizes at that width, reporting those that pass in
                               candidates[] and the others in rejected[]; time nothing, store nothing */
    /* Called before a (work-group size, vector width) pair is first built and run in this process; 0
     * rejects the pair untried (reported as rejected), anything else lets the check go on. NULL: every
     * pair is tried. `klcl tune` answers by checking the pair in a fresh process (check_only), so that a
     * pair that crashes the driver is rejected instead of ending the run. */
    int (*precheck)(void *user, size_t work_group, int vector_width);
    void *precheck_user;
    /* Called with one line saying what comes next (a check, the timing of a case); NULL: silent. */
    void (*progress)(void *user, const char *what);
    void *progress_user;
} klcl_tune_options;

#define KLCL_TUNE_OPTIONS_INIT {NULL, 0, 0, 0, 0.0, 0, 0, 0, NULL, 0, NULL, 0, 0, 0, NULL, NULL, NULL, NULL}
#define KLCL_TUNE_MAX_CANDIDATES 13 /* 1, 2, 4, ..., 4096 */
#define KLCL_TUNE_MAX_CASES 8
#define KLCL_TUNE_MAX_SPLITS 8 /* split columns timed: the built-in / 16, / 8, / 4, / 2, x 1, x 2, x 4 */

typedef struct klcl_tune_case {
    char op[16];           /* "kl" (forward) or "kl+grad" */
    size_t rows, vocab;
    size_t calls;          /* calls per timed sample */
    double seconds[KLCL_TUNE_MAX_CANDIDATES]; /* median seconds per call, per candidate */
    int samples[KLCL_TUNE_MAX_CANDIDATES];    /* samples taken: 1 for a candidate dropped after the first
                                                 for being over 3x slower than the best, else reps */
} klcl_tune_case;

typedef struct klcl_tune_report {
    char device[256];
    size_t candidate_count;
    size_t candidates[KLCL_TUNE_MAX_CANDIDATES]; /* the work-group sizes timed, ascending */
    size_t rejected_count;
    size_t rejected[KLCL_TUNE_MAX_CANDIDATES];   /* sizes not timed: some loss failed or differed from the
                                                    CPU reference beyond LOSSES.md's tolerances */
    double score[KLCL_TUNE_MAX_CANDIDATES];      /* geometric mean over the cases of seconds per call */
    size_t case_count;
    klcl_tune_case cases[KLCL_TUNE_MAX_CASES];
    int work_group_vector_width; /* the vector width the sizes were checked and timed at */
    size_t best_work_group;    /* the candidate with the lowest score */
    size_t default_work_group; /* what the built-in default gives on this device (after clamping) */
    double best_score, default_score;
    /* Then vector widths (floats per load of the row and gradient kernels) at best_work_group, on the same
     * cases: the widths timed, their scores, the widths rejected by the check, the fastest, the default. */
    size_t vector_width_count;
    int vector_widths[2];
    double vector_width_score[2];
    size_t rejected_vector_width_count;
    int rejected_vector_widths[2];
    int best_vector_width, default_vector_width;
    /* Then the split columns (the fewest columns per part of a split row) at best_work_group and
     * best_vector_width, on one row at each of tune->split_vocabs: the candidates timed, ascending, their
     * scores, those rejected by the check, the one stored and the built-in. best_split_columns is the
     * built-in unless the fastest candidate's score is at least 3% lower than the built-in's: candidates
     * that split the cases' rows alike time alike, and noise must not choose among them. */
    size_t split_count;
    size_t split_columns[KLCL_TUNE_MAX_SPLITS];
    double split_score[KLCL_TUNE_MAX_SPLITS];
    size_t best_split_columns, default_split_columns;
    size_t split_case_count;
    klcl_tune_case split_cases[KLCL_TUNE_MAX_CASES]; /* seconds[c] and samples[c] per split candidate c */
    char table_path[1024];
    int written;               /* 1 when the winners were stored in the table */
    char error[512];           /* on failure: what went wrong, naming the option or the OpenCL call */
} klcl_tune_report;

/* Checks every power-of-two work-group size from 1 to the device's limit (or tune->max_work_group, or the
 * listed tune->sizes) on all losses with gradient against the CPU reference on a small batch: a size that
 * fails or differs is rejected, never stored. A size that crashes the driver ends the process before
 * anything is stored, unless tune->precheck rejects it first: `klcl tune` checks each size in a process of
 * its own (check_only), several at once, and the other vector width at the fastest size the same way,
 * before this process builds it. Then it times the
 * rest on the row kernels, for kl forward and kl with gradient at each vocabulary, picks the size with the
 * lowest geometric mean of the median times, checks and times vector widths 8 and 16 at that size the
 * same way, then split columns from 1/16 to 4 times the built-in at that size and width on one row at each
 * of tune->split_vocabs (keeping the built-in unless another is at least 3% faster), and stores the three
 * winners in the tuning table (unless dry_run). The check also splits each row of its batch into parts, so
 * that the split kernels are checked at every candidate.
 * `ctx_opts` picks the device as klcl_context_create does (NULL: the default); an adopted queue is used
 * for the timing. Candidates are interleaved sample by sample, so a machine that slows down mid-run
 * slows all of them. Takes seconds to minutes (about candidates x cases x (reps + 1) x sample_seconds,
 * plus one kernel build per candidate). `tune` may be NULL (defaults). `out` is required and receives
 * every measurement; on failure out->error says why. KLCL_ERR_UNSUPPORTED on the CPU reference;
 * KLCL_ERR_INVALID_VALUE for an option out of range (named in out->error). Thread-safe: it creates and
 * destroys contexts of its own. */
KLCL_API klcl_status klcl_tune(const klcl_context_options *ctx_opts, const klcl_tune_options *tune,
                               klcl_tune_report *out);

/* ---------------------------------------------------------------------------------------------------- */
/* End of the tuning section                                                                              */
/* ---------------------------------------------------------------------------------------------------- */

#ifdef __cplusplus
}
#endif

#endif /* KLCL_H */
