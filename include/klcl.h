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
 * Threads: a klcl_context is used by one thread at a time (like a zstd context: one context per thread).
 * Distinct contexts may be used from distinct threads at once, also on the same device. Functions that take
 * no context (klcl_list_devices, klcl_status_string, the version functions, klcl_reference_row) are safe
 * to call from any thread.
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
} klcl_context_options;

#define KLCL_CONTEXT_OPTIONS_INIT {NULL, NULL, NULL, 0}

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
 * $KLCL_CACHE_DIR, else $XDG_CACHE_HOME/klcl, else $HOME/.cache/klcl. On by default for GPUs and
 * accelerators; off for CPU devices, which cache their own per-kernel builds, unless KLCL_CACHE=on;
 * KLCL_CACHE=off turns it off everywhere. */
KLCL_API klcl_status klcl_context_prepare(klcl_context *ctx);

/* 1 when the context's program came from the binary cache (after klcl_context_prepare or a compute). */
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
} klcl_loss_desc;

/* Fills *desc with LOSSES.md's defaults for `loss`. Returns KLCL_ERR_NULL_POINTER or
 * KLCL_ERR_INVALID_VALUE for an unknown loss. */
KLCL_API klcl_status klcl_loss_desc_init(klcl_loss_desc *desc, klcl_loss loss);

/* A matrix or vector the call reads or writes: host memory, or a caller-owned cl_mem of the context's
 * OpenCL context (no copies). Exactly one of `host` and `mem` is set for a tensor in use; both NULL means
 * "not given". Element types are fixed per role: logits and gradient fp32, labels int32, mask uint8,
 * row_loss fp32. */
typedef struct klcl_tensor {
    void *host;    /* host pointer (read for inputs, written for outputs) */
    cl_mem mem;    /* or a device buffer */
    size_t offset; /* bytes from the start of `mem` (multiple of the element size); ignored for host */
    size_t stride; /* matrices: elements between the starts of consecutive rows, >= vocab; 0 means vocab.
                      Ignored for the per-row vectors (labels, mask, row_loss), which are contiguous. */
} klcl_tensor;

/* Helpers that fill a klcl_tensor (stride 0 means contiguous rows). */
KLCL_API klcl_tensor klcl_host_tensor(const void *host, size_t stride);
KLCL_API klcl_tensor klcl_mem_tensor(cl_mem mem, size_t offset_bytes, size_t stride);

typedef struct klcl_batch {
    size_t rows;         /* N >= 1 */
    size_t vocab;        /* V >= 1, the width of both teacher and student rows */
    klcl_tensor teacher; /* N x V fp32 logits; optional for ce (then only its teacher metrics are NaN) */
    klcl_tensor student; /* N x V fp32 logits */
    klcl_tensor labels;  /* optional N int32; required for ce and kd. With any loss, a row whose label is
                            ignore_index is skipped, and the labels feed result.accuracy */
    klcl_tensor mask;    /* optional N uint8; 0 skips the row */
    klcl_tensor grad;    /* optional output, N x V fp32: d(reduced loss)/d(student logits); for reduction
                            none, each row holds the gradient of its own loss. Skipped rows get zeros,
                            columns past vocab in a strided row are left untouched */
    klcl_tensor row_loss; /* optional output, N fp32: per-row loss after scale (skipped rows 0) */
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

/* The CPU reference for one row, in double precision, independent of any context: the per-row loss after
 * scale (skipping is the caller's business) and, when grad is not NULL, d(row loss)/d(student logits)
 * (after scale, denominator 1) into grad[0..vocab). `label` is used by ce and kd (and ignored otherwise).
 * Sets *teacher_entropy / *student_entropy when not NULL. Returns KLCL_ERR_* for invalid arguments like
 * klcl_compute. Thread-safe. */
KLCL_API klcl_status klcl_reference_row(const klcl_loss_desc *desc, size_t vocab, const float *teacher,
                                        const float *student, int32_t label, double *loss, double *grad,
                                        double *teacher_entropy, double *student_entropy);

/* ---------------------------------------------------------------------------------------------------- */
/* Tuning: the work-group size of the row kernels, per device                                             */
/* ---------------------------------------------------------------------------------------------------- */

/* The row kernels run one work-group per row; its size is chosen when a context builds its kernels, in
 * this order (the first that applies):
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
 * an error. Only the work-group size is tuned: the kernels read 8-wide vectors (fixed), and there is no
 * other parameter yet; the format names its columns so that more can be added. */

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
} klcl_tune_options;

#define KLCL_TUNE_OPTIONS_INIT {NULL, 0, 0, 0, 0.0, 0, 0, 0, NULL, 0}
#define KLCL_TUNE_MAX_CANDIDATES 13 /* 1, 2, 4, ..., 4096 */
#define KLCL_TUNE_MAX_CASES 8

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
    size_t best_work_group;    /* the candidate with the lowest score */
    size_t default_work_group; /* what the built-in default gives on this device (after clamping) */
    double best_score, default_score;
    char table_path[1024];
    int written;               /* 1 when the winner was stored in the table */
    char error[512];           /* on failure: what went wrong, naming the option or the OpenCL call */
} klcl_tune_report;

/* Checks every power-of-two work-group size from 1 to the device's limit (or tune->max_work_group, or the
 * listed tune->sizes) on all losses with gradient against the CPU reference on a small batch: a size that
 * fails or differs is rejected, never stored. A size that crashes the driver ends the process before
 * anything is stored: `klcl tune` therefore checks each size in a child process first. Then it times the
 * rest on the row kernels, for kl forward and kl with gradient at each vocabulary, picks the size with the
 * lowest geometric mean of the median times, and stores it in the tuning table (unless dry_run).
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
