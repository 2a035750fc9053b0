/* klcl_compute: argument checks, then the OpenCL path (upload, row kernel, host reduction, gradient kernel,
 * download) or the CPU reference, and verify mode on top. */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Rows per launch: keeps the global size of both kernels far from any device's limit. */
enum { ROWS_PER_LAUNCH = 32768, GRAD_ITEMS_PER_ROW_MAX = 4096 };

/* ------------------------------------------------------------------------------------------------------ */
/* Argument checks                                                                                          */

typedef struct tensor_role {
    const char *name;
    const klcl_tensor *t;
    size_t elem; /* bytes per element */
    int matrix;  /* rows x vocab with a stride, else a vector of rows */
    int required;
} tensor_role;

static int tensor_given(const klcl_tensor *t)
{
    return t->host != NULL || t->mem != NULL;
}

static klcl_status check_tensor(klcl_context *ctx, const tensor_role *r, size_t rows, size_t vocab)
{
    const klcl_tensor *t = r->t;
    if (!tensor_given(t))
        return r->required ? klcl_fail(ctx, KLCL_ERR_NULL_POINTER, "batch->%s is missing (host and mem both NULL)",
                                       r->name)
                           : KLCL_OK;
    if (t->host && t->mem)
        return klcl_fail(ctx, KLCL_ERR_INVALID_VALUE, "batch->%s: set host or mem, not both", r->name);
    size_t extent = rows; /* elements */
    if (r->matrix) {
        size_t stride = klcl_row_stride(t, vocab);
        if (stride < vocab)
            return klcl_fail(ctx, KLCL_ERR_INVALID_SHAPE, "batch->%s.stride (%zu) is smaller than vocab (%zu)",
                             r->name, stride, vocab);
        if ((rows - 1) > (SIZE_MAX / r->elem - vocab) / stride)
            return klcl_fail(ctx, KLCL_ERR_INVALID_SHAPE, "batch->%s: rows x stride overflows size_t", r->name);
        extent = (rows - 1) * stride + vocab;
    }
    if (t->mem) {
        if (ctx->is_reference)
            return klcl_fail(ctx, KLCL_ERR_UNSUPPORTED, "batch->%s.mem: the CPU reference takes host tensors only",
                             r->name);
        if (t->offset % r->elem)
            return klcl_fail(ctx, KLCL_ERR_MISALIGNED, "batch->%s.offset (%zu) is not a multiple of %zu bytes",
                             r->name, t->offset, r->elem);
        size_t size = 0;
        cl_int err = clGetMemObjectInfo(t->mem, CL_MEM_SIZE, sizeof size, &size, NULL);
        if (err != CL_SUCCESS) {
            klcl_fail_cl(ctx, err, "clGetMemObjectInfo");
            return klcl_fail(ctx, (klcl_status)err, "batch->%s.mem is not a valid buffer: %s", r->name,
                             klcl_status_string(err));
        }
        if (t->offset > size || (size - t->offset) / r->elem < extent)
            return klcl_fail(ctx, KLCL_ERR_BUFFER_TOO_SMALL,
                             "batch->%s.mem holds %zu bytes; offset %zu + %zu elements of %zu bytes do not fit",
                             r->name, size, t->offset, extent, r->elem);
    }
    return KLCL_OK;
}

klcl_status klcl_check_batch(klcl_context *ctx, const klcl_loss_desc *desc, const klcl_batch *b)
{
    klcl_status st = klcl_check_desc(desc, ctx);
    if (st != KLCL_OK) return st;
    if (!b) return klcl_fail(ctx, KLCL_ERR_NULL_POINTER, "batch is NULL");
    if (b->rows == 0) return klcl_fail(ctx, KLCL_ERR_INVALID_SHAPE, "batch->rows is 0");
    if (b->vocab == 0) return klcl_fail(ctx, KLCL_ERR_INVALID_SHAPE, "batch->vocab is 0");
    if (b->vocab > INT32_MAX)
        return klcl_fail(ctx, KLCL_ERR_INVALID_SHAPE, "batch->vocab (%zu) exceeds 2^31 - 1", b->vocab);
    int needs_labels = klcl_loss_needs_labels(desc->loss);
    const tensor_role roles[] = {
        {"student", &b->student, sizeof(float), 1, 1},
        {"teacher", &b->teacher, sizeof(float), 1, desc->loss != KLCL_LOSS_CE},
        {"labels", &b->labels, sizeof(int32_t), 0, needs_labels},
        {"mask", &b->mask, sizeof(uint8_t), 0, 0},
        {"grad", &b->grad, sizeof(float), 1, 0},
        {"row_loss", &b->row_loss, sizeof(float), 0, 0},
    };
    for (size_t i = 0; i < sizeof roles / sizeof roles[0]; i++) {
        st = check_tensor(ctx, &roles[i], b->rows, b->vocab);
        if (st != KLCL_OK) return st;
    }
    if (b->labels.host) {
        const int32_t *y = b->labels.host;
        for (size_t i = 0; i < b->rows; i++)
            if (y[i] != desc->ignore_index && (y[i] < 0 || (size_t)y[i] >= b->vocab))
                return klcl_fail(ctx, KLCL_ERR_LABEL_OUT_OF_RANGE,
                                 "batch->labels[%zu] is %d: outside [0, %zu) and not ignore_index (%d)", i,
                                 (int)y[i], b->vocab, (int)desc->ignore_index);
    }
    return KLCL_OK;
}

/* ------------------------------------------------------------------------------------------------------ */
/* Reduction shared by both backends                                                                        */

void klcl_tally_row(klcl_tally *t, size_t row, int skipped, double loss, int teacher_ok, double h_t, double h_s,
                    int agree, int has_label, int correct)
{
    if (skipped) {
        t->skipped++;
        return;
    }
    t->used++;
    t->sum += loss;
    if (!isfinite(loss)) {
        if (t->nonfinite < 8) t->first_nonfinite[t->nonfinite] = row;
        t->nonfinite++;
        return;
    }
    t->finite++;
    t->student_entropy += h_s;
    if (teacher_ok) {
        t->with_teacher++;
        t->teacher_entropy += h_t;
        t->agree += agree != 0;
    }
    if (has_label) {
        t->with_label++;
        t->correct += correct != 0;
    }
}

static double ratio(double num, size_t den)
{
    return den ? num / (double)den : NAN;
}

void klcl_tally_finish(const klcl_tally *t, klcl_reduction reduction, size_t rows, klcl_result *out)
{
    memset(out, 0, sizeof *out);
    switch (reduction) {
    case KLCL_REDUCTION_MEAN: out->loss = t->used ? t->sum / (double)t->used : 0.0; break;
    case KLCL_REDUCTION_BATCHMEAN: out->loss = t->sum / (double)rows; break;
    default: out->loss = t->sum; break;
    }
    out->rows_used = t->used;
    out->rows_skipped = t->skipped;
    out->rows_nonfinite = t->nonfinite;
    out->rows_with_teacher = t->with_teacher;
    memcpy(out->first_nonfinite, t->first_nonfinite, sizeof out->first_nonfinite);
    out->student_entropy = ratio(t->student_entropy, t->finite);
    out->teacher_entropy = ratio(t->teacher_entropy, t->with_teacher);
    out->top1_agreement = ratio((double)t->agree, t->with_teacher);
    out->accuracy = ratio((double)t->correct, t->with_label);
}

/* ------------------------------------------------------------------------------------------------------ */
/* OpenCL path                                                                                              */

/* A tensor as the kernels see it: a buffer, an offset in elements, a row stride in elements. */
typedef struct bound {
    cl_mem mem;
    cl_ulong offset;
    cl_ulong stride;
    int given;
} bound;

/* Binds an input: the caller's buffer, or host memory uploaded into scratch `which`. */
static klcl_status bind_input(klcl_context *ctx, const klcl_tensor *t, int which, size_t elem, size_t rows,
                              size_t vocab, int matrix, bound *out)
{
    memset(out, 0, sizeof *out);
    if (!tensor_given(t)) {
        out->mem = ctx->scratch[SCRATCH_DUMMY].mem;
        return KLCL_OK;
    }
    out->given = 1;
    if (t->mem) {
        out->mem = t->mem;
        out->offset = t->offset / elem;
        out->stride = matrix ? klcl_row_stride(t, vocab) : 1;
        return KLCL_OK;
    }
    size_t width = matrix ? vocab : rows, height = matrix ? rows : 1;
    klcl_status st = klcl_scratch_reserve(ctx, which, width * height * elem);
    if (st != KLCL_OK) return st;
    out->mem = ctx->scratch[which].mem;
    out->stride = matrix ? vocab : 1;
    cl_int err;
    if (matrix && klcl_row_stride(t, vocab) != vocab) {
        const size_t origin[3] = {0, 0, 0}, region[3] = {vocab * elem, rows, 1};
        err = clEnqueueWriteBufferRect(ctx->queue, out->mem, CL_TRUE, origin, origin, region, vocab * elem, 0,
                                       klcl_row_stride(t, vocab) * elem, 0, t->host, 0, NULL, NULL);
    } else {
        err = clEnqueueWriteBuffer(ctx->queue, out->mem, CL_TRUE, 0, width * height * elem, t->host, 0, NULL,
                                   NULL);
    }
    return err == CL_SUCCESS ? KLCL_OK : klcl_fail_cl(ctx, err, "clEnqueueWriteBuffer (upload)");
}

/* Binds an output: the caller's buffer, or scratch `which` to be downloaded afterwards. */
static klcl_status bind_output(klcl_context *ctx, const klcl_tensor *t, int which, size_t elem, size_t rows,
                               size_t vocab, int matrix, bound *out)
{
    memset(out, 0, sizeof *out);
    out->given = tensor_given(t);
    if (t->mem) {
        out->mem = t->mem;
        out->offset = t->offset / elem;
        out->stride = matrix ? klcl_row_stride(t, vocab) : 1;
        return KLCL_OK;
    }
    size_t width = matrix ? vocab : 1;
    klcl_status st = klcl_scratch_reserve(ctx, which, rows * width * elem);
    if (st != KLCL_OK) return st;
    out->mem = ctx->scratch[which].mem;
    out->stride = width;
    return KLCL_OK;
}

typedef struct kernel_params {
    float inv_tau, cap, scale, alpha, beta, lambda, eps, zl, lwa, lwb;
} kernel_params;

static kernel_params params_of(const klcl_loss_desc *d, klcl_loss kind)
{
    kernel_params p;
    p.inv_tau = (float)(1.0 / (double)d->tau);
    p.cap = d->softcap;
    p.scale = d->scale;
    p.alpha = d->alpha;
    p.beta = d->beta;
    p.lambda = d->lambda;
    p.eps = d->label_smoothing;
    p.zl = d->z_loss;
    /* Log weights of the mixture m = w_a p + w_b q for jsd, skl, srkl. */
    double wa = kind == KLCL_LOSS_JSD ? d->beta : kind == KLCL_LOSS_SKL ? d->lambda : 1.0 - (double)d->lambda;
    p.lwa = (float)log(wa);
    p.lwb = (float)log1p(-wa);
    return p;
}

/* Sets kernel arguments in order; stops at the first failure. */
typedef struct arg_setter {
    cl_kernel k;
    cl_uint index;
    cl_int err;
} arg_setter;

static void arg(arg_setter *a, size_t size, const void *value)
{
    if (a->err == CL_SUCCESS) a->err = clSetKernelArg(a->k, a->index, size, value);
    a->index++;
}

static void arg_bound(arg_setter *a, const bound *b)
{
    arg(a, sizeof(cl_mem), &b->mem);
    arg(a, sizeof(cl_ulong), &b->offset);
    arg(a, sizeof(cl_ulong), &b->stride);
}

/* The arguments both kernels start with: teacher, student, labels. */
static void arg_inputs(arg_setter *a, const bound *t, const bound *s, const bound *y, cl_int has_labels)
{
    arg_bound(a, t);
    arg_bound(a, s);
    arg(a, sizeof(cl_mem), &y->mem);
    arg(a, sizeof(cl_ulong), &y->offset);
    arg(a, sizeof(cl_int), &has_labels);
}

static void arg_params(arg_setter *a, const kernel_params *p, int with_ignore_index, cl_int ignore_index)
{
    if (with_ignore_index) arg(a, sizeof(cl_int), &ignore_index);
    const float v[] = {p->inv_tau, p->cap, p->scale, p->alpha, p->beta, p->lambda, p->eps, p->zl, p->lwa, p->lwb};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) arg(a, sizeof(float), &v[i]);
}

static klcl_status device_compute(klcl_context *ctx, const klcl_loss_desc *desc, const klcl_batch *b,
                                  klcl_result *result)
{
    klcl_status st = klcl_program_build(ctx);
    if (st != KLCL_OK) return st;
    const size_t rows = b->rows, vocab = b->vocab;
    const klcl_loss kind = klcl_effective_loss(desc);
    const kernel_params prm = params_of(desc, kind);
    float *row_loss = NULL, *stats = NULL;
    cl_int *flags = NULL;
    float *teacher_copy = NULL, *student_copy = NULL, *grad_copy = NULL;
    int32_t *labels_copy = NULL;
    uint8_t *mask_copy = NULL;
    cl_int err;

    st = klcl_scratch_reserve(ctx, SCRATCH_DUMMY, 64);
    if (st != KLCL_OK) goto done;
    bound t, s, y, m, rl, g, rs, rf;
    if ((st = bind_input(ctx, &b->teacher, SCRATCH_TEACHER, sizeof(float), rows, vocab, 1, &t)) != KLCL_OK ||
        (st = bind_input(ctx, &b->student, SCRATCH_STUDENT, sizeof(float), rows, vocab, 1, &s)) != KLCL_OK ||
        (st = bind_input(ctx, &b->labels, SCRATCH_LABELS, sizeof(int32_t), rows, vocab, 0, &y)) != KLCL_OK ||
        (st = bind_input(ctx, &b->mask, SCRATCH_MASK, sizeof(uint8_t), rows, vocab, 0, &m)) != KLCL_OK ||
        (st = bind_output(ctx, &b->row_loss, SCRATCH_ROW_LOSS, sizeof(float), rows, vocab, 0, &rl)) != KLCL_OK ||
        (st = klcl_scratch_reserve(ctx, SCRATCH_ROW_STATS, rows * RS_COUNT * sizeof(float))) != KLCL_OK ||
        (st = klcl_scratch_reserve(ctx, SCRATCH_ROW_FLAGS, rows * RF_COUNT * sizeof(cl_int))) != KLCL_OK)
        goto done;
    rs.mem = ctx->scratch[SCRATCH_ROW_STATS].mem;
    rf.mem = ctx->scratch[SCRATCH_ROW_FLAGS].mem;

    /* Row kernel, in launches of at most ROWS_PER_LAUNCH rows. */
    const cl_uint vocab_u = (cl_uint)vocab;
    const cl_int has_teacher = t.given, has_labels = y.given, has_mask = m.given;
    const cl_int want_grad = tensor_given(&b->grad);
    cl_kernel rk = ctx->rows_kernel[kind];
    for (size_t r0 = 0; r0 < rows; r0 += ROWS_PER_LAUNCH) {
        size_t n = rows - r0 < ROWS_PER_LAUNCH ? rows - r0 : ROWS_PER_LAUNCH;
        const cl_ulong row0 = r0;
        arg_setter a = {rk, 0, CL_SUCCESS};
        arg_inputs(&a, &t, &s, &y, has_labels);
        arg(&a, sizeof(cl_mem), &m.mem);
        arg(&a, sizeof(cl_ulong), &m.offset);
        arg(&a, sizeof(cl_int), &has_mask);
        arg(&a, sizeof(cl_uint), &vocab_u);
        arg(&a, sizeof(cl_int), &has_teacher);
        arg_params(&a, &prm, 1, desc->ignore_index);
        arg(&a, sizeof(cl_mem), &rl.mem);
        arg(&a, sizeof(cl_ulong), &rl.offset);
        arg(&a, sizeof(cl_mem), &rs.mem);
        arg(&a, sizeof(cl_mem), &rf.mem);
        arg(&a, sizeof(cl_ulong), &row0);
        arg(&a, sizeof(cl_int), &want_grad);
        if (a.err != CL_SUCCESS) {
            st = klcl_fail_cl(ctx, a.err, "clSetKernelArg (row kernel)");
            goto done;
        }
        size_t global = n * ctx->wg, local = ctx->wg;
        err = clEnqueueNDRangeKernel(ctx->queue, rk, 1, NULL, &global, &local, 0, NULL, NULL);
        if (err != CL_SUCCESS) {
            st = klcl_fail_cl(ctx, err, "clEnqueueNDRangeKernel (row kernel)");
            goto done;
        }
    }

    /* Per-row results back to the host: the reduction is done there in double, in row order. */
    row_loss = malloc(rows * sizeof *row_loss);
    stats = malloc(rows * RS_COUNT * sizeof *stats);
    flags = malloc(rows * RF_COUNT * sizeof *flags);
    if (!row_loss || !stats || !flags) {
        st = klcl_fail(ctx, KLCL_ERR_OUT_OF_HOST_MEMORY, "per-row results: out of host memory");
        goto done;
    }
    err = clEnqueueReadBuffer(ctx->queue, rl.mem, CL_FALSE, rl.offset * sizeof(float), rows * sizeof(float),
                              row_loss, 0, NULL, NULL);
    if (err == CL_SUCCESS)
        err = clEnqueueReadBuffer(ctx->queue, rs.mem, CL_FALSE, 0, rows * RS_COUNT * sizeof(float), stats, 0, NULL,
                                  NULL);
    if (err == CL_SUCCESS)
        err = clEnqueueReadBuffer(ctx->queue, rf.mem, CL_TRUE, 0, rows * RF_COUNT * sizeof(cl_int), flags, 0, NULL,
                                  NULL);
    if (err != CL_SUCCESS) {
        st = klcl_fail_cl(ctx, err, "clEnqueueReadBuffer (per-row results)");
        goto done;
    }
    klcl_tally tally;
    memset(&tally, 0, sizeof tally);
    for (size_t i = 0; i < rows; i++) {
        int f = flags[i * RF_COUNT + RF_FLAGS];
        if (f & FLAG_BAD_LABEL) {
            st = klcl_fail(ctx, KLCL_ERR_LABEL_OUT_OF_RANGE,
                           "batch->labels[%zu] is outside [0, %zu) and not ignore_index (%d)", i, vocab,
                           (int)desc->ignore_index);
            goto done;
        }
        klcl_tally_row(&tally, i, f & FLAG_SKIPPED, row_loss[i], f & FLAG_TEACHER_OK, stats[i * RS_COUNT + RS_H_T],
                       stats[i * RS_COUNT + RS_H_S], f & FLAG_AGREE, has_labels, f & FLAG_CORRECT);
    }
    klcl_tally_finish(&tally, desc->reduction, rows, result);

    /* Gradient kernel: element-wise, so any launch shape gives the same bits. */
    if (tensor_given(&b->grad)) {
        if ((st = bind_output(ctx, &b->grad, SCRATCH_GRAD, sizeof(float), rows, vocab, 1, &g)) != KLCL_OK) goto done;
        const float inv_denom = (float)(1.0 / klcl_denominator(desc->reduction, rows, tally.used));
        cl_kernel gk = ctx->grad_kernel[kind];
        /* Work-items per row: one per 8-logit vector, in multiples of 64, at most GRAD_ITEMS_PER_ROW_MAX. */
        size_t per_row = ((vocab + 7) / 8 + 63) / 64 * 64;
        if (per_row > GRAD_ITEMS_PER_ROW_MAX) per_row = GRAD_ITEMS_PER_ROW_MAX;
        for (size_t r0 = 0; r0 < rows; r0 += ROWS_PER_LAUNCH) {
            size_t n = rows - r0 < ROWS_PER_LAUNCH ? rows - r0 : ROWS_PER_LAUNCH;
            const cl_ulong row0 = r0;
            arg_setter a = {gk, 0, CL_SUCCESS};
            arg_inputs(&a, &t, &s, &y, has_labels);
            arg(&a, sizeof(cl_uint), &vocab_u);
            arg_params(&a, &prm, 0, 0);
            arg(&a, sizeof(float), &inv_denom);
            arg(&a, sizeof(cl_mem), &rs.mem);
            arg(&a, sizeof(cl_mem), &rf.mem);
            arg(&a, sizeof(cl_ulong), &row0);
            arg_bound(&a, &g);
            if (a.err != CL_SUCCESS) {
                st = klcl_fail_cl(ctx, a.err, "clSetKernelArg (gradient kernel)");
                goto done;
            }
            size_t global[2] = {per_row, n};
            err = clEnqueueNDRangeKernel(ctx->queue, gk, 2, NULL, global, NULL, 0, NULL, NULL);
            if (err != CL_SUCCESS) {
                st = klcl_fail_cl(ctx, err, "clEnqueueNDRangeKernel (gradient kernel)");
                goto done;
            }
        }
        if (b->grad.host) {
            const size_t origin[3] = {0, 0, 0}, region[3] = {vocab * sizeof(float), rows, 1};
            err = clEnqueueReadBufferRect(ctx->queue, g.mem, CL_TRUE, origin, origin, region, vocab * sizeof(float),
                                          0, klcl_row_stride(&b->grad, vocab) * sizeof(float), 0, b->grad.host, 0, NULL,
                                          NULL);
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

    if (ctx->verify) {
        /* Host copies of whatever lives only on the device, then the reference side by side. */
        const float *th = b->teacher.host, *sh = b->student.host, *gh = b->grad.host;
        const int32_t *yh = b->labels.host;
        const uint8_t *mh = b->mask.host;
        size_t g_stride = klcl_row_stride(&b->grad, vocab);
        struct {
            const klcl_tensor *t;
            size_t elem, count;
            void **copy;
            const void **view;
        } pulls[] = {
            {&b->teacher, sizeof(float), (rows - 1) * klcl_row_stride(&b->teacher, vocab) + vocab, (void **)&teacher_copy,
             (const void **)&th},
            {&b->student, sizeof(float), (rows - 1) * klcl_row_stride(&b->student, vocab) + vocab, (void **)&student_copy,
             (const void **)&sh},
            {&b->labels, sizeof(int32_t), rows, (void **)&labels_copy, (const void **)&yh},
            {&b->mask, sizeof(uint8_t), rows, (void **)&mask_copy, (const void **)&mh},
            {&b->grad, sizeof(float), (rows - 1) * g_stride + vocab, (void **)&grad_copy, (const void **)&gh},
        };
        for (size_t i = 0; i < sizeof pulls / sizeof pulls[0]; i++) {
            if (!pulls[i].t->mem) continue;
            *pulls[i].copy = malloc(pulls[i].count * pulls[i].elem);
            if (!*pulls[i].copy) {
                st = klcl_fail(ctx, KLCL_ERR_OUT_OF_HOST_MEMORY, "verify: out of host memory");
                goto done;
            }
            err = clEnqueueReadBuffer(ctx->queue, pulls[i].t->mem, CL_TRUE, pulls[i].t->offset,
                                      pulls[i].count * pulls[i].elem, *pulls[i].copy, 0, NULL, NULL);
            if (err != CL_SUCCESS) {
                st = klcl_fail_cl(ctx, err, "clEnqueueReadBuffer (verify)");
                goto done;
            }
            *pulls[i].view = *pulls[i].copy;
        }
        st = klcl_verify(ctx, desc, b, th, sh, yh, mh, row_loss, gh, g_stride, result);
    }
done:
    if (st != KLCL_OK) clFinish(ctx->queue); /* nothing may still read caller memory after return */
    free(row_loss);
    free(stats);
    free(flags);
    free(teacher_copy);
    free(student_copy);
    free(grad_copy);
    free(labels_copy);
    free(mask_copy);
    return st;
}

klcl_status klcl_compute(klcl_context *ctx, const klcl_loss_desc *desc, const klcl_batch *batch,
                         klcl_result *result)
{
    if (!ctx) return KLCL_ERR_NULL_POINTER;
    ctx->error[0] = '\0';
    klcl_status st = klcl_check_batch(ctx, desc, batch);
    if (st != KLCL_OK) return st;
    klcl_result local;
    klcl_result *out = result ? result : &local;
    memset(out, 0, sizeof *out);
    if (ctx->is_reference) return klcl_reference_compute(ctx, desc, batch, out);
    return device_compute(ctx, desc, batch, out);
}
