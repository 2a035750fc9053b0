/* Real inputs on the OpenCL device, each against the CPU reference context on the same host data:
 * half-precision logits and gradients in any mix, heads of different widths (truncate and pad), teacher
 * log-probabilities, and host batches streamed in chunks (bit-identical for every chunk size); plus the
 * host conversions and the argument errors these inputs bring. KLCL_TEST_SMALL=1 shrinks the shapes for
 * runs under a simulator. */
#include "test_util.h"

#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static klcl_context *dev;  /* the OpenCL device */
static klcl_context *cpu;  /* the CPU reference */
static int small_shapes;

static int setup(void **state)
{
    (void)state;
    const char *s = getenv("KLCL_TEST_SMALL");
    small_shapes = s && strcmp(s, "1") == 0;
    dev = tu_device_context(0);
    klcl_context_options o = KLCL_CONTEXT_OPTIONS_INIT;
    o.device = "cpu";
    assert_int_equal(klcl_context_create(&o, &cpu), KLCL_OK);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    klcl_context_destroy(dev);
    klcl_context_destroy(cpu);
    return 0;
}

/* fp32 data converted to `dtype` in a new buffer (the same values the reference widens back). */
static void *as_dtype(const float *x, size_t n, klcl_dtype dtype)
{
    void *out = malloc(n * klcl_dtype_size(dtype));
    assert_non_null(out);
    assert_int_equal(klcl_convert(x, KLCL_DTYPE_F32, out, dtype, n), KLCL_OK);
    return out;
}

static float to_f32(const void *base, klcl_dtype dtype, size_t i)
{
    float f;
    assert_int_equal(klcl_convert((const char *)base + i * klcl_dtype_size(dtype), dtype, &f, KLCL_DTYPE_F32, 1),
                     KLCL_OK);
    return f;
}

/* One rounding of a gradient entry to `dtype`, in absolute terms (both sides round once, so they may sit
 * one step apart). */
static double ulp_of(klcl_dtype dtype, double ref)
{
    switch (dtype) {
    case KLCL_DTYPE_F16: return fabs(ref) * 0x1p-10 + 0x1p-24;
    case KLCL_DTYPE_BF16: return fabs(ref) * 0x1p-7;
    default: return 0.0;
    }
}

/* Runs `b` on the device and on the reference, with a gradient of `gdtype` (when want_grad) and per-row
 * losses, and compares both with LOSSES.md's tolerances (plus one rounding of a half gradient). */
static void compare(const klcl_loss_desc *desc, klcl_batch b, int want_grad, klcl_dtype gdtype, const char *what)
{
    const size_t n = b.rows * b.vocab, gsize = klcl_dtype_size(gdtype);
    void *g_dev = want_grad ? calloc(n, gsize) : NULL, *g_ref = want_grad ? calloc(n, gsize) : NULL;
    float *l_dev = calloc(b.rows, sizeof(float)), *l_ref = calloc(b.rows, sizeof(float));
    assert_true(l_dev && l_ref && (!want_grad || (g_dev && g_ref)));
    klcl_result r_dev, r_ref;
    klcl_batch bd = b, br = b;
    bd.row_loss = klcl_host_tensor(l_dev, 0);
    br.row_loss = klcl_host_tensor(l_ref, 0);
    if (want_grad) {
        bd.grad = klcl_host_tensor(g_dev, 0);
        br.grad = klcl_host_tensor(g_ref, 0);
        bd.grad.dtype = br.grad.dtype = gdtype;
    }
    if (klcl_compute(dev, desc, &bd, &r_dev) != KLCL_OK) fail_msg("%s: device: %s", what, klcl_last_error(dev));
    if (klcl_compute(cpu, desc, &br, &r_ref) != KLCL_OK) fail_msg("%s: reference: %s", what, klcl_last_error(cpu));
    for (size_t i = 0; i < b.rows; i++)
        if (!tu_loss_close(l_dev[i], l_ref[i]))
            fail_msg("%s: row %zu loss %.9g, reference %.9g", what, i, (double)l_dev[i], (double)l_ref[i]);
    if (!tu_loss_close(r_dev.loss, r_ref.loss)) fail_msg("%s: loss %.9g, reference %.9g", what, r_dev.loss, r_ref.loss);
    assert_int_equal(r_dev.rows_used, r_ref.rows_used);
    assert_int_equal(r_dev.rows_nonfinite, r_ref.rows_nonfinite);
    if (!isnan(r_ref.top1_agreement)) assert_true(fabs(r_dev.top1_agreement - r_ref.top1_agreement) < 1e-12);
    for (size_t k = 0; want_grad && k < n; k++) {
        double d = to_f32(g_dev, gdtype, k), r = to_f32(g_ref, gdtype, k);
        int ok = isnan(r) ? isnan(d) : fabs(d - r) <= 1e-6 + 1e-4 * fabs(r) + ulp_of(gdtype, r);
        if (!ok) fail_msg("%s: grad[%zu][%zu] %.9g, reference %.9g", what, k / b.vocab, k % b.vocab, d, r);
    }
    free(g_dev);
    free(g_ref);
    free(l_dev);
    free(l_ref);
}

static klcl_loss_desc desc_for(klcl_loss loss)
{
    klcl_loss_desc d;
    klcl_loss_desc_init(&d, loss);
    d.reduction = KLCL_REDUCTION_SUM;
    d.tau = 1.5f;
    d.beta = 0.3f;
    d.alpha = 0.4f;
    if (loss == KLCL_LOSS_CE) d.label_smoothing = 0.1f;
    return d;
}

static int32_t *labels_for(size_t rows, size_t vocab)
{
    int32_t *y = malloc(rows * sizeof *y);
    assert_non_null(y);
    for (size_t i = 0; i < rows; i++) y[i] = (int32_t)(tu_uniform() * (double)vocab);
    if (rows > 2) y[1] = -100;
    return y;
}

/* ---------------------------------------------------------------------------------------------------- */
/* Element types                                                                                          */

static void test_dtype_mix(void **state)
{
    (void)state;
    const size_t rows = 9, vocab = small_shapes ? 203 : 4099;
    const klcl_dtype mixes[][3] = {
        {KLCL_DTYPE_BF16, KLCL_DTYPE_BF16, KLCL_DTYPE_BF16}, {KLCL_DTYPE_F16, KLCL_DTYPE_F16, KLCL_DTYPE_F16},
        {KLCL_DTYPE_F32, KLCL_DTYPE_BF16, KLCL_DTYPE_F32},   {KLCL_DTYPE_F16, KLCL_DTYPE_F32, KLCL_DTYPE_BF16},
        {KLCL_DTYPE_F32, KLCL_DTYPE_F32, KLCL_DTYPE_F16},
    };
    const klcl_loss losses[] = {KLCL_LOSS_KL, KLCL_LOSS_RKL, KLCL_LOSS_CE, KLCL_LOSS_JSD, KLCL_LOSS_KD};
    float *t = malloc(rows * vocab * sizeof *t), *s = malloc(rows * vocab * sizeof *s);
    assert_true(t && s);
    tu_seed(11);
    tu_fill_logits(t, s, rows, vocab, vocab);
    int32_t *y = labels_for(rows, vocab);
    for (size_t m = 0; m < sizeof mixes / sizeof mixes[0]; m++) {
        void *th = as_dtype(t, rows * vocab, mixes[m][0]), *sh = as_dtype(s, rows * vocab, mixes[m][1]);
        for (size_t l = 0; l < sizeof losses / sizeof losses[0]; l++) {
            klcl_loss_desc d = desc_for(losses[l]);
            klcl_batch b = KLCL_BATCH_INIT;
            b.rows = rows;
            b.vocab = vocab;
            b.teacher = klcl_host_tensor(th, 0);
            b.student = klcl_host_tensor(sh, 0);
            b.teacher.dtype = mixes[m][0];
            b.student.dtype = mixes[m][1];
            b.labels = klcl_host_tensor(y, 0);
            char what[128];
            snprintf(what, sizeof what, "%s teacher %s student %s grad %s", klcl_loss_name(losses[l]),
                     klcl_dtype_name(mixes[m][0]), klcl_dtype_name(mixes[m][1]), klcl_dtype_name(mixes[m][2]));
            compare(&d, b, 1, mixes[m][2], what);
        }
        free(th);
        free(sh);
    }
    free(t);
    free(s);
    free(y);
}

/* bf16 rows whose true class has probability 0.999: the gradient entry there is q - 1 = -0.001, which
 * must come out as the one rounding of that fp32 value, not the rounding of q (1.0 in bf16) minus 1. */
static void test_bf16_true_class(void **state)
{
    (void)state;
    const size_t rows = 4, vocab = 1000;
    float *s = malloc(rows * vocab * sizeof *s);
    int32_t y[4] = {3, 500, 999, 0};
    assert_non_null(s);
    for (size_t i = 0; i < rows; i++) {
        /* Others at 0, the true class at log(0.999 (V - 1) / 0.001): q_y = 0.999. */
        for (size_t v = 0; v < vocab; v++) s[i * vocab + v] = 0.0f;
        s[i * vocab + (size_t)y[i]] = (float)log(0.999 * (double)(vocab - 1) / 0.001);
    }
    void *sb = as_dtype(s, rows * vocab, KLCL_DTYPE_BF16);
    uint16_t *g = calloc(rows * vocab, sizeof *g);
    assert_non_null(g);
    klcl_loss_desc d;
    klcl_loss_desc_init(&d, KLCL_LOSS_CE);
    d.reduction = KLCL_REDUCTION_SUM;
    klcl_batch b = KLCL_BATCH_INIT;
    b.rows = rows;
    b.vocab = vocab;
    b.student = klcl_host_tensor(sb, 0);
    b.student.dtype = KLCL_DTYPE_BF16;
    b.labels = klcl_host_tensor(y, 0);
    b.grad = klcl_host_tensor(g, 0);
    b.grad.dtype = KLCL_DTYPE_BF16;
    assert_int_equal(klcl_compute(dev, &d, &b, NULL), KLCL_OK);
    for (size_t i = 0; i < rows; i++) {
        /* The reference on the widened bf16 logits, in double. */
        float *row = malloc(vocab * sizeof *row);
        double loss, *gr = malloc(vocab * sizeof *gr);
        assert_true(row && gr);
        klcl_convert((uint16_t *)sb + i * vocab, KLCL_DTYPE_BF16, row, KLCL_DTYPE_F32, vocab);
        assert_int_equal(klcl_reference_row(&d, vocab, NULL, row, y[i], &loss, gr, NULL, NULL), KLCL_OK);
        double got = to_f32(g, KLCL_DTYPE_BF16, i * vocab + (size_t)y[i]), want = gr[y[i]];
        assert_true(want < -5e-4 && want > -2e-3);
        if (!(fabs(got - want) <= fabs(want) * 0x1p-8 * 1.01))
            fail_msg("row %zu: true-class gradient %.9g, reference %.9g (bf16 keeps 8 bits of it)", i, got, want);
        free(row);
        free(gr);
    }
    free(s);
    free(sb);
    free(g);
}

/* ---------------------------------------------------------------------------------------------------- */
/* Heads of different widths                                                                              */

static void mismatch_case(size_t vt, size_t vs, size_t rows, const char *name)
{
    float *t = malloc(rows * vt * sizeof *t), *s = malloc(rows * vs * sizeof *s), *scratch;
    assert_true(t && s);
    const size_t wide = vt > vs ? vt : vs;
    scratch = malloc(rows * wide * 2 * sizeof *scratch);
    assert_non_null(scratch);
    tu_seed(5 + vt + vs);
    tu_fill_logits(scratch, scratch + rows * wide, rows, wide, wide);
    for (size_t i = 0; i < rows; i++) {
        memcpy(t + i * vt, scratch + i * wide, vt * sizeof *t);
        memcpy(s + i * vs, scratch + rows * wide + i * wide, vs * sizeof *s);
    }
    int32_t *y = labels_for(rows, vt < vs ? vt : vs);
    for (int policy = KLCL_VOCAB_TRUNCATE; policy <= KLCL_VOCAB_PAD; policy++) {
        for (int loss = 0; loss < KLCL_LOSS_COUNT; loss++) {
            klcl_loss_desc d = desc_for((klcl_loss)loss);
            d.vocab_policy = policy;
            klcl_batch b = KLCL_BATCH_INIT;
            b.rows = rows;
            b.vocab = vs;
            b.teacher_vocab = vt;
            b.teacher = klcl_host_tensor(t, 0);
            b.student = klcl_host_tensor(s, 0);
            b.labels = klcl_host_tensor(y, 0);
            char what[128];
            snprintf(what, sizeof what, "%s %s %s V_t=%zu V_s=%zu", name, klcl_loss_name((klcl_loss)loss),
                     policy == KLCL_VOCAB_PAD ? "pad" : "truncate", vt, vs);
            compare(&d, b, 1, KLCL_DTYPE_F32, what);
        }
    }
    free(t);
    free(s);
    free(scratch);
    free(y);
}

static void test_vocab_mismatch(void **state)
{
    (void)state;
    if (small_shapes) {
        mismatch_case(203, 181, 3, "wider teacher");
        mismatch_case(181, 203, 3, "wider student");
    } else {
        mismatch_case(152064, 151936, 3, "wider teacher");
        mismatch_case(4000, 4103, 5, "wider student");
    }
}

/* Truncate: student columns past the teacher's get exactly 0; columns past V_s in a strided gradient row
 * are not written. Pad with a wider student: kl is finite (teacher mass 0 there), rkl is +inf. */
static void test_mismatch_columns(void **state)
{
    (void)state;
    const size_t rows = 2, vt = 37, vs = 45, gstride = 50;
    float t[2 * 37], s[2 * 45], g[2 * 50], loss[2];
    tu_seed(3);
    for (size_t i = 0; i < rows * vt; i++) t[i] = (float)tu_normal();
    for (size_t i = 0; i < rows * vs; i++) s[i] = (float)tu_normal();
    for (size_t i = 0; i < rows * gstride; i++) g[i] = 12345.0f;
    klcl_loss_desc d;
    klcl_loss_desc_init(&d, KLCL_LOSS_KL);
    klcl_batch b = KLCL_BATCH_INIT;
    b.rows = rows;
    b.vocab = vs;
    b.teacher_vocab = vt;
    b.teacher = klcl_host_tensor(t, 0);
    b.student = klcl_host_tensor(s, 0);
    b.grad = klcl_host_tensor(g, gstride);
    b.row_loss = klcl_host_tensor(loss, 0);
    assert_int_equal(klcl_compute(dev, &d, &b, NULL), KLCL_OK);
    for (size_t i = 0; i < rows; i++) {
        double sum = 0.0;
        for (size_t v = 0; v < vt; v++) sum += g[i * gstride + v];
        assert_true(fabs(sum) < 1e-5); /* q - p over the shared columns sums to 0 */
        for (size_t v = vt; v < vs; v++) assert_true(g[i * gstride + v] == 0.0f);
        for (size_t v = vs; v < gstride; v++) assert_true(g[i * gstride + v] == 12345.0f);
    }
    d.vocab_policy = KLCL_VOCAB_PAD;
    assert_int_equal(klcl_compute(dev, &d, &b, NULL), KLCL_OK);
    for (size_t i = 0; i < rows; i++) {
        assert_true(isfinite(loss[i]));
        for (size_t v = vt; v < vs; v++) assert_true(g[i * gstride + v] > 0.0f); /* q - 0 */
    }
    klcl_loss_desc_init(&d, KLCL_LOSS_RKL);
    d.vocab_policy = KLCL_VOCAB_PAD;
    b.grad = klcl_host_tensor(NULL, 0);
    assert_int_equal(klcl_compute(dev, &d, &b, NULL), KLCL_OK);
    for (size_t i = 0; i < rows; i++) assert_true(loss[i] == INFINITY);
}

/* ---------------------------------------------------------------------------------------------------- */
/* Teacher log-probabilities                                                                              */

static void test_teacher_logprobs(void **state)
{
    (void)state;
    const size_t rows = 6, vocab = small_shapes ? 301 : 32003;
    float *t = malloc(rows * vocab * sizeof *t), *s = malloc(rows * vocab * sizeof *s);
    assert_true(t && s);
    tu_seed(21);
    tu_fill_logits(t, s, rows, vocab, vocab);
    /* log_softmax in double, then shifted by +0.01 in half the rows: mass e^0.01 there. Used as they
     * are, those rows' kl differs from the renormalised value; the reference defines which is right. */
    for (size_t i = 0; i < rows; i++) {
        double m = -INFINITY, sum = 0.0;
        for (size_t v = 0; v < vocab; v++) m = fmax(m, t[i * vocab + v]);
        for (size_t v = 0; v < vocab; v++) sum += exp(t[i * vocab + v] - m);
        for (size_t v = 0; v < vocab; v++) t[i * vocab + v] = (float)(t[i * vocab + v] - m - log(sum) + (i % 2 ? 0.01 : 0.0));
    }
    const klcl_loss losses[] = {KLCL_LOSS_KL, KLCL_LOSS_RKL, KLCL_LOSS_SOFT_CE, KLCL_LOSS_JSD, KLCL_LOSS_TVD};
    for (size_t l = 0; l < sizeof losses / sizeof losses[0]; l++) {
        for (int tau = 0; tau < 2; tau++) {
            klcl_loss_desc d = desc_for(losses[l]);
            d.tau = tau ? 2.0f : 1.0f;
            klcl_batch b = KLCL_BATCH_INIT;
            b.rows = rows;
            b.vocab = vocab;
            b.teacher = klcl_host_tensor(t, 0);
            b.student = klcl_host_tensor(s, 0);
            b.teacher_logprobs = 1;
            char what[96];
            snprintf(what, sizeof what, "%s log-prob teacher tau=%g", klcl_loss_name(losses[l]), (double)d.tau);
            compare(&d, b, 1, KLCL_DTYPE_F32, what);
        }
    }
    /* kl at tau 1: the shifted rows' value is e^0.01 (kl_normalised + 0.01) - (e^0.01 - 1) log-mass
     * terms; simply check that it differs from the renormalised value by more than the tolerance, and
     * that at tau 2 the flag changes nothing (bit for bit). */
    klcl_loss_desc d = desc_for(KLCL_LOSS_KL);
    d.tau = 1.0f;
    float with[6], without[6];
    klcl_batch b = KLCL_BATCH_INIT;
    b.rows = rows;
    b.vocab = vocab;
    b.teacher = klcl_host_tensor(t, 0);
    b.student = klcl_host_tensor(s, 0);
    b.row_loss = klcl_host_tensor(with, 0);
    b.teacher_logprobs = 1;
    assert_int_equal(klcl_compute(dev, &d, &b, NULL), KLCL_OK);
    b.row_loss = klcl_host_tensor(without, 0);
    b.teacher_logprobs = 0;
    assert_int_equal(klcl_compute(dev, &d, &b, NULL), KLCL_OK);
    assert_true(fabs(with[1] - without[1]) > 1e-3);
    assert_true(fabs(with[0] - without[0]) <= 1e-5 * fmax(1.0, fabs(without[0])));
    d.tau = 2.0f;
    b.teacher_logprobs = 1;
    b.row_loss = klcl_host_tensor(with, 0);
    assert_int_equal(klcl_compute(dev, &d, &b, NULL), KLCL_OK);
    b.teacher_logprobs = 0;
    b.row_loss = klcl_host_tensor(without, 0);
    assert_int_equal(klcl_compute(dev, &d, &b, NULL), KLCL_OK);
    assert_memory_equal(with, without, sizeof with);
    free(t);
    free(s);
}

/* ---------------------------------------------------------------------------------------------------- */
/* Chunked streaming                                                                                      */

typedef struct run_out {
    float *row_loss;
    uint16_t *grad; /* bf16 gradient, strided */
    klcl_result res;
} run_out;

static void run_chunked(size_t chunk_rows, const klcl_loss_desc *d, klcl_batch b, size_t gstride, run_out *out,
                        cl_mem teacher_mem)
{
    klcl_context_options o = KLCL_CONTEXT_OPTIONS_INIT;
    o.device = "opencl";
    o.chunk_rows = chunk_rows;
    klcl_context *c = NULL;
    assert_int_equal(klcl_context_create(&o, &c), KLCL_OK);
    out->row_loss = calloc(b.rows, sizeof(float));
    out->grad = malloc(b.rows * gstride * sizeof(uint16_t));
    assert_true(out->row_loss && out->grad);
    memset(out->grad, 0xab, b.rows * gstride * sizeof(uint16_t));
    b.row_loss = klcl_host_tensor(out->row_loss, 0);
    b.grad = klcl_host_tensor(out->grad, gstride);
    b.grad.dtype = KLCL_DTYPE_BF16;
    cl_mem local = NULL;
    if (teacher_mem) { /* the teacher as a cl_mem of this context: copy the caller's buffer over */
        size_t bytes = 0;
        assert_int_equal(clGetMemObjectInfo(teacher_mem, CL_MEM_SIZE, sizeof bytes, &bytes, NULL), CL_SUCCESS);
        void *host = malloc(bytes);
        assert_non_null(host);
        assert_int_equal(clEnqueueReadBuffer(klcl_context_cl_queue(dev), teacher_mem, CL_TRUE, 0, bytes, host, 0, NULL,
                                             NULL), CL_SUCCESS);
        cl_int err;
        local = clCreateBuffer(klcl_context_cl_context(c), CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, bytes, host, &err);
        assert_non_null(local);
        free(host);
        b.teacher = klcl_mem_tensor(local, b.teacher.offset, b.teacher.stride);
        b.teacher.dtype = KLCL_DTYPE_F16;
    }
    if (klcl_compute(c, d, &b, &out->res) != KLCL_OK) fail_msg("chunk %zu: %s", chunk_rows, klcl_last_error(c));
    if (local) clReleaseMemObject(local);
    klcl_context_destroy(c);
}

static void same_bits(const run_out *a, const run_out *b, size_t rows, size_t gstride, const char *what)
{
    if (memcmp(a->row_loss, b->row_loss, rows * sizeof(float)) != 0) fail_msg("%s: row losses differ", what);
    if (memcmp(a->grad, b->grad, rows * gstride * sizeof(uint16_t)) != 0) fail_msg("%s: gradients differ", what);
    if (memcmp(&a->res.loss, &b->res.loss, sizeof a->res.loss) != 0)
        fail_msg("%s: loss %.17g vs %.17g", what, a->res.loss, b->res.loss);
    assert_int_equal(a->res.rows_used, b->res.rows_used);
    assert_true(memcmp(&a->res.student_entropy, &b->res.student_entropy, sizeof(double)) == 0);
}

static void test_chunk_bit_identical(void **state)
{
    (void)state;
    const size_t rows = 37, vocab = small_shapes ? 67 : 3001, tstride = vocab + 5, gstride = vocab + 3;
    float *t = calloc(rows * tstride, sizeof *t), *s = malloc(rows * vocab * sizeof *s);
    assert_true(t && s);
    tu_seed(8);
    tu_fill_logits(t, t, rows, vocab, tstride); /* teacher rows strided, student rows contiguous */
    for (size_t i = 0; i < rows; i++)
        for (size_t v = 0; v < vocab; v++) s[i * vocab + v] = 0.6f * t[i * tstride + v] + (float)(2.0 * tu_normal());
    uint16_t *th = as_dtype(t, rows * tstride, KLCL_DTYPE_F16);
    int32_t *y = labels_for(rows, vocab);
    uint8_t mask[37];
    for (size_t i = 0; i < rows; i++) mask[i] = i % 7 != 3;
    const klcl_loss losses[] = {KLCL_LOSS_KL, KLCL_LOSS_JSD, KLCL_LOSS_KD};
    const size_t chunks[] = {1, 5, 36, 0};
    cl_int err;
    cl_mem tmem = clCreateBuffer(klcl_context_cl_context(dev), CL_MEM_READ_ONLY,
                                 (rows * tstride + 4) * sizeof(uint16_t), NULL, &err);
    assert_non_null(tmem);
    assert_int_equal(clEnqueueWriteBuffer(klcl_context_cl_queue(dev), tmem, CL_TRUE, 4 * sizeof(uint16_t),
                                          rows * tstride * sizeof(uint16_t), th, 0, NULL, NULL), CL_SUCCESS);
    for (size_t l = 0; l < sizeof losses / sizeof losses[0]; l++) {
        klcl_loss_desc d = desc_for(losses[l]);
        d.reduction = KLCL_REDUCTION_MEAN;
        klcl_batch b = KLCL_BATCH_INIT;
        b.rows = rows;
        b.vocab = vocab;
        b.teacher = klcl_host_tensor(th, tstride);
        b.teacher.dtype = KLCL_DTYPE_F16;
        b.student = klcl_host_tensor(s, 0);
        b.labels = klcl_host_tensor(y, 0);
        b.mask = klcl_host_tensor(mask, 0);
        run_out whole;
        run_chunked(rows, &d, b, gstride, &whole, NULL);
        for (size_t c = 0; c < sizeof chunks / sizeof chunks[0]; c++) {
            run_out part;
            char what[96];
            snprintf(what, sizeof what, "%s chunks of %zu rows", klcl_loss_name(losses[l]), chunks[c]);
            run_chunked(chunks[c], &d, b, gstride, &part, NULL);
            same_bits(&whole, &part, rows, gstride, what);
            free(part.row_loss);
            free(part.grad);
            /* A teacher in a cl_mem (used in place) beside a streamed student. */
            klcl_batch bm = b;
            bm.teacher.offset = 4 * sizeof(uint16_t);
            snprintf(what, sizeof what, "%s cl_mem teacher, chunks of %zu rows", klcl_loss_name(losses[l]), chunks[c]);
            run_chunked(chunks[c], &d, bm, gstride, &part, tmem);
            same_bits(&whole, &part, rows, gstride, what);
            free(part.row_loss);
            free(part.grad);
        }
        /* Padding columns of the strided gradient are untouched. */
        for (size_t i = 0; i < rows; i++)
            for (size_t v = vocab; v < gstride; v++) assert_int_equal(whole.grad[i * gstride + v], 0xabab);
        free(whole.row_loss);
        free(whole.grad);
    }
    clReleaseMemObject(tmem);
    free(t);
    free(s);
    free(th);
    free(y);
}

/* Rows too few to fill the device are split across work-groups, by a choice made for the whole call: a
 * chunk of one row reduces its row exactly as the whole call of three does (never as a call of one row
 * would), so the results are bit-identical for every chunk size here too. */
static void test_chunk_split_rows(void **state)
{
    (void)state;
    const size_t rows = 3;
    /* The narrowest rows this device splits at 3 rows, and into other parts than at 1 row (up to a limit;
     * KLCL_ROW_SPLIT makes them equal). */
    size_t vocab = 8192, team = 0, parts = 0, parts_one = 0;
    for (;; vocab *= 2) {
        assert_int_equal(klcl_context_row_strategy(dev, rows, vocab, &team, &parts), KLCL_OK);
        assert_int_equal(klcl_context_row_strategy(dev, 1, vocab, &team, &parts_one), KLCL_OK);
        if ((parts > 1 && parts_one != parts) || vocab >= (small_shapes ? 16384u : 1048576u)) break;
    }
    vocab += 3; /* and a scalar tail */
    float *t = malloc(rows * vocab * sizeof *t), *s = malloc(rows * vocab * sizeof *s);
    assert_true(t && s);
    tu_seed(9);
    tu_fill_logits(t, s, rows, vocab, vocab);
    int32_t *y = labels_for(rows, vocab);
    const klcl_loss losses[] = {KLCL_LOSS_KL, KLCL_LOSS_RKL, KLCL_LOSS_TVD};
    const size_t chunks[] = {1, 2};
    for (size_t l = 0; l < sizeof losses / sizeof losses[0]; l++) {
        klcl_loss_desc d = desc_for(losses[l]);
        klcl_batch b = KLCL_BATCH_INIT;
        b.rows = rows;
        b.vocab = vocab;
        b.teacher = klcl_host_tensor(t, 0);
        b.student = klcl_host_tensor(s, 0);
        b.labels = klcl_host_tensor(y, 0);
        run_out whole;
        run_chunked(rows, &d, b, vocab, &whole, NULL);
        for (size_t c = 0; c < sizeof chunks / sizeof chunks[0]; c++) {
            run_out part;
            char what[128];
            snprintf(what, sizeof what, "%s V=%zu (%zu parts, %zu for a call of 1 row), chunks of %zu rows",
                     klcl_loss_name(losses[l]), vocab, parts, parts_one, chunks[c]);
            run_chunked(chunks[c], &d, b, vocab, &part, NULL);
            same_bits(&whole, &part, rows, vocab, what);
            free(part.row_loss);
            free(part.grad);
        }
        free(whole.row_loss);
        free(whole.grad);
    }
    free(t);
    free(s);
    free(y);
}

/* ---------------------------------------------------------------------------------------------------- */
/* Host conversions and argument errors                                                                   */

static void test_convert(void **state)
{
    (void)state;
    const float in[] = {0.0f, -0.0f, 1.0f, 1.0f + 0x1p-11f, 1.0f + 0x1p-11f + 0x1p-23f, 1.0f + 3 * 0x1p-11f,
                        65504.0f, 65520.0f, 0x1p-24f, 0x1p-25f, 0x1.8p-25f, INFINITY, -INFINITY, NAN};
    const uint16_t half[] = {0x0000, 0x8000, 0x3c00, 0x3c00, 0x3c01, 0x3c02, 0x7bff, 0x7c00, 0x0001, 0x0000, 0x0001,
                             0x7c00, 0xfc00};
    uint16_t out[14];
    assert_int_equal(klcl_convert(in, KLCL_DTYPE_F32, out, KLCL_DTYPE_F16, 14), KLCL_OK);
    for (size_t i = 0; i < 13; i++)
        if (out[i] != half[i]) fail_msg("f16 of %a: 0x%04x, want 0x%04x", (double)in[i], out[i], half[i]);
    assert_true((out[13] & 0x7c00) == 0x7c00 && (out[13] & 0x3ff)); /* NaN */
    const float bin[] = {1.0f, 1.0f + 0x1p-8f, 1.0f + 0x1p-8f + 0x1p-20f, 1.0f + 3 * 0x1p-8f, 0x1.fffffep127f, NAN};
    const uint16_t bf[] = {0x3f80, 0x3f80, 0x3f81, 0x3f82, 0x7f80};
    assert_int_equal(klcl_convert(bin, KLCL_DTYPE_F32, out, KLCL_DTYPE_BF16, 6), KLCL_OK);
    for (size_t i = 0; i < 5; i++)
        if (out[i] != bf[i]) fail_msg("bf16 of %a: 0x%04x, want 0x%04x", (double)bin[i], out[i], bf[i]);
    assert_true((out[5] & 0x7f80) == 0x7f80 && (out[5] & 0x7f));
    /* Every fp16 value widens exactly and comes back as itself. */
    uint16_t all[65536], back[65536];
    float wide[65536];
    for (size_t i = 0; i < 65536; i++) all[i] = (uint16_t)i;
    assert_int_equal(klcl_convert(all, KLCL_DTYPE_F16, wide, KLCL_DTYPE_F32, 65536), KLCL_OK);
    assert_int_equal(klcl_convert(wide, KLCL_DTYPE_F32, back, KLCL_DTYPE_F16, 65536), KLCL_OK);
    for (size_t i = 0; i < 65536; i++)
        if (!isnan(wide[i])) assert_int_equal(back[i], all[i]);
    assert_true(wide[0x3555] == (float)(1.0 / 3.0) || fabs(wide[0x3555] - 1.0 / 3.0) < 1e-3);
    assert_int_equal(klcl_convert(NULL, KLCL_DTYPE_F32, out, KLCL_DTYPE_F16, 1), KLCL_ERR_NULL_POINTER);
    assert_int_equal(klcl_convert(in, (klcl_dtype)7, out, KLCL_DTYPE_F16, 1), KLCL_ERR_INVALID_VALUE);
    assert_int_equal(klcl_convert(NULL, KLCL_DTYPE_F32, NULL, KLCL_DTYPE_F16, 0), KLCL_OK);
    assert_string_equal(klcl_dtype_name(KLCL_DTYPE_BF16), "bf16");
    assert_null(klcl_dtype_name((klcl_dtype)3));
    assert_int_equal(klcl_dtype_size(KLCL_DTYPE_F16), 2);
    assert_int_equal(klcl_dtype_size((klcl_dtype)-1), 0);
}

static void expect_error(klcl_context *c, const klcl_loss_desc *d, const klcl_batch *b, klcl_status want,
                         const char *needle)
{
    klcl_status st = klcl_compute(c, d, b, NULL);
    if (st != want) fail_msg("status %d (%s), want %d; message: %s", st, klcl_status_string(st), want, klcl_last_error(c));
    if (!strstr(klcl_last_error(c), needle)) fail_msg("message \"%s\" does not name \"%s\"", klcl_last_error(c), needle);
}

static void test_input_errors(void **state)
{
    (void)state;
    float t[4 * 10], s[4 * 8], g[4 * 8];
    int32_t y[4] = {0, 7, 2, 1};
    uint8_t mask[4] = {1, 1, 1, 1};
    for (size_t i = 0; i < 40; i++) t[i] = (float)i * 0.1f;
    for (size_t i = 0; i < 32; i++) s[i] = (float)i * -0.1f;
    klcl_context *both[2] = {dev, cpu};
    for (int k = 0; k < 2; k++) {
        klcl_context *c = both[k];
        klcl_loss_desc d;
        klcl_loss_desc_init(&d, KLCL_LOSS_KL);
        klcl_batch b = KLCL_BATCH_INIT;
        b.rows = 4;
        b.vocab = 8;
        b.teacher_vocab = 10;
        b.teacher = klcl_host_tensor(t, 0);
        b.student = klcl_host_tensor(s, 0);
        b.grad = klcl_host_tensor(g, 0);
        klcl_batch bad = b;
        bad.teacher.dtype = (klcl_dtype)7;
        expect_error(c, &d, &bad, KLCL_ERR_INVALID_VALUE, "batch->teacher.dtype");
        bad = b;
        bad.grad.dtype = (klcl_dtype)-2;
        expect_error(c, &d, &bad, KLCL_ERR_INVALID_VALUE, "batch->grad.dtype");
        bad = b;
        bad.mask = klcl_host_tensor(mask, 0);
        bad.mask.dtype = KLCL_DTYPE_F16;
        expect_error(c, &d, &bad, KLCL_ERR_INVALID_VALUE, "batch->mask.dtype");
        bad = b;
        bad.teacher_vocab = (size_t)INT32_MAX + 1;
        expect_error(c, &d, &bad, KLCL_ERR_INVALID_SHAPE, "batch->teacher_vocab");
        bad = b;
        bad.teacher_logprobs = 2;
        expect_error(c, &d, &bad, KLCL_ERR_INVALID_VALUE, "batch->teacher_logprobs");
        bad = b;
        bad.teacher = klcl_host_tensor(t, 9); /* stride below the teacher's width */
        expect_error(c, &d, &bad, KLCL_ERR_INVALID_SHAPE, "batch->teacher.stride");
        klcl_loss_desc dd = d;
        dd.vocab_policy = 5;
        expect_error(c, &dd, &b, KLCL_ERR_INVALID_VALUE, "desc->vocab_policy");
        /* Labels name the columns the loss uses: with a teacher of 6 columns, truncate uses 6 and label 7 is
         * out of range; pad uses all 8 student columns and takes it. */
        klcl_loss_desc ce;
        klcl_loss_desc_init(&ce, KLCL_LOSS_KD);
        bad = b;
        bad.teacher_vocab = 6;
        bad.teacher = klcl_host_tensor(t, 0);
        bad.labels = klcl_host_tensor(y, 0);
        expect_error(c, &ce, &bad, KLCL_ERR_LABEL_OUT_OF_RANGE, "batch->labels[1]");
        ce.vocab_policy = KLCL_VOCAB_PAD;
        assert_int_equal(klcl_compute(c, &ce, &bad, NULL), KLCL_OK);
    }
    /* A cl_mem sized for fp16 elements is too small for the fp32 the tensor claims. */
    cl_int err;
    cl_mem m = clCreateBuffer(klcl_context_cl_context(dev), CL_MEM_READ_WRITE, 4 * 8 * 2, NULL, &err);
    assert_non_null(m);
    klcl_loss_desc d;
    klcl_loss_desc_init(&d, KLCL_LOSS_KL);
    klcl_batch b = KLCL_BATCH_INIT;
    b.rows = 4;
    b.vocab = 8;
    b.teacher = klcl_host_tensor(t, 0);
    b.student = klcl_mem_tensor(m, 0, 0);
    expect_error(dev, &d, &b, KLCL_ERR_BUFFER_TOO_SMALL, "batch->student.mem");
    b.student.dtype = KLCL_DTYPE_BF16;
    assert_int_equal(klcl_compute(dev, &d, &b, NULL), KLCL_OK);
    b.student.offset = 1;
    expect_error(dev, &d, &b, KLCL_ERR_MISALIGNED, "batch->student.offset");
    clReleaseMemObject(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_convert),
        cmocka_unit_test(test_dtype_mix),
        cmocka_unit_test(test_input_errors),
        cmocka_unit_test(test_bf16_true_class),
        cmocka_unit_test(test_vocab_mismatch),
        cmocka_unit_test(test_mismatch_columns),
        cmocka_unit_test(test_teacher_logprobs),
        cmocka_unit_test(test_chunk_bit_identical),
        cmocka_unit_test(test_chunk_split_rows),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
