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

enum { MAX_OWNED = 16 };

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

/* Rows [r0, r0 + n) of a host matrix into a dense device buffer (or back), without waiting: the host memory
 * is the caller's and outlives the call. */
static klcl_status upload_rows(klcl_context *ctx, const klcl_tensor *t, size_t width, size_t r0, size_t n,
                               cl_mem dst, const char *name)
{
    const size_t stride = klcl_row_stride(t, width);
    const float *src = (const float *)t->host + r0 * stride;
    cl_int err;
    if (stride == width || n == 1) {
        err = clEnqueueWriteBuffer(ctx->queue, dst, CL_FALSE, 0, n * width * sizeof(float), src, 0, NULL, NULL);
    } else {
        const size_t origin[3] = {0, 0, 0}, region[3] = {width * sizeof(float), n, 1};
        err = clEnqueueWriteBufferRect(ctx->queue, dst, CL_FALSE, origin, origin, region, width * sizeof(float), 0,
                                       stride * sizeof(float), 0, src, 0, NULL, NULL);
    }
    return err == CL_SUCCESS ? KLCL_OK : klcl_fail(ctx, (klcl_status)err, "clEnqueueWriteBuffer (upload of %s) failed: %s (%d)",
                                                   name, klcl_status_string(err), (int)err);
}

static klcl_status download_rows(klcl_context *ctx, cl_mem src, const klcl_tensor *t, size_t width, size_t r0,
                                 size_t n, const char *name)
{
    const size_t stride = klcl_row_stride(t, width);
    float *dst = (float *)t->host + r0 * stride;
    cl_int err;
    if (stride == width || n == 1) {
        err = clEnqueueReadBuffer(ctx->queue, src, CL_FALSE, 0, n * width * sizeof(float), dst, 0, NULL, NULL);
    } else {
        const size_t origin[3] = {0, 0, 0}, region[3] = {width * sizeof(float), n, 1};
        err = clEnqueueReadBufferRect(ctx->queue, src, CL_FALSE, origin, origin, region, width * sizeof(float), 0,
                                      stride * sizeof(float), 0, dst, 0, NULL, NULL);
    }
    return err == CL_SUCCESS ? KLCL_OK : klcl_fail(ctx, (klcl_status)err, "clEnqueueReadBuffer (download of %s) failed: %s (%d)",
                                                   name, klcl_status_string(err), (int)err);
}

/* Rows [r0, r0 + n) of a matrix tensor as CLBlast sees them: the caller's buffer in place, or `stage` (a
 * dense buffer) after uploading host rows when `upload` is set. */
static klcl_status rows_view(klcl_context *ctx, const klcl_tensor *t, size_t width, size_t r0, size_t n,
                             cl_mem stage, int upload, const char *name, view *out)
{
    if (t->mem) {
        out->mem = t->mem;
        out->ld = klcl_row_stride(t, width);
        out->off = t->offset / sizeof(float) + r0 * out->ld;
        return KLCL_OK;
    }
    out->mem = stage;
    out->off = 0;
    out->ld = width;
    return upload ? upload_rows(ctx, t, width, r0, n, stage, name) : KLCL_OK;
}

/* ------------------------------------------------------------------------------------------------------ */
/* Argument checks                                                                                          */

static int given(const klcl_tensor *t)
{
    return t->host != NULL || t->mem != NULL;
}

/* A matrix (rows x width, with a stride) or a vector (rows elements) of `elem`-byte elements. */
static klcl_status check_tensor(klcl_context *ctx, const char *name, const klcl_tensor *t, size_t rows,
                                size_t width, size_t elem, int matrix, int required)
{
    if (!given(t))
        return required ? klcl_fail(ctx, KLCL_ERR_NULL_POINTER, "%s is missing (host and mem both NULL)", name)
                        : KLCL_OK;
    if (t->host && t->mem) return klcl_fail(ctx, KLCL_ERR_INVALID_VALUE, "%s: set host or mem, not both", name);
    if (t->dtype != KLCL_DTYPE_F32) {
        const char *dn = klcl_dtype_name(t->dtype);
        return dn ? klcl_fail(ctx, KLCL_ERR_UNSUPPORTED, "%s.dtype is %s: the fused path takes fp32 only for now", name, dn)
                  : klcl_fail(ctx, KLCL_ERR_INVALID_VALUE, "%s.dtype is %d: not a klcl_dtype", name, (int)t->dtype);
    }
    size_t extent = rows;
    if (matrix) {
        size_t stride = klcl_row_stride(t, width);
        if (stride < width)
            return klcl_fail(ctx, KLCL_ERR_INVALID_SHAPE, "%s.stride (%zu) is smaller than the row width (%zu)", name,
                             stride, width);
        if (width > SIZE_MAX / elem || (rows - 1) > (SIZE_MAX / elem - width) / stride)
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
    if ((st = check_tensor(ctx, name, &l->hidden, rows, l->dim, sizeof(float), 1, 1)) != KLCL_OK) return st;
    snprintf(name, sizeof name, "batch->%s.weight", side);
    if ((st = check_tensor(ctx, name, &l->weight, l->vocab, l->dim, sizeof(float), 1, 1)) != KLCL_OK) return st;
    snprintf(name, sizeof name, "batch->%s.bias", side);
    return check_tensor(ctx, name, &l->bias, l->vocab, 1, sizeof(float), 0, 0);
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
    if ((st = check_tensor(ctx, "batch->teacher_logits", &b->teacher_logits, rows, vocab, sizeof(float), 1, 0)) ||
        (st = check_tensor(ctx, "batch->labels", &b->labels, rows, 1, sizeof(int32_t), 0, needs_labels)) ||
        (st = check_tensor(ctx, "batch->mask", &b->mask, rows, 1, sizeof(uint8_t), 0, 0)) ||
        (st = check_tensor(ctx, "batch->grad_hidden", &b->grad_hidden, rows, dim, sizeof(float), 1, 0)) ||
        (st = check_tensor(ctx, "batch->grad_weight", &b->grad_weight, vocab, dim, sizeof(float), 1, 0)) ||
        (st = check_tensor(ctx, "batch->grad_bias", &b->grad_bias, vocab, 1, sizeof(float), 0, 0)) ||
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

static klcl_status fused_compute(klcl_context *ctx, const klcl_loss_desc *desc, const klcl_fused_batch *b,
                                 const klcl_fused_options *opt, klcl_result *result, klcl_fused_info *info)
{
    const size_t rows = b->rows, vocab = b->student.vocab, dim = b->student.dim;
    const klcl_linear *S = &b->student, *T = &b->teacher;
    const int teacher_linear = given(&T->hidden);
    const size_t tdim = teacher_linear ? T->dim : 0;
    const int want_dh = given(&b->grad_hidden), want_dw = given(&b->grad_weight), want_db = given(&b->grad_bias);
    const int want_grad = want_dh || want_dw || want_db;
    const int has_bias = given(&S->bias), teacher_bias = teacher_linear && given(&T->bias);
    fused_call f = {ctx, {NULL}, 0, 0};
    void *labels_copy = NULL, *mask_copy = NULL;
    const int32_t *labels = NULL;
    const uint8_t *mask = NULL;
    const int saved_verify = ctx->verify;
    klcl_status st = klcl_program_build(ctx);
    if (st != KLCL_OK) goto done;

    /* Labels and mask on the host: every label checked with its row named, and the rows not skipped counted
     * for the mean's denominator before the first chunk's gradient is scaled by it. */
    if ((st = host_vector(ctx, &b->labels, rows * sizeof(int32_t), &labels_copy, (const void **)&labels,
                          "batch->labels")) != KLCL_OK ||
        (st = host_vector(ctx, &b->mask, rows, &mask_copy, (const void **)&mask, "batch->mask")) != KLCL_OK)
        goto done;
    size_t used = 0;
    for (size_t i = 0; i < rows; i++) {
        if (labels && labels[i] != desc->ignore_index && (labels[i] < 0 || (size_t)labels[i] >= vocab)) {
            st = klcl_fail(ctx, KLCL_ERR_LABEL_OUT_OF_RANGE,
                           "batch->labels[%zu] is %d: outside [0, %zu) and not ignore_index (%d)", i, (int)labels[i],
                           vocab, (int)desc->ignore_index);
            goto done;
        }
        used += !(labels && labels[i] == desc->ignore_index) && !(mask && mask[i] == 0);
    }
    const float alpha = (float)(1.0 / klcl_denominator(desc->reduction, rows, used));

    /* Chunk size, then the buffers of one chunk: logits, staged host rows, the ones vector. */
    const size_t logits_buffers = 1 + (size_t)teacher_linear + (size_t)(b->teacher_logits.host != NULL);
    size_t row_bytes = (RS_COUNT + RF_COUNT + 3) * sizeof(float) + 1;
    if (S->hidden.host) row_bytes += dim * sizeof(float);
    if (teacher_linear && T->hidden.host) row_bytes += tdim * sizeof(float);
    if (b->grad_hidden.host) row_bytes += dim * sizeof(float);
    size_t fixed = 0;
    if (S->weight.host) fixed += vocab * dim * sizeof(float);
    if (teacher_linear && T->weight.host) fixed += vocab * tdim * sizeof(float);
    if (b->grad_weight.host) fixed += vocab * dim * sizeof(float);
    size_t chunk = opt->chunk_rows ? (opt->chunk_rows < rows ? opt->chunk_rows : rows)
                                   : auto_chunk_rows(ctx, rows, vocab, logits_buffers, row_bytes, fixed);
    if (chunk > SIZE_MAX / sizeof(float) / vocab) {
        st = klcl_fail(ctx, KLCL_ERR_INVALID_SHAPE, "options->chunk_rows (%zu) x vocab overflows size_t", chunk);
        goto done;
    }

    cl_mem zs, zt = NULL, hs_stage = NULL, ht_stage = NULL, dh_stage = NULL, ones = NULL, ws_buf = NULL, wt_buf = NULL;
    cl_mem bs_buf = NULL, bt_buf = NULL, dw_buf = NULL, db_buf = NULL;
    if ((st = call_alloc(&f, chunk * vocab * sizeof(float), "the student's logits chunk", &zs)) != KLCL_OK ||
        (teacher_linear &&
         (st = call_alloc(&f, chunk * vocab * sizeof(float), "the teacher's logits chunk", &zt)) != KLCL_OK) ||
        (S->hidden.host && (st = call_alloc(&f, chunk * dim * sizeof(float), "batch->student.hidden", &hs_stage))) ||
        (teacher_linear && T->hidden.host &&
         (st = call_alloc(&f, chunk * tdim * sizeof(float), "batch->teacher.hidden", &ht_stage))) ||
        (b->grad_hidden.host && (st = call_alloc(&f, chunk * dim * sizeof(float), "batch->grad_hidden", &dh_stage))) ||
        (S->weight.host && (st = call_alloc(&f, vocab * dim * sizeof(float), "batch->student.weight", &ws_buf))) ||
        (teacher_linear && T->weight.host &&
         (st = call_alloc(&f, vocab * tdim * sizeof(float), "batch->teacher.weight", &wt_buf))) ||
        (S->bias.host && (st = call_alloc(&f, vocab * sizeof(float), "batch->student.bias", &bs_buf))) ||
        (teacher_bias && T->bias.host &&
         (st = call_alloc(&f, vocab * sizeof(float), "batch->teacher.bias", &bt_buf))) ||
        (b->grad_weight.host && (st = call_alloc(&f, vocab * dim * sizeof(float), "batch->grad_weight", &dw_buf))) ||
        (b->grad_bias.host && (st = call_alloc(&f, vocab * sizeof(float), "batch->grad_bias", &db_buf))) ||
        ((has_bias || teacher_bias || want_db) &&
         (st = call_alloc(&f, chunk * sizeof(float), "a ones vector", &ones))))
        goto done;
    if (ones) {
        const float one = 1.0f;
        cl_int err = clEnqueueFillBuffer(ctx->queue, ones, &one, sizeof one, 0, chunk * sizeof(float), 0, NULL, NULL);
        if (err != CL_SUCCESS) {
            st = klcl_fail_cl(ctx, err, "clEnqueueFillBuffer (ones)");
            goto done;
        }
    }

    /* Whole-call views: heads and biases (uploaded once when on the host), dW and db. */
    view ws, wt = {0}, bs = {0}, bt = {0}, dw = {0}, db = {0};
    const klcl_tensor *grad_bias_t = &b->grad_bias;
    if ((st = rows_view(ctx, &S->weight, dim, 0, vocab, ws_buf, 1, "batch->student.weight", &ws)) != KLCL_OK ||
        (teacher_linear &&
         (st = rows_view(ctx, &T->weight, tdim, 0, vocab, wt_buf, 1, "batch->teacher.weight", &wt)) != KLCL_OK) ||
        (has_bias && (st = rows_view(ctx, &S->bias, vocab, 0, 1, bs_buf, 1, "batch->student.bias", &bs)) != KLCL_OK) ||
        (teacher_bias &&
         (st = rows_view(ctx, &T->bias, vocab, 0, 1, bt_buf, 1, "batch->teacher.bias", &bt)) != KLCL_OK) ||
        (want_dw && (st = rows_view(ctx, &b->grad_weight, dim, 0, vocab, dw_buf, opt->accumulate,
                                    "batch->grad_weight", &dw)) != KLCL_OK) ||
        (want_db && (st = rows_view(ctx, grad_bias_t, vocab, 0, 1, db_buf, opt->accumulate, "batch->grad_bias",
                                    &db)) != KLCL_OK))
        goto done;
    /* Biases are vectors: one row of vocab elements. */
    bs.ld = bt.ld = db.ld = vocab;

    klcl_loss_desc chunk_desc = *desc;
    chunk_desc.reduction = KLCL_REDUCTION_SUM; /* 1/denominator goes into the GEMMs' alpha */
    klcl_tally tally;
    memset(&tally, 0, sizeof tally);
    /* klcl_compute's verify mode would read the student logits after the gradient overwrote them. */
    ctx->verify = 0;
    size_t chunks = 0;
    for (size_t r0 = 0; r0 < rows; r0 += chunk, chunks++) {
        const size_t n = rows - r0 < chunk ? rows - r0 : chunk;
        const int first = r0 == 0;
        view hs, ht;
        if ((st = rows_view(ctx, &S->hidden, dim, r0, n, hs_stage, 1, "batch->student.hidden", &hs)) != KLCL_OK ||
            (st = project(ctx, n, vocab, dim, hs, ws, has_bias ? &bs : NULL, (view){ones, 0, 1}, zs,
                          "student logits")) != KLCL_OK)
            goto done;
        if (teacher_linear &&
            ((st = rows_view(ctx, &T->hidden, tdim, r0, n, ht_stage, 1, "batch->teacher.hidden", &ht)) != KLCL_OK ||
             (st = project(ctx, n, vocab, tdim, ht, wt, teacher_bias ? &bt : NULL, (view){ones, 0, 1}, zt,
                           "teacher logits")) != KLCL_OK))
            goto done;

        klcl_batch kb = KLCL_BATCH_INIT;
        kb.rows = n;
        kb.vocab = vocab;
        kb.student = klcl_mem_tensor(zs, 0, vocab);
        if (teacher_linear) kb.teacher = klcl_mem_tensor(zt, 0, vocab);
        else if (given(&b->teacher_logits)) kb.teacher = tensor_rows(&b->teacher_logits, vocab, sizeof(float), r0);
        if (labels) kb.labels = klcl_host_tensor(labels + r0, 0);
        if (mask) kb.mask = klcl_host_tensor(mask + r0, 0);
        if (want_grad) kb.grad = klcl_mem_tensor(zs, 0, vocab); /* element-wise: reads s[v], then writes g[v] */
        if (given(&b->row_loss)) kb.row_loss = tensor_rows(&b->row_loss, 0, sizeof(float), r0);
        klcl_result r;
        st = klcl_compute(ctx, &chunk_desc, &kb, &r);
        if (st != KLCL_OK) {
            char msg[sizeof ctx->error];
            memcpy(msg, ctx->error, sizeof msg);
            klcl_fail(ctx, st, "chunk of rows [%zu, %zu): %s", r0, r0 + n, msg);
            goto done;
        }
        tally_chunk(&tally, &r, r0, labels != NULL);

        const view dz = {zs, 0, vocab};
        if (want_dh) {
            view dh;
            if ((st = rows_view(ctx, &b->grad_hidden, dim, r0, n, dh_stage, 0, "batch->grad_hidden", &dh)) != KLCL_OK ||
                (st = gemm(ctx, 0, 0, n, dim, vocab, alpha, dz, ws, 0.0f, dh, "grad_hidden")) != KLCL_OK ||
                (b->grad_hidden.host &&
                 (st = download_rows(ctx, dh_stage, &b->grad_hidden, dim, r0, n, "batch->grad_hidden")) != KLCL_OK))
                goto done;
        }
        const float beta = first && !opt->accumulate ? 0.0f : 1.0f;
        if (want_dw && (st = gemm(ctx, 1, 0, vocab, dim, n, alpha, dz, hs, beta, dw, "grad_weight")) != KLCL_OK)
            goto done;
        if (want_db &&
            (st = gemm(ctx, 0, 0, 1, vocab, n, alpha, (view){ones, 0, n}, dz, beta, db, "grad_bias")) != KLCL_OK)
            goto done;
    }
    if ((b->grad_weight.host &&
         (st = download_rows(ctx, dw_buf, &b->grad_weight, dim, 0, vocab, "batch->grad_weight")) != KLCL_OK) ||
        (b->grad_bias.host && (st = download_rows(ctx, db_buf, grad_bias_t, vocab, 0, 1, "batch->grad_bias")) != KLCL_OK))
        goto done;
    cl_int err = clFinish(ctx->queue);
    if (err != CL_SUCCESS) {
        st = klcl_fail_cl(ctx, err, "clFinish");
        goto done;
    }
    klcl_tally_finish(&tally, desc->reduction, rows, result);
    if (info) {
        size_t scratch = 0;
        for (int i = 0; i < SCRATCH_COUNT; i++) scratch += ctx->scratch[i].bytes;
        info->chunk_rows = chunk;
        info->chunks = chunks;
        info->device_bytes = f.bytes + scratch;
    }
done:
    ctx->verify = saved_verify;
    if (st != KLCL_OK) clFinish(ctx->queue); /* nothing may still read or write caller memory after return */
    call_release(&f);
    free(labels_copy);
    free(mask_copy);
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
    klcl_status st = klcl_program_build(ctx);
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
