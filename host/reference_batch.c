/* The CPU reference over a whole batch (the device "cpu"), and verify mode, which runs it beside a device
 * call and reports the largest differences. */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Argmax with ties to the lowest index; -1 for a row with no finite-or-(-inf) maximum (all NaN). */
static long argmax_row(const float *x, size_t vocab)
{
    long best = -1;
    for (size_t v = 0; v < vocab; v++)
        if (best < 0 ? x[v] > -INFINITY : x[v] > x[best]) best = (long)v;
    return best;
}

static int row_skipped(const klcl_loss_desc *desc, const int32_t *labels, const uint8_t *mask, size_t i)
{
    return (mask && mask[i] == 0) || (labels && labels[i] == desc->ignore_index);
}

klcl_status klcl_reference_compute(klcl_context *ctx, const klcl_loss_desc *desc, const klcl_batch *b,
                                   klcl_result *result)
{
    const size_t rows = b->rows, vocab = b->vocab;
    const float *teacher = b->teacher.host, *student = b->student.host;
    const int32_t *labels = b->labels.host;
    const uint8_t *mask = b->mask.host;
    float *grad = b->grad.host, *row_loss = b->row_loss.host;
    const size_t ts = klcl_row_stride(&b->teacher, vocab), ss = klcl_row_stride(&b->student, vocab);
    const size_t gs = klcl_row_stride(&b->grad, vocab);
    double *g = grad ? malloc(vocab * sizeof *g) : NULL;
    if (grad && !g) return klcl_fail(ctx, KLCL_ERR_OUT_OF_HOST_MEMORY, "reference: out of host memory");

    size_t used = 0;
    for (size_t i = 0; i < rows; i++) used += !row_skipped(desc, labels, mask, i);
    const double inv_denom = 1.0 / klcl_denominator(desc->reduction, rows, used);

    klcl_tally tally;
    memset(&tally, 0, sizeof tally);
    klcl_status st = KLCL_OK;
    for (size_t i = 0; i < rows; i++) {
        const float *t = teacher ? teacher + i * ts : NULL, *s = student + i * ss;
        int skipped = row_skipped(desc, labels, mask, i);
        double loss = 0.0, h_t = NAN, h_s = NAN;
        if (!skipped) {
            int32_t y = labels ? labels[i] : 0;
            st = klcl_reference_row(desc, vocab, t, s, y, &loss, g, &h_t, &h_s);
            if (st != KLCL_OK) {
                klcl_fail(ctx, st, "reference: row %zu: %s", i, klcl_status_string(st));
                break;
            }
        }
        if (row_loss) row_loss[i] = (float)loss;
        if (grad)
            for (size_t v = 0; v < vocab; v++) grad[i * gs + v] = skipped ? 0.0f : (float)(g[v] * inv_denom);
        long am_s = argmax_row(s, vocab), am_t = t ? argmax_row(t, vocab) : -1;
        klcl_tally_row(&tally, i, skipped, loss, t && !isnan(h_t), h_t, h_s, am_t >= 0 && am_t == am_s,
                       labels != NULL, labels && am_s == labels[i]);
    }
    free(g);
    if (st == KLCL_OK) klcl_tally_finish(&tally, desc->reduction, rows, result);
    return st;
}

/* |a - b| with NaN against NaN and equal infinities counting as agreement. */
static double difference(double a, double b)
{
    if (isnan(a) && isnan(b)) return 0.0;
    if (isinf(a) && a == b) return 0.0;
    if (isnan(a) || isnan(b)) return INFINITY;
    return fabs(a - b);
}

klcl_status klcl_verify(klcl_context *ctx, const klcl_loss_desc *desc, const klcl_batch *b, const float *teacher,
                        const float *student, const int32_t *labels, const uint8_t *mask, const float *row_loss,
                        const float *grad, size_t grad_stride, klcl_result *result)
{
    const size_t rows = b->rows, vocab = b->vocab;
    const size_t ts = klcl_row_stride(&b->teacher, vocab), ss = klcl_row_stride(&b->student, vocab);
    double *g = grad ? malloc(vocab * sizeof *g) : NULL;
    if (grad && !g) return klcl_fail(ctx, KLCL_ERR_OUT_OF_HOST_MEMORY, "verify: out of host memory");
    /* Gradients are compared before scale and denominator, as LOSSES.md states the tolerance. */
    const double denom = klcl_denominator(desc->reduction, rows, result->rows_used);
    const double unscale = desc->loss == KLCL_LOSS_KD || desc->scale == 0.0f ? 1.0 : 1.0 / fabs(desc->scale);
    double max_loss = 0.0, max_grad = 0.0;
    for (size_t i = 0; i < rows; i++) {
        if (row_skipped(desc, labels, mask, i)) continue;
        double loss;
        klcl_status st = klcl_reference_row(desc, vocab, teacher ? teacher + i * ts : NULL, student + i * ss,
                                            labels ? labels[i] : 0, &loss, g, NULL, NULL);
        if (st != KLCL_OK) {
            free(g);
            return klcl_fail(ctx, st, "verify: reference row %zu: %s", i, klcl_status_string(st));
        }
        double e = difference(row_loss[i], loss) / fmax(1.0, fabs(loss));
        if (!(e <= max_loss)) max_loss = e;
        if (!grad) continue;
        for (size_t v = 0; v < vocab; v++) {
            double ref = g[v] * unscale, dev = grad[i * grad_stride + v] * denom * unscale;
            double eg = difference(dev, ref) / (1e-6 + 1e-4 * fabs(ref));
            if (!(eg <= max_grad)) max_grad = eg;
        }
    }
    free(g);
    result->verified = 1;
    result->verify_max_loss_err = max_loss;
    result->verify_max_grad_err = max_grad;
    result->verify_ok = max_loss <= 1e-5 && max_grad <= 1.0;
    return KLCL_OK;
}
