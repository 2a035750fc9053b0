/* klcl_compute_sparse: the sparse (top-k) teacher. Argument checks, then the OpenCL path (upload, row
 * kernel, host reduction, dense then top-k gradient kernels, download) or the CPU reference, and verify
 * mode on top. The kernels are kernels_cl/sparse.cl; the math is LOSSES.md's "Sparse teacher". */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Mirrors SS_COUNT and SP_FLAG_* of kernels_cl/sparse.cl. */
enum { SS_COUNT = 12, SS_H_T = 10, SS_H_S = 11 };
enum { SP_FLAG_RANGE = 128, SP_FLAG_REPEAT = 256 };
enum { ROWS_PER_LAUNCH = 32768, GRAD_ITEMS_PER_ROW_MAX = 4096 };

klcl_status klcl_sparse_kernels_create(klcl_context *ctx, klcl_program *v, size_t *kernel_limit)
{
    cl_int err;
    struct {
        cl_kernel *k;
        const char *name;
    } ks[] = {
        {&v->sparse_rows_kernel, "klcl_sparse_rows"},
        {&v->sparse_grad_dense_kernel, "klcl_sparse_grad_dense"},
        {&v->sparse_grad_topk_kernel, "klcl_sparse_grad_topk"},
    };
    for (size_t i = 0; i < sizeof ks / sizeof ks[0]; i++) {
        *ks[i].k = clCreateKernel(v->program[KLCL_GROUP_SHARED], ks[i].name, &err);
        if (!*ks[i].k) return klcl_fail_cl(ctx, err, "clCreateKernel (sparse kernels)");
    }
    size_t limit = 0;
    err = clGetKernelWorkGroupInfo(v->sparse_rows_kernel, ctx->device, CL_KERNEL_WORK_GROUP_SIZE, sizeof limit,
                                   &limit, NULL);
    if (err != CL_SUCCESS) return klcl_fail_cl(ctx, err, "clGetKernelWorkGroupInfo");
    if (limit < *kernel_limit) *kernel_limit = limit;
    return KLCL_OK;
}

void klcl_sparse_kernels_release(klcl_program *v)
{
    cl_kernel *ks[] = {&v->sparse_rows_kernel, &v->sparse_grad_dense_kernel, &v->sparse_grad_topk_kernel};
    for (size_t i = 0; i < sizeof ks / sizeof ks[0]; i++) {
        if (*ks[i]) clReleaseKernel(*ks[i]);
        *ks[i] = NULL;
    }
}

/* ------------------------------------------------------------------------------------------------------ */
/* Argument checks                                                                                          */

/* One of the two N x k tensors of the sparse teacher (4-byte elements). */
static klcl_status check_sparse_tensor(klcl_context *ctx, const char *name, const klcl_tensor *t, size_t rows,
                                       size_t k)
{
    if (!t->host && !t->mem)
        return klcl_fail(ctx, KLCL_ERR_NULL_POINTER, "sparse->%s is missing (host and mem both NULL)", name);
    if (t->host && t->mem) return klcl_fail(ctx, KLCL_ERR_INVALID_VALUE, "sparse->%s: set host or mem, not both", name);
    const size_t stride = klcl_row_stride(t, k), elem = 4;
    if (stride < k)
        return klcl_fail(ctx, KLCL_ERR_INVALID_SHAPE, "sparse->%s.stride (%zu) is smaller than k (%zu)", name, stride, k);
    if ((rows - 1) > (SIZE_MAX / elem - k) / stride)
        return klcl_fail(ctx, KLCL_ERR_INVALID_SHAPE, "sparse->%s: rows x stride overflows size_t", name);
    if (!t->mem) return KLCL_OK;
    if (ctx->is_reference)
        return klcl_fail(ctx, KLCL_ERR_UNSUPPORTED, "sparse->%s.mem: the CPU reference takes host tensors only", name);
    if (t->offset % elem)
        return klcl_fail(ctx, KLCL_ERR_MISALIGNED, "sparse->%s.offset (%zu) is not a multiple of %zu bytes", name,
                         t->offset, elem);
    size_t size = 0, extent = (rows - 1) * stride + k;
    cl_int err = clGetMemObjectInfo(t->mem, CL_MEM_SIZE, sizeof size, &size, NULL);
    if (err != CL_SUCCESS) {
        klcl_fail_cl(ctx, err, "clGetMemObjectInfo");
        return klcl_fail(ctx, (klcl_status)err, "sparse->%s.mem is not a valid buffer: %s", name,
                         klcl_status_string(err));
    }
    if (t->offset > size || (size - t->offset) / elem < extent)
        return klcl_fail(ctx, KLCL_ERR_BUFFER_TOO_SMALL,
                         "sparse->%s.mem holds %zu bytes; offset %zu + %zu elements of %zu bytes do not fit", name,
                         size, t->offset, extent, elem);
    return KLCL_OK;
}

static klcl_status check_sparse(klcl_context *ctx, const klcl_loss_desc *desc, const klcl_batch *b,
                                const klcl_sparse_teacher *sp)
{
    klcl_status st = klcl_check_desc(desc, ctx);
    if (st != KLCL_OK) return st;
    if (!klcl_sparse_loss_supported(desc->loss))
        return klcl_fail(ctx, KLCL_ERR_UNSUPPORTED,
                         "desc->loss %s: a sparse teacher serves kl, rkl, soft_ce, jsd and tvd only",
                         klcl_loss_name(desc->loss));
    if (!b) return klcl_fail(ctx, KLCL_ERR_NULL_POINTER, "batch is NULL");
    if (!sp) return klcl_fail(ctx, KLCL_ERR_NULL_POINTER, "sparse is NULL");
    if (b->teacher.host || b->teacher.mem)
        return klcl_fail(ctx, KLCL_ERR_INVALID_VALUE,
                         "batch->teacher must be unset: the teacher is sparse->indices and sparse->logprobs");
    if (b->teacher_vocab || b->teacher_logprobs)
        return klcl_fail(ctx, KLCL_ERR_INVALID_VALUE, "batch->%s must be 0: the sparse teacher's width is vocab and "
                         "its values are log-probabilities already",
                         b->teacher_vocab ? "teacher_vocab" : "teacher_logprobs");
    if (sp->policy != KLCL_SPARSE_RENORM && sp->policy != KLCL_SPARSE_TAIL)
        return klcl_fail(ctx, KLCL_ERR_INVALID_VALUE, "sparse->policy: unknown policy %d", (int)sp->policy);
    /* The dense checks serve the student, labels, mask and outputs; the student stands in for the teacher
     * that they require and that a sparse call leaves unset. */
    klcl_batch dense = *b;
    dense.teacher = b->student;
    st = klcl_check_batch(ctx, desc, &dense);
    if (st != KLCL_OK) return st;
    if (sp->k == 0) return klcl_fail(ctx, KLCL_ERR_INVALID_SHAPE, "sparse->k is 0");
    if (sp->k > KLCL_SPARSE_K_MAX)
        return klcl_fail(ctx, KLCL_ERR_INVALID_SHAPE, "sparse->k (%zu) exceeds KLCL_SPARSE_K_MAX (%d)", sp->k,
                         KLCL_SPARSE_K_MAX);
    if (sp->k > b->vocab)
        return klcl_fail(ctx, KLCL_ERR_INVALID_SHAPE, "sparse->k (%zu) exceeds vocab (%zu)", sp->k, b->vocab);
    if ((st = check_sparse_tensor(ctx, "indices", &sp->indices, b->rows, sp->k)) != KLCL_OK ||
        (st = check_sparse_tensor(ctx, "logprobs", &sp->logprobs, b->rows, sp->k)) != KLCL_OK)
        return st;

    /* Host indices are checked here, row by row; rows skipped by mask or ignore_index are not read. When
     * the mask or labels live on the device, which rows are used is known there only: the row kernel
     * checks every used row's indices whatever their memory (and the call fails naming the row). */
    if (!sp->indices.host || b->labels.mem || b->mask.mem) return KLCL_OK;
    const int32_t *idx = sp->indices.host, *labels = b->labels.host;
    const uint8_t *mask = b->mask.host;
    const size_t is = klcl_row_stride(&sp->indices, sp->k);
    int32_t *work = malloc(sp->k * sizeof *work);
    if (!work) return klcl_fail(ctx, KLCL_ERR_OUT_OF_HOST_MEMORY, "checking sparse->indices: out of host memory");
    for (size_t i = 0; i < b->rows && st == KLCL_OK; i++) {
        if ((mask && mask[i] == 0) || (labels && labels[i] == desc->ignore_index)) continue;
        int32_t bad = 0;
        int why = klcl_sparse_check_row(idx + i * is, sp->k, b->vocab, work, &bad);
        if (why == 1)
            st = klcl_fail(ctx, KLCL_ERR_INVALID_VALUE, "sparse->indices row %zu: index %d is outside [0, %zu)", i,
                           (int)bad, b->vocab);
        else if (why == 2)
            st = klcl_fail(ctx, KLCL_ERR_INVALID_VALUE, "sparse->indices row %zu: token %d appears more than once", i,
                           (int)bad);
    }
    free(work);
    return st;
}

/* ------------------------------------------------------------------------------------------------------ */
/* OpenCL path                                                                                              */

typedef struct bound {
    cl_mem mem;
    cl_ulong offset; /* elements */
    cl_ulong stride; /* elements */
    int given;
} bound;

/* An input: the caller's buffer, or host memory uploaded (rows packed to `width`) into scratch `which`.
 * Vectors are width 1 with rows elements. */
static klcl_status bind_input(klcl_context *ctx, const klcl_tensor *t, int which, size_t elem, size_t rows,
                              size_t width, int matrix, bound *out)
{
    memset(out, 0, sizeof *out);
    out->mem = ctx->scratch[SCRATCH_DUMMY].mem;
    if (!t->host && !t->mem) return KLCL_OK;
    out->given = 1;
    const size_t stride = matrix ? klcl_row_stride(t, width) : 1;
    if (t->mem) {
        out->mem = t->mem;
        out->offset = t->offset / elem;
        out->stride = stride;
        return KLCL_OK;
    }
    const size_t cols = matrix ? width : 1;
    klcl_status st = klcl_scratch_reserve(ctx, which, rows * cols * elem);
    if (st != KLCL_OK) return st;
    out->mem = ctx->scratch[which].mem;
    out->stride = cols;
    cl_int err;
    if (matrix && stride != width) {
        const size_t origin[3] = {0, 0, 0}, region[3] = {width * elem, rows, 1};
        err = clEnqueueWriteBufferRect(ctx->queue, out->mem, CL_TRUE, origin, origin, region, width * elem, 0,
                                       stride * elem, 0, t->host, 0, NULL, NULL);
    } else {
        err = clEnqueueWriteBuffer(ctx->queue, out->mem, CL_TRUE, 0, rows * cols * elem, t->host, 0, NULL, NULL);
    }
    return err == CL_SUCCESS ? KLCL_OK : klcl_fail_cl(ctx, err, "clEnqueueWriteBuffer (upload)");
}

/* An output: the caller's buffer, or scratch `which` to download afterwards. */
static klcl_status bind_output(klcl_context *ctx, const klcl_tensor *t, int which, size_t elem, size_t rows,
                               size_t width, int matrix, bound *out)
{
    memset(out, 0, sizeof *out);
    out->given = t->host || t->mem;
    if (t->mem) {
        out->mem = t->mem;
        out->offset = t->offset / elem;
        out->stride = matrix ? klcl_row_stride(t, width) : 1;
        return KLCL_OK;
    }
    const size_t cols = matrix ? width : 1;
    klcl_status st = klcl_scratch_reserve(ctx, which, rows * cols * elem);
    if (st != KLCL_OK) return st;
    out->mem = ctx->scratch[which].mem;
    out->stride = cols;
    return KLCL_OK;
}

static void arg_bound(arg_setter *a, const bound *b, int with_stride)
{
    arg(a, sizeof(cl_mem), &b->mem);
    arg(a, sizeof(cl_ulong), &b->offset);
    if (with_stride) arg(a, sizeof(cl_ulong), &b->stride);
}

static void arg_float(arg_setter *a, float v)
{
    arg(a, sizeof v, &v);
}

static klcl_status launch(klcl_context *ctx, cl_kernel k, cl_uint dims, const size_t *global, const size_t *local,
                          const char *what)
{
    cl_int err = clEnqueueNDRangeKernel(ctx->queue, k, dims, NULL, global, local, 0, NULL, NULL);
    if (err == CL_SUCCESS) return KLCL_OK;
    klcl_fail_cl(ctx, err, "clEnqueueNDRangeKernel");
    return klcl_fail(ctx, (klcl_status)err, "clEnqueueNDRangeKernel (%s): %s", what, klcl_status_string(err));
}

/* Host copy of a cl_mem tensor for verify mode (count elements from its offset). */
static klcl_status pull(klcl_context *ctx, const klcl_tensor *t, size_t elem, size_t count, void **copy)
{
    *copy = malloc(count * elem);
    if (!*copy) return klcl_fail(ctx, KLCL_ERR_OUT_OF_HOST_MEMORY, "verify: out of host memory");
    cl_int err = clEnqueueReadBuffer(ctx->queue, t->mem, CL_TRUE, t->offset, count * elem, *copy, 0, NULL, NULL);
    return err == CL_SUCCESS ? KLCL_OK : klcl_fail_cl(ctx, err, "clEnqueueReadBuffer (verify)");
}

/* One chunk of rows of a sparse call (the whole batch when it fits): b and sp are views of rows
 * [row_base, row_base + b->rows) of the caller's batch. Row kernel, per-row results into the shared tally
 * (in row order, so the reduction does not depend on the chunking) and into row_loss_all, then the
 * gradient with the whole call's 1/denominator. */
static klcl_status sparse_chunk(klcl_context *ctx, const klcl_loss_desc *desc, const klcl_batch *b,
                                const klcl_sparse_teacher *sp, const klcl_program *prog, size_t row_base,
                                float inv_denom, klcl_tally *tally, float *row_loss_all)
{
    const klcl_dtype gdt = (b->grad.host || b->grad.mem) ? b->grad.dtype : KLCL_DTYPE_F32;
    const size_t rows = b->rows, vocab = b->vocab, k = sp->k;
    const size_t s_elem = klcl_dtype_size(b->student.dtype), g_elem = klcl_dtype_size(gdt);
    const klcl_loss kind = klcl_effective_loss(desc);
    float *row_loss = NULL, *stats = NULL;
    cl_int *flags = NULL;
    cl_int err;
    klcl_status st;

    if ((st = klcl_scratch_reserve(ctx, SCRATCH_DUMMY, 64)) != KLCL_OK) goto done;
    bound s, y, m, ix, lp, rl, g;
    if ((st = bind_input(ctx, &b->student, SCRATCH_STUDENT, s_elem, rows, vocab, 1, &s)) != KLCL_OK ||
        (st = bind_input(ctx, &b->labels, SCRATCH_LABELS, sizeof(int32_t), rows, 1, 0, &y)) != KLCL_OK ||
        (st = bind_input(ctx, &b->mask, SCRATCH_MASK, sizeof(uint8_t), rows, 1, 0, &m)) != KLCL_OK ||
        (st = bind_input(ctx, &sp->indices, SCRATCH_SPARSE_INDICES, sizeof(int32_t), rows, k, 1, &ix)) != KLCL_OK ||
        (st = bind_input(ctx, &sp->logprobs, SCRATCH_SPARSE_LOGPROBS, sizeof(float), rows, k, 1, &lp)) != KLCL_OK ||
        (st = bind_output(ctx, &b->row_loss, SCRATCH_ROW_LOSS, sizeof(float), rows, 1, 0, &rl)) != KLCL_OK ||
        (st = klcl_scratch_reserve(ctx, SCRATCH_ROW_STATS, rows * SS_COUNT * sizeof(float))) != KLCL_OK ||
        (st = klcl_scratch_reserve(ctx, SCRATCH_ROW_FLAGS, rows * RF_COUNT * sizeof(cl_int))) != KLCL_OK)
        goto done;
    cl_mem rs = ctx->scratch[SCRATCH_ROW_STATS].mem, rf = ctx->scratch[SCRATCH_ROW_FLAGS].mem;

    const cl_uint vocab_u = (cl_uint)vocab, k_u = (cl_uint)k;
    const cl_int has_labels = y.given, has_mask = m.given, loss_id = (cl_int)kind, policy = (cl_int)sp->policy;
    const cl_int ignore_index = desc->ignore_index;
    const float inv_tau = (float)(1.0 / (double)desc->tau);
    const float lwa = (float)log((double)desc->beta), lwb = (float)log1p(-(double)desc->beta);
    for (size_t r0 = 0; r0 < rows; r0 += ROWS_PER_LAUNCH) {
        const size_t n = rows - r0 < ROWS_PER_LAUNCH ? rows - r0 : ROWS_PER_LAUNCH;
        const cl_ulong row0 = r0;
        arg_setter a = {prog->sparse_rows_kernel, 0, CL_SUCCESS};
        arg_bound(&a, &s, 1);
        arg_bound(&a, &ix, 1);
        arg_bound(&a, &lp, 1);
        arg_bound(&a, &y, 0);
        arg(&a, sizeof(cl_int), &has_labels);
        arg_bound(&a, &m, 0);
        arg(&a, sizeof(cl_int), &has_mask);
        arg(&a, sizeof(cl_uint), &vocab_u);
        arg(&a, sizeof(cl_uint), &k_u);
        arg(&a, sizeof(cl_int), &loss_id);
        arg(&a, sizeof(cl_int), &policy);
        arg(&a, sizeof(cl_int), &ignore_index);
        arg_float(&a, inv_tau);
        arg_float(&a, desc->softcap);
        arg_float(&a, desc->scale);
        arg_float(&a, desc->beta);
        arg_float(&a, lwa);
        arg_float(&a, lwb);
        arg_bound(&a, &rl, 0);
        arg(&a, sizeof(cl_mem), &rs);
        arg(&a, sizeof(cl_mem), &rf);
        arg(&a, sizeof(cl_ulong), &row0);
        if (a.err != CL_SUCCESS) {
            st = klcl_fail_cl(ctx, a.err, "clSetKernelArg (sparse row kernel)");
            goto done;
        }
        const size_t global = n * ctx->wg, local = ctx->wg;
        if ((st = launch(ctx, prog->sparse_rows_kernel, 1, &global, &local, "sparse row kernel")) != KLCL_OK) goto done;
    }

    row_loss = malloc(rows * sizeof *row_loss);
    stats = malloc(rows * SS_COUNT * sizeof *stats);
    flags = malloc(rows * RF_COUNT * sizeof *flags);
    if (!row_loss || !stats || !flags) {
        st = klcl_fail(ctx, KLCL_ERR_OUT_OF_HOST_MEMORY, "per-row results: out of host memory");
        goto done;
    }
    err = clEnqueueReadBuffer(ctx->queue, rl.mem, CL_FALSE, rl.offset * sizeof(float), rows * sizeof(float), row_loss,
                              0, NULL, NULL);
    if (err == CL_SUCCESS)
        err = clEnqueueReadBuffer(ctx->queue, rs, CL_FALSE, 0, rows * SS_COUNT * sizeof(float), stats, 0, NULL, NULL);
    if (err == CL_SUCCESS)
        err = clEnqueueReadBuffer(ctx->queue, rf, CL_TRUE, 0, rows * RF_COUNT * sizeof(cl_int), flags, 0, NULL, NULL);
    if (err != CL_SUCCESS) {
        st = klcl_fail_cl(ctx, err, "clEnqueueReadBuffer (per-row results)");
        goto done;
    }
    for (size_t i = 0; i < rows; i++) {
        const int f = flags[i * RF_COUNT + RF_FLAGS];
        if (f & FLAG_BAD_LABEL) {
            st = klcl_fail(ctx, KLCL_ERR_LABEL_OUT_OF_RANGE,
                           "batch->labels[%zu] is outside [0, %zu) and not ignore_index (%d)", row_base + i, vocab,
                           (int)desc->ignore_index);
            goto done;
        }
        if (f & (SP_FLAG_RANGE | SP_FLAG_REPEAT)) {
            st = klcl_fail(ctx, KLCL_ERR_INVALID_VALUE, "sparse->indices row %zu: %s", row_base + i,
                           (f & SP_FLAG_RANGE) ? "an index is outside [0, vocab)" : "a token appears more than once");
            goto done;
        }
        klcl_tally_row(tally, row_base + i, f & FLAG_SKIPPED, row_loss[i], f & FLAG_TEACHER_OK,
                       stats[i * SS_COUNT + SS_H_T], stats[i * SS_COUNT + SS_H_S], f & FLAG_AGREE, has_labels,
                       f & FLAG_CORRECT);
    }
    memcpy(row_loss_all + row_base, row_loss, rows * sizeof(float));

    /* Gradient: every token as if outside K, then the k entries on top (the queue is in order). */
    if (b->grad.host || b->grad.mem) {
        if ((st = bind_output(ctx, &b->grad, SCRATCH_GRAD, g_elem, rows, vocab, 1, &g)) != KLCL_OK) goto done;
        size_t per_row = ((vocab + 7) / 8 + 63) / 64 * 64;
        if (per_row > GRAD_ITEMS_PER_ROW_MAX) per_row = GRAD_ITEMS_PER_ROW_MAX;
        const size_t k_items = (k + 63) / 64 * 64;
        for (size_t r0 = 0; r0 < rows; r0 += ROWS_PER_LAUNCH) {
            const size_t n = rows - r0 < ROWS_PER_LAUNCH ? rows - r0 : ROWS_PER_LAUNCH;
            const cl_ulong row0 = r0;
            arg_setter a = {prog->sparse_grad_dense_kernel, 0, CL_SUCCESS};
            arg_bound(&a, &s, 1);
            arg(&a, sizeof(cl_uint), &vocab_u);
            arg_float(&a, inv_tau);
            arg_float(&a, desc->softcap);
            arg_float(&a, desc->scale);
            arg_float(&a, inv_denom);
            arg(&a, sizeof(cl_mem), &rs);
            arg(&a, sizeof(cl_mem), &rf);
            arg(&a, sizeof(cl_ulong), &row0);
            arg_bound(&a, &g, 1);
            arg_setter t = {prog->sparse_grad_topk_kernel, 0, CL_SUCCESS};
            arg_bound(&t, &s, 1);
            arg_bound(&t, &ix, 1);
            arg_bound(&t, &lp, 1);
            arg(&t, sizeof(cl_uint), &vocab_u);
            arg(&t, sizeof(cl_uint), &k_u);
            arg(&t, sizeof(cl_int), &loss_id);
            arg_float(&t, inv_tau);
            arg_float(&t, desc->softcap);
            arg_float(&t, desc->scale);
            arg_float(&t, desc->beta);
            arg_float(&t, lwa);
            arg_float(&t, lwb);
            arg_float(&t, inv_denom);
            arg(&t, sizeof(cl_mem), &rs);
            arg(&t, sizeof(cl_mem), &rf);
            arg(&t, sizeof(cl_ulong), &row0);
            arg_bound(&t, &g, 1);
            if (a.err != CL_SUCCESS || t.err != CL_SUCCESS) {
                st = klcl_fail_cl(ctx, a.err != CL_SUCCESS ? a.err : t.err, "clSetKernelArg (sparse gradient kernels)");
                goto done;
            }
            const size_t gd[2] = {per_row, n}, gt[2] = {k_items, n};
            if ((st = launch(ctx, prog->sparse_grad_dense_kernel, 2, gd, NULL, "sparse dense gradient")) != KLCL_OK ||
                (st = launch(ctx, prog->sparse_grad_topk_kernel, 2, gt, NULL, "sparse top-k gradient")) != KLCL_OK)
                goto done;
        }
        if (b->grad.host) {
            const size_t origin[3] = {0, 0, 0}, region[3] = {vocab * g_elem, rows, 1};
            err = clEnqueueReadBufferRect(ctx->queue, g.mem, CL_TRUE, origin, origin, region, vocab * g_elem, 0,
                                          klcl_row_stride(&b->grad, vocab) * g_elem, 0, b->grad.host, 0, NULL, NULL);
            if (err != CL_SUCCESS) {
                st = klcl_fail_cl(ctx, err, "clEnqueueReadBufferRect (gradient download)");
                goto done;
            }
        }
    }
    if (b->row_loss.host) memcpy(b->row_loss.host, row_loss, rows * sizeof(float));
    err = clFinish(ctx->queue);
    if (err != CL_SUCCESS) {
        st = klcl_fail_cl(ctx, err, "clFinish");
        goto done;
    }

done:
    if (st != KLCL_OK) clFinish(ctx->queue); /* nothing may still read caller memory after return */
    free(row_loss);
    free(stats);
    free(flags);
    return st;
}

/* Verify mode over the whole call: host copies of what lives on the device, widened to fp32. */
static klcl_status verify_sparse(klcl_context *ctx, const klcl_loss_desc *desc, const klcl_batch *b,
                                 const klcl_sparse_teacher *sp, const float *row_loss, klcl_result *result)
{
    const klcl_dtype gdt = (b->grad.host || b->grad.mem) ? b->grad.dtype : KLCL_DTYPE_F32;
    const size_t rows = b->rows, vocab = b->vocab, k = sp->k;
    const size_t s_elem = klcl_dtype_size(b->student.dtype), g_elem = klcl_dtype_size(gdt);
    void *copies[6] = {NULL, NULL, NULL, NULL, NULL, NULL};
    float *s_wide = NULL, *g_wide = NULL;
    klcl_status st = KLCL_OK;
    {
        const float *sh = b->student.host, *lph = sp->logprobs.host, *gh = b->grad.host;
        const int32_t *yh = b->labels.host, *ixh = sp->indices.host;
        const uint8_t *mh = b->mask.host;
        const size_t gs = klcl_row_stride(&b->grad, vocab);
        const size_t is = klcl_row_stride(&sp->indices, k), ps = klcl_row_stride(&sp->logprobs, k);
        if ((b->student.mem &&
             (st = pull(ctx, &b->student, s_elem, (rows - 1) * klcl_row_stride(&b->student, vocab) + vocab,
                        &copies[0])) != KLCL_OK) ||
            (b->labels.mem && (st = pull(ctx, &b->labels, sizeof(int32_t), rows, &copies[1])) != KLCL_OK) ||
            (b->mask.mem && (st = pull(ctx, &b->mask, sizeof(uint8_t), rows, &copies[2])) != KLCL_OK) ||
            (sp->indices.mem &&
             (st = pull(ctx, &sp->indices, sizeof(int32_t), (rows - 1) * is + k, &copies[3])) != KLCL_OK) ||
            (sp->logprobs.mem &&
             (st = pull(ctx, &sp->logprobs, sizeof(float), (rows - 1) * ps + k, &copies[4])) != KLCL_OK) ||
            (b->grad.mem && (st = pull(ctx, &b->grad, g_elem, (rows - 1) * gs + vocab, &copies[5])) != KLCL_OK))
            goto done;
        if (copies[0]) sh = copies[0];
        if (copies[1]) yh = copies[1];
        if (copies[2]) mh = copies[2];
        if (copies[3]) ixh = copies[3];
        if (copies[4]) lph = copies[4];
        if (copies[5]) gh = copies[5];
        /* Half-precision student or gradient: the reference compares fp32 copies of the same values. */
        const size_t s_count = (rows - 1) * klcl_row_stride(&b->student, vocab) + vocab;
        if (b->student.dtype != KLCL_DTYPE_F32) {
            if (!(s_wide = malloc(s_count * sizeof *s_wide))) {
                st = klcl_fail(ctx, KLCL_ERR_OUT_OF_HOST_MEMORY, "verify: out of host memory");
                goto done;
            }
            klcl_convert(copies[0] ? copies[0] : b->student.host, b->student.dtype, s_wide, KLCL_DTYPE_F32, s_count);
            sh = s_wide;
        }
        if (gh && gdt != KLCL_DTYPE_F32) {
            if (!(g_wide = malloc(((rows - 1) * gs + vocab) * sizeof *g_wide))) {
                st = klcl_fail(ctx, KLCL_ERR_OUT_OF_HOST_MEMORY, "verify: out of host memory");
                goto done;
            }
            klcl_convert(copies[5] ? copies[5] : b->grad.host, gdt, g_wide, KLCL_DTYPE_F32, (rows - 1) * gs + vocab);
            gh = g_wide;
        }
        st = klcl_sparse_verify(ctx, desc, b, sp, sh, yh, mh, ixh, lph, row_loss, gh, gs, result);
    }
done:
    for (size_t i = 0; i < sizeof copies / sizeof copies[0]; i++) free(copies[i]);
    free(s_wide);
    free(g_wide);
    return st;
}

/* A view of rows [r0, r0 + n) of a tensor: host pointers and cl_mem offsets moved by r0 rows. */
static klcl_tensor rows_of(const klcl_tensor *t, size_t r0, size_t width, size_t elem)
{
    klcl_tensor v = *t;
    const size_t step = r0 * (width ? klcl_row_stride(t, width) : 1) * elem;
    if (v.host) v.host = (char *)v.host + step;
    if (v.mem) v.offset += step;
    return v;
}

/* The device path: the batch in chunks of rows when host inputs are larger than the device wants in one
 * piece (sized like klcl_compute's, or ctx->chunk_rows), reduced in row order, so the results are
 * bit-identical for every chunk size. */
static klcl_status device_compute_sparse(klcl_context *ctx, const klcl_loss_desc *desc, const klcl_batch *b,
                                         const klcl_sparse_teacher *sp, klcl_result *result)
{
    const klcl_dtype gdt = (b->grad.host || b->grad.mem) ? b->grad.dtype : KLCL_DTYPE_F32;
    const size_t rows = b->rows, vocab = b->vocab, k = sp->k;
    const size_t s_elem = klcl_dtype_size(b->student.dtype), g_elem = klcl_dtype_size(gdt);
    const klcl_program *prog = NULL;
    float *row_loss = NULL;
    klcl_status st = klcl_program_group(ctx, KLCL_DTYPE_F32, b->student.dtype, gdt, KLCL_GROUP_SHARED, &prog);
    if (st != KLCL_OK) return st;

    /* 1/denominator of the whole call, before any chunk writes its gradient. */
    size_t used = rows;
    if ((b->grad.host || b->grad.mem) && desc->reduction == KLCL_REDUCTION_MEAN) {
        klcl_batch dense = *b; /* the student stands in for the teacher the dense checks require */
        dense.teacher = b->student;
        if ((st = klcl_count_used(ctx, desc, &dense, &used)) != KLCL_OK) return st;
    }
    const float inv_denom = (float)(1.0 / klcl_denominator(desc->reduction, rows, used));

    /* Rows per chunk: what is on the host goes through device buffers, at most a quarter of the device's
     * memory and one allocation each. */
    size_t per_row = (b->student.host ? vocab * s_elem : 0) + (b->grad.host ? vocab * g_elem : 0) +
                     (sp->indices.host ? k * 4 : 0) + (sp->logprobs.host ? k * 4 : 0);
    size_t chunk = rows;
    if (per_row) {
        cl_ulong global = 0, max_alloc = 0;
        clGetDeviceInfo(ctx->device, CL_DEVICE_GLOBAL_MEM_SIZE, sizeof global, &global, NULL);
        clGetDeviceInfo(ctx->device, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof max_alloc, &max_alloc, NULL);
        const size_t widest = vocab * (s_elem > g_elem ? s_elem : g_elem);
        size_t n = ctx->chunk_rows ? ctx->chunk_rows : (size_t)(global / 4 / per_row);
        if (max_alloc && n > max_alloc / widest) n = (size_t)(max_alloc / widest);
        chunk = n == 0 ? 1 : n < rows ? n : rows;
    }

    row_loss = malloc(rows * sizeof *row_loss);
    if (!row_loss) return klcl_fail(ctx, KLCL_ERR_OUT_OF_HOST_MEMORY, "per-row results: out of host memory");
    klcl_tally tally;
    memset(&tally, 0, sizeof tally);
    for (size_t c0 = 0; c0 < rows && st == KLCL_OK; c0 += chunk) {
        const size_t n = rows - c0 < chunk ? rows - c0 : chunk;
        klcl_batch cb = *b;
        klcl_sparse_teacher cs = *sp;
        cb.rows = n;
        cb.student = rows_of(&b->student, c0, vocab, s_elem);
        cb.grad = rows_of(&b->grad, c0, vocab, g_elem);
        cb.labels = rows_of(&b->labels, c0, 0, sizeof(int32_t));
        cb.mask = rows_of(&b->mask, c0, 0, sizeof(uint8_t));
        cb.row_loss = rows_of(&b->row_loss, c0, 0, sizeof(float));
        cs.indices = rows_of(&sp->indices, c0, k, sizeof(int32_t));
        cs.logprobs = rows_of(&sp->logprobs, c0, k, sizeof(float));
        st = sparse_chunk(ctx, desc, &cb, &cs, prog, c0, inv_denom, &tally, row_loss);
    }
    if (st == KLCL_OK) klcl_tally_finish(&tally, desc->reduction, rows, result);
    if (st == KLCL_OK && ctx->verify) st = verify_sparse(ctx, desc, b, sp, row_loss, result);
    free(row_loss);
    return st;
}

klcl_status klcl_compute_sparse(klcl_context *ctx, const klcl_loss_desc *desc, const klcl_batch *batch,
                                const klcl_sparse_teacher *sparse, klcl_result *result)
{
    if (!ctx) return KLCL_ERR_NULL_POINTER;
    ctx->error[0] = '\0';
    klcl_status st = check_sparse(ctx, desc, batch, sparse);
    if (st != KLCL_OK) return st;
    klcl_result local;
    klcl_result *out = result ? result : &local;
    memset(out, 0, sizeof *out);
    if (ctx->is_reference) return klcl_reference_sparse_compute(ctx, desc, batch, sparse, out);
    return device_compute_sparse(ctx, desc, batch, sparse, out);
}
