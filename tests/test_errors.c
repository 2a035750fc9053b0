/* The error contract of klcl.h: every failure returns the documented status, names the argument (or the
 * failing OpenCL call) in klcl_last_error, and leaves the context usable. OpenCL failures that a healthy
 * device never produces are injected with link-time wrappers (-Wl,--wrap, see tests/CMakeLists.txt). */
#define _POSIX_C_SOURCE 200809L /* mkdtemp, setenv, unsetenv */

#include "test_util.h"

#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ------------------------------------------------------------------------------------------------------ */
/* Fault injection: the linker sends the library's (and this file's) calls to __wrap_X; __real_X is OpenCL. */

cl_int __real_clBuildProgram(cl_program, cl_uint, const cl_device_id *, const char *,
                             void(CL_CALLBACK *)(cl_program, void *), void *);
cl_mem __real_clCreateBuffer(cl_context, cl_mem_flags, size_t, void *, cl_int *);
cl_int __real_clEnqueueNDRangeKernel(cl_command_queue, cl_kernel, cl_uint, const size_t *, const size_t *,
                                     const size_t *, cl_uint, const cl_event *, cl_event *);
cl_context __real_clCreateContext(const cl_context_properties *, cl_uint, const cl_device_id *,
                                  void(CL_CALLBACK *)(const char *, const void *, size_t, void *), void *,
                                  cl_int *);

cl_int __wrap_clBuildProgram(cl_program, cl_uint, const cl_device_id *, const char *,
                             void(CL_CALLBACK *)(cl_program, void *), void *);
cl_mem __wrap_clCreateBuffer(cl_context, cl_mem_flags, size_t, void *, cl_int *);
cl_int __wrap_clEnqueueNDRangeKernel(cl_command_queue, cl_kernel, cl_uint, const size_t *, const size_t *,
                                     const size_t *, cl_uint, const cl_event *, cl_event *);
cl_context __wrap_clCreateContext(const cl_context_properties *, cl_uint, const cl_device_id *,
                                  void(CL_CALLBACK *)(const char *, const void *, size_t, void *), void *,
                                  cl_int *);

/* Let `skip` calls through, then fail the next `fail` calls. */
typedef struct fault {
    int skip;
    int fail;
} fault;

static fault f_build, f_buffer, f_launch, f_context;
static char last_build_options[1024]; /* the options of the last clBuildProgram */

static int inject(fault *f)
{
    if (f->fail <= 0) return 0;
    if (f->skip > 0) {
        f->skip--;
        return 0;
    }
    f->fail--;
    return 1;
}

cl_int __wrap_clBuildProgram(cl_program program, cl_uint num_devices, const cl_device_id *devices,
                             const char *options, void(CL_CALLBACK *notify)(cl_program, void *), void *user)
{
    snprintf(last_build_options, sizeof last_build_options, "%s", options ? options : "");
    if (inject(&f_build)) return CL_BUILD_PROGRAM_FAILURE;
    return __real_clBuildProgram(program, num_devices, devices, options, notify, user);
}

cl_mem __wrap_clCreateBuffer(cl_context context, cl_mem_flags flags, size_t size, void *host, cl_int *err)
{
    if (inject(&f_buffer)) {
        if (err) *err = CL_MEM_OBJECT_ALLOCATION_FAILURE;
        return NULL;
    }
    return __real_clCreateBuffer(context, flags, size, host, err);
}

cl_int __wrap_clEnqueueNDRangeKernel(cl_command_queue queue, cl_kernel kernel, cl_uint dims, const size_t *offset,
                                     const size_t *global, const size_t *local, cl_uint num_events,
                                     const cl_event *wait, cl_event *event)
{
    if (inject(&f_launch)) return CL_OUT_OF_RESOURCES;
    return __real_clEnqueueNDRangeKernel(queue, kernel, dims, offset, global, local, num_events, wait, event);
}

cl_context __wrap_clCreateContext(const cl_context_properties *props, cl_uint num_devices,
                                  const cl_device_id *devices,
                                  void(CL_CALLBACK *notify)(const char *, const void *, size_t, void *),
                                  void *user, cl_int *err)
{
    if (inject(&f_context)) {
        if (err) *err = CL_OUT_OF_HOST_MEMORY;
        return NULL;
    }
    return __real_clCreateContext(props, num_devices, devices, notify, user, err);
}

/* ------------------------------------------------------------------------------------------------------ */
/* Per-test cleanup: a failed test jumps out, and must not leave faults armed, its context alive, or the
 * environment changed (a bogus KLCL_DEVICE would turn the next tests into skips). */

static klcl_context *own;  /* a context a test created for itself */
static char *saved_device; /* KLCL_DEVICE at start, NULL when unset */

static void reset_faults(void)
{
    memset(&f_build, 0, sizeof f_build);
    memset(&f_buffer, 0, sizeof f_buffer);
    memset(&f_launch, 0, sizeof f_launch);
    memset(&f_context, 0, sizeof f_context);
}

static int cleanup(void **state)
{
    (void)state;
    reset_faults();
    klcl_context_destroy(own);
    own = NULL;
    if (saved_device)
        setenv("KLCL_DEVICE", saved_device, 1);
    else
        unsetenv("KLCL_DEVICE");
    unsetenv("KLCL_KERNEL_DIR");
    unsetenv("KLCL_BUILD_OPTIONS");
    return 0;
}

/* ------------------------------------------------------------------------------------------------------ */
/* Shared data and contexts                                                                                 */

enum { ROWS = 4, VOCAB = 33, MAX_ROWS = 64 };

static float teacher[MAX_ROWS * VOCAB], student[MAX_ROWS * VOCAB], grad[MAX_ROWS * VOCAB];
static float row_loss[MAX_ROWS];
static int32_t labels[MAX_ROWS];
static uint8_t mask[MAX_ROWS];

static klcl_context *dev; /* OpenCL device (PoCL here), built once for the whole suite */
static klcl_context *ref; /* CPU reference */
static double ref_loss[MAX_ROWS + 1]; /* the valid call's loss on the reference, by row count */

/* The valid call: kl at tau 2 with labels, mask, gradient and per-row losses, all on the host. */
static klcl_loss_desc valid_desc(klcl_loss loss)
{
    klcl_loss_desc d;
    assert_int_equal(klcl_loss_desc_init(&d, loss), KLCL_OK);
    d.tau = 2.0f;
    d.reduction = KLCL_REDUCTION_BATCHMEAN;
    return d;
}

static klcl_batch host_batch(size_t rows)
{
    klcl_batch b = KLCL_BATCH_INIT;
    b.rows = rows;
    b.vocab = VOCAB;
    b.teacher = klcl_host_tensor(teacher, 0);
    b.student = klcl_host_tensor(student, 0);
    b.labels = klcl_host_tensor(labels, 0);
    b.mask = klcl_host_tensor(mask, 0);
    b.grad = klcl_host_tensor(grad, 0);
    b.row_loss = klcl_host_tensor(row_loss, 0);
    return b;
}

static int group_setup(void **state)
{
    (void)state;
    /* Builds from source: a failure injected into clBuildProgram must reach the source build, not a binary
     * from the cache (tests/test_cache.c covers the cache's failures). */
    setenv("KLCL_CACHE", "off", 1);
    const char *env = getenv("KLCL_DEVICE");
    saved_device = env ? strdup(env) : NULL;
    tu_seed(20240607);
    tu_fill_logits(teacher, student, MAX_ROWS, VOCAB, VOCAB);
    for (size_t i = 0; i < MAX_ROWS; i++) {
        labels[i] = (int32_t)((i * 7) % VOCAB);
        mask[i] = 1;
    }
    klcl_context_options o = KLCL_CONTEXT_OPTIONS_INIT;
    o.device = "cpu";
    assert_int_equal(klcl_context_create(&o, &ref), KLCL_OK);
    klcl_loss_desc d = valid_desc(KLCL_LOSS_KL);
    for (size_t rows = 1; rows <= MAX_ROWS; rows++) {
        klcl_batch b = host_batch(rows);
        klcl_result r;
        assert_int_equal(klcl_compute(ref, &d, &b, &r), KLCL_OK);
        ref_loss[rows] = r.loss;
    }
    dev = tu_device_context(0); /* exits 77 without a device */
    assert_int_equal(klcl_context_prepare(dev), KLCL_OK);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    klcl_context_destroy(dev);
    klcl_context_destroy(ref);
    free(saved_device);
    return 0;
}

/* ------------------------------------------------------------------------------------------------------ */
/* Checks                                                                                                   */

/* A valid call succeeds, clears the message and gives the reference's loss. */
static void expect_usable_rows(klcl_context *ctx, size_t rows, int line)
{
    klcl_loss_desc d = valid_desc(KLCL_LOSS_KL);
    klcl_batch b = host_batch(rows);
    klcl_result r;
    klcl_status st = klcl_compute(ctx, &d, &b, &r);
    if (st != KLCL_OK)
        fail_msg("line %d: valid call after an error: %s (%s)", line, klcl_status_string(st), klcl_last_error(ctx));
    if (strcmp(klcl_last_error(ctx), "") != 0)
        fail_msg("line %d: message not cleared by a successful call: \"%s\"", line, klcl_last_error(ctx));
    if (!tu_loss_close(r.loss, ref_loss[rows]))
        fail_msg("line %d: valid call after an error gives %.9g, reference %.9g", line, r.loss, ref_loss[rows]);
}
#define EXPECT_USABLE(ctx) expect_usable_rows((ctx), ROWS, __LINE__)

/* The status is `want`, the message contains `needle`. */
static void expect_status(klcl_context *ctx, klcl_status got, klcl_status want, const char *needle, int line)
{
    const char *msg = klcl_last_error(ctx);
    if (got != want)
        fail_msg("line %d: status %d (%s), expected %d (%s); message \"%s\"", line, (int)got,
                 klcl_status_string(got), (int)want, klcl_status_string(want), msg ? msg : "(null)");
    if (!msg) fail_msg("line %d: klcl_last_error is NULL", line);
    if (!strstr(msg, needle)) fail_msg("line %d: message \"%s\" does not name \"%s\"", line, msg, needle);
}

/* klcl_compute fails with `want`, names `needle`, and the context still works. */
static void expect_error(klcl_context *ctx, const klcl_loss_desc *d, const klcl_batch *b, klcl_status want,
                         const char *needle, int line)
{
    klcl_result r;
    expect_status(ctx, klcl_compute(ctx, d, b, &r), want, needle, line);
    expect_usable_rows(ctx, ROWS, line);
}
#define EXPECT_ERROR(ctx, d, b, want, needle) expect_error((ctx), (d), (b), (want), (needle), __LINE__)

static void expect_ok(klcl_context *ctx, const klcl_loss_desc *d, const klcl_batch *b, int line)
{
    klcl_result r;
    klcl_status st = klcl_compute(ctx, d, b, &r);
    if (st != KLCL_OK)
        fail_msg("line %d: valid call failed: %s (%s)", line, klcl_status_string(st), klcl_last_error(ctx));
}
#define EXPECT_OK(ctx, d, b) expect_ok((ctx), (d), (b), __LINE__)

/* Both backends validate alike: run each argument check on both. */
static klcl_context *both(int i)
{
    return i == 0 ? ref : dev;
}

/* ------------------------------------------------------------------------------------------------------ */
/* Argument errors                                                                                          */

static void test_null_pointers(void **state)
{
    (void)state;
    klcl_loss_desc d = valid_desc(KLCL_LOSS_KL);
    klcl_batch b = host_batch(ROWS);
    klcl_result r;
    assert_int_equal(klcl_compute(NULL, &d, &b, &r), KLCL_ERR_NULL_POINTER);
    assert_string_equal(klcl_last_error(NULL), "");
    for (int c = 0; c < 2; c++) {
        klcl_context *ctx = both(c);
        EXPECT_ERROR(ctx, NULL, &b, KLCL_ERR_NULL_POINTER, "desc");
        EXPECT_ERROR(ctx, &d, NULL, KLCL_ERR_NULL_POINTER, "batch");

        klcl_batch nb = b;
        nb.student = klcl_host_tensor(NULL, 0);
        EXPECT_ERROR(ctx, &d, &nb, KLCL_ERR_NULL_POINTER, "batch->student");

        /* Every loss but ce needs the teacher. */
        for (int l = 0; l < KLCL_LOSS_COUNT; l++) {
            klcl_loss_desc dl = valid_desc((klcl_loss)l);
            nb = b;
            nb.teacher = klcl_host_tensor(NULL, 0);
            if (l == KLCL_LOSS_CE)
                EXPECT_OK(ctx, &dl, &nb);
            else
                EXPECT_ERROR(ctx, &dl, &nb, KLCL_ERR_NULL_POINTER, "batch->teacher");
        }

        /* ce and kd need labels; the others take them as optional. */
        for (int l = 0; l < KLCL_LOSS_COUNT; l++) {
            klcl_loss_desc dl = valid_desc((klcl_loss)l);
            nb = b;
            nb.labels = klcl_host_tensor(NULL, 0);
            if (l == KLCL_LOSS_CE || l == KLCL_LOSS_KD)
                EXPECT_ERROR(ctx, &dl, &nb, KLCL_ERR_NULL_POINTER, "batch->labels");
            else
                EXPECT_OK(ctx, &dl, &nb);
        }

        /* result may be NULL. */
        assert_int_equal(klcl_compute(ctx, &d, &b, NULL), KLCL_OK);
    }
}

static void test_invalid_shape(void **state)
{
    (void)state;
    klcl_loss_desc d = valid_desc(KLCL_LOSS_KL);
    for (int c = 0; c < 2; c++) {
        klcl_context *ctx = both(c);
        klcl_batch b = host_batch(ROWS);
        b.rows = 0;
        EXPECT_ERROR(ctx, &d, &b, KLCL_ERR_INVALID_SHAPE, "batch->rows");
        b = host_batch(ROWS);
        b.vocab = 0;
        EXPECT_ERROR(ctx, &d, &b, KLCL_ERR_INVALID_SHAPE, "batch->vocab");
#if SIZE_MAX > 0xFFFFFFFFu
        b = host_batch(1);
        b.vocab = (size_t)INT32_MAX + 1;
        EXPECT_ERROR(ctx, &d, &b, KLCL_ERR_INVALID_SHAPE, "batch->vocab");
#endif
        /* rows x stride past SIZE_MAX is caught before anything is read. */
        b = host_batch(ROWS);
        b.rows = SIZE_MAX / 2;
        EXPECT_ERROR(ctx, &d, &b, KLCL_ERR_INVALID_SHAPE, "batch->student");

        b = host_batch(ROWS);
        b.teacher.stride = VOCAB - 1;
        EXPECT_ERROR(ctx, &d, &b, KLCL_ERR_INVALID_SHAPE, "batch->teacher.stride");
        b = host_batch(ROWS);
        b.student.stride = VOCAB - 1;
        EXPECT_ERROR(ctx, &d, &b, KLCL_ERR_INVALID_SHAPE, "batch->student.stride");
        b = host_batch(ROWS);
        b.grad.stride = 1;
        EXPECT_ERROR(ctx, &d, &b, KLCL_ERR_INVALID_SHAPE, "batch->grad.stride");

        /* stride == vocab is contiguous and fine. */
        b = host_batch(ROWS);
        b.teacher.stride = b.student.stride = b.grad.stride = VOCAB;
        EXPECT_OK(ctx, &d, &b);
    }
}

static void test_invalid_values(void **state)
{
    (void)state;
    klcl_batch b = host_batch(ROWS);
    for (int c = 0; c < 2; c++) {
        klcl_context *ctx = both(c);
        klcl_loss_desc d;

#define BAD_VALUE(field, value, want, needle)                                                                \
    do {                                                                                                     \
        d = valid_desc(KLCL_LOSS_KL);                                                                        \
        d.field = (value);                                                                                   \
        EXPECT_ERROR(ctx, &d, &b, (want), (needle));                                                         \
    } while (0)

        BAD_VALUE(tau, 0.0f, KLCL_ERR_INVALID_VALUE, "desc->tau");
        BAD_VALUE(tau, -0.0f, KLCL_ERR_INVALID_VALUE, "desc->tau");
        BAD_VALUE(tau, -1.0f, KLCL_ERR_INVALID_VALUE, "desc->tau");
        BAD_VALUE(tau, 1e-39f, KLCL_ERR_INVALID_VALUE, "desc->tau"); /* 1/tau overflows a float */
        BAD_VALUE(softcap, -1.0f, KLCL_ERR_INVALID_VALUE, "desc->softcap");
        BAD_VALUE(beta, -0.01f, KLCL_ERR_INVALID_VALUE, "desc->beta");
        BAD_VALUE(beta, 1.01f, KLCL_ERR_INVALID_VALUE, "desc->beta");
        BAD_VALUE(lambda, -0.01f, KLCL_ERR_INVALID_VALUE, "desc->lambda");
        BAD_VALUE(lambda, 1.01f, KLCL_ERR_INVALID_VALUE, "desc->lambda");
        BAD_VALUE(alpha, -0.01f, KLCL_ERR_INVALID_VALUE, "desc->alpha");
        BAD_VALUE(alpha, 1.01f, KLCL_ERR_INVALID_VALUE, "desc->alpha");
        BAD_VALUE(label_smoothing, -0.01f, KLCL_ERR_INVALID_VALUE, "desc->label_smoothing");
        BAD_VALUE(label_smoothing, 1.01f, KLCL_ERR_INVALID_VALUE, "desc->label_smoothing");
        BAD_VALUE(z_loss, -0.01f, KLCL_ERR_INVALID_VALUE, "desc->z_loss");
        BAD_VALUE(loss, (klcl_loss)99, KLCL_ERR_INVALID_VALUE, "desc->loss");
        BAD_VALUE(loss, (klcl_loss)-1, KLCL_ERR_INVALID_VALUE, "desc->loss");
        BAD_VALUE(loss, (klcl_loss)KLCL_LOSS_COUNT, KLCL_ERR_INVALID_VALUE, "desc->loss");
        BAD_VALUE(reduction, (klcl_reduction)99, KLCL_ERR_INVALID_VALUE, "desc->reduction");
        BAD_VALUE(reduction, (klcl_reduction)-1, KLCL_ERR_INVALID_VALUE, "desc->reduction");

        /* NaN and infinities are their own status, for every float of desc. */
        const float nonfinite[] = {NAN, INFINITY, -INFINITY};
        for (size_t i = 0; i < sizeof nonfinite / sizeof nonfinite[0]; i++) {
            float v = nonfinite[i];
            BAD_VALUE(tau, v, KLCL_ERR_NONFINITE_ARG, "desc->tau");
            BAD_VALUE(softcap, v, KLCL_ERR_NONFINITE_ARG, "desc->softcap");
            BAD_VALUE(scale, v, KLCL_ERR_NONFINITE_ARG, "desc->scale");
            BAD_VALUE(beta, v, KLCL_ERR_NONFINITE_ARG, "desc->beta");
            BAD_VALUE(lambda, v, KLCL_ERR_NONFINITE_ARG, "desc->lambda");
            BAD_VALUE(alpha, v, KLCL_ERR_NONFINITE_ARG, "desc->alpha");
            BAD_VALUE(label_smoothing, v, KLCL_ERR_NONFINITE_ARG, "desc->label_smoothing");
            BAD_VALUE(z_loss, v, KLCL_ERR_NONFINITE_ARG, "desc->z_loss");
        }
#undef BAD_VALUE

        /* The closed ends of the ranges are valid (jsd at beta 0 and 1 becomes kl and rkl). */
        static const float ends[] = {0.0f, 1.0f};
        for (size_t i = 0; i < 2; i++) {
            d = valid_desc(KLCL_LOSS_JSD);
            d.beta = ends[i];
            EXPECT_OK(ctx, &d, &b);
            d = valid_desc(KLCL_LOSS_SKL);
            d.lambda = ends[i];
            EXPECT_OK(ctx, &d, &b);
            d = valid_desc(KLCL_LOSS_KD);
            d.alpha = ends[i];
            EXPECT_OK(ctx, &d, &b);
            d = valid_desc(KLCL_LOSS_CE);
            d.label_smoothing = ends[i];
            d.z_loss = ends[i];
            d.softcap = ends[i] * 30.0f;
            EXPECT_OK(ctx, &d, &b);
        }
        /* Any finite scale is accepted, negative too. */
        d = valid_desc(KLCL_LOSS_KL);
        d.scale = -2.0f;
        EXPECT_OK(ctx, &d, &b);
    }
}

/* ------------------------------------------------------------------------------------------------------ */
/* Tensors: roles, cl_mem checks                                                                            */

enum { R_TEACHER, R_STUDENT, R_LABELS, R_MASK, R_GRAD, R_ROW_LOSS, R_COUNT };

static const struct role {
    const char *name;
    size_t elem;
    int matrix;
    const void *data; /* initial contents of a cl_mem standing in for the host tensor; NULL for outputs */
} roles[R_COUNT] = {
    {"teacher", sizeof(float), 1, teacher},  {"student", sizeof(float), 1, student},
    {"labels", sizeof(int32_t), 0, labels},  {"mask", sizeof(uint8_t), 0, mask},
    {"grad", sizeof(float), 1, NULL},        {"row_loss", sizeof(float), 0, NULL},
};

static klcl_tensor *role_tensor(klcl_batch *b, int role)
{
    klcl_tensor *t[R_COUNT] = {&b->teacher, &b->student, &b->labels, &b->mask, &b->grad, &b->row_loss};
    return t[role];
}

/* Elements a role needs for ROWS rows at the given row stride. */
static size_t role_extent(int role, size_t stride)
{
    return roles[role].matrix ? (ROWS - 1) * stride + VOCAB : ROWS;
}

/* A buffer of `bytes` on the device context; inputs start with their data at byte `offset`. */
static cl_mem role_mem(int role, size_t bytes, size_t offset, size_t stride)
{
    unsigned char *init = calloc(bytes ? bytes : 1, 1);
    assert_non_null(init);
    const struct role *r = &roles[role];
    if (r->data) {
        for (size_t i = 0; i < ROWS; i++) {
            size_t n = r->matrix ? VOCAB : 1, at = offset + i * (r->matrix ? stride : 1) * r->elem;
            if (at + n * r->elem <= bytes)
                memcpy(init + at, (const unsigned char *)r->data + i * n * r->elem, n * r->elem);
        }
    }
    cl_int err = CL_SUCCESS;
    cl_mem m = clCreateBuffer(klcl_context_cl_context(dev), CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, bytes, init,
                              &err);
    free(init);
    assert_int_equal(err, CL_SUCCESS);
    assert_non_null(m);
    return m;
}

static void set_mem(klcl_batch *b, int role, cl_mem m, size_t offset, size_t stride)
{
    *role_tensor(b, role) = klcl_mem_tensor(m, offset, stride);
}

static void test_host_and_mem(void **state)
{
    (void)state;
    klcl_loss_desc d = valid_desc(KLCL_LOSS_KL);
    for (int role = 0; role < R_COUNT; role++) {
        cl_mem m = role_mem(role, role_extent(role, VOCAB) * roles[role].elem, 0, VOCAB);
        char needle[64];
        snprintf(needle, sizeof needle, "batch->%s", roles[role].name);
        for (int c = 0; c < 2; c++) {
            klcl_batch b = host_batch(ROWS);
            role_tensor(&b, role)->mem = m; /* host stays set: both */
            EXPECT_ERROR(both(c), &d, &b, KLCL_ERR_INVALID_VALUE, needle);
        }
        /* The same buffer alone is fine on the device, and unsupported on the reference. */
        klcl_batch b = host_batch(ROWS);
        set_mem(&b, role, m, 0, 0);
        EXPECT_OK(dev, &d, &b);
        EXPECT_ERROR(ref, &d, &b, KLCL_ERR_UNSUPPORTED, needle);
        clReleaseMemObject(m);
    }
}

static void test_misaligned(void **state)
{
    (void)state;
    klcl_loss_desc d = valid_desc(KLCL_LOSS_KL);
    for (int role = 0; role < R_COUNT; role++) {
        const size_t elem = roles[role].elem;
        const size_t bytes = role_extent(role, VOCAB) * elem + 8;
        char needle[64];
        snprintf(needle, sizeof needle, "batch->%s.offset", roles[role].name);
        for (size_t off = 1; off < 4; off++) {
            cl_mem m = role_mem(role, bytes, off, VOCAB);
            klcl_batch b = host_batch(ROWS);
            set_mem(&b, role, m, off, 0);
            if (off % elem)
                EXPECT_ERROR(dev, &d, &b, KLCL_ERR_MISALIGNED, needle);
            else
                EXPECT_OK(dev, &d, &b); /* the mask is bytes: any offset is aligned */
            clReleaseMemObject(m);
        }
        /* An aligned offset is fine. */
        cl_mem m = role_mem(role, bytes, 4, VOCAB);
        klcl_batch b = host_batch(ROWS);
        set_mem(&b, role, m, 4, 0);
        EXPECT_OK(dev, &d, &b);
        clReleaseMemObject(m);
    }
}

static void test_buffer_too_small(void **state)
{
    (void)state;
    klcl_loss_desc d = valid_desc(KLCL_LOSS_KL);
    for (int role = 0; role < R_COUNT; role++) {
        const size_t elem = roles[role].elem;
        char needle[64];
        snprintf(needle, sizeof needle, "batch->%s", roles[role].name);
        /* Strides: contiguous, and wider than vocab for the matrices. */
        const size_t strides[2] = {VOCAB, roles[role].matrix ? VOCAB + 3 : VOCAB};
        for (int s = 0; s < 2; s++) {
            const size_t need = role_extent(role, strides[s]) * elem;
            const size_t stride = s ? strides[s] : 0;
            /* Exactly the extent fits, with and without an offset. */
            cl_mem m = role_mem(role, need, 0, strides[s]);
            klcl_batch b = host_batch(ROWS);
            set_mem(&b, role, m, 0, stride);
            EXPECT_OK(dev, &d, &b);
            /* One element short. */
            clReleaseMemObject(m);
            m = role_mem(role, need - elem, 0, strides[s]);
            set_mem(&b, role, m, 0, stride);
            EXPECT_ERROR(dev, &d, &b, KLCL_ERR_BUFFER_TOO_SMALL, needle);
            clReleaseMemObject(m);
            /* Large enough without the offset, too small with it; and an offset past the end. */
            m = role_mem(role, need + 4, 4, strides[s]);
            set_mem(&b, role, m, 4, stride);
            EXPECT_OK(dev, &d, &b);
            set_mem(&b, role, m, 8, stride);
            EXPECT_ERROR(dev, &d, &b, KLCL_ERR_BUFFER_TOO_SMALL, needle);
            set_mem(&b, role, m, need + 64, stride);
            EXPECT_ERROR(dev, &d, &b, KLCL_ERR_BUFFER_TOO_SMALL, needle);
            clReleaseMemObject(m);
        }
    }
}

/* ------------------------------------------------------------------------------------------------------ */
/* Labels                                                                                                   */

/* One call with labels `y` and mask `m`, the labels on the host (mem = 0) or in a cl_mem (mem = 1). */
static klcl_status label_call(klcl_context *ctx, const klcl_loss_desc *d, const int32_t *y, const uint8_t *m,
                              int mem)
{
    klcl_batch b = host_batch(ROWS);
    b.labels = klcl_host_tensor(y, 0);
    b.mask = klcl_host_tensor(m, 0);
    cl_mem buf = NULL;
    if (mem) {
        cl_int err;
        buf = clCreateBuffer(klcl_context_cl_context(ctx), CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR,
                             ROWS * sizeof *y, (void *)y, &err);
        assert_int_equal(err, CL_SUCCESS);
        b.labels = klcl_mem_tensor(buf, 0, 0);
    }
    klcl_result r;
    klcl_status st = klcl_compute(ctx, d, &b, &r);
    if (buf) clReleaseMemObject(buf);
    return st;
}

static void test_labels(void **state)
{
    (void)state;
    /* kl takes optional labels, ce and kd need them: all three check their range. */
    const klcl_loss losses[] = {KLCL_LOSS_CE, KLCL_LOSS_KD, KLCL_LOSS_KL};
    const uint8_t ones[ROWS] = {1, 1, 1, 1};
    /* ctx 0: reference, host labels; ctx 1: device, host labels; ctx 2: device, cl_mem labels. */
    for (int c = 0; c < 3; c++) {
        klcl_context *ctx = c == 0 ? ref : dev;
        const int mem = c == 2;
        for (size_t li = 0; li < sizeof losses / sizeof losses[0]; li++) {
            klcl_loss_desc d = valid_desc(losses[li]);
            const struct {
                int32_t y[ROWS];
                klcl_status want;
                const char *needle;
            } cases[] = {
                {{0, 1, 2, VOCAB - 1}, KLCL_OK, ""},
                {{0, 1, 2, VOCAB}, KLCL_ERR_LABEL_OUT_OF_RANGE, "batch->labels[3]"},
                {{0, 1, 2, INT32_MAX}, KLCL_ERR_LABEL_OUT_OF_RANGE, "batch->labels[3]"},
                {{0, 1, -1, 2}, KLCL_ERR_LABEL_OUT_OF_RANGE, "batch->labels[2]"},
                {{0, INT32_MIN, 2, 3}, KLCL_ERR_LABEL_OUT_OF_RANGE, "batch->labels[1]"},
                {{0, VOCAB + 5, 2, -7}, KLCL_ERR_LABEL_OUT_OF_RANGE, "batch->labels[1]"}, /* the first */
                {{-100, 1, -100, 2}, KLCL_OK, ""},                                      /* ignore_index */
            };
            for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
                klcl_status st = label_call(ctx, &d, cases[k].y, ones, mem);
                if (cases[k].want == KLCL_OK) {
                    if (st != KLCL_OK)
                        fail_msg("ctx %d loss %s case %zu: %s (%s)", c, klcl_loss_name(d.loss), k,
                                 klcl_status_string(st), klcl_last_error(ctx));
                } else {
                    expect_status(ctx, st, cases[k].want, cases[k].needle, __LINE__);
                    EXPECT_USABLE(ctx);
                }
            }
            /* A negative label is fine when it is the ignore_index in use. */
            klcl_loss_desc d1 = d;
            d1.ignore_index = -1;
            const int32_t y1[ROWS] = {0, -1, 2, 3};
            assert_int_equal(label_call(ctx, &d1, y1, ones, mem), KLCL_OK);
            const int32_t y2[ROWS] = {0, -100, 2, 3}; /* now -100 is just out of range */
            expect_status(ctx, label_call(ctx, &d1, y2, ones, mem), KLCL_ERR_LABEL_OUT_OF_RANGE, "batch->labels[1]",
                          __LINE__);
            /* A masked-out row still has to carry a valid label (the contract has no exception). */
            const int32_t y3[ROWS] = {0, 1, 2, VOCAB + 1};
            const uint8_t m3[ROWS] = {1, 1, 1, 0};
            expect_status(ctx, label_call(ctx, &d, y3, m3, mem), KLCL_ERR_LABEL_OUT_OF_RANGE, "batch->labels[3]",
                          __LINE__);
            EXPECT_USABLE(ctx);
        }
    }
}

/* ------------------------------------------------------------------------------------------------------ */
/* Contexts, names, statuses                                                                                */

static void expect_no_context(const klcl_context_options *o, klcl_status want, int line)
{
    klcl_context *out = (klcl_context *)&out; /* not NULL: the call must clear it */
    klcl_status st = klcl_context_create(o, &out);
    if (st != want)
        fail_msg("line %d: klcl_context_create gives %d (%s), expected %d", line, (int)st, klcl_status_string(st),
                 (int)want);
    if (out != NULL) fail_msg("line %d: *out is not NULL after a failed klcl_context_create", line);
}

static void test_context_errors(void **state)
{
    (void)state;
    klcl_context_options o = KLCL_CONTEXT_OPTIONS_INIT;
    o.device = "no-such-device-xyz";
    expect_no_context(&o, KLCL_ERR_NO_DEVICE, __LINE__);
    o.device = "9:9";
    expect_no_context(&o, KLCL_ERR_NO_DEVICE, __LINE__);
    o.device = "65535:0";
    expect_no_context(&o, KLCL_ERR_NO_DEVICE, __LINE__);

    /* The same name through KLCL_DEVICE, with options NULL (cleanup() restores the variable). */
    setenv("KLCL_DEVICE", "no-such-device-xyz", 1);
    expect_no_context(NULL, KLCL_ERR_NO_DEVICE, __LINE__);

    /* A context without a queue; and one that is not the queue's. */
    klcl_context_options a = KLCL_CONTEXT_OPTIONS_INIT;
    a.cl_ctx = klcl_context_cl_context(dev);
    expect_no_context(&a, KLCL_ERR_INVALID_VALUE, __LINE__);
    cl_device_id device;
    assert_int_equal(clGetCommandQueueInfo(klcl_context_cl_queue(dev), CL_QUEUE_DEVICE, sizeof device, &device, NULL),
                     CL_SUCCESS);
    cl_int err;
    cl_context other = clCreateContext(NULL, 1, &device, NULL, NULL, &err);
    assert_int_equal(err, CL_SUCCESS);
    a.cl_ctx = other;
    a.queue = klcl_context_cl_queue(dev);
    expect_no_context(&a, KLCL_ERR_INVALID_VALUE, __LINE__);
    clReleaseContext(other);
    /* Adopting the queue, with or without its own context, works. */
    for (int with_ctx = 0; with_ctx < 2; with_ctx++) {
        a.cl_ctx = with_ctx ? klcl_context_cl_context(dev) : NULL;
        assert_int_equal(klcl_context_create(&a, &own), KLCL_OK);
        EXPECT_USABLE(own);
        klcl_context_destroy(own);
        own = NULL;
    }
    EXPECT_USABLE(dev); /* the adopted objects were only released, not destroyed */

    assert_int_equal(klcl_context_create(NULL, NULL), KLCL_ERR_NULL_POINTER);
    o.device = "cpu";
    assert_int_equal(klcl_context_create(&o, NULL), KLCL_ERR_NULL_POINTER);
    klcl_context_destroy(NULL);

    assert_int_equal(klcl_context_prepare(NULL), KLCL_ERR_NULL_POINTER);
    assert_int_equal(klcl_context_prepare(ref), KLCL_OK);
    assert_string_equal(klcl_last_error(NULL), "");
    assert_string_equal(klcl_build_log(NULL), "");
    assert_non_null(klcl_build_log(ref));
    assert_non_null(klcl_build_log(dev));
    assert_null(klcl_context_cl_context(ref));
    assert_null(klcl_context_cl_queue(ref));

    size_t n = 0;
    assert_int_equal(klcl_list_devices(NULL, 0, NULL), KLCL_ERR_NULL_POINTER);
    assert_int_equal(klcl_list_devices(NULL, 3, &n), KLCL_ERR_NULL_POINTER);
    assert_int_equal(klcl_list_devices(NULL, 0, &n), KLCL_OK);
    assert_true(n >= 1);
}

static void test_names_and_statuses(void **state)
{
    (void)state;
    /* OpenCL's codes pass through as negative statuses: the type must be signed. */
    klcl_status cl_code = (klcl_status)CL_OUT_OF_RESOURCES;
    assert_true(cl_code < 0);
    const char *seen[KLCL_ERR_NONFINITE_ARG + 1];
    for (int s = KLCL_OK; s <= KLCL_ERR_NONFINITE_ARG; s++) {
        const char *str = klcl_status_string(s);
        assert_non_null(str);
        assert_true(str[0] != '\0');
        for (int t = 0; t < s; t++) assert_string_not_equal(str, seen[t]); /* each its own */
        seen[s] = str;
    }
    const int others[] = {CL_BUILD_PROGRAM_FAILURE, CL_MEM_OBJECT_ALLOCATION_FAILURE, CL_OUT_OF_RESOURCES,
                          CL_OUT_OF_HOST_MEMORY, CL_DEVICE_NOT_FOUND, CL_INVALID_VALUE, CL_INVALID_KERNEL_ARGS,
                          -1001, -9999, -70, 12, 99, 12345, INT32_MAX, INT32_MIN};
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
        const char *str = klcl_status_string(others[i]);
        assert_non_null(str);
        assert_true(str[0] != '\0');
    }

    klcl_loss loss = KLCL_LOSS_KD;
    klcl_reduction red = KLCL_REDUCTION_SUM;
    assert_int_equal(klcl_loss_from_name("no-such-loss", &loss), KLCL_ERR_INVALID_VALUE);
    assert_int_equal(klcl_loss_from_name("", &loss), KLCL_ERR_INVALID_VALUE);
    assert_int_equal(klcl_loss_from_name("kl ", &loss), KLCL_ERR_INVALID_VALUE);
    assert_int_equal(klcl_reduction_from_name("average", &red), KLCL_ERR_INVALID_VALUE);
    assert_int_equal(klcl_reduction_from_name("", &red), KLCL_ERR_INVALID_VALUE);
    assert_int_equal(klcl_loss_from_name(NULL, &loss), KLCL_ERR_NULL_POINTER);
    assert_int_equal(klcl_loss_from_name("kl", NULL), KLCL_ERR_NULL_POINTER);
    assert_int_equal(klcl_reduction_from_name(NULL, &red), KLCL_ERR_NULL_POINTER);
    assert_int_equal(klcl_reduction_from_name("sum", NULL), KLCL_ERR_NULL_POINTER);
    assert_null(klcl_loss_name((klcl_loss)99));
    assert_null(klcl_loss_name((klcl_loss)-1));
    assert_null(klcl_reduction_name((klcl_reduction)99));
    /* Round trip of every valid name, so the failures above are about the names. */
    for (int l = 0; l < KLCL_LOSS_COUNT; l++) {
        assert_int_equal(klcl_loss_from_name(klcl_loss_name((klcl_loss)l), &loss), KLCL_OK);
        assert_int_equal(loss, l);
    }
    for (int r = KLCL_REDUCTION_NONE; r <= KLCL_REDUCTION_BATCHMEAN; r++) {
        assert_int_equal(klcl_reduction_from_name(klcl_reduction_name((klcl_reduction)r), &red), KLCL_OK);
        assert_int_equal(red, r);
    }

    klcl_loss_desc d;
    assert_int_equal(klcl_loss_desc_init(NULL, KLCL_LOSS_KL), KLCL_ERR_NULL_POINTER);
    assert_int_equal(klcl_loss_desc_init(&d, (klcl_loss)99), KLCL_ERR_INVALID_VALUE);
    assert_int_equal(klcl_loss_desc_init(&d, (klcl_loss)-1), KLCL_ERR_INVALID_VALUE);
}

/* klcl_reference_row validates like klcl_compute. */
static void test_reference_row_errors(void **state)
{
    (void)state;
    klcl_loss_desc d = valid_desc(KLCL_LOSS_KL), ce = valid_desc(KLCL_LOSS_CE);
    double loss, g[VOCAB];
    assert_int_equal(klcl_reference_row(NULL, VOCAB, teacher, student, 0, &loss, g, NULL, NULL),
                     KLCL_ERR_NULL_POINTER);
    assert_int_equal(klcl_reference_row(&d, VOCAB, teacher, NULL, 0, &loss, g, NULL, NULL), KLCL_ERR_NULL_POINTER);
    assert_int_equal(klcl_reference_row(&d, VOCAB, NULL, student, 0, &loss, g, NULL, NULL), KLCL_ERR_NULL_POINTER);
    assert_int_equal(klcl_reference_row(&d, VOCAB, teacher, student, 0, NULL, g, NULL, NULL), KLCL_ERR_NULL_POINTER);
    assert_int_equal(klcl_reference_row(&d, 0, teacher, student, 0, &loss, g, NULL, NULL), KLCL_ERR_INVALID_SHAPE);
    assert_int_equal(klcl_reference_row(&ce, VOCAB, NULL, student, VOCAB, &loss, g, NULL, NULL),
                     KLCL_ERR_LABEL_OUT_OF_RANGE);
    assert_int_equal(klcl_reference_row(&ce, VOCAB, NULL, student, -1, &loss, g, NULL, NULL),
                     KLCL_ERR_LABEL_OUT_OF_RANGE);
    assert_int_equal(klcl_reference_row(&ce, VOCAB, NULL, student, 3, &loss, g, NULL, NULL), KLCL_OK);
    d.tau = 0.0f;
    assert_int_equal(klcl_reference_row(&d, VOCAB, teacher, student, 0, &loss, g, NULL, NULL),
                     KLCL_ERR_INVALID_VALUE);
    d.tau = NAN;
    assert_int_equal(klcl_reference_row(&d, VOCAB, teacher, student, 0, &loss, g, NULL, NULL),
                     KLCL_ERR_NONFINITE_ARG);
}

/* ------------------------------------------------------------------------------------------------------ */
/* Injected OpenCL failures                                                                                 */

static void test_build_failure(void **state)
{
    (void)state;
    klcl_context *ctx = own = tu_device_context(0);
    f_build.fail = 1;
    expect_status(ctx, klcl_context_prepare(ctx), CL_BUILD_PROGRAM_FAILURE, "clBuildProgram", __LINE__);
    assert_int_equal(f_build.fail, 0);
    assert_non_null(klcl_build_log(ctx));
    (void)strlen(klcl_build_log(ctx)); /* readable */
    /* The failure is kept: klcl_compute on the context reports it, naming the call that failed. */
    klcl_loss_desc d = valid_desc(KLCL_LOSS_KL);
    klcl_batch b = host_batch(ROWS);
    klcl_result r;
    expect_status(ctx, klcl_compute(ctx, &d, &b, &r), CL_BUILD_PROGRAM_FAILURE, "clBuildProgram", __LINE__);
    expect_status(ctx, klcl_context_prepare(ctx), CL_BUILD_PROGRAM_FAILURE, "clBuildProgram", __LINE__);
    /* Other contexts are unaffected. */
    EXPECT_USABLE(dev);
}

/* KLCL_BUILD_OPTIONS reaches every build after klcl's own options; an option the compiler refuses fails
 * the build, naming clBuildProgram; one too long fails before any build, naming the variable. */
static void test_build_options(void **state)
{
    (void)state;
    setenv("KLCL_BUILD_OPTIONS", "-cl-mad-enable", 1);
    klcl_context *ctx = own = tu_device_context(0);
    assert_int_equal(klcl_context_prepare(ctx), KLCL_OK);
    const size_t n = strlen(last_build_options);
    if (n < 15 || strcmp(last_build_options + n - 15, " -cl-mad-enable") != 0 ||
        strstr(last_build_options, "-DKLCL_WG=") == NULL)
        fail_msg("build options \"%s\" do not end with KLCL_BUILD_OPTIONS", last_build_options);
    EXPECT_USABLE(ctx);
    klcl_context_destroy(own);

    setenv("KLCL_BUILD_OPTIONS", "-klcl-no-such-option", 1);
    ctx = own = tu_device_context(0);
    klcl_status st = klcl_context_prepare(ctx);
    if (st != CL_INVALID_BUILD_OPTIONS && st != CL_BUILD_PROGRAM_FAILURE)
        fail_msg("an unknown build option gave status %d (%s)", (int)st, klcl_last_error(ctx));
    expect_status(ctx, st, st, "clBuildProgram", __LINE__);
    klcl_context_destroy(own);

    char big[257]; /* 256 characters: one more than README allows */
    memset(big, 'x', sizeof big - 1);
    big[0] = '-';
    big[sizeof big - 1] = '\0';
    setenv("KLCL_BUILD_OPTIONS", big, 1);
    ctx = own = tu_device_context(0);
    expect_status(ctx, klcl_context_prepare(ctx), KLCL_ERR_INVALID_VALUE, "KLCL_BUILD_OPTIONS", __LINE__);
    klcl_loss_desc d = valid_desc(KLCL_LOSS_KL);
    klcl_batch b = host_batch(ROWS);
    klcl_result r;
    expect_status(ctx, klcl_compute(ctx, &d, &b, &r), KLCL_ERR_INVALID_VALUE, "KLCL_BUILD_OPTIONS", __LINE__);
    /* Read again at the next build: unset, the same context builds and computes. */
    unsetenv("KLCL_BUILD_OPTIONS");
    assert_int_equal(klcl_context_prepare(ctx), KLCL_OK);
    EXPECT_USABLE(ctx);
}

static void test_allocation_failure(void **state)
{
    (void)state;
    klcl_context *ctx = own = tu_device_context(0);
    assert_int_equal(klcl_context_prepare(ctx), KLCL_OK);
    /* Fail the k-th allocation of a call, k = 0, 1, ... until a call makes fewer. Rows grow each round so
     * that every scratch buffer is allocated again. */
    size_t k;
    for (k = 0; k < 16; k++) {
        const size_t rows = ROWS * (k + 1);
        assert_true(rows + ROWS <= MAX_ROWS);
        f_buffer.skip = (int)k;
        f_buffer.fail = 1;
        klcl_loss_desc d = valid_desc(KLCL_LOSS_KL);
        klcl_batch b = host_batch(rows);
        klcl_result r;
        klcl_status st = klcl_compute(ctx, &d, &b, &r);
        if (f_buffer.fail == 1) { /* the call allocated fewer than k + 1 buffers */
            assert_int_equal(st, KLCL_OK);
            break;
        }
        expect_status(ctx, st, CL_MEM_OBJECT_ALLOCATION_FAILURE, "clCreateBuffer", __LINE__);
        expect_usable_rows(ctx, rows, __LINE__);
        expect_usable_rows(ctx, rows, __LINE__);
    }
    assert_true(k >= 2); /* at least the uploads were allocated */
}

/* A device context built with the environment variable `name` set to `value`, which is then restored (the
 * strategy settings are read when the kernels are built). */
static klcl_context *context_with_env(const char *name, const char *value)
{
    const char *was = getenv(name);
    char *saved = was ? strdup(was) : NULL;
    setenv(name, value, 1);
    klcl_context *c = tu_device_context(0);
    klcl_status st = klcl_context_prepare(c);
    if (saved)
        setenv(name, saved, 1);
    else
        unsetenv(name);
    free(saved);
    assert_int_equal(st, KLCL_OK);
    return c;
}

/* Every kernel launch of a `loss` call fails in turn, the k-th call failing its k-th launch: each failure is
 * reported and leaves the context usable, and the call with no k-th launch succeeds. Returns the launches
 * a call makes. */
static int launches_fail_in_turn(klcl_context *ctx, klcl_loss loss)
{
    int k = 0;
    for (;; k++) {
        f_launch.skip = k;
        f_launch.fail = 1;
        klcl_loss_desc d = valid_desc(loss);
        klcl_batch b = host_batch(ROWS);
        klcl_result r;
        klcl_status st = klcl_compute(ctx, &d, &b, &r);
        if (f_launch.fail == 1) { /* the call made k launches */
            reset_faults();
            assert_int_equal(st, KLCL_OK);
            break;
        }
        expect_status(ctx, st, CL_OUT_OF_RESOURCES, "clEnqueueNDRangeKernel", __LINE__);
        EXPECT_USABLE(ctx);
    }
    return k;
}

static void test_launch_failure(void **state)
{
    (void)state;
    /* With the gradient written by the row kernel (fused, CPU devices' default) a call makes one launch;
     * with the separate gradient kernel (GPUs' default), launch 0 is the row kernel and launch 1 the
     * gradient kernel (ROWS rows: one launch each). */
    for (int fused = 1; fused >= 0; fused--) {
        setenv("KLCL_FUSE_GRAD", fused ? "1" : "0", 1);
        klcl_context *ctx = own = tu_device_context(0);
        assert_int_equal(klcl_context_prepare(ctx), KLCL_OK); /* the setting is read when the kernels build */
        unsetenv("KLCL_FUSE_GRAD");
        for (int k = 0; k < (fused ? 1 : 2); k++) {
            f_launch.skip = k;
            f_launch.fail = 1;
            klcl_loss_desc d = valid_desc(KLCL_LOSS_KL);
            klcl_batch b = host_batch(ROWS);
            klcl_result r;
            expect_status(ctx, klcl_compute(ctx, &d, &b, &r), CL_OUT_OF_RESOURCES, "clEnqueueNDRangeKernel",
                          __LINE__);
            assert_int_equal(f_launch.fail, 0);
            EXPECT_USABLE(ctx);
        }
        klcl_context_destroy(ctx);
        own = NULL;
    }
    /* A split row: jsd's parts and merge for pass 1, again for pass 2, then the gradient kernel (a split row's
     * gradient always comes from it). */
    klcl_context *split = context_with_env("KLCL_ROW_SPLIT", "2");
    own = split;
    size_t team = 0, parts = 0;
    assert_int_equal(klcl_context_row_strategy(split, ROWS, VOCAB, &team, &parts), KLCL_OK);
    assert_int_equal(parts, 2);
    assert_int_equal(launches_fail_in_turn(split, KLCL_LOSS_JSD), 5);
}

static void test_create_context_failure(void **state)
{
    (void)state;
    klcl_context_options o = KLCL_CONTEXT_OPTIONS_INIT;
    o.device = "opencl";
    f_context.fail = 1;
    expect_no_context(&o, CL_OUT_OF_HOST_MEMORY, __LINE__);
    assert_int_equal(f_context.fail, 0);
    /* The next one works. */
    assert_int_equal(klcl_context_create(&o, &own), KLCL_OK);
    assert_non_null(own);
}

/* ------------------------------------------------------------------------------------------------------ */
/* KLCL_KERNEL_DIR: a real compiler error, and a folder that is not there                                   */

static char kernel_dir[64];

static void write_file(const char *name, const char *text)
{
    char path[128];
    snprintf(path, sizeof path, "%s/%s", kernel_dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

static int kernel_dir_setup(void **state)
{
    (void)state;
    snprintf(kernel_dir, sizeof kernel_dir, "/tmp/klcl-test-errors-XXXXXX");
    return mkdtemp(kernel_dir) ? 0 : -1;
}

static int kernel_dir_teardown(void **state)
{
    const char *names[] = {"common.cl", "losses.cl", "sparse.cl", "convert.cl"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char path[128];
        snprintf(path, sizeof path, "%s/%s", kernel_dir, names[i]);
        unlink(path);
    }
    rmdir(kernel_dir);
    return cleanup(state);
}

static void test_kernel_dir_syntax_error(void **state)
{
    (void)state;
    write_file("common.cl", "/* empty */\n");
    write_file("losses.cl", "__kernel void broken( {\n");
    write_file("sparse.cl", "/* empty */\n");
    write_file("convert.cl", "/* empty */\n");
    assert_int_equal(setenv("KLCL_KERNEL_DIR", kernel_dir, 1), 0);
    klcl_context *ctx = own = tu_device_context(0);
    expect_status(ctx, klcl_context_prepare(ctx), CL_BUILD_PROGRAM_FAILURE, "clBuildProgram", __LINE__);
    const char *log = klcl_build_log(ctx);
    assert_non_null(log);
    if (strlen(log) == 0) fail_msg("empty build log after a compiler error");
    klcl_loss_desc d = valid_desc(KLCL_LOSS_KL);
    klcl_batch b = host_batch(ROWS);
    klcl_result r;
    expect_status(ctx, klcl_compute(ctx, &d, &b, &r), CL_BUILD_PROGRAM_FAILURE, "clBuildProgram", __LINE__);
}

static void test_kernel_dir_missing(void **state)
{
    (void)state;
    char missing[128];
    snprintf(missing, sizeof missing, "%s/no-such-folder", kernel_dir);
    assert_int_equal(setenv("KLCL_KERNEL_DIR", missing, 1), 0);
    klcl_context *ctx = own = tu_device_context(0);
    expect_status(ctx, klcl_context_prepare(ctx), KLCL_ERR_KERNEL_SOURCE, missing, __LINE__);
    klcl_loss_desc d = valid_desc(KLCL_LOSS_KL);
    klcl_batch b = host_batch(ROWS);
    klcl_result r;
    expect_status(ctx, klcl_compute(ctx, &d, &b, &r), KLCL_ERR_KERNEL_SOURCE, missing, __LINE__);

    /* A folder with common.cl only: the message names the file that is missing. */
    write_file("common.cl", "/* empty */\n");
    assert_int_equal(setenv("KLCL_KERNEL_DIR", kernel_dir, 1), 0);
    expect_status(ctx, klcl_context_prepare(ctx), KLCL_ERR_KERNEL_SOURCE, "losses.cl", __LINE__);

    /* Not kept: once the sources are readable (embedded again) the same context builds and computes. */
    unsetenv("KLCL_KERNEL_DIR");
    assert_int_equal(klcl_context_prepare(ctx), KLCL_OK);
    EXPECT_USABLE(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_null_pointers, cleanup),
        cmocka_unit_test_teardown(test_invalid_shape, cleanup),
        cmocka_unit_test_teardown(test_invalid_values, cleanup),
        cmocka_unit_test_teardown(test_host_and_mem, cleanup),
        cmocka_unit_test_teardown(test_misaligned, cleanup),
        cmocka_unit_test_teardown(test_buffer_too_small, cleanup),
        cmocka_unit_test_teardown(test_labels, cleanup),
        cmocka_unit_test_teardown(test_context_errors, cleanup),
        cmocka_unit_test_teardown(test_names_and_statuses, cleanup),
        cmocka_unit_test_teardown(test_reference_row_errors, cleanup),
        cmocka_unit_test_teardown(test_build_failure, cleanup),
        cmocka_unit_test_teardown(test_build_options, cleanup),
        cmocka_unit_test_teardown(test_allocation_failure, cleanup),
        cmocka_unit_test_teardown(test_launch_failure, cleanup),
        cmocka_unit_test_teardown(test_create_context_failure, cleanup),
        cmocka_unit_test_setup_teardown(test_kernel_dir_syntax_error, kernel_dir_setup, kernel_dir_teardown),
        cmocka_unit_test_setup_teardown(test_kernel_dir_missing, kernel_dir_setup, kernel_dir_teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
