/* klcl_compute_fused (fused linear + loss) against a double-precision reference that computes the full
 * logits: every loss, the teacher as hidden states and as logits, gradients for the student's hidden
 * states, head and bias, chunk sizes that do not divide N, ignored and masked rows, every reduction,
 * cl_mem tensors with offsets and strides, accumulation, and every argument error. KLCL_TEST_SMALL=1
 * shrinks the shapes. */
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
static int small_shapes;
static double worst_ratio; /* largest |device - reference| / tolerance over the gradient checks */

static int setup(void **state)
{
    (void)state;
    const char *s = getenv("KLCL_TEST_SMALL");
    small_shapes = s && strcmp(s, "1") == 0;
    ctx = tu_device_context(0);
    /* CLBlast compiles its kernels on first use (seconds on PoCL): once for the whole suite. */
    klcl_status st = klcl_fused_warm(ctx);
    if (st != KLCL_OK) fail_msg("klcl_fused_warm: %s", klcl_last_error(ctx));
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    printf("largest gradient error / tolerance: %.3g\n", worst_ratio);
    klcl_context_destroy(ctx);
    return 0;
}

/* ------------------------------------------------------------------------------------------------------ */
/* Data and the double-precision reference                                                                  */

typedef struct fused_data {
    size_t rows, vocab, ds, dt;
    float *hs, *ws, *bs;      /* student: N x Ds, V x Ds, V */
    float *ht, *wt, *bt;      /* teacher: N x Dt, V x Dt, V */
    float *teacher_logits;    /* N x V: the teacher's logits from the same layer, rounded to fp32 */
    int32_t *labels;
    uint8_t *mask;
    /* reference for one desc */
    double *row_loss, loss;
    size_t used;
    double *dh, *dw, *db;       /* gradients of the reduced loss */
    double *dh_tol, *dw_tol, *db_tol;
} fused_data;

static float *random_floats(size_t n, double sd)
{
    float *x = malloc(n * sizeof(float));
    assert_non_null(x);
    for (size_t i = 0; i < n; i++) x[i] = (float)(sd * tu_normal());
    return x;
}

/* logits = hidden . weight^T + bias in double, rounded to fp32 (what klcl_reference_row takes). */
static float *logits_of(const float *h, const float *w, const float *b, size_t rows, size_t vocab, size_t dim)
{
    float *z = malloc(rows * vocab * sizeof(float));
    assert_non_null(z);
    for (size_t i = 0; i < rows; i++)
        for (size_t v = 0; v < vocab; v++) {
            double acc = b ? b[v] : 0.0;
            for (size_t d = 0; d < dim; d++) acc += (double)h[i * dim + d] * w[v * dim + d];
            z[i * vocab + v] = (float)acc;
        }
    return z;
}

/* Hidden states N(0, 1) and heads N(0, 3/sqrt(D)): logits of standard deviation about 3, like
 * tu_fill_logits; the student's head is 0.6 x the teacher's (projected) plus noise, so that the two agree
 * in part. Labels uniform with two ignored rows; the mask drops one more. */
static void data_make(fused_data *d, size_t rows, size_t vocab, size_t ds, size_t dt)
{
    memset(d, 0, sizeof *d);
    d->rows = rows;
    d->vocab = vocab;
    d->ds = ds;
    d->dt = dt;
    d->hs = random_floats(rows * ds, 1.0);
    d->ht = random_floats(rows * dt, 1.0);
    d->ws = random_floats(vocab * ds, 3.0 / sqrt((double)ds));
    d->wt = random_floats(vocab * dt, 3.0 / sqrt((double)dt));
    d->bs = random_floats(vocab, 0.5);
    d->bt = random_floats(vocab, 0.5);
    d->teacher_logits = logits_of(d->ht, d->wt, d->bt, rows, vocab, dt);
    d->labels = malloc(rows * sizeof(int32_t));
    d->mask = malloc(rows);
    assert_non_null(d->labels);
    assert_non_null(d->mask);
    for (size_t i = 0; i < rows; i++) {
        d->labels[i] = (int32_t)(tu_uniform() * (double)vocab);
        d->mask[i] = 1;
    }
    d->labels[1 % rows] = -100;
    d->labels[(rows * 2 / 3) % rows] = -100;
    d->mask[(rows - 1) % rows] = 0;
    d->row_loss = malloc(rows * sizeof(double));
    d->dh = malloc(rows * ds * sizeof(double));
    d->dw = malloc(vocab * ds * sizeof(double));
    d->db = malloc(vocab * sizeof(double));
    d->dh_tol = malloc(rows * ds * sizeof(double));
    d->dw_tol = malloc(vocab * ds * sizeof(double));
    d->db_tol = malloc(vocab * sizeof(double));
    assert_true(d->row_loss && d->dh && d->dw && d->db && d->dh_tol && d->dw_tol && d->db_tol);
}

static void data_free(fused_data *d)
{
    free(d->hs);
    free(d->ws);
    free(d->bs);
    free(d->ht);
    free(d->wt);
    free(d->bt);
    free(d->teacher_logits);
    free(d->labels);
    free(d->mask);
    free(d->row_loss);
    free(d->dh);
    free(d->dw);
    free(d->db);
    free(d->dh_tol);
    free(d->dw_tol);
    free(d->db_tol);
}

static int row_skipped(const fused_data *d, const klcl_loss_desc *desc, size_t i, int with_labels, int with_mask)
{
    return (with_labels && d->labels[i] == desc->ignore_index) || (with_mask && d->mask[i] == 0);
}

/* The reference: full logits, klcl_reference_row per row for dZ, then dH = dZ W, dW = dZ^T H,
 * db = colsum dZ, all in double.
 *
 * Tolerances of the gradients. Each entry is a sum over K products a_k b_k (K = V for dH, N for dW and db).
 * The device's dZ may differ from the reference by what LOSSES.md allows, 1e-6 + 1e-4 |g| per entry
 * before scale and denominator, so an entry by up to 1e-6 s sum|b_k| + 1e-4 sum|a_k b_k|, s = the
 * gradient's scale over the denominator. The fp32 GEMM adds at most K u sum|a_k b_k| (u = 2^-24;
 * about sqrt(K) u typically, 3e-6 for K = 2000). The device's logits also come from an fp32 GEMM, off by
 * about sqrt(D) u sum_d |h_d w_d| (about 1e-6 here), which moves dZ_v by that times (p_v + q_v)/tau^2, far
 * inside the 1e-4 relative term once summed. Hence 2e-4 sum|a_k b_k| + 2e-6 s sum|b_k|: twice the
 * contract's allowance carried through the sums, which is what the fp32 GEMMs need. */
static void data_reference(fused_data *d, const klcl_loss_desc *desc, int with_teacher, int with_labels,
                           int with_mask, int with_bias)
{
    const size_t N = d->rows, V = d->vocab, D = d->ds;
    float *zs = logits_of(d->hs, d->ws, with_bias ? d->bs : NULL, N, V, D);
    double *dz = calloc(N * V, sizeof(double));
    assert_non_null(dz);
    double sum = 0.0;
    d->used = 0;
    for (size_t i = 0; i < N; i++) {
        d->row_loss[i] = 0.0;
        if (row_skipped(d, desc, i, with_labels, with_mask)) continue;
        d->used++;
        assert_int_equal(klcl_reference_row(desc, V, with_teacher ? d->teacher_logits + i * V : NULL, zs + i * V,
                                            with_labels ? d->labels[i] : 0, &d->row_loss[i], dz + i * V, NULL, NULL),
                         KLCL_OK);
        sum += d->row_loss[i];
    }
    double den = desc->reduction == KLCL_REDUCTION_MEAN ? (d->used ? (double)d->used : 1.0)
                 : desc->reduction == KLCL_REDUCTION_BATCHMEAN ? (double)N
                                                               : 1.0;
    d->loss = desc->reduction == KLCL_REDUCTION_MEAN && d->used == 0 ? 0.0 : sum / den;
    for (size_t k = 0; k < N * V; k++) dz[k] /= den;
    const double s = fmax(1.0, fabs(desc->scale)) / den;
    for (size_t i = 0; i < N; i++)
        for (size_t c = 0; c < D; c++) {
            double acc = 0.0, mag = 0.0, other = 0.0;
            for (size_t v = 0; v < V; v++) {
                acc += dz[i * V + v] * d->ws[v * D + c];
                mag += fabs(dz[i * V + v] * d->ws[v * D + c]);
                other += fabs(d->ws[v * D + c]);
            }
            d->dh[i * D + c] = acc;
            /* skipped rows: dZ is exactly 0, so dH is exactly 0 */
            d->dh_tol[i * D + c] = row_skipped(d, desc, i, with_labels, with_mask) ? 0.0 : 2e-4 * mag + 2e-6 * s * other;
        }
    for (size_t v = 0; v < V; v++) {
        double acc_b = 0.0, mag_b = 0.0;
        for (size_t i = 0; i < N; i++) {
            acc_b += dz[i * V + v];
            mag_b += fabs(dz[i * V + v]);
        }
        d->db[v] = acc_b;
        d->db_tol[v] = 2e-4 * mag_b + 2e-6 * s * (double)d->used;
        for (size_t c = 0; c < D; c++) {
            double acc = 0.0, mag = 0.0, other = 0.0;
            for (size_t i = 0; i < N; i++) {
                acc += dz[i * V + v] * d->hs[i * D + c];
                mag += fabs(dz[i * V + v] * d->hs[i * D + c]);
                if (!row_skipped(d, desc, i, with_labels, with_mask)) other += fabs(d->hs[i * D + c]);
            }
            d->dw[v * D + c] = acc;
            d->dw_tol[v * D + c] = 2e-4 * mag + 2e-6 * s * other;
        }
    }
    free(zs);
    free(dz);
}

static void check_grad(const char *what, const char *name, const float *dev, const double *ref, const double *tol,
                       size_t count, size_t width)
{
    for (size_t k = 0; k < count; k++) {
        double err = fabs((double)dev[k] - ref[k]);
        if (!(err <= tol[k]))
            fail_msg("%s: %s[%zu][%zu] = %.9g, reference %.9g, tolerance %.3g", what, name, k / width, k % width,
                     (double)dev[k], ref[k], tol[k]);
        if (tol[k] > 0 && err / tol[k] > worst_ratio) worst_ratio = err / tol[k];
    }
}

/* ------------------------------------------------------------------------------------------------------ */
/* One fused call on host tensors, checked against the reference                                           */

typedef struct run_opts {
    int teacher_hidden; /* 1: teacher as hidden states + head; 0: as logits; -1: no teacher (ce) */
    int labels, mask, bias;
    size_t chunk;
} run_opts;

static klcl_fused_batch host_batch(fused_data *d, const run_opts *o, float *dh, float *dw, float *db, float *rl)
{
    klcl_fused_batch b = KLCL_FUSED_BATCH_INIT;
    b.rows = d->rows;
    b.student.dim = d->ds;
    b.student.vocab = d->vocab;
    b.student.hidden = klcl_host_tensor(d->hs, 0);
    b.student.weight = klcl_host_tensor(d->ws, 0);
    if (o->bias) b.student.bias = klcl_host_tensor(d->bs, 0);
    if (o->teacher_hidden == 1) {
        b.teacher.dim = d->dt;
        b.teacher.vocab = d->vocab;
        b.teacher.hidden = klcl_host_tensor(d->ht, 0);
        b.teacher.weight = klcl_host_tensor(d->wt, 0);
        b.teacher.bias = klcl_host_tensor(d->bt, 0);
    } else if (o->teacher_hidden == 0) {
        b.teacher_logits = klcl_host_tensor(d->teacher_logits, 0);
    }
    if (o->labels) b.labels = klcl_host_tensor(d->labels, 0);
    if (o->mask) b.mask = klcl_host_tensor(d->mask, 0);
    b.grad_hidden = klcl_host_tensor(dh, 0);
    b.grad_weight = klcl_host_tensor(dw, 0);
    b.grad_bias = klcl_host_tensor(db, 0);
    b.row_loss = klcl_host_tensor(rl, 0);
    return b;
}

static void run_and_check(fused_data *d, const klcl_loss_desc *desc, const run_opts *o, const char *what)
{
    data_reference(d, desc, o->teacher_hidden >= 0, o->labels, o->mask, o->bias);
    float *dh = malloc(d->rows * d->ds * sizeof(float)), *dw = malloc(d->vocab * d->ds * sizeof(float));
    float *db = malloc(d->vocab * sizeof(float)), *rl = malloc(d->rows * sizeof(float));
    assert_true(dh && dw && db && rl);
    /* NaN everywhere first: every entry must be written */
    for (size_t k = 0; k < d->rows * d->ds; k++) dh[k] = NAN;
    for (size_t k = 0; k < d->vocab * d->ds; k++) dw[k] = NAN;
    for (size_t k = 0; k < d->vocab; k++) db[k] = NAN;
    klcl_fused_batch b = host_batch(d, o, dh, dw, db, rl);
    klcl_fused_options opt = KLCL_FUSED_OPTIONS_INIT;
    opt.chunk_rows = o->chunk;
    klcl_result r;
    klcl_fused_info info;
    klcl_status st = klcl_compute_fused(ctx, desc, &b, &opt, &r, &info);
    if (st != KLCL_OK) fail_msg("%s: %s: %s", what, klcl_status_string(st), klcl_last_error(ctx));
    if (o->chunk) {
        assert_int_equal(info.chunk_rows, o->chunk < d->rows ? o->chunk : d->rows);
        assert_int_equal(info.chunks, (d->rows + info.chunk_rows - 1) / info.chunk_rows);
    }
    assert_true(info.device_bytes >= info.chunk_rows * d->vocab * sizeof(float));
    for (size_t i = 0; i < d->rows; i++)
        if (!tu_loss_close(rl[i], d->row_loss[i]))
            fail_msg("%s: row %zu loss %.9g, reference %.9g", what, i, (double)rl[i], d->row_loss[i]);
    if (!tu_loss_close(r.loss, d->loss)) fail_msg("%s: loss %.9g, reference %.9g", what, r.loss, d->loss);
    assert_int_equal(r.rows_used, d->used);
    assert_int_equal(r.rows_skipped, d->rows - d->used);
    assert_int_equal(r.rows_nonfinite, 0);
    check_grad(what, "grad_hidden", dh, d->dh, d->dh_tol, d->rows * d->ds, d->ds);
    check_grad(what, "grad_weight", dw, d->dw, d->dw_tol, d->vocab * d->ds, d->ds);
    check_grad(what, "grad_bias", db, d->db, d->db_tol, d->vocab, d->vocab);
    free(dh);
    free(dw);
    free(db);
    free(rl);
}

static klcl_loss_desc desc_for(klcl_loss loss, klcl_reduction reduction)
{
    klcl_loss_desc desc;
    klcl_loss_desc_init(&desc, loss);
    desc.reduction = reduction;
    desc.tau = 1.5f;
    desc.scale = 2.25f;
    desc.beta = 0.3f;
    desc.alpha = 0.4f;
    if (loss == KLCL_LOSS_CE) {
        desc.scale = 1.0f;
        desc.label_smoothing = 0.1f;
        desc.z_loss = 1e-3f;
        desc.tau = 1.0f;
    }
    return desc;
}

static void shape(size_t *rows, size_t *vocab, size_t *ds, size_t *dt)
{
    *rows = small_shapes ? 13 : 45;
    *vocab = small_shapes ? 67 : 301;
    *ds = small_shapes ? 8 : 24;
    *dt = small_shapes ? 12 : 40;
}

/* ------------------------------------------------------------------------------------------------------ */
/* Tests                                                                                                    */

/* Every loss with the teacher as hidden states and as logits; chunks of 7 rows (not dividing N); labels
 * with ignored rows and a mask; the reduction changes with the loss so that each one is covered. */
static void test_every_loss(void **state)
{
    (void)state;
    size_t N, V, Ds, Dt;
    shape(&N, &V, &Ds, &Dt);
    tu_seed(11);
    fused_data d;
    data_make(&d, N, V, Ds, Dt);
    for (int loss = 0; loss < KLCL_LOSS_COUNT; loss++)
        for (int teacher_hidden = 0; teacher_hidden <= 1; teacher_hidden++) {
            klcl_reduction red = (klcl_reduction)((loss + teacher_hidden) % 4);
            klcl_loss_desc desc = desc_for((klcl_loss)loss, red);
            run_opts o = {teacher_hidden, 1, 1, 1, 7};
            char what[96];
            snprintf(what, sizeof what, "%s %s, teacher as %s", klcl_loss_name(desc.loss),
                     klcl_reduction_name(red), teacher_hidden ? "hidden states" : "logits");
            run_and_check(&d, &desc, &o, what);
        }
    data_free(&d);
}

/* Every reduction, chunk sizes from 1 row to more than N, with and without a bias. */
static void test_reductions_and_chunks(void **state)
{
    (void)state;
    size_t N, V, Ds, Dt;
    shape(&N, &V, &Ds, &Dt);
    tu_seed(12);
    fused_data d;
    data_make(&d, N, V, Ds, Dt);
    const size_t chunks[] = {1, 4, N - 1, N, N + 5};
    for (int red = 0; red < 4; red++)
        for (size_t c = 0; c < sizeof chunks / sizeof chunks[0]; c++) {
            klcl_loss_desc desc = desc_for(KLCL_LOSS_KL, (klcl_reduction)red);
            run_opts o = {1, 1, 1, (int)(c % 2), chunks[c]};
            char what[96];
            snprintf(what, sizeof what, "kl %s, chunk %zu%s", klcl_reduction_name(desc.reduction), chunks[c],
                     o.bias ? ", bias" : "");
            run_and_check(&d, &desc, &o, what);
        }
    data_free(&d);
}

/* ce without any teacher; kd without a mask; jsd without labels. */
static void test_optional_inputs(void **state)
{
    (void)state;
    size_t N, V, Ds, Dt;
    shape(&N, &V, &Ds, &Dt);
    tu_seed(13);
    fused_data d;
    data_make(&d, N, V, Ds, Dt);
    klcl_loss_desc desc = desc_for(KLCL_LOSS_CE, KLCL_REDUCTION_MEAN);
    run_opts o = {-1, 1, 1, 1, 5};
    run_and_check(&d, &desc, &o, "ce without teacher");
    desc = desc_for(KLCL_LOSS_KD, KLCL_REDUCTION_MEAN);
    o = (run_opts){1, 1, 0, 1, 6};
    run_and_check(&d, &desc, &o, "kd without mask");
    desc = desc_for(KLCL_LOSS_JSD, KLCL_REDUCTION_BATCHMEAN);
    o = (run_opts){0, 0, 0, 0, 9};
    run_and_check(&d, &desc, &o, "jsd without labels");
    data_free(&d);
}

/* The largest shape of the suite (CLBlast's indirect GEMM kernels run here), automatic chunk size. */
static void test_larger_shape(void **state)
{
    (void)state;
    tu_seed(14);
    fused_data d;
    if (small_shapes) data_make(&d, 40, 500, 32, 16);
    else data_make(&d, 97, 2000, 64, 48);
    klcl_loss_desc desc = desc_for(KLCL_LOSS_KL, KLCL_REDUCTION_BATCHMEAN);
    run_opts o = {1, 1, 1, 1, 32};
    run_and_check(&d, &desc, &o, "kl, larger shape");
    desc = desc_for(KLCL_LOSS_CE, KLCL_REDUCTION_MEAN);
    o = (run_opts){0, 1, 0, 1, 0};
    run_and_check(&d, &desc, &o, "ce, larger shape, automatic chunk");
    data_free(&d);
}

/* Metrics and counts are what one klcl_compute over the full logits reports. */
static void test_result_matches_unfused(void **state)
{
    (void)state;
    size_t N, V, Ds, Dt;
    shape(&N, &V, &Ds, &Dt);
    tu_seed(15);
    fused_data d;
    data_make(&d, N, V, Ds, Dt);
    float *zs = logits_of(d.hs, d.ws, d.bs, N, V, Ds);
    klcl_loss_desc desc = desc_for(KLCL_LOSS_KD, KLCL_REDUCTION_MEAN);
    klcl_batch full = KLCL_BATCH_INIT;
    full.rows = N;
    full.vocab = V;
    full.teacher = klcl_host_tensor(d.teacher_logits, 0);
    full.student = klcl_host_tensor(zs, 0);
    full.labels = klcl_host_tensor(d.labels, 0);
    full.mask = klcl_host_tensor(d.mask, 0);
    klcl_result ref;
    assert_int_equal(klcl_compute(ctx, &desc, &full, &ref), KLCL_OK);
    run_opts o = {0, 1, 1, 1, 4};
    klcl_fused_batch b = host_batch(&d, &o, NULL, NULL, NULL, NULL);
    klcl_fused_options opt = {4, 0};
    klcl_result r;
    assert_int_equal(klcl_compute_fused(ctx, &desc, &b, &opt, &r, NULL), KLCL_OK);
    assert_true(tu_loss_close(r.loss, ref.loss));
    assert_int_equal(r.rows_used, ref.rows_used);
    assert_int_equal(r.rows_skipped, ref.rows_skipped);
    assert_int_equal(r.rows_with_teacher, ref.rows_with_teacher);
    assert_true(fabs(r.teacher_entropy - ref.teacher_entropy) <= 1e-5 * fmax(1.0, ref.teacher_entropy));
    assert_true(fabs(r.student_entropy - ref.student_entropy) <= 1e-5 * fmax(1.0, ref.student_entropy));
    /* argmax of fp32-GEMM logits may flip a near tie against the rounded reference logits: one row at most */
    assert_true(fabs(r.top1_agreement - ref.top1_agreement) <= 1.0 / (double)ref.rows_used + 1e-12);
    assert_true(fabs(r.accuracy - ref.accuracy) <= 1.0 / (double)ref.rows_used + 1e-12);
    free(zs);
    data_free(&d);
}

/* Reduction none: per-row values in row_loss, result.loss their sum, and the loss alone (no gradients). */
static void test_loss_only_and_none(void **state)
{
    (void)state;
    size_t N, V, Ds, Dt;
    shape(&N, &V, &Ds, &Dt);
    tu_seed(16);
    fused_data d;
    data_make(&d, N, V, Ds, Dt);
    klcl_loss_desc desc = desc_for(KLCL_LOSS_RKL, KLCL_REDUCTION_NONE);
    data_reference(&d, &desc, 1, 1, 1, 1);
    float *rl = malloc(N * sizeof(float));
    assert_non_null(rl);
    run_opts o = {1, 1, 1, 1, 10};
    klcl_fused_batch b = host_batch(&d, &o, NULL, NULL, NULL, rl);
    klcl_fused_options opt = {10, 0};
    klcl_result r;
    assert_int_equal(klcl_compute_fused(ctx, &desc, &b, &opt, &r, NULL), KLCL_OK);
    double sum = 0.0;
    for (size_t i = 0; i < N; i++) {
        sum += d.row_loss[i];
        if (!tu_loss_close(rl[i], d.row_loss[i])) fail_msg("row %zu: %.9g, reference %.9g", i, rl[i], d.row_loss[i]);
    }
    assert_true(tu_loss_close(r.loss, sum));
    free(rl);
    data_free(&d);
}

/* cl_mem tensors with byte offsets and padded row strides, for inputs and outputs; accumulation. */
static cl_mem mem_matrix(const float *src, size_t rows, size_t width, size_t stride, size_t offset_floats)
{
    cl_int err;
    size_t count = offset_floats + rows * stride;
    float *tmp = malloc(count * sizeof(float));
    assert_non_null(tmp);
    for (size_t k = 0; k < count; k++) tmp[k] = -12345.0f; /* padding the call must leave alone */
    if (src)
        for (size_t i = 0; i < rows; i++) memcpy(tmp + offset_floats + i * stride, src + i * width, width * sizeof(float));
    cl_mem m = clCreateBuffer(klcl_context_cl_context(ctx), CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR,
                              count * sizeof(float), tmp, &err);
    assert_int_equal(err, CL_SUCCESS);
    free(tmp);
    return m;
}

static float *read_matrix(cl_mem m, size_t rows, size_t width, size_t stride, size_t offset_floats, int check_pad)
{
    size_t count = offset_floats + rows * stride;
    float *tmp = malloc(count * sizeof(float)), *out = malloc(rows * width * sizeof(float));
    assert_true(tmp && out);
    assert_int_equal(clEnqueueReadBuffer(klcl_context_cl_queue(ctx), m, CL_TRUE, 0, count * sizeof(float), tmp, 0,
                                         NULL, NULL),
                     CL_SUCCESS);
    for (size_t i = 0; i < rows; i++) {
        memcpy(out + i * width, tmp + offset_floats + i * stride, width * sizeof(float));
        if (check_pad)
            for (size_t c = width; c < stride; c++) assert_true(tmp[offset_floats + i * stride + c] == -12345.0f);
    }
    if (check_pad)
        for (size_t k = 0; k < offset_floats; k++) assert_true(tmp[k] == -12345.0f);
    free(tmp);
    return out;
}

static void test_mem_tensors(void **state)
{
    (void)state;
    size_t N, V, Ds, Dt;
    shape(&N, &V, &Ds, &Dt);
    tu_seed(17);
    fused_data d;
    data_make(&d, N, V, Ds, Dt);
    klcl_loss_desc desc = desc_for(KLCL_LOSS_SKL, KLCL_REDUCTION_MEAN);
    data_reference(&d, &desc, 1, 1, 1, 1);
    const size_t off = 4, pad = 3;
    cl_int err;
    cl_mem hs = mem_matrix(d.hs, N, Ds, Ds + pad, off), ws = mem_matrix(d.ws, V, Ds, Ds + pad, off);
    cl_mem bs = mem_matrix(d.bs, 1, V, V, off), ht = mem_matrix(d.ht, N, Dt, Dt, 0);
    cl_mem wt = mem_matrix(d.wt, V, Dt, Dt + 1, 0), bt = mem_matrix(d.bt, 1, V, V, 0);
    cl_mem dh = mem_matrix(NULL, N, Ds, Ds + pad, off), dw = mem_matrix(NULL, V, Ds, Ds + pad, off);
    cl_mem db = mem_matrix(NULL, 1, V, V, off);
    cl_mem labels = clCreateBuffer(klcl_context_cl_context(ctx), CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR,
                                   N * sizeof(int32_t), d.labels, &err);
    assert_int_equal(err, CL_SUCCESS);
    cl_mem mask = clCreateBuffer(klcl_context_cl_context(ctx), CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, N, d.mask, &err);
    assert_int_equal(err, CL_SUCCESS);

    klcl_fused_batch b = KLCL_FUSED_BATCH_INIT;
    b.rows = N;
    b.student = (klcl_linear){Ds, V, klcl_mem_tensor(hs, off * 4, Ds + pad), klcl_mem_tensor(ws, off * 4, Ds + pad),
                              klcl_mem_tensor(bs, off * 4, 0)};
    b.teacher = (klcl_linear){Dt, V, klcl_mem_tensor(ht, 0, 0), klcl_mem_tensor(wt, 0, Dt + 1), klcl_mem_tensor(bt, 0, 0)};
    b.labels = klcl_mem_tensor(labels, 0, 0);
    b.mask = klcl_mem_tensor(mask, 0, 0);
    b.grad_hidden = klcl_mem_tensor(dh, off * 4, Ds + pad);
    b.grad_weight = klcl_mem_tensor(dw, off * 4, Ds + pad);
    b.grad_bias = klcl_mem_tensor(db, off * 4, 0);
    klcl_fused_options opt = KLCL_FUSED_OPTIONS_INIT; /* automatic: the whole batch fits in one chunk */
    klcl_result r;
    klcl_fused_info info;
    klcl_status st = klcl_compute_fused(ctx, &desc, &b, &opt, &r, &info);
    if (st != KLCL_OK) fail_msg("%s", klcl_last_error(ctx));
    assert_int_equal(info.chunk_rows, N);
    assert_int_equal(info.chunks, 1);
    assert_true(tu_loss_close(r.loss, d.loss));
    float *g = read_matrix(dh, N, Ds, Ds + pad, off, 1);
    check_grad("cl_mem", "grad_hidden", g, d.dh, d.dh_tol, N * Ds, Ds);
    free(g);
    g = read_matrix(db, 1, V, V, off, 1);
    check_grad("cl_mem", "grad_bias", g, d.db, d.db_tol, V, V);
    free(g);

    /* Accumulation: a second call with chunks of 6 adds the same gradients into dW and db. */
    opt.chunk_rows = 6;
    opt.accumulate = 1;
    st = klcl_compute_fused(ctx, &desc, &b, &opt, &r, &info);
    if (st != KLCL_OK) fail_msg("%s", klcl_last_error(ctx));
    assert_int_equal(info.chunks, (N + 5) / 6);
    for (size_t k = 0; k < V * Ds; k++) {
        d.dw[k] *= 2.0;
        d.dw_tol[k] *= 2.0;
    }
    for (size_t k = 0; k < V; k++) {
        d.db[k] *= 2.0;
        d.db_tol[k] *= 2.0;
    }
    g = read_matrix(dw, V, Ds, Ds + pad, off, 1);
    check_grad("cl_mem, accumulated", "grad_weight", g, d.dw, d.dw_tol, V * Ds, Ds);
    free(g);
    g = read_matrix(db, 1, V, V, off, 1);
    check_grad("cl_mem, accumulated", "grad_bias", g, d.db, d.db_tol, V, V);
    free(g);
    g = read_matrix(dh, N, Ds, Ds + pad, off, 1); /* overwritten, not accumulated */
    check_grad("cl_mem, second call", "grad_hidden", g, d.dh, d.dh_tol, N * Ds, Ds);
    free(g);

    cl_mem all[] = {hs, ws, bs, ht, wt, bt, dh, dw, db, labels, mask};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) clReleaseMemObject(all[i]);
    data_free(&d);
}

/* Host accumulation, and host hidden states with a padded stride. */
static void test_host_accumulate_and_stride(void **state)
{
    (void)state;
    size_t N, V, Ds, Dt;
    shape(&N, &V, &Ds, &Dt);
    tu_seed(18);
    fused_data d;
    data_make(&d, N, V, Ds, Dt);
    klcl_loss_desc desc = desc_for(KLCL_LOSS_SOFT_CE, KLCL_REDUCTION_SUM);
    data_reference(&d, &desc, 1, 1, 1, 1);
    const size_t stride = Ds + 5;
    float *hs = malloc(N * stride * sizeof(float)), *dh = malloc(N * stride * sizeof(float));
    float *dw = malloc(V * Ds * sizeof(float)), *db = malloc(V * sizeof(float));
    assert_true(hs && dh && dw && db);
    for (size_t i = 0; i < N; i++)
        for (size_t c = 0; c < stride; c++) {
            hs[i * stride + c] = c < Ds ? d.hs[i * Ds + c] : NAN;
            dh[i * stride + c] = -7.0f;
        }
    for (size_t k = 0; k < V * Ds; k++) dw[k] = (float)d.dw[k]; /* a previous micro-batch's gradient */
    for (size_t k = 0; k < V; k++) db[k] = (float)d.db[k];
    run_opts o = {0, 1, 1, 1, 8};
    klcl_fused_batch b = host_batch(&d, &o, NULL, dw, db, NULL);
    b.student.hidden = klcl_host_tensor(hs, stride);
    b.grad_hidden = klcl_host_tensor(dh, stride);
    klcl_fused_options opt = {8, 1};
    klcl_result r;
    assert_int_equal(klcl_compute_fused(ctx, &desc, &b, &opt, &r, NULL), KLCL_OK);
    assert_true(tu_loss_close(r.loss, d.loss));
    float *g = malloc(N * Ds * sizeof(float));
    assert_non_null(g);
    for (size_t i = 0; i < N; i++)
        for (size_t c = 0; c < stride; c++) {
            if (c < Ds) g[i * Ds + c] = dh[i * stride + c];
            else assert_true(dh[i * stride + c] == -7.0f);
        }
    check_grad("host stride", "grad_hidden", g, d.dh, d.dh_tol, N * Ds, Ds);
    for (size_t k = 0; k < V * Ds; k++) {
        d.dw[k] *= 2.0;
        d.dw_tol[k] = 2.0 * d.dw_tol[k] + 1e-7 * fabs(d.dw[k]); /* plus the fp32 rounding of the start value */
    }
    for (size_t k = 0; k < V; k++) {
        d.db[k] *= 2.0;
        d.db_tol[k] = 2.0 * d.db_tol[k] + 1e-7 * fabs(d.db[k]);
    }
    check_grad("host accumulate", "grad_weight", dw, d.dw, d.dw_tol, V * Ds, Ds);
    check_grad("host accumulate", "grad_bias", db, d.db, d.db_tol, V, V);
    free(g);
    free(hs);
    free(dh);
    free(dw);
    free(db);
    data_free(&d);
}

/* ------------------------------------------------------------------------------------------------------ */
/* Argument errors: status, and a message naming the argument                                              */

static void expect(klcl_status got, klcl_status want, const char *needle)
{
    if (got != want)
        fail_msg("status %s, expected %s (%s)", klcl_status_string(got), klcl_status_string(want), klcl_last_error(ctx));
    if (needle && !strstr(klcl_last_error(ctx), needle))
        fail_msg("message \"%s\" does not name \"%s\"", klcl_last_error(ctx), needle);
}

static void test_errors(void **state)
{
    (void)state;
    const size_t N = 6, V = 10, D = 4;
    tu_seed(19);
    fused_data d;
    data_make(&d, N, V, D, D);
    klcl_loss_desc desc = desc_for(KLCL_LOSS_KL, KLCL_REDUCTION_MEAN);
    run_opts o = {1, 1, 1, 1, 0};
    const klcl_fused_batch good = host_batch(&d, &o, NULL, NULL, NULL, NULL);
    klcl_fused_batch b = good;
    klcl_fused_options opt = KLCL_FUSED_OPTIONS_INIT;

    assert_int_equal(klcl_compute_fused(NULL, &desc, &b, NULL, NULL, NULL), KLCL_ERR_NULL_POINTER);
    assert_int_equal(klcl_fused_warm(NULL), KLCL_ERR_NULL_POINTER);
    expect(klcl_compute_fused(ctx, NULL, &b, NULL, NULL, NULL), KLCL_ERR_NULL_POINTER, "desc");
    expect(klcl_compute_fused(ctx, &desc, NULL, NULL, NULL, NULL), KLCL_ERR_NULL_POINTER, "batch");
    expect(klcl_compute_fused(ctx, &desc, &b, NULL, NULL, NULL), KLCL_OK, NULL);
    assert_string_equal(klcl_last_error(ctx), "");

    klcl_loss_desc bad = desc;
    bad.tau = 0.0f;
    expect(klcl_compute_fused(ctx, &bad, &b, NULL, NULL, NULL), KLCL_ERR_INVALID_VALUE, "tau");
    bad = desc;
    bad.beta = NAN;
    expect(klcl_compute_fused(ctx, &bad, &b, NULL, NULL, NULL), KLCL_ERR_NONFINITE_ARG, "beta");

    b.rows = 0;
    expect(klcl_compute_fused(ctx, &desc, &b, NULL, NULL, NULL), KLCL_ERR_INVALID_SHAPE, "batch->rows");
    b = good;
    b.student.hidden.host = NULL;
    expect(klcl_compute_fused(ctx, &desc, &b, NULL, NULL, NULL), KLCL_ERR_NULL_POINTER, "batch->student.hidden");
    b = good;
    b.student.weight.host = NULL;
    expect(klcl_compute_fused(ctx, &desc, &b, NULL, NULL, NULL), KLCL_ERR_NULL_POINTER, "batch->student.weight");
    b = good;
    b.student.hidden.dtype = (klcl_dtype)9;
    expect(klcl_compute_fused(ctx, &desc, &b, NULL, NULL, NULL), KLCL_ERR_INVALID_VALUE, "batch->student.hidden.dtype");
    b = good;
    b.grad_bias = klcl_host_tensor(d.bs, 0);
    b.grad_bias.dtype = (klcl_dtype)-1;
    expect(klcl_compute_fused(ctx, &desc, &b, NULL, NULL, NULL), KLCL_ERR_INVALID_VALUE, "batch->grad_bias.dtype");
    b = good;
    b.labels.dtype = KLCL_DTYPE_F16; /* labels, mask and row_loss have fixed types */
    expect(klcl_compute_fused(ctx, &desc, &b, NULL, NULL, NULL), KLCL_ERR_INVALID_VALUE, "batch->labels.dtype");
    b = good;
    b.student.dim = 0;
    expect(klcl_compute_fused(ctx, &desc, &b, NULL, NULL, NULL), KLCL_ERR_INVALID_SHAPE, "batch->student.dim");
    b = good;
    b.student.vocab = 0;
    expect(klcl_compute_fused(ctx, &desc, &b, NULL, NULL, NULL), KLCL_ERR_INVALID_SHAPE, "batch->student.vocab");
    b = good;
    b.student.vocab = (size_t)INT32_MAX + 1;
    expect(klcl_compute_fused(ctx, &desc, &b, NULL, NULL, NULL), KLCL_ERR_INVALID_SHAPE, "batch->student.vocab");
    b = good;
    b.teacher.vocab = V + 1;
    expect(klcl_compute_fused(ctx, &desc, &b, NULL, NULL, NULL), KLCL_ERR_INVALID_SHAPE, "batch->teacher.vocab");
    b = good;
    b.teacher.dim = 0;
    expect(klcl_compute_fused(ctx, &desc, &b, NULL, NULL, NULL), KLCL_ERR_INVALID_SHAPE, "batch->teacher.dim");
    b = good;
    b.teacher.weight.host = NULL;
    expect(klcl_compute_fused(ctx, &desc, &b, NULL, NULL, NULL), KLCL_ERR_NULL_POINTER, "batch->teacher.weight");
    b = good;
    b.teacher_logits = klcl_host_tensor(d.teacher_logits, 0);
    expect(klcl_compute_fused(ctx, &desc, &b, NULL, NULL, NULL), KLCL_ERR_INVALID_VALUE, "batch->teacher_logits");
    b = good;
    memset(&b.teacher, 0, sizeof b.teacher);
    expect(klcl_compute_fused(ctx, &desc, &b, NULL, NULL, NULL), KLCL_ERR_NULL_POINTER, "teacher");
    klcl_loss_desc ce = desc_for(KLCL_LOSS_CE, KLCL_REDUCTION_MEAN);
    b = good;
    b.labels.host = NULL;
    expect(klcl_compute_fused(ctx, &ce, &b, NULL, NULL, NULL), KLCL_ERR_NULL_POINTER, "batch->labels");
    b = good;
    d.labels[4] = (int32_t)V;
    expect(klcl_compute_fused(ctx, &desc, &b, NULL, NULL, NULL), KLCL_ERR_LABEL_OUT_OF_RANGE, "batch->labels[4]");
    d.labels[4] = -3;
    expect(klcl_compute_fused(ctx, &ce, &b, NULL, NULL, NULL), KLCL_ERR_LABEL_OUT_OF_RANGE, "batch->labels[4]");
    d.labels[4] = 0;
    b = good;
    b.student.hidden.stride = D - 1;
    expect(klcl_compute_fused(ctx, &desc, &b, NULL, NULL, NULL), KLCL_ERR_INVALID_SHAPE, "batch->student.hidden.stride");
    b = good;
    b.teacher.weight.stride = D - 1;
    expect(klcl_compute_fused(ctx, &desc, &b, NULL, NULL, NULL), KLCL_ERR_INVALID_SHAPE, "batch->teacher.weight.stride");
    b = good;
    b.student.hidden.stride = SIZE_MAX / 2;
    expect(klcl_compute_fused(ctx, &desc, &b, NULL, NULL, NULL), KLCL_ERR_INVALID_SHAPE, "batch->student.hidden");
    b = good;
    float out[64];
    b.grad_weight = klcl_host_tensor(out, 2);
    expect(klcl_compute_fused(ctx, &desc, &b, NULL, NULL, NULL), KLCL_ERR_INVALID_SHAPE, "batch->grad_weight.stride");

    /* cl_mem: too small, misaligned, both host and mem */
    cl_int err;
    cl_mem small = clCreateBuffer(klcl_context_cl_context(ctx), CL_MEM_READ_WRITE, V * D * sizeof(float) - 4, NULL, &err);
    assert_int_equal(err, CL_SUCCESS);
    const float zero = 0.0f; /* read as a head by the call that is valid */
    assert_int_equal(clEnqueueFillBuffer(klcl_context_cl_queue(ctx), small, &zero, sizeof zero, 0,
                                         V * D * sizeof(float) - 4, 0, NULL, NULL),
                     CL_SUCCESS);
    b = good;
    b.student.weight = klcl_mem_tensor(small, 0, 0);
    expect(klcl_compute_fused(ctx, &desc, &b, NULL, NULL, NULL), KLCL_ERR_BUFFER_TOO_SMALL, "batch->student.weight");
    b = good;
    b.grad_bias = klcl_mem_tensor(small, 2, 0);
    expect(klcl_compute_fused(ctx, &desc, &b, NULL, NULL, NULL), KLCL_ERR_MISALIGNED, "batch->grad_bias.offset");
    b = good;
    b.grad_hidden = klcl_mem_tensor(small, 0, 0);
    b.grad_hidden.host = out;
    expect(klcl_compute_fused(ctx, &desc, &b, NULL, NULL, NULL), KLCL_ERR_INVALID_VALUE, "batch->grad_hidden");
    b = good;
    b.student.weight = klcl_mem_tensor(small, 2, 0); /* 2 bytes is aligned for fp16 and bf16 */
    b.student.weight.dtype = KLCL_DTYPE_F16;
    expect(klcl_compute_fused(ctx, &desc, &b, NULL, NULL, NULL), KLCL_OK, NULL);
    b.student.weight.offset = 3;
    expect(klcl_compute_fused(ctx, &desc, &b, NULL, NULL, NULL), KLCL_ERR_MISALIGNED, "batch->student.weight.offset");
    b.student.weight.offset = V * D * sizeof(float) - 4 - V * D * 2 + 2;
    expect(klcl_compute_fused(ctx, &desc, &b, NULL, NULL, NULL), KLCL_ERR_BUFFER_TOO_SMALL, "batch->student.weight");
    b = good;
    b.mask = klcl_mem_tensor(small, V * D * sizeof(float) - 4 - 2, 0);
    expect(klcl_compute_fused(ctx, &desc, &b, NULL, NULL, NULL), KLCL_ERR_BUFFER_TOO_SMALL, "batch->mask");
    clReleaseMemObject(small);

    b = good;
    opt.accumulate = 2;
    expect(klcl_compute_fused(ctx, &desc, &b, &opt, NULL, NULL), KLCL_ERR_INVALID_VALUE, "options->accumulate");

    /* the context stays usable after every error */
    opt.accumulate = 0;
    opt.chunk_rows = 4;
    expect(klcl_compute_fused(ctx, &desc, &b, &opt, NULL, NULL), KLCL_OK, NULL);

    /* the CPU reference does not serve the fused path */
    klcl_context_options co = KLCL_CONTEXT_OPTIONS_INIT;
    co.device = "cpu";
    klcl_context *ref = NULL;
    assert_int_equal(klcl_context_create(&co, &ref), KLCL_OK);
    assert_int_equal(klcl_compute_fused(ref, &desc, &b, NULL, NULL, NULL), KLCL_ERR_UNSUPPORTED);
    assert_non_null(strstr(klcl_last_error(ref), "CPU reference"));
    assert_int_equal(klcl_fused_warm(ref), KLCL_ERR_UNSUPPORTED);
    klcl_context_destroy(ref);
    data_free(&d);
}

int main(void)
{
    if (!klcl_fused_supported()) {
        fprintf(stderr, "klcl was built without CLBlast: this suite needs it\n");
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_loss),
        cmocka_unit_test(test_reductions_and_chunks),
        cmocka_unit_test(test_optional_inputs),
        cmocka_unit_test(test_larger_shape),
        cmocka_unit_test(test_result_matches_unfused),
        cmocka_unit_test(test_loss_only_and_none),
        cmocka_unit_test(test_mem_tensors),
        cmocka_unit_test(test_host_accumulate_and_stride),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
