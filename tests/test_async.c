/* Asynchronous calls (klcl_compute_async, klcl_async_result) against synchronous ones on the same device
 * buffers, their wait lists and errors; and several contexts used from several threads at once, which must
 * give the bits one thread gives. */
#include "test_util.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static klcl_context *dev;
static int small_shapes;

static int setup(void **state)
{
    (void)state;
    const char *s = getenv("KLCL_TEST_SMALL");
    small_shapes = s && strcmp(s, "1") == 0;
    dev = tu_device_context(0);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    klcl_context_destroy(dev);
    return 0;
}

static cl_mem buffer(klcl_context *c, size_t bytes, const void *init)
{
    cl_int err;
    cl_mem m = clCreateBuffer(klcl_context_cl_context(c), CL_MEM_READ_WRITE, bytes, NULL, &err);
    assert_non_null(m);
    if (init)
        assert_int_equal(clEnqueueWriteBuffer(klcl_context_cl_queue(c), m, CL_TRUE, 0, bytes, init, 0, NULL, NULL),
                         CL_SUCCESS);
    return m;
}

static void read_back(klcl_context *c, cl_mem m, size_t bytes, void *out)
{
    assert_int_equal(clEnqueueReadBuffer(klcl_context_cl_queue(c), m, CL_TRUE, 0, bytes, out, 0, NULL, NULL),
                     CL_SUCCESS);
}

/* A batch whose every tensor lives on the device. */
typedef struct dev_batch {
    size_t rows, vocab;
    cl_mem t, s, y, m, g, l, loss;
    klcl_batch b;
} dev_batch;

static void dev_batch_make(dev_batch *d, klcl_context *c, size_t rows, size_t vocab, uint64_t seed)
{
    memset(d, 0, sizeof *d);
    d->rows = rows;
    d->vocab = vocab;
    float *t = malloc(rows * vocab * sizeof *t), *s = malloc(rows * vocab * sizeof *s);
    int32_t *y = malloc(rows * sizeof *y);
    uint8_t *m = malloc(rows);
    assert_true(t && s && y && m);
    tu_seed(seed);
    tu_fill_logits(t, s, rows, vocab, vocab);
    for (size_t i = 0; i < rows; i++) {
        y[i] = i % 5 == 2 ? -100 : (int32_t)(tu_uniform() * (double)vocab);
        m[i] = i % 7 != 4;
    }
    d->t = buffer(c, rows * vocab * sizeof(float), t);
    d->s = buffer(c, rows * vocab * sizeof(float), s);
    d->y = buffer(c, rows * sizeof(int32_t), y);
    d->m = buffer(c, rows, m);
    d->g = buffer(c, rows * vocab * sizeof(float), NULL);
    d->l = buffer(c, rows * sizeof(float), NULL);
    d->loss = buffer(c, 4 * sizeof(float), NULL);
    klcl_batch b = KLCL_BATCH_INIT;
    b.rows = rows;
    b.vocab = vocab;
    b.teacher = klcl_mem_tensor(d->t, 0, 0);
    b.student = klcl_mem_tensor(d->s, 0, 0);
    b.labels = klcl_mem_tensor(d->y, 0, 0);
    b.mask = klcl_mem_tensor(d->m, 0, 0);
    b.grad = klcl_mem_tensor(d->g, 0, 0);
    b.row_loss = klcl_mem_tensor(d->l, 0, 0);
    d->b = b;
    free(t);
    free(s);
    free(y);
    free(m);
}

static void dev_batch_free(dev_batch *d)
{
    cl_mem all[] = {d->t, d->s, d->y, d->m, d->g, d->l, d->loss};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) clReleaseMemObject(all[i]);
}

static klcl_loss_desc desc_for(klcl_loss loss, klcl_reduction r)
{
    klcl_loss_desc d;
    klcl_loss_desc_init(&d, loss);
    d.reduction = r;
    d.tau = 2.0f;
    d.scale = 4.0f;
    return d;
}

/* Async and sync on the same buffers: gradients and per-row losses bit for bit (the denominator is the same
 * double rounded once), the result identical, the device's reduced loss within fp32 of the host's. Also
 * with rows too few to fill the device, which both split across work-groups alike. */
static void test_async_matches_sync(void **state)
{
    (void)state;
    const size_t shapes[2][2] = {{23, small_shapes ? 77 : 5003}, {2, small_shapes ? 4101 : 262147}};
    for (size_t sh = 0; sh < 2; sh++) {
        const size_t rows = shapes[sh][0], vocab = shapes[sh][1];
        dev_batch d;
        dev_batch_make(&d, dev, rows, vocab, 1 + sh);
        const klcl_loss losses[] = {KLCL_LOSS_KL, KLCL_LOSS_JSD, KLCL_LOSS_CE, KLCL_LOSS_RKL};
        float *g_sync = malloc(rows * vocab * sizeof(float)), *g_async = malloc(rows * vocab * sizeof(float));
        float *l_sync = malloc(rows * sizeof(float)), *l_async = malloc(rows * sizeof(float)), loss_dev;
        assert_true(g_sync && g_async && l_sync && l_async);
        for (size_t k = 0; k < sizeof losses / sizeof losses[0]; k++) {
            for (int r = KLCL_REDUCTION_NONE; r <= KLCL_REDUCTION_BATCHMEAN; r++) {
                klcl_loss_desc desc = desc_for(losses[k], (klcl_reduction)r);
                klcl_result rs, ra;
                assert_int_equal(klcl_compute(dev, &desc, &d.b, &rs), KLCL_OK);
                read_back(dev, d.g, rows * vocab * sizeof(float), g_sync);
                read_back(dev, d.l, rows * sizeof(float), l_sync);
                klcl_async as = KLCL_ASYNC_INIT;
                cl_event done = NULL;
                as.event = &done;
                as.loss = d.loss;
                as.loss_offset = 2 * sizeof(float);
                if (klcl_compute_async(dev, &desc, &d.b, &as) != KLCL_OK) fail_msg("%s", klcl_last_error(dev));
                assert_non_null(done);
                assert_int_equal(clWaitForEvents(1, &done), CL_SUCCESS);
                clReleaseEvent(done);
                assert_int_equal(klcl_async_result(dev, &ra), KLCL_OK);
                read_back(dev, d.g, rows * vocab * sizeof(float), g_async);
                read_back(dev, d.l, rows * sizeof(float), l_async);
                float lb[4];
                read_back(dev, d.loss, sizeof lb, lb);
                loss_dev = lb[2];
                if (memcmp(g_sync, g_async, rows * vocab * sizeof(float)) != 0)
                    fail_msg("%s %s N=%zu: async gradient differs", klcl_loss_name(losses[k]),
                             klcl_reduction_name(desc.reduction), rows);
                assert_memory_equal(l_sync, l_async, rows * sizeof(float));
                assert_memory_equal(&rs.loss, &ra.loss, sizeof rs.loss);
                assert_int_equal(rs.rows_used, ra.rows_used);
                if (!(fabs(loss_dev - rs.loss) <= 1e-6 * fmax(1.0, fabs(rs.loss))))
                    fail_msg("%s %s N=%zu: device loss %.9g, host %.9g", klcl_loss_name(losses[k]),
                             klcl_reduction_name(desc.reduction), rows, (double)loss_dev, rs.loss);
            }
        }
        free(g_sync);
        free(g_async);
        free(l_sync);
        free(l_async);
        dev_batch_free(&d);
    }
    /* Nothing pending any more. */
    assert_int_equal(klcl_async_result(dev, NULL), KLCL_ERR_INVALID_VALUE);
}

/* The call waits for its wait list: nothing runs before the user event completes. */
static void test_async_wait_list(void **state)
{
    (void)state;
    dev_batch d;
    dev_batch_make(&d, dev, 5, 300, 2);
    float minus[5] = {-1, -1, -1, -1, -1};
    assert_int_equal(clEnqueueWriteBuffer(klcl_context_cl_queue(dev), d.l, CL_TRUE, 0, sizeof minus, minus, 0, NULL,
                                          NULL), CL_SUCCESS);
    cl_int err;
    cl_event gate = clCreateUserEvent(klcl_context_cl_context(dev), &err);
    assert_non_null(gate);
    /* A simulator that runs each command as it is enqueued would wait for the gate forever: there, open it
     * first and check only that the call accepts a wait list. */
    const int simulated = strstr(klcl_context_device_name(dev), "Oclgrind") != NULL;
    if (simulated) assert_int_equal(clSetUserEventStatus(gate, CL_COMPLETE), CL_SUCCESS);
    klcl_loss_desc desc = desc_for(KLCL_LOSS_KL, KLCL_REDUCTION_SUM);
    klcl_async as = KLCL_ASYNC_INIT;
    cl_event done = NULL;
    as.num_wait = 1;
    as.wait_list = &gate;
    as.event = &done;
    assert_int_equal(klcl_compute_async(dev, &desc, &d.b, &as), KLCL_OK);
    cl_int status = 0;
    assert_int_equal(clGetEventInfo(done, CL_EVENT_COMMAND_EXECUTION_STATUS, sizeof status, &status, NULL), CL_SUCCESS);
    if (!simulated) {
        assert_true(status != CL_COMPLETE);
        assert_int_equal(clSetUserEventStatus(gate, CL_COMPLETE), CL_SUCCESS);
    }
    assert_int_equal(clWaitForEvents(1, &done), CL_SUCCESS);
    klcl_result r;
    assert_int_equal(klcl_async_result(dev, &r), KLCL_OK);
    float l[5];
    read_back(dev, d.l, sizeof l, l);
    for (int i = 0; i < 5; i++) assert_true(l[i] >= 0.0f); /* written after the gate opened */
    clReleaseEvent(done);
    clReleaseEvent(gate);
    dev_batch_free(&d);
}

static void expect(klcl_status got, klcl_status want, klcl_context *c, const char *needle)
{
    if (got != want) fail_msg("status %d, want %d: %s", got, want, klcl_last_error(c));
    if (!strstr(klcl_last_error(c), needle)) fail_msg("message \"%s\" lacks \"%s\"", klcl_last_error(c), needle);
}

static void test_async_errors(void **state)
{
    (void)state;
    dev_batch d;
    dev_batch_make(&d, dev, 4, 50, 3);
    klcl_loss_desc desc = desc_for(KLCL_LOSS_CE, KLCL_REDUCTION_MEAN);
    klcl_async as = KLCL_ASYNC_INIT;
    expect(klcl_compute_async(dev, &desc, &d.b, NULL), KLCL_ERR_NULL_POINTER, dev, "async");
    float host[4];
    klcl_batch b = d.b;
    b.row_loss = klcl_host_tensor(host, 0);
    expect(klcl_compute_async(dev, &desc, &b, &as), KLCL_ERR_INVALID_VALUE, dev, "batch->row_loss.host");
    as.num_wait = 2;
    expect(klcl_compute_async(dev, &desc, &d.b, &as), KLCL_ERR_INVALID_VALUE, dev, "async->wait_list");
    as = (klcl_async)KLCL_ASYNC_INIT;
    as.loss = d.loss;
    as.loss_offset = 2;
    expect(klcl_compute_async(dev, &desc, &d.b, &as), KLCL_ERR_MISALIGNED, dev, "async->loss_offset");
    as.loss_offset = 16;
    expect(klcl_compute_async(dev, &desc, &d.b, &as), KLCL_ERR_BUFFER_TOO_SMALL, dev, "async->loss");
    expect(klcl_async_result(dev, NULL), KLCL_ERR_INVALID_VALUE, dev, "no asynchronous call");
    /* A label out of range in a cl_mem: found on the device, reported by klcl_async_result. */
    int32_t bad[4] = {1, 2, 50, 3};
    assert_int_equal(clEnqueueWriteBuffer(klcl_context_cl_queue(dev), d.y, CL_TRUE, 0, sizeof bad, bad, 0, NULL, NULL),
                     CL_SUCCESS);
    as.loss_offset = 0;
    assert_int_equal(klcl_compute_async(dev, &desc, &d.b, &as), KLCL_OK);
    expect(klcl_async_result(dev, NULL), KLCL_ERR_LABEL_OUT_OF_RANGE, dev, "batch->labels[2]");
    /* The CPU reference has no device to enqueue on. */
    klcl_context_options o = KLCL_CONTEXT_OPTIONS_INIT;
    o.device = "cpu";
    klcl_context *cpu = NULL;
    assert_int_equal(klcl_context_create(&o, &cpu), KLCL_OK);
    klcl_batch hb = KLCL_BATCH_INIT;
    float t[8] = {0}, s[8] = {0};
    int32_t y[2] = {0, 1};
    hb.rows = 2;
    hb.vocab = 4;
    hb.teacher = klcl_host_tensor(t, 0);
    hb.student = klcl_host_tensor(s, 0);
    hb.labels = klcl_host_tensor(y, 0);
    expect(klcl_compute_async(cpu, &desc, &hb, &as), KLCL_ERR_UNSUPPORTED, cpu, "CPU reference");
    klcl_context_destroy(cpu);
    dev_batch_free(&d);
}

/* ---------------------------------------------------------------------------------------------------- */
/* Several contexts from several threads                                                                  */

enum { THREADS = 4, CALLS = 3 };

typedef struct job {
    size_t rows, vocab;
    float *teacher, *student, *grad;
    float row_loss[64];
    double loss;
    int async;
    char error[256];
} job;

static void job_run(job *j, klcl_context *c)
{
    klcl_loss_desc desc = desc_for(j->async ? KLCL_LOSS_JSD : KLCL_LOSS_KL, KLCL_REDUCTION_MEAN);
    if (!j->async) {
        klcl_batch b = KLCL_BATCH_INIT;
        b.rows = j->rows;
        b.vocab = j->vocab;
        b.teacher = klcl_host_tensor(j->teacher, 0);
        b.student = klcl_host_tensor(j->student, 0);
        b.grad = klcl_host_tensor(j->grad, 0);
        b.row_loss = klcl_host_tensor(j->row_loss, 0);
        klcl_result r;
        if (klcl_compute(c, &desc, &b, &r) != KLCL_OK) snprintf(j->error, sizeof j->error, "%s", klcl_last_error(c));
        j->loss = r.loss;
        return;
    }
    dev_batch d;
    memset(&d, 0, sizeof d);
    cl_int err;
    const size_t n = j->rows * j->vocab * sizeof(float);
    cl_context cc = klcl_context_cl_context(c);
    cl_command_queue q = klcl_context_cl_queue(c);
    d.t = clCreateBuffer(cc, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, n, j->teacher, &err);
    d.s = clCreateBuffer(cc, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, n, j->student, &err);
    d.g = clCreateBuffer(cc, CL_MEM_READ_WRITE, n, NULL, &err);
    d.l = clCreateBuffer(cc, CL_MEM_READ_WRITE, j->rows * sizeof(float), NULL, &err);
    klcl_batch b = KLCL_BATCH_INIT;
    b.rows = j->rows;
    b.vocab = j->vocab;
    b.teacher = klcl_mem_tensor(d.t, 0, 0);
    b.student = klcl_mem_tensor(d.s, 0, 0);
    b.grad = klcl_mem_tensor(d.g, 0, 0);
    b.row_loss = klcl_mem_tensor(d.l, 0, 0);
    klcl_async as = KLCL_ASYNC_INIT;
    klcl_result r;
    if (!d.t || !d.s || !d.g || !d.l)
        snprintf(j->error, sizeof j->error, "clCreateBuffer failed");
    else if (klcl_compute_async(c, &desc, &b, &as) != KLCL_OK || klcl_async_result(c, &r) != KLCL_OK)
        snprintf(j->error, sizeof j->error, "%s", klcl_last_error(c));
    else {
        j->loss = r.loss;
        clEnqueueReadBuffer(q, d.g, CL_TRUE, 0, n, j->grad, 0, NULL, NULL);
        clEnqueueReadBuffer(q, d.l, CL_TRUE, 0, j->rows * sizeof(float), j->row_loss, 0, NULL, NULL);
    }
    cl_mem all[] = {d.t, d.s, d.g, d.l};
    for (int i = 0; i < 4; i++)
        if (all[i]) clReleaseMemObject(all[i]);
}

typedef struct worker {
    job jobs[CALLS];
    char error[256];
} worker;

static void *worker_main(void *arg)
{
    worker *w = arg;
    klcl_context_options o = KLCL_CONTEXT_OPTIONS_INIT;
    o.device = "opencl";
    o.chunk_rows = 7; /* host calls stream in chunks, from every thread at once */
    klcl_context *c = NULL;
    if (klcl_context_create(&o, &c) != KLCL_OK) {
        snprintf(w->error, sizeof w->error, "klcl_context_create failed");
        return NULL;
    }
    for (int k = 0; k < CALLS; k++) job_run(&w->jobs[k], c);
    klcl_context_destroy(c);
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    static worker workers[THREADS], expected[THREADS];
    const size_t rows = 19, vocab = small_shapes ? 91 : 2999;
    for (int t = 0; t < THREADS; t++)
        for (int k = 0; k < CALLS; k++) {
            job *j = &workers[t].jobs[k];
            memset(j, 0, sizeof *j);
            j->rows = rows;
            j->vocab = vocab;
            j->async = k == 1;
            j->teacher = malloc(rows * vocab * sizeof(float));
            j->student = malloc(rows * vocab * sizeof(float));
            j->grad = malloc(rows * vocab * sizeof(float));
            assert_true(j->teacher && j->student && j->grad);
            tu_seed(100 + (uint64_t)(t * CALLS + k));
            tu_fill_logits(j->teacher, j->student, rows, vocab, vocab);
            job *e = &expected[t].jobs[k];
            *e = *j;
            e->grad = malloc(rows * vocab * sizeof(float));
            assert_non_null(e->grad);
            job_run(e, dev); /* one thread, one context first */
            if (e->error[0]) fail_msg("%s", e->error);
        }
    /* Oclgrind's OpenCL runtime is not thread-safe (its own issue tracker says so): under the simulator the
     * workers run one after another, which still checks their kernels. */
    const int serial = strstr(klcl_context_device_name(dev), "Oclgrind") != NULL;
    pthread_t th[THREADS];
    for (int t = 0; t < THREADS; t++) {
        assert_int_equal(pthread_create(&th[t], NULL, worker_main, &workers[t]), 0);
        if (serial) assert_int_equal(pthread_join(th[t], NULL), 0);
    }
    for (int t = 0; t < THREADS && !serial; t++) assert_int_equal(pthread_join(th[t], NULL), 0);
    for (int t = 0; t < THREADS; t++) {
        if (workers[t].error[0]) fail_msg("thread %d: %s", t, workers[t].error);
        for (int k = 0; k < CALLS; k++) {
            job *j = &workers[t].jobs[k], *e = &expected[t].jobs[k];
            if (j->error[0]) fail_msg("thread %d call %d: %s", t, k, j->error);
            assert_memory_equal(&j->loss, &e->loss, sizeof j->loss);
            assert_memory_equal(j->row_loss, e->row_loss, rows * sizeof(float));
            if (memcmp(j->grad, e->grad, rows * vocab * sizeof(float)) != 0)
                fail_msg("thread %d call %d: gradient differs from the single-thread run", t, k);
            free(j->teacher);
            free(j->student);
            free(j->grad);
            free(e->grad);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_async_matches_sync),
        cmocka_unit_test(test_async_wait_list),
        cmocka_unit_test(test_async_errors),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
