/* The CPU reference over a whole batch (the device "cpu"), and verify mode, which runs it beside a device
 * call and reports the largest differences. */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int row_skipped(const klcl_loss_desc *desc, const int32_t *labels, const uint8_t *mask, size_t i)
{
    return (mask && mask[i] == 0) || (labels && labels[i] == desc->ignore_index);
}

klcl_widths klcl_batch_widths(const klcl_loss_desc *desc, const klcl_batch *b)
{
    const size_t vs = b->vocab, vt = b->teacher_vocab ? b->teacher_vocab : b->vocab;
    klcl_widths w;
    w.width = desc->vocab_policy == KLCL_VOCAB_PAD ? (vt > vs ? vt : vs) : (vt < vs ? vt : vs);
    w.t_cols = vt < w.width ? vt : w.width;
    w.s_cols = vs < w.width ? vs : w.width;
    return w;
}

/* Row buffers of one reference row, `width` columns as the loss sees them. */
typedef struct ref_row {
    klcl_widths w;
    float *t, *s;
    double *g;
} ref_row;

static klcl_status ref_row_init(ref_row *r, const klcl_loss_desc *desc, const klcl_batch *b, int want_grad)
{
    r->w = klcl_batch_widths(desc, b);
    r->t = malloc(r->w.width * sizeof *r->t);
    r->s = malloc(r->w.width * sizeof *r->s);
    r->g = want_grad ? malloc(r->w.width * sizeof *r->g) : NULL;
    return r->t && r->s && (r->g || !want_grad) ? KLCL_OK : KLCL_ERR_OUT_OF_HOST_MEMORY;
}

static void ref_row_free(ref_row *r)
{
    free(r->t);
    free(r->s);
    free(r->g);
}

/* Row i of host tensors widened to fp32, -inf past each row's own width (the pad policy). */
static void ref_row_load(ref_row *r, const klcl_batch *b, const klcl_tensor *teacher, const klcl_tensor *student,
                         size_t i)
{
    const size_t vt = b->teacher_vocab ? b->teacher_vocab : b->vocab;
    klcl_widen_row(student, i, klcl_row_stride(student, b->vocab), r->w.s_cols, r->s);
    for (size_t v = r->w.s_cols; v < r->w.width; v++) r->s[v] = -INFINITY;
    if (!teacher->host) return;
    klcl_widen_row(teacher, i, klcl_row_stride(teacher, vt), r->w.t_cols, r->t);
    for (size_t v = r->w.t_cols; v < r->w.width; v++) r->t[v] = -INFINITY;
}

/* Argmax with ties to the lowest index; -1 for a row with no finite-or-(-inf) maximum (all NaN). */
static long argmax_row(const float *x, size_t vocab)
{
    long best = -1;
    for (size_t v = 0; v < vocab; v++)
        if (best < 0 ? x[v] > -INFINITY : x[v] > x[best]) best = (long)v;
    return best;
}

/* Stores gradient column v of row i (a student-shaped row of any dtype). */
static void store_grad(const klcl_tensor *grad, size_t stride, size_t i, size_t v, float value)
{
    klcl_convert(&value, KLCL_DTYPE_F32, (char *)grad->host + (i * stride + v) * klcl_dtype_size(grad->dtype),
                 grad->dtype, 1);
}

klcl_status klcl_reference_compute(klcl_context *ctx, const klcl_loss_desc *desc, const klcl_batch *b,
                                   klcl_result *result)
{
    const size_t rows = b->rows, vs = b->vocab;
    const int32_t *labels = b->labels.host;
    const uint8_t *mask = b->mask.host;
    float *row_loss = b->row_loss.host;
    const size_t gs = klcl_row_stride(&b->grad, vs);
    ref_row r;
    klcl_status st = ref_row_init(&r, desc, b, b->grad.host != NULL);
    if (st != KLCL_OK) {
        ref_row_free(&r);
        return klcl_fail(ctx, st, "reference: out of host memory");
    }
    const size_t width = r.w.width;

    size_t used = 0;
    for (size_t i = 0; i < rows; i++) used += !row_skipped(desc, labels, mask, i);
    const double inv_denom = 1.0 / klcl_denominator(desc->reduction, rows, used);

    klcl_tally tally;
    memset(&tally, 0, sizeof tally);
    for (size_t i = 0; i < rows; i++) {
        ref_row_load(&r, b, &b->teacher, &b->student, i);
        const float *t = b->teacher.host ? r.t : NULL;
        int skipped = row_skipped(desc, labels, mask, i);
        double loss = 0.0, h_t = NAN, h_s = NAN;
        if (!skipped) {
            int32_t y = labels ? labels[i] : 0;
            st = klcl_reference_row_ex(desc, width, t, r.s, y, b->teacher_logprobs, &loss, r.g, &h_t, &h_s);
            if (st != KLCL_OK) {
                klcl_fail(ctx, st, "reference: row %zu: %s", i, klcl_status_string(st));
                break;
            }
        }
        if (row_loss) row_loss[i] = (float)loss;
        if (b->grad.host)
            for (size_t v = 0; v < vs; v++)
                store_grad(&b->grad, gs, i, v, skipped || v >= width ? 0.0f : (float)(r.g[v] * inv_denom));
        long am_s = argmax_row(r.s, width), am_t = t ? argmax_row(t, width) : -1;
        klcl_tally_row(&tally, i, skipped, loss, t && !isnan(h_t), h_t, h_s, am_t >= 0 && am_t == am_s,
                       labels != NULL, labels && am_s == labels[i]);
    }
    ref_row_free(&r);
    if (st == KLCL_OK) klcl_tally_finish(&tally, desc->reduction, rows, result);
    return st;
}

/* |a - b| with NaN against NaN and equal infinities counting as agreement. */
double klcl_difference(double a, double b)
{
    if (isnan(a) && isnan(b)) return 0.0;
    if (isinf(a) && a == b) return 0.0;
    if (isnan(a) || isnan(b)) return INFINITY;
    return fabs(a - b);
}

/* Half an ulp of a gradient rounded to `dtype` (its unit roundoff relative to |ref|, and fp16's smallest
 * subnormal step in the stored units, which `stored_to_ref` converts): a half-precision gradient is
 * held to the contract's tolerance before its one rounding. */
double klcl_rounding_allowance(klcl_dtype dtype, double ref, double stored_to_ref)
{
    switch (dtype) {
    case KLCL_DTYPE_F16: return fabs(ref) * 0x1p-11 + 0x1p-25 * fabs(stored_to_ref);
    case KLCL_DTYPE_BF16: return fabs(ref) * 0x1p-8;
    default: return 0.0;
    }
}

klcl_status klcl_verify(klcl_context *ctx, const klcl_loss_desc *desc, const klcl_batch *b,
                        const klcl_tensor *teacher, const klcl_tensor *student, const int32_t *labels,
                        const uint8_t *mask, const float *row_loss, const klcl_tensor *grad, klcl_result *result)
{
    const size_t rows = b->rows, vs = b->vocab;
    const size_t gs = grad->host ? klcl_row_stride(grad, vs) : 0;
    ref_row r;
    klcl_status st = ref_row_init(&r, desc, b, grad->host != NULL);
    if (st != KLCL_OK) {
        ref_row_free(&r);
        return klcl_fail(ctx, st, "verify: out of host memory");
    }
    /* Gradients are compared before scale and denominator, as LOSSES.md states the tolerance. */
    const double denom = klcl_denominator(desc->reduction, rows, result->rows_used);
    const double unscale = desc->loss == KLCL_LOSS_KD || desc->scale == 0.0f ? 1.0 : 1.0 / fabs(desc->scale);
    double max_loss = 0.0, max_grad = 0.0;
    for (size_t i = 0; i < rows; i++) {
        if (row_skipped(desc, labels, mask, i)) continue;
        ref_row_load(&r, b, teacher, student, i);
        double loss;
        st = klcl_reference_row_ex(desc, r.w.width, teacher->host ? r.t : NULL, r.s, labels ? labels[i] : 0,
                                   b->teacher_logprobs, &loss, r.g, NULL, NULL);
        if (st != KLCL_OK) {
            ref_row_free(&r);
            return klcl_fail(ctx, st, "verify: reference row %zu: %s", i, klcl_status_string(st));
        }
        double e = klcl_difference(row_loss[i], loss) / fmax(1.0, fabs(loss));
        if (!(e <= max_loss)) max_loss = e;
        if (!grad->host) continue;
        for (size_t v = 0; v < vs && v < r.w.width; v++) {
            float dev32;
            klcl_convert((const char *)grad->host + (i * gs + v) * klcl_dtype_size(grad->dtype), grad->dtype,
                         &dev32, KLCL_DTYPE_F32, 1);
            double ref = r.g[v] * unscale, dev = dev32 * denom * unscale;
            if (klcl_difference(dev, ref) == 0.0) continue; /* also NaN against NaN, whose tolerance is NaN */
            double eg = klcl_difference(dev, ref) / (1e-6 + 1e-4 * fabs(ref) + klcl_rounding_allowance(grad->dtype, ref, denom * unscale));
            if (!(eg <= max_grad)) max_grad = eg;
        }
    }
    ref_row_free(&r);
    result->verified = 1;
    result->verify_max_loss_err = max_loss;
    result->verify_max_grad_err = max_grad;
    result->verify_ok = max_loss <= 1e-5 && max_grad <= 1.0;
    return KLCL_OK;
}
