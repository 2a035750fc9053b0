/* host/tools/arrays.c: .npy and .safetensors readers and the .npy writer. Every file is written by the
 * test itself into a fresh folder under /tmp: valid files of each dtype and header version, and one file
 * per rejection, checking that the message names the file and the problem. */
#define _POSIX_C_SOURCE 200809L

#include "arrays.h"

#include <dirent.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

/* ------------------------------------------------------------------------------------------------------ */
/* Files                                                                                                    */

static char g_dir[64];

static int make_dir(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/klcl-arrays-XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int remove_dir(void **state)
{
    DIR *d = opendir(g_dir);
    struct dirent *e;
    char p[512];
    (void)state;
    if (!d)
        return -1;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(p, sizeof p, "%s/%s", g_dir, e->d_name);
        if (unlink(p) != 0)
            rmdir(p);
    }
    closedir(d);
    return rmdir(g_dir);
}

/* Path of a file in the folder (a few rotating buffers, so two may be used in one expression). */
static const char *at(const char *name)
{
    static char bufs[4][512];
    static int next;
    char *p = bufs[next++ % 4];
    snprintf(p, 512, "%s/%s", g_dir, name);
    return p;
}

static const char *write_bytes(const char *name, const void *bytes, size_t len)
{
    const char *p = at(name);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    if (len)
        assert_int_equal(fwrite(bytes, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
    return p;
}

static int exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0;
}

/* Files left in the folder whose name contains `part`. */
static int count_files_with(const char *part)
{
    DIR *d = opendir(g_dir);
    struct dirent *e;
    int n = 0;
    assert_non_null(d);
    while ((e = readdir(d)) != NULL)
        n += strstr(e->d_name, part) != NULL;
    closedir(d);
    return n;
}

/* An .npy file: magic, version major.0, the header length (u16 for 1.0, u32 after), the dict padded with
 * spaces to a multiple of 64 and ended by '\n', then `data` (may be shorter or longer than the shape). */
static const char *write_npy(const char *name, int major, const char *dict, const void *data, size_t dlen)
{
    size_t pre = major == 1 ? 10 : 12, dl = strlen(dict), total = pre + dl + 1, pad = (64 - total % 64) % 64;
    size_t hlen = dl + pad + 1, len = pre + hlen + dlen;
    uint8_t *b = malloc(len);
    const char *p;
    assert_non_null(b);
    memcpy(b, "\x93NUMPY", 6);
    b[6] = (uint8_t)major;
    b[7] = 0;
    b[8] = (uint8_t)hlen;
    b[9] = (uint8_t)(hlen >> 8);
    if (major != 1) {
        b[10] = (uint8_t)(hlen >> 16);
        b[11] = (uint8_t)(hlen >> 24);
    }
    memcpy(b + pre, dict, dl);
    memset(b + pre + dl, ' ', pad);
    b[pre + dl + pad] = '\n';
    if (dlen)
        memcpy(b + pre + hlen, data, dlen);
    p = write_bytes(name, b, len);
    free(b);
    return p;
}

/* A .safetensors file: u64 little-endian header length, the JSON, the buffer. */
static const char *write_st(const char *name, const char *json, const void *data, size_t dlen)
{
    size_t jl = strlen(json), len = 8 + jl + dlen;
    uint8_t *b = malloc(len);
    const char *p;
    assert_non_null(b);
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)((uint64_t)jl >> (8 * i));
    memcpy(b + 8, json, jl);
    if (dlen)
        memcpy(b + 8 + jl, data, dlen);
    p = write_bytes(name, b, len);
    free(b);
    return p;
}

/* kt_open must fail with *out zeroed and a message naming `file` and containing `word`. */
static void expect_fail(const char *spec, const char *file, const char *word)
{
    kt_array a;
    char err[1024] = "";
    memset(&a, 0x5a, sizeof a);
    int rc = kt_open(spec, &a, err, sizeof err);
    if (rc != -1)
        fail_msg("%s: kt_open succeeded, expected an error with '%s'", spec, word);
    assert_null(a.data);
    assert_null(a.map);
    assert_int_equal(a.rows, 0);
    if (!strstr(err, file))
        fail_msg("message does not name %s: %s", file, err);
    if (!strstr(err, word))
        fail_msg("message lacks '%s': %s", word, err);
}

static void open_ok(const char *spec, kt_array *a)
{
    char err[1024] = "";
    if (kt_open(spec, a, err, sizeof err) != 0)
        fail_msg("%s: %s", spec, err);
}

static uint32_t float_bits(float f)
{
    uint32_t b;
    memcpy(&b, &f, 4);
    return b;
}

/* The value of a binary16 bit pattern, from the definition (independent of the reader's bit shuffling). */
static double half_value(uint16_t h)
{
    int sign = h >> 15, exp = (h >> 10) & 31, mant = h & 1023;
    double v;
    if (exp == 31)
        v = mant ? NAN : INFINITY;
    else if (exp == 0)
        v = ldexp(mant, -24);
    else
        v = ldexp(1024 + mant, exp - 25);
    return sign ? -v : v;
}

/* ------------------------------------------------------------------------------------------------------ */
/* .npy: valid files                                                                                        */

static void test_npy_v1_f32(void **state)
{
    float v[6] = {1, -2, 3.5f, 0, 1e-30f, -7};
    float row[3];
    kt_array a;
    (void)state;
    open_ok(write_npy("f32.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", v, sizeof v),
            &a);
    assert_int_equal(a.dtype, KT_F32);
    assert_int_equal(a.elem_size, 4);
    assert_int_equal(a.ndim, 2);
    assert_int_equal(a.rows, 2);
    assert_int_equal(a.cols, 3);
    assert_non_null(a.map);
    kt_rows_f32(&a, 1, 1, row);
    assert_memory_equal(row, v + 3, sizeof row);
    kt_close(&a);
    assert_null(a.map);
    kt_close(&a); /* a zeroed array is accepted */
}

static void test_npy_v2_v3_and_variants(void **state)
{
    int32_t v[4] = {5, -1, 2147483647, -2147483647 - 1};
    int32_t got[4];
    char err[256];
    kt_array a;
    (void)state;
    /* Version 2.0 and 3.0 (u32 header length); double quotes, another key order, Python 2 longs. */
    open_ok(write_npy("v2.npy", 2, "{'descr': '<i4', 'fortran_order': False, 'shape': (4,), }", v, sizeof v), &a);
    assert_int_equal(a.dtype, KT_I32);
    assert_int_equal(a.rows, 4);
    assert_int_equal(a.cols, 1);
    assert_int_equal(kt_labels_i32(&a, 0, 4, got, err, sizeof err), 0);
    assert_memory_equal(got, v, sizeof v);
    kt_close(&a);
    open_ok(write_npy("v3.npy", 3, "{\"shape\": (4L, 1L), 'fortran_order': False, \"descr\": '=i4'}", v, sizeof v),
            &a);
    assert_int_equal(a.dtype, KT_I32);
    assert_int_equal(a.rows, 4);
    assert_int_equal(a.cols, 1);
    assert_int_equal(kt_labels_i32(&a, 1, 3, got, err, sizeof err), 0);
    assert_memory_equal(got, v + 1, 3 * sizeof *v);
    kt_close(&a);
}

/* Every one of the 65536 binary16 patterns: subnormals, both zeros, infinities and NaNs included. */
static void test_npy_f16_every_value(void **state)
{
    uint8_t *bytes = malloc(2 * 65536);
    float *got = malloc(sizeof(float) * 65536);
    kt_array a;
    (void)state;
    assert_non_null(bytes);
    assert_non_null(got);
    for (uint32_t h = 0; h < 65536; h++) {
        bytes[2 * h] = (uint8_t)h;
        bytes[2 * h + 1] = (uint8_t)(h >> 8);
    }
    open_ok(write_npy("f16.npy", 1, "{'descr': '<f2', 'fortran_order': False, 'shape': (65536,), }", bytes, 2 * 65536),
            &a);
    assert_int_equal(a.dtype, KT_F16);
    assert_int_equal(a.rows, 65536);
    kt_rows_f32(&a, 0, 65536, got);
    for (uint32_t h = 0; h < 65536; h++) {
        double want = half_value((uint16_t)h);
        if (isnan(want)) {
            if (!isnan(got[h]))
                fail_msg("half 0x%04x: got %g, want NaN", h, got[h]);
        } else if ((double)got[h] != want || !signbit(got[h]) != !signbit(want)) {
            fail_msg("half 0x%04x: got %.9g, want %.9g", h, got[h], want);
        }
    }
    /* Spot checks with the familiar names. */
    assert_true(got[0x0001] == 0x1p-24f);        /* smallest subnormal */
    assert_true(got[0x03ff] == 0x3ffp-24f);      /* largest subnormal */
    assert_true(got[0x0400] == 0x1p-14f);        /* smallest normal */
    assert_true(got[0x7bff] == 65504.0f);
    assert_true(isinf(got[0x7c00]) && got[0x7c00] > 0);
    assert_true(isinf(got[0xfc00]) && got[0xfc00] < 0);
    assert_true(float_bits(got[0x8000]) == 0x80000000u);
    kt_close(&a);
    free(bytes);
    free(got);
}

static void test_npy_u2_and_v2_read_as_bf16(void **state)
{
    uint16_t bf[4] = {0x3f80, 0xc040, 0x7f80, 0x0001}; /* 1, -3, inf, smallest bf16 subnormal */
    float got[4];
    kt_array a;
    (void)state;
    const char *dicts[2] = {"{'descr': '<u2', 'fortran_order': False, 'shape': (2, 2), }",
                            "{'descr': '|V2', 'fortran_order': False, 'shape': (2, 2), }"};
    for (int i = 0; i < 2; i++) {
        open_ok(write_npy(i ? "v2void.npy" : "u2.npy", 1, dicts[i], bf, sizeof bf), &a);
        assert_int_equal(a.dtype, KT_U16);
        assert_int_equal(a.elem_size, 2);
        kt_rows_f32(&a, 0, 2, got);
        assert_true(got[0] == 1.0f);
        assert_true(got[1] == -3.0f);
        assert_true(isinf(got[2]));
        assert_int_equal(float_bits(got[3]), 0x00010000u);
        kt_close(&a);
    }
}

static void test_npy_i8_labels(void **state)
{
    int64_t v[3] = {7, -3, (int64_t)1 << 40};
    int32_t got[3];
    char err[256];
    kt_array a;
    (void)state;
    open_ok(write_npy("i8.npy", 1, "{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }", v, sizeof v), &a);
    assert_int_equal(a.dtype, KT_I64);
    assert_int_equal(kt_labels_i32(&a, 0, 2, got, err, sizeof err), 0);
    assert_int_equal(got[0], 7);
    assert_int_equal(got[1], -3);
    assert_int_equal(kt_labels_i32(&a, 0, 3, got, err, sizeof err), -1);
    assert_non_null(strstr(err, "index 2"));
    assert_int_equal(kt_labels_i32(&a, 2, 2, got, err, sizeof err), -1); /* past the end */
    kt_close(&a);
}

static void test_npy_3d_flattens_to_rows(void **state)
{
    float v[24], row[4];
    kt_array a;
    (void)state;
    for (int i = 0; i < 24; i++)
        v[i] = (float)i;
    open_ok(write_npy("3d.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 4), }", v, sizeof v),
            &a);
    assert_int_equal(a.ndim, 3);
    assert_int_equal(a.rows, 6);
    assert_int_equal(a.cols, 4);
    kt_rows_f32(&a, 5, 1, row);
    assert_memory_equal(row, v + 20, sizeof row);
    kt_close(&a);
}

/* Misuse of the readers gives NaN rows or an error, never a read outside the map. */
static void test_readers_guard_misuse(void **state)
{
    float v[4] = {1, 2, 3, 4}, got[4];
    int32_t lab[2];
    char err[256];
    kt_array a;
    (void)state;
    open_ok(write_npy("guard.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }", v, sizeof v), &a);
    kt_rows_f32(&a, 1, 2, got);
    assert_true(got[0] == 3 && got[1] == 4);
    assert_true(isnan(got[2]) && isnan(got[3]));
    assert_int_equal(kt_labels_i32(&a, 0, 1, lab, err, sizeof err), -1);
    assert_non_null(strstr(err, "int"));
    kt_close(&a);
    int32_t iv[4] = {1, 2, 3, 4};
    open_ok(write_npy("guard2.npy", 1, "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 2), }", iv, sizeof iv),
            &a);
    assert_int_equal(kt_labels_i32(&a, 0, 1, lab, err, sizeof err), -1); /* 2 columns */
    assert_non_null(strstr(err, "1-D"));
    kt_rows_f32(&a, 0, 1, got);
    assert_true(isnan(got[0]) && isnan(got[1]));
    kt_close(&a);
}

/* ------------------------------------------------------------------------------------------------------ */
/* .npy: rejections                                                                                         */

static const char *npy_f4(const char *name, const char *shape, size_t dlen)
{
    static uint8_t zeros[256];
    char dict[256];
    snprintf(dict, sizeof dict, "{'descr': '<f4', 'fortran_order': False, 'shape': %s, }", shape);
    return write_npy(name, 1, dict, zeros, dlen);
}

static void test_npy_rejects_bad_magic_and_header(void **state)
{
    const char *p;
    (void)state;
    p = write_bytes("magic.npy", "\x93NUMPX\x01\x00\x10\x00{}", 12);
    expect_fail(p, p, "magic");
    p = write_bytes("text.npy", "hello world, not numpy", 22);
    expect_fail(p, p, "magic");
    p = write_bytes("short.npy", "\x93NUMPY\x01\x00", 8);
    expect_fail(p, p, "truncated");
    p = write_bytes("short2.npy", "\x93NUMPY\x02\x00\x10\x00", 10);
    expect_fail(p, p, "truncated");
    p = write_bytes("beyond.npy", "\x93NUMPY\x01\x00\xff\x00{'descr': '<f4'}", 26);
    expect_fail(p, p, "beyond the end");
    p = write_bytes("beyond2.npy", "\x93NUMPY\x02\x00\x00\x00\x00\x80{}", 14);
    expect_fail(p, p, "beyond the end");
    p = write_bytes("version.npy", "\x93NUMPY\x04\x00\x02\x00{}", 12);
    expect_fail(p, p, "version");
    p = write_bytes("empty.npy", "", 0);
    expect_fail(p, p, "empty file");
}

static void test_npy_rejects_malformed_dict(void **state)
{
    static const struct {
        const char *dict, *word;
    } cases[] = {
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2,), ", "malformed"},         /* no '}' */
        {"{'descr': '<f4' 'fortran_order': False, 'shape': (2,)}", "expected ','"},
        {"{'descr': <f4, 'fortran_order': False, 'shape': (2,)}", "structured"},
        {"{'descr': '<f4, 'fortran_order': False, 'shape': (2,)}", "malformed"},
        {"{'descr': '<f4', 'fortran_order': false, 'shape': (2,)}", "True or False"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2,)} junk", "after the closing"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (-2,)}", "negative"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2.0,)}", "fraction"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999,)}", "too large"},
        {"{'descr': '<f\x01', 'fortran_order': False, 'shape': (2,)}", "control character"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'extra': 1}", "unexpected key"},
        {"{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,)}", "duplicate"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': [2]}", "expected '('"},
        {"{'descr': '<f4', 'fortran_order': False}", "missing the key 'shape'"},
        {"{'fortran_order': False, 'shape': (2,)}", "missing the key 'descr'"},
        {"{'descr': '<f4', 'shape': (2,)}", "missing the key 'fortran_order'"},
        {"{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,)}", "structured"},
        {"{'descr': '<f\\q4', 'fortran_order': False, 'shape': (2,)}", "escape"},
    };
    char name[32];
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(name, sizeof name, "dict%zu.npy", i);
        const char *p = write_npy(name, 1, cases[i].dict, "\0\0\0\0\0\0\0\0", 8);
        expect_fail(p, p, cases[i].word);
    }
}

static void test_npy_rejects_dtypes_and_order(void **state)
{
    const char *p;
    uint8_t z[16] = {0};
    (void)state;
    p = write_npy("be.npy", 1, "{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", z, 8);
    expect_fail(p, p, "big-endian");
    p = write_npy("f8.npy", 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", z, 16);
    expect_fail(p, p, "unsupported dtype '<f8'");
    p = write_npy("pipe.npy", 1, "{'descr': '|u2', 'fortran_order': False, 'shape': (2,), }", z, 4);
    expect_fail(p, p, "unsupported dtype");
    p = write_npy("fortran.npy", 1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", z, 16);
    expect_fail(p, p, "Fortran order is not supported");
}

static void test_npy_rejects_shapes_and_sizes(void **state)
{
    const char *p;
    (void)state;
    p = npy_f4("dims9.npy", "(1, 1, 1, 1, 1, 1, 1, 1, 1)", 4);
    expect_fail(p, p, "9 dimensions");
    p = npy_f4("dims0.npy", "()", 4);
    expect_fail(p, p, "0-d");
    p = npy_f4("zero.npy", "(3, 0)", 0);
    expect_fail(p, p, "empty array");
    p = npy_f4("ovf_elems.npy", "(4294967296, 4294967296, 2)", 4);
    expect_fail(p, p, "element count");
    p = npy_f4("ovf_bytes.npy", "(4611686018427387904,)", 4);
    expect_fail(p, p, "byte count");
    p = npy_f4("short_data.npy", "(2, 3)", 23);
    expect_fail(p, p, "disagrees");
    p = npy_f4("long_data.npy", "(2, 3)", 25);
    expect_fail(p, p, "disagrees");
    p = npy_f4("dims8.npy", "(1, 1, 1, 1, 1, 1, 2, 3)", 24); /* 8 is the limit, and allowed */
    kt_array a;
    open_ok(p, &a);
    assert_int_equal(a.rows, 2);
    assert_int_equal(a.cols, 3);
    kt_close(&a);
}

/* ------------------------------------------------------------------------------------------------------ */
/* .safetensors                                                                                             */

static void test_st_single_tensor_with_metadata(void **state)
{
    float v[6] = {1, 2, 3, 4, 5, 6}, row[3];
    kt_array a;
    (void)state;
    const char *p = write_st("one.safetensors",
                             "{\"__metadata__\": {\"format\": \"pt\", \"note\": \"a \\\"quoted\\\" \\\\ value\"}, "
                             "\"logits\": {\"dtype\": \"F32\", \"shape\": [2, 3], \"data_offsets\": [0, 24]}}    ",
                             v, sizeof v);
    open_ok(p, &a);
    assert_int_equal(a.dtype, KT_F32);
    assert_int_equal(a.rows, 2);
    assert_int_equal(a.cols, 3);
    kt_rows_f32(&a, 1, 1, row);
    assert_memory_equal(row, v + 3, sizeof row);
    kt_close(&a);
    char spec[600];
    snprintf(spec, sizeof spec, "%s:logits", p);
    open_ok(spec, &a);
    assert_int_equal(a.rows, 2);
    kt_close(&a);
}

/* Several tensors in one buffer: F16 [2,2] at 0, BF16 [2,2,2] at 8, I64 [3] at 24, I32 [2,1] at 48, an
 * F64 at 56 and names with escapes. */
static const char *write_multi(void)
{
    uint8_t buf[72] = {0};
    uint16_t f16[4] = {0x3c00, 0x0001, 0x7c00, 0xc000};
    uint16_t bf16[8] = {0x3f80, 0x4000, 0x4040, 0x4080, 0x40a0, 0x40c0, 0x40e0, 0x4100};
    int64_t i64[3] = {4, 0, 9};
    int32_t i32[2] = {-1, 12};
    memcpy(buf, f16, 8);
    memcpy(buf + 8, bf16, 16);
    memcpy(buf + 24, i64, 24);
    memcpy(buf + 48, i32, 8);
    return write_st("multi.safetensors",
                    "{\n  \"a\": {\"dtype\": \"F16\", \"shape\": [2, 2], \"data_offsets\": [0, 8]},\n"
                    "  \"b\": {\"shape\": [2, 2, 2], \"dtype\": \"BF16\", \"data_offsets\": [8, 24], \"x\": [1, {}]},\n"
                    "  \"__metadata__\": {\"k\": \"v\"},\n"
                    "  \"labels\": {\"dtype\": \"I64\", \"shape\": [3], \"data_offsets\": [24, 48]},\n"
                    "  \"we\\\"ird\": {\"dtype\": \"I32\", \"shape\": [2, 1], \"data_offsets\": [48, 56]},\n"
                    "  \"caf\\u00e9\": {\"dtype\": \"F64\", \"shape\": [2], \"data_offsets\": [56, 72]}\n}",
                    buf, sizeof buf);
}

static void test_st_select_by_name(void **state)
{
    char spec[600], err[256];
    float f[8];
    int32_t lab[3];
    kt_array a;
    (void)state;
    const char *p = write_multi();

    snprintf(spec, sizeof spec, "%s:a", p);
    open_ok(spec, &a);
    assert_int_equal(a.dtype, KT_F16);
    kt_rows_f32(&a, 0, 2, f);
    assert_true(f[0] == 1.0f && f[1] == 0x1p-24f && isinf(f[2]) && f[3] == -2.0f);
    kt_close(&a);

    snprintf(spec, sizeof spec, "%s:b", p);
    open_ok(spec, &a);
    assert_int_equal(a.dtype, KT_BF16);
    assert_int_equal(a.rows, 4); /* [2, 2, 2] -> 4 x 2 */
    assert_int_equal(a.cols, 2);
    kt_rows_f32(&a, 0, 4, f);
    for (int i = 0; i < 8; i++)
        assert_true(f[i] == (float)(i + 1));
    kt_close(&a);

    snprintf(spec, sizeof spec, "%s:labels", p);
    open_ok(spec, &a);
    assert_int_equal(a.dtype, KT_I64);
    assert_int_equal(kt_labels_i32(&a, 0, 3, lab, err, sizeof err), 0);
    assert_true(lab[0] == 4 && lab[1] == 0 && lab[2] == 9);
    kt_close(&a);

    snprintf(spec, sizeof spec, "%s:we\"ird", p); /* the decoded name */
    open_ok(spec, &a);
    assert_int_equal(a.dtype, KT_I32);
    assert_int_equal(a.rows, 2);
    assert_int_equal(a.cols, 1);
    assert_int_equal(kt_labels_i32(&a, 0, 2, lab, err, sizeof err), 0);
    assert_true(lab[0] == -1 && lab[1] == 12);
    kt_close(&a);

    snprintf(spec, sizeof spec, "%s:caf\xc3\xa9", p);
    expect_fail(spec, p, "unsupported dtype 'F64'");
    snprintf(spec, sizeof spec, "%s:nope", p);
    expect_fail(spec, p, "'nope' not found");
    expect_fail(spec, p, "available: a, b, labels");
    expect_fail(p, p, "holds 5 tensors");
    expect_fail(p, p, ":NAME");
    snprintf(spec, sizeof spec, "%s:", p);
    expect_fail(spec, p, "empty tensor name");
}

static void test_st_rejects_header(void **state)
{
    const char *p;
    uint8_t z[16] = {0};
    (void)state;
    p = write_bytes("tiny.safetensors", "\x02\x00\x00", 3);
    expect_fail(p, p, "too short");
    p = write_bytes("beyond.safetensors", "\x40\x00\x00\x00\x00\x00\x00\x00{}", 10);
    expect_fail(p, p, "beyond the end");
    p = write_bytes("huge.safetensors", "\xff\xff\xff\xff\xff\xff\xff\xff{}", 10);
    expect_fail(p, p, "beyond the end");
    p = write_st("notobj.safetensors", "[1, 2]", z, 0);
    expect_fail(p, p, "JSON object");
    p = write_st("none.safetensors", "{\"__metadata__\": {}}", z, 0);
    expect_fail(p, p, "no tensors");
}

static void test_st_rejects_json(void **state)
{
    static const struct {
        const char *json, *word;
    } cases[] = {
        {"{\"t\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}", "unexpected end"},
        {"{\"t\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},}", "expected a string"},
        {"{\"t\": {\"dtype\": \"F32\", \"shape\": [2,], \"data_offsets\": [0, 8]}}", "unsigned integer"},
        {"{\"t\": {\"dtype\": \"F32\", \"shape\": [-2], \"data_offsets\": [0, 8]}}", "negative"},
        {"{\"t\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 18446744073709551616]}}", "too large"},
        {"{\"t\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8.0]}}", "fraction"},
        {"{\"t\": {\"dtype\": \"F32\", \"shape\": [02], \"data_offsets\": [0, 8]}}", "leading zero"},
        {"{\"t\": {\"dtype\": \"F\t32\", \"shape\": [2], \"data_offsets\": [0, 8]}}", "control character"},
        {"{\"t\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}} x", "after the closing"},
        {"{\"t\": {\"dtype\": \"F32\", \"shape\": [2]}}", "missing the key 'data_offsets'"},
        {"{\"t\": {\"shape\": [2], \"data_offsets\": [0, 8]}}", "missing the key 'dtype'"},
        {"{\"t\": {\"dtype\": \"F32\", \"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}", "duplicate"},
        {"{\"t\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}, "
         "\"t\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}", "twice"},
        {"{\"t\": {\"dtype\": 'F32', \"shape\": [2], \"data_offsets\": [0, 8]}}", "expected a string"},
        {"{\"t\": {\"dtype\": \"\\ud800\", \"shape\": [2], \"data_offsets\": [0, 8]}}", "surrogate"},
        {"{\"__metadata__\": {\"a\": tru}, \"t\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}",
         "expected a value"},
    };
    char name[32];
    uint8_t z[8] = {0};
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(name, sizeof name, "json%zu.safetensors", i);
        const char *p = write_st(name, cases[i].json, z, sizeof z);
        expect_fail(p, p, cases[i].word);
        expect_fail(p, p, "malformed");
    }
}

static void test_st_rejects_deep_nesting(void **state)
{
    enum { DEPTH = 100 };
    char json[512];
    size_t n = 0;
    uint8_t z[8] = {0};
    (void)state;
    n += (size_t)snprintf(json + n, sizeof json - n, "{\"__metadata__\": ");
    for (int i = 0; i < DEPTH; i++)
        json[n++] = '[';
    for (int i = 0; i < DEPTH; i++)
        json[n++] = ']';
    snprintf(json + n, sizeof json - n, ", \"t\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}");
    const char *p = write_st("deep.safetensors", json, z, sizeof z);
    expect_fail(p, p, "nested deeper");
}

static void test_st_rejects_tensor(void **state)
{
    static const struct {
        const char *entry, *word;
    } cases[] = {
        {"{\"dtype\": \"U8\", \"shape\": [2], \"data_offsets\": [0, 2]}", "'U8'"},
        {"{\"dtype\": \"BOOL\", \"shape\": [2], \"data_offsets\": [0, 2]}", "'BOOL'"},
        {"{\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 0]}", "not ordered"},
        {"{\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]}", "beyond the data buffer"},
        {"{\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 8]}", "disagrees"},
        {"{\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0]}", "2 numbers"},
        {"{\"dtype\": \"F32\", \"shape\": [], \"data_offsets\": [0, 4]}", "0-d"},
        {"{\"dtype\": \"F32\", \"shape\": [2, 0], \"data_offsets\": [0, 0]}", "empty array"},
        {"{\"dtype\": \"F32\", \"shape\": [1,1,1,1,1,1,1,1,2], \"data_offsets\": [0, 8]}", "9 dimensions"},
        {"{\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296, 2], \"data_offsets\": [0, 8]}", "element count"},
        {"{\"dtype\": \"I64\", \"shape\": [2305843009213693952], \"data_offsets\": [0, 8]}", "byte count"},
    };
    char name[32], json[256];
    uint8_t z[8] = {0};
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(name, sizeof name, "tensor%zu.safetensors", i);
        snprintf(json, sizeof json, "{\"t\": %s}", cases[i].entry);
        const char *p = write_st(name, json, z, sizeof z);
        expect_fail(p, p, cases[i].word);
        expect_fail(p, p, "'t'");
    }
}

/* ------------------------------------------------------------------------------------------------------ */
/* Paths                                                                                                    */

static void test_paths(void **state)
{
    float v[2] = {1, 2};
    char spec[600];
    kt_array a;
    (void)state;
    /* A colon inside a real file name: the part before it is no file, so the whole string is the path. */
    const char *p = write_npy("odd:name.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", v, 8);
    open_ok(p, &a);
    assert_int_equal(a.rows, 2);
    kt_close(&a);
    /* A name on an .npy file. */
    p = write_npy("plain.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", v, 8);
    snprintf(spec, sizeof spec, "%s:x", p);
    expect_fail(spec, p, "only applies to .safetensors");
    /* Missing files and folders. */
    expect_fail(at("missing.npy"), at("missing.npy"), "cannot open");
    snprintf(spec, sizeof spec, "%s:x", at("missing.safetensors"));
    expect_fail(spec, spec, "cannot open");
    expect_fail(g_dir, g_dir, "not a regular file");
}

/* ------------------------------------------------------------------------------------------------------ */
/* Writing                                                                                                  */

static void test_write_round_trip(void **state)
{
    float v[12], row[4];
    size_t shape2[2] = {3, 4}, shape1[1] = {5};
    char err[256];
    uint8_t head[128];
    kt_array a;
    (void)state;
    for (int i = 0; i < 12; i++)
        v[i] = (float)i * 0.25f - 1.0f;
    v[5] = NAN;
    v[6] = -INFINITY;
    assert_int_equal(kt_write_npy_f32(at("out2.npy"), v, 2, shape2, err, sizeof err), 0);
    open_ok(at("out2.npy"), &a);
    assert_int_equal(a.dtype, KT_F32);
    assert_int_equal(a.ndim, 2);
    assert_int_equal(a.rows, 3);
    assert_int_equal(a.cols, 4);
    assert_int_equal((size_t)(a.data - (const uint8_t *)a.map) % 64, 0); /* padded header */
    kt_rows_f32(&a, 1, 1, row);
    assert_memory_equal(row, v + 4, sizeof row);
    kt_close(&a);

    assert_int_equal(kt_write_npy_f32(at("out1.npy"), v, 1, shape1, err, sizeof err), 0);
    FILE *f = fopen(at("out1.npy"), "rb");
    assert_non_null(f);
    assert_int_equal(fread(head, 1, sizeof head, f), sizeof head);
    fclose(f);
    assert_memory_equal(head, "\x93NUMPY\x01\x00", 8);
    size_t hlen = head[8] | (size_t)head[9] << 8;
    assert_int_equal((10 + hlen) % 64, 0);
    assert_int_equal(head[10 + hlen - 1], '\n');
    assert_non_null(strstr((const char *)head + 10, "'shape': (5,)"));
    assert_non_null(strstr((const char *)head + 10, "'fortran_order': False"));
    open_ok(at("out1.npy"), &a);
    assert_int_equal(a.ndim, 1);
    assert_int_equal(a.rows, 5);
    kt_close(&a);
    assert_int_equal(count_files_with(".tmp."), 0);
}

static void test_writer_streaming(void **state)
{
    float v[6] = {1, 2, 3, 4, 5, 6}, row[3];
    size_t shape[2] = {2, 3};
    char err[256];
    kt_writer w;
    kt_array a;
    (void)state;
    /* Row by row, then commit. */
    assert_int_equal(kt_writer_begin(&w, at("stream.npy"), 2, shape, err, sizeof err), 0);
    assert_int_equal(count_files_with("stream.npy.tmp."), 1);
    assert_false(exists(at("stream.npy")));
    assert_int_equal(kt_writer_append(&w, v, 3, err, sizeof err), 0);
    assert_int_equal(kt_writer_append(&w, v + 3, 3, err, sizeof err), 0);
    assert_int_equal(kt_writer_append(&w, v, 1, err, sizeof err), -1); /* more than the shape */
    assert_non_null(strstr(err, "exceed"));
    assert_int_equal(kt_writer_commit(&w, err, sizeof err), 0);
    open_ok(at("stream.npy"), &a);
    kt_rows_f32(&a, 1, 1, row);
    assert_memory_equal(row, v + 3, sizeof row);
    kt_close(&a);

    /* Missing elements: commit fails and leaves nothing. */
    assert_int_equal(kt_writer_begin(&w, at("partial.npy"), 2, shape, err, sizeof err), 0);
    assert_int_equal(kt_writer_append(&w, v, 5, err, sizeof err), 0);
    assert_int_equal(kt_writer_commit(&w, err, sizeof err), -1);
    assert_non_null(strstr(err, "partial.npy"));
    assert_non_null(strstr(err, "5 of the 6"));
    assert_false(exists(at("partial.npy")));
    assert_int_equal(count_files_with("partial.npy"), 0);
    kt_writer_abort(&w); /* harmless after a finished writer */

    /* Abort leaves nothing, and the old file at the target survives. */
    assert_int_equal(kt_writer_begin(&w, at("stream.npy"), 2, shape, err, sizeof err), 0);
    assert_int_equal(kt_writer_append(&w, v, 6, err, sizeof err), 0);
    kt_writer_abort(&w);
    assert_int_equal(count_files_with(".tmp."), 0);
    open_ok(at("stream.npy"), &a);
    kt_close(&a);
    assert_int_equal(kt_writer_commit(&w, err, sizeof err), -1); /* not open any more */

    /* A folder that does not exist: begin fails, nothing created. */
    snprintf(err, sizeof err, "%s", "");
    assert_int_equal(kt_writer_begin(&w, at("no/such/dir.npy"), 2, shape, err, sizeof err), -1);
    assert_non_null(strstr(err, "cannot create"));
    assert_null(w.file);
    assert_int_equal(kt_writer_begin(&w, at("d9.npy"), 9, (size_t[9]){1, 1, 1, 1, 1, 1, 1, 1, 1}, err,
                                     sizeof err), -1);
    assert_int_equal(kt_write_npy_f32(at("ovf.npy"), v, 2, (size_t[2]){SIZE_MAX, 2}, err, sizeof err), -1);
    assert_non_null(strstr(err, "overflow"));
    assert_false(exists(at("ovf.npy")));
}

/* 2-byte outputs: f16 as '<f2' and bf16 as '<u2', read back by the same readers (bf16 through the U16
 * path the tool's --bf16 takes), little-endian on disk whatever the host. */
static void test_writer_half(void **state)
{
    /* 1.5, -2, 0, +inf in fp16 and in bf16 */
    const uint16_t f16[4] = {0x3E00, 0xC000, 0x0000, 0x7C00}, bf16[4] = {0x3FC0, 0xC000, 0x0000, 0x7F80};
    const float want[4] = {1.5f, -2.0f, 0.0f, INFINITY};
    size_t shape[2] = {2, 2};
    char err[256];
    float row[4];
    uint8_t head[128];
    kt_writer w;
    kt_array a;
    (void)state;
    assert_int_equal(kt_writer_begin_as(&w, at("h16.npy"), KT_F16, 2, shape, err, sizeof err), 0);
    assert_int_equal(kt_writer_append(&w, want, 1, err, sizeof err), -1); /* fp32 into a 2-byte array */
    assert_int_equal(kt_writer_append_u16(&w, f16, 4, err, sizeof err), 0);
    assert_int_equal(kt_writer_append_u16(&w, f16, 1, err, sizeof err), -1);
    assert_int_equal(kt_writer_commit(&w, err, sizeof err), 0);
    open_ok(at("h16.npy"), &a);
    assert_int_equal(a.dtype, KT_F16);
    assert_int_equal(a.rows, 2);
    assert_int_equal(a.cols, 2);
    kt_rows_f32(&a, 0, 2, row);
    assert_memory_equal(row, want, sizeof row);
    assert_memory_equal(a.data, "\x00\x3e\x00\xc0", 4); /* little-endian */
    kt_close(&a);

    assert_int_equal(kt_writer_begin_as(&w, at("hbf.npy"), KT_BF16, 2, shape, err, sizeof err), 0);
    assert_int_equal(kt_writer_append_u16(&w, bf16, 4, err, sizeof err), 0);
    assert_int_equal(kt_writer_commit(&w, err, sizeof err), 0);
    FILE *f = fopen(at("hbf.npy"), "rb");
    assert_non_null(f);
    assert_int_equal(fread(head, 1, sizeof head, f), sizeof head);
    fclose(f);
    assert_non_null(strstr((const char *)head + 10, "'descr': '<u2'"));
    open_ok(at("hbf.npy"), &a);
    assert_int_equal(a.dtype, KT_U16);
    kt_rows_f32(&a, 0, 2, row);
    assert_memory_equal(row, want, sizeof row);
    kt_close(&a);

    assert_int_equal(kt_writer_begin(&w, at("f4.npy"), 2, shape, err, sizeof err), 0);
    assert_int_equal(kt_writer_append_u16(&w, f16, 4, err, sizeof err), -1); /* 2-byte into fp32 */
    kt_writer_abort(&w);
    assert_int_equal(kt_writer_begin_as(&w, at("i4.npy"), KT_I32, 2, shape, err, sizeof err), -1);
    assert_int_equal(count_files_with(".tmp."), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_npy_v1_f32),
        cmocka_unit_test(test_npy_v2_v3_and_variants),
        cmocka_unit_test(test_npy_f16_every_value),
        cmocka_unit_test(test_npy_u2_and_v2_read_as_bf16),
        cmocka_unit_test(test_npy_i8_labels),
        cmocka_unit_test(test_npy_3d_flattens_to_rows),
        cmocka_unit_test(test_readers_guard_misuse),
        cmocka_unit_test(test_npy_rejects_bad_magic_and_header),
        cmocka_unit_test(test_npy_rejects_malformed_dict),
        cmocka_unit_test(test_npy_rejects_dtypes_and_order),
        cmocka_unit_test(test_npy_rejects_shapes_and_sizes),
        cmocka_unit_test(test_st_single_tensor_with_metadata),
        cmocka_unit_test(test_st_select_by_name),
        cmocka_unit_test(test_st_rejects_header),
        cmocka_unit_test(test_st_rejects_json),
        cmocka_unit_test(test_st_rejects_deep_nesting),
        cmocka_unit_test(test_st_rejects_tensor),
        cmocka_unit_test(test_paths),
        cmocka_unit_test(test_write_round_trip),
        cmocka_unit_test(test_writer_streaming),
        cmocka_unit_test(test_writer_half),
    };
    return cmocka_run_group_tests(tests, make_dir, remove_dir);
}
