/* Statuses, names, versions, loss descriptors: the vocabulary of the API. */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

unsigned klcl_version_number(void)
{
    return KLCL_VERSION_NUMBER;
}

#define KLCL_STR2(x) #x
#define KLCL_STR(x) KLCL_STR2(x)

const char *klcl_version_string(void)
{
    return KLCL_STR(KLCL_VERSION_MAJOR) "." KLCL_STR(KLCL_VERSION_MINOR) "." KLCL_STR(KLCL_VERSION_PATCH);
}

const char *klcl_status_string(int status)
{
    switch (status) {
    case KLCL_OK: return "KLCL_OK: success";
    case KLCL_ERR_NULL_POINTER: return "KLCL_ERR_NULL_POINTER: a required pointer is NULL";
    case KLCL_ERR_INVALID_SHAPE: return "KLCL_ERR_INVALID_SHAPE: invalid rows, vocab or stride";
    case KLCL_ERR_INVALID_VALUE: return "KLCL_ERR_INVALID_VALUE: a parameter is out of its range";
    case KLCL_ERR_LABEL_OUT_OF_RANGE: return "KLCL_ERR_LABEL_OUT_OF_RANGE: a label is outside [0, vocab)";
    case KLCL_ERR_BUFFER_TOO_SMALL: return "KLCL_ERR_BUFFER_TOO_SMALL: a cl_mem is smaller than the shape needs";
    case KLCL_ERR_MISALIGNED: return "KLCL_ERR_MISALIGNED: a cl_mem offset is not a multiple of the element size";
    case KLCL_ERR_NO_DEVICE: return "KLCL_ERR_NO_DEVICE: no OpenCL device matches";
    case KLCL_ERR_OUT_OF_HOST_MEMORY: return "KLCL_ERR_OUT_OF_HOST_MEMORY: host allocation failed";
    case KLCL_ERR_KERNEL_SOURCE: return "KLCL_ERR_KERNEL_SOURCE: a kernel source file could not be read";
    case KLCL_ERR_UNSUPPORTED: return "KLCL_ERR_UNSUPPORTED: not supported by this backend or build";
    case KLCL_ERR_NONFINITE_ARG: return "KLCL_ERR_NONFINITE_ARG: a parameter is NaN or infinite";
    /* OpenCL's own codes, those a caller of klcl can meet. */
    case CL_DEVICE_NOT_FOUND: return "CL_DEVICE_NOT_FOUND";
    case CL_DEVICE_NOT_AVAILABLE: return "CL_DEVICE_NOT_AVAILABLE";
    case CL_COMPILER_NOT_AVAILABLE: return "CL_COMPILER_NOT_AVAILABLE";
    case CL_MEM_OBJECT_ALLOCATION_FAILURE: return "CL_MEM_OBJECT_ALLOCATION_FAILURE: device allocation failed";
    case CL_OUT_OF_RESOURCES: return "CL_OUT_OF_RESOURCES";
    case CL_OUT_OF_HOST_MEMORY: return "CL_OUT_OF_HOST_MEMORY";
    case CL_BUILD_PROGRAM_FAILURE: return "CL_BUILD_PROGRAM_FAILURE: kernel build failed (see klcl_build_log)";
    case CL_INVALID_VALUE: return "CL_INVALID_VALUE";
    case CL_INVALID_DEVICE: return "CL_INVALID_DEVICE";
    case CL_INVALID_CONTEXT: return "CL_INVALID_CONTEXT";
    case CL_INVALID_COMMAND_QUEUE: return "CL_INVALID_COMMAND_QUEUE";
    case CL_INVALID_MEM_OBJECT: return "CL_INVALID_MEM_OBJECT";
    case CL_INVALID_BUFFER_SIZE: return "CL_INVALID_BUFFER_SIZE";
    case CL_INVALID_PROGRAM_EXECUTABLE: return "CL_INVALID_PROGRAM_EXECUTABLE";
    case CL_INVALID_KERNEL_NAME: return "CL_INVALID_KERNEL_NAME";
    case CL_INVALID_KERNEL_ARGS: return "CL_INVALID_KERNEL_ARGS";
    case CL_INVALID_WORK_GROUP_SIZE: return "CL_INVALID_WORK_GROUP_SIZE";
    case CL_INVALID_WORK_ITEM_SIZE: return "CL_INVALID_WORK_ITEM_SIZE";
    case CL_INVALID_GLOBAL_WORK_SIZE: return "CL_INVALID_GLOBAL_WORK_SIZE";
    case CL_INVALID_OPERATION: return "CL_INVALID_OPERATION";
    case CL_INVALID_BUILD_OPTIONS: return "CL_INVALID_BUILD_OPTIONS";
    case -1001: return "CL_PLATFORM_NOT_FOUND_KHR: no OpenCL platform installed";
    default: return status < 0 ? "an OpenCL error (see the OpenCL headers for this code)" : "unknown klcl status";
    }
}

static const char *const loss_names[KLCL_LOSS_COUNT] = {"kl",  "rkl",  "soft_ce", "ce", "jsd",
                                                        "skl", "srkl", "tvd",     "kd"};
static const char *const reduction_names[] = {"none", "sum", "mean", "batchmean"};
#define REDUCTION_COUNT (sizeof reduction_names / sizeof reduction_names[0])

const char *klcl_loss_name(klcl_loss loss)
{
    return (unsigned)loss < KLCL_LOSS_COUNT ? loss_names[loss] : NULL;
}

const char *klcl_reduction_name(klcl_reduction reduction)
{
    return (unsigned)reduction < REDUCTION_COUNT ? reduction_names[reduction] : NULL;
}

klcl_status klcl_loss_from_name(const char *name, klcl_loss *out)
{
    if (!name || !out) return KLCL_ERR_NULL_POINTER;
    for (unsigned i = 0; i < KLCL_LOSS_COUNT; i++)
        if (strcmp(name, loss_names[i]) == 0) {
            *out = (klcl_loss)i;
            return KLCL_OK;
        }
    return KLCL_ERR_INVALID_VALUE;
}

klcl_status klcl_reduction_from_name(const char *name, klcl_reduction *out)
{
    if (!name || !out) return KLCL_ERR_NULL_POINTER;
    for (unsigned i = 0; i < REDUCTION_COUNT; i++)
        if (strcmp(name, reduction_names[i]) == 0) {
            *out = (klcl_reduction)i;
            return KLCL_OK;
        }
    return KLCL_ERR_INVALID_VALUE;
}

klcl_status klcl_loss_desc_init(klcl_loss_desc *desc, klcl_loss loss)
{
    if (!desc) return KLCL_ERR_NULL_POINTER;
    if ((unsigned)loss >= KLCL_LOSS_COUNT) return KLCL_ERR_INVALID_VALUE;
    memset(desc, 0, sizeof *desc);
    desc->loss = loss;
    desc->reduction = KLCL_REDUCTION_MEAN;
    desc->tau = 1.0f;
    desc->softcap = 0.0f;
    desc->scale = 1.0f;
    desc->beta = 0.5f;
    desc->lambda = 0.1f;
    desc->alpha = 0.5f;
    desc->label_smoothing = 0.0f;
    desc->z_loss = 0.0f;
    desc->ignore_index = -100;
    return KLCL_OK;
}

int klcl_loss_needs_labels(klcl_loss loss)
{
    return loss == KLCL_LOSS_CE || loss == KLCL_LOSS_KD;
}

klcl_loss klcl_effective_loss(const klcl_loss_desc *desc)
{
    if (desc->loss == KLCL_LOSS_JSD && desc->beta == 0.0f) return KLCL_LOSS_KL;
    if (desc->loss == KLCL_LOSS_JSD && desc->beta == 1.0f) return KLCL_LOSS_RKL;
    return desc->loss;
}

klcl_status klcl_check_desc(const klcl_loss_desc *desc, klcl_context *ctx)
{
    if (!desc) return klcl_fail(ctx, KLCL_ERR_NULL_POINTER, "desc is NULL");
    if ((unsigned)desc->loss >= KLCL_LOSS_COUNT)
        return klcl_fail(ctx, KLCL_ERR_INVALID_VALUE, "desc->loss: unknown loss %d", (int)desc->loss);
    if ((unsigned)desc->reduction >= REDUCTION_COUNT)
        return klcl_fail(ctx, KLCL_ERR_INVALID_VALUE, "desc->reduction: unknown reduction %d",
                         (int)desc->reduction);
    if (desc->vocab_policy != KLCL_VOCAB_TRUNCATE && desc->vocab_policy != KLCL_VOCAB_PAD)
        return klcl_fail(ctx, KLCL_ERR_INVALID_VALUE, "desc->vocab_policy: unknown policy %d", desc->vocab_policy);
    const struct {
        const char *name;
        float value, lo, hi; /* closed range; hi = INFINITY for no upper bound */
        int lo_open;
    } params[] = {
        {"tau", desc->tau, 0.0f, INFINITY, 1},
        {"softcap", desc->softcap, 0.0f, INFINITY, 0},
        {"scale", desc->scale, -INFINITY, INFINITY, 0},
        {"beta", desc->beta, 0.0f, 1.0f, 0},
        {"lambda", desc->lambda, 0.0f, 1.0f, 0},
        {"alpha", desc->alpha, 0.0f, 1.0f, 0},
        {"label_smoothing", desc->label_smoothing, 0.0f, 1.0f, 0},
        {"z_loss", desc->z_loss, 0.0f, INFINITY, 0},
    };
    if (isfinite(desc->tau) && desc->tau > 0.0f && !isfinite(1.0f / desc->tau))
        return klcl_fail(ctx, KLCL_ERR_INVALID_VALUE, "desc->tau is %g: 1/tau overflows a float",
                         (double)desc->tau);
    for (size_t i = 0; i < sizeof params / sizeof params[0]; i++) {
        float v = params[i].value;
        if (!isfinite(v))
            return klcl_fail(ctx, KLCL_ERR_NONFINITE_ARG, "desc->%s is %g: must be finite", params[i].name,
                             (double)v);
        if (v < params[i].lo || v > params[i].hi || (params[i].lo_open && v == params[i].lo)) {
            const char *open = params[i].lo_open ? "(" : "[";
            if (params[i].hi == INFINITY)
                return klcl_fail(ctx, KLCL_ERR_INVALID_VALUE, "desc->%s is %g: must be in %s%g, inf)",
                                 params[i].name, (double)v, open, (double)params[i].lo);
            return klcl_fail(ctx, KLCL_ERR_INVALID_VALUE, "desc->%s is %g: must be in %s%g, %g]", params[i].name,
                             (double)v, open, (double)params[i].lo, (double)params[i].hi);
        }
    }
    return KLCL_OK;
}

double klcl_denominator(klcl_reduction reduction, size_t rows, size_t rows_used)
{
    switch (reduction) {
    case KLCL_REDUCTION_MEAN: return rows_used ? (double)rows_used : 1.0;
    case KLCL_REDUCTION_BATCHMEAN: return (double)rows;
    default: return 1.0;
    }
}

klcl_tensor klcl_host_tensor(const void *host, size_t stride)
{
    klcl_tensor t = {(void *)host, NULL, 0, stride, KLCL_DTYPE_F32};
    return t;
}

klcl_tensor klcl_mem_tensor(cl_mem mem, size_t offset_bytes, size_t stride)
{
    klcl_tensor t = {NULL, mem, offset_bytes, stride, KLCL_DTYPE_F32};
    return t;
}

const char *klcl_dtype_name(klcl_dtype dtype)
{
    switch (dtype) {
    case KLCL_DTYPE_F32: return "f32";
    case KLCL_DTYPE_F16: return "f16";
    case KLCL_DTYPE_BF16: return "bf16";
    }
    return NULL;
}

size_t klcl_dtype_size(klcl_dtype dtype)
{
    switch (dtype) {
    case KLCL_DTYPE_F32: return 4;
    case KLCL_DTYPE_F16:
    case KLCL_DTYPE_BF16: return 2;
    }
    return 0;
}
