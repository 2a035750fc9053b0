/* Internal interfaces between the layers of host/: device, program, buffers, compute, reference. */
#ifndef KLCL_INTERNAL_H
#define KLCL_INTERNAL_H

#include "klcl.h"

#include <stdarg.h>
#include <stddef.h>

/* Per-row statistics written by the row kernels; mirrors RS_* and RF_* in kernels_cl/common.cl. The host
 * passes KLCL_HOST_LAYOUT to every build and common.cl refuses to compile when the two disagree. */
enum { RS_H_T = 7, RS_H_S = 8, RS_COUNT = 9 };
enum { RF_FLAGS = 0, RF_COUNT = 4 };
/* Words of one part's record in a split row's scratch: its pass-1 state (STATE_WORDS in
 * kernels_cl/losses.cl), then its pass-2 pair. */
enum { PART_STATE_WORDS = 16, PART_WORDS = PART_STATE_WORDS + 2 };
/* The longest KLCL_BUILD_OPTIONS: options a caller adds to every kernel build (program.c). */
enum { KLCL_BUILD_EXTRA_MAX = 255 };
#define KLCL_HOST_LAYOUT (RS_COUNT * 1000 + RS_H_T * 100 + RS_H_S * 10 + RF_COUNT)
enum {
    FLAG_SKIPPED = 1,
    FLAG_INVALID = 2,
    FLAG_BAD_LABEL = 4,
    FLAG_AGREE = 8,
    FLAG_CORRECT = 16,
    FLAG_TEACHER_OK = 32,
    FLAG_NO_GRADIENT = 64
};

/* Host-side widening of row `row` of a host matrix tensor of any klcl_dtype to fp32 (dtype.c). */
void klcl_widen_row(const klcl_tensor *t, size_t row, size_t stride, size_t cols, float *out);

/* Elements between row starts of a matrix tensor: its stride, or vocab when the stride is 0. */
static inline size_t klcl_row_stride(const klcl_tensor *t, size_t vocab)
{
    return t->stride ? t->stride : vocab;
}

/* Kernel arguments set in order; the first failure sticks and is reported once (compute.c, sparse.c). */
typedef struct arg_setter {
    cl_kernel k;
    cl_uint index;
    cl_int err;
} arg_setter;

static inline void arg(arg_setter *a, size_t size, const void *value)
{
    if (a->err == CL_SUCCESS) a->err = clSetKernelArg(a->k, a->index, size, value);
    a->index++;
}

/* A device buffer the context owns and grows on demand. */
typedef struct klcl_scratch {
    cl_mem mem;
    size_t bytes;
} klcl_scratch;

/* Host logits and gradients stream through two slots of chunk buffers (SCRATCH_TEACHER + slot, ...). */
enum { SCRATCH_TEACHER, SCRATCH_TEACHER_2, SCRATCH_STUDENT, SCRATCH_STUDENT_2, SCRATCH_GRAD, SCRATCH_GRAD_2,
       SCRATCH_LABELS, SCRATCH_MASK, SCRATCH_ROW_LOSS, SCRATCH_ROW_STATS, SCRATCH_ROW_FLAGS, SCRATCH_DUMMY,
       SCRATCH_DENOM, SCRATCH_PARTS, /* 1/denominator of asynchronous calls; the parts of split rows */
       SCRATCH_SPARSE_INDICES, SCRATCH_SPARSE_LOGPROBS, /* uploads for klcl_compute_sparse */
       SCRATCH_COUNT };

/* The kernels of one element-type combination (teacher, student, gradient), index klcl_variant_index. */
/* Kernel groups, one program each, built on first use: one per loss (its row and gradient kernels), and
 * the shared group (reduction, sparse and conversion kernels). kernels_cl/common.cl mirrors the number. */
enum { KLCL_GROUP_SHARED = KLCL_LOSS_COUNT, KLCL_GROUP_COUNT };
_Static_assert(KLCL_GROUP_SHARED == 9, "KLCL_GROUP_SHARED differs from kernels_cl/common.cl");

typedef struct klcl_program {
    cl_program program[KLCL_GROUP_COUNT];
    cl_kernel rows_kernel[KLCL_LOSS_COUNT];
    cl_kernel part_kernel[KLCL_LOSS_COUNT];  /* a split row: pass 1 or 2 over each part, */
    cl_kernel merge_kernel[KLCL_LOSS_COUNT]; /* then the parts merged into the row's outputs */
    cl_kernel grad_kernel[KLCL_LOSS_COUNT];
    cl_kernel reduce_kernel; /* the device-side reduction of asynchronous calls */
    /* fp16/bf16 <-> fp32 blocks of rows for the fused path (fused.c, kernels_cl/convert.cl) */
    cl_kernel widen_kernel, narrow_kernel;
    /* Sparse teacher (sparse.c, kernels_cl/sparse.cl): row kernel, dense and top-k gradient kernels. */
    cl_kernel sparse_rows_kernel, sparse_grad_dense_kernel, sparse_grad_topk_kernel;
    unsigned built;                        /* bit g: group g is built */
    klcl_status status[KLCL_GROUP_COUNT]; /* a failed build is kept, with its message */
    char error[KLCL_GROUP_COUNT][256];
} klcl_program;

enum { KLCL_VARIANT_COUNT = KLCL_DTYPE_COUNT * KLCL_DTYPE_COUNT * KLCL_DTYPE_COUNT };
static inline int klcl_variant_index(klcl_dtype t, klcl_dtype s, klcl_dtype g)
{
    return ((int)t * KLCL_DTYPE_COUNT + (int)s) * KLCL_DTYPE_COUNT + (int)g;
}

/* The latest asynchronous call: its per-row results land in these host arrays (klcl_async_result). */
typedef struct klcl_async_state {
    int pending;
    cl_event done;
    size_t rows, label_limit;
    klcl_reduction reduction;
    int32_t ignore_index;
    int has_labels;
    float *row_loss, *stats;
    cl_int *flags;
    size_t cap_loss, cap_stats, cap_flags;
} klcl_async_state;

struct klcl_context {
    int is_reference;
    int verify;
    char device_name[256];

    cl_platform_id platform;
    cl_device_id device;
    cl_context cl_ctx;
    cl_command_queue queue;
    cl_command_queue copy_queue; /* transfers of chunked calls, beside `queue`; made on first need */
    size_t chunk_rows;           /* rows per chunk of host logits; 0: sized from the device's memory */

    /* Program state: the fp32 program is built once per context on first use, and chooses the work-group
     * size; the other element-type combinations are built with the same size when a call needs them. */
    klcl_status build_status; /* KLCL_OK until the fp32 build fails; the failure and its message are kept */
    char build_error[1024];
    int built;
    int from_cache; /* the fp32 program came from the binary cache */
    size_t wg; /* work-group size of the row kernels */
    int fuse_grad; /* synchronous calls: the row kernels write the gradient too (program.c) */
    int keep_exps; /* with fuse_grad, the row kernel keeps exponentials in the gradient's row */
    int prefetch;  /* the row loops load the next vectors first (GPUs; program.c) */
    char build_extra[KLCL_BUILD_EXTRA_MAX + 1]; /* KLCL_BUILD_OPTIONS, read when the kernels build (program.c) */
    int vw;        /* floats per vector load of the row and gradient kernels: 8 or 16 (program.c) */
    int vw_forced, vw_default;          /* klcl_tune's candidate (set before the build); the built-in */
    klcl_work_group_source vw_source;   /* where vw came from */
    int is_cpu;                   /* CL_DEVICE_TYPE_CPU: the row strategy's targets (klcl_row_strategy) */
    size_t compute_units;
    size_t team_env, split_env;   /* KLCL_TEAM and KLCL_ROW_SPLIT; 0: the automatic choice */
    size_t split_columns;         /* the fewest columns per part of an automatic split (program.c) */
    size_t split_forced, split_default; /* klcl_tune's candidate (set before the build); the built-in */
    klcl_work_group_source split_source; /* where split_columns came from */
    klcl_program variants[KLCL_VARIANT_COUNT];
    size_t wg_forced; /* non-zero: klcl_tune's candidate, set before the build (tune.c) */
    size_t wg_default; /* the built-in default the last build started from */
    klcl_work_group_source wg_source; /* where the request for wg came from */

    klcl_scratch scratch[SCRATCH_COUNT];
    klcl_async_state async;

    char *build_log;
    char error[1024];
};

/* Records a failure on ctx (which may be NULL) and returns status: printf-style message. */
klcl_status klcl_fail(klcl_context *ctx, klcl_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Records an OpenCL failure of `call` and returns its code. */
klcl_status klcl_fail_cl(klcl_context *ctx, cl_int err, const char *call);

/* Descriptor checks shared by klcl_compute and klcl_reference_row (message on ctx when not NULL). */
klcl_status klcl_check_desc(const klcl_loss_desc *desc, klcl_context *ctx);
int klcl_loss_needs_labels(klcl_loss loss);
/* The loss the kernels compute: jsd at beta 0 is kl and at beta 1 is rkl (LOSSES.md, TRL convention). */
klcl_loss klcl_effective_loss(const klcl_loss_desc *desc);

/* Device layer (device.c). */
klcl_status klcl_select_device(klcl_context *ctx, const char *spec);
/* A string property of a device, truncated to cap; "" when the query fails. */
void klcl_device_string(cl_device_id dev, cl_device_info what, char *out, size_t cap);
void klcl_platform_string(cl_platform_id p, cl_platform_info what, char *out, size_t cap);

/* Binary cache (cache.c): a built program for (source, options, device), or NULL on any miss; storing
 * never fails visibly. */
cl_program klcl_cache_load(klcl_context *ctx, const char *src, const char *options);
void klcl_cache_store(klcl_context *ctx, const char *src, const char *options, cl_program program);

/* Folder of the binary cache and the tuning table: $KLCL_CACHE_DIR, else $XDG_CACHE_HOME/klcl, else
 * $HOME/.cache/klcl; created (mkdir -p) when `create` is set. 0 when it has no home or cannot be made. */
int klcl_cache_dir(char *out, size_t cap, int create);

/* Tuning (tune.c). The work-group size a build starts from, before clamping: ctx->wg_forced, else
 * KLCL_WORK_GROUP, else this device's tuning-table entry, else `builtin`; records the source and the
 * default on ctx. */
size_t klcl_work_group_request(klcl_context *ctx, size_t builtin);
/* The vector width a build uses: ctx->vw_forced, else KLCL_VECTOR_WIDTH, else the table, else `builtin`. */
int klcl_vector_width_request(klcl_context *ctx, int builtin);
/* The vector width a build of ctx would use, without building (program.c): the request above with the
 * device's built-in (16 on a CPU device whose preferred float vector is 16 wide, else 8). */
int klcl_vector_width_choice(klcl_context *ctx);
/* The fewest columns per part of an automatic row split: ctx->split_forced, else KLCL_SPLIT_COLUMNS, else
 * the table's split_columns, else `builtin`. */
size_t klcl_split_columns_request(klcl_context *ctx, size_t builtin);
enum { KLCL_WORK_GROUP_LIMIT = 4096 }; /* the largest size the table and KLCL_WORK_GROUP accept */
/* The split columns KLCL_SPLIT_COLUMNS, the table and the tuner's candidates keep to (powers of two). */
enum { KLCL_SPLIT_COLUMNS_MIN = 64, KLCL_SPLIT_COLUMNS_MAX = 1 << 30 };
/* Sets this device's row of the tuning table: the n named columns (work_group and any others), written
 * atomically; other rows and columns are kept. Errors name the file (on ctx). */
klcl_status klcl_tune_table_store(klcl_context *ctx, const char *const *names, const char *const *values, size_t n);

/* Program layer (program.c): chooses the work-group size once per context, building the fp32 kl group to
 * clamp it to what the kernels allow. */
klcl_status klcl_program_build(klcl_context *ctx);
/* Kernel group `group` (a klcl_loss, or KLCL_GROUP_SHARED) for an element-type combination, built on
 * first use; *out holds every group built so far for that combination. */
klcl_status klcl_program_group(klcl_context *ctx, klcl_dtype t, klcl_dtype s, klcl_dtype g, int group,
                               const klcl_program **out);
/* Every fp32 group (klcl_context_prepare). */
klcl_status klcl_program_build_all(klcl_context *ctx);
void klcl_program_release(klcl_context *ctx);

/* How the row kernels reduce a call's rows (program.c, after klcl_program_build): `team` work-items per row
 * (a power of two dividing ctx->wg) and `parts` column ranges per row, each reduced by its own work-group
 * and merged afterwards (1: not split). A function of the call's rows, its loss columns `width` and whole
 * vectors `vectors`, the device and the settings only, never of a chunk of rows: every chunk of a call
 * reduces its rows alike. */
typedef struct klcl_strategy {
    size_t team, parts;
} klcl_strategy;
klcl_strategy klcl_row_strategy(const klcl_context *ctx, size_t rows, size_t width, size_t vectors);

/* Buffer layer (buffers.c). */
klcl_status klcl_scratch_reserve(klcl_context *ctx, int which, size_t bytes);
void klcl_scratch_release(klcl_context *ctx);

/* Running totals of a call, shared by both backends so that they reduce alike (compute.c). */
typedef struct klcl_tally {
    double sum, teacher_entropy, student_entropy;
    size_t used, skipped, nonfinite, with_teacher, finite, agree, with_label, correct;
    size_t first_nonfinite[8];
} klcl_tally;

/* One row: `loss` after scale; the metrics only count for finite used rows. */
void klcl_tally_row(klcl_tally *t, size_t row, int skipped, double loss, int teacher_ok, double h_t, double h_s,
                    int agree, int has_label, int correct);
void klcl_tally_finish(const klcl_tally *t, klcl_reduction reduction, size_t rows, klcl_result *out);

/* Validates a batch against desc for either backend (message on ctx). */
klcl_status klcl_check_batch(klcl_context *ctx, const klcl_loss_desc *desc, const klcl_batch *b);

/* The reference's conventions, shared by the dense and sparse references (reference.c):
 * klcl_xlogratio = exp(lw) (log_num - log_den) with 0 log 0 = 0 and +inf for a weight against probability
 * 0, judged on logs; klcl_log_mix = log(wa e^la + (1 - wa) e^lb) by logsumexp. klcl_difference (verify
 * mode, reference_batch.c) = |a - b| with NaN against NaN and equal infinities counting as agreement. */
double klcl_xlogratio(double lw, double log_num, double log_den);
double klcl_log_mix(double la, double lb, double wa);
double klcl_difference(double a, double b);
/* Half an ulp of a gradient entry `ref` stored as `dtype` (0 for fp32): what a half-precision gradient may
 * differ by on top of LOSSES.md's tolerance; stored_to_ref converts stored units to ref's. */
double klcl_rounding_allowance(klcl_dtype dtype, double ref, double stored_to_ref);

/* klcl_reference_row, and teacher rows that may be log-probabilities (klcl_batch.teacher_logprobs). */
klcl_status klcl_reference_row_ex(const klcl_loss_desc *desc, size_t vocab, const float *teacher,
                                  const float *student, int32_t label, int teacher_logprobs, double *loss,
                                  double *grad, double *teacher_entropy, double *student_entropy);

/* The widths of a call (LOSSES.md "Vocabulary mismatch"): the loss's columns `width`, and how many of
 * them each row really has; columns past those read as -inf. */
typedef struct klcl_widths {
    size_t width, t_cols, s_cols;
} klcl_widths;
klcl_widths klcl_batch_widths(const klcl_loss_desc *desc, const klcl_batch *b);

/* Reference backend over a whole batch of host tensors (reference_batch.c). */
klcl_status klcl_reference_compute(klcl_context *ctx, const klcl_loss_desc *desc, const klcl_batch *batch,
                                   klcl_result *result);

/* Rows the reduction counts (not skipped by mask or ignore_index), known before the rows are reduced: the
 * gradient's `mean` denominator for calls that write gradients chunk by chunk. cl_mem labels and mask are
 * read back, and the labels checked against b (compute.c). */
klcl_status klcl_count_used(klcl_context *ctx, const klcl_loss_desc *desc, const klcl_batch *b, size_t *used);

/* Reductions shared by both backends: the denominator of the gradient and the reduced value. */
double klcl_denominator(klcl_reduction reduction, size_t rows, size_t rows_used);

/* Verify mode: compares a finished device call with the reference on the same inputs and fills
 * result->verify_* (reference_batch.c). teacher, student and grad are host views of the batch's tensors
 * (host copies of cl_mem ones: same dtype and stride, offset 0). */
klcl_status klcl_verify(klcl_context *ctx, const klcl_loss_desc *desc, const klcl_batch *b,
                        const klcl_tensor *teacher, const klcl_tensor *student, const int32_t *labels,
                        const uint8_t *mask, const float *row_loss, const klcl_tensor *grad, klcl_result *result);

/* Sparse teacher (sparse.c, reference_sparse.c). */
/* Creates the sparse kernels from the built program and lowers *kernel_limit to their work-group limit;
 * releases them (NULL-safe). Called by the program layer. */
klcl_status klcl_sparse_kernels_create(klcl_context *ctx, klcl_program *v, size_t *kernel_limit);
void klcl_sparse_kernels_release(klcl_program *v);
int klcl_sparse_loss_supported(klcl_loss loss);
/* Checks one row's k indices against [0, vocab) and for repeats, using work[0..k) as scratch. Returns 0
 * when valid, 1 for an index out of range, 2 for a repeat; *bad is the offending index. */
int klcl_sparse_check_row(const int32_t *indices, size_t k, size_t vocab, int32_t *work, int32_t *bad);
/* Reference backend over a batch of host tensors, and verify mode for the sparse path. */
klcl_status klcl_reference_sparse_compute(klcl_context *ctx, const klcl_loss_desc *desc, const klcl_batch *b,
                                          const klcl_sparse_teacher *sp, klcl_result *result);
klcl_status klcl_sparse_verify(klcl_context *ctx, const klcl_loss_desc *desc, const klcl_batch *b,
                               const klcl_sparse_teacher *sp, const float *student, const int32_t *labels,
                               const uint8_t *mask, const int32_t *indices, const float *logprobs,
                               const float *row_loss, const float *grad, size_t grad_stride, klcl_result *result);

#endif
