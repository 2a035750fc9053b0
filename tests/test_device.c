/* The OpenCL kernels against the CPU reference, on whatever OpenCL device is present (PoCL in CI):
 * every loss x reduction over a grid of shapes, special values, determinism, cl_mem tensors, adopted
 * queues, verify mode. KLCL_TEST_SMALL=1 shrinks the grid for runs under a simulator. */
#include "test_util.h"

#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static klcl_context *ctx;
static int small_grid;

static int setup(void **state)
{
    (void)state;
    const char *s = getenv("KLCL_TEST_SMALL");
    small_grid = s && strcmp(s, "1") == 0;
    ctx = tu_device_context(0);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    klcl_context_destroy(ctx);
    return 0;
}

/* One batch of test data with its reference. */
typedef struct batch_data {
    size_t rows, vocab;
    float *teacher, *student;
    int32_t *labels; /* NULL when the loss needs none */
    double *ref_loss; /* per row, after scale; 0 for skipped rows */
    double *ref_grad; /* rows x vocab, d(row loss)/ds after scale, denominator 1 */
    size_t used;
} batch_data;

static void data_alloc(batch_data *d, size_t rows, size_t vocab, int with_labels)
{
    memset(d, 0, sizeof *d);
    d->rows = rows;
    d->vocab = vocab;
    d->teacher = malloc(rows * vocab * sizeof(float));
    d->student = malloc(rows * vocab * sizeof(float));
    d->ref_loss = malloc(rows * sizeof(double));
    d->ref_grad = malloc(rows * vocab * sizeof(double));
    assert_non_null(d->teacher);
    assert_non_null(d->student);
    assert_non_null(d->ref_loss);
    assert_non_null(d->ref_grad);
    tu_fill_logits(d->teacher, d->student, rows, vocab, vocab);
    if (with_labels) {
        d->labels = malloc(rows * sizeof(int32_t));
        assert_non_null(d->labels);
        for (size_t i = 0; i < rows; i++) d->labels[i] = (int32_t)(tu_uniform() * (double)vocab);
        if (rows > 1) d->labels[rows / 2] = -100; /* one ignored row */
    }
}

static void data_free(batch_data *d)
{
    free(d->teacher);
    free(d->student);
    free(d->labels);
    free(d->ref_loss);
    free(d->ref_grad);
}

static void data_reference(batch_data *d, const klcl_loss_desc *desc)
{
    d->used = 0;
    for (size_t i = 0; i < d->rows; i++) {
        double *g = d->ref_grad + i * d->vocab;
        if (d->labels && d->labels[i] == desc->ignore_index) {
            d->ref_loss[i] = 0.0;
            for (size_t v = 0; v < d->vocab; v++) g[v] = 0.0;
            continue;
        }
        d->used++;
        assert_int_equal(klcl_reference_row(desc, d->vocab, d->teacher + i * d->vocab, d->student + i * d->vocab,
                                            d->labels ? d->labels[i] : 0, &d->ref_loss[i], g, NULL, NULL),
                         KLCL_OK);
    }
}

static klcl_batch host_batch(const batch_data *d, float *grad, float *row_loss)
{
    klcl_batch b = KLCL_BATCH_INIT;
    b.rows = d->rows;
    b.vocab = d->vocab;
    b.teacher = klcl_host_tensor(d->teacher, 0);
    b.student = klcl_host_tensor(d->student, 0);
    if (d->labels) b.labels = klcl_host_tensor(d->labels, 0);
    b.grad = klcl_host_tensor(grad, 0);
    b.row_loss = klcl_host_tensor(row_loss, 0);
    return b;
}

static double denominator(klcl_reduction r, const batch_data *d)
{
    return r == KLCL_REDUCTION_MEAN ? (d->used ? (double)d->used : 1.0)
           : r == KLCL_REDUCTION_BATCHMEAN ? (double)d->rows
                                           : 1.0;
}

/* p_v and q_v in double, for the tvd kink below. */
static void probabilities(const batch_data *d, const klcl_loss_desc *desc, size_t row, size_t col, double *p,
                          double *q)
{
    const float *rows[2] = {d->teacher + row * d->vocab, d->student + row * d->vocab};
    double out[2];
    for (int k = 0; k < 2; k++) {
        double m = -INFINITY, sum = 0.0, x_col = 0.0;
        for (size_t v = 0; v < d->vocab; v++) {
            double x = desc->softcap > 0 ? desc->softcap * tanh(rows[k][v] / desc->softcap) : rows[k][v];
            if (x / desc->tau > m) m = x / desc->tau;
        }
        for (size_t v = 0; v < d->vocab; v++) {
            double x = desc->softcap > 0 ? desc->softcap * tanh(rows[k][v] / desc->softcap) : rows[k][v];
            sum += exp(x / desc->tau - m);
            if (v == col) x_col = x / desc->tau;
        }
        out[k] = exp(x_col - m) / sum;
    }
    *p = out[0];
    *q = out[1];
}

/* tvd's gradient has a kink where p_v = q_v: any sign in [-1, 1] is a valid subgradient there. Where p_v and
 * q_v agree to fp32 resolution the device may pick the other side than the double reference; accept that
 * and only that: the entry must differ by what flipping the sign accounts for, q_v scale / (tau den). */
static int tvd_tie(const batch_data *d, const klcl_loss_desc *desc, size_t k, double dev, double ref, double den)
{
    if (desc->loss != KLCL_LOSS_TVD) return 0;
    double p, q;
    probabilities(d, desc, k / d->vocab, k % d->vocab, &p, &q);
    if (fabs(p - q) > 1e-5 * fmax(p, q)) return 0;
    return fabs(dev - ref) <= q * fabs(desc->scale) / desc->tau / den * (1.0 + 1e-3) + 1e-6;
}

/* The device against the reference for every reduction; fails with the first entry out of tolerance. */
static void check_all_reductions(batch_data *d, klcl_loss_desc desc, const char *what)
{
    data_reference(d, &desc);
    float *grad = malloc(d->rows * d->vocab * sizeof(float));
    float *row_loss = malloc(d->rows * sizeof(float));
    assert_non_null(grad);
    assert_non_null(row_loss);
    /* Gradients compare before scale (LOSSES.md); kd's scale weighs only its soft part. */
    const double unscale = desc.loss == KLCL_LOSS_KD || desc.scale == 0.0f ? 1.0 : 1.0 / fabs(desc.scale);
    for (int r = KLCL_REDUCTION_NONE; r <= KLCL_REDUCTION_BATCHMEAN; r++) {
        desc.reduction = (klcl_reduction)r;
        klcl_batch b = host_batch(d, grad, row_loss);
        klcl_result res;
        klcl_status st = klcl_compute(ctx, &desc, &b, &res);
        if (st != KLCL_OK) fail_msg("%s: %s", what, klcl_last_error(ctx));
        double sum = 0.0;
        for (size_t i = 0; i < d->rows; i++) {
            sum += d->ref_loss[i];
            if (!tu_loss_close(row_loss[i], d->ref_loss[i]))
                fail_msg("%s %s: row %zu loss %.9g, reference %.9g", what, klcl_reduction_name(desc.reduction), i,
                         (double)row_loss[i], d->ref_loss[i]);
        }
        double den = denominator(desc.reduction, d);
        double expect = desc.reduction == KLCL_REDUCTION_MEAN && d->used == 0 ? 0.0 : sum / den;
        if (!tu_loss_close(res.loss, expect))
            fail_msg("%s %s: reduced %.9g, reference %.9g", what, klcl_reduction_name(desc.reduction), res.loss,
                     expect);
        assert_int_equal(res.rows_used, d->used);
        for (size_t k = 0; k < d->rows * d->vocab; k++) {
            double dev = grad[k] * den * unscale, ref = d->ref_grad[k] * unscale;
            if (!tu_grad_close(dev, ref) && !tvd_tie(d, &desc, k, grad[k], d->ref_grad[k] / den, den))
                fail_msg("%s %s: grad[%zu][%zu] %.9g, reference %.9g", what, klcl_reduction_name(desc.reduction),
                         k / d->vocab, k % d->vocab, dev, ref);
        }
    }
    free(grad);
    free(row_loss);
}

static int needs_labels(klcl_loss loss)
{
    return loss == KLCL_LOSS_CE || loss == KLCL_LOSS_KD;
}

static klcl_loss_desc desc_for(klcl_loss loss)
{
    klcl_loss_desc desc;
    klcl_loss_desc_init(&desc, loss);
    desc.tau = 1.5f;
    desc.scale = 2.25f;
    desc.beta = 0.3f;
    desc.alpha = 0.4f;
    if (loss == KLCL_LOSS_CE) {
        desc.label_smoothing = 0.1f;
        desc.z_loss = 1e-3f;
    }
    return desc;
}

/* Every loss x reduction over V in {1, 2, 3, 1000, 4097, 32000, 262144} and N in {1, 7, 64}. */
static void test_grid(void **state)
{
    (void)state;
    static const size_t vocabs[] = {1, 2, 3, 1000, 4097, 32000, 262144};
    static const size_t rows[] = {1, 7, 64};
    static const size_t small_vocabs[] = {1, 2, 3, 100, 257};
    static const size_t small_rows[] = {1, 3};
    const size_t *vs = small_grid ? small_vocabs : vocabs, *ns = small_grid ? small_rows : rows;
    size_t nv = small_grid ? 5 : 7, nn = small_grid ? 2 : 3;
    tu_seed(1);
    for (size_t iv = 0; iv < nv; iv++)
        for (size_t in = 0; in < nn; in++) {
            batch_data d;
            data_alloc(&d, ns[in], vs[iv], 1);
            for (int l = 0; l < KLCL_LOSS_COUNT; l++) {
                klcl_loss_desc desc = desc_for((klcl_loss)l);
                int32_t *labels = d.labels;
                if (!needs_labels((klcl_loss)l) && l % 2) d.labels = NULL; /* some without */
                char what[96];
                snprintf(what, sizeof what, "%s V=%zu N=%zu", klcl_loss_name((klcl_loss)l), d.vocab, d.rows);
                check_all_reductions(&d, desc, what);
                d.labels = labels;
            }
            data_free(&d);
        }
}

/* -inf columns, softcap, temperatures far from 1: every loss, against the reference. */
static void test_special_values(void **state)
{
    (void)state;
    const size_t vocab = small_grid ? 100 : 5000;
    tu_seed(2);
    const float taus[] = {0.01f, 0.2f, 50.0f};
    for (int l = 0; l < KLCL_LOSS_COUNT; l++) {
        batch_data d;
        data_alloc(&d, 5, vocab, 1);
        for (size_t i = 0; i < d.rows; i++)
            for (size_t v = i; v < vocab; v += 7) d.teacher[i * vocab + v] = d.student[i * vocab + v] = -INFINITY;
        char what[96];
        for (size_t k = 0; k < sizeof taus / sizeof taus[0]; k++) {
            klcl_loss_desc desc = desc_for((klcl_loss)l);
            desc.tau = taus[k];
            snprintf(what, sizeof what, "%s -inf columns tau=%g", klcl_loss_name((klcl_loss)l), (double)taus[k]);
            check_all_reductions(&d, desc, what);
        }
        klcl_loss_desc desc = desc_for((klcl_loss)l);
        desc.softcap = 5.0f;
        snprintf(what, sizeof what, "%s softcap", klcl_loss_name((klcl_loss)l));
        check_all_reductions(&d, desc, what);
        data_free(&d);
    }
}

/* Long-tailed rows (Zipf-like, as language models give): thousands of terms each far below the ulp of the
 * running sum, which a long fp32 accumulation drops. Every loss must stay within the contract. */
static void test_long_tailed_rows(void **state)
{
    (void)state;
    const size_t vocab = small_grid ? 3000 : 131072;
    batch_data d;
    tu_seed(15);
    data_alloc(&d, 3, vocab, 1);
    for (size_t i = 0; i < d.rows; i++) {
        const size_t a = 2 * (size_t)(tu_uniform() * 1000) + 1, c = (size_t)(tu_uniform() * (double)vocab);
        for (size_t v = 0; v < vocab; v++) {
            const double base = -4.4 * log1p((double)((v * a + c) % vocab)); /* rank ~ a permutation */
            d.teacher[i * vocab + v] = (float)(base + 0.3 * tu_normal());
            d.student[i * vocab + v] = (float)(0.8 * base + tu_normal());
        }
    }
    for (int l = 0; l < KLCL_LOSS_COUNT; l++) {
        klcl_loss_desc desc = desc_for((klcl_loss)l);
        desc.tau = 2.0f;
        char what[64];
        snprintf(what, sizeof what, "%s long-tailed V=%zu", klcl_loss_name((klcl_loss)l), vocab);
        check_all_reductions(&d, desc, what);
    }
    data_free(&d);
}

/* A maximum that rises at every logit: with one work-item per row the sums are rescaled once per vector,
 * tens of thousands of times; no drift may build up. */
static void test_rising_rows(void **state)
{
    (void)state;
    const size_t vocab = small_grid ? 4096 : 262144;
    batch_data d;
    tu_seed(16);
    data_alloc(&d, 2, vocab, 1);
    for (size_t i = 0; i < d.rows; i++)
        for (size_t v = 0; v < vocab; v++) {
            d.teacher[i * vocab + v] = (float)((double)v * 1e-6 * (double)(i + 1));
            d.student[i * vocab + v] = (float)(-(double)v * 5e-7);
        }
    for (int l = 0; l < KLCL_LOSS_COUNT; l++) {
        klcl_loss_desc desc = desc_for((klcl_loss)l);
        desc.tau = 1.0f;
        char what[64];
        snprintf(what, sizeof what, "%s rising V=%zu", klcl_loss_name((klcl_loss)l), vocab);
        check_all_reductions(&d, desc, what);
    }
    data_free(&d);
}

/* Rows laid out against pass 1's blocks (ACC_BLOCK vectors per work-item): a first vector of -inf (no
 * reference maximum: the block is summed again), a jump of 300 mid-row (beyond the block's headroom),
 * maxima tied across blocks (the argmax is the lowest index, for the metrics and the centred losses'
 * reference token; within one lane too, where the first vector must win; within one vector, where the
 * first lane must win; and between two vectors of one work-item of a team, where the first must win),
 * mass against probability 0 in a late block, and NaN or +inf in a late block. */
static void test_block_boundaries(void **state)
{
    (void)state;
    const size_t vocab = small_grid ? 1283 : 40003, tie = vocab - 7;
    batch_data d;
    tu_seed(18);
    data_alloc(&d, 5, vocab, 1);
    float *t = d.teacher, *s = d.student;
    for (size_t v = 0; v < 16; v++) t[v] = s[v] = -INFINITY;
    for (size_t v = vocab / 2; v < vocab; v++) t[vocab + v] += 300.0f, s[vocab + v] += 300.0f;
    /* ties in one block and across, and in one lane: 5, 13, 21 at width 8, 5 and 21 at width 16; the
     * teacher's also in one vector (3, 4 and 5); the student's also at 5 + far, which the work-item that
     * reads column 5 reads too in any team of up to 256 work-items (16 under the small grid) at either
     * width. Six teacher maxima against five student ones keep p and q apart where both tie: at p = q, tvd's
     * gradient is a subgradient whose sign fp32 and the double reference may take differently. */
    const size_t far = small_grid ? 256 : 4096;
    for (size_t v = 3; v <= 5; v++) t[2 * vocab + v] = 50.0f;
    t[2 * vocab + 13] = t[2 * vocab + 21] = t[2 * vocab + tie] = 50.0f;
    s[2 * vocab + 5] = s[2 * vocab + 13] = s[2 * vocab + 21] = s[2 * vocab + 5 + far] = s[2 * vocab + tie] = 40.0f;
    d.labels[2] = 5;
    s[3 * vocab + vocab * 3 / 4] = -INFINITY; /* kl, soft_ce, kd: +inf */
    t[4 * vocab + vocab / 3] = -INFINITY;     /* rkl: +inf */
    for (int l = 0; l < KLCL_LOSS_COUNT; l++) {
        char what[64];
        snprintf(what, sizeof what, "%s block boundaries V=%zu", klcl_loss_name((klcl_loss)l), vocab);
        check_all_reductions(&d, desc_for((klcl_loss)l), what);
    }
    klcl_context_options ro = KLCL_CONTEXT_OPTIONS_INIT;
    ro.device = "cpu";
    klcl_context *ref = NULL;
    assert_int_equal(klcl_context_create(&ro, &ref), KLCL_OK);
    klcl_loss_desc desc = desc_for(KLCL_LOSS_JSD);
    d.labels[1] = d.labels[3] = d.labels[4] = d.labels[0] = 5;
    klcl_batch b = host_batch(&d, NULL, NULL);
    klcl_result rd, rr;
    assert_int_equal(klcl_compute(ctx, &desc, &b, &rd), KLCL_OK);
    assert_int_equal(klcl_compute(ref, &desc, &b, &rr), KLCL_OK);
    assert_true(rd.top1_agreement == rr.top1_agreement);
    assert_true(rd.accuracy == rr.accuracy);
    klcl_context_destroy(ref);

    float row_loss[5];
    s[vocab - 20] = NAN;
    t[vocab + vocab * 2 / 3] = INFINITY;
    b = host_batch(&d, NULL, row_loss);
    assert_int_equal(klcl_compute(ctx, &desc, &b, &rd), KLCL_OK);
    assert_int_equal(rd.rows_nonfinite, 2);
    assert_true(isnan(row_loss[0]) && isnan(row_loss[1]) && isfinite(row_loss[2]));
    data_free(&d);
}

/* Mass against probability 0 (+inf) while the other side's maximum later jumps far: the rescale factor
 * underflows to 0, and +inf must stay +inf, not become NaN. */
static void test_infinite_through_rescale(void **state)
{
    (void)state;
    batch_data d;
    tu_seed(17);
    data_alloc(&d, 2, 16, 0);
    for (size_t v = 0; v < 16; v++) {
        /* row 0: q = 0 at token 0 where p > 0, then the teacher's maximum jumps by 200 (kl, soft_ce) */
        d.teacher[v] = v < 8 ? 0.0f : 200.0f;
        d.student[v] = v == 0 ? -INFINITY : 0.0f;
        /* row 1: p = 0 at token 0 where q > 0, then the student's maximum jumps by 200 (rkl) */
        d.teacher[16 + v] = v == 0 ? -INFINITY : 0.0f;
        d.student[16 + v] = v < 8 ? 0.0f : 200.0f;
    }
    const klcl_loss losses[] = {KLCL_LOSS_KL, KLCL_LOSS_SOFT_CE, KLCL_LOSS_RKL, KLCL_LOSS_KD};
    const float taus[] = {1.0f, 0.25f};
    for (size_t i = 0; i < sizeof losses / sizeof losses[0]; i++)
        for (size_t k = 0; k < sizeof taus / sizeof taus[0]; k++) {
            klcl_loss_desc desc = desc_for(losses[i]);
            desc.tau = taus[k];
            if (losses[i] == KLCL_LOSS_KD) {
                static int32_t labels[2] = {3, 3};
                d.labels = labels;
            }
            char what[64];
            snprintf(what, sizeof what, "%s +inf through rescale tau=%g", klcl_loss_name(losses[i]),
                     (double)taus[k]);
            check_all_reductions(&d, desc, what);
            float row_loss[2];
            klcl_batch b = host_batch(&d, NULL, row_loss);
            assert_int_equal(klcl_compute(ctx, &desc, &b, NULL), KLCL_OK);
            assert_false(isnan(row_loss[0]) || isnan(row_loss[1]));
            d.labels = NULL;
        }
    data_free(&d);
}

/* Mixture weights at and near their ends, on rows with large log-ratios: skl and srkl at lambda 0 and 1,
 * jsd at beta near 0 and 1. Nothing may overflow into NaN where the reference is finite. */
static void test_mixture_endpoints(void **state)
{
    (void)state;
    batch_data d;
    tu_seed(12);
    data_alloc(&d, 4, small_grid ? 64 : 3000, 0);
    for (size_t k = 0; k < d.rows * d.vocab; k++) d.teacher[k] *= 12.0f; /* log q/p up to ~100 */
    const float ends[] = {0.0f, 1e-3f, 0.999f, 1.0f};
    for (size_t e = 0; e < sizeof ends / sizeof ends[0]; e++) {
        char what[96];
        klcl_loss_desc desc = desc_for(KLCL_LOSS_SKL);
        desc.lambda = ends[e];
        snprintf(what, sizeof what, "skl lambda=%g", (double)ends[e]);
        check_all_reductions(&d, desc, what);
        desc = desc_for(KLCL_LOSS_SRKL);
        desc.lambda = ends[e];
        snprintf(what, sizeof what, "srkl lambda=%g", (double)ends[e]);
        check_all_reductions(&d, desc, what);
        desc = desc_for(KLCL_LOSS_JSD);
        desc.beta = ends[e];
        snprintf(what, sizeof what, "jsd beta=%g", (double)ends[e]);
        check_all_reductions(&d, desc, what);
    }
    data_free(&d);
}

/* Weights of exactly 0 never multiply an infinite term (kd at alpha 1, ce at smoothing 1, scale 0). */
static void test_zero_weights(void **state)
{
    (void)state;
    batch_data d;
    tu_seed(13);
    data_alloc(&d, 3, 40, 1);
    d.labels[1] = 5;
    d.student[1 * 40 + 7] = -INFINITY; /* p > 0, q = 0: kl is +inf on row 1 */
    klcl_loss_desc desc = desc_for(KLCL_LOSS_KD);
    desc.alpha = 1.0f;
    check_all_reductions(&d, desc, "kd alpha=1 with q=0 where p>0");
    float row_loss[3];
    klcl_batch b = host_batch(&d, NULL, row_loss);
    assert_int_equal(klcl_compute(ctx, &desc, &b, NULL), KLCL_OK);
    assert_true(isfinite(row_loss[1]));

    d.labels[1] = 7; /* the label's logit is -inf: ce is +inf, never NaN */
    desc = desc_for(KLCL_LOSS_CE);
    desc.label_smoothing = 1.0f;
    check_all_reductions(&d, desc, "ce smoothing=1, -inf logit at the label");
    desc.label_smoothing = 0.0f;
    assert_int_equal(klcl_compute(ctx, &desc, &b, NULL), KLCL_OK);
    assert_true(isinf(row_loss[1]) && row_loss[1] > 0.0f);

    desc = desc_for(KLCL_LOSS_KL);
    desc.scale = 0.0f;
    assert_int_equal(klcl_compute(ctx, &desc, &b, NULL), KLCL_OK);
    for (size_t i = 0; i < 3; i++) assert_true(row_loss[i] == 0.0f);
    data_free(&d);
}

/* With a softcap, -inf logits become -c; a row of nothing but -inf must still be invalid (NaN), and no
 * kernel may read outside the row looking for its argmax. */
static void test_softcap_all_neginf_row(void **state)
{
    (void)state;
    batch_data d;
    tu_seed(14);
    data_alloc(&d, 3, 50, 0);
    for (size_t v = 0; v < 50; v++) {
        d.student[1 * 50 + v] = -INFINITY;
        d.teacher[2 * 50 + v] = -INFINITY;
    }
    for (int l = 0; l < KLCL_LOSS_COUNT; l++) {
        if (l == KLCL_LOSS_CE || l == KLCL_LOSS_KD) continue; /* need labels; rkl..tvd cover the argmax path */
        klcl_loss_desc desc = desc_for((klcl_loss)l);
        desc.softcap = 2.0f;
        float grad[150], row_loss[3];
        klcl_batch b = host_batch(&d, grad, row_loss);
        klcl_result r;
        assert_int_equal(klcl_compute(ctx, &desc, &b, &r), KLCL_OK);
        assert_true(isfinite(row_loss[0]));
        assert_true(isnan(row_loss[1]) && isnan(row_loss[2]));
        assert_int_equal(r.rows_nonfinite, 2);
        for (size_t v = 0; v < 50; v++) assert_true(isnan(grad[50 + v]) && isfinite(grad[v]));
        char what[64];
        snprintf(what, sizeof what, "%s softcap, all -inf rows", klcl_loss_name((klcl_loss)l));
        check_all_reductions(&d, desc, what);
    }
    data_free(&d);
}

/* p > 0 where q = 0: +inf for that row (kl), never a clamp; the call reports it. */
static void test_infinite_row(void **state)
{
    (void)state;
    batch_data d;
    tu_seed(3);
    data_alloc(&d, 3, 64, 0);
    d.student[1 * 64 + 5] = -INFINITY; /* the teacher keeps mass there */
    klcl_loss_desc desc = desc_for(KLCL_LOSS_KL);
    check_all_reductions(&d, desc, "kl with q=0 where p>0");
    float row_loss[3];
    klcl_batch b = host_batch(&d, NULL, row_loss);
    klcl_result r;
    assert_int_equal(klcl_compute(ctx, &desc, &b, &r), KLCL_OK);
    assert_true(isinf(row_loss[1]) && row_loss[1] > 0);
    assert_true(isfinite(row_loss[0]) && isfinite(row_loss[2]));
    assert_int_equal(r.rows_nonfinite, 1);
    assert_int_equal(r.first_nonfinite[0], 1);
    data_free(&d);
}

/* A NaN row: that row's loss and gradient are NaN, every other row is exactly what it is without it. */
static void test_nan_row(void **state)
{
    (void)state;
    const size_t rows = 6, vocab = 300;
    for (int l = 0; l < KLCL_LOSS_COUNT; l++) {
        batch_data d;
        tu_seed(4);
        data_alloc(&d, rows, vocab, 1);
        d.labels[rows / 2] = 0; /* no ignored row here */
        klcl_loss_desc desc = desc_for((klcl_loss)l);
        desc.reduction = KLCL_REDUCTION_SUM;
        float clean_grad[6 * 300], grad[6 * 300], clean_loss[6], row_loss[6];
        klcl_batch b = host_batch(&d, clean_grad, clean_loss);
        klcl_result r;
        assert_int_equal(klcl_compute(ctx, &desc, &b, &r), KLCL_OK);
        assert_int_equal(r.rows_nonfinite, 0);
        d.student[2 * vocab + 17] = NAN;
        b = host_batch(&d, grad, row_loss);
        assert_int_equal(klcl_compute(ctx, &desc, &b, &r), KLCL_OK);
        assert_int_equal(r.rows_nonfinite, 1);
        assert_int_equal(r.first_nonfinite[0], 2);
        assert_true(isnan(r.loss));
        for (size_t i = 0; i < rows; i++) {
            if (i == 2) {
                assert_true(isnan(row_loss[i]));
                for (size_t v = 0; v < vocab; v++) assert_true(isnan(grad[i * vocab + v]));
            } else {
                assert_memory_equal(&row_loss[i], &clean_loss[i], sizeof(float));
                assert_memory_equal(&grad[i * vocab], &clean_grad[i * vocab], vocab * sizeof(float));
            }
        }
        data_free(&d);
    }
}

/* All -inf, +inf: invalid rows, reported as non-finite. Every row ignored: mean 0, zero gradient. */
static void test_invalid_and_ignored_rows(void **state)
{
    (void)state;
    batch_data d;
    tu_seed(5);
    data_alloc(&d, 4, 50, 1);
    for (size_t v = 0; v < 50; v++) d.teacher[0 * 50 + v] = -INFINITY;
    d.student[3 * 50 + 9] = INFINITY;
    for (size_t i = 0; i < 4; i++) d.labels[i] = 1;
    klcl_loss_desc desc = desc_for(KLCL_LOSS_KD);
    float grad[4 * 50], row_loss[4];
    klcl_batch b = host_batch(&d, grad, row_loss);
    klcl_result r;
    assert_int_equal(klcl_compute(ctx, &desc, &b, &r), KLCL_OK);
    assert_int_equal(r.rows_nonfinite, 2);
    assert_int_equal(r.first_nonfinite[0], 0);
    assert_int_equal(r.first_nonfinite[1], 3);
    assert_true(isnan(row_loss[0]) && isnan(row_loss[3]) && isfinite(row_loss[1]));

    for (size_t i = 0; i < 4; i++) d.labels[i] = -100;
    desc.reduction = KLCL_REDUCTION_MEAN;
    memset(grad, 0xff, sizeof grad);
    assert_int_equal(klcl_compute(ctx, &desc, &b, &r), KLCL_OK);
    assert_true(r.loss == 0.0);
    assert_int_equal(r.rows_used, 0);
    assert_int_equal(r.rows_skipped, 4);
    for (size_t k = 0; k < 4 * 50; k++) assert_true(grad[k] == 0.0f);

    /* A row mask skips rows the same way. */
    uint8_t mask[4] = {1, 0, 1, 0};
    for (size_t i = 0; i < 4; i++) d.labels[i] = 2;
    d.teacher[0] = 0.0f; /* row 0 valid again */
    d.student[3 * 50 + 9] = 0.0f;
    b.mask = klcl_host_tensor(mask, 0);
    assert_int_equal(klcl_compute(ctx, &desc, &b, &r), KLCL_OK);
    assert_int_equal(r.rows_used, 2);
    assert_true(row_loss[1] == 0.0f && row_loss[3] == 0.0f && row_loss[0] > 0.0f);
    for (size_t v = 0; v < 50; v++) assert_true(grad[1 * 50 + v] == 0.0f);
    data_free(&d);
}

/* The same inputs give the same bits, run after run. */
static void test_deterministic(void **state)
{
    (void)state;
    const size_t rows = 7, vocab = small_grid ? 300 : 40000;
    batch_data d;
    tu_seed(6);
    data_alloc(&d, rows, vocab, 1);
    float *g0 = malloc(rows * vocab * sizeof(float)), *g1 = malloc(rows * vocab * sizeof(float));
    float l0[7], l1[7];
    for (int l = 0; l < KLCL_LOSS_COUNT; l++) {
        klcl_loss_desc desc = desc_for((klcl_loss)l);
        klcl_result r0, r1;
        klcl_batch b = host_batch(&d, g0, l0);
        assert_int_equal(klcl_compute(ctx, &desc, &b, &r0), KLCL_OK);
        for (int rep = 0; rep < 3; rep++) {
            b = host_batch(&d, g1, l1);
            assert_int_equal(klcl_compute(ctx, &desc, &b, &r1), KLCL_OK);
            assert_memory_equal(&r0.loss, &r1.loss, sizeof r0.loss);
            assert_memory_equal(l0, l1, sizeof l0);
            assert_memory_equal(g0, g1, rows * vocab * sizeof(float));
        }
    }
    free(g0);
    free(g1);
    data_free(&d);
}

/* The row strategy of LOSSES.md's "How klcl reads this contract": few rows are split across work-groups,
 * short rows share a work-group in teams; the overrides KLCL_ROW_SPLIT and KLCL_TEAM (the ctest variants)
 * replace the choice. Split rows give the reference's values with and without a gradient, and the same
 * bits on every call. */
static void test_row_strategies(void **state)
{
    (void)state;
    size_t wg = 0, team = 0, parts = 0, split = 0;
    int vw = 0;
    assert_int_equal(klcl_context_work_group(ctx, &wg, NULL), KLCL_OK);
    assert_int_equal(klcl_context_vector_width(ctx, &vw, NULL), KLCL_OK);
    assert_int_equal(klcl_context_split_columns(ctx, &split, NULL), KLCL_OK);
    const char *split_env = getenv("KLCL_ROW_SPLIT"), *team_env = getenv("KLCL_TEAM");
    /* Many long rows: neither strategy (unless forced). */
    assert_int_equal(klcl_context_row_strategy(ctx, 4096, 65536 + 64 * wg, &team, &parts), KLCL_OK);
    if (!split_env) assert_int_equal(parts, 1);
    if (!team_env) assert_int_equal(team, wg);
    /* One long row: split, whatever the device (target rows above 1), into parts of the split columns or
     * more (4096 by default, 262144 on a CPU device; a tuned or KLCL_SPLIT_COLUMNS value over half the
     * row leaves it whole). */
    assert_int_equal(klcl_context_row_strategy(ctx, 1, 1048576, &team, &parts), KLCL_OK);
    if (split_env)
        assert_int_equal(parts, strtoul(split_env, NULL, 10));
    else if (split > 1048576 / 2)
        assert_int_equal(parts, 1);
    else
        assert_true(parts >= 2 && 1048576 / parts >= split);
    /* Short rows: teams of the smallest power of two >= V / (4 x vector width), unless the whole group is
     * needed. */
    const size_t short_vocabs[] = {8, 100, 1000, 4096};
    for (size_t i = 0; i < sizeof short_vocabs / sizeof short_vocabs[0]; i++) {
        const size_t v = short_vocabs[i];
        assert_int_equal(klcl_context_row_strategy(ctx, 4096, v, &team, &parts), KLCL_OK);
        assert_true(team >= 1 && team <= wg && wg % team == 0 && (team & (team - 1)) == 0);
        size_t want = 1;
        while (want < (v + 4 * (size_t)vw - 1) / (4 * (size_t)vw) && want < wg) want *= 2;
        if (!team_env && !split_env) assert_int_equal(team, v / (size_t)vw < 4 * wg ? want : wg);
    }
    assert_int_equal(klcl_context_row_strategy(ctx, 0, 10, &team, &parts), KLCL_ERR_INVALID_SHAPE);

    /* Rows too few to fill the device: every loss against the reference without a gradient (rkl then
     * has no pass 2), and the same bits twice with one. */
    const size_t vocab = small_grid ? 4100 : 262147, rows = 2;
    batch_data d;
    tu_seed(19);
    data_alloc(&d, rows, vocab, 1);
    d.labels[1] = 3; /* no ignored row */
    assert_int_equal(klcl_context_row_strategy(ctx, rows, vocab, &team, &parts), KLCL_OK);
    float *g0 = malloc(rows * vocab * sizeof(float)), *g1 = malloc(rows * vocab * sizeof(float));
    assert_true(g0 && g1);
    for (int l = 0; l < KLCL_LOSS_COUNT; l++) {
        klcl_loss_desc desc = desc_for((klcl_loss)l);
        data_reference(&d, &desc);
        float l0[2], l1[2];
        klcl_batch b = host_batch(&d, NULL, l0);
        klcl_result r0, r1;
        assert_int_equal(klcl_compute(ctx, &desc, &b, &r0), KLCL_OK);
        for (size_t i = 0; i < rows; i++)
            if (!tu_loss_close(l0[i], d.ref_loss[i]))
                fail_msg("%s V=%zu N=%zu (%zu parts, team %zu) forward: row %zu loss %.9g, reference %.9g",
                         klcl_loss_name((klcl_loss)l), vocab, rows, parts, team, i, (double)l0[i], d.ref_loss[i]);
        b = host_batch(&d, g0, l0);
        assert_int_equal(klcl_compute(ctx, &desc, &b, &r0), KLCL_OK);
        b = host_batch(&d, g1, l1);
        assert_int_equal(klcl_compute(ctx, &desc, &b, &r1), KLCL_OK);
        assert_memory_equal(&r0.loss, &r1.loss, sizeof r0.loss);
        assert_memory_equal(l0, l1, sizeof l0);
        assert_memory_equal(g0, g1, rows * vocab * sizeof(float));
    }
    free(g0);
    free(g1);
    data_free(&d);
}

static cl_mem make_buffer(cl_context cl_ctx, size_t bytes, size_t offset, const void *data, size_t data_bytes)
{
    cl_int err;
    cl_mem m = clCreateBuffer(cl_ctx, CL_MEM_READ_WRITE, bytes, NULL, &err);
    assert_int_equal(err, CL_SUCCESS);
    if (data) {
        cl_command_queue q = klcl_context_cl_queue(ctx);
        assert_int_equal(clEnqueueWriteBuffer(q, m, CL_TRUE, offset, data_bytes, data, 0, NULL, NULL), CL_SUCCESS);
    }
    return m;
}

/* Caller-owned cl_mem tensors with offsets and row strides give the same bits as host pointers. */
static void test_cl_mem_tensors(void **state)
{
    (void)state;
    const size_t rows = 5, vocab = 333, stride = 352, off = 64;
    batch_data d;
    tu_seed(7);
    data_alloc(&d, rows, vocab, 1);
    float *padded_t = calloc(rows * stride, sizeof(float)), *padded_s = calloc(rows * stride, sizeof(float));
    for (size_t i = 0; i < rows; i++) {
        memcpy(padded_t + i * stride, d.teacher + i * vocab, vocab * sizeof(float));
        memcpy(padded_s + i * stride, d.student + i * vocab, vocab * sizeof(float));
    }
    cl_context cc = klcl_context_cl_context(ctx);
    size_t mat = rows * stride * sizeof(float);
    cl_mem t = make_buffer(cc, off + mat, off, padded_t, mat);
    cl_mem s = make_buffer(cc, off + mat, off, padded_s, mat);
    cl_mem y = make_buffer(cc, off + rows * 4, off, d.labels, rows * 4);
    cl_mem g = make_buffer(cc, off + mat, 0, NULL, 0);
    cl_mem rl = make_buffer(cc, off + rows * 4, 0, NULL, 0);

    klcl_loss_desc desc = desc_for(KLCL_LOSS_KD);
    float host_grad[5 * 333], host_loss[5], dev_grad[5 * 352], dev_loss[5];
    klcl_result rh, rm;
    klcl_batch b = host_batch(&d, host_grad, host_loss);
    assert_int_equal(klcl_compute(ctx, &desc, &b, &rh), KLCL_OK);

    klcl_batch bm = KLCL_BATCH_INIT;
    bm.rows = rows;
    bm.vocab = vocab;
    bm.teacher = klcl_mem_tensor(t, off, stride);
    bm.student = klcl_mem_tensor(s, off, stride);
    bm.labels = klcl_mem_tensor(y, off, 0);
    bm.grad = klcl_mem_tensor(g, off, stride);
    bm.row_loss = klcl_mem_tensor(rl, off, 0);
    assert_int_equal(klcl_compute(ctx, &desc, &bm, &rm), KLCL_OK);
    cl_command_queue q = klcl_context_cl_queue(ctx);
    assert_int_equal(clEnqueueReadBuffer(q, g, CL_TRUE, off, sizeof dev_grad, dev_grad, 0, NULL, NULL), CL_SUCCESS);
    assert_int_equal(clEnqueueReadBuffer(q, rl, CL_TRUE, off, sizeof dev_loss, dev_loss, 0, NULL, NULL), CL_SUCCESS);
    assert_memory_equal(&rh.loss, &rm.loss, sizeof rh.loss);
    assert_memory_equal(host_loss, dev_loss, sizeof host_loss);
    for (size_t i = 0; i < rows; i++)
        assert_memory_equal(host_grad + i * vocab, dev_grad + i * stride, vocab * sizeof(float));

    /* Host tensors with row strides: the same, and the padding columns of the gradient untouched. */
    float strided_grad[5 * 352];
    for (size_t k = 0; k < rows * stride; k++) strided_grad[k] = 42.0f;
    klcl_batch bs = host_batch(&d, NULL, NULL);
    bs.teacher = klcl_host_tensor(padded_t, stride);
    bs.student = klcl_host_tensor(padded_s, stride);
    bs.grad = klcl_host_tensor(strided_grad, stride);
    assert_int_equal(klcl_compute(ctx, &desc, &bs, &rm), KLCL_OK);
    assert_memory_equal(&rh.loss, &rm.loss, sizeof rh.loss);
    for (size_t i = 0; i < rows; i++) {
        assert_memory_equal(host_grad + i * vocab, strided_grad + i * stride, vocab * sizeof(float));
        for (size_t v = vocab; v < stride; v++) assert_true(strided_grad[i * stride + v] == 42.0f);
    }
    clReleaseMemObject(t);
    clReleaseMemObject(s);
    clReleaseMemObject(y);
    clReleaseMemObject(g);
    clReleaseMemObject(rl);
    free(padded_t);
    free(padded_s);
    data_free(&d);
}

/* The gradient written over the student in place (the same cl_mem, or a sub-buffer of it: what the fused
 * linear path does) has the same bits, and the row losses too, as one written to a buffer of its own. On
 * a CPU device the row kernel keeps exponentials in the gradient's row where it may (pass 1's weights for
 * ce, kl, soft_ce and kd; pass 2's terms for the centred losses); in place that would overwrite logits still
 * to be read (the label's for ce's loss, every one for q and the softcap's derivative), so klcl must see
 * the overlap. Every loss, with and without softcap, labels inside the rows, V not a multiple of 16. */
static void test_grad_in_place(void **state)
{
    (void)state;
    const size_t rows = 6, vocab = small_grid ? 1003 : 40001, n = rows * vocab;
    batch_data d;
    tu_seed(23);
    data_alloc(&d, rows, vocab, 1);
    cl_context cc = klcl_context_cl_context(ctx);
    cl_command_queue q = klcl_context_cl_queue(ctx);
    float *g_own = malloc(n * sizeof(float)), *g_in = malloc(n * sizeof(float));
    float l_own[6], l_in[6];
    assert_true(g_own && g_in);
    cl_mem t = make_buffer(cc, n * sizeof(float), 0, d.teacher, n * sizeof(float));
    cl_mem y = make_buffer(cc, rows * sizeof(int32_t), 0, d.labels, rows * sizeof(int32_t));
    cl_mem g = make_buffer(cc, n * sizeof(float), 0, NULL, 0);
    for (int li = 0; li < KLCL_LOSS_COUNT; li++)
        for (int cap = 0; cap < 2; cap++)
            for (int sub = 0; sub < 2; sub++) {
                klcl_loss_desc desc = desc_for((klcl_loss)li);
                desc.softcap = cap ? 8.0f : 0.0f;
                cl_mem s = make_buffer(cc, n * sizeof(float), 0, d.student, n * sizeof(float));
                klcl_batch b = KLCL_BATCH_INIT;
                b.rows = rows;
                b.vocab = vocab;
                b.teacher = klcl_mem_tensor(t, 0, 0);
                b.student = klcl_mem_tensor(s, 0, 0);
                b.labels = klcl_mem_tensor(y, 0, 0);
                b.grad = klcl_mem_tensor(g, 0, 0);
                b.row_loss = klcl_host_tensor(l_own, 0);
                if (klcl_compute(ctx, &desc, &b, NULL) != KLCL_OK) fail_msg("%s", klcl_last_error(ctx));
                assert_int_equal(clEnqueueReadBuffer(q, g, CL_TRUE, 0, n * sizeof(float), g_own, 0, NULL, NULL),
                                 CL_SUCCESS);
                cl_buffer_region whole = {0, n * sizeof(float)};
                cl_int err = CL_SUCCESS;
                cl_mem over = sub ? clCreateSubBuffer(s, CL_MEM_READ_WRITE, CL_BUFFER_CREATE_TYPE_REGION, &whole, &err)
                                  : s;
                assert_int_equal(err, CL_SUCCESS);
                b.grad = klcl_mem_tensor(over, 0, 0);
                b.row_loss = klcl_host_tensor(l_in, 0);
                if (klcl_compute(ctx, &desc, &b, NULL) != KLCL_OK) fail_msg("%s", klcl_last_error(ctx));
                assert_int_equal(clEnqueueReadBuffer(q, s, CL_TRUE, 0, n * sizeof(float), g_in, 0, NULL, NULL),
                                 CL_SUCCESS);
                if (memcmp(l_own, l_in, sizeof l_own) != 0 || memcmp(g_own, g_in, n * sizeof(float)) != 0)
                    fail_msg("%s softcap %d, %s: in place differs from a gradient buffer of its own",
                             klcl_loss_name((klcl_loss)li), cap ? 8 : 0, sub ? "sub-buffer" : "same cl_mem");
                if (sub) clReleaseMemObject(over);
                clReleaseMemObject(s);
            }
    clReleaseMemObject(t);
    clReleaseMemObject(y);
    clReleaseMemObject(g);
    free(g_own);
    free(g_in);
    data_free(&d);
}

/* A one-column vocabulary still honours a cl_mem gradient's row stride. */
static void test_cl_mem_grad_stride_vocab_one(void **state)
{
    (void)state;
    const size_t rows = 4, stride = 3;
    batch_data d;
    tu_seed(11);
    data_alloc(&d, rows, 1, 0);
    klcl_loss_desc desc = desc_for(KLCL_LOSS_KL);
    float host_grad[4], dev_grad[12];
    for (size_t k = 0; k < 12; k++) dev_grad[k] = 7.0f;
    cl_mem g = make_buffer(klcl_context_cl_context(ctx), sizeof dev_grad, 0, dev_grad, sizeof dev_grad);
    klcl_batch b = host_batch(&d, host_grad, NULL);
    assert_int_equal(klcl_compute(ctx, &desc, &b, NULL), KLCL_OK);
    b.grad = klcl_mem_tensor(g, 0, stride);
    assert_int_equal(klcl_compute(ctx, &desc, &b, NULL), KLCL_OK);
    assert_int_equal(clEnqueueReadBuffer(klcl_context_cl_queue(ctx), g, CL_TRUE, 0, sizeof dev_grad, dev_grad, 0,
                                         NULL, NULL),
                     CL_SUCCESS);
    for (size_t i = 0; i < rows; i++) {
        assert_memory_equal(&dev_grad[i * stride], &host_grad[i], sizeof(float));
        assert_true(dev_grad[i * stride + 1] == 7.0f && dev_grad[i * stride + 2] == 7.0f);
    }
    clReleaseMemObject(g);
    data_free(&d);
}

/* A caller's queue is adopted, used, and left alive for the caller. */
static void test_adopted_queue(void **state)
{
    (void)state;
    cl_command_queue own_q = klcl_context_cl_queue(ctx);
    cl_device_id dev;
    assert_int_equal(clGetCommandQueueInfo(own_q, CL_QUEUE_DEVICE, sizeof dev, &dev, NULL), CL_SUCCESS);
    cl_int err;
    cl_context cc = clCreateContext(NULL, 1, &dev, NULL, NULL, &err);
    assert_int_equal(err, CL_SUCCESS);
    cl_command_queue q = clCreateCommandQueue(cc, dev, 0, &err);
    assert_int_equal(err, CL_SUCCESS);

    klcl_context_options o = KLCL_CONTEXT_OPTIONS_INIT;
    /* An out-of-order queue is refused: klcl orders its steps by the queue. */
    cl_command_queue ooo = clCreateCommandQueue(cc, dev, CL_QUEUE_OUT_OF_ORDER_EXEC_MODE_ENABLE, &err);
    if (ooo) {
        klcl_context *refused = NULL;
        o.queue = ooo;
        assert_int_equal(klcl_context_create(&o, &refused), KLCL_ERR_UNSUPPORTED);
        assert_null(refused);
        clReleaseCommandQueue(ooo);
    }
    o.queue = q;
    o.cl_ctx = cc;
    klcl_context *adopted = NULL;
    assert_int_equal(klcl_context_create(&o, &adopted), KLCL_OK);
    assert_ptr_equal(klcl_context_cl_queue(adopted), q);
    batch_data d;
    tu_seed(8);
    data_alloc(&d, 3, 100, 0);
    klcl_loss_desc desc = desc_for(KLCL_LOSS_JSD);
    float g1[300], g2[300];
    klcl_batch b = host_batch(&d, g1, NULL);
    klcl_result r1, r2;
    assert_int_equal(klcl_compute(adopted, &desc, &b, &r1), KLCL_OK);
    klcl_context_destroy(adopted);
    b = host_batch(&d, g2, NULL);
    assert_int_equal(klcl_compute(ctx, &desc, &b, &r2), KLCL_OK);
    assert_memory_equal(&r1.loss, &r2.loss, sizeof r1.loss);
    assert_memory_equal(g1, g2, sizeof g1);
    /* Still the caller's: usable, then released by the caller. */
    assert_int_equal(clFinish(q), CL_SUCCESS);
    assert_int_equal(clReleaseCommandQueue(q), CL_SUCCESS);
    assert_int_equal(clReleaseContext(cc), CL_SUCCESS);
    data_free(&d);
}

/* Verify mode reports the comparison with the reference. */
static void test_verify_mode(void **state)
{
    (void)state;
    klcl_context *v = tu_device_context(1);
    batch_data d;
    tu_seed(9);
    data_alloc(&d, 4, 1000, 1);
    for (int l = 0; l < KLCL_LOSS_COUNT; l++) {
        klcl_loss_desc desc = desc_for((klcl_loss)l);
        float grad[4 * 1000];
        klcl_batch b = host_batch(&d, grad, NULL);
        klcl_result r;
        assert_int_equal(klcl_compute(v, &desc, &b, &r), KLCL_OK);
        assert_int_equal(r.verified, 1);
        if (!r.verify_ok)
            fail_msg("%s: verify loss %.3g grad %.3g", klcl_loss_name((klcl_loss)l), r.verify_max_loss_err,
                     r.verify_max_grad_err);
        assert_true(r.verify_max_loss_err <= 1e-5);
    }
    klcl_context_destroy(v);
    data_free(&d);
}

/* Devices are listed with identifiers that select them; metrics are those of the reference. */
static void test_devices_and_metrics(void **state)
{
    (void)state;
    size_t n = 0;
    assert_int_equal(klcl_list_devices(NULL, 0, &n), KLCL_OK);
    assert_true(n >= 1);
    klcl_device_info info[8];
    assert_int_equal(klcl_list_devices(info, 8, &n), KLCL_OK);
    klcl_context_options o = KLCL_CONTEXT_OPTIONS_INIT;
    o.device = info[0].id;
    klcl_context *c = NULL;
    assert_int_equal(klcl_context_create(&o, &c), KLCL_OK);
    assert_string_equal(klcl_context_device_name(c), info[0].name);
    klcl_context_destroy(c);

    batch_data d;
    tu_seed(10);
    data_alloc(&d, 9, 77, 1);
    klcl_context_options ro = KLCL_CONTEXT_OPTIONS_INIT;
    ro.device = "cpu";
    klcl_context *ref = NULL;
    assert_int_equal(klcl_context_create(&ro, &ref), KLCL_OK);
    klcl_loss_desc desc = desc_for(KLCL_LOSS_KD);
    klcl_batch b = host_batch(&d, NULL, NULL);
    klcl_result rd, rr;
    assert_int_equal(klcl_compute(ctx, &desc, &b, &rd), KLCL_OK);
    assert_int_equal(klcl_compute(ref, &desc, &b, &rr), KLCL_OK);
    if (!(fabs(rd.teacher_entropy - rr.teacher_entropy) <= 1e-5 * rr.teacher_entropy))
        fail_msg("teacher entropy %.9g, reference %.9g", rd.teacher_entropy, rr.teacher_entropy);
    assert_true(fabs(rd.student_entropy - rr.student_entropy) <= 1e-5 * rr.student_entropy);
    assert_true(rd.top1_agreement == rr.top1_agreement);
    assert_true(rd.accuracy == rr.accuracy);
    assert_int_equal(rd.rows_used, rr.rows_used);
    klcl_context_destroy(ref);
    data_free(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grid),
        cmocka_unit_test(test_special_values),
        cmocka_unit_test(test_long_tailed_rows),
        cmocka_unit_test(test_rising_rows),
        cmocka_unit_test(test_block_boundaries),
        cmocka_unit_test(test_infinite_through_rescale),
        cmocka_unit_test(test_mixture_endpoints),
        cmocka_unit_test(test_zero_weights),
        cmocka_unit_test(test_softcap_all_neginf_row),
        cmocka_unit_test(test_infinite_row),
        cmocka_unit_test(test_nan_row),
        cmocka_unit_test(test_invalid_and_ignored_rows),
        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_row_strategies),
        cmocka_unit_test(test_cl_mem_tensors),
        cmocka_unit_test(test_grad_in_place),
        cmocka_unit_test(test_cl_mem_grad_stride_vocab_one),
        cmocka_unit_test(test_adopted_queue),
        cmocka_unit_test(test_verify_mode),
        cmocka_unit_test(test_devices_and_metrics),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
