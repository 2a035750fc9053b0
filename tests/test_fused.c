/* klcl_compute_fused (fused linear + loss) against a double-precision reference that computes the full
 * logits: every loss, the teacher as hidden states and as logits, gradients for the student's hidden
 * states, head and bias, chunk sizes that do not divide N, ignored and masked rows, every reduction,
 * cl_mem tensors with offsets and strides, accumulation, fp16 and bf16 inputs and gradients (the
 * reference on the widened inputs; a half gradient must be the rounding of a value within the fp32
 * tolerance), and every argument error. KLCL_TEST_SMALL=1 shrinks the shapes. */
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
    /* CLBlast compiles its kernels on first use (seconds on PoCL): once for the whole suite. Under a
     * simulator (KLCL_TEST_SMALL) the warm-up's 512 x 512 products would take longer than the suite, and
     * the first call compiles instead. */
    klcl_status st = small_shapes ? KLCL_OK : klcl_fused_warm(ctx);
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

/* The values a gradient entry stored as `dtype` may take: the roundings, to that type, of the values within
 * `tol` of the reference, i.e. [round(ref - tol), round(ref + tol)] (rounding is monotone; the ends are
 * first moved out by an fp32 ulp so that the double-to-fp32 step cannot shrink the interval). That is
 * within tol plus half an ulp of the type, and on its grid; for fp32 it is |dev - ref| <= tol. */
static void allowed_range(klcl_dtype dtype, double ref, double tol, double *lo, double *hi)
{
    *lo = ref - tol;
    *hi = ref + tol;
    if (dtype == KLCL_DTYPE_F32) return;
    float ends[2] = {nextafterf((float)*lo, -INFINITY), nextafterf((float)*hi, INFINITY)};
    uint16_t bits[2];
    assert_int_equal(klcl_convert(ends, KLCL_DTYPE_F32, bits, dtype, 2), KLCL_OK);
    assert_int_equal(klcl_convert(bits, dtype, ends, KLCL_DTYPE_F32, 2), KLCL_OK);
    *lo = ends[0];
    *hi = ends[1];
}

static void check_grad_as(klcl_dtype dtype, const char *what, const char *name, const float *dev, const double *ref,
                          const double *tol, size_t count, size_t width)
{
    for (size_t k = 0; k < count; k++) {
        double lo, hi;
        allowed_range(dtype, ref[k], tol[k], &lo, &hi);
        if (!(dev[k] >= lo && dev[k] <= hi))
            fail_msg("%s: %s[%zu][%zu] = %.9g (%s), reference %.9g, allowed [%.9g, %.9g] (tolerance %.3g)", what,
                     name, k / width, k % width, (double)dev[k], klcl_dtype_name(dtype), ref[k], lo, hi, tol[k]);
        /* fp32 only: a half entry sits on its type's grid, often at an end of its range */
        double err = fabs((double)dev[k] - ref[k]);
        if (dtype == KLCL_DTYPE_F32 && tol[k] > 0 && err / tol[k] > worst_ratio) worst_ratio = err / tol[k];
    }
}

static void check_grad(const char *what, const char *name, const float *dev, const double *ref, const double *tol,
                       size_t count, size_t width)
{
    check_grad_as(KLCL_DTYPE_F32, what, name, dev, ref, tol, count, width);
}

/* ------------------------------------------------------------------------------------------------------ */
/* fp16 and bf16 copies of the inputs                                                                       */

/* x rounded to `dtype` in place, and its bits in that type: the reference then computes on exactly the
 * values the device widens. */
static uint16_t *round_to(float *x, size_t n, klcl_dtype dtype)
{
    uint16_t *bits = malloc(n * sizeof(uint16_t));
    assert_non_null(bits);
    assert_int_equal(klcl_convert(x, KLCL_DTYPE_F32, bits, dtype, n), KLCL_OK);
    assert_int_equal(klcl_convert(bits, dtype, x, KLCL_DTYPE_F32, n), KLCL_OK);
    return bits;
}

/* n elements of `dtype` widened to fp32 (a copy for fp32). */
static float *widened(const void *src, size_t n, klcl_dtype dtype)
{
    float *x = malloc(n * sizeof(float));
    assert_non_null(x);
    assert_int_equal(klcl_convert(src, dtype, x, KLCL_DTYPE_F32, n), KLCL_OK);
    return x;
}

/* Every input of d in one half-precision type. */
typedef struct half_data {
    klcl_dtype dtype;
    uint16_t *hs, *ws, *bs, *ht, *wt, *bt, *teacher_logits;
    float *teacher_wide; /* teacher_logits widened: what the reference reads for half teacher logits */
} half_data;

/* Rounds d's inputs to `dtype` and keeps their bits in h; the teacher's logits are made again from its
 * rounded layer (fp32, what the device's teacher GEMM gives up to its rounding) and rounded apart. */
static void half_make(fused_data *d, klcl_dtype dtype, half_data *h)
{
    h->dtype = dtype;
    h->hs = round_to(d->hs, d->rows * d->ds, dtype);
    h->ws = round_to(d->ws, d->vocab * d->ds, dtype);
    h->bs = round_to(d->bs, d->vocab, dtype);
    h->ht = round_to(d->ht, d->rows * d->dt, dtype);
    h->wt = round_to(d->wt, d->vocab * d->dt, dtype);
    h->bt = round_to(d->bt, d->vocab, dtype);
    free(d->teacher_logits);
    d->teacher_logits = logits_of(d->ht, d->wt, d->bt, d->rows, d->vocab, d->dt);
    h->teacher_wide = malloc(d->rows * d->vocab * sizeof(float));
    assert_non_null(h->teacher_wide);
    memcpy(h->teacher_wide, d->teacher_logits, d->rows * d->vocab * sizeof(float));
    h->teacher_logits = round_to(h->teacher_wide, d->rows * d->vocab, dtype);
}

static void half_free(half_data *h)
{
    uint16_t *all[] = {h->hs, h->ws, h->bs, h->ht, h->wt, h->bt, h->teacher_logits};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) free(all[i]);
    free(h->teacher_wide);
}

/* ------------------------------------------------------------------------------------------------------ */
/* One fused call on host tensors, checked against the reference                                           */

typedef struct run_opts {
    int teacher_hidden; /* 1: teacher as hidden states + head; 0: as logits; -1: no teacher (ce) */
    int labels, mask, bias;
    size_t chunk;
} run_opts;

/* Half precision in a run: which inputs are h's copies, and the type of the gradients. NULL: all fp32. */
typedef struct half_opts {
    const half_data *h;
    int student, teacher; /* the student's layer; the teacher's layer or logits */
    klcl_dtype grad;      /* of grad_hidden, grad_weight and grad_bias */
} half_opts;

static void set_half(klcl_tensor *t, const uint16_t *bits, klcl_dtype dtype)
{
    if (!t->host) return; /* not in this run */
    *t = klcl_host_tensor(bits, t->stride);
    t->dtype = dtype;
}

static klcl_fused_batch host_batch(fused_data *d, const run_opts *o, const half_opts *hp, void *dh, void *dw,
                                   void *db, float *rl)
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
    if (!hp) return b;
    b.grad_hidden.dtype = b.grad_weight.dtype = b.grad_bias.dtype = hp->grad;
    const half_data *h = hp->h;
    if (hp->student) {
        set_half(&b.student.hidden, h->hs, h->dtype);
        set_half(&b.student.weight, h->ws, h->dtype);
        set_half(&b.student.bias, h->bs, h->dtype);
    }
    if (hp->teacher) {
        set_half(&b.teacher.hidden, h->ht, h->dtype);
        set_half(&b.teacher.weight, h->wt, h->dtype);
        set_half(&b.teacher.bias, h->bt, h->dtype);
        set_half(&b.teacher_logits, h->teacher_logits, h->dtype);
    }
    return b;
}

/* An output of n elements of `dtype`, NaN everywhere: every entry must be written. */
static void *nan_output(size_t n, klcl_dtype dtype)
{
    float *x = malloc(n * sizeof(float));
    void *out = malloc(n * klcl_dtype_size(dtype));
    assert_true(x && out);
    for (size_t k = 0; k < n; k++) x[k] = NAN;
    assert_int_equal(klcl_convert(x, KLCL_DTYPE_F32, out, dtype, n), KLCL_OK);
    free(x);
    return out;
}

/* A gradient output of `dtype` widened, checked against the reference, and freed. */
static void check_output(klcl_dtype dtype, const char *what, const char *name, void *dev, const double *ref,
                         const double *tol, size_t count, size_t width)
{
    float *x = widened(dev, count, dtype);
    check_grad_as(dtype, what, name, x, ref, tol, count, width);
    free(x);
    free(dev);
}

static void run_checked(fused_data *d, const klcl_loss_desc *desc, const run_opts *o, const half_opts *hp,
                        const char *what)
{
    float *teacher = d->teacher_logits;
    if (hp && hp->teacher && o->teacher_hidden == 0) d->teacher_logits = hp->h->teacher_wide;
    data_reference(d, desc, o->teacher_hidden >= 0, o->labels, o->mask, o->bias);
    d->teacher_logits = teacher;
    const klcl_dtype g = hp ? hp->grad : KLCL_DTYPE_F32;
    void *dh = nan_output(d->rows * d->ds, g), *dw = nan_output(d->vocab * d->ds, g), *db = nan_output(d->vocab, g);
    float *rl = malloc(d->rows * sizeof(float));
    assert_non_null(rl);
    klcl_fused_batch b = host_batch(d, o, hp, dh, dw, db, rl);
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
    check_output(g, what, "grad_hidden", dh, d->dh, d->dh_tol, d->rows * d->ds, d->ds);
    check_output(g, what, "grad_weight", dw, d->dw, d->dw_tol, d->vocab * d->ds, d->ds);
    check_output(g, what, "grad_bias", db, d->db, d->db_tol, d->vocab, d->vocab);
    free(rl);
}

static void run_and_check(fused_data *d, const klcl_loss_desc *desc, const run_opts *o, const char *what)
{
    run_checked(d, desc, o, NULL, what);
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
    klcl_fused_batch b = host_batch(&d, &o, NULL, NULL, NULL, NULL, NULL);
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
    klcl_fused_batch b = host_batch(&d, &o, NULL, NULL, NULL, NULL, rl);
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

/* cl_mem tensors with byte offsets and padded row strides, for inputs and outputs; accumulation. Offsets and
 * strides are in elements of `dtype`; the padding holds bytes the call must leave alone. */
enum { PAD_BYTE = 0xa5 };

static cl_mem mem_matrix(const void *src, size_t rows, size_t width, size_t stride, size_t offset, klcl_dtype dtype)
{
    cl_int err;
    const size_t elem = klcl_dtype_size(dtype), bytes = (offset + rows * stride) * elem;
    unsigned char *tmp = malloc(bytes);
    assert_non_null(tmp);
    memset(tmp, PAD_BYTE, bytes);
    if (src)
        for (size_t i = 0; i < rows; i++)
            memcpy(tmp + (offset + i * stride) * elem, (const unsigned char *)src + i * width * elem, width * elem);
    cl_mem m = clCreateBuffer(klcl_context_cl_context(ctx), CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, bytes, tmp, &err);
    assert_int_equal(err, CL_SUCCESS);
    free(tmp);
    return m;
}

/* The rows x width matrix widened to fp32, with the padding checked when asked. */
static float *read_matrix(cl_mem m, size_t rows, size_t width, size_t stride, size_t offset, klcl_dtype dtype,
                          int check_pad)
{
    const size_t elem = klcl_dtype_size(dtype), bytes = (offset + rows * stride) * elem;
    unsigned char *tmp = malloc(bytes), *dense = malloc(rows * width * elem);
    assert_true(tmp && dense);
    assert_int_equal(clEnqueueReadBuffer(klcl_context_cl_queue(ctx), m, CL_TRUE, 0, bytes, tmp, 0, NULL, NULL),
                     CL_SUCCESS);
    for (size_t i = 0; i < rows; i++)
        memcpy(dense + i * width * elem, tmp + (offset + i * stride) * elem, width * elem);
    if (check_pad) {
        for (size_t k = 0; k < offset * elem; k++) assert_int_equal(tmp[k], PAD_BYTE);
        for (size_t i = 0; i < rows; i++)
            for (size_t k = (offset + i * stride + width) * elem; k < (offset + (i + 1) * stride) * elem; k++)
                assert_int_equal(tmp[k], PAD_BYTE);
    }
    float *out = widened(dense, rows * width, dtype);
    free(tmp);
    free(dense);
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
    const klcl_dtype f32 = KLCL_DTYPE_F32;
    cl_mem hs = mem_matrix(d.hs, N, Ds, Ds + pad, off, f32), ws = mem_matrix(d.ws, V, Ds, Ds + pad, off, f32);
    cl_mem bs = mem_matrix(d.bs, 1, V, V, off, f32), ht = mem_matrix(d.ht, N, Dt, Dt, 0, f32);
    cl_mem wt = mem_matrix(d.wt, V, Dt, Dt + 1, 0, f32), bt = mem_matrix(d.bt, 1, V, V, 0, f32);
    cl_mem dh = mem_matrix(NULL, N, Ds, Ds + pad, off, f32), dw = mem_matrix(NULL, V, Ds, Ds + pad, off, f32);
    cl_mem db = mem_matrix(NULL, 1, V, V, off, f32);
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
    float *g = read_matrix(dh, N, Ds, Ds + pad, off, f32, 1);
    check_grad("cl_mem", "grad_hidden", g, d.dh, d.dh_tol, N * Ds, Ds);
    free(g);
    g = read_matrix(db, 1, V, V, off, f32, 1);
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
    g = read_matrix(dw, V, Ds, Ds + pad, off, f32, 1);
    check_grad("cl_mem, accumulated", "grad_weight", g, d.dw, d.dw_tol, V * Ds, Ds);
    free(g);
    g = read_matrix(db, 1, V, V, off, f32, 1);
    check_grad("cl_mem, accumulated", "grad_bias", g, d.db, d.db_tol, V, V);
    free(g);
    g = read_matrix(dh, N, Ds, Ds + pad, off, f32, 1); /* overwritten, not accumulated */
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
    klcl_fused_batch b = host_batch(&d, &o, NULL, NULL, dw, db, NULL);
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
/* fp16 and bf16 tensors                                                                                    */

/* Odd widths: the conversions' element-by-element tails run, and half-precision rows start at offsets that
 * are not multiples of 16 bytes. */
static void half_shape(size_t *rows, size_t *vocab, size_t *ds, size_t *dt)
{
    *rows = small_shapes ? 13 : 45;
    *vocab = small_shapes ? 67 : 301;
    *ds = small_shapes ? 11 : 21;
    *dt = small_shapes ? 9 : 19;
}

/* Each case against the reference on the widened inputs, with the fp32 tolerances: the student's layer,
 * the teacher's layer or logits, and the gradients each in half precision or fp32, for kl, ce and jsd
 * (a centred gradient), every reduction but none, and chunks that do not divide N. */
static void test_half_precision(void **state)
{
    (void)state;
    size_t N, V, Ds, Dt;
    half_shape(&N, &V, &Ds, &Dt);
    const klcl_dtype types[] = {KLCL_DTYPE_F16, KLCL_DTYPE_BF16}, f32 = KLCL_DTYPE_F32;
    for (size_t t = 0; t < 2; t++) {
        const klcl_dtype dt = types[t];
        tu_seed(20 + t);
        fused_data d;
        data_make(&d, N, V, Ds, Dt);
        half_data h;
        half_make(&d, dt, &h);
        const struct {
            klcl_loss loss;
            int teacher_hidden;
            half_opts hp;
            size_t chunk;
        } cases[] = {
            {KLCL_LOSS_KL, 1, {&h, 1, 1, f32}, 7},
            {KLCL_LOSS_KL, 0, {&h, 1, 1, dt}, 10},
            {KLCL_LOSS_CE, -1, {&h, 1, 0, dt}, 4},
            {KLCL_LOSS_JSD, 1, {&h, 0, 1, dt}, 11}, /* an fp32 student holding the rounded values */
            {KLCL_LOSS_JSD, 0, {&h, 1, 0, f32}, 6},
        };
        for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
            const half_opts *hp = &cases[c].hp;
            klcl_loss_desc desc = desc_for(cases[c].loss, (klcl_reduction)(1 + c % 3));
            run_opts o = {cases[c].teacher_hidden, 1, 1, 1, cases[c].chunk};
            char what[160];
            snprintf(what, sizeof what, "%s %s: student %s, teacher %s %s, gradients %s, chunk %zu",
                     klcl_loss_name(desc.loss), klcl_reduction_name(desc.reduction),
                     klcl_dtype_name(hp->student ? dt : f32), o.teacher_hidden ? "layer" : "logits",
                     klcl_dtype_name(hp->teacher ? dt : f32), klcl_dtype_name(hp->grad), o.chunk);
            run_checked(&d, &desc, &o, hp, what);
        }
        half_free(&h);
        data_free(&d);
    }
}

/* Rounds the reference's gradient (a previous micro-batch's) to `dtype`: the start value of an accumulating
 * call, returned as its bits; the reference becomes what the call must give, start + gradient, with the
 * same tolerance (the start is exact in fp32). */
static uint16_t *accumulate_start(double *ref, size_t n, klcl_dtype dtype)
{
    float *start = malloc(n * sizeof(float));
    assert_non_null(start);
    for (size_t k = 0; k < n; k++) start[k] = (float)ref[k];
    uint16_t *bits = round_to(start, n, dtype);
    for (size_t k = 0; k < n; k++) ref[k] += start[k];
    free(start);
    return bits;
}

/* Host tensors: fp16 hidden states with a padded odd stride (NaN in the padding), a bf16 head; fp16
 * grad_hidden with the same stride (padding left alone); bf16 grad_weight and fp16 grad_bias accumulated
 * onto a previous gradient in fp32 over chunks that do not divide N and rounded once. */
static void test_half_host_accumulate_and_stride(void **state)
{
    (void)state;
    size_t N, V, Ds, Dt;
    half_shape(&N, &V, &Ds, &Dt);
    tu_seed(22);
    fused_data d;
    data_make(&d, N, V, Ds, Dt);
    const klcl_dtype f16 = KLCL_DTYPE_F16, bf16 = KLCL_DTYPE_BF16;
    uint16_t *hs_dense = round_to(d.hs, N * Ds, f16), *ws = round_to(d.ws, V * Ds, bf16);
    klcl_loss_desc desc = desc_for(KLCL_LOSS_KL, KLCL_REDUCTION_MEAN);
    data_reference(&d, &desc, 1, 1, 1, 1);
    const size_t stride = Ds + 3;
    uint16_t *hs = malloc(N * stride * sizeof(uint16_t)), *dh = malloc(N * stride * sizeof(uint16_t));
    assert_true(hs && dh);
    for (size_t i = 0; i < N; i++)
        for (size_t c = 0; c < stride; c++) {
            hs[i * stride + c] = c < Ds ? hs_dense[i * Ds + c] : 0x7e00; /* NaN */
            dh[i * stride + c] = 0x7777;
        }
    uint16_t *dw = accumulate_start(d.dw, V * Ds, bf16), *db = accumulate_start(d.db, V, f16);
    run_opts o = {0, 1, 1, 1, 8};
    klcl_fused_batch b = host_batch(&d, &o, NULL, NULL, dw, db, NULL);
    b.student.hidden = klcl_host_tensor(hs, stride);
    b.student.hidden.dtype = f16;
    b.student.weight = klcl_host_tensor(ws, 0);
    b.student.weight.dtype = bf16;
    b.grad_hidden = klcl_host_tensor(dh, stride);
    b.grad_hidden.dtype = f16;
    b.grad_weight.dtype = bf16;
    b.grad_bias.dtype = f16;
    klcl_fused_options opt = {8, 1};
    klcl_result r;
    klcl_status st = klcl_compute_fused(ctx, &desc, &b, &opt, &r, NULL);
    if (st != KLCL_OK) fail_msg("%s", klcl_last_error(ctx));
    assert_true(tu_loss_close(r.loss, d.loss));
    uint16_t *g = malloc(N * Ds * sizeof(uint16_t));
    assert_non_null(g);
    for (size_t i = 0; i < N; i++)
        for (size_t c = 0; c < stride; c++) {
            if (c < Ds) g[i * Ds + c] = dh[i * stride + c];
            else assert_int_equal(dh[i * stride + c], 0x7777);
        }
    check_output(f16, "half host stride", "grad_hidden", g, d.dh, d.dh_tol, N * Ds, Ds);
    check_output(bf16, "half host accumulate", "grad_weight", dw, d.dw, d.dw_tol, V * Ds, Ds);
    check_output(f16, "half host accumulate", "grad_bias", db, d.db, d.db_tol, V, V);
    free(hs_dense);
    free(ws);
    free(hs);
    free(dh);
    data_free(&d);
}

/* A gradient in a cl_mem (padding checked) against the reference. */
static void check_mem(cl_mem m, size_t rows, size_t width, size_t stride, size_t offset, klcl_dtype dtype,
                      const char *what, const char *name, const double *ref, const double *tol)
{
    float *x = read_matrix(m, rows, width, stride, offset, dtype, 1);
    check_grad_as(dtype, what, name, x, ref, tol, rows * width, width);
    free(x);
}

/* cl_mem tensors of both half types with element offsets that are odd multiples of 2 bytes and padded
 * strides, teacher logits included; then an accumulating call in chunks of 6 that starts from the first
 * call's rounded gradients. */
static void test_half_mem_tensors(void **state)
{
    (void)state;
    size_t N, V, Ds, Dt;
    half_shape(&N, &V, &Ds, &Dt);
    tu_seed(23);
    fused_data d;
    data_make(&d, N, V, Ds, Dt);
    const klcl_dtype f16 = KLCL_DTYPE_F16, bf16 = KLCL_DTYPE_BF16;
    uint16_t *hb = round_to(d.hs, N * Ds, bf16), *wb = round_to(d.ws, V * Ds, f16), *bb = round_to(d.bs, V, bf16);
    uint16_t *tb = round_to(d.teacher_logits, N * V, f16);
    klcl_loss_desc desc = desc_for(KLCL_LOSS_JSD, KLCL_REDUCTION_BATCHMEAN);
    data_reference(&d, &desc, 1, 1, 1, 1);
    cl_mem hs = mem_matrix(hb, N, Ds, Ds + 1, 3, bf16), ws = mem_matrix(wb, V, Ds, Ds + 2, 1, f16);
    cl_mem bs = mem_matrix(bb, 1, V, V, 5, bf16), tl = mem_matrix(tb, N, V, V + 1, 7, f16);
    cl_mem dh = mem_matrix(NULL, N, Ds, Ds + 3, 1, f16), dw = mem_matrix(NULL, V, Ds, Ds + 1, 3, bf16);
    cl_mem db = mem_matrix(NULL, 1, V, V, 3, f16);
    klcl_fused_batch b = KLCL_FUSED_BATCH_INIT;
    b.rows = N;
    b.student = (klcl_linear){Ds, V, klcl_mem_tensor(hs, 6, Ds + 1), klcl_mem_tensor(ws, 2, Ds + 2),
                              klcl_mem_tensor(bs, 10, 0)};
    b.teacher_logits = klcl_mem_tensor(tl, 14, V + 1);
    b.labels = klcl_host_tensor(d.labels, 0);
    b.mask = klcl_host_tensor(d.mask, 0);
    b.grad_hidden = klcl_mem_tensor(dh, 2, Ds + 3);
    b.grad_weight = klcl_mem_tensor(dw, 6, Ds + 1);
    b.grad_bias = klcl_mem_tensor(db, 6, 0);
    b.student.hidden.dtype = b.student.bias.dtype = b.grad_weight.dtype = bf16;
    b.student.weight.dtype = b.teacher_logits.dtype = b.grad_hidden.dtype = b.grad_bias.dtype = f16;
    klcl_fused_options opt = KLCL_FUSED_OPTIONS_INIT;
    klcl_result r;
    klcl_status st = klcl_compute_fused(ctx, &desc, &b, &opt, &r, NULL);
    if (st != KLCL_OK) fail_msg("%s", klcl_last_error(ctx));
    assert_true(tu_loss_close(r.loss, d.loss));
    check_mem(dh, N, Ds, Ds + 3, 1, f16, "half cl_mem", "grad_hidden", d.dh, d.dh_tol);
    float *first_dw = read_matrix(dw, V, Ds, Ds + 1, 3, bf16, 1), *first_db = read_matrix(db, 1, V, V, 3, f16, 1);
    check_grad_as(bf16, "half cl_mem", "grad_weight", first_dw, d.dw, d.dw_tol, V * Ds, Ds);
    check_grad_as(f16, "half cl_mem", "grad_bias", first_db, d.db, d.db_tol, V, V);

    opt.chunk_rows = 6;
    opt.accumulate = 1;
    st = klcl_compute_fused(ctx, &desc, &b, &opt, &r, NULL);
    if (st != KLCL_OK) fail_msg("%s", klcl_last_error(ctx));
    for (size_t k = 0; k < V * Ds; k++) d.dw[k] += first_dw[k];
    for (size_t k = 0; k < V; k++) d.db[k] += first_db[k];
    check_mem(dw, V, Ds, Ds + 1, 3, bf16, "half cl_mem, accumulated", "grad_weight", d.dw, d.dw_tol);
    check_mem(db, 1, V, V, 3, f16, "half cl_mem, accumulated", "grad_bias", d.db, d.db_tol);
    free(first_dw);
    free(first_db);
    cl_mem all[] = {hs, ws, bs, tl, dh, dw, db};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) clReleaseMemObject(all[i]);
    uint16_t *bits[] = {hb, wb, bb, tb};
    for (size_t i = 0; i < sizeof bits / sizeof bits[0]; i++) free(bits[i]);
    data_free(&d);
}

/* What a half-precision operand costs in device memory, as klcl_fused_info reports it: a cl_mem head its
 * fp32 copy (V x D x 4 bytes), cl_mem hidden states one chunk's (chunk x D x 4). */
static void test_half_device_bytes(void **state)
{
    (void)state;
    size_t N, V, Ds, Dt;
    half_shape(&N, &V, &Ds, &Dt);
    tu_seed(24);
    fused_data d;
    data_make(&d, N, V, Ds, Dt);
    half_data h;
    half_make(&d, KLCL_DTYPE_F16, &h);
    const klcl_dtype f32 = KLCL_DTYPE_F32, f16 = KLCL_DTYPE_F16;
    cl_mem hs32 = mem_matrix(d.hs, N, Ds, Ds, 0, f32), ws32 = mem_matrix(d.ws, V, Ds, Ds, 0, f32);
    cl_mem hs16 = mem_matrix(h.hs, N, Ds, Ds, 0, f16), ws16 = mem_matrix(h.ws, V, Ds, Ds, 0, f16);
    cl_mem dh = mem_matrix(NULL, N, Ds, Ds, 0, f32), dw = mem_matrix(NULL, V, Ds, Ds, 0, f32);
    klcl_loss_desc desc = desc_for(KLCL_LOSS_KL, KLCL_REDUCTION_MEAN);
    klcl_fused_batch b = KLCL_FUSED_BATCH_INIT;
    b.rows = N;
    b.student = (klcl_linear){Ds, V, klcl_mem_tensor(hs32, 0, 0), klcl_mem_tensor(ws32, 0, 0), {0}};
    b.teacher_logits = klcl_host_tensor(d.teacher_logits, 0);
    b.grad_hidden = klcl_mem_tensor(dh, 0, 0);
    b.grad_weight = klcl_mem_tensor(dw, 0, 0);
    const size_t chunk = 5;
    klcl_fused_options opt = {chunk, 0};
    klcl_fused_info info[4];
    for (int k = 0; k < 4; k++) {
        b.student.weight = k == 2 || k == 3 ? klcl_mem_tensor(ws16, 0, 0) : klcl_mem_tensor(ws32, 0, 0);
        b.student.hidden = k == 3 ? klcl_mem_tensor(hs16, 0, 0) : klcl_mem_tensor(hs32, 0, 0);
        b.student.weight.dtype = k >= 2 ? f16 : f32;
        b.student.hidden.dtype = k == 3 ? f16 : f32;
        klcl_status st = klcl_compute_fused(ctx, &desc, &b, &opt, NULL, &info[k]);
        if (st != KLCL_OK) fail_msg("%s", klcl_last_error(ctx));
    }
    /* call 0 grows the context's scratch to this shape; calls 1 to 3 differ by the fp32 copies only */
    assert_int_equal(info[2].device_bytes - info[1].device_bytes, V * Ds * sizeof(float));
    assert_int_equal(info[3].device_bytes - info[2].device_bytes, chunk * Ds * sizeof(float));
    cl_mem all[] = {hs32, ws32, hs16, ws16, dh, dw};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) clReleaseMemObject(all[i]);
    half_free(&h);
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
    const klcl_fused_batch good = host_batch(&d, &o, NULL, NULL, NULL, NULL, NULL);
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
        cmocka_unit_test(test_half_precision),
        cmocka_unit_test(test_half_host_accumulate_and_stride),
        cmocka_unit_test(test_half_mem_tensors),
        cmocka_unit_test(test_half_device_bytes),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
