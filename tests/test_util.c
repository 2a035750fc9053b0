#include "test_util.h"

#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t state = 88172645463325252ull;

void tu_seed(uint64_t seed)
{
    state = seed ? seed : 88172645463325252ull;
}

double tu_uniform(void)
{
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return (double)((state * 2685821657736338717ull) >> 11) * (1.0 / 9007199254740992.0);
}

double tu_normal(void)
{
    double u = tu_uniform(), v = tu_uniform();
    return sqrt(-2.0 * log(u + 1e-300)) * cos(6.283185307179586 * v);
}

void tu_fill_logits(float *teacher, float *student, size_t rows, size_t vocab, size_t stride)
{
    for (size_t i = 0; i < rows; i++)
        for (size_t v = 0; v < vocab; v++) {
            double t = 3.0 * tu_normal();
            teacher[i * stride + v] = (float)t;
            student[i * stride + v] = (float)(0.6 * t + 2.0 * tu_normal());
        }
}

klcl_context *tu_device_context(int verify)
{
    klcl_context_options o = KLCL_CONTEXT_OPTIONS_INIT;
    o.device = getenv("KLCL_DEVICE");
    if (!o.device || !*o.device || strcmp(o.device, "cpu") == 0) o.device = "opencl";
    o.verify = verify;
    klcl_context *ctx = NULL;
    klcl_status st = klcl_context_create(&o, &ctx);
    if (st == KLCL_ERR_NO_DEVICE) {
        const char *ci = getenv("CI");
        if (ci && *ci) fail_msg("no OpenCL device found, and CI must have one (install pocl-opencl-icd)");
        fprintf(stderr, "no OpenCL device: suite skipped\n");
        exit(77);
    }
    assert_int_equal(st, KLCL_OK);
    assert_false(klcl_context_is_reference(ctx));
    return ctx;
}

static int close_with(double dev, double ref, double abs_tol, double rel_tol, int rel_floor_one)
{
    if (isnan(dev) || isnan(ref)) return isnan(dev) && isnan(ref);
    if (isinf(dev) || isinf(ref)) return dev == ref;
    double scale = rel_floor_one ? fmax(1.0, fabs(ref)) : fabs(ref);
    return fabs(dev - ref) <= abs_tol + rel_tol * scale;
}

int tu_loss_close(double dev, double ref)
{
    return close_with(dev, ref, 0.0, 1e-5, 1);
}

int tu_grad_close(double dev, double ref)
{
    return close_with(dev, ref, 1e-6, 1e-4, 0);
}

void *tu_read_npy(const char *path, char dtype, size_t *rows, size_t *cols)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    unsigned char pre[10];
    void *data = NULL;
    char *header = NULL;
    if (fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY", 6) != 0 || pre[6] != 1) goto out;
    size_t hlen = (size_t)pre[8] | ((size_t)pre[9] << 8);
    header = calloc(hlen + 1, 1);
    if (!header || fread(header, 1, hlen, f) != hlen) goto out;
    const char *want = dtype == 'f' ? "'<f4'" : dtype == 'd' ? "'<f8'" : "'<i4'";
    size_t elem = dtype == 'd' ? 8 : 4;
    if (!strstr(header, want) || !strstr(header, "'fortran_order': False")) goto out;
    const char *shape = strstr(header, "'shape': (");
    if (!shape) goto out;
    shape += strlen("'shape': (");
    char *end;
    *rows = strtoul(shape, &end, 10);
    *cols = 1;
    if (*end == ',' && end[1] == ' ' && end[2] != ')') *cols = strtoul(end + 2, &end, 10);
    size_t n = *rows * *cols;
    data = malloc(n * elem + 1);
    if (data && fread(data, elem, n, f) != n) {
        free(data);
        data = NULL;
    }
out:
    free(header);
    fclose(f);
    return data;
}
