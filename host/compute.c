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
    size_t width; /* columns of a matrix (rows x width with a stride); 0 for a vector of rows */
    int required;
    int any_dtype; /* a logit or gradient matrix: any klcl_dtype; otherwise its fixed type (dtype 0) */
    size_t elem;   /* bytes per element of a fixed type */
} tensor_role;

static int tensor_given(const klcl_tensor *t)
{
    return t->host != NULL || t->mem != NULL;
}

static klcl_status check_tensor(klcl_context *ctx, const tensor_role *r, size_t rows)
{
    const klcl_tensor *t = r->t;
    const size_t vocab = r->width;
    if (!tensor_given(t))
        return r->required ? klcl_fail(ctx, KLCL_ERR_NULL_POINTER, "batch->%s is missing (host and mem both NULL)",
                                       r->name)
                           : KLCL_OK;
    if (t->host && t->mem)
        return klcl_fail(ctx, KLCL_ERR_INVALID_VALUE, "batch->%s: set host or mem, not both", r->name);
    if (r->any_dtype ? !klcl_dtype_name(t->dtype) : t->dtype != KLCL_DTYPE_F32)
        return klcl_fail(ctx, KLCL_ERR_INVALID_VALUE, "batch->%s.dtype is %d: %s", r->name, (int)t->dtype,
                         r->any_dtype ? "not a klcl_dtype" : "must be 0 (the role's type is fixed)");
    const size_t elem = r->any_dtype ? klcl_dtype_size(t->dtype) : r->elem;
    size_t extent = rows; /* elements */
    if (r->width) {
        size_t stride = klcl_row_stride(t, vocab);
        if (stride < vocab)
            return klcl_fail(ctx, KLCL_ERR_INVALID_SHAPE, "batch->%s.stride (%zu) is smaller than vocab (%zu)",
                             r->name, stride, vocab);
        if ((rows - 1) > (SIZE_MAX / elem - vocab) / stride)
            return klcl_fail(ctx, KLCL_ERR_INVALID_SHAPE, "batch->%s: rows x stride overflows size_t", r->name);
        extent = (rows - 1) * stride + vocab;
    }
    if (t->mem) {
        if (ctx->is_reference)
            return klcl_fail(ctx, KLCL_ERR_UNSUPPORTED, "batch->%s.mem: the CPU reference takes host tensors only",
                             r->name);
        if (t->offset % elem)
            return klcl_fail(ctx, KLCL_ERR_MISALIGNED, "batch->%s.offset (%zu) is not a multiple of %zu bytes",
                             r->name, t->offset, elem);
        size_t size = 0;
        cl_int err = clGetMemObjectInfo(t->mem, CL_MEM_SIZE, sizeof size, &size, NULL);
        if (err != CL_SUCCESS) {
            klcl_fail_cl(ctx, err, "clGetMemObjectInfo");
            return klcl_fail(ctx, (klcl_status)err, "batch->%s.mem is not a valid buffer: %s", r->name,
                             klcl_status_string(err));
        }
        if (t->offset > size || (size - t->offset) / elem < extent)
            return klcl_fail(ctx, KLCL_ERR_BUFFER_TOO_SMALL,
                             "batch->%s.mem holds %zu bytes; offset %zu + %zu elements of %zu bytes do not fit",
                             r->name, size, t->offset, extent, elem);
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
    if (b->teacher_vocab > INT32_MAX)
        return klcl_fail(ctx, KLCL_ERR_INVALID_SHAPE, "batch->teacher_vocab (%zu) exceeds 2^31 - 1",
                         b->teacher_vocab);
    if (b->teacher_logprobs != 0 && b->teacher_logprobs != 1)
        return klcl_fail(ctx, KLCL_ERR_INVALID_VALUE, "batch->teacher_logprobs is %d: must be 0 or 1",
                         b->teacher_logprobs);
    const int needs_labels = klcl_loss_needs_labels(desc->loss);
    const size_t vt = b->teacher_vocab ? b->teacher_vocab : b->vocab;
    const tensor_role roles[] = {
        {"student", &b->student, b->vocab, 1, 1, 0},
        {"teacher", &b->teacher, vt, desc->loss != KLCL_LOSS_CE, 1, 0},
        {"labels", &b->labels, 0, needs_labels, 0, sizeof(int32_t)},
        {"mask", &b->mask, 0, 0, 0, sizeof(uint8_t)},
        {"grad", &b->grad, b->vocab, 0, 1, 0},
        {"row_loss", &b->row_loss, 0, 0, 0, sizeof(float)},
    };
    for (size_t i = 0; i < sizeof roles / sizeof roles[0]; i++) {
        st = check_tensor(ctx, &roles[i], b->rows);
        if (st != KLCL_OK) return st;
    }
    if (b->labels.host) {
        const int32_t *y = b->labels.host;
        const klcl_widths w = klcl_batch_widths(desc, b);
        const size_t limit = w.width < b->vocab ? w.width : b->vocab; /* columns a label may name */
        for (size_t i = 0; i < b->rows; i++)
            if (y[i] != desc->ignore_index && (y[i] < 0 || (size_t)y[i] >= limit))
                return klcl_fail(ctx, KLCL_ERR_LABEL_OUT_OF_RANGE,
                                 "batch->labels[%zu] is %d: outside [0, %zu) and not ignore_index (%d)", i,
                                 (int)y[i], limit, (int)desc->ignore_index);
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

/* A per-row vector as the kernels see it: a buffer and an offset in elements. */
typedef struct bound {
    cl_mem mem;
    cl_ulong offset;
    int given;
} bound;

/* Binds a per-row input vector: the caller's buffer, or host memory uploaded into scratch `which`. */
static klcl_status bind_vector(klcl_context *ctx, const klcl_tensor *t, int which, size_t elem, size_t rows,
                               bound *out)
{
    memset(out, 0, sizeof *out);
    out->mem = ctx->scratch[SCRATCH_DUMMY].mem;
    if (!tensor_given(t)) return KLCL_OK;
    out->given = 1;
    if (t->mem) {
        out->mem = t->mem;
        out->offset = t->offset / elem;
        return KLCL_OK;
    }
    klcl_status st = klcl_scratch_reserve(ctx, which, rows * elem);
    if (st != KLCL_OK) return st;
    out->mem = ctx->scratch[which].mem;
    cl_int err = clEnqueueWriteBuffer(ctx->queue, out->mem, CL_FALSE, 0, rows * elem, t->host, 0, NULL, NULL);
    return err == CL_SUCCESS ? KLCL_OK : klcl_fail_cl(ctx, err, "clEnqueueWriteBuffer (upload)");
}

/* Binds a per-row output vector: the caller's buffer, or scratch `which` to be read back. */
static klcl_status bind_vector_out(klcl_context *ctx, const klcl_tensor *t, int which, size_t rows, bound *out)
{
    memset(out, 0, sizeof *out);
    out->given = tensor_given(t);
    if (t->mem) {
        out->mem = t->mem;
        out->offset = t->offset / sizeof(float);
        return KLCL_OK;
    }
    klcl_status st = klcl_scratch_reserve(ctx, which, rows * sizeof(float));
    out->mem = ctx->scratch[which].mem;
    return st;
}

/* A logit or gradient matrix: the caller's buffer used in place, or host memory streamed through the
 * two chunk slots (scratch `slot0` and `slot0 + 1`). `mem`, `offset` and `stride` describe the current
 * chunk's first row. */
typedef struct matrix {
    const klcl_tensor *t;
    int given, on_host, slot0;
    size_t width, elem, host_stride;
    cl_mem mem;
    cl_ulong offset, stride;
} matrix;

static matrix matrix_of(const klcl_tensor *t, size_t width, int slot0)
{
    matrix m;
    memset(&m, 0, sizeof m);
    m.t = t;
    m.given = tensor_given(t);
    m.on_host = t->host != NULL;
    m.slot0 = slot0;
    m.width = width;
    m.elem = klcl_dtype_size(t->dtype);
    m.host_stride = klcl_row_stride(t, width);
    return m;
}

/* Points the matrix at chunk [c0, c0 + n) in slot `slot`; `dummy` for a matrix not given. */
static void matrix_at(klcl_context *ctx, matrix *m, size_t c0, int slot)
{
    if (!m->given) {
        m->mem = ctx->scratch[SCRATCH_DUMMY].mem;
        m->offset = m->stride = 0;
    } else if (m->on_host) {
        m->mem = ctx->scratch[m->slot0 + slot].mem;
        m->offset = 0;
        m->stride = m->width;
    } else {
        m->stride = m->host_stride;
        m->mem = m->t->mem;
        m->offset = m->t->offset / m->elem + c0 * m->stride;
    }
}

/* Host rows [c0, c0 + n) to or from the current slot of m, on queue q after `wait`. */
static cl_int matrix_transfer(cl_command_queue q, const matrix *m, size_t c0, size_t n, int write, cl_uint nwait,
                              const cl_event *wait, cl_event *done)
{
    char *host = (char *)m->t->host + c0 * m->host_stride * m->elem;
    const size_t row_bytes = m->width * m->elem;
    if (m->host_stride == m->width)
        return write ? clEnqueueWriteBuffer(q, m->mem, CL_FALSE, 0, n * row_bytes, host, nwait, wait, done)
                     : clEnqueueReadBuffer(q, m->mem, CL_FALSE, 0, n * row_bytes, host, nwait, wait, done);
    const size_t origin[3] = {0, 0, 0}, region[3] = {row_bytes, n, 1};
    const size_t host_pitch = m->host_stride * m->elem;
    return write ? clEnqueueWriteBufferRect(q, m->mem, CL_FALSE, origin, origin, region, row_bytes, 0, host_pitch,
                                            0, host, nwait, wait, done)
                 : clEnqueueReadBufferRect(q, m->mem, CL_FALSE, origin, origin, region, row_bytes, 0, host_pitch, 0,
                                           host, nwait, wait, done);
}

/* Rows per chunk: all of them when nothing is on the host; else ctx->chunk_rows, or as many as fit two
 * slots in a quarter of the device's memory; never a buffer above CL_DEVICE_MAX_MEM_ALLOC_SIZE. */
static size_t chunk_rows_for(klcl_context *ctx, size_t rows, const matrix *const *ms, size_t count)
{
    size_t per_row = 0, widest = 0;
    for (size_t i = 0; i < count; i++) {
        if (!ms[i]->on_host) continue;
        size_t bytes = ms[i]->width * ms[i]->elem;
        per_row += bytes;
        if (bytes > widest) widest = bytes;
    }
    if (per_row == 0) return rows;
    cl_ulong global = 0, max_alloc = 0;
    if (clGetDeviceInfo(ctx->device, CL_DEVICE_GLOBAL_MEM_SIZE, sizeof global, &global, NULL) != CL_SUCCESS)
        global = 0;
    if (clGetDeviceInfo(ctx->device, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof max_alloc, &max_alloc, NULL) != CL_SUCCESS)
        max_alloc = 0;
    size_t n = ctx->chunk_rows ? ctx->chunk_rows : (size_t)(global / 4 / (2 * per_row));
    if (max_alloc && n > max_alloc / widest) n = (size_t)(max_alloc / widest);
    if (n > rows) n = rows;
    return n ? n : 1;
}

/* The queue for transfers of a chunked call: a second queue on the device, so that the next chunk's
 * upload runs beside the current chunk's kernels; the main queue where one cannot be made. */
static cl_command_queue copy_queue(klcl_context *ctx)
{
    if (!ctx->copy_queue) {
        cl_int err;
        ctx->copy_queue = clCreateCommandQueue(ctx->cl_ctx, ctx->device, 0, &err);
    }
    return ctx->copy_queue ? ctx->copy_queue : ctx->queue;
}

static void release_event(cl_event *e)
{
    if (*e) clReleaseEvent(*e);
    *e = NULL;
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

/* A matrix from row `skip` of its current chunk on. */
static void arg_matrix(arg_setter *a, const matrix *m, size_t skip)
{
    const cl_ulong offset = m->offset + skip * m->stride;
    arg(a, sizeof(cl_mem), &m->mem);
    arg(a, sizeof(cl_ulong), &offset);
    arg(a, sizeof(cl_ulong), &m->stride);
}

/* The arguments both kernels start with: teacher, student, labels, the widths. */
static void arg_inputs(arg_setter *a, const matrix *t, const matrix *s, size_t skip, const bound *y,
                       const klcl_widths *w, int with_mask, const bound *m)
{
    const cl_int has_labels = y->given, has_mask = m->given;
    /* The loss's columns, and each row's own width (the kernels read -inf past it). */
    const cl_uint width = (cl_uint)w->width, t_cols = (cl_uint)(t->given ? t->width : w->width);
    const cl_uint s_cols = (cl_uint)s->width;
    arg_matrix(a, t, skip);
    arg_matrix(a, s, skip);
    arg(a, sizeof(cl_mem), &y->mem);
    arg(a, sizeof(cl_ulong), &y->offset);
    arg(a, sizeof(cl_int), &has_labels);
    if (with_mask) {
        arg(a, sizeof(cl_mem), &m->mem);
        arg(a, sizeof(cl_ulong), &m->offset);
        arg(a, sizeof(cl_int), &has_mask);
    }
    arg(a, sizeof(cl_uint), &width);
    arg(a, sizeof(cl_uint), &t_cols);
    arg(a, sizeof(cl_uint), &s_cols);
}

static void arg_params(arg_setter *a, const kernel_params *p, int with_ignore_index, cl_int ignore_index)
{
    if (with_ignore_index) arg(a, sizeof(cl_int), &ignore_index);
    const float v[] = {p->inv_tau, p->cap, p->scale, p->alpha, p->beta, p->lambda, p->eps, p->zl, p->lwa, p->lwb};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) arg(a, sizeof(float), &v[i]);
}

/* Rows the reduction counts (not skipped by mask or ignore_index), for the gradient's denominator before
 * the rows are reduced; labels outside the loss's columns fail here. cl_mem vectors are read back. */
klcl_status klcl_count_used(klcl_context *ctx, const klcl_loss_desc *desc, const klcl_batch *b, size_t *used)
{
    const size_t rows = b->rows;
    int32_t *yc = NULL;
    uint8_t *mc = NULL;
    const int32_t *y = b->labels.host;
    const uint8_t *m = b->mask.host;
    klcl_status st = KLCL_OK;
    cl_int err = CL_SUCCESS;
    if (b->labels.mem && (yc = malloc(rows * sizeof *yc)))
        err = clEnqueueReadBuffer(ctx->queue, b->labels.mem, CL_TRUE, b->labels.offset, rows * sizeof *yc, yc, 0,
                                  NULL, NULL);
    if (err == CL_SUCCESS && b->mask.mem && (mc = malloc(rows)))
        err = clEnqueueReadBuffer(ctx->queue, b->mask.mem, CL_TRUE, b->mask.offset, rows, mc, 0, NULL, NULL);
    if (err != CL_SUCCESS) {
        st = klcl_fail_cl(ctx, err, "clEnqueueReadBuffer (labels and mask)");
        goto done;
    }
    if ((b->labels.mem && !yc) || (b->mask.mem && !mc)) {
        st = klcl_fail(ctx, KLCL_ERR_OUT_OF_HOST_MEMORY, "labels and mask: out of host memory");
        goto done;
    }
    if (yc) {
        klcl_batch view = *b;
        view.labels.host = yc;
        view.labels.mem = NULL;
        if ((st = klcl_check_batch(ctx, desc, &view)) != KLCL_OK) goto done;
        y = yc;
    }
    if (mc) m = mc;
    *used = 0;
    for (size_t i = 0; i < rows; i++) *used += !((m && m[i] == 0) || (y && y[i] == desc->ignore_index));
done:
    free(yc);
    free(mc);
    return st;
}

/* Verify mode: host views of the batch's tensors (copies of cl_mem ones), then the reference beside the
 * device's results. */
static klcl_status verify_call(klcl_context *ctx, const klcl_loss_desc *desc, const klcl_batch *b,
                               const float *row_loss, klcl_result *result)
{
    const size_t rows = b->rows, vt = b->teacher_vocab ? b->teacher_vocab : b->vocab;
    klcl_tensor views[4] = {b->teacher, b->student, b->labels, b->mask}, grad = b->grad;
    const size_t widths[4] = {vt, b->vocab, 0, 0}, fixed[4] = {0, 0, sizeof(int32_t), sizeof(uint8_t)};
    klcl_tensor *all[5] = {&views[0], &views[1], &views[2], &views[3], &grad};
    void *copies[5] = {NULL, NULL, NULL, NULL, NULL};
    klcl_status st = KLCL_OK;
    for (size_t i = 0; i < 5; i++) {
        klcl_tensor *t = all[i];
        if (!t->mem) continue;
        const size_t width = i < 4 ? widths[i] : b->vocab;
        const size_t elem = width ? klcl_dtype_size(t->dtype) : fixed[i];
        const size_t count = width ? (rows - 1) * klcl_row_stride(t, width) + width : rows;
        copies[i] = malloc(count * elem);
        if (!copies[i]) {
            st = klcl_fail(ctx, KLCL_ERR_OUT_OF_HOST_MEMORY, "verify: out of host memory");
            goto done;
        }
        cl_int err = clEnqueueReadBuffer(ctx->queue, t->mem, CL_TRUE, t->offset, count * elem, copies[i], 0, NULL,
                                         NULL);
        if (err != CL_SUCCESS) {
            st = klcl_fail_cl(ctx, err, "clEnqueueReadBuffer (verify)");
            goto done;
        }
        t->host = copies[i];
        t->mem = NULL;
        t->offset = 0;
    }
    st = klcl_verify(ctx, desc, b, &views[0], &views[1], views[2].host, views[3].host, row_loss, &grad, result);
done:
    for (size_t i = 0; i < 5; i++) free(copies[i]);
    return st;
}

/* The host's reduction of the per-row results, in double and in row order; a row flagged with a label out
 * of range fails the call, naming it. */
static klcl_status tally_rows(klcl_context *ctx, klcl_reduction reduction, int32_t ignore_index, size_t rows,
                              size_t label_limit, int has_labels, const float *row_loss, const float *stats,
                              const cl_int *flags, klcl_result *result)
{
    klcl_tally tally;
    memset(&tally, 0, sizeof tally);
    for (size_t i = 0; i < rows; i++) {
        int f = flags[i * RF_COUNT + RF_FLAGS];
        if (f & FLAG_BAD_LABEL)
            return klcl_fail(ctx, KLCL_ERR_LABEL_OUT_OF_RANGE,
                             "batch->labels[%zu] is outside [0, %zu) and not ignore_index (%d)", i, label_limit,
                             (int)ignore_index);
        klcl_tally_row(&tally, i, f & FLAG_SKIPPED, row_loss[i], f & FLAG_TEACHER_OK, stats[i * RS_COUNT + RS_H_T],
                       stats[i * RS_COUNT + RS_H_S], f & FLAG_AGREE, has_labels, f & FLAG_CORRECT);
    }
    klcl_tally_finish(&tally, reduction, rows, result);
    return KLCL_OK;
}

/* What the kernel launches of one call share. */
typedef struct launch {
    const klcl_program *prog;
    klcl_loss kind;
    const klcl_loss_desc *desc;
    kernel_params prm;
    klcl_widths w;
    bound y, m, rl;
    cl_mem rs, rf;
    cl_int has_teacher, t_logprob, want_grad;
    cl_int fuse_grad;  /* the row kernel writes the gradient (no launch_grad) */
    cl_int exact_max;  /* a gradient on one work-item per row: the maximum before pass 1 */
    cl_int keep_exps;  /* and, fused, the gradient from what the passes kept in the gradient's rows */
    float inv_denom;   /* 1/denominator known to the host, */
    cl_mem denom_buf;  /* or, when set, read by the gradient kernel from this buffer */
    klcl_strategy how; /* team and parts per row, for the whole call (klcl_row_strategy) */
    int pass2;         /* the row kernel reads the row twice: a split row runs parts and merge twice */
    cl_mem parts;      /* the parts' records of a split launch */
} launch;

/* The losses whose row kernel has a pass 2 (NEEDS_PASS2 in kernels_cl/losses.cl): jsd, skl, srkl and tvd
 * for their value, rkl for its gradient's centred sum. */
static int needs_pass2(klcl_loss kind, int want_grad)
{
    switch (kind) {
    case KLCL_LOSS_JSD:
    case KLCL_LOSS_SKL:
    case KLCL_LOSS_SRKL:
    case KLCL_LOSS_TVD: return 1;
    case KLCL_LOSS_RKL: return want_grad;
    default: return 0;
    }
}

/* Whether the caller's gradient may share memory with its student logits (written over them in place):
 * the same cl_mem, or a sub-buffer on either side, which may lie inside the other. Host tensors go
 * through scratch buffers of their own. */
static int grad_may_overlap_student(const klcl_batch *b)
{
    const cl_mem g = b->grad.mem, s = b->student.mem;
    cl_mem parent = NULL;
    if (!g || !s) return 0;
    if (g == s) return 1;
    if (clGetMemObjectInfo(g, CL_MEM_ASSOCIATED_MEMOBJECT, sizeof parent, &parent, NULL) != CL_SUCCESS || parent)
        return 1;
    return clGetMemObjectInfo(s, CL_MEM_ASSOCIATED_MEMOBJECT, sizeof parent, &parent, NULL) != CL_SUCCESS || parent;
}

/* The arguments the row, part and merge kernels share, for rows [r, r + nl) of the current chunk, the
 * launch's first row being row0 of the batch; `pass` for the part and merge kernels. */
static cl_int row_args(cl_kernel k, const launch *L, const matrix *mt, const matrix *ms, const matrix *mg,
                       size_t r, cl_ulong row0, cl_uint nl, cl_int pass)
{
    const cl_uint team = (cl_uint)L->how.team, parts = (cl_uint)L->how.parts;
    arg_setter a = {k, 0, CL_SUCCESS};
    arg_inputs(&a, mt, ms, r, &L->y, &L->w, 1, &L->m);
    arg(&a, sizeof(cl_int), &L->t_logprob);
    arg(&a, sizeof(cl_int), &L->has_teacher);
    arg_params(&a, &L->prm, 1, L->desc->ignore_index);
    arg(&a, sizeof(cl_mem), &L->rl.mem);
    arg(&a, sizeof(cl_ulong), &L->rl.offset);
    arg(&a, sizeof(cl_mem), &L->rs);
    arg(&a, sizeof(cl_mem), &L->rf);
    arg(&a, sizeof(cl_ulong), &row0);
    arg(&a, sizeof(cl_int), &L->want_grad);
    arg_matrix(&a, mg, r);
    arg(&a, sizeof(float), &L->inv_denom);
    arg(&a, sizeof(cl_int), &L->fuse_grad);
    arg(&a, sizeof(cl_uint), &nl);
    arg(&a, sizeof(cl_uint), &team);
    arg(&a, sizeof(cl_uint), &parts);
    arg(&a, sizeof(cl_mem), &L->parts);
    arg(&a, sizeof(cl_int), &pass);
    arg(&a, sizeof(cl_int), &L->exact_max);
    arg(&a, sizeof(cl_int), &L->keep_exps);
    return a.err;
}

/* The row kernels over rows [c0, c0 + n) of the batch (matrices pointing at row c0), in launches of at most
 * ROWS_PER_LAUNCH rows; the first waits on `wait`; *done is the last kernel's event. Rows not split: the
 * row kernel, KLCL_WG / team rows per work-group; with L->fuse_grad it writes the gradient into mg too.
 * Split rows: the part kernel (one team per part) and the merge kernel (one work-item per row), twice for
 * losses with a pass 2; their records live in L->parts, one launch at a time (the queue is in order). */
static klcl_status launch_rows(klcl_context *ctx, const launch *L, const matrix *mt, const matrix *ms,
                               const matrix *mg, size_t c0, size_t n, cl_uint nwait, const cl_event *wait,
                               cl_event *done)
{
    const int split = L->how.parts > 1;
    const size_t per_group = ctx->wg / L->how.team; /* teams per work-group */
    for (size_t r = 0; r < n; r += ROWS_PER_LAUNCH) {
        const size_t nl = n - r < ROWS_PER_LAUNCH ? n - r : ROWS_PER_LAUNCH;
        const cl_ulong row0 = c0 + r;
        const int passes = split ? (L->pass2 ? 2 : 1) : 1;
        for (cl_int pass = 1; pass <= passes; pass++) {
            for (int merge = 0; merge <= split; merge++) {
                cl_kernel k = !split ? L->prog->rows_kernel[L->kind]
                              : merge ? L->prog->merge_kernel[L->kind]
                                      : L->prog->part_kernel[L->kind];
                cl_int err = row_args(k, L, mt, ms, mg, r, row0, (cl_uint)nl, pass);
                if (err != CL_SUCCESS) return klcl_fail_cl(ctx, err, "clSetKernelArg (row kernel)");
                const size_t units = nl * L->how.parts, local = ctx->wg;
                const size_t global = merge ? nl : (units + per_group - 1) / per_group * ctx->wg;
                const int first = r == 0 && pass == 1 && !merge;
                release_event(done);
                err = clEnqueueNDRangeKernel(ctx->queue, k, 1, NULL, &global, merge ? NULL : &local,
                                             first ? nwait : 0, first ? wait : NULL, done);
                if (err != CL_SUCCESS) return klcl_fail_cl(ctx, err, "clEnqueueNDRangeKernel (row kernel)");
            }
        }
    }
    return KLCL_OK;
}

/* The gradient kernel over rows [c0, c0 + n): element-wise, so any launch shape gives the same bits.
 * Work-items per row: one per vector of the context's width, in multiples of 64, at most
 * GRAD_ITEMS_PER_ROW_MAX. */
static klcl_status launch_grad(klcl_context *ctx, const launch *L, const matrix *mt, const matrix *ms,
                               const matrix *mg, size_t c0, size_t n, cl_event *done)
{
    cl_kernel gk = L->prog->grad_kernel[L->kind];
    size_t per_row = ((mg->width + (size_t)ctx->vw - 1) / (size_t)ctx->vw + 63) / 64 * 64;
    if (per_row > GRAD_ITEMS_PER_ROW_MAX) per_row = GRAD_ITEMS_PER_ROW_MAX;
    const cl_int from_buf = L->denom_buf != NULL;
    const cl_mem denom = from_buf ? L->denom_buf : ctx->scratch[SCRATCH_DUMMY].mem;
    for (size_t r = 0; r < n; r += ROWS_PER_LAUNCH) {
        const size_t nl = n - r < ROWS_PER_LAUNCH ? n - r : ROWS_PER_LAUNCH;
        const cl_ulong row0 = c0 + r;
        arg_setter a = {gk, 0, CL_SUCCESS};
        arg_inputs(&a, mt, ms, r, &L->y, &L->w, 0, &L->m);
        arg_params(&a, &L->prm, 0, 0);
        arg(&a, sizeof(float), &L->inv_denom);
        arg(&a, sizeof(cl_mem), &denom);
        arg(&a, sizeof(cl_int), &from_buf);
        arg(&a, sizeof(cl_mem), &L->rs);
        arg(&a, sizeof(cl_mem), &L->rf);
        arg(&a, sizeof(cl_ulong), &row0);
        arg_matrix(&a, mg, r);
        if (a.err != CL_SUCCESS) return klcl_fail_cl(ctx, a.err, "clSetKernelArg (gradient kernel)");
        const size_t global[2] = {per_row, nl};
        release_event(done);
        cl_int err = clEnqueueNDRangeKernel(ctx->queue, gk, 2, NULL, global, NULL, 0, NULL, done);
        if (err != CL_SUCCESS) return klcl_fail_cl(ctx, err, "clEnqueueNDRangeKernel (gradient kernel)");
    }
    return KLCL_OK;
}

/* Binds the per-row vectors (labels and mask uploaded when on the host) and the per-row scratch, and
 * chooses the call's row strategy. */
static klcl_status launch_init(klcl_context *ctx, const klcl_loss_desc *desc, const klcl_batch *b,
                               const klcl_program *prog, launch *L)
{
    const size_t rows = b->rows;
    memset(L, 0, sizeof *L);
    L->prog = prog;
    L->kind = klcl_effective_loss(desc);
    L->desc = desc;
    L->prm = params_of(desc, L->kind);
    L->w = klcl_batch_widths(desc, b);
    L->has_teacher = tensor_given(&b->teacher);
    L->t_logprob = b->teacher_logprobs && desc->tau == 1.0f && desc->softcap == 0.0f;
    L->want_grad = tensor_given(&b->grad);
    L->pass2 = needs_pass2(L->kind, L->want_grad);
    /* Whether or not the row kernel writes the gradient (asynchronous calls leave it to the gradient
     * kernel), and whether or not over the student: the same statistics, hence the same bits, either way.
     * An fp32 gradient only: only there can its row keep the weights. */
    L->exact_max = L->want_grad && ctx->wg == 1 && ctx->keep_exps && b->grad.dtype == KLCL_DTYPE_F32;
    L->how = klcl_row_strategy(ctx, rows, L->w.width,
                               (L->w.t_cols < L->w.s_cols ? L->w.t_cols : L->w.s_cols) / (size_t)ctx->vw);
    const size_t launch_max = rows < ROWS_PER_LAUNCH ? rows : ROWS_PER_LAUNCH;
    klcl_status st;
    if ((st = bind_vector(ctx, &b->labels, SCRATCH_LABELS, sizeof(int32_t), rows, &L->y)) != KLCL_OK ||
        (st = bind_vector(ctx, &b->mask, SCRATCH_MASK, sizeof(uint8_t), rows, &L->m)) != KLCL_OK ||
        (st = bind_vector_out(ctx, &b->row_loss, SCRATCH_ROW_LOSS, rows, &L->rl)) != KLCL_OK ||
        (st = klcl_scratch_reserve(ctx, SCRATCH_ROW_STATS, rows * RS_COUNT * sizeof(float))) != KLCL_OK ||
        (st = klcl_scratch_reserve(ctx, SCRATCH_ROW_FLAGS, rows * RF_COUNT * sizeof(cl_int))) != KLCL_OK ||
        (L->how.parts > 1 &&
         (st = klcl_scratch_reserve(ctx, SCRATCH_PARTS, launch_max * L->how.parts * PART_WORDS * sizeof(float))) !=
             KLCL_OK))
        return st;
    L->rs = ctx->scratch[SCRATCH_ROW_STATS].mem;
    L->rf = ctx->scratch[SCRATCH_ROW_FLAGS].mem;
    L->parts = ctx->scratch[L->how.parts > 1 ? SCRATCH_PARTS : SCRATCH_DUMMY].mem;
    return KLCL_OK;
}

static klcl_status device_compute(klcl_context *ctx, const klcl_loss_desc *desc, const klcl_batch *b,
                                  klcl_result *result)
{
    const size_t rows = b->rows;
    const int want_grad = tensor_given(&b->grad);
    const size_t vt = b->teacher_vocab ? b->teacher_vocab : b->vocab;
    const klcl_program *prog = NULL;
    float *row_loss = NULL, *stats = NULL;
    cl_int *flags = NULL;
    cl_event upload_ev[2] = {NULL, NULL}, free_ev[2] = {NULL, NULL}, done_ev = NULL;
    cl_command_queue cq = ctx->queue;
    cl_int err;

    klcl_status st = klcl_program_group(ctx, b->teacher.dtype, b->student.dtype,
                                        want_grad ? b->grad.dtype : KLCL_DTYPE_F32, (int)klcl_effective_loss(desc), &prog);
    if (st != KLCL_OK) return st;
    if ((st = klcl_scratch_reserve(ctx, SCRATCH_DUMMY, 64)) != KLCL_OK) goto done;

    /* The gradient's denominator is needed before the rows are reduced (chunks write their gradient as
     * they go): only `mean` depends on the data. */
    size_t used = rows;
    if (want_grad && desc->reduction == KLCL_REDUCTION_MEAN && (st = klcl_count_used(ctx, desc, b, &used)) != KLCL_OK)
        goto done;
    const float inv_denom = (float)(1.0 / klcl_denominator(desc->reduction, rows, used));

    launch L;
    if ((st = launch_init(ctx, desc, b, prog, &L)) != KLCL_OK) goto done;
    L.inv_denom = inv_denom;
    /* A split row's gradient comes from the gradient kernel: no work-group holds the whole row. */
    L.fuse_grad = want_grad && ctx->fuse_grad && L.how.parts == 1;
    L.keep_exps = L.fuse_grad && L.exact_max && !grad_may_overlap_student(b);

    matrix mt = matrix_of(&b->teacher, vt, SCRATCH_TEACHER), ms = matrix_of(&b->student, b->vocab, SCRATCH_STUDENT);
    matrix mg = matrix_of(&b->grad, b->vocab, SCRATCH_GRAD);
    const matrix *const all[3] = {&mt, &ms, &mg};
    const size_t chunk = chunk_rows_for(ctx, rows, all, 3), nchunks = (rows + chunk - 1) / chunk;
    for (size_t i = 0; i < 3; i++)
        for (int slot = 0; all[i]->on_host && slot < (nchunks > 1 ? 2 : 1); slot++)
            if ((st = klcl_scratch_reserve(ctx, all[i]->slot0 + slot, chunk * all[i]->width * all[i]->elem)) !=
                KLCL_OK)
                goto done;
    if (nchunks > 1) cq = copy_queue(ctx);

    /* The pipeline: upload chunk c + 1 (transfer queue) while chunk c's kernels run (main queue), then read
     * chunk c's gradient back; a slot is written again only after everything that used it has finished. */
    for (size_t c = 0; c <= nchunks; c++) {
        /* Upload of chunk c (one step ahead of the kernels below, which run chunk c - 1). */
        if (c < nchunks && (mt.on_host || ms.on_host)) {
            const size_t c0 = c * chunk, n = rows - c0 < chunk ? rows - c0 : chunk;
            const int slot = (int)(c % 2);
            matrix_at(ctx, &mt, c0, slot);
            matrix_at(ctx, &ms, c0, slot);
            release_event(&upload_ev[slot]);
            const cl_uint nw = free_ev[slot] ? 1 : 0;
            const cl_event *wait = nw ? &free_ev[slot] : NULL;
            err = CL_SUCCESS;
            if (mt.on_host) err = matrix_transfer(cq, &mt, c0, n, 1, nw, wait, ms.on_host ? NULL : &upload_ev[slot]);
            if (err == CL_SUCCESS && ms.on_host) err = matrix_transfer(cq, &ms, c0, n, 1, nw, wait, &upload_ev[slot]);
            if (err != CL_SUCCESS) {
                st = klcl_fail_cl(ctx, err, "clEnqueueWriteBuffer (logits upload)");
                goto done;
            }
        }
        if (c == 0) continue;
        const size_t k = c - 1, c0 = k * chunk, n = rows - c0 < chunk ? rows - c0 : chunk;
        const int slot = (int)(k % 2);
        matrix_at(ctx, &mt, c0, slot);
        matrix_at(ctx, &ms, c0, slot);
        matrix_at(ctx, &mg, c0, slot);
        const int first = upload_ev[slot] != NULL;
        if ((st = launch_rows(ctx, &L, &mt, &ms, &mg, c0, n, first ? 1 : 0, first ? &upload_ev[slot] : NULL,
                              &done_ev)) != KLCL_OK ||
            (want_grad && !L.fuse_grad && (st = launch_grad(ctx, &L, &mt, &ms, &mg, c0, n, &done_ev)) != KLCL_OK))
            goto done;
        release_event(&free_ev[slot]);
        if (mg.on_host) {
            err = matrix_transfer(cq, &mg, c0, n, 0, 1, &done_ev, &free_ev[slot]);
            if (err != CL_SUCCESS) {
                st = klcl_fail_cl(ctx, err, "clEnqueueReadBufferRect (gradient download)");
                goto done;
            }
        } else {
            free_ev[slot] = done_ev;
            clRetainEvent(done_ev);
        }
        if (cq != ctx->queue) clFlush(cq);
        clFlush(ctx->queue);
    }

    /* Per-row results back to the host: the reduction is done there in double, in row order. */
    row_loss = malloc(rows * sizeof *row_loss);
    stats = malloc(rows * RS_COUNT * sizeof *stats);
    flags = malloc(rows * RF_COUNT * sizeof *flags);
    if (!row_loss || !stats || !flags) {
        st = klcl_fail(ctx, KLCL_ERR_OUT_OF_HOST_MEMORY, "per-row results: out of host memory");
        goto done;
    }
    err = clEnqueueReadBuffer(ctx->queue, L.rl.mem, CL_FALSE, L.rl.offset * sizeof(float), rows * sizeof(float),
                              row_loss, 0, NULL, NULL);
    if (err == CL_SUCCESS)
        err = clEnqueueReadBuffer(ctx->queue, L.rs, CL_FALSE, 0, rows * RS_COUNT * sizeof(float), stats, 0, NULL, NULL);
    if (err == CL_SUCCESS)
        err = clEnqueueReadBuffer(ctx->queue, L.rf, CL_TRUE, 0, rows * RF_COUNT * sizeof(cl_int), flags, 0, NULL, NULL);
    if (err == CL_SUCCESS && cq != ctx->queue) err = clFinish(cq);
    if (err != CL_SUCCESS) {
        st = klcl_fail_cl(ctx, err, "clEnqueueReadBuffer (per-row results)");
        goto done;
    }
    const size_t label_limit = L.w.width < b->vocab ? L.w.width : b->vocab;
    if ((st = tally_rows(ctx, desc->reduction, desc->ignore_index, rows, label_limit, L.y.given, row_loss, stats,
                         flags, result)) != KLCL_OK)
        goto done;
    if (b->row_loss.host) memcpy(b->row_loss.host, row_loss, rows * sizeof(float));
    err = clFinish(ctx->queue);
    if (err != CL_SUCCESS) {
        st = klcl_fail_cl(ctx, err, "clFinish");
        goto done;
    }
    if (ctx->verify) st = verify_call(ctx, desc, b, row_loss, result);
done:
    if (st != KLCL_OK) { /* nothing may still read or write caller memory after return */
        if (cq != ctx->queue) clFinish(cq);
        clFinish(ctx->queue);
    }
    for (int i = 0; i < 2; i++) {
        release_event(&upload_ev[i]);
        release_event(&free_ev[i]);
    }
    release_event(&done_ev);
    free(row_loss);
    free(stats);
    free(flags);
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

/* ------------------------------------------------------------------------------------------------------ */
/* Asynchronous calls                                                                                       */

static klcl_status check_async(klcl_context *ctx, const klcl_batch *b, const klcl_async *as)
{
    if (!as) return klcl_fail(ctx, KLCL_ERR_NULL_POINTER, "async is NULL");
    if (ctx->is_reference)
        return klcl_fail(ctx, KLCL_ERR_UNSUPPORTED, "asynchronous calls need an OpenCL device, not the CPU reference");
    if ((as->num_wait == 0) != (as->wait_list == NULL))
        return klcl_fail(ctx, KLCL_ERR_INVALID_VALUE, "async->wait_list and async->num_wait (%u) disagree",
                         (unsigned)as->num_wait);
    const struct {
        const char *name;
        const klcl_tensor *t;
    } all[] = {{"teacher", &b->teacher}, {"student", &b->student}, {"labels", &b->labels},
               {"mask", &b->mask},       {"grad", &b->grad},       {"row_loss", &b->row_loss}};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (all[i].t->host)
            return klcl_fail(ctx, KLCL_ERR_INVALID_VALUE,
                             "batch->%s.host: asynchronous calls take cl_mem tensors only", all[i].name);
    if (as->loss) {
        size_t size = 0;
        cl_int err = clGetMemObjectInfo(as->loss, CL_MEM_SIZE, sizeof size, &size, NULL);
        if (err != CL_SUCCESS) return klcl_fail(ctx, (klcl_status)err, "async->loss is not a valid buffer");
        if (as->loss_offset % sizeof(float))
            return klcl_fail(ctx, KLCL_ERR_MISALIGNED, "async->loss_offset (%zu) is not a multiple of 4 bytes",
                             as->loss_offset);
        if (as->loss_offset > size || size - as->loss_offset < sizeof(float))
            return klcl_fail(ctx, KLCL_ERR_BUFFER_TOO_SMALL, "async->loss holds %zu bytes; offset %zu + 4 do not fit",
                             size, as->loss_offset);
    }
    return KLCL_OK;
}

static klcl_status grow(klcl_context *ctx, void **p, size_t *cap, size_t bytes)
{
    if (*cap >= bytes) return KLCL_OK;
    void *q = realloc(*p, bytes);
    if (!q) return klcl_fail(ctx, KLCL_ERR_OUT_OF_HOST_MEMORY, "asynchronous call: out of host memory");
    *p = q;
    *cap = bytes;
    return KLCL_OK;
}

klcl_status klcl_compute_async(klcl_context *ctx, const klcl_loss_desc *desc, const klcl_batch *batch,
                               const klcl_async *async)
{
    if (!ctx) return KLCL_ERR_NULL_POINTER;
    ctx->error[0] = '\0';
    klcl_status st = klcl_check_batch(ctx, desc, batch);
    if (st == KLCL_OK) st = check_async(ctx, batch, async);
    if (st != KLCL_OK) return st;
    klcl_async_state *A = &ctx->async;
    if (A->done) clReleaseEvent(A->done);
    A->done = NULL;
    A->pending = 0;
    const size_t rows = batch->rows;
    const klcl_program *prog = NULL;
    cl_event ev = NULL;
    if (async->event) *async->event = NULL;
    const klcl_dtype gdt = tensor_given(&batch->grad) ? batch->grad.dtype : KLCL_DTYPE_F32;
    st = klcl_program_group(ctx, batch->teacher.dtype, batch->student.dtype, gdt, (int)klcl_effective_loss(desc), &prog);
    if (st == KLCL_OK) /* the reduction kernel */
        st = klcl_program_group(ctx, batch->teacher.dtype, batch->student.dtype, gdt, KLCL_GROUP_SHARED, &prog);
    if (st != KLCL_OK) return st;
    launch L;
    if ((st = klcl_scratch_reserve(ctx, SCRATCH_DUMMY, 64)) != KLCL_OK ||
        (st = klcl_scratch_reserve(ctx, SCRATCH_DENOM, sizeof(float))) != KLCL_OK ||
        (st = launch_init(ctx, desc, batch, prog, &L)) != KLCL_OK ||
        (st = grow(ctx, (void **)&A->row_loss, &A->cap_loss, rows * sizeof(float))) != KLCL_OK ||
        (st = grow(ctx, (void **)&A->stats, &A->cap_stats, rows * RS_COUNT * sizeof(float))) != KLCL_OK ||
        (st = grow(ctx, (void **)&A->flags, &A->cap_flags, rows * RF_COUNT * sizeof(cl_int))) != KLCL_OK)
        return st;
    L.denom_buf = ctx->scratch[SCRATCH_DENOM].mem;
    const size_t vt = batch->teacher_vocab ? batch->teacher_vocab : batch->vocab;
    matrix mt = matrix_of(&batch->teacher, vt, SCRATCH_TEACHER), ms = matrix_of(&batch->student, batch->vocab, SCRATCH_STUDENT);
    matrix mg = matrix_of(&batch->grad, batch->vocab, SCRATCH_GRAD);
    matrix_at(ctx, &mt, 0, 0);
    matrix_at(ctx, &ms, 0, 0);
    matrix_at(ctx, &mg, 0, 0);
    if ((st = launch_rows(ctx, &L, &mt, &ms, &mg, 0, rows, async->num_wait, async->wait_list, &ev)) != KLCL_OK)
        goto fail;

    /* The reduction on the device: the loss for async->loss and the gradient's denominator. */
    const cl_ulong nrows = rows;
    const cl_int reduction = desc->reduction, has_loss = async->loss != NULL;
    const cl_mem loss_mem = async->loss ? async->loss : ctx->scratch[SCRATCH_DUMMY].mem;
    const cl_ulong loss_off = async->loss_offset / sizeof(float);
    arg_setter a = {prog->reduce_kernel, 0, CL_SUCCESS};
    arg(&a, sizeof(cl_mem), &L.rl.mem);
    arg(&a, sizeof(cl_ulong), &L.rl.offset);
    arg(&a, sizeof(cl_mem), &L.rf);
    arg(&a, sizeof(cl_ulong), &nrows);
    arg(&a, sizeof(cl_int), &reduction);
    arg(&a, sizeof(cl_mem), &loss_mem);
    arg(&a, sizeof(cl_ulong), &loss_off);
    arg(&a, sizeof(cl_int), &has_loss);
    arg(&a, sizeof(cl_mem), &L.denom_buf);
    if (a.err != CL_SUCCESS) {
        st = klcl_fail_cl(ctx, a.err, "clSetKernelArg (reduction kernel)");
        goto fail;
    }
    release_event(&ev);
    cl_int err = clEnqueueNDRangeKernel(ctx->queue, prog->reduce_kernel, 1, NULL, &ctx->wg, &ctx->wg, 0, NULL, &ev);
    if (err != CL_SUCCESS) {
        st = klcl_fail_cl(ctx, err, "clEnqueueNDRangeKernel (reduction kernel)");
        goto fail;
    }
    if (L.want_grad && (st = launch_grad(ctx, &L, &mt, &ms, &mg, 0, rows, &ev)) != KLCL_OK) goto fail;

    /* Per-row results to the context's host memory, for klcl_async_result; the last read's event marks
     * the end of the whole call (the queue is in order). */
    err = clEnqueueReadBuffer(ctx->queue, L.rl.mem, CL_FALSE, L.rl.offset * sizeof(float), rows * sizeof(float),
                              A->row_loss, 0, NULL, NULL);
    if (err == CL_SUCCESS)
        err = clEnqueueReadBuffer(ctx->queue, L.rs, CL_FALSE, 0, rows * RS_COUNT * sizeof(float), A->stats, 0, NULL,
                                  NULL);
    release_event(&ev);
    if (err == CL_SUCCESS)
        err = clEnqueueReadBuffer(ctx->queue, L.rf, CL_FALSE, 0, rows * RF_COUNT * sizeof(cl_int), A->flags, 0, NULL,
                                  &ev);
    if (err != CL_SUCCESS) {
        st = klcl_fail_cl(ctx, err, "clEnqueueReadBuffer (per-row results)");
        goto fail;
    }
    clFlush(ctx->queue);
    A->done = ev;
    A->pending = 1;
    A->rows = rows;
    A->reduction = desc->reduction;
    A->ignore_index = desc->ignore_index;
    A->has_labels = L.y.given;
    A->label_limit = L.w.width < batch->vocab ? L.w.width : batch->vocab;
    if (async->event) {
        clRetainEvent(ev);
        *async->event = ev;
    }
    return KLCL_OK;
fail:
    release_event(&ev);
    clFinish(ctx->queue); /* a failed call leaves nothing running */
    return st;
}

klcl_status klcl_async_result(klcl_context *ctx, klcl_result *result)
{
    if (!ctx) return KLCL_ERR_NULL_POINTER;
    ctx->error[0] = '\0';
    klcl_async_state *A = &ctx->async;
    if (!A->pending)
        return klcl_fail(ctx, KLCL_ERR_INVALID_VALUE, "no asynchronous call is pending on this context");
    A->pending = 0;
    cl_int err = clWaitForEvents(1, &A->done);
    clReleaseEvent(A->done);
    A->done = NULL;
    if (err != CL_SUCCESS) return klcl_fail_cl(ctx, err, "clWaitForEvents (asynchronous call)");
    klcl_result local;
    return tally_rows(ctx, A->reduction, A->ignore_index, A->rows, A->label_limit, A->has_labels, A->row_loss,
                      A->stats, A->flags, result ? result : &local);
}
