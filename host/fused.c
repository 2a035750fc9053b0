/* klcl_compute_fused: the output projection and the loss chunk by chunk over rows, so that the N x V logits
 * never exist. Per chunk: CLBlast GEMMs make the chunk's logits, klcl_compute reduces them (reduction sum)
 * and writes d loss / d logits over them in place, and CLBlast GEMMs fold that into dH (per chunk), dW and
 * db (accumulated), with 1/denominator in their alpha. Built without CLBlast, the entry points say so. */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef KLCL_HAVE_CLBLAST

int klcl_fused_supported(void)
{
    return 0;
}

static klcl_status no_clblast(klcl_context *ctx)
{
    if (!ctx) return KLCL_ERR_NULL_POINTER;
    return klcl_fail(ctx, KLCL_ERR_UNSUPPORTED,
                     "the fused linear + loss path needs CLBlast, and this klcl was built without it "
                     "(KLCL_WITH_CLBLAST=OFF)");
}

klcl_status klcl_fused_warm(klcl_context *ctx)
{
    return no_clblast(ctx);
}

klcl_status klcl_compute_fused(klcl_context *ctx, const klcl_loss_desc *desc, const klcl_fused_batch *batch,
                               const klcl_fused_options *options, klcl_result *result, klcl_fused_info *info)
{
    return no_clblast(ctx);
}

#else

#include <clblast_c.h>

int klcl_fused_supported(void)
{
    return 1;
}

/* Automatic chunks: the logits buffers take at most a quarter of the device memory, each at most this. */
#define AUTO_LOGITS_BYTES_MAX ((size_t)256 << 20)
/* CL_DEVICE_GLOBAL_FREE_MEMORY_AMD (cl_amd_device_attribute_query): free memory in KiB. */
#define KLCL_DEVICE_GLOBAL_FREE_MEMORY_AMD 0x4039

/* ------------------------------------------------------------------------------------------------------ */
/* Device buffers and CLBlast                                                                               */

enum { MAX_OWNED = 24 };

/* One call's temporary device buffers, and the bytes they hold. */
typedef struct fused_call {
    klcl_context *ctx;
    cl_mem owned[MAX_OWNED];
    size_t n_owned;
    size_t bytes;
} fused_call;

/* A matrix as CLBlast takes it: buffer, offset and leading dimension in elements (row-major). */
typedef struct view {
    cl_mem mem;
    size_t off;
    size_t ld;
} view;

static klcl_status call_alloc(fused_call *f, size_t bytes, const char *what, cl_mem *out)
{
    cl_int err;
    if (f->n_owned == MAX_OWNED) return klcl_fail(f->ctx, KLCL_ERR_OUT_OF_HOST_MEMORY, "too many buffers");
    cl_mem mem = clCreateBuffer(f->ctx->cl_ctx, CL_MEM_READ_WRITE, bytes ? bytes : 1, NULL, &err);
    if (!mem)
        return klcl_fail(f->ctx, (klcl_status)err, "clCreateBuffer of %zu bytes for %s failed: %s (%d)", bytes,
                         what, klcl_status_string(err), (int)err);
    f->owned[f->n_owned++] = mem;
    f->bytes += bytes;
    *out = mem;
    return KLCL_OK;
}

static void call_release(fused_call *f)
{
    for (size_t i = 0; i < f->n_owned; i++) clReleaseMemObject(f->owned[i]);
    f->n_owned = 0;
}

/* CLBlast's codes that are OpenCL's pass through; its own band (below -1000) reads as unsupported. */
static klcl_status blas_status(klcl_context *ctx, CLBlastStatusCode s, const char *what)
{
    if (s == CLBlastSuccess) return KLCL_OK;
    if ((int)s > -1000)
        return klcl_fail(ctx, (klcl_status)s, "CLBlastSgemm (%s) failed: %s (%d)", what, klcl_status_string(s),
                         (int)s);
    return klcl_fail(ctx, KLCL_ERR_UNSUPPORTED, "CLBlastSgemm (%s) failed with CLBlast status %d", what, (int)s);
}

/* C[m x n] = alpha op(A) op(B) + beta C, all row-major; beta 0 never reads C. */
static klcl_status gemm(klcl_context *ctx, int trans_a, int trans_b, size_t m, size_t n, size_t k, float alpha,
                        view a, view b, float beta, view c, const char *what)
{
    CLBlastStatusCode s = CLBlastSgemm(CLBlastLayoutRowMajor, trans_a ? CLBlastTransposeYes : CLBlastTransposeNo,
                                       trans_b ? CLBlastTransposeYes : CLBlastTransposeNo, m, n, k, alpha, a.mem,
                                       a.off, a.ld, b.mem, b.off, b.ld, beta, c.mem, c.off, c.ld, &ctx->queue, NULL);
    return blas_status(ctx, s, what);
}

/* ------------------------------------------------------------------------------------------------------ */
/* Operands: the caller's matrices as the fp32 GEMMs see them                                              */

static int given(const klcl_tensor *t)
{
    return t->host != NULL || t->mem != NULL;
}

/* A caller's matrix (a vector is one row of `width` elements) reached by the GEMMs as fp32 rows: in place
 * when it is an fp32 cl_mem; otherwise through `stage`, dense rows in the tensor's own type that host rows
 * are uploaded into or downloaded from, and, for fp16 and bf16, `wide`, their fp32 copy, widened on the
 * device after the upload and rounded back to the type once before the download. The buffers hold one
 * chunk of rows for hidden states and grad_hidden (`per_chunk`), all rows for the other operands. */
typedef struct operand {
    const klcl_tensor *t; /* NULL: not given */
    const char *name;
    size_t rows, width;
    size_t stride; /* the caller's row stride, in elements */
    int per_chunk;
    cl_mem stage, wide;
} operand;

static operand operand_of(const klcl_tensor *t, size_t rows, size_t width, int matrix, int per_chunk,
                          const char *name)
{
    operand o = {given(t) ? t : NULL, name, rows, width, matrix ? klcl_row_stride(t, width) : width, per_chunk,
                 NULL, NULL};
    return o;
}

static int is_half(const operand *o)
{
    return o->t->dtype != KLCL_DTYPE_F32;
}

/* Device bytes an operand needs per row of its buffers (the caller's own memory not counted). */
static size_t operand_row_bytes(const operand *o)
{
    if (!o->t) return 0;
    return o->width * ((o->t->host ? klcl_dtype_size(o->t->dtype) : 0) + (is_half(o) ? sizeof(float) : 0));
}

static klcl_status operand_alloc(fused_call *f, operand *o, size_t chunk)
{
    if (!o->t) return KLCL_OK;
    const size_t rows = o->per_chunk ? chunk : o->rows;
    klcl_status st = KLCL_OK;
    if (o->t->host) st = call_alloc(f, rows * o->width * klcl_dtype_size(o->t->dtype), o->name, &o->stage);
    if (st == KLCL_OK && is_half(o)) st = call_alloc(f, rows * o->width * sizeof(float), o->name, &o->wide);
    return st;
}

/* Host rows [r0, r0 + n) of an operand into its stage (upload) or back (download), without waiting: the
 * host memory is the caller's and outlives the call. */
static klcl_status transfer_rows(klcl_context *ctx, const operand *o, size_t r0, size_t n, int upload)
{
    const size_t elem = klcl_dtype_size(o->t->dtype), row = o->width * elem, pitch = o->stride * elem;
    char *host = (char *)o->t->host + r0 * pitch;
    const size_t origin[3] = {0, 0, 0}, region[3] = {row, n, 1};
    cl_int err;
    if (o->stride == o->width || n == 1)
        err = upload ? clEnqueueWriteBuffer(ctx->queue, o->stage, CL_FALSE, 0, n * row, host, 0, NULL, NULL)
                     : clEnqueueReadBuffer(ctx->queue, o->stage, CL_FALSE, 0, n * row, host, 0, NULL, NULL);
    else
        err = upload ? clEnqueueWriteBufferRect(ctx->queue, o->stage, CL_FALSE, origin, origin, region, row, 0,
                                                pitch, 0, host, 0, NULL, NULL)
                     : clEnqueueReadBufferRect(ctx->queue, o->stage, CL_FALSE, origin, origin, region, row, 0,
                                               pitch, 0, host, 0, NULL, NULL);
    if (err == CL_SUCCESS) return KLCL_OK;
    return klcl_fail(ctx, (klcl_status)err, "%s (%s of %s) failed: %s (%d)",
                     upload ? "clEnqueueWriteBuffer" : "clEnqueueReadBuffer", upload ? "upload" : "download",
                     o->name, klcl_status_string(err), (int)err);
}

static void view_args(arg_setter *a, view v)
{
    const cl_ulong off = v.off, ld = v.ld;
    arg(a, sizeof(cl_mem), &v.mem);
    arg(a, sizeof off, &off);
    arg(a, sizeof ld, &ld);
}

/* Rows [r0, r0 + n) of a half-precision operand, from its stage or the caller's buffer into `wide`
 * (widen), or from `wide` back (narrow): kernels_cl/convert.cl. */
static klcl_status convert_rows(klcl_context *ctx, const operand *o, size_t r0, size_t n, int widen)
{
    const klcl_tensor *t = o->t;
    const view half = t->host ? (view){o->stage, 0, o->width}
                              : (view){t->mem, t->offset / klcl_dtype_size(t->dtype) + r0 * o->stride, o->stride};
    const view wide = {o->wide, 0, o->width};
    const cl_int dtype = (cl_int)t->dtype;
    const cl_ulong width = o->width;
    arg_setter a = {widen ? ctx->variants[0].widen_kernel : ctx->variants[0].narrow_kernel, 0, CL_SUCCESS};
    view_args(&a, widen ? half : wide);
    arg(&a, sizeof dtype, &dtype);
    view_args(&a, widen ? wide : half);
    arg(&a, sizeof width, &width);
    if (a.err != CL_SUCCESS) return klcl_fail_cl(ctx, a.err, "clSetKernelArg (conversion kernel)");
    const size_t global[2] = {(o->width + 7) / 8, n};
    cl_int err = clEnqueueNDRangeKernel(ctx->queue, a.k, 2, NULL, global, NULL, 0, NULL, NULL);
    if (err == CL_SUCCESS) return KLCL_OK;
    return klcl_fail(ctx, (klcl_status)err, "clEnqueueNDRangeKernel (%s of %s) failed: %s (%d)",
                     widen ? "widening" : "rounding", o->name, klcl_status_string(err), (int)err);
}

/* Rows [r0, r0 + n) of an operand as an fp32 view for CLBlast: the caller's buffer in place, or the
 * operand's own buffers, into which `load` brings the caller's values (upload, widen). */
static klcl_status operand_rows(klcl_context *ctx, const operand *o, size_t r0, size_t n, int load, view *out)
{
    const klcl_tensor *t = o->t;
    if (t->mem && !is_half(o)) {
        *out = (view){t->mem, t->offset / sizeof(float) + r0 * o->stride, o->stride};
        return KLCL_OK;
    }
    *out = (view){is_half(o) ? o->wide : o->stage, 0, o->width};
    klcl_status st = KLCL_OK;
    if (load && t->host) st = transfer_rows(ctx, o, r0, n, 1);
    if (load && st == KLCL_OK && is_half(o)) st = convert_rows(ctx, o, r0, n, 1);
    return st;
}

/* Rows [r0, r0 + n) that the GEMMs wrote into an operand's view, to the caller: rounded to its type once,
 * then downloaded when it is on the host. */
static klcl_status operand_store(klcl_context *ctx, const operand *o, size_t r0, size_t n)
{
    klcl_status st = is_half(o) ? convert_rows(ctx, o, r0, n, 0) : KLCL_OK;
    if (st == KLCL_OK && o->t->host) st = transfer_rows(ctx, o, r0, n, 0);
    return st;
}

/* ------------------------------------------------------------------------------------------------------ */
/* Argument checks                                                                                          */

/* A matrix (rows x width, with a stride) or a vector (rows elements); `elem` bytes per element for a tensor
 * of fixed type, 0 for a floating-point tensor that may be fp32, fp16 or bf16. */
static klcl_status check_tensor(klcl_context *ctx, const char *name, const klcl_tensor *t, size_t rows,
                                size_t width, size_t elem, int matrix, int required)
{
    if (!given(t))
        return required ? klcl_fail(ctx, KLCL_ERR_NULL_POINTER, "%s is missing (host and mem both NULL)", name)
                        : KLCL_OK;
    if (t->host && t->mem) return klcl_fail(ctx, KLCL_ERR_INVALID_VALUE, "%s: set host or mem, not both", name);
    if (elem ? t->dtype != KLCL_DTYPE_F32 : !klcl_dtype_name(t->dtype))
        return klcl_fail(ctx, KLCL_ERR_INVALID_VALUE, "%s.dtype is %d: %s", name, (int)t->dtype,
                         elem ? "must be 0 (the type of this argument is fixed)" : "not a klcl_dtype");
    if (!elem) elem = klcl_dtype_size(t->dtype);
    size_t extent = rows;
    if (matrix) {
        size_t stride = klcl_row_stride(t, width);
        if (stride < width)
            return klcl_fail(ctx, KLCL_ERR_INVALID_SHAPE, "%s.stride (%zu) is smaller than the row width (%zu)", name,
                             stride, width);
        /* in fp32 elements: a half-precision matrix also gets an fp32 copy */
        if (width > SIZE_MAX / sizeof(float) || (rows - 1) > (SIZE_MAX / sizeof(float) - width) / stride)
            return klcl_fail(ctx, KLCL_ERR_INVALID_SHAPE, "%s: rows x stride overflows size_t", name);
        extent = (rows - 1) * stride + width;
    }
    if (t->mem) {
        if (t->offset % elem)
            return klcl_fail(ctx, KLCL_ERR_MISALIGNED, "%s.offset (%zu) is not a multiple of %zu bytes", name,
                             t->offset, elem);
        size_t size = 0;
        cl_int err = clGetMemObjectInfo(t->mem, CL_MEM_SIZE, sizeof size, &size, NULL);
        if (err != CL_SUCCESS)
            return klcl_fail(ctx, (klcl_status)err, "%s.mem is not a valid buffer: %s", name,
                             klcl_status_string(err));
        if (t->offset > size || (size - t->offset) / elem < extent)
            return klcl_fail(ctx, KLCL_ERR_BUFFER_TOO_SMALL,
                             "%s.mem holds %zu bytes; offset %zu + %zu elements of %zu bytes do not fit", name, size,
                             t->offset, extent, elem);
    }
    return KLCL_OK;
}

static klcl_status check_linear(klcl_context *ctx, const char *side, const klcl_linear *l, size_t rows)
{
    char name[64];
    snprintf(name, sizeof name, "batch->%s.dim", side);
    if (l->dim == 0) return klcl_fail(ctx, KLCL_ERR_INVALID_SHAPE, "%s is 0", name);
    snprintf(name, sizeof name, "batch->%s.vocab", side);
    if (l->vocab == 0) return klcl_fail(ctx, KLCL_ERR_INVALID_SHAPE, "%s is 0", name);
    if (l->vocab > INT32_MAX) return klcl_fail(ctx, KLCL_ERR_INVALID_SHAPE, "%s (%zu) exceeds 2^31 - 1", name, l->vocab);
    klcl_status st;
    snprintf(name, sizeof name, "batch->%s.hidden", side);
    if ((st = check_tensor(ctx, name, &l->hidden, rows, l->dim, 0, 1, 1)) != KLCL_OK) return st;
    snprintf(name, sizeof name, "batch->%s.weight", side);
    if ((st = check_tensor(ctx, name, &l->weight, l->vocab, l->dim, 0, 1, 1)) != KLCL_OK) return st;
    snprintf(name, sizeof name, "batch->%s.bias", side);
    return check_tensor(ctx, name, &l->bias, l->vocab, 1, 0, 0, 0);
}

static klcl_status check_fused(klcl_context *ctx, const klcl_loss_desc *desc, const klcl_fused_batch *b,
                               const klcl_fused_options *opt)
{
    klcl_status st = klcl_check_desc(desc, ctx);
    if (st != KLCL_OK) return st;
    if (!b) return klcl_fail(ctx, KLCL_ERR_NULL_POINTER, "batch is NULL");
    if (ctx->is_reference)
        return klcl_fail(ctx, KLCL_ERR_UNSUPPORTED,
                         "the fused linear + loss path needs an OpenCL device; this context is the CPU reference");
    if (opt->accumulate != 0 && opt->accumulate != 1)
        return klcl_fail(ctx, KLCL_ERR_INVALID_VALUE, "options->accumulate is %d: 0 or 1", opt->accumulate);
    if (b->rows == 0) return klcl_fail(ctx, KLCL_ERR_INVALID_SHAPE, "batch->rows is 0");
    if ((st = check_linear(ctx, "student", &b->student, b->rows)) != KLCL_OK) return st;
    const size_t rows = b->rows, vocab = b->student.vocab, dim = b->student.dim;

    const klcl_linear *t = &b->teacher;
    const int teacher_linear = given(&t->hidden) || given(&t->weight) || given(&t->bias);
    if (teacher_linear && given(&b->teacher_logits))
        return klcl_fail(ctx, KLCL_ERR_INVALID_VALUE,
                         "batch->teacher.hidden and batch->teacher_logits are both given: set one of them");
    if (teacher_linear) {
        if (!given(&t->hidden) || !given(&t->weight))
            return klcl_fail(ctx, KLCL_ERR_NULL_POINTER, "batch->teacher.%s is missing: the teacher as hidden states "
                             "needs both hidden and weight", given(&t->hidden) ? "weight" : "hidden");
        if ((st = check_linear(ctx, "teacher", t, rows)) != KLCL_OK) return st;
        if (t->vocab != vocab)
            return klcl_fail(ctx, KLCL_ERR_INVALID_SHAPE, "batch->teacher.vocab (%zu) differs from batch->student.vocab (%zu)",
                             t->vocab, vocab);
    } else if (!given(&b->teacher_logits) && desc->loss != KLCL_LOSS_CE) {
        return klcl_fail(ctx, KLCL_ERR_NULL_POINTER,
                         "the teacher is missing: give batch->teacher.hidden and .weight, or batch->teacher_logits");
    }
    const int needs_labels = klcl_loss_needs_labels(desc->loss);
    if ((st = check_tensor(ctx, "batch->teacher_logits", &b->teacher_logits, rows, vocab, 0, 1, 0)) ||
        (st = check_tensor(ctx, "batch->labels", &b->labels, rows, 1, sizeof(int32_t), 0, needs_labels)) ||
        (st = check_tensor(ctx, "batch->mask", &b->mask, rows, 1, sizeof(uint8_t), 0, 0)) ||
        (st = check_tensor(ctx, "batch->grad_hidden", &b->grad_hidden, rows, dim, 0, 1, 0)) ||
        (st = check_tensor(ctx, "batch->grad_weight", &b->grad_weight, vocab, dim, 0, 1, 0)) ||
        (st = check_tensor(ctx, "batch->grad_bias", &b->grad_bias, vocab, 1, 0, 0, 0)) ||
        (st = check_tensor(ctx, "batch->row_loss", &b->row_loss, rows, 1, sizeof(float), 0, 0)))
        return st;
    return KLCL_OK;
}

/* ------------------------------------------------------------------------------------------------------ */
/* Chunk size                                                                                               */

/* Global memory to plan with: the free memory where the driver reports it (AMD), else all of it. */
static cl_ulong device_memory(klcl_context *ctx)
{
    cl_ulong global = 0;
    clGetDeviceInfo(ctx->device, CL_DEVICE_GLOBAL_MEM_SIZE, sizeof global, &global, NULL);
    char ext[4096];
    klcl_device_string(ctx->device, CL_DEVICE_EXTENSIONS, ext, sizeof ext);
    if (strstr(ext, "cl_amd_device_attribute_query")) {
        size_t free_kib[2] = {0, 0};
        if (clGetDeviceInfo(ctx->device, KLCL_DEVICE_GLOBAL_FREE_MEMORY_AMD, sizeof free_kib, free_kib, NULL) ==
                CL_SUCCESS &&
            free_kib[0] > 0)
            return (cl_ulong)free_kib[0] * 1024;
    }
    return global;
}

/* Rows per chunk when the caller leaves it to klcl: `logits_buffers` chunk x vocab fp32 buffers plus
 * `row_bytes` more per row must fit a quarter of the device memory left after `fixed_bytes`. */
static size_t auto_chunk_rows(klcl_context *ctx, size_t rows, size_t vocab, size_t logits_buffers, size_t row_bytes,
                              size_t fixed_bytes)
{
    cl_ulong max_alloc = 0;
    clGetDeviceInfo(ctx->device, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof max_alloc, &max_alloc, NULL);
    cl_ulong mem = device_memory(ctx);
    cl_ulong budget = mem > fixed_bytes ? (mem - fixed_bytes) / 4 : 0;
    cl_ulong per_buffer = budget / logits_buffers;
    if (max_alloc && per_buffer > max_alloc) per_buffer = max_alloc;
    if (per_buffer > AUTO_LOGITS_BYTES_MAX) per_buffer = AUTO_LOGITS_BYTES_MAX;
    const cl_ulong logits_row = (cl_ulong)vocab * sizeof(float);
    cl_ulong by_buffer = per_buffer / logits_row;
    cl_ulong by_budget = budget / (logits_row * logits_buffers + row_bytes);
    cl_ulong c = by_buffer < by_budget ? by_buffer : by_budget;
    if (c >= 64) c -= c % 64;
    if (c < 1) c = 1;
    return c < rows ? (size_t)c : rows;
}

/* ------------------------------------------------------------------------------------------------------ */
/* The fused call                                                                                           */

/* logits[n x V] = hidden[n x D] . weight^T (+ bias, broadcast by a rank-1 product with a ones column). */
static klcl_status project(klcl_context *ctx, size_t n, size_t vocab, size_t dim, view hidden, view weight,
                           const view *bias, view ones, cl_mem logits, const char *side)
{
    const view z = {logits, 0, vocab};
    float beta = 0.0f;
    klcl_status st;
    if (bias) {
        const view ones_col = {ones.mem, 0, 1};
        if ((st = gemm(ctx, 0, 0, n, vocab, 1, 1.0f, ones_col, *bias, 0.0f, z, side)) != KLCL_OK) return st;
        beta = 1.0f;
    }
    return gemm(ctx, 0, 1, n, vocab, dim, 1.0f, hidden, weight, beta, z, side);
}

/* A per-row vector or a row block of a matrix, from row r0 on, as a klcl_tensor klcl_compute can take. */
static klcl_tensor tensor_rows(const klcl_tensor *t, size_t width, size_t elem, size_t r0)
{
    klcl_tensor out = *t;
    const size_t step = width ? klcl_row_stride(t, width) * elem : elem;
    if (t->host) out.host = (char *)t->host + r0 * step;
    else if (t->mem) out.offset = t->offset + r0 * step;
    return out;
}

/* Labels or mask on the host: the caller's array, or a download of the caller's buffer into *copy. */
static klcl_status host_vector(klcl_context *ctx, const klcl_tensor *t, size_t bytes, void **copy,
                               const void **out, const char *name)
{
    *out = t->host;
    if (!t->mem) return KLCL_OK;
    *copy = malloc(bytes ? bytes : 1);
    if (!*copy) return klcl_fail(ctx, KLCL_ERR_OUT_OF_HOST_MEMORY, "%s: out of host memory for a copy", name);
    cl_int err = clEnqueueReadBuffer(ctx->queue, t->mem, CL_TRUE, t->offset, bytes, *copy, 0, NULL, NULL);
    if (err != CL_SUCCESS)
        return klcl_fail(ctx, (klcl_status)err, "clEnqueueReadBuffer (%s) failed: %s (%d)", name,
                         klcl_status_string(err), (int)err);
    *out = *copy;
    return KLCL_OK;
}

/* One chunk's klcl_result folded into the call's totals, as klcl_tally_row would have seen its rows. */
static void tally_chunk(klcl_tally *t, const klcl_result *r, size_t r0, int has_labels)
{
    t->sum += r->loss;
    t->used += r->rows_used;
    t->skipped += r->rows_skipped;
    for (size_t k = 0; k < r->rows_nonfinite && k < 8 && t->nonfinite + k < 8; k++)
        t->first_nonfinite[t->nonfinite + k] = r0 + r->first_nonfinite[k];
    t->nonfinite += r->rows_nonfinite;
    const size_t finite = r->rows_used - r->rows_nonfinite;
    t->finite += finite;
    if (finite) t->student_entropy += r->student_entropy * (double)finite;
    if (r->rows_with_teacher) {
        t->with_teacher += r->rows_with_teacher;
        t->teacher_entropy += r->teacher_entropy * (double)r->rows_with_teacher;
        t->agree += (size_t)llround(r->top1_agreement * (double)r->rows_with_teacher);
    }
    if (has_labels && finite) {
        t->with_label += finite;
        t->correct += (size_t)llround(r->accuracy * (double)finite);
    }
}

/* The operands of a call: per-chunk ones first, then those read or written whole. */
enum { OP_HS, OP_HT, OP_DH, OP_WS, OP_WT, OP_BS, OP_BT, OP_DW, OP_DB, OP_COUNT };

/* One call's state: its operands and the whole-call fp32 views of heads, biases, grad_weight and grad_bias
 * (`whole`), the logits chunks, the labels and mask on the host, and the running totals. */
typedef struct fused_run {
    klcl_context *ctx;
    const klcl_loss_desc *desc;
    const klcl_fused_batch *b;
    const klcl_fused_options *opt;
    fused_call f;
    operand op[OP_COUNT];
    view whole[OP_COUNT];
    cl_mem zs, zt, ones;
    size_t chunk;
    float alpha; /* 1 / the reduction's denominator, applied by the backward GEMMs */
    const int32_t *labels;
    const uint8_t *mask;
    void *labels_copy, *mask_copy;
    klcl_tally tally;
} fused_run;

static void run_operands(fused_run *r)
{
    const klcl_fused_batch *b = r->b;
    const klcl_linear *S = &b->student, *T = &b->teacher;
    const size_t N = b->rows, V = S->vocab, D = S->dim;
    r->op[OP_HS] = operand_of(&S->hidden, N, D, 1, 1, "batch->student.hidden");
    r->op[OP_HT] = operand_of(&T->hidden, N, T->dim, 1, 1, "batch->teacher.hidden");
    r->op[OP_DH] = operand_of(&b->grad_hidden, N, D, 1, 1, "batch->grad_hidden");
    r->op[OP_WS] = operand_of(&S->weight, V, D, 1, 0, "batch->student.weight");
    r->op[OP_WT] = operand_of(&T->weight, V, T->dim, 1, 0, "batch->teacher.weight");
    r->op[OP_BS] = operand_of(&S->bias, 1, V, 0, 0, "batch->student.bias");
    r->op[OP_BT] = operand_of(&T->bias, 1, V, 0, 0, "batch->teacher.bias");
    r->op[OP_DW] = operand_of(&b->grad_weight, V, D, 1, 0, "batch->grad_weight");
    r->op[OP_DB] = operand_of(&b->grad_bias, 1, V, 0, 0, "batch->grad_bias");
}

/* Labels and mask on the host: every label checked with its row named, and the rows not skipped counted
 * for the mean's denominator before the first chunk's gradient is scaled by it. */
static klcl_status run_labels(fused_run *r)
{
    const size_t rows = r->b->rows, vocab = r->b->student.vocab;
    const int32_t ignore = r->desc->ignore_index;
    klcl_status st;
    if ((st = host_vector(r->ctx, &r->b->labels, rows * sizeof(int32_t), &r->labels_copy,
                          (const void **)&r->labels, "batch->labels")) != KLCL_OK ||
        (st = host_vector(r->ctx, &r->b->mask, rows, &r->mask_copy, (const void **)&r->mask, "batch->mask")) !=
            KLCL_OK)
        return st;
    size_t used = 0;
    for (size_t i = 0; i < rows; i++) {
        const int32_t y = r->labels ? r->labels[i] : 0;
        if (r->labels && y != ignore && (y < 0 || (size_t)y >= vocab))
            return klcl_fail(r->ctx, KLCL_ERR_LABEL_OUT_OF_RANGE,
                             "batch->labels[%zu] is %d: outside [0, %zu) and not ignore_index (%d)", i, (int)y, vocab,
                             (int)ignore);
        used += !(r->labels && y == ignore) && !(r->mask && r->mask[i] == 0);
    }
    r->alpha = (float)(1.0 / klcl_denominator(r->desc->reduction, rows, used));
    return KLCL_OK;
}

/* Rows per chunk, then the call's buffers: the logits chunks, the operands' stages and fp32 copies, and a
 * ones vector (bias broadcast and column sums). */
static klcl_status run_buffers(fused_run *r)
{
    const klcl_fused_batch *b = r->b;
    const size_t rows = b->rows, vocab = b->student.vocab;
    const int teacher_linear = r->op[OP_HT].t != NULL;
    const int need_ones = r->op[OP_BS].t || r->op[OP_BT].t || r->op[OP_DB].t;
    const size_t logits_buffers = 1 + (size_t)teacher_linear + (size_t)(b->teacher_logits.host != NULL);
    size_t row_bytes = (RS_COUNT + RF_COUNT + 3) * sizeof(float) + 1, fixed = 0;
    for (int i = 0; i < OP_COUNT; i++) {
        if (r->op[i].per_chunk) row_bytes += operand_row_bytes(&r->op[i]);
        else fixed += r->op[i].rows * operand_row_bytes(&r->op[i]);
    }
    r->chunk = r->opt->chunk_rows ? (r->opt->chunk_rows < rows ? r->opt->chunk_rows : rows)
                                  : auto_chunk_rows(r->ctx, rows, vocab, logits_buffers, row_bytes, fixed);
    if (r->chunk > SIZE_MAX / sizeof(float) / vocab)
        return klcl_fail(r->ctx, KLCL_ERR_INVALID_SHAPE, "options->chunk_rows (%zu) x vocab overflows size_t",
                         r->chunk);
    const size_t logits_bytes = r->chunk * vocab * sizeof(float);
    klcl_status st;
    if ((st = call_alloc(&r->f, logits_bytes, "the student's logits chunk", &r->zs)) != KLCL_OK ||
        (teacher_linear && (st = call_alloc(&r->f, logits_bytes, "the teacher's logits chunk", &r->zt)) != KLCL_OK) ||
        (need_ones && (st = call_alloc(&r->f, r->chunk * sizeof(float), "a ones vector", &r->ones)) != KLCL_OK))
        return st;
    for (int i = 0; i < OP_COUNT; i++)
        if ((st = operand_alloc(&r->f, &r->op[i], r->chunk)) != KLCL_OK) return st;
    if (!need_ones) return KLCL_OK;
    const float one = 1.0f;
    cl_int err = clEnqueueFillBuffer(r->ctx->queue, r->ones, &one, sizeof one, 0, r->chunk * sizeof(float), 0, NULL,
                                     NULL);
    return err == CL_SUCCESS ? KLCL_OK : klcl_fail_cl(r->ctx, err, "clEnqueueFillBuffer (ones)");
}

/* Heads and biases, read once per call (uploaded, widened); grad_weight and grad_bias as the fp32 sums the
 * chunks add into, starting from the caller's values when accumulating. */
static klcl_status run_whole_views(fused_run *r)
{
    klcl_status st = KLCL_OK;
    for (int i = OP_WS; i < OP_COUNT && st == KLCL_OK; i++) {
        const int load = (i != OP_DW && i != OP_DB) || r->opt->accumulate;
        if (r->op[i].t) st = operand_rows(r->ctx, &r->op[i], 0, r->op[i].rows, load, &r->whole[i]);
    }
    return st;
}

/* The loss over the chunk's logits (reduction sum) and, when a gradient is asked for, d loss / d logits
 * written over the student's logits: element-wise, each entry is read before it is written. */
static klcl_status chunk_loss(fused_run *r, size_t r0, size_t n)
{
    const klcl_fused_batch *b = r->b;
    const size_t vocab = b->student.vocab;
    klcl_loss_desc desc = *r->desc;
    desc.reduction = KLCL_REDUCTION_SUM; /* 1/denominator goes into the GEMMs' alpha */
    klcl_batch kb = KLCL_BATCH_INIT;
    kb.rows = n;
    kb.vocab = vocab;
    kb.student = klcl_mem_tensor(r->zs, 0, vocab);
    if (r->zt) kb.teacher = klcl_mem_tensor(r->zt, 0, vocab);
    else if (given(&b->teacher_logits))
        kb.teacher = tensor_rows(&b->teacher_logits, vocab, klcl_dtype_size(b->teacher_logits.dtype), r0);
    if (r->labels) kb.labels = klcl_host_tensor(r->labels + r0, 0);
    if (r->mask) kb.mask = klcl_host_tensor(r->mask + r0, 0);
    if (r->op[OP_DH].t || r->op[OP_DW].t || r->op[OP_DB].t) kb.grad = klcl_mem_tensor(r->zs, 0, vocab);
    if (given(&b->row_loss)) kb.row_loss = tensor_rows(&b->row_loss, 0, sizeof(float), r0);
    klcl_result res;
    klcl_status st = klcl_compute(r->ctx, &desc, &kb, &res);
    if (st != KLCL_OK) {
        char msg[sizeof r->ctx->error];
        memcpy(msg, r->ctx->error, sizeof msg);
        return klcl_fail(r->ctx, st, "chunk of rows [%zu, %zu): %s", r0, r0 + n, msg);
    }
    tally_chunk(&r->tally, &res, r0, r->labels != NULL);
    return KLCL_OK;
}

/* Rows [r0, r0 + n): their logits, the loss and its gradient over them, then dH for these rows and their
 * share of dW and db (added to the fp32 sums after the first chunk, or from the start when accumulating). */
static klcl_status run_chunk(fused_run *r, size_t r0, size_t n)
{
    klcl_context *ctx = r->ctx;
    const size_t vocab = r->b->student.vocab, dim = r->b->student.dim;
    const operand *op = r->op;
    const view *w = r->whole, ones = {r->ones, 0, 1}, dz = {r->zs, 0, vocab};
    view hs, ht, dh;
    klcl_status st;
    if ((st = operand_rows(ctx, &op[OP_HS], r0, n, 1, &hs)) != KLCL_OK ||
        (st = project(ctx, n, vocab, dim, hs, w[OP_WS], op[OP_BS].t ? &w[OP_BS] : NULL, ones, r->zs,
                      "student logits")) != KLCL_OK)
        return st;
    if (op[OP_HT].t &&
        ((st = operand_rows(ctx, &op[OP_HT], r0, n, 1, &ht)) != KLCL_OK ||
         (st = project(ctx, n, vocab, op[OP_HT].width, ht, w[OP_WT], op[OP_BT].t ? &w[OP_BT] : NULL, ones, r->zt,
                       "teacher logits")) != KLCL_OK))
        return st;
    if ((st = chunk_loss(r, r0, n)) != KLCL_OK) return st;
    if (op[OP_DH].t &&
        ((st = operand_rows(ctx, &op[OP_DH], r0, n, 0, &dh)) != KLCL_OK ||
         (st = gemm(ctx, 0, 0, n, dim, vocab, r->alpha, dz, w[OP_WS], 0.0f, dh, "grad_hidden")) != KLCL_OK ||
         (st = operand_store(ctx, &op[OP_DH], r0, n)) != KLCL_OK))
        return st;
    const float beta = r0 == 0 && !r->opt->accumulate ? 0.0f : 1.0f;
    if (op[OP_DW].t &&
        (st = gemm(ctx, 1, 0, vocab, dim, n, r->alpha, dz, hs, beta, w[OP_DW], "grad_weight")) != KLCL_OK)
        return st;
    if (op[OP_DB].t)
        st = gemm(ctx, 0, 0, 1, vocab, n, r->alpha, (view){r->ones, 0, n}, dz, beta, w[OP_DB], "grad_bias");
    return st;
}

static klcl_status fused_compute(klcl_context *ctx, const klcl_loss_desc *desc, const klcl_fused_batch *b,
                                 const klcl_fused_options *opt, klcl_result *result, klcl_fused_info *info)
{
    fused_run r;
    memset(&r, 0, sizeof r);
    r.ctx = r.f.ctx = ctx;
    r.desc = desc;
    r.b = b;
    r.opt = opt;
    run_operands(&r);
    const int saved_verify = ctx->verify;
    ctx->verify = 0; /* klcl_compute's verify mode would read the student logits after the gradient overwrote them */
    size_t chunks = 0;
    klcl_status st;
    const klcl_program *shared; /* the conversion kernels */
    if ((st = klcl_program_group(ctx, KLCL_DTYPE_F32, KLCL_DTYPE_F32, KLCL_DTYPE_F32, KLCL_GROUP_SHARED, &shared)) !=
            KLCL_OK ||
        (st = run_labels(&r)) != KLCL_OK ||
        (st = run_buffers(&r)) != KLCL_OK || (st = run_whole_views(&r)) != KLCL_OK)
        goto done;
    for (size_t r0 = 0; r0 < b->rows; r0 += r.chunk, chunks++)
        if ((st = run_chunk(&r, r0, b->rows - r0 < r.chunk ? b->rows - r0 : r.chunk)) != KLCL_OK) goto done;
    if ((r.op[OP_DW].t && (st = operand_store(ctx, &r.op[OP_DW], 0, r.op[OP_DW].rows)) != KLCL_OK) ||
        (r.op[OP_DB].t && (st = operand_store(ctx, &r.op[OP_DB], 0, 1)) != KLCL_OK))
        goto done;
    cl_int err = clFinish(ctx->queue);
    if (err != CL_SUCCESS) {
        st = klcl_fail_cl(ctx, err, "clFinish");
        goto done;
    }
    klcl_tally_finish(&r.tally, desc->reduction, b->rows, result);
    if (info) {
        size_t scratch = 0;
        for (int i = 0; i < SCRATCH_COUNT; i++) scratch += ctx->scratch[i].bytes;
        info->chunk_rows = r.chunk;
        info->chunks = chunks;
        info->device_bytes = r.f.bytes + scratch;
    }
done:
    ctx->verify = saved_verify;
    if (st != KLCL_OK) clFinish(ctx->queue); /* nothing may still read or write caller memory after return */
    call_release(&r.f);
    free(r.labels_copy);
    free(r.mask_copy);
    return st;
}

klcl_status klcl_compute_fused(klcl_context *ctx, const klcl_loss_desc *desc, const klcl_fused_batch *batch,
                               const klcl_fused_options *options, klcl_result *result, klcl_fused_info *info)
{
    if (!ctx) return KLCL_ERR_NULL_POINTER;
    ctx->error[0] = '\0';
    const klcl_fused_options defaults = KLCL_FUSED_OPTIONS_INIT;
    const klcl_fused_options *opt = options ? options : &defaults;
    klcl_status st = check_fused(ctx, desc, batch, opt);
    if (st != KLCL_OK) return st;
    klcl_result local;
    klcl_result *out = result ? result : &local;
    memset(out, 0, sizeof *out);
    if (info) memset(info, 0, sizeof *info);
    return fused_compute(ctx, desc, batch, opt, out, info);
}

/* Warm-up: every product shape the fused path runs, small (CLBlast's direct kernels) and large (its
 * indirect kernels with their copy and transpose helpers), so that all of CLBlast's programs are built. */
klcl_status klcl_fused_warm(klcl_context *ctx)
{
    if (!ctx) return KLCL_ERR_NULL_POINTER;
    ctx->error[0] = '\0';
    if (ctx->is_reference)
        return klcl_fail(ctx, KLCL_ERR_UNSUPPORTED,
                         "the fused linear + loss path needs an OpenCL device; this context is the CPU reference");
    enum { BIG = 512 };
    fused_call f = {ctx, {NULL}, 0, 0};
    cl_mem a, c;
    klcl_status st = klcl_program_build_all(ctx);
    if (st != KLCL_OK || (st = call_alloc(&f, BIG * BIG * sizeof(float), "warm-up", &a)) != KLCL_OK ||
        (st = call_alloc(&f, BIG * BIG * sizeof(float), "warm-up", &c)) != KLCL_OK)
        goto done;
    const float zero = 0.0f;
    cl_int err = clEnqueueFillBuffer(ctx->queue, a, &zero, sizeof zero, 0, BIG * BIG * sizeof(float), 0, NULL, NULL);
    if (err != CL_SUCCESS) {
        st = klcl_fail_cl(ctx, err, "clEnqueueFillBuffer (warm-up)");
        goto done;
    }
    const size_t sizes[2] = {8, BIG};
    const int trans[3][2] = {{0, 1}, {0, 0}, {1, 0}};
    for (int s = 0; s < 2; s++)
        for (int k = 0; k < 3; k++) {
            const view va = {a, 0, sizes[s]}, vc = {c, 0, sizes[s]};
            st = gemm(ctx, trans[k][0], trans[k][1], sizes[s], sizes[s], sizes[s], 1.0f, va, va, 0.0f, vc, "warm-up");
            if (st != KLCL_OK) goto done;
        }
    /* The bias shapes: a rank-1 broadcast and a one-row product. */
    if ((st = gemm(ctx, 0, 0, BIG, BIG, 1, 1.0f, (view){a, 0, 1}, (view){a, 0, BIG}, 0.0f, (view){c, 0, BIG},
                   "warm-up")) != KLCL_OK ||
        (st = gemm(ctx, 0, 0, 1, BIG, BIG, 1.0f, (view){a, 0, BIG}, (view){a, 0, BIG}, 0.0f, (view){c, 0, BIG},
                   "warm-up")) != KLCL_OK)
        goto done;
    err = clFinish(ctx->queue);
    if (err != CL_SUCCESS) st = klcl_fail_cl(ctx, err, "clFinish (warm-up)");
done:
    if (st != KLCL_OK) clFinish(ctx->queue);
    call_release(&f);
    return st;
}

#endif
