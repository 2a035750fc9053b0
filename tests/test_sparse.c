/* The sparse (top-k) teacher: klcl_compute_sparse on the OpenCL device against the double-precision
 * reference (klcl_reference_sparse_row), that reference against independent forms (k = V is the dense
 * loss, k = 1 renorm kl is cross-entropy), both policies, every supported loss and reduction, special
 * values, argument errors naming the row, cl_mem tensors, the CPU backend, verify mode and determinism.
 * KLCL_TEST_SMALL=1 shrinks the shapes for runs under a simulator. */
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

static const klcl_loss sparse_losses[] = {KLCL_LOSS_KL, KLCL_LOSS_RKL, KLCL_LOSS_SOFT_CE, KLCL_LOSS_JSD,
                                          KLCL_LOSS_TVD};
#define N_SPARSE_LOSSES (sizeof sparse_losses / sizeof sparse_losses[0])
static const char *policy_name[] = {"renorm", "tail"};

/* A batch: dense student logits, the dense teacher logits it came from, and the teacher's top k. */
typedef struct sparse_data {
    size_t rows, vocab, k;
    float *teacher, *student; /* rows x vocab */
    int32_t *indices;         /* rows x k, the teacher's top k in shuffled order */
    float *logprobs;          /* rows x k, log-softmax of the teacher at those tokens */
    int32_t *labels;          /* optional */
    uint8_t *mask;            /* optional */
    double *ref_loss, *ref_grad;
    size_t used;
} sparse_data;

static int skipped(const sparse_data *d, const klcl_loss_desc *desc, size_t i)
{
    return (d->mask && d->mask[i] == 0) || (d->labels && d->labels[i] == desc->ignore_index);
}

static const float *sort_keys;
static int by_teacher_desc(const void *a, const void *b)
{
    float x = sort_keys[*(const int32_t *)a], y = sort_keys[*(const int32_t *)b];
    return (x < y) - (x > y);
}

/* Rebuilds indices and logprobs from the dense teacher rows (its top k, shuffled). */
static void data_topk(sparse_data *d)
{
    int32_t *order = malloc(d->vocab * sizeof *order);
    assert_non_null(order);
    for (size_t i = 0; i < d->rows; i++) {
        const float *t = d->teacher + i * d->vocab;
        double m = -INFINITY, sum = 0.0;
        for (size_t v = 0; v < d->vocab; v++) m = fmax(m, t[v]);
        for (size_t v = 0; v < d->vocab; v++) sum += exp(t[v] - m);
        for (size_t v = 0; v < d->vocab; v++) order[v] = (int32_t)v;
        sort_keys = t;
        qsort(order, d->vocab, sizeof *order, by_teacher_desc);
        for (size_t j = d->k; j > 1; j--) { /* shuffle the top k: any order is valid */
            size_t r = (size_t)(tu_uniform() * (double)j);
            int32_t x = order[j - 1];
            order[j - 1] = order[r];
            order[r] = x;
        }
        for (size_t j = 0; j < d->k; j++) {
            d->indices[i * d->k + j] = order[j];
            d->logprobs[i * d->k + j] = (float)(t[order[j]] - m - log(sum));
        }
    }
    free(order);
}

static void data_alloc(sparse_data *d, size_t rows, size_t vocab, size_t k, int with_labels)
{
    memset(d, 0, sizeof *d);
    d->rows = rows;
    d->vocab = vocab;
    d->k = k;
    d->teacher = malloc(rows * vocab * sizeof(float));
    d->student = malloc(rows * vocab * sizeof(float));
    d->indices = malloc(rows * k * sizeof(int32_t));
    d->logprobs = malloc(rows * k * sizeof(float));
    d->ref_loss = malloc(rows * sizeof(double));
    d->ref_grad = malloc(rows * vocab * sizeof(double));
    assert_true(d->teacher && d->student && d->indices && d->logprobs && d->ref_loss && d->ref_grad);
    tu_fill_logits(d->teacher, d->student, rows, vocab, vocab);
    data_topk(d);
    if (with_labels) {
        d->labels = malloc(rows * sizeof(int32_t));
        assert_non_null(d->labels);
        for (size_t i = 0; i < rows; i++) d->labels[i] = (int32_t)(tu_uniform() * (double)vocab);
        if (rows > 1) d->labels[rows / 2] = -100;
    }
}

static void data_free(sparse_data *d)
{
    free(d->teacher);
    free(d->student);
    free(d->indices);
    free(d->logprobs);
    free(d->labels);
    free(d->mask);
    free(d->ref_loss);
    free(d->ref_grad);
}

static klcl_sparse_teacher teacher_of(const sparse_data *d, klcl_sparse_policy policy)
{
    klcl_sparse_teacher sp = KLCL_SPARSE_TEACHER_INIT;
    sp.k = d->k;
    sp.indices = klcl_host_tensor(d->indices, 0);
    sp.logprobs = klcl_host_tensor(d->logprobs, 0);
    sp.policy = policy;
    return sp;
}

static klcl_batch batch_of(const sparse_data *d, float *grad, float *row_loss)
{
    klcl_batch b = KLCL_BATCH_INIT;
    b.rows = d->rows;
    b.vocab = d->vocab;
    b.student = klcl_host_tensor(d->student, 0);
    if (d->labels) b.labels = klcl_host_tensor(d->labels, 0);
    if (d->mask) b.mask = klcl_host_tensor(d->mask, 0);
    b.grad = klcl_host_tensor(grad, 0);
    b.row_loss = klcl_host_tensor(row_loss, 0);
    return b;
}

static void data_reference(sparse_data *d, const klcl_loss_desc *desc, klcl_sparse_policy policy)
{
    d->used = 0;
    for (size_t i = 0; i < d->rows; i++) {
        double *g = d->ref_grad + i * d->vocab;
        if (skipped(d, desc, i)) {
            d->ref_loss[i] = 0.0;
            for (size_t v = 0; v < d->vocab; v++) g[v] = 0.0;
            continue;
        }
        d->used++;
        assert_int_equal(klcl_reference_sparse_row(desc, policy, d->vocab, d->student + i * d->vocab, d->k,
                                                   d->indices + i * d->k, d->logprobs + i * d->k, &d->ref_loss[i],
                                                   g, NULL, NULL),
                         KLCL_OK);
    }
}

static double denominator(klcl_reduction r, const sparse_data *d)
{
    return r == KLCL_REDUCTION_MEAN ? (d->used ? (double)d->used : 1.0)
           : r == KLCL_REDUCTION_BATCHMEAN ? (double)d->rows
                                           : 1.0;
}

/* The device against the reference for every reduction (tolerances of LOSSES.md). */
static void check_all_reductions(sparse_data *d, klcl_loss_desc desc, klcl_sparse_policy policy, const char *what)
{
    data_reference(d, &desc, policy);
    float *grad = malloc(d->rows * d->vocab * sizeof(float));
    float *row_loss = malloc(d->rows * sizeof(float));
    assert_true(grad && row_loss);
    const double unscale = desc.scale == 0.0f ? 1.0 : 1.0 / fabs(desc.scale);
    const klcl_sparse_teacher sp = teacher_of(d, policy);
    for (int r = KLCL_REDUCTION_NONE; r <= KLCL_REDUCTION_BATCHMEAN; r++) {
        desc.reduction = (klcl_reduction)r;
        klcl_batch b = batch_of(d, grad, row_loss);
        klcl_result res;
        if (klcl_compute_sparse(ctx, &desc, &b, &sp, &res) != KLCL_OK) fail_msg("%s: %s", what, klcl_last_error(ctx));
        double sum = 0.0;
        for (size_t i = 0; i < d->rows; i++) {
            sum += d->ref_loss[i];
            if (!tu_loss_close(row_loss[i], d->ref_loss[i]))
                fail_msg("%s %s %s: row %zu loss %.9g, reference %.9g", what, policy_name[policy],
                         klcl_reduction_name(desc.reduction), i, (double)row_loss[i], d->ref_loss[i]);
        }
        const double den = denominator(desc.reduction, d);
        const double expect = desc.reduction == KLCL_REDUCTION_MEAN && d->used == 0 ? 0.0 : sum / den;
        if (!tu_loss_close(res.loss, expect))
            fail_msg("%s %s %s: reduced %.9g, reference %.9g", what, policy_name[policy],
                     klcl_reduction_name(desc.reduction), res.loss, expect);
        assert_int_equal(res.rows_used, d->used);
        for (size_t k = 0; k < d->rows * d->vocab; k++) {
            const double dev = grad[k] * den * unscale, ref = d->ref_grad[k] * unscale;
            if (!tu_grad_close(dev, ref))
                fail_msg("%s %s %s: grad[%zu][%zu] %.9g, reference %.9g", what, policy_name[policy],
                         klcl_reduction_name(desc.reduction), k / d->vocab, k % d->vocab, dev, ref);
        }
    }
    free(grad);
    free(row_loss);
}

static klcl_loss_desc desc_for(klcl_loss loss)
{
    klcl_loss_desc desc;
    klcl_loss_desc_init(&desc, loss);
    desc.tau = 1.5f;
    desc.scale = 2.25f;
    desc.beta = 0.3f;
    return desc;
}

/* Every supported loss x policy x reduction, with labels (one row ignored) and without. */
static void test_losses_and_policies(void **state)
{
    (void)state;
    const size_t vocab = small_grid ? 100 : 1000, rows = small_grid ? 3 : 7, k = small_grid ? 9 : 40;
    for (int with_labels = 0; with_labels <= 1; with_labels++) {
        sparse_data d;
        tu_seed(21 + (uint64_t)with_labels);
        data_alloc(&d, rows, vocab, k, with_labels);
        for (size_t l = 0; l < N_SPARSE_LOSSES; l++)
            for (int p = KLCL_SPARSE_RENORM; p <= KLCL_SPARSE_TAIL; p++) {
                char what[96];
                snprintf(what, sizeof what, "%s V=%zu k=%zu labels=%d", klcl_loss_name(sparse_losses[l]), vocab, k,
                         with_labels);
                check_all_reductions(&d, desc_for(sparse_losses[l]), (klcl_sparse_policy)p, what);
            }
        data_free(&d);
    }
}

/* Temperatures far from 1 (a small one drives the bucket's terms below fp32's exp range), softcap, jsd's
 * ends (beta 0 is kl, 1 is rkl), a vocabulary that is not a multiple of 8. */
static void test_tau_softcap_beta(void **state)
{
    (void)state;
    const size_t vocab = small_grid ? 77 : 1003, rows = 3, k = small_grid ? 5 : 33;
    sparse_data d;
    tu_seed(22);
    data_alloc(&d, rows, vocab, k, 0);
    const float taus[] = {0.05f, 0.5f, 4.0f};
    for (size_t l = 0; l < N_SPARSE_LOSSES; l++)
        for (int p = KLCL_SPARSE_RENORM; p <= KLCL_SPARSE_TAIL; p++) {
            char what[96];
            for (size_t t = 0; t < sizeof taus / sizeof taus[0]; t++) {
                klcl_loss_desc desc = desc_for(sparse_losses[l]);
                desc.tau = taus[t];
                snprintf(what, sizeof what, "%s tau=%g", klcl_loss_name(sparse_losses[l]), (double)taus[t]);
                check_all_reductions(&d, desc, (klcl_sparse_policy)p, what);
            }
            klcl_loss_desc desc = desc_for(sparse_losses[l]);
            desc.softcap = 3.0f;
            snprintf(what, sizeof what, "%s softcap", klcl_loss_name(sparse_losses[l]));
            check_all_reductions(&d, desc, (klcl_sparse_policy)p, what);
        }
    const float betas[] = {0.0f, 1.0f};
    for (size_t i = 0; i < 2; i++) {
        klcl_loss_desc desc = desc_for(KLCL_LOSS_JSD);
        desc.beta = betas[i];
        check_all_reductions(&d, desc, KLCL_SPARSE_TAIL, betas[i] == 0.0f ? "jsd beta=0" : "jsd beta=1");
        double jsd, other;
        klcl_loss_desc plain = desc_for(betas[i] == 0.0f ? KLCL_LOSS_KL : KLCL_LOSS_RKL);
        assert_int_equal(klcl_reference_sparse_row(&desc, KLCL_SPARSE_TAIL, vocab, d.student, k, d.indices,
                                                   d.logprobs, &jsd, NULL, NULL, NULL), KLCL_OK);
        assert_int_equal(klcl_reference_sparse_row(&plain, KLCL_SPARSE_TAIL, vocab, d.student, k, d.indices,
                                                   d.logprobs, &other, NULL, NULL, NULL), KLCL_OK);
        assert_true(jsd == other);
    }
    data_free(&d);
}

/* k = 1: renorm kl and soft_ce are cross-entropy with the teacher's top token as the label. */
static void test_k1(void **state)
{
    (void)state;
    const size_t vocab = small_grid ? 50 : 2000, rows = 4;
    sparse_data d;
    tu_seed(23);
    data_alloc(&d, rows, vocab, 1, 0);
    for (size_t l = 0; l < N_SPARSE_LOSSES; l++)
        for (int p = KLCL_SPARSE_RENORM; p <= KLCL_SPARSE_TAIL; p++)
            check_all_reductions(&d, desc_for(sparse_losses[l]), (klcl_sparse_policy)p, "k=1");
    klcl_loss_desc desc = desc_for(KLCL_LOSS_KL);
    desc.tau = 1.0f;
    desc.scale = 1.0f;
    desc.reduction = KLCL_REDUCTION_NONE;
    float row_loss[4];
    klcl_batch b = batch_of(&d, NULL, row_loss);
    klcl_sparse_teacher sp = teacher_of(&d, KLCL_SPARSE_RENORM);
    assert_int_equal(klcl_compute_sparse(ctx, &desc, &b, &sp, NULL), KLCL_OK);
    for (size_t i = 0; i < rows; i++) {
        const float *s = d.student + i * vocab;
        double m = -INFINITY, sum = 0.0;
        for (size_t v = 0; v < vocab; v++) m = fmax(m, s[v]);
        for (size_t v = 0; v < vocab; v++) sum += exp(s[v] - m);
        const double ce = -(s[d.indices[i]] - m - log(sum));
        if (!tu_loss_close(row_loss[i], ce)) fail_msg("k=1 row %zu: %.9g, cross-entropy %.9g", i, (double)row_loss[i], ce);
    }
    data_free(&d);
}

/* k = V: both policies are the dense loss on the teacher's log-probabilities; the device is checked
 * against the dense reference, an independent implementation. */
static void test_k_equals_vocab(void **state)
{
    (void)state;
    const size_t vocab = small_grid ? 40 : 1000, rows = 3;
    sparse_data d;
    tu_seed(24);
    data_alloc(&d, rows, vocab, vocab, 0);
    double *dense_grad = malloc(vocab * sizeof(double));
    float *grad = malloc(rows * vocab * sizeof(float));
    float row_loss[3];
    assert_true(dense_grad && grad);
    for (size_t l = 0; l < N_SPARSE_LOSSES; l++)
        for (int p = KLCL_SPARSE_RENORM; p <= KLCL_SPARSE_TAIL; p++) {
            klcl_loss_desc desc = desc_for(sparse_losses[l]);
            desc.reduction = KLCL_REDUCTION_SUM;
            klcl_batch b = batch_of(&d, grad, row_loss);
            klcl_sparse_teacher sp = teacher_of(&d, (klcl_sparse_policy)p);
            if (klcl_compute_sparse(ctx, &desc, &b, &sp, NULL) != KLCL_OK) fail_msg("%s", klcl_last_error(ctx));
            for (size_t i = 0; i < rows; i++) {
                double loss;
                assert_int_equal(klcl_reference_row(&desc, vocab, d.teacher + i * vocab, d.student + i * vocab, 0,
                                                    &loss, dense_grad, NULL, NULL),
                                 KLCL_OK);
                if (!tu_loss_close(row_loss[i], loss))
                    fail_msg("%s %s k=V row %zu: %.9g, dense %.9g", klcl_loss_name(desc.loss), policy_name[p], i,
                             (double)row_loss[i], loss);
                for (size_t v = 0; v < vocab; v++)
                    if (!tu_grad_close(grad[i * vocab + v] / desc.scale, dense_grad[v] / desc.scale))
                        fail_msg("%s %s k=V grad[%zu][%zu]: %.9g, dense %.9g", klcl_loss_name(desc.loss),
                                 policy_name[p], i, v, (double)grad[i * vocab + v], dense_grad[v]);
            }
            check_all_reductions(&d, desc, (klcl_sparse_policy)p, "k=V");
        }
    free(dense_grad);
    free(grad);
    data_free(&d);
}

/* The largest k against a language-model vocabulary. */
static void test_large_k(void **state)
{
    (void)state;
    const size_t vocab = small_grid ? 3000 : 32000, k = small_grid ? 128 : KLCL_SPARSE_K_MAX, rows = small_grid ? 2 : 3;
    sparse_data d;
    tu_seed(25);
    data_alloc(&d, rows, vocab, k, 1);
    for (size_t l = 0; l < N_SPARSE_LOSSES; l++)
        for (int p = KLCL_SPARSE_RENORM; p <= KLCL_SPARSE_TAIL; p++) {
            char what[64];
            snprintf(what, sizeof what, "%s V=%zu k=%zu", klcl_loss_name(sparse_losses[l]), vocab, k);
            check_all_reductions(&d, desc_for(sparse_losses[l]), (klcl_sparse_policy)p, what);
        }
    data_free(&d);
}

/* -inf student logits inside and outside K, a teacher log-probability of -inf, a student whose every
 * token outside K is -inf (the bucket is empty: tail kl against p_tail > 0 is +inf), NaN rows. */
static void test_special_values(void **state)
{
    (void)state;
    const size_t vocab = 64, k = 8, rows = 5;
    sparse_data d;
    tu_seed(26);
    data_alloc(&d, rows, vocab, k, 0);
    d.student[0 * vocab + d.indices[0 * k + 2]] = -INFINITY; /* q = 0 where p > 0: kl +inf */
    for (size_t v = 0; v < vocab; v += 5) d.student[1 * vocab + v] = -INFINITY;
    d.logprobs[2 * k + 3] = -INFINITY; /* p = 0 inside K: rkl +inf */
    for (size_t v = 0; v < vocab; v++) d.student[3 * vocab + v] = -INFINITY;
    for (size_t j = 0; j < k; j++) d.student[3 * vocab + d.indices[3 * k + j]] = (float)j; /* bucket empty */
    d.student[4 * vocab + 7] = NAN;
    for (size_t l = 0; l < N_SPARSE_LOSSES; l++)
        for (int p = KLCL_SPARSE_RENORM; p <= KLCL_SPARSE_TAIL; p++)
            check_all_reductions(&d, desc_for(sparse_losses[l]), (klcl_sparse_policy)p, "special values");
    /* What the reference says there, spelled out. */
    klcl_loss_desc kl = desc_for(KLCL_LOSS_KL), rkl = desc_for(KLCL_LOSS_RKL);
    double loss, h_t, h_s;
    assert_int_equal(klcl_reference_sparse_row(&kl, KLCL_SPARSE_TAIL, vocab, d.student + 3 * vocab, k, d.indices + 3 * k,
                                               d.logprobs + 3 * k, &loss, NULL, &h_t, &h_s), KLCL_OK);
    assert_true(isinf(loss) && loss > 0); /* teacher's leftover mass against an empty student bucket */
    assert_int_equal(klcl_reference_sparse_row(&kl, KLCL_SPARSE_RENORM, vocab, d.student + 3 * vocab, k,
                                               d.indices + 3 * k, d.logprobs + 3 * k, &loss, NULL, NULL, NULL), KLCL_OK);
    assert_true(isfinite(loss));
    assert_int_equal(klcl_reference_sparse_row(&rkl, KLCL_SPARSE_RENORM, vocab, d.student + 3 * vocab, k,
                                               d.indices + 3 * k, d.logprobs + 3 * k, &loss, NULL, NULL, NULL), KLCL_OK);
    assert_true(isfinite(loss)); /* no student mass outside K: renorm rkl is finite */
    assert_int_equal(klcl_reference_sparse_row(&rkl, KLCL_SPARSE_RENORM, vocab, d.student + 1 * vocab, k,
                                               d.indices + 1 * k, d.logprobs + 1 * k, &loss, NULL, NULL, NULL), KLCL_OK);
    assert_true(isinf(loss) && loss > 0); /* mass outside K against renorm's p = 0 */
    float grad[5 * 64], row_loss[5];
    klcl_batch b = batch_of(&d, grad, row_loss);
    klcl_sparse_teacher sp = teacher_of(&d, KLCL_SPARSE_RENORM);
    klcl_result r;
    assert_int_equal(klcl_compute_sparse(ctx, &rkl, &b, &sp, &r), KLCL_OK);
    assert_true(isnan(row_loss[4]));
    assert_true(isinf(row_loss[0]) && isinf(row_loss[1]) && isinf(row_loss[2]) && isfinite(row_loss[3]));
    assert_int_equal(r.rows_nonfinite, 4);
    for (size_t v = 0; v < vocab; v++) assert_true(isnan(grad[1 * vocab + v]) && isfinite(grad[3 * vocab + v]));
    data_free(&d);
}

/* Mask and ignore_index skip rows; a skipped row's indices are not read (padding may repeat). */
static void test_skipped_rows(void **state)
{
    (void)state;
    const size_t vocab = 120, k = 10, rows = 6;
    sparse_data d;
    tu_seed(27);
    data_alloc(&d, rows, vocab, k, 1);
    d.mask = malloc(rows);
    assert_non_null(d.mask);
    memset(d.mask, 1, rows);
    d.mask[1] = 0;
    for (size_t j = 0; j < k; j++) {
        d.indices[1 * k + j] = 7;               /* masked row: repeats */
        d.indices[3 * k + j] = (int32_t)(-1 - (int)j); /* ignored row: out of range */
    }
    d.labels[3] = -100;
    for (size_t l = 0; l < N_SPARSE_LOSSES; l++)
        check_all_reductions(&d, desc_for(sparse_losses[l]), KLCL_SPARSE_TAIL, "skipped rows");
    /* Every row skipped: mean 0 and a zero gradient. */
    memset(d.mask, 0, rows);
    float grad[6 * 120], row_loss[6];
    memset(grad, 0xff, sizeof grad);
    klcl_batch b = batch_of(&d, grad, row_loss);
    klcl_sparse_teacher sp = teacher_of(&d, KLCL_SPARSE_RENORM);
    klcl_loss_desc desc = desc_for(KLCL_LOSS_KL);
    klcl_result r;
    assert_int_equal(klcl_compute_sparse(ctx, &desc, &b, &sp, &r), KLCL_OK);
    assert_true(r.loss == 0.0);
    assert_int_equal(r.rows_used, 0);
    assert_int_equal(r.rows_skipped, rows);
    for (size_t i = 0; i < rows * vocab; i++) assert_true(grad[i] == 0.0f);
    data_free(&d);
}

/* Metrics: teacher entropy of the policy's distribution, agreement of the top tokens, accuracy. */
static void test_metrics(void **state)
{
    (void)state;
    const size_t vocab = 90, k = 6, rows = 4;
    sparse_data d;
    tu_seed(28);
    data_alloc(&d, rows, vocab, k, 1);
    d.labels[rows / 2] = 3;
    for (int p = KLCL_SPARSE_RENORM; p <= KLCL_SPARSE_TAIL; p++) {
        klcl_loss_desc desc = desc_for(KLCL_LOSS_KL);
        klcl_batch b = batch_of(&d, NULL, NULL);
        klcl_sparse_teacher sp = teacher_of(&d, (klcl_sparse_policy)p);
        klcl_result r;
        assert_int_equal(klcl_compute_sparse(ctx, &desc, &b, &sp, &r), KLCL_OK);
        double h_t = 0.0, h_s = 0.0, agree = 0.0, correct = 0.0;
        for (size_t i = 0; i < rows; i++) {
            double loss, ht, hs;
            assert_int_equal(klcl_reference_sparse_row(&desc, (klcl_sparse_policy)p, vocab, d.student + i * vocab, k,
                                                       d.indices + i * k, d.logprobs + i * k, &loss, NULL, &ht, &hs),
                             KLCL_OK);
            h_t += ht;
            h_s += hs;
            size_t am_s = 0, am_t = 0;
            for (size_t v = 1; v < vocab; v++) {
                if (d.student[i * vocab + v] > d.student[i * vocab + am_s]) am_s = v;
                if (d.teacher[i * vocab + v] > d.teacher[i * vocab + am_t]) am_t = v;
            }
            agree += am_s == am_t;
            correct += (int32_t)am_s == d.labels[i];
        }
        assert_int_equal(r.rows_used, rows);
        assert_true(fabs(r.teacher_entropy - h_t / rows) <= 1e-5 * fmax(1.0, h_t / rows));
        assert_true(fabs(r.student_entropy - h_s / rows) <= 1e-5 * fmax(1.0, h_s / rows));
        assert_true(r.top1_agreement == agree / rows);
        assert_true(r.accuracy == correct / rows);
        assert_int_equal(r.rows_with_teacher, rows);
    }
    /* The renorm teacher's entropy is that of the renormalised top k, computed here by hand. */
    klcl_loss_desc desc = desc_for(KLCL_LOSS_KL);
    double loss, ht;
    assert_int_equal(klcl_reference_sparse_row(&desc, KLCL_SPARSE_RENORM, vocab, d.student, k, d.indices, d.logprobs,
                                               &loss, NULL, &ht, NULL), KLCL_OK);
    double z = 0.0, h = 0.0;
    for (size_t j = 0; j < k; j++) z += exp((double)d.logprobs[j] / desc.tau);
    for (size_t j = 0; j < k; j++) {
        double p = exp((double)d.logprobs[j] / desc.tau) / z;
        h -= p * log(p);
    }
    if (!(fabs(ht - h) <= 1e-12)) fail_msg("renorm teacher entropy %.17g, by hand %.17g", ht, h);
    data_free(&d);
}

static cl_mem make_buffer(size_t bytes, size_t offset, const void *data, size_t data_bytes)
{
    cl_int err;
    cl_mem m = clCreateBuffer(klcl_context_cl_context(ctx), CL_MEM_READ_WRITE, bytes, NULL, &err);
    assert_int_equal(err, CL_SUCCESS);
    if (data)
        assert_int_equal(clEnqueueWriteBuffer(klcl_context_cl_queue(ctx), m, CL_TRUE, offset, data_bytes, data, 0, NULL,
                                              NULL),
                         CL_SUCCESS);
    return m;
}

/* Caller-owned cl_mem tensors with offsets and strides give the bits of host tensors; bad indices in them
 * are found on the device, and the message names the row. */
static void test_cl_mem_tensors(void **state)
{
    (void)state;
    const size_t vocab = 333, k = 12, rows = 5, kstride = 16, off = 64;
    sparse_data d;
    tu_seed(29);
    data_alloc(&d, rows, vocab, k, 1);
    int32_t *pidx = calloc(rows * kstride, sizeof(int32_t));
    float *plp = calloc(rows * kstride, sizeof(float));
    assert_true(pidx && plp);
    for (size_t i = 0; i < rows; i++) {
        memcpy(pidx + i * kstride, d.indices + i * k, k * sizeof(int32_t));
        memcpy(plp + i * kstride, d.logprobs + i * k, k * sizeof(float));
    }
    const size_t kbytes = rows * kstride * 4, vbytes = rows * vocab * 4;
    cl_mem mi = make_buffer(off + kbytes, off, pidx, kbytes), ml = make_buffer(off + kbytes, off, plp, kbytes);
    cl_mem ms = make_buffer(off + vbytes, off, d.student, vbytes), my = make_buffer(off + rows * 4, off, d.labels, rows * 4);
    cl_mem mg = make_buffer(off + vbytes, 0, NULL, 0), mr = make_buffer(off + rows * 4, 0, NULL, 0);
    for (int p = KLCL_SPARSE_RENORM; p <= KLCL_SPARSE_TAIL; p++) {
        klcl_loss_desc desc = desc_for(KLCL_LOSS_JSD);
        float g_host[5 * 333], l_host[5], g_dev[5 * 333], l_dev[5];
        klcl_batch b = batch_of(&d, g_host, l_host);
        klcl_sparse_teacher sp = teacher_of(&d, (klcl_sparse_policy)p);
        klcl_result r0, r1;
        assert_int_equal(klcl_compute_sparse(ctx, &desc, &b, &sp, &r0), KLCL_OK);
        klcl_batch bm = KLCL_BATCH_INIT;
        bm.rows = rows;
        bm.vocab = vocab;
        bm.student = klcl_mem_tensor(ms, off, 0);
        bm.labels = klcl_mem_tensor(my, off, 0);
        bm.grad = klcl_mem_tensor(mg, off, 0);
        bm.row_loss = klcl_mem_tensor(mr, off, 0);
        klcl_sparse_teacher spm = sp;
        spm.indices = klcl_mem_tensor(mi, off, kstride);
        spm.logprobs = klcl_mem_tensor(ml, off, kstride);
        if (klcl_compute_sparse(ctx, &desc, &bm, &spm, &r1) != KLCL_OK) fail_msg("%s", klcl_last_error(ctx));
        cl_command_queue q = klcl_context_cl_queue(ctx);
        assert_int_equal(clEnqueueReadBuffer(q, mg, CL_TRUE, off, vbytes, g_dev, 0, NULL, NULL), CL_SUCCESS);
        assert_int_equal(clEnqueueReadBuffer(q, mr, CL_TRUE, off, rows * 4, l_dev, 0, NULL, NULL), CL_SUCCESS);
        assert_memory_equal(g_host, g_dev, sizeof g_dev);
        assert_memory_equal(l_host, l_dev, sizeof l_dev);
        assert_memory_equal(&r0.loss, &r1.loss, sizeof r0.loss);

        /* A repeat in row 3, then an out-of-range index in row 1, written into the device copy only (row 2
         * is ignored: its indices are not read). */
        int32_t bad = pidx[3 * kstride + 1];
        assert_int_equal(clEnqueueWriteBuffer(q, mi, CL_TRUE, off + (3 * kstride + 4) * 4, 4, &bad, 0, NULL, NULL),
                         CL_SUCCESS);
        assert_int_equal(klcl_compute_sparse(ctx, &desc, &bm, &spm, NULL), KLCL_ERR_INVALID_VALUE);
        assert_non_null(strstr(klcl_last_error(ctx), "row 3"));
        bad = (int32_t)vocab;
        assert_int_equal(clEnqueueWriteBuffer(q, mi, CL_TRUE, off + (1 * kstride + 0) * 4, 4, &bad, 0, NULL, NULL),
                         CL_SUCCESS);
        assert_int_equal(klcl_compute_sparse(ctx, &desc, &bm, &spm, NULL), KLCL_ERR_INVALID_VALUE);
        if (!strstr(klcl_last_error(ctx), "row 1")) fail_msg("message: %s", klcl_last_error(ctx));
        bad = -5;
        assert_int_equal(clEnqueueWriteBuffer(q, mi, CL_TRUE, off + (2 * kstride + 0) * 4, 4, &bad, 0, NULL, NULL),
                         CL_SUCCESS);
        assert_int_equal(clEnqueueWriteBuffer(q, mi, CL_TRUE, off + (1 * kstride + 0) * 4, 4, &pidx[kstride], 0, NULL,
                                              NULL),
                         CL_SUCCESS);
        assert_int_equal(clEnqueueWriteBuffer(q, mi, CL_TRUE, off + (3 * kstride + 4) * 4, 4, &pidx[3 * kstride + 4], 0,
                                              NULL, NULL),
                         CL_SUCCESS);
        assert_int_equal(klcl_compute_sparse(ctx, &desc, &bm, &spm, NULL), KLCL_OK); /* row 2 is not read */
        assert_int_equal(clEnqueueWriteBuffer(q, mi, CL_TRUE, off, kbytes, pidx, 0, NULL, NULL), CL_SUCCESS);
    }
    cl_mem all[] = {mi, ml, ms, my, mg, mr};
    for (size_t i = 0; i < 6; i++) clReleaseMemObject(all[i]);
    free(pidx);
    free(plp);
    data_free(&d);
}

/* The same inputs give the same bits, run after run. */
static void test_deterministic(void **state)
{
    (void)state;
    const size_t vocab = small_grid ? 300 : 20000, k = small_grid ? 16 : 256, rows = 4;
    sparse_data d;
    tu_seed(30);
    data_alloc(&d, rows, vocab, k, 0);
    float *g0 = malloc(rows * vocab * sizeof(float)), *g1 = malloc(rows * vocab * sizeof(float));
    float l0[4], l1[4];
    assert_true(g0 && g1);
    for (size_t l = 0; l < N_SPARSE_LOSSES; l++) {
        klcl_loss_desc desc = desc_for(sparse_losses[l]);
        klcl_sparse_teacher sp = teacher_of(&d, KLCL_SPARSE_TAIL);
        klcl_batch b = batch_of(&d, g0, l0);
        klcl_result r0, r1;
        assert_int_equal(klcl_compute_sparse(ctx, &desc, &b, &sp, &r0), KLCL_OK);
        for (int rep = 0; rep < 2; rep++) {
            b = batch_of(&d, g1, l1);
            assert_int_equal(klcl_compute_sparse(ctx, &desc, &b, &sp, &r1), KLCL_OK);
            assert_memory_equal(&r0.loss, &r1.loss, sizeof r0.loss);
            assert_memory_equal(l0, l1, sizeof l0);
            assert_memory_equal(g0, g1, rows * vocab * sizeof(float));
        }
    }
    free(g0);
    free(g1);
    data_free(&d);
}

/* fp16 and bf16 students and gradients: the device against the CPU reference context on the same
 * (widened) values, the gradient within the contract plus one rounding of its type; verify mode agrees. */
static void test_half_precision(void **state)
{
    (void)state;
    const size_t vocab = small_grid ? 203 : 5003, k = small_grid ? 9 : 64, rows = 5;
    sparse_data d;
    tu_seed(33);
    data_alloc(&d, rows, vocab, k, 1);
    klcl_context_options o = KLCL_CONTEXT_OPTIONS_INIT;
    o.device = "cpu";
    klcl_context *cpu, *verify = tu_device_context(1);
    assert_int_equal(klcl_context_create(&o, &cpu), KLCL_OK);
    const klcl_dtype mixes[][2] = {{KLCL_DTYPE_BF16, KLCL_DTYPE_BF16}, {KLCL_DTYPE_F16, KLCL_DTYPE_F32},
                                   {KLCL_DTYPE_F32, KLCL_DTYPE_F16}};
    uint16_t *sh = malloc(rows * vocab * sizeof *sh);
    float *g_dev = malloc(rows * vocab * sizeof(float)), *g_ref = malloc(rows * vocab * sizeof(float));
    assert_true(sh && g_dev && g_ref);
    for (size_t m = 0; m < sizeof mixes / sizeof mixes[0]; m++) {
        const klcl_dtype sdt = mixes[m][0], gdt = mixes[m][1];
        const void *student = d.student;
        if (sdt != KLCL_DTYPE_F32) {
            assert_int_equal(klcl_convert(d.student, KLCL_DTYPE_F32, sh, sdt, rows * vocab), KLCL_OK);
            student = sh;
        }
        for (size_t l = 0; l < N_SPARSE_LOSSES; l++) {
            klcl_loss_desc desc = desc_for(sparse_losses[l]);
            desc.reduction = KLCL_REDUCTION_SUM;
            desc.scale = 1.0f;
            klcl_sparse_teacher sp = teacher_of(&d, KLCL_SPARSE_TAIL);
            float l_dev[5], l_ref[5];
            klcl_batch b = batch_of(&d, g_dev, l_dev);
            b.student = klcl_host_tensor(student, 0);
            b.student.dtype = sdt;
            b.grad.dtype = gdt;
            klcl_result r_dev, r_ref, r_ver;
            if (klcl_compute_sparse(ctx, &desc, &b, &sp, &r_dev) != KLCL_OK) fail_msg("%s", klcl_last_error(ctx));
            b.row_loss = klcl_host_tensor(l_ref, 0);
            b.grad = klcl_host_tensor(g_ref, 0);
            b.grad.dtype = gdt;
            if (klcl_compute_sparse(cpu, &desc, &b, &sp, &r_ref) != KLCL_OK) fail_msg("%s", klcl_last_error(cpu));
            for (size_t i = 0; i < rows; i++)
                if (!tu_loss_close(l_dev[i], l_ref[i]))
                    fail_msg("%s %s/%s row %zu: %.9g vs reference %.9g", klcl_loss_name(desc.loss),
                             klcl_dtype_name(sdt), klcl_dtype_name(gdt), i, (double)l_dev[i], (double)l_ref[i]);
            const double step = gdt == KLCL_DTYPE_BF16 ? 0x1p-7 : gdt == KLCL_DTYPE_F16 ? 0x1p-10 : 0.0;
            for (size_t e = 0; e < rows * vocab; e++) {
                float a, r;
                klcl_convert((const char *)g_dev + e * klcl_dtype_size(gdt), gdt, &a, KLCL_DTYPE_F32, 1);
                klcl_convert((const char *)g_ref + e * klcl_dtype_size(gdt), gdt, &r, KLCL_DTYPE_F32, 1);
                const double tol = 1e-6 + 1e-4 * fabs(r) + step * fabs(r) + (gdt == KLCL_DTYPE_F16 ? 0x1p-24 : 0.0);
                if (!(isnan(r) ? isnan(a) : fabs(a - r) <= tol))
                    fail_msg("%s %s/%s grad[%zu]: %.9g vs reference %.9g", klcl_loss_name(desc.loss),
                             klcl_dtype_name(sdt), klcl_dtype_name(gdt), e, (double)a, (double)r);
            }
            b.row_loss = klcl_host_tensor(l_dev, 0);
            b.grad = klcl_host_tensor(g_dev, 0);
            b.grad.dtype = gdt;
            assert_int_equal(klcl_compute_sparse(verify, &desc, &b, &sp, &r_ver), KLCL_OK);
            if (!r_ver.verify_ok)
                fail_msg("%s %s/%s: verify loss err %g, grad err %g", klcl_loss_name(desc.loss), klcl_dtype_name(sdt),
                         klcl_dtype_name(gdt), r_ver.verify_max_loss_err, r_ver.verify_max_grad_err);
        }
    }
    free(sh);
    free(g_dev);
    free(g_ref);
    klcl_context_destroy(cpu);
    klcl_context_destroy(verify);
    data_free(&d);
}

/* Host inputs streamed in chunks of rows give the bits of one piece, for any chunk size. */
static void test_chunked(void **state)
{
    (void)state;
    const size_t vocab = small_grid ? 150 : 3001, k = small_grid ? 7 : 50, rows = 11;
    sparse_data d;
    tu_seed(34);
    data_alloc(&d, rows, vocab, k, 1);
    uint16_t *sh = malloc(rows * vocab * sizeof *sh);
    assert_non_null(sh);
    assert_int_equal(klcl_convert(d.student, KLCL_DTYPE_F32, sh, KLCL_DTYPE_BF16, rows * vocab), KLCL_OK);
    const size_t chunks[] = {0, 1, 3, 10};
    float *g[4], l[4][11];
    double loss[4];
    for (size_t c = 0; c < 4; c++) {
        klcl_context_options o = KLCL_CONTEXT_OPTIONS_INIT;
        o.device = "opencl";
        o.chunk_rows = chunks[c];
        klcl_context *cc = NULL;
        assert_int_equal(klcl_context_create(&o, &cc), KLCL_OK);
        g[c] = malloc(rows * vocab * sizeof(float));
        assert_non_null(g[c]);
        klcl_loss_desc desc = desc_for(KLCL_LOSS_JSD);
        desc.reduction = KLCL_REDUCTION_MEAN;
        klcl_sparse_teacher sp = teacher_of(&d, KLCL_SPARSE_TAIL);
        klcl_batch b = batch_of(&d, g[c], l[c]);
        b.student = klcl_host_tensor(sh, 0);
        b.student.dtype = KLCL_DTYPE_BF16;
        klcl_result r;
        if (klcl_compute_sparse(cc, &desc, &b, &sp, &r) != KLCL_OK) fail_msg("chunk %zu: %s", chunks[c], klcl_last_error(cc));
        loss[c] = r.loss;
        klcl_context_destroy(cc);
        if (c == 0) continue;
        assert_memory_equal(&loss[0], &loss[c], sizeof loss[0]);
        assert_memory_equal(l[0], l[c], sizeof l[0]);
        if (memcmp(g[0], g[c], rows * vocab * sizeof(float)) != 0) fail_msg("chunks of %zu: gradient differs", chunks[c]);
    }
    for (size_t c = 0; c < 4; c++) free(g[c]);
    free(sh);
    data_free(&d);
}

/* The CPU reference backend gives the reference rows; verify mode agrees on the device. */
static void test_cpu_backend_and_verify(void **state)
{
    (void)state;
    const size_t vocab = 200, k = 15, rows = 4;
    sparse_data d;
    tu_seed(31);
    data_alloc(&d, rows, vocab, k, 1);
    klcl_context_options o = KLCL_CONTEXT_OPTIONS_INIT;
    o.device = "cpu";
    klcl_context *cpu;
    assert_int_equal(klcl_context_create(&o, &cpu), KLCL_OK);
    klcl_context *verify = tu_device_context(1);
    for (size_t l = 0; l < N_SPARSE_LOSSES; l++)
        for (int p = KLCL_SPARSE_RENORM; p <= KLCL_SPARSE_TAIL; p++) {
            klcl_loss_desc desc = desc_for(sparse_losses[l]);
            desc.reduction = KLCL_REDUCTION_BATCHMEAN;
            data_reference(&d, &desc, (klcl_sparse_policy)p);
            float grad[4 * 200], row_loss[4];
            klcl_batch b = batch_of(&d, grad, row_loss);
            klcl_sparse_teacher sp = teacher_of(&d, (klcl_sparse_policy)p);
            klcl_result r;
            assert_int_equal(klcl_compute_sparse(cpu, &desc, &b, &sp, &r), KLCL_OK);
            for (size_t i = 0; i < rows; i++) assert_true(row_loss[i] == (float)d.ref_loss[i]);
            for (size_t i = 0; i < rows * vocab; i++)
                if (grad[i] != (float)(d.ref_grad[i] * (1.0 / (double)rows)) && !(isnan(grad[i]) && isnan(d.ref_grad[i])))
                    fail_msg("cpu %s %s grad[%zu] %.9g, reference %.9g", klcl_loss_name(desc.loss), policy_name[p], i,
                             (double)grad[i], d.ref_grad[i] / (double)rows);
            assert_int_equal(klcl_compute_sparse(verify, &desc, &b, &sp, &r), KLCL_OK);
            assert_true(r.verified);
            if (!r.verify_ok)
                fail_msg("verify %s %s: loss err %g, grad err %g", klcl_loss_name(desc.loss), policy_name[p],
                         r.verify_max_loss_err, r.verify_max_grad_err);
        }
    /* cl_mem tensors on the CPU reference are refused, as for klcl_compute. */
    klcl_loss_desc desc = desc_for(KLCL_LOSS_KL);
    klcl_batch b = batch_of(&d, NULL, NULL);
    klcl_sparse_teacher sp = teacher_of(&d, KLCL_SPARSE_TAIL);
    sp.indices = klcl_mem_tensor((cl_mem)&sp, 0, 0);
    assert_int_equal(klcl_compute_sparse(cpu, &desc, &b, &sp, NULL), KLCL_ERR_UNSUPPORTED);
    klcl_context_destroy(cpu);
    klcl_context_destroy(verify);
    data_free(&d);
}

/* Argument errors: the status, and a message that names the argument (and the row). */
static void test_errors(void **state)
{
    (void)state;
    const size_t vocab = 50, k = 5, rows = 4;
    sparse_data d;
    tu_seed(32);
    data_alloc(&d, rows, vocab, k, 0);
    klcl_loss_desc desc = desc_for(KLCL_LOSS_KL);
    klcl_batch b = batch_of(&d, NULL, NULL);
    klcl_sparse_teacher sp = teacher_of(&d, KLCL_SPARSE_RENORM);
#define EXPECT(call, status, text)                                                                              \
    do {                                                                                                        \
        assert_int_equal((call), (status));                                                                     \
        if (!strstr(klcl_last_error(ctx), (text))) fail_msg("message '%s' lacks '%s'", klcl_last_error(ctx), (text)); \
    } while (0)
    assert_int_equal(klcl_compute_sparse(NULL, &desc, &b, &sp, NULL), KLCL_ERR_NULL_POINTER);
    EXPECT(klcl_compute_sparse(ctx, NULL, &b, &sp, NULL), KLCL_ERR_NULL_POINTER, "desc");
    EXPECT(klcl_compute_sparse(ctx, &desc, NULL, &sp, NULL), KLCL_ERR_NULL_POINTER, "batch");
    EXPECT(klcl_compute_sparse(ctx, &desc, &b, NULL, NULL), KLCL_ERR_NULL_POINTER, "sparse");
    const klcl_loss unsupported[] = {KLCL_LOSS_CE, KLCL_LOSS_SKL, KLCL_LOSS_SRKL, KLCL_LOSS_KD};
    for (size_t i = 0; i < 4; i++) {
        klcl_loss_desc u = desc_for(unsupported[i]);
        EXPECT(klcl_compute_sparse(ctx, &u, &b, &sp, NULL), KLCL_ERR_UNSUPPORTED, klcl_loss_name(unsupported[i]));
        double loss;
        assert_int_equal(klcl_reference_sparse_row(&u, KLCL_SPARSE_RENORM, vocab, d.student, k, d.indices, d.logprobs,
                                                   &loss, NULL, NULL, NULL),
                         KLCL_ERR_UNSUPPORTED);
    }
    klcl_batch bt = b;
    bt.teacher = klcl_host_tensor(d.teacher, 0);
    EXPECT(klcl_compute_sparse(ctx, &desc, &bt, &sp, NULL), KLCL_ERR_INVALID_VALUE, "batch->teacher");
    klcl_batch bs = b;
    bs.student = klcl_host_tensor(NULL, 0);
    EXPECT(klcl_compute_sparse(ctx, &desc, &bs, &sp, NULL), KLCL_ERR_NULL_POINTER, "student");
    klcl_sparse_teacher e = sp;
    e.policy = (klcl_sparse_policy)2;
    EXPECT(klcl_compute_sparse(ctx, &desc, &b, &e, NULL), KLCL_ERR_INVALID_VALUE, "policy");
    e = sp;
    e.k = 0;
    EXPECT(klcl_compute_sparse(ctx, &desc, &b, &e, NULL), KLCL_ERR_INVALID_SHAPE, "k");
    e.k = vocab + 1;
    EXPECT(klcl_compute_sparse(ctx, &desc, &b, &e, NULL), KLCL_ERR_INVALID_SHAPE, "vocab");
    e.k = KLCL_SPARSE_K_MAX + 1;
    EXPECT(klcl_compute_sparse(ctx, &desc, &b, &e, NULL), KLCL_ERR_INVALID_SHAPE, "KLCL_SPARSE_K_MAX");
    e = sp;
    e.indices.stride = k - 1;
    EXPECT(klcl_compute_sparse(ctx, &desc, &b, &e, NULL), KLCL_ERR_INVALID_SHAPE, "sparse->indices.stride");
    e = sp;
    e.logprobs = klcl_host_tensor(NULL, 0);
    EXPECT(klcl_compute_sparse(ctx, &desc, &b, &e, NULL), KLCL_ERR_NULL_POINTER, "sparse->logprobs");

    /* Host indices: a repeat, then an index out of range; the message names the row. */
    int32_t keep = d.indices[2 * k + 3];
    d.indices[2 * k + 3] = d.indices[2 * k + 0];
    EXPECT(klcl_compute_sparse(ctx, &desc, &b, &sp, NULL), KLCL_ERR_INVALID_VALUE, "row 2");
    double loss;
    assert_int_equal(klcl_reference_sparse_row(&desc, KLCL_SPARSE_RENORM, vocab, d.student + 2 * vocab, k,
                                               d.indices + 2 * k, d.logprobs + 2 * k, &loss, NULL, NULL, NULL),
                     KLCL_ERR_INVALID_VALUE);
    d.indices[2 * k + 3] = keep;
    const int32_t outside[] = {-1, (int32_t)vocab};
    for (size_t i = 0; i < 2; i++) {
        keep = d.indices[1 * k + 4];
        d.indices[1 * k + 4] = outside[i];
        EXPECT(klcl_compute_sparse(ctx, &desc, &b, &sp, NULL), KLCL_ERR_INVALID_VALUE, "row 1");
        d.indices[1 * k + 4] = keep;
    }
    /* Labels out of range, as for klcl_compute. */
    int32_t labels[4] = {0, 1, (int32_t)vocab, 2};
    klcl_batch bl = b;
    bl.labels = klcl_host_tensor(labels, 0);
    EXPECT(klcl_compute_sparse(ctx, &desc, &bl, &sp, NULL), KLCL_ERR_LABEL_OUT_OF_RANGE, "labels[2]");
    assert_int_equal(klcl_compute_sparse(ctx, &desc, &b, &sp, NULL), KLCL_OK);
    assert_string_equal(klcl_last_error(ctx), "");
#undef EXPECT
    data_free(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_losses_and_policies),
        cmocka_unit_test(test_tau_softcap_beta),
        cmocka_unit_test(test_k1),
        cmocka_unit_test(test_k_equals_vocab),
        cmocka_unit_test(test_large_k),
        cmocka_unit_test(test_special_values),
        cmocka_unit_test(test_skipped_rows),
        cmocka_unit_test(test_metrics),
        cmocka_unit_test(test_half_precision),
        cmocka_unit_test(test_chunked),
        cmocka_unit_test(test_cl_mem_tensors),
        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_cpu_backend_and_verify),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
