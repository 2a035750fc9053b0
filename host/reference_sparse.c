/* The CPU reference for the sparse (top-k) teacher, straight from LOSSES.md's "Sparse teacher" in double
 * precision: one row, a whole batch (the device "cpu"), and verify mode beside a device call. */
#include "internal.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int klcl_sparse_loss_supported(klcl_loss loss)
{
    return loss == KLCL_LOSS_KL || loss == KLCL_LOSS_RKL || loss == KLCL_LOSS_SOFT_CE || loss == KLCL_LOSS_JSD ||
           loss == KLCL_LOSS_TVD;
}

static int compare_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

int klcl_sparse_check_row(const int32_t *indices, size_t k, size_t vocab, int32_t *work, int32_t *bad)
{
    for (size_t j = 0; j < k; j++)
        if (indices[j] < 0 || (size_t)indices[j] >= vocab) {
            *bad = indices[j];
            return 1;
        }
    memcpy(work, indices, k * sizeof *work);
    qsort(work, k, sizeof *work, compare_i32);
    for (size_t j = 1; j < k; j++)
        if (work[j] == work[j - 1]) {
            *bad = work[j];
            return 2;
        }
    return 0;
}

static double sign(double x)
{
    return (x > 0.0) - (x < 0.0);
}

/* log(sum exp(x[i])) over the entries with use[i] (all when use is NULL); -inf when none has mass. */
static double logsumexp(const double *x, const unsigned char *use, int want, size_t n)
{
    double m = -INFINITY, sum = 0.0;
    for (size_t i = 0; i < n; i++)
        if ((!use || use[i] == want) && x[i] > m) m = x[i];
    if (m == -INFINITY) return -INFINITY;
    for (size_t i = 0; i < n; i++)
        if (!use || use[i] == want) sum += exp(x[i] - m);
    return m + log(sum);
}

klcl_status klcl_reference_sparse_row(const klcl_loss_desc *desc, klcl_sparse_policy policy, size_t vocab,
                                      const float *student, size_t k, const int32_t *indices,
                                      const float *logprobs, double *loss, double *grad, double *teacher_entropy,
                                      double *student_entropy)
{
    if (!desc || !student || !indices || !logprobs || !loss) return KLCL_ERR_NULL_POINTER;
    klcl_status st = klcl_check_desc(desc, NULL);
    if (st != KLCL_OK) return st;
    if (!klcl_sparse_loss_supported(desc->loss)) return KLCL_ERR_UNSUPPORTED;
    if (policy != KLCL_SPARSE_RENORM && policy != KLCL_SPARSE_TAIL) return KLCL_ERR_INVALID_VALUE;
    if (vocab == 0 || vocab > INT32_MAX || k == 0 || k > vocab || k > KLCL_SPARSE_K_MAX)
        return KLCL_ERR_INVALID_SHAPE;

    const klcl_loss kind = klcl_effective_loss(desc);
    const double tau = desc->tau, cap = desc->softcap, scale = desc->scale, beta = desc->beta;
    const size_t n = k + 1; /* categories: the k tokens, then the bucket */
    double *lq = malloc(vocab * sizeof *lq);
    unsigned char *in_k = calloc(vocab, 1);
    double *l = malloc(n * sizeof *l), *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
    double *G = malloc(n * sizeof *G);
    int32_t *work = malloc(k * sizeof *work);
    if (!lq || !in_k || !l || !a || !b || !G || !work) {
        st = KLCL_ERR_OUT_OF_HOST_MEMORY;
        goto done;
    }
    int32_t bad;
    if (klcl_sparse_check_row(indices, k, vocab, work, &bad) != 0) {
        st = KLCL_ERR_INVALID_VALUE;
        goto done;
    }
    for (size_t j = 0; j < k; j++) in_k[indices[j]] = 1;
    if (teacher_entropy) *teacher_entropy = NAN;
    if (student_entropy) *student_entropy = NAN;

    /* Student: log q over V (softcap, tau); invalid with NaN or +inf, or when every raw logit is -inf. */
    int invalid = 0;
    double raw_max = -INFINITY;
    for (size_t v = 0; v < vocab; v++) {
        if (isnan(student[v]) || student[v] == INFINITY) invalid = 1;
        if (student[v] > raw_max) raw_max = student[v];
        lq[v] = (cap > 0.0 ? cap * tanh((double)student[v] / cap) : (double)student[v]) / tau;
    }
    invalid |= raw_max == -INFINITY;
    double lse = invalid ? NAN : logsumexp(lq, NULL, 0, vocab);
    for (size_t v = 0; v < vocab; v++) lq[v] -= lse;

    /* Teacher categories: l_i = lp_i; the bucket holds 1 - sum p_i (tail policy, k < V), else nothing. */
    double sum_p = 0.0;
    for (size_t j = 0; j < k; j++) {
        if (isnan(logprobs[j]) || logprobs[j] == INFINITY) invalid = 1;
        l[j] = logprobs[j];
        sum_p += exp(l[j]);
    }
    l[k] = policy == KLCL_SPARSE_TAIL && k < vocab && sum_p < 1.0 ? log1p(-sum_p) : -INFINITY;
    for (size_t c = 0; c < n; c++) a[c] = l[c] / tau;
    double lse_t = invalid ? NAN : logsumexp(a, NULL, 0, n);
    if (lse_t == -INFINITY) invalid = 1; /* no teacher mass at all */
    if (invalid) {
        *loss = NAN;
        if (grad)
            for (size_t v = 0; v < vocab; v++) grad[v] = NAN;
        goto done;
    }
    for (size_t c = 0; c < n; c++) a[c] -= lse_t;
    for (size_t j = 0; j < k; j++) b[j] = lq[indices[j]];
    b[k] = logsumexp(lq, in_k, 0, vocab); /* Q_tail summed over the tokens outside K */

    if (teacher_entropy) {
        double h = 0.0;
        for (size_t c = 0; c < n; c++) h -= klcl_xlogratio(a[c], a[c], 0.0);
        *teacher_entropy = h;
    }
    if (student_entropy) {
        double h = 0.0;
        for (size_t v = 0; v < vocab; v++) h -= klcl_xlogratio(lq[v], lq[v], 0.0);
        *student_entropy = h;
    }

    /* The dense loss over the categories, and G_c = dL/dQ_c up to what cancels. */
    double value = 0.0, qg = 0.0;
    for (size_t c = 0; c < n; c++) {
        double lm;
        switch (kind) {
        case KLCL_LOSS_KL: value += klcl_xlogratio(a[c], a[c], b[c]); break;
        case KLCL_LOSS_SOFT_CE: value += klcl_xlogratio(a[c], 0.0, b[c]); break;
        case KLCL_LOSS_RKL:
            value += klcl_xlogratio(b[c], b[c], a[c]);
            G[c] = b[c] - a[c];
            break;
        case KLCL_LOSS_JSD:
            lm = klcl_log_mix(a[c], b[c], beta);
            value += beta * klcl_xlogratio(a[c], a[c], lm) + (1.0 - beta) * klcl_xlogratio(b[c], b[c], lm);
            G[c] = (1.0 - beta) * (b[c] - lm);
            break;
        case KLCL_LOSS_TVD:
            value += 0.5 * fabs(exp(a[c]) - exp(b[c]));
            G[c] = 0.5 * sign(exp(b[c]) - exp(a[c]));
            break;
        default: break;
        }
        if (kind != KLCL_LOSS_KL && kind != KLCL_LOSS_SOFT_CE && b[c] != -INFINITY) qg += exp(b[c]) * G[c];
    }
    *loss = scale == 0.0 ? 0.0 : scale * value;

    if (grad) {
        /* Category of every token: its position in K, or the bucket. */
        size_t *cat = malloc(vocab * sizeof *cat);
        if (!cat) {
            st = KLCL_ERR_OUT_OF_HOST_MEMORY;
            goto done;
        }
        for (size_t v = 0; v < vocab; v++) cat[v] = k;
        for (size_t j = 0; j < k; j++) cat[indices[j]] = j;
        for (size_t v = 0; v < vocab; v++) {
            const double q = exp(lq[v]);
            const size_t c = cat[v];
            double dz;
            if (kind == KLCL_LOSS_KL || kind == KLCL_LOSS_SOFT_CE)
                /* dz = q_v (1 - p_c / Q_c); in the bucket p_tail q_v / Q_tail */
                dz = c < k ? q - exp(a[c]) : (lq[v] == -INFINITY ? 0.0 : q - exp(a[k] + lq[v] - b[k]));
            else if (kind == KLCL_LOSS_RKL && value == INFINITY)
                dz = NAN; /* mass against probability 0: undefined, as for the dense rkl */
            else
                dz = q == 0.0 ? 0.0 : q * (G[c] - qg);
            double ds = scale * dz / tau;
            if (cap > 0.0) {
                double th = tanh((double)student[v] / cap);
                ds *= 1.0 - th * th;
            }
            grad[v] = ds;
        }
        free(cat);
    }
done:
    free(lq);
    free(in_k);
    free(l);
    free(a);
    free(b);
    free(G);
    free(work);
    return st;
}

/* ------------------------------------------------------------------------------------------------------ */
/* Batches                                                                                                  */

static int row_skipped(const klcl_loss_desc *desc, const int32_t *labels, const uint8_t *mask, size_t i)
{
    return (mask && mask[i] == 0) || (labels && labels[i] == desc->ignore_index);
}

/* Ties to the lowest index; -1 when no entry is above -inf. */
static long student_argmax(const float *x, size_t vocab)
{
    long best = -1;
    for (size_t v = 0; v < vocab; v++)
        if (best < 0 ? x[v] > -INFINITY : x[v] > x[best]) best = (long)v;
    return best;
}

/* The teacher's top token: largest log-probability, ties to the lowest token index. */
static long teacher_argmax(const int32_t *idx, const float *lp, size_t k)
{
    long best = -1;
    float best_lp = -INFINITY;
    for (size_t j = 0; j < k; j++)
        if (best < 0 || lp[j] > best_lp || (lp[j] == best_lp && idx[j] < best)) {
            best = idx[j];
            best_lp = lp[j];
        }
    return best;
}

klcl_status klcl_reference_sparse_compute(klcl_context *ctx, const klcl_loss_desc *desc, const klcl_batch *b,
                                          const klcl_sparse_teacher *sp, klcl_result *result)
{
    const size_t rows = b->rows, vocab = b->vocab, k = sp->k;
    const int32_t *labels = b->labels.host, *indices = sp->indices.host;
    const float *logprobs = sp->logprobs.host;
    const uint8_t *mask = b->mask.host;
    void *grad = b->grad.host;
    float *row_loss = b->row_loss.host;
    const size_t ss = klcl_row_stride(&b->student, vocab), gs = klcl_row_stride(&b->grad, vocab);
    const size_t is = klcl_row_stride(&sp->indices, k), ps = klcl_row_stride(&sp->logprobs, k);
    const size_t g_elem = klcl_dtype_size(b->grad.dtype);
    double *g = grad ? malloc(vocab * sizeof *g) : NULL;
    float *s = malloc(vocab * sizeof *s), *g32 = grad ? malloc(vocab * sizeof *g32) : NULL;
    if ((grad && (!g || !g32)) || !s) {
        free(g);
        free(s);
        free(g32);
        return klcl_fail(ctx, KLCL_ERR_OUT_OF_HOST_MEMORY, "reference: out of host memory");
    }

    size_t used = 0;
    for (size_t i = 0; i < rows; i++) used += !row_skipped(desc, labels, mask, i);
    const double inv_denom = 1.0 / klcl_denominator(desc->reduction, rows, used);

    klcl_tally tally;
    memset(&tally, 0, sizeof tally);
    klcl_status st = KLCL_OK;
    for (size_t i = 0; i < rows; i++) {
        klcl_widen_row(&b->student, i, ss, vocab, s); /* fp16 and bf16 widened exactly */
        int skipped = row_skipped(desc, labels, mask, i);
        double loss = 0.0, h_t = NAN, h_s = NAN;
        long am_t = -1;
        if (!skipped) {
            st = klcl_reference_sparse_row(desc, sp->policy, vocab, s, k, indices + i * is, logprobs + i * ps,
                                           &loss, g, &h_t, &h_s);
            if (st != KLCL_OK) {
                klcl_fail(ctx, st, "reference: row %zu: %s", i, klcl_status_string(st));
                break;
            }
            am_t = teacher_argmax(indices + i * is, logprobs + i * ps, k);
        }
        if (row_loss) row_loss[i] = (float)loss;
        if (grad) { /* computed in double, rounded to fp32 and then to the gradient's type, as on the device */
            for (size_t v = 0; v < vocab; v++) g32[v] = skipped ? 0.0f : (float)(g[v] * inv_denom);
            klcl_convert(g32, KLCL_DTYPE_F32, (char *)grad + i * gs * g_elem, b->grad.dtype, vocab);
        }
        long am_s = student_argmax(s, vocab);
        klcl_tally_row(&tally, i, skipped, loss, !isnan(h_t), h_t, h_s, am_t >= 0 && am_t == am_s, labels != NULL,
                       labels && am_s == labels[i]);
    }
    free(g);
    free(s);
    free(g32);
    if (st == KLCL_OK) klcl_tally_finish(&tally, desc->reduction, rows, result);
    return st;
}

klcl_status klcl_sparse_verify(klcl_context *ctx, const klcl_loss_desc *desc, const klcl_batch *b,
                               const klcl_sparse_teacher *sp, const float *student, const int32_t *labels,
                               const uint8_t *mask, const int32_t *indices, const float *logprobs,
                               const float *row_loss, const float *grad, size_t grad_stride, klcl_result *result)
{
    const size_t rows = b->rows, vocab = b->vocab, k = sp->k;
    const size_t ss = klcl_row_stride(&b->student, vocab);
    const size_t is = klcl_row_stride(&sp->indices, k), ps = klcl_row_stride(&sp->logprobs, k);
    double *g = grad ? malloc(vocab * sizeof *g) : NULL;
    if (grad && !g) return klcl_fail(ctx, KLCL_ERR_OUT_OF_HOST_MEMORY, "verify: out of host memory");
    const double denom = klcl_denominator(desc->reduction, rows, result->rows_used);
    const double unscale = desc->scale == 0.0f ? 1.0 : 1.0 / fabs(desc->scale);
    double max_loss = 0.0, max_grad = 0.0;
    for (size_t i = 0; i < rows; i++) {
        if (row_skipped(desc, labels, mask, i)) continue;
        double loss;
        klcl_status st = klcl_reference_sparse_row(desc, sp->policy, vocab, student + i * ss, k, indices + i * is,
                                                   logprobs + i * ps, &loss, g, NULL, NULL);
        if (st != KLCL_OK) {
            free(g);
            return klcl_fail(ctx, st, "verify: reference row %zu: %s", i, klcl_status_string(st));
        }
        double e = klcl_difference(row_loss[i], loss) / fmax(1.0, fabs(loss));
        if (!(e <= max_loss)) max_loss = e;
        if (!grad) continue;
        for (size_t v = 0; v < vocab; v++) {
            double ref = g[v] * unscale, dev = grad[i * grad_stride + v] * denom * unscale;
            const double diff = klcl_difference(dev, ref); /* 0 for NaN against NaN: no division by NaN */
            double eg = diff == 0.0 ? 0.0
                                    : diff / (1e-6 + 1e-4 * fabs(ref) +
                                              klcl_rounding_allowance(b->grad.dtype, ref, denom * unscale));
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
