/* Device selection: indices, name substrings, KLCL_DEVICE, the CPU fallback, and a platform that fails to
 * list its devices (a fake one injected ahead of the real ones at link time), which must be skipped. */
#include "test_util.h"

#include <ctype.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

cl_int __real_clGetPlatformIDs(cl_uint, cl_platform_id *, cl_uint *);
cl_int __real_clGetDeviceIDs(cl_platform_id, cl_device_type, cl_uint, cl_device_id *, cl_uint *);
cl_int __wrap_clGetPlatformIDs(cl_uint, cl_platform_id *, cl_uint *);
cl_int __wrap_clGetDeviceIDs(cl_platform_id, cl_device_type, cl_uint, cl_device_id *, cl_uint *);

enum { REAL, BROKEN_PLATFORM_FIRST, NO_PLATFORM };
static int mode = REAL;
static cl_platform_id const broken = (cl_platform_id)(uintptr_t)0x7e57;

cl_int __wrap_clGetPlatformIDs(cl_uint n, cl_platform_id *ids, cl_uint *count)
{
    if (mode == NO_PLATFORM) return -1001; /* CL_PLATFORM_NOT_FOUND_KHR, as the ICD loader answers */
    if (mode == REAL) return __real_clGetPlatformIDs(n, ids, count);
    cl_platform_id real[16];
    cl_uint nr = 0;
    cl_int err = __real_clGetPlatformIDs(16, real, &nr);
    if (err != CL_SUCCESS) return err;
    if (count) *count = nr + 1;
    if (ids && n > 0) {
        ids[0] = broken;
        for (cl_uint i = 0; i < nr && i + 1 < n; i++) ids[i + 1] = real[i];
    }
    return CL_SUCCESS;
}

cl_int __wrap_clGetDeviceIDs(cl_platform_id p, cl_device_type type, cl_uint n, cl_device_id *ids, cl_uint *count)
{
    if (p == broken) return CL_INVALID_PLATFORM;
    return __real_clGetDeviceIDs(p, type, n, ids, count);
}

static int reset(void **state)
{
    (void)state;
    mode = REAL;
    unsetenv("KLCL_DEVICE");
    return 0;
}

static klcl_status open_ctx(const char *spec, klcl_context **out)
{
    klcl_context_options o = KLCL_CONTEXT_OPTIONS_INIT;
    o.device = spec;
    return klcl_context_create(&o, out);
}

/* The first device, or a failure that names the missing device (CI always has one). */
static klcl_device_info first_device(void)
{
    klcl_device_info info[4];
    size_t n = 0;
    assert_int_equal(klcl_list_devices(info, 4, &n), KLCL_OK);
    if (n == 0) {
        const char *ci = getenv("CI");
        if (ci && *ci) fail_msg("no OpenCL device found, and CI must have one");
        exit(77);
    }
    return info[0];
}

static void test_index_and_names(void **state)
{
    (void)state;
    klcl_device_info d = first_device();
    klcl_context *ctx = NULL;
    assert_int_equal(open_ctx(d.id, &ctx), KLCL_OK);
    assert_string_equal(klcl_context_device_name(ctx), d.name);
    klcl_context_destroy(ctx);

    /* A substring of the device name, in another case, selects it. */
    char sub[8] = {0};
    for (size_t i = 0; i < 4 && d.name[i + 1]; i++) sub[i] = (char)toupper((unsigned char)d.name[i + 1]);
    assert_int_equal(open_ctx(sub, &ctx), KLCL_OK);
    assert_false(klcl_context_is_reference(ctx));
    klcl_context_destroy(ctx);
    /* So does a substring of the platform name. */
    char psub[8] = {0};
    memcpy(psub, d.platform_name, 5);
    assert_int_equal(open_ctx(psub, &ctx), KLCL_OK);
    klcl_context_destroy(ctx);

    assert_int_equal(open_ctx("cpu", &ctx), KLCL_OK);
    assert_true(klcl_context_is_reference(ctx));
    assert_string_equal(klcl_context_device_name(ctx), "cpu reference");
    klcl_context_destroy(ctx);
}

static void test_environment_variable(void **state)
{
    (void)state;
    klcl_device_info d = first_device();
    klcl_context *ctx = NULL;
    setenv("KLCL_DEVICE", "cpu", 1);
    assert_int_equal(klcl_context_create(NULL, &ctx), KLCL_OK);
    assert_true(klcl_context_is_reference(ctx));
    klcl_context_destroy(ctx);
    setenv("KLCL_DEVICE", d.id, 1);
    assert_int_equal(klcl_context_create(NULL, &ctx), KLCL_OK);
    assert_false(klcl_context_is_reference(ctx));
    klcl_context_destroy(ctx);
    /* An explicit option wins over the environment. */
    assert_int_equal(open_ctx("cpu", &ctx), KLCL_OK);
    assert_true(klcl_context_is_reference(ctx));
    klcl_context_destroy(ctx);
}

static void test_broken_platform_is_skipped(void **state)
{
    (void)state;
    first_device();
    size_t before = 0, after = 0;
    assert_int_equal(klcl_list_devices(NULL, 0, &before), KLCL_OK);
    mode = BROKEN_PLATFORM_FIRST;
    klcl_device_info info[8];
    assert_int_equal(klcl_list_devices(info, 8, &after), KLCL_OK);
    assert_int_equal(after, before); /* skipped, not fatal, and nothing invented */
    assert_int_equal(info[0].platform_index, 1); /* indices still name the loader's platforms */
    assert_string_equal(info[0].id, "1:0");
    klcl_context *ctx = NULL;
    assert_int_equal(open_ctx("opencl", &ctx), KLCL_OK);
    assert_false(klcl_context_is_reference(ctx));
    klcl_context_destroy(ctx);
    assert_int_equal(open_ctx("1:0", &ctx), KLCL_OK);
    klcl_context_destroy(ctx);
    assert_int_equal(open_ctx("0:0", &ctx), KLCL_ERR_NO_DEVICE);
    assert_null(ctx);
}

static void test_no_platform_falls_back_to_reference(void **state)
{
    (void)state;
    mode = NO_PLATFORM;
    size_t n = 99;
    assert_int_equal(klcl_list_devices(NULL, 0, &n), KLCL_OK);
    assert_int_equal(n, 0);
    klcl_context *ctx = NULL;
    assert_int_equal(klcl_context_create(NULL, &ctx), KLCL_OK); /* nothing asked: the reference serves */
    assert_true(klcl_context_is_reference(ctx));
    klcl_context_destroy(ctx);
    assert_int_equal(open_ctx("opencl", &ctx), KLCL_ERR_NO_DEVICE); /* asked for OpenCL: an error */
    assert_null(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_index_and_names, reset, reset),
        cmocka_unit_test_setup_teardown(test_environment_variable, reset, reset),
        cmocka_unit_test_setup_teardown(test_broken_platform_is_skipped, reset, reset),
        cmocka_unit_test_setup_teardown(test_no_platform_falls_back_to_reference, reset, reset),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
