/* The CPU reference (klcl_reference_row and the "cpu" context) against LOSSES.md: a worked example,
 * mathematical properties, closed forms, finite differences, PyTorch's vectors, special values and the
 * batch bookkeeping (masks, reductions, non-finite rows, strides). */
#include "test_util.h"

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define VECTORS KLCL_TEST_DATA "/vectors/"

enum { MAX_VOCAB = 512 };

/* ------------------------------------------------------------------------------------------------------ */
/* Helpers                                                                                                  */

static klcl_loss_desc desc_of(klcl_loss loss)
{
    klcl_loss_desc d;
    assert_int_equal(klcl_loss_desc_init(&d, loss), KLCL_OK);
    return d;
}

static double ref_row(const klcl_loss_desc *d, size_t vocab, const float *teacher, const float *student,
                      int32_t label, double *grad)
{
    double loss = -12345.0;
    assert_int_equal(klcl_reference_row(d, vocab, teacher, student, label, &loss, grad, NULL, NULL), KLCL_OK);
    return loss;
}

static double ref_teacher_entropy(const klcl_loss_desc *d, size_t vocab, const float *teacher,
                                  const float *student)
{
    double loss, h_t = NAN;
    assert_int_equal(klcl_reference_row(d, vocab, teacher, student, 0, &loss, NULL, &h_t, NULL), KLCL_OK);
    return h_t;
}

/* Fails with both values printed, so a failure says by how much. */
static void check_close(const char *what, double got, double want, double tol)
{
    if (!(fabs(got - want) <= tol)) fail_msg("%s: got %.17g, want %.17g (tol %g)", what, got, want, tol);
}

/* Logits on the grid k * 2^-10 within [-8, 8]: exactly representable, and so is any logit +- 2^-10. */
static void grid_logits(float *x, size_t n, double sigma)
{
    for (size_t v = 0; v < n; v++) {
        double k = round(sigma * tu_normal() * 1024.0);
        if (k > 8192.0) k = 8192.0;
        if (k < -8192.0) k = -8192.0;
        x[v] = (float)(k / 1024.0);
    }
}

/* log-sum-exp of cap(x)/tau, by hand. */
static double lse_by_hand(const float *x, size_t vocab, double tau, double cap)
{
    double m = -INFINITY, sum = 0.0;
    for (size_t v = 0; v < vocab; v++) {
        double z = (cap > 0.0 ? cap * tanh(x[v] / cap) : x[v]) / tau;
        if (z > m) m = z;
    }
    for (size_t v = 0; v < vocab; v++) sum += exp((cap > 0.0 ? cap * tanh(x[v] / cap) : x[v]) / tau - m);
    return m + log(sum);
}

static void softmax_by_hand(const float *x, size_t vocab, double tau, double cap, double *out)
{
    double lse = lse_by_hand(x, vocab, tau, cap);
    for (size_t v = 0; v < vocab; v++) out[v] = exp((cap > 0.0 ? cap * tanh(x[v] / cap) : x[v]) / tau - lse);
}

static klcl_context *cpu_context(void)
{
    klcl_context_options o = KLCL_CONTEXT_OPTIONS_INIT;
    o.device = "cpu";
    klcl_context *ctx = NULL;
    assert_int_equal(klcl_context_create(&o, &ctx), KLCL_OK);
    assert_non_null(ctx);
    assert_true(klcl_context_is_reference(ctx));
    return ctx;
}

/* ------------------------------------------------------------------------------------------------------ */
/* Worked example                                                                                           */

static void test_worked_example_kl_and_reverse(void **state)
{
    (void)state;
    const float p[2] = {(float)log(0.7), (float)log(0.3)}, q[2] = {(float)log(0.5), (float)log(0.5)};
    klcl_loss_desc kl = desc_of(KLCL_LOSS_KL), rkl = desc_of(KLCL_LOSS_RKL);
    check_close("KL(P||Q)", ref_row(&kl, 2, p, q, 0, NULL), 0.0822828814740494, 1e-5);
    check_close("KL(Q||P)", ref_row(&rkl, 2, p, q, 0, NULL), 0.0871766969096058, 1e-5);
}

/* ------------------------------------------------------------------------------------------------------ */
/* Properties on random rows                                                                                */

enum { PROP_ROWS = 24, PROP_VOCAB = 37 };

/* Random rows with a temperature and a softcap, so the properties hold after both transforms. */
static void property_rows(float *teacher, float *student)
{
    tu_seed(20260101);
    tu_fill_logits(teacher, student, PROP_ROWS, PROP_VOCAB, PROP_VOCAB);
}

static klcl_loss_desc property_desc(klcl_loss loss, size_t row)
{
    klcl_loss_desc d = desc_of(loss);
    d.tau = row % 3 == 0 ? 1.0f : row % 3 == 1 ? 2.5f : 0.6f;
    d.softcap = row % 2 ? 6.0f : 0.0f;
    return d;
}

static void test_kl_nonnegative_and_zero_on_identical_rows(void **state)
{
    (void)state;
    float t[PROP_ROWS * PROP_VOCAB], s[PROP_ROWS * PROP_VOCAB];
    property_rows(t, s);
    for (size_t i = 0; i < PROP_ROWS; i++) {
        klcl_loss_desc d = property_desc(KLCL_LOSS_KL, i);
        const float *ti = t + i * PROP_VOCAB, *si = s + i * PROP_VOCAB;
        double kl = ref_row(&d, PROP_VOCAB, ti, si, 0, NULL);
        assert_true(kl > 0.0); /* distinct random rows: strictly positive */
        check_close("kl(p, p)", ref_row(&d, PROP_VOCAB, ti, ti, 0, NULL), 0.0, 1e-12);
        check_close("kl(q, q)", ref_row(&d, PROP_VOCAB, si, si, 0, NULL), 0.0, 1e-12);
    }
}

static void test_kl_asymmetric_and_swap_gives_rkl(void **state)
{
    (void)state;
    float t[PROP_ROWS * PROP_VOCAB], s[PROP_ROWS * PROP_VOCAB];
    property_rows(t, s);
    for (size_t i = 0; i < PROP_ROWS; i++) {
        klcl_loss_desc kl = property_desc(KLCL_LOSS_KL, i), rkl = property_desc(KLCL_LOSS_RKL, i);
        const float *ti = t + i * PROP_VOCAB, *si = s + i * PROP_VOCAB;
        double forward = ref_row(&kl, PROP_VOCAB, ti, si, 0, NULL);
        double reverse = ref_row(&rkl, PROP_VOCAB, ti, si, 0, NULL);
        assert_true(fabs(forward - reverse) > 1e-3 * forward);
        check_close("kl(t, s) vs rkl(s, t)", ref_row(&rkl, PROP_VOCAB, si, ti, 0, NULL), forward, 1e-12);
    }
}

static void test_jsd_endpoints_are_kl_and_rkl(void **state)
{
    (void)state;
    float t[PROP_ROWS * PROP_VOCAB], s[PROP_ROWS * PROP_VOCAB];
    double g_jsd[PROP_VOCAB], g_ref[PROP_VOCAB];
    property_rows(t, s);
    for (size_t i = 0; i < PROP_ROWS; i++) {
        const float *ti = t + i * PROP_VOCAB, *si = s + i * PROP_VOCAB;
        for (int end = 0; end <= 1; end++) {
            klcl_loss_desc jsd = property_desc(KLCL_LOSS_JSD, i);
            klcl_loss_desc other = property_desc(end ? KLCL_LOSS_RKL : KLCL_LOSS_KL, i);
            jsd.beta = (float)end;
            double a = ref_row(&jsd, PROP_VOCAB, ti, si, 0, g_jsd);
            double b = ref_row(&other, PROP_VOCAB, ti, si, 0, g_ref);
            check_close(end ? "jsd(beta=1) vs rkl" : "jsd(beta=0) vs kl", a, b, 1e-12);
            for (size_t v = 0; v < PROP_VOCAB; v++) check_close("jsd endpoint gradient", g_jsd[v], g_ref[v], 1e-12);
        }
    }
}

static void test_soft_ce_is_kl_plus_teacher_entropy(void **state)
{
    (void)state;
    float t[PROP_ROWS * PROP_VOCAB], s[PROP_ROWS * PROP_VOCAB];
    property_rows(t, s);
    for (size_t i = 0; i < PROP_ROWS; i++) {
        klcl_loss_desc ce = property_desc(KLCL_LOSS_SOFT_CE, i), kl = property_desc(KLCL_LOSS_KL, i);
        const float *ti = t + i * PROP_VOCAB, *si = s + i * PROP_VOCAB;
        double h_p = ref_teacher_entropy(&kl, PROP_VOCAB, ti, si);
        assert_true(h_p > 0.0 && h_p <= log((double)PROP_VOCAB));
        check_close("soft_ce vs kl + H(p)", ref_row(&ce, PROP_VOCAB, ti, si, 0, NULL),
                    ref_row(&kl, PROP_VOCAB, ti, si, 0, NULL) + h_p, 1e-12);
    }
}

static void test_bounded_losses_tvd_and_jsd(void **state)
{
    (void)state;
    float t[PROP_ROWS * PROP_VOCAB], s[PROP_ROWS * PROP_VOCAB];
    property_rows(t, s);
    for (size_t i = 0; i < PROP_ROWS; i++) {
        klcl_loss_desc tvd = property_desc(KLCL_LOSS_TVD, i), jsd = property_desc(KLCL_LOSS_JSD, i);
        jsd.beta = 0.5f;
        const float *ti = t + i * PROP_VOCAB, *si = s + i * PROP_VOCAB;
        double d = ref_row(&tvd, PROP_VOCAB, ti, si, 0, NULL), j = ref_row(&jsd, PROP_VOCAB, ti, si, 0, NULL);
        assert_true(d > 0.0 && d <= 1.0);
        assert_true(j > 0.0 && j <= log(2.0));
        check_close("tvd(p, p)", ref_row(&tvd, PROP_VOCAB, ti, ti, 0, NULL), 0.0, 1e-12);
    }
    /* Disjoint supports reach both bounds: tvd 1 and jsd log 2. */
    const float a[3] = {0.0f, -INFINITY, -INFINITY}, b[3] = {-INFINITY, 0.0f, 1.0f};
    klcl_loss_desc tvd = desc_of(KLCL_LOSS_TVD), jsd = desc_of(KLCL_LOSS_JSD);
    check_close("tvd of disjoint rows", ref_row(&tvd, 3, a, b, 0, NULL), 1.0, 1e-12);
    check_close("jsd of disjoint rows", ref_row(&jsd, 3, a, b, 0, NULL), log(2.0), 1e-12);
}

static void test_skew_kl_lambda_endpoints(void **state)
{
    (void)state;
    float t[PROP_ROWS * PROP_VOCAB], s[PROP_ROWS * PROP_VOCAB];
    property_rows(t, s);
    for (size_t i = 0; i < PROP_ROWS; i++) {
        const float *ti = t + i * PROP_VOCAB, *si = s + i * PROP_VOCAB;
        klcl_loss_desc skl = property_desc(KLCL_LOSS_SKL, i), srkl = property_desc(KLCL_LOSS_SRKL, i);
        klcl_loss_desc kl = property_desc(KLCL_LOSS_KL, i), rkl = property_desc(KLCL_LOSS_RKL, i);
        skl.lambda = srkl.lambda = 0.0f;
        check_close("skl(lambda=0) vs kl", ref_row(&skl, PROP_VOCAB, ti, si, 0, NULL),
                    ref_row(&kl, PROP_VOCAB, ti, si, 0, NULL), 1e-12);
        check_close("srkl(lambda=0) vs rkl", ref_row(&srkl, PROP_VOCAB, ti, si, 0, NULL),
                    ref_row(&rkl, PROP_VOCAB, ti, si, 0, NULL), 1e-12);
        skl.lambda = 1.0f;
        check_close("skl(lambda=1)", ref_row(&skl, PROP_VOCAB, ti, si, 0, NULL), 0.0, 1e-12);
        /* In between, skewing toward p shrinks the divergence. */
        skl.lambda = 0.1f;
        double skewed = ref_row(&skl, PROP_VOCAB, ti, si, 0, NULL);
        assert_true(skewed > 0.0 && skewed < ref_row(&kl, PROP_VOCAB, ti, si, 0, NULL));
    }
}

/* ------------------------------------------------------------------------------------------------------ */
/* Closed forms                                                                                             */

enum { CF_VOCAB = 23 };

static void test_ce_closed_form(void **state)
{
    (void)state;
    float s[CF_VOCAB];
    tu_seed(77);
    for (int trial = 0; trial < 8; trial++) {
        grid_logits(s, CF_VOCAB, 3.0);
        int32_t y = (int32_t)(trial * 5 % CF_VOCAB);
        klcl_loss_desc d = desc_of(KLCL_LOSS_CE);
        d.tau = trial % 2 ? 1.0f : 2.0f;
        double want = lse_by_hand(s, CF_VOCAB, d.tau, 0.0) - s[y] / d.tau;
        check_close("ce vs lse - z_y", ref_row(&d, CF_VOCAB, NULL, s, y, NULL), want, 1e-12 * fmax(1.0, want));
    }
}

static void test_ce_label_smoothing_matches_pytorch_formula(void **state)
{
    (void)state;
    float s[CF_VOCAB];
    tu_seed(78);
    const float eps_values[] = {0.0f, 0.1f, 0.25f, 1.0f};
    for (size_t k = 0; k < sizeof eps_values / sizeof eps_values[0]; k++) {
        grid_logits(s, CF_VOCAB, 3.0);
        int32_t y = (int32_t)(3 + 4 * k);
        klcl_loss_desc d = desc_of(KLCL_LOSS_CE);
        d.label_smoothing = eps_values[k];
        double eps = d.label_smoothing, lse = lse_by_hand(s, CF_VOCAB, 1.0, 0.0), sum_log_q = 0.0;
        for (size_t v = 0; v < CF_VOCAB; v++) sum_log_q += s[v] - lse;
        double want = (1.0 - eps) * (lse - s[y]) - eps / CF_VOCAB * sum_log_q;
        check_close("ce with label smoothing", ref_row(&d, CF_VOCAB, NULL, s, y, NULL), want, 1e-12 * want);
    }
}

static void test_ce_z_loss_adds_weighted_lse_squared(void **state)
{
    (void)state;
    float s[CF_VOCAB];
    tu_seed(79);
    for (int trial = 0; trial < 4; trial++) {
        grid_logits(s, CF_VOCAB, 3.0);
        for (size_t v = 0; v < CF_VOCAB; v++) s[v] += 4.0f; /* a large lse, as z-loss is meant to curb */
        klcl_loss_desc plain = desc_of(KLCL_LOSS_CE), zl = plain;
        plain.tau = zl.tau = trial % 2 ? 1.0f : 1.5f;
        zl.z_loss = trial < 2 ? 1e-3f : 0.5f;
        int32_t y = 2 + trial;
        double lse = lse_by_hand(s, CF_VOCAB, zl.tau, 0.0);
        double want = ref_row(&plain, CF_VOCAB, NULL, s, y, NULL) + (double)zl.z_loss * lse * lse;
        check_close("ce + z_loss lse^2", ref_row(&zl, CF_VOCAB, NULL, s, y, NULL), want, 1e-12 * want);
    }
}

static void test_kd_combines_ce_at_tau_one_and_scaled_kl(void **state)
{
    (void)state;
    float t[CF_VOCAB], s[CF_VOCAB];
    double g_kd[CF_VOCAB], g_ce[CF_VOCAB], g_kl[CF_VOCAB];
    tu_seed(80);
    const float alphas[] = {0.0f, 0.3f, 1.0f};
    for (size_t k = 0; k < sizeof alphas / sizeof alphas[0]; k++) {
        tu_fill_logits(t, s, 1, CF_VOCAB, CF_VOCAB);
        int32_t y = (int32_t)(7 * k + 1);
        klcl_loss_desc kd = desc_of(KLCL_LOSS_KD), ce = desc_of(KLCL_LOSS_CE), kl = desc_of(KLCL_LOSS_KL);
        kd.alpha = alphas[k];
        kd.tau = kl.tau = 2.0f;
        kd.scale = 4.0f; /* the kl gradient carries scale, ce's does not */
        double a = kd.alpha;
        double want = a * ref_row(&ce, CF_VOCAB, NULL, s, y, g_ce) +
                      (1.0 - a) * 4.0 * ref_row(&kl, CF_VOCAB, t, s, 0, g_kl);
        check_close("kd value", ref_row(&kd, CF_VOCAB, t, s, y, g_kd), want, 1e-12 * fmax(1.0, want));
        for (size_t v = 0; v < CF_VOCAB; v++)
            check_close("kd gradient", g_kd[v], a * g_ce[v] + (1.0 - a) * 4.0 * g_kl[v], 1e-12);
    }
}

/* ------------------------------------------------------------------------------------------------------ */
/* Gradients against central finite differences                                                            */

enum { FD_VOCAB = 13 };
#define FD_STEP (1.0 / 1024.0)

/* Central differences in the student logits, exact in the inputs (grid logits +- 2^-10) and evaluated in
 * double, so the error is the O(h^2) truncation term: ~1e-7 relative for these rows. Returns the worst
 * error relative to the tolerance 1e-6 + 1e-4 |g| (g before scale). */
static double fd_worst(const klcl_loss_desc *d, const float *teacher, const float *student, int32_t label,
                       const char *what)
{
    double grad[FD_VOCAB];
    float s[FD_VOCAB];
    memcpy(s, student, sizeof s);
    double loss = ref_row(d, FD_VOCAB, teacher, s, label, grad);
    assert_true(isfinite(loss));
    double unscale = d->loss == KLCL_LOSS_KD ? 1.0 : 1.0 / fabs(d->scale);
    double worst = 0.0;
    for (size_t v = 0; v < FD_VOCAB; v++) {
        assert_true((double)(float)(student[v] + FD_STEP) == student[v] + FD_STEP); /* the step is exact */
        s[v] = (float)(student[v] + FD_STEP);
        double up = ref_row(d, FD_VOCAB, teacher, s, label, NULL);
        s[v] = (float)(student[v] - FD_STEP);
        double down = ref_row(d, FD_VOCAB, teacher, s, label, NULL);
        s[v] = student[v];
        double fd = (up - down) / (2.0 * FD_STEP) * unscale, g = grad[v] * unscale;
        double err = fabs(fd - g) / (1e-6 + 1e-4 * fabs(g));
        if (err > 1.0)
            fail_msg("%s: d/ds[%zu]: analytic %.12g, finite difference %.12g", what, v, grad[v],
                     (up - down) / (2.0 * FD_STEP));
        if (err > worst) worst = err;
    }
    return worst;
}

/* tvd is not differentiable where p_v == q_v: keep every |p_v - q_v| well beyond what a step can move. */
static int tvd_safe(const klcl_loss_desc *d, const float *teacher, const float *student)
{
    double p[FD_VOCAB], q[FD_VOCAB];
    softmax_by_hand(teacher, FD_VOCAB, d->tau, d->softcap, p);
    softmax_by_hand(student, FD_VOCAB, d->tau, d->softcap, q);
    for (size_t v = 0; v < FD_VOCAB; v++)
        if (fabs(p[v] - q[v]) <= 8.0 * FD_STEP / d->tau * q[v]) return 0;
    return 1;
}

static void test_gradients_match_finite_differences(void **state)
{
    (void)state;
    const klcl_loss losses[] = {KLCL_LOSS_KL,  KLCL_LOSS_RKL,  KLCL_LOSS_SOFT_CE, KLCL_LOSS_CE, KLCL_LOSS_JSD,
                                KLCL_LOSS_SKL, KLCL_LOSS_SRKL, KLCL_LOSS_TVD,     KLCL_LOSS_KD};
    float t[FD_VOCAB], s[FD_VOCAB];
    tu_seed(4242);
    double worst = 0.0;
    for (size_t k = 0; k < sizeof losses / sizeof losses[0]; k++)
        for (int capped = 0; capped <= 1; capped++)
            for (int trial = 0; trial < 3; trial++) {
                klcl_loss_desc d = desc_of(losses[k]);
                d.tau = trial == 1 ? 0.7f : 2.0f;
                d.softcap = capped ? 3.0f : 0.0f;
                d.scale = trial == 2 ? -1.5f : 3.0f;
                d.beta = 0.3f;
                d.lambda = 0.25f;
                d.alpha = 0.4f;
                if (losses[k] == KLCL_LOSS_CE && trial > 0) {
                    d.label_smoothing = 0.1f;
                    d.z_loss = trial == 1 ? 1e-3f : 0.05f;
                }
                do {
                    grid_logits(t, FD_VOCAB, 1.5);
                    grid_logits(s, FD_VOCAB, 1.5);
                } while (losses[k] == KLCL_LOSS_TVD && !tvd_safe(&d, t, s));
                char what[96];
                snprintf(what, sizeof what, "%s tau %g softcap %g scale %g", klcl_loss_name(d.loss), d.tau,
                         d.softcap, d.scale);
                double w = fd_worst(&d, losses[k] == KLCL_LOSS_CE ? NULL : t, s, (int32_t)(trial * 4 + 1), what);
                if (w > worst) worst = w;
            }
    /* A sanity check on the check: a wrong gradient (tau not divided out) must be far outside. */
    klcl_loss_desc d = desc_of(KLCL_LOSS_KL);
    d.tau = 2.0f;
    double g[FD_VOCAB];
    grid_logits(t, FD_VOCAB, 1.5);
    grid_logits(s, FD_VOCAB, 1.5);
    ref_row(&d, FD_VOCAB, t, s, 0, g);
    float sp[FD_VOCAB], sm[FD_VOCAB];
    memcpy(sp, s, sizeof sp);
    memcpy(sm, s, sizeof sm);
    sp[0] += (float)FD_STEP;
    sm[0] -= (float)FD_STEP;
    double fd = (ref_row(&d, FD_VOCAB, t, sp, 0, NULL) - ref_row(&d, FD_VOCAB, t, sm, 0, NULL)) / (2.0 * FD_STEP);
    assert_true(fabs(fd - 2.0 * g[0]) > 1e-6 + 1e-4 * fabs(fd));
    print_message("finite differences: worst error %.3g of the tolerance\n", worst);
}

/* ------------------------------------------------------------------------------------------------------ */
/* PyTorch vectors                                                                                          */

enum { MAX_CASES = 64 };

typedef struct vector_case {
    char name[64];
    klcl_loss_desc desc;
    size_t rows, vocab;
    int has_labels;
    double sum, mean, batchmean;
} vector_case;

typedef struct vector_data {
    float *teacher, *student;
    int32_t *labels;
    double *loss, *grad;
} vector_data;

/* Splits a line at tabs in place; returns the number of fields. */
static size_t split_tabs(char *line, char **fields, size_t max)
{
    size_t n = 0;
    line[strcspn(line, "\r\n")] = '\0';
    while (n < max) {
        fields[n++] = line;
        char *tab = strchr(line, '\t');
        if (!tab) break;
        *tab = '\0';
        line = tab + 1;
    }
    return n;
}

static size_t read_manifest(vector_case *cases)
{
    FILE *f = fopen(VECTORS "manifest.tsv", "r");
    assert_non_null(f);
    char line[1024], *fld[32];
    assert_non_null(fgets(line, sizeof line, f));
    static const char *const header[] = {"name",  "loss",   "N",     "V",     "tau",   "softcap",
                                         "scale", "beta",   "lambda", "alpha", "label_smoothing",
                                         "z_loss", "labels", "sum",   "mean",  "batchmean"};
    enum { FIELDS = sizeof header / sizeof header[0] };
    assert_int_equal(split_tabs(line, fld, 32), FIELDS);
    for (size_t i = 0; i < FIELDS; i++) assert_string_equal(fld[i], header[i]);
    size_t n = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '\n' || line[0] == '\0') continue;
        assert_true(n < MAX_CASES);
        assert_int_equal(split_tabs(line, fld, 32), FIELDS);
        vector_case *c = &cases[n++];
        assert_true(strlen(fld[0]) < sizeof c->name);
        strcpy(c->name, fld[0]);
        klcl_loss loss;
        assert_int_equal(klcl_loss_from_name(fld[1], &loss), KLCL_OK);
        c->desc = desc_of(loss);
        c->rows = strtoul(fld[2], NULL, 10);
        c->vocab = strtoul(fld[3], NULL, 10);
        c->desc.tau = strtof(fld[4], NULL);
        c->desc.softcap = strtof(fld[5], NULL);
        c->desc.scale = strtof(fld[6], NULL);
        c->desc.beta = strtof(fld[7], NULL);
        c->desc.lambda = strtof(fld[8], NULL);
        c->desc.alpha = strtof(fld[9], NULL);
        c->desc.label_smoothing = strtof(fld[10], NULL);
        c->desc.z_loss = strtof(fld[11], NULL);
        c->has_labels = strcmp(fld[12], "yes") == 0;
        c->sum = strtod(fld[13], NULL);
        c->mean = strtod(fld[14], NULL);
        c->batchmean = strtod(fld[15], NULL);
        assert_true(c->rows > 0 && c->vocab > 0 && c->vocab <= MAX_VOCAB);
    }
    fclose(f);
    return n;
}

static void *load_npy(const char *name, const char *part, char dtype, size_t rows, size_t cols)
{
    char path[512];
    snprintf(path, sizeof path, VECTORS "%s.%s.npy", name, part);
    size_t r = 0, c = 0;
    void *data = tu_read_npy(path, dtype, &r, &c);
    if (!data) fail_msg("cannot read %s", path);
    assert_int_equal(r, rows);
    assert_int_equal(c, cols);
    return data;
}

static vector_data load_case(const vector_case *c)
{
    vector_data d;
    d.teacher = load_npy(c->name, "teacher", 'f', c->rows, c->vocab);
    d.student = load_npy(c->name, "student", 'f', c->rows, c->vocab);
    d.labels = c->has_labels ? load_npy(c->name, "labels", 'i', c->rows, 1) : NULL;
    d.loss = load_npy(c->name, "loss", 'd', c->rows, 1);
    d.grad = load_npy(c->name, "grad", 'd', c->rows, c->vocab);
    return d;
}

static void free_case(vector_data *d)
{
    free(d->teacher);
    free(d->student);
    free(d->labels);
    free(d->loss);
    free(d->grad);
}

static int row_ignored(const vector_data *d, size_t i)
{
    return d->labels && d->labels[i] == -100;
}

/* The tolerance applies to the gradient before scale (LOSSES.md); kd's scale only weighs one term. */
static double grad_unscale(const klcl_loss_desc *d)
{
    return d->loss == KLCL_LOSS_KD ? 1.0 : 1.0 / fabs(d->scale);
}

static void test_pytorch_vectors_per_row(void **state)
{
    (void)state;
    vector_case cases[MAX_CASES];
    size_t n = read_manifest(cases);
    int seen[KLCL_LOSS_COUNT] = {0};
    double grad[MAX_VOCAB];
    for (size_t k = 0; k < n; k++) {
        const vector_case *c = &cases[k];
        vector_data d = load_case(c);
        seen[c->desc.loss] = 1;
        double u = grad_unscale(&c->desc), sum = 0.0;
        for (size_t i = 0; i < c->rows; i++) {
            if (row_ignored(&d, i)) {
                assert_true(d.loss[i] == 0.0); /* the vectors hold 0 there, as reduction none does */
                continue;
            }
            const size_t V = c->vocab;
            double loss = ref_row(&c->desc, V, d.teacher + i * V, d.student + i * V, d.labels ? d.labels[i] : 0,
                                  grad);
            if (!tu_loss_close(loss, d.loss[i]))
                fail_msg("%s row %zu: loss %.17g, PyTorch %.17g", c->name, i, loss, d.loss[i]);
            for (size_t v = 0; v < V; v++)
                if (!tu_grad_close(grad[v] * u, d.grad[i * V + v] * u))
                    fail_msg("%s row %zu col %zu: grad %.17g, PyTorch %.17g", c->name, i, v, grad[v],
                             d.grad[i * V + v]);
            sum += loss;
        }
        check_close(c->name, sum, c->sum, 1e-5 * fabs(c->sum));
        free_case(&d);
    }
    for (int l = 0; l < KLCL_LOSS_COUNT; l++)
        if (!seen[l]) fail_msg("no vector exercises loss %s", klcl_loss_name((klcl_loss)l));
}

static void run_vector_reduction(klcl_context *ctx, const vector_case *c, const vector_data *d,
                                 klcl_reduction reduction)
{
    const size_t N = c->rows, V = c->vocab;
    float *grad = malloc(N * V * sizeof *grad), *row_loss = malloc(N * sizeof *row_loss);
    assert_non_null(grad);
    assert_non_null(row_loss);
    for (size_t j = 0; j < N * V; j++) grad[j] = 99.0f; /* every entry must be written */
    for (size_t i = 0; i < N; i++) row_loss[i] = 99.0f;

    klcl_loss_desc desc = c->desc;
    desc.reduction = reduction;
    klcl_batch b = KLCL_BATCH_INIT;
    b.rows = N;
    b.vocab = V;
    b.teacher = klcl_host_tensor(d->teacher, 0);
    b.student = klcl_host_tensor(d->student, 0);
    if (d->labels) b.labels = klcl_host_tensor(d->labels, 0);
    b.grad = klcl_host_tensor(grad, 0);
    b.row_loss = klcl_host_tensor(row_loss, 0);
    klcl_result r;
    klcl_status st = klcl_compute(ctx, &desc, &b, &r);
    if (st != KLCL_OK) fail_msg("%s: %s: %s", c->name, klcl_status_string(st), klcl_last_error(ctx));

    size_t used = 0;
    for (size_t i = 0; i < N; i++) used += !row_ignored(d, i);
    assert_int_equal(r.rows_used, used);
    assert_int_equal(r.rows_skipped, N - used);
    assert_int_equal(r.rows_nonfinite, 0);
    double want = reduction == KLCL_REDUCTION_MEAN        ? c->mean
                  : reduction == KLCL_REDUCTION_BATCHMEAN ? c->batchmean
                                                          : c->sum;
    if (!(fabs(r.loss - want) <= 1e-5 * fabs(want)))
        fail_msg("%s %s: loss %.17g, PyTorch %.17g", c->name, klcl_reduction_name(reduction), r.loss, want);

    /* The gradient is the reduction-none one over the denominator: rows not skipped (mean) or N. */
    double denom = reduction == KLCL_REDUCTION_MEAN ? (double)used
                   : reduction == KLCL_REDUCTION_BATCHMEAN ? (double)N
                                                           : 1.0;
    double u = grad_unscale(&desc);
    for (size_t i = 0; i < N; i++) {
        if (!tu_loss_close(row_loss[i], d->loss[i]))
            fail_msg("%s row %zu: row_loss %.9g, PyTorch %.17g", c->name, i, row_loss[i], d->loss[i]);
        for (size_t v = 0; v < V; v++) {
            double got = grad[i * V + v] * denom * u, ref = d->grad[i * V + v] * u;
            if (row_ignored(d, i) ? grad[i * V + v] != 0.0f : !tu_grad_close(got, ref))
                fail_msg("%s %s row %zu col %zu: grad %.9g x %g, PyTorch %.17g", c->name,
                         klcl_reduction_name(reduction), i, v, grad[i * V + v], denom, d->grad[i * V + v]);
        }
    }
    free(grad);
    free(row_loss);
}

static void test_pytorch_vectors_cpu_context_reductions(void **state)
{
    (void)state;
    vector_case cases[MAX_CASES];
    size_t n = read_manifest(cases);
    klcl_context *ctx = cpu_context();
    const klcl_reduction reductions[] = {KLCL_REDUCTION_NONE, KLCL_REDUCTION_SUM, KLCL_REDUCTION_MEAN,
                                         KLCL_REDUCTION_BATCHMEAN};
    for (size_t k = 0; k < n; k++) {
        vector_data d = load_case(&cases[k]);
        for (size_t j = 0; j < sizeof reductions / sizeof reductions[0]; j++)
            run_vector_reduction(ctx, &cases[k], &d, reductions[j]);
        free_case(&d);
    }
    klcl_context_destroy(ctx);
}

/* ------------------------------------------------------------------------------------------------------ */
/* Special values through the reference                                                                     */

enum { SV_VOCAB = 11 };

static klcl_loss_desc special_desc(klcl_loss loss)
{
    klcl_loss_desc d = desc_of(loss);
    d.tau = 1.5f;
    d.scale = 2.0f;
    return d;
}

static void special_rows(float *t, float *s)
{
    tu_seed(99);
    tu_fill_logits(t, s, 1, SV_VOCAB, SV_VOCAB);
}

/* A column that is -inf for teacher and student: probability 0 on both sides, contributing nothing. */
static void check_neginf_column(klcl_loss loss, float eps)
{
    float t[SV_VOCAB], s[SV_VOCAB];
    double grad[SV_VOCAB], grad_narrow[SV_VOCAB];
    special_rows(t, s);
    t[4] = s[4] = -INFINITY;
    klcl_loss_desc d = special_desc(loss);
    d.label_smoothing = eps;
    double l = ref_row(&d, SV_VOCAB, t, s, 2, grad);
    if (!isfinite(l)) fail_msg("%s (eps %g) with a -inf column: loss %g", klcl_loss_name(loss), eps, l);
    for (size_t v = 0; v < SV_VOCAB; v++) assert_false(isnan(grad[v]));
    assert_true(grad[4] == 0.0);
    /* The same as the row without that column (label 2 stays at index 2). */
    float tn[SV_VOCAB - 1], sn[SV_VOCAB - 1];
    for (size_t v = 0, w = 0; v < SV_VOCAB; v++)
        if (v != 4) {
            tn[w] = t[v];
            sn[w++] = s[v];
        }
    double ln = ref_row(&d, SV_VOCAB - 1, tn, sn, 2, grad_narrow);
    check_close(klcl_loss_name(loss), l, ln, 1e-12 * fmax(1.0, fabs(ln)));
    for (size_t v = 0; v < SV_VOCAB; v++)
        if (v != 4) check_close("gradient beside a -inf column", grad[v], grad_narrow[v - (v > 4)], 1e-12);
}

static void test_neginf_column_in_both_rows_is_harmless(void **state)
{
    (void)state;
    for (int l = 0; l < KLCL_LOSS_COUNT; l++)
        if (l != KLCL_LOSS_CE) check_neginf_column((klcl_loss)l, 0.0f);
}

/* ce without label smoothing puts no target mass on a -inf column: -log q_y stays finite (PyTorch's
 * F.cross_entropy gives a finite value). With smoothing the target has mass eps/V there, so +inf is exact. */
static void test_ce_neginf_column_without_smoothing_is_finite(void **state)
{
    (void)state;
    check_neginf_column(KLCL_LOSS_CE, 0.0f);
}

static void test_teacher_mass_on_impossible_student_token_is_inf(void **state)
{
    (void)state;
    float t[SV_VOCAB], s[SV_VOCAB];
    special_rows(t, s);
    s[6] = -INFINITY;
    klcl_loss_desc kl = special_desc(KLCL_LOSS_KL), rkl = special_desc(KLCL_LOSS_RKL);
    assert_true(ref_row(&kl, SV_VOCAB, t, s, 0, NULL) == INFINITY);
    /* The other direction weighs by q, which is 0 there: finite. */
    assert_true(isfinite(ref_row(&rkl, SV_VOCAB, t, s, 0, NULL)));
}

static void check_all_nan(const char *what, double loss, const double *grad)
{
    if (!isnan(loss)) fail_msg("%s: loss %g, want NaN", what, loss);
    for (size_t v = 0; v < SV_VOCAB; v++)
        if (!isnan(grad[v])) fail_msg("%s: grad[%zu] = %g, want NaN", what, v, grad[v]);
}

static void test_nan_row_gives_nan_loss_and_gradient(void **state)
{
    (void)state;
    double grad[SV_VOCAB];
    char what[64];
    for (int l = 0; l < KLCL_LOSS_COUNT; l++) {
        float t[SV_VOCAB], s[SV_VOCAB];
        klcl_loss_desc d = special_desc((klcl_loss)l);
        special_rows(t, s);
        s[3] = NAN;
        snprintf(what, sizeof what, "%s, NaN in student", klcl_loss_name(d.loss));
        check_all_nan(what, ref_row(&d, SV_VOCAB, t, s, 1, grad), grad);
        if (l == KLCL_LOSS_CE) continue; /* ce reads no teacher */
        special_rows(t, s);
        t[8] = NAN;
        snprintf(what, sizeof what, "%s, NaN in teacher", klcl_loss_name(d.loss));
        check_all_nan(what, ref_row(&d, SV_VOCAB, t, s, 1, grad), grad);
    }
}

static void test_all_neginf_row_is_invalid(void **state)
{
    (void)state;
    double grad[SV_VOCAB];
    float t[SV_VOCAB], s[SV_VOCAB], dead[SV_VOCAB];
    for (size_t v = 0; v < SV_VOCAB; v++) dead[v] = -INFINITY;
    special_rows(t, s);
    for (int l = 0; l < KLCL_LOSS_COUNT; l++) {
        klcl_loss_desc d = special_desc((klcl_loss)l);
        check_all_nan("all -inf student", ref_row(&d, SV_VOCAB, t, dead, 1, grad), grad);
        if (l != KLCL_LOSS_CE) check_all_nan("all -inf teacher", ref_row(&d, SV_VOCAB, dead, s, 1, grad), grad);
    }
}

/* ------------------------------------------------------------------------------------------------------ */
/* The cpu context over a batch                                                                             */

enum { B_ROWS = 6, B_VOCAB = 19 };

typedef struct batch_io {
    float teacher[B_ROWS * B_VOCAB], student[B_ROWS * B_VOCAB];
    float grad[B_ROWS * B_VOCAB], row_loss[B_ROWS];
    int32_t labels[B_ROWS];
    uint8_t mask[B_ROWS];
} batch_io;

static void batch_fill(batch_io *io, uint64_t seed)
{
    tu_seed(seed);
    tu_fill_logits(io->teacher, io->student, B_ROWS, B_VOCAB, B_VOCAB);
    for (size_t i = 0; i < B_ROWS; i++) {
        io->labels[i] = (int32_t)((i * 7 + 3) % B_VOCAB);
        io->mask[i] = 1;
        io->row_loss[i] = 99.0f;
    }
    for (size_t j = 0; j < B_ROWS * B_VOCAB; j++) io->grad[j] = 99.0f;
}

static klcl_batch batch_of(batch_io *io, int with_mask)
{
    klcl_batch b = KLCL_BATCH_INIT;
    b.rows = B_ROWS;
    b.vocab = B_VOCAB;
    b.teacher = klcl_host_tensor(io->teacher, 0);
    b.student = klcl_host_tensor(io->student, 0);
    b.labels = klcl_host_tensor(io->labels, 0);
    if (with_mask) b.mask = klcl_host_tensor(io->mask, 0);
    b.grad = klcl_host_tensor(io->grad, 0);
    b.row_loss = klcl_host_tensor(io->row_loss, 0);
    return b;
}

static klcl_result compute_ok(klcl_context *ctx, const klcl_loss_desc *d, const klcl_batch *b)
{
    klcl_result r;
    klcl_status st = klcl_compute(ctx, d, b, &r);
    if (st != KLCL_OK) fail_msg("%s: %s", klcl_status_string(st), klcl_last_error(ctx));
    return r;
}

static void test_batch_mask_and_ignore_index_skip_rows(void **state)
{
    (void)state;
    klcl_context *ctx = cpu_context();
    batch_io io;
    batch_fill(&io, 5);
    io.mask[1] = io.mask[4] = 0;
    io.labels[3] = -100; /* a second way to skip, counted together with the mask */
    klcl_loss_desc d = desc_of(KLCL_LOSS_KD);
    d.tau = 2.0f;
    d.scale = 4.0f;
    d.reduction = KLCL_REDUCTION_MEAN;
    klcl_batch b = batch_of(&io, 1);
    klcl_result r = compute_ok(ctx, &d, &b);
    assert_int_equal(r.rows_used, 3);
    assert_int_equal(r.rows_skipped, 3);
    assert_int_equal(r.rows_nonfinite, 0);
    double sum = 0.0, h_s = 0.0, grad[B_VOCAB];
    for (size_t i = 0; i < B_ROWS; i++) {
        int skipped = i == 1 || i == 3 || i == 4;
        const float *g = io.grad + i * B_VOCAB;
        if (skipped) {
            assert_true(io.row_loss[i] == 0.0f);
            for (size_t v = 0; v < B_VOCAB; v++) assert_true(g[v] == 0.0f);
            continue;
        }
        double loss, h;
        assert_int_equal(klcl_reference_row(&d, B_VOCAB, io.teacher + i * B_VOCAB, io.student + i * B_VOCAB,
                                            io.labels[i], &loss, grad, NULL, &h),
                         KLCL_OK);
        assert_true(io.row_loss[i] == (float)loss);
        for (size_t v = 0; v < B_VOCAB; v++) check_close("grad / used rows", g[v], grad[v] / 3.0, 0x1p-23 * fabs(grad[v]));
        sum += loss;
        h_s += h;
    }
    check_close("mean over used rows", r.loss, sum / 3.0, 1e-12 * fabs(sum));
    check_close("student entropy over used rows", r.student_entropy, h_s / 3.0, 1e-12);
    klcl_context_destroy(ctx);
}

static void test_batch_mean_with_every_row_skipped_is_zero(void **state)
{
    (void)state;
    klcl_context *ctx = cpu_context();
    batch_io io;
    const klcl_reduction reductions[] = {KLCL_REDUCTION_MEAN, KLCL_REDUCTION_SUM, KLCL_REDUCTION_BATCHMEAN};
    for (int by_label = 0; by_label <= 1; by_label++)
        for (size_t k = 0; k < 3; k++) {
            batch_fill(&io, 6);
            for (size_t i = 0; i < B_ROWS; i++) {
                if (by_label) io.labels[i] = -100;
                else io.mask[i] = 0;
            }
            klcl_loss_desc d = desc_of(by_label ? KLCL_LOSS_CE : KLCL_LOSS_KL);
            d.reduction = reductions[k];
            klcl_batch b = batch_of(&io, !by_label);
            klcl_result r = compute_ok(ctx, &d, &b);
            assert_true(r.loss == 0.0); /* never NaN */
            assert_int_equal(r.rows_used, 0);
            assert_int_equal(r.rows_skipped, B_ROWS);
            assert_true(isnan(r.student_entropy)); /* no row qualifies */
            for (size_t i = 0; i < B_ROWS; i++) assert_true(io.row_loss[i] == 0.0f);
            for (size_t j = 0; j < B_ROWS * B_VOCAB; j++) assert_true(io.grad[j] == 0.0f);
        }
    klcl_context_destroy(ctx);
}

static void test_batch_nan_row_is_counted_and_isolated(void **state)
{
    (void)state;
    klcl_context *ctx = cpu_context();
    batch_io clean, dirty;
    batch_fill(&clean, 7);
    batch_fill(&dirty, 7);
    dirty.student[2 * B_VOCAB + 5] = NAN;
    klcl_loss_desc d = desc_of(KLCL_LOSS_JSD);
    d.reduction = KLCL_REDUCTION_SUM;
    klcl_batch bc = batch_of(&clean, 0), bd = batch_of(&dirty, 0);
    klcl_result rc = compute_ok(ctx, &d, &bc), rd = compute_ok(ctx, &d, &bd);
    assert_int_equal(rc.rows_nonfinite, 0);
    assert_int_equal(rd.rows_nonfinite, 1);
    assert_int_equal(rd.first_nonfinite[0], 2);
    assert_int_equal(rd.rows_used, B_ROWS);
    for (size_t i = 0; i < B_ROWS; i++) {
        const float *gc = clean.grad + i * B_VOCAB, *gd = dirty.grad + i * B_VOCAB;
        if (i == 2) {
            assert_true(isnan(dirty.row_loss[i]));
            for (size_t v = 0; v < B_VOCAB; v++) assert_true(isnan(gd[v]));
            continue;
        }
        assert_true(dirty.row_loss[i] == clean.row_loss[i]);
        assert_memory_equal(gd, gc, B_VOCAB * sizeof *gd);
    }
    /* Metrics are means over the finite rows only. */
    assert_true(isfinite(rd.student_entropy) && isfinite(rd.teacher_entropy));
    klcl_context_destroy(ctx);
}

static void test_batch_first_nonfinite_keeps_first_eight(void **state)
{
    (void)state;
    enum { ROWS = 12 };
    float t[ROWS * 5], s[ROWS * 5];
    tu_seed(8);
    tu_fill_logits(t, s, ROWS, 5, 5);
    const size_t bad[] = {1, 2, 4, 5, 6, 7, 8, 9, 11}; /* nine rows: one more than the list holds */
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) t[bad[k] * 5 + k % 5] = NAN;
    klcl_context *ctx = cpu_context();
    klcl_loss_desc d = desc_of(KLCL_LOSS_KL);
    klcl_batch b = KLCL_BATCH_INIT;
    b.rows = ROWS;
    b.vocab = 5;
    b.teacher = klcl_host_tensor(t, 0);
    b.student = klcl_host_tensor(s, 0);
    klcl_result r = compute_ok(ctx, &d, &b);
    assert_int_equal(r.rows_nonfinite, 9);
    for (size_t k = 0; k < 8; k++) assert_int_equal(r.first_nonfinite[k], bad[k]);
    klcl_context_destroy(ctx);
}

static void test_batch_strided_matches_contiguous(void **state)
{
    (void)state;
    enum { T_STRIDE = B_VOCAB + 3, S_STRIDE = B_VOCAB + 8, G_STRIDE = B_VOCAB + 5 };
    static float t[B_ROWS * T_STRIDE], s[B_ROWS * S_STRIDE], g[B_ROWS * G_STRIDE];
    klcl_context *ctx = cpu_context();
    batch_io io;
    batch_fill(&io, 9);
    /* Padding that would poison any result it leaked into. */
    for (size_t j = 0; j < B_ROWS * T_STRIDE; j++) t[j] = NAN;
    for (size_t j = 0; j < B_ROWS * S_STRIDE; j++) s[j] = NAN;
    for (size_t j = 0; j < B_ROWS * G_STRIDE; j++) g[j] = 1234.5f;
    for (size_t i = 0; i < B_ROWS; i++) {
        memcpy(t + i * T_STRIDE, io.teacher + i * B_VOCAB, B_VOCAB * sizeof *t);
        memcpy(s + i * S_STRIDE, io.student + i * B_VOCAB, B_VOCAB * sizeof *s);
    }
    io.mask[2] = 0;
    const klcl_loss losses[] = {KLCL_LOSS_KL, KLCL_LOSS_SRKL, KLCL_LOSS_KD};
    for (size_t k = 0; k < sizeof losses / sizeof losses[0]; k++) {
        klcl_loss_desc d = desc_of(losses[k]);
        d.tau = 1.7f;
        d.reduction = KLCL_REDUCTION_BATCHMEAN;
        klcl_batch contiguous = batch_of(&io, 1), strided = contiguous;
        float row_loss[B_ROWS];
        strided.teacher = klcl_host_tensor(t, T_STRIDE);
        strided.student = klcl_host_tensor(s, S_STRIDE);
        strided.grad = klcl_host_tensor(g, G_STRIDE);
        strided.row_loss = klcl_host_tensor(row_loss, 0);
        klcl_result rc = compute_ok(ctx, &d, &contiguous), rs = compute_ok(ctx, &d, &strided);
        assert_true(rs.loss == rc.loss);
        assert_false(isnan(rs.loss));
        assert_int_equal(rs.rows_used, rc.rows_used);
        assert_memory_equal(row_loss, io.row_loss, sizeof row_loss);
        for (size_t i = 0; i < B_ROWS; i++) {
            assert_memory_equal(g + i * G_STRIDE, io.grad + i * B_VOCAB, B_VOCAB * sizeof *g);
            for (size_t v = B_VOCAB; v < G_STRIDE; v++) assert_true(g[i * G_STRIDE + v] == 1234.5f);
        }
    }
    klcl_context_destroy(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_worked_example_kl_and_reverse),
        cmocka_unit_test(test_kl_nonnegative_and_zero_on_identical_rows),
        cmocka_unit_test(test_kl_asymmetric_and_swap_gives_rkl),
        cmocka_unit_test(test_jsd_endpoints_are_kl_and_rkl),
        cmocka_unit_test(test_soft_ce_is_kl_plus_teacher_entropy),
        cmocka_unit_test(test_bounded_losses_tvd_and_jsd),
        cmocka_unit_test(test_skew_kl_lambda_endpoints),
        cmocka_unit_test(test_ce_closed_form),
        cmocka_unit_test(test_ce_label_smoothing_matches_pytorch_formula),
        cmocka_unit_test(test_ce_z_loss_adds_weighted_lse_squared),
        cmocka_unit_test(test_kd_combines_ce_at_tau_one_and_scaled_kl),
        cmocka_unit_test(test_gradients_match_finite_differences),
        cmocka_unit_test(test_pytorch_vectors_per_row),
        cmocka_unit_test(test_pytorch_vectors_cpu_context_reductions),
        cmocka_unit_test(test_neginf_column_in_both_rows_is_harmless),
        cmocka_unit_test(test_ce_neginf_column_without_smoothing_is_finite),
        cmocka_unit_test(test_teacher_mass_on_impossible_student_token_is_inf),
        cmocka_unit_test(test_nan_row_gives_nan_loss_and_gradient),
        cmocka_unit_test(test_all_neginf_row_is_invalid),
        cmocka_unit_test(test_batch_mask_and_ignore_index_skip_rows),
        cmocka_unit_test(test_batch_mean_with_every_row_skipped_is_zero),
        cmocka_unit_test(test_batch_nan_row_is_counted_and_isolated),
        cmocka_unit_test(test_batch_first_nonfinite_keeps_first_eight),
        cmocka_unit_test(test_batch_strided_matches_contiguous),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
