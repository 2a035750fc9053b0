/* The CPU reference: LOSSES.md computed row by row in double precision, straight from the definitions.
 * It is the yardstick for the kernels (tests, verify mode) and the backend of the device "cpu". */
#include "internal.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* exp(lw) * (log_num - log_den) with the conventions of LOSSES.md: a weight of exactly 0 (lw = -inf)
 * contributes 0 (0 log 0 = 0); any positive weight against probability 0 gives +inf. Judged on the log
 * of the weight: exp(lw) may underflow while the probability is still positive. */
double klcl_xlogratio(double lw, double log_num, double log_den)
{
    if (lw == -INFINITY) return 0.0;
    if (log_den == -INFINITY) return INFINITY;
    return exp(lw) * (log_num - log_den);
}

/* log(wa*e^la + (1-wa)*e^lb) without forming the sum of probabilities. */
double klcl_log_mix(double la, double lb, double wa)
{
    double x = wa > 0.0 ? la + log(wa) : -INFINITY;
    double y = wa < 1.0 ? lb + log1p(-wa) : -INFINITY;
    double m = x > y ? x : y;
    if (m == -INFINITY) return -INFINITY;
    return m + log(exp(x - m) + exp(y - m));
}

static double softcapped(float x, double cap)
{
    return cap > 0.0 ? cap * tanh((double)x / cap) : (double)x;
}

/* log-softmax of cap(x)/tau into out; returns lse of cap(x)/tau, or NaN when the row is invalid
 * (a NaN or +inf entry, or every entry -inf). */
static double log_softmax_row(const float *x, size_t vocab, double cap, double tau, double *out)
{
    double m = -INFINITY, raw_max = -INFINITY;
    for (size_t v = 0; v < vocab; v++) {
        if (isnan(x[v]) || x[v] == INFINITY) return NAN;
        if (x[v] > raw_max) raw_max = x[v];
        out[v] = softcapped(x[v], cap) / tau;
        if (out[v] > m) m = out[v];
    }
    if (raw_max == -INFINITY) return NAN; /* every logit -inf; softcap would have turned them into -c */
    double sum = 0.0;
    for (size_t v = 0; v < vocab; v++) sum += exp(out[v] - m);
    double lse = m + log(sum);
    for (size_t v = 0; v < vocab; v++) out[v] -= lse;
    return lse;
}

klcl_status klcl_reference_row(const klcl_loss_desc *desc, size_t vocab, const float *teacher,
                               const float *student, int32_t label, double *loss, double *grad,
                               double *teacher_entropy, double *student_entropy)
{
    return klcl_reference_row_ex(desc, vocab, teacher, student, label, 0, loss, grad, teacher_entropy,
                                 student_entropy);
}

klcl_status klcl_reference_row_ex(const klcl_loss_desc *desc, size_t vocab, const float *teacher,
                                  const float *student, int32_t label, int teacher_logprobs, double *loss,
                                  double *grad, double *teacher_entropy, double *student_entropy)
{
    if (!desc || !student || !loss) return KLCL_ERR_NULL_POINTER;
    klcl_status st = klcl_check_desc(desc, NULL);
    if (st != KLCL_OK) return st;
    if (vocab == 0 || vocab > INT32_MAX) return KLCL_ERR_INVALID_SHAPE;
    int needs_label = klcl_loss_needs_labels(desc->loss);
    if (!teacher && desc->loss != KLCL_LOSS_CE) return KLCL_ERR_NULL_POINTER;
    if (needs_label && (label < 0 || (size_t)label >= vocab)) return KLCL_ERR_LABEL_OUT_OF_RANGE;

    klcl_loss kind = klcl_effective_loss(desc);
    const double tau = desc->tau, cap = desc->softcap, scale = desc->scale;
    const double beta = desc->beta, lam = desc->lambda, alpha = desc->alpha;
    const double eps = desc->label_smoothing, zl = desc->z_loss;
    const double V = (double)vocab;

    double *lp = malloc(vocab * sizeof *lp);
    double *lq = malloc(vocab * sizeof *lq);
    double *lq1 = kind == KLCL_LOSS_KD ? malloc(vocab * sizeof *lq1) : NULL;
    if (!lp || !lq || (kind == KLCL_LOSS_KD && !lq1)) {
        free(lp); free(lq); free(lq1);
        return KLCL_ERR_OUT_OF_HOST_MEMORY;
    }

    double lse_t = teacher ? log_softmax_row(teacher, vocab, cap, tau, lp) : 0.0;
    /* Log-probabilities at tau = 1 without softcap are log p as they are: no second normalisation. */
    if (teacher && teacher_logprobs && tau == 1.0 && cap == 0.0 && !isnan(lse_t))
        for (size_t v = 0; v < vocab; v++) lp[v] = teacher[v];
    double lse_s = log_softmax_row(student, vocab, cap, tau, lq);
    if (lq1) log_softmax_row(student, vocab, cap, 1.0, lq1);
    int uses_teacher = kind != KLCL_LOSS_CE;
    int invalid = isnan(lse_s) || (uses_teacher && isnan(lse_t));

    if (teacher_entropy) *teacher_entropy = NAN;
    if (student_entropy) *student_entropy = NAN;
    if (invalid) {
        *loss = NAN;
        if (grad) for (size_t v = 0; v < vocab; v++) grad[v] = NAN;
        goto done;
    }
    if (teacher_entropy && teacher && !isnan(lse_t)) {
        double h = 0.0;
        for (size_t v = 0; v < vocab; v++) h -= klcl_xlogratio(lp[v], lp[v], 0.0);
        *teacher_entropy = h;
    }
    if (student_entropy) {
        double h = 0.0;
        for (size_t v = 0; v < vocab; v++) h -= klcl_xlogratio(lq[v], lq[v], 0.0);
        *student_entropy = h;
    }

    /* Row value (before scale) and the row sums the gradients need. */
    double l = 0.0, aux = 0.0;
    for (size_t v = 0; v < vocab; v++) {
        double p = uses_teacher ? exp(lp[v]) : 0.0, q = exp(lq[v]), lm;
        switch (kind) {
        case KLCL_LOSS_KL: case KLCL_LOSS_KD: l += klcl_xlogratio(lp[v], lp[v], lq[v]); break;
        case KLCL_LOSS_RKL: l += klcl_xlogratio(lq[v], lq[v], lp[v]); break;
        case KLCL_LOSS_SOFT_CE: l += klcl_xlogratio(lp[v], 0.0, lq[v]); break;
        case KLCL_LOSS_CE: aux += lq[v]; break;
        case KLCL_LOSS_JSD:
            lm = klcl_log_mix(lp[v], lq[v], beta);
            l += beta * klcl_xlogratio(lp[v], lp[v], lm) + (1.0 - beta) * klcl_xlogratio(lq[v], lq[v], lm);
            aux += klcl_xlogratio(lq[v], lq[v], lm); /* KL(q||m) */
            break;
        case KLCL_LOSS_SKL:
            lm = klcl_log_mix(lp[v], lq[v], lam);
            l += klcl_xlogratio(lp[v], lp[v], lm);
            if (p > 0.0 && q > 0.0) aux += exp(lp[v] + lq[v] - lm); /* sum p q / m */
            break;
        case KLCL_LOSS_SRKL:
            lm = klcl_log_mix(lp[v], lq[v], 1.0 - lam);
            l += klcl_xlogratio(lq[v], lq[v], lm);
            if (q > 0.0) aux += exp(2.0 * lq[v] - lm); /* sum q^2 / m */
            break;
        case KLCL_LOSS_TVD:
            l += 0.5 * fabs(p - q);
            aux += 0.5 * q * ((q > p) - (q < p)); /* sum q g, g = sign(q - p)/2 */
            break;
        default: break;
        }
    }
    double ce_term = 0.0;
    if (kind == KLCL_LOSS_CE) {
        /* A term whose weight is exactly 0 is left out: never 0 * inf. */
        l = zl > 0.0 ? zl * lse_s * lse_s : 0.0;
        if (eps < 1.0) l -= (1.0 - eps) * lq[label];
        if (eps > 0.0) l -= eps / V * aux;
    } else if (kind == KLCL_LOSS_KD) {
        ce_term = -lq1[label];
    }
    if (kind == KLCL_LOSS_KD)
        *loss = (alpha > 0.0 ? alpha * ce_term : 0.0) + ((1.0 - alpha) * scale != 0.0 ? (1.0 - alpha) * scale * l : 0.0);
    else
        *loss = scale == 0.0 ? 0.0 : scale * l;

    if (grad) {
        for (size_t v = 0; v < vocab; v++) {
            double p = uses_teacher ? exp(lp[v]) : 0.0, q = exp(lq[v]), lm, dz;
            double onehot = needs_label && (size_t)label == v ? 1.0 : 0.0;
            switch (kind) {
            case KLCL_LOSS_KL: case KLCL_LOSS_SOFT_CE: dz = q - p; break;
            case KLCL_LOSS_RKL: /* +inf loss (mass where p = 0): the gradient is undefined */
                dz = l == INFINITY ? NAN : q == 0.0 ? 0.0 : q * (lq[v] - lp[v] - l);
                break;
            case KLCL_LOSS_CE: dz = q - (1.0 - eps) * onehot - eps / V + 2.0 * zl * lse_s * q; break;
            case KLCL_LOSS_JSD:
                lm = klcl_log_mix(lp[v], lq[v], beta);
                dz = q == 0.0 ? 0.0 : (1.0 - beta) * q * (lq[v] - lm - aux);
                break;
            case KLCL_LOSS_SKL:
                lm = klcl_log_mix(lp[v], lq[v], lam);
                dz = -(1.0 - lam) * ((p > 0.0 && q > 0.0 ? exp(lp[v] + lq[v] - lm) : 0.0) - q * aux);
                break;
            case KLCL_LOSS_SRKL:
                lm = klcl_log_mix(lp[v], lq[v], 1.0 - lam);
                dz = q == 0.0 ? 0.0 : q * (lq[v] - lm - l) - lam * (exp(2.0 * lq[v] - lm) - q * aux);
                break;
            case KLCL_LOSS_TVD: dz = 0.5 * q * ((q > p) - (q < p)) - q * aux; break;
            case KLCL_LOSS_KD: dz = 0.0; break;
            default: dz = 0.0; break;
            }
            double ds = kind == KLCL_LOSS_KD
                            ? alpha * (exp(lq1[v]) - onehot) + (1.0 - alpha) * scale * (q - p) / tau
                            : scale * dz / tau;
            if (cap > 0.0) {
                double th = tanh((double)student[v] / cap);
                ds *= 1.0 - th * th;
            }
            grad[v] = ds;
        }
    }
done:
    free(lp); free(lq); free(lq1);
    return KLCL_OK;
}
