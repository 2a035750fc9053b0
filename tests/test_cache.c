/* The binary cache: a second context loads what the first stored and computes the same bits; damaged or
 * unreadable caches are misses, never failures; off means off; build options are part of the key. */
#include "test_util.h"

#include <dirent.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[64];

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/klcl-cache-test-XXXXXX");
    assert_non_null(mkdtemp(dir));
    setenv("KLCL_CACHE_DIR", dir, 1);
    setenv("KLCL_CACHE", "on", 1); /* the default, unless the environment running the tests says otherwise */
    unsetenv("KLCL_WORK_GROUP");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[512];
    while (d && (e = readdir(d)))
        if (e->d_name[0] != '.') {
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            remove(path);
        }
    if (d) closedir(d);
    rmdir(dir);
    unsetenv("KLCL_CACHE_DIR");
    unsetenv("KLCL_CACHE");
    unsetenv("KLCL_WORK_GROUP");
    return 0;
}

/* One cache file per kernel group a context builds: the nine losses' and the shared kernels. */
enum { GROUPS = 10 };

/* The cache files in dir: count, and the path of the last one. */
static int cache_files(char *last, size_t cap)
{
    int n = 0;
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len > 6 && strcmp(e->d_name + len - 6, ".clbin") == 0) {
            n++;
            if (last) snprintf(last, cap, "%s/%s", dir, e->d_name);
        }
    }
    if (d) closedir(d);
    return n;
}

/* A fresh context, prepared; returns whether its program came from the cache. */
static int prepared(klcl_context **out)
{
    *out = tu_device_context(0);
    assert_int_equal(klcl_context_prepare(*out), KLCL_OK);
    return klcl_context_cache_hit(*out);
}

static void compute(klcl_context *ctx, float *grad, double *loss)
{
    enum { ROWS = 5, VOCAB = 203 };
    static float teacher[ROWS * VOCAB], student[ROWS * VOCAB];
    static int32_t labels[ROWS] = {1, 7, 200, -100, 0};
    tu_seed(21);
    tu_fill_logits(teacher, student, ROWS, VOCAB, VOCAB);
    klcl_loss_desc desc;
    klcl_loss_desc_init(&desc, KLCL_LOSS_KD);
    desc.tau = 2.0f;
    klcl_batch b = KLCL_BATCH_INIT;
    b.rows = ROWS;
    b.vocab = VOCAB;
    b.teacher = klcl_host_tensor(teacher, 0);
    b.student = klcl_host_tensor(student, 0);
    b.labels = klcl_host_tensor(labels, 0);
    b.grad = klcl_host_tensor(grad, 0);
    klcl_result r;
    assert_int_equal(klcl_compute(ctx, &desc, &b, &r), KLCL_OK);
    *loss = r.loss;
}

static void test_store_then_hit(void **state)
{
    (void)state;
    klcl_context *a, *b;
    assert_false(prepared(&a));
    assert_int_equal(cache_files(NULL, 0), GROUPS);
    assert_true(prepared(&b));
    static float ga[5 * 203], gb[5 * 203];
    double la, lb;
    compute(a, ga, &la);
    compute(b, gb, &lb);
    assert_memory_equal(&la, &lb, sizeof la);
    assert_memory_equal(ga, gb, sizeof ga);
    klcl_context_destroy(a);
    klcl_context_destroy(b);
}

static void test_damaged_file_is_a_miss(void **state)
{
    (void)state;
    klcl_context *a;
    prepared(&a);
    klcl_context_destroy(a);
    char path[512];
    assert_int_equal(cache_files(path, sizeof path), GROUPS);
    /* Garbage of the same size, then a truncated file: both misses that rebuild and rewrite. */
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    fseek(f, 40, SEEK_SET);
    for (int i = 0; i < 4096; i++) fputc(0x5a, f);
    fclose(f);
    assert_false(prepared(&a));
    klcl_context_destroy(a);
    assert_true(prepared(&a)); /* rewritten whole */
    klcl_context_destroy(a);
    assert_int_equal(truncate(path, 100), 0);
    assert_false(prepared(&a));
    klcl_context_destroy(a);
    assert_true(prepared(&a));
    klcl_context_destroy(a);
    /* One flipped byte deep in the binary, header intact: the stored hash of the body catches it. */
    f = fopen(path, "r+b");
    assert_non_null(f);
    assert_int_equal(fseek(f, -7, SEEK_END), 0);
    int c = fgetc(f);
    fseek(f, -7, SEEK_END);
    fputc(c ^ 0x40, f);
    fclose(f);
    assert_false(prepared(&a));
    klcl_context_destroy(a);
    assert_true(prepared(&a));
    klcl_context_destroy(a);
}

static void test_unwritable_and_off(void **state)
{
    (void)state;
    char file[128];
    snprintf(file, sizeof file, "%s/not-a-folder", dir);
    FILE *f = fopen(file, "w");
    assert_non_null(f);
    fclose(f);
    char below[192];
    snprintf(below, sizeof below, "%s/sub", file); /* a folder under a regular file cannot exist */
    setenv("KLCL_CACHE_DIR", below, 1);
    klcl_context *a;
    assert_false(prepared(&a));
    klcl_context_destroy(a);
    setenv("KLCL_CACHE_DIR", dir, 1);
    setenv("KLCL_CACHE", "off", 1);
    assert_false(prepared(&a));
    klcl_context_destroy(a);
    assert_int_equal(cache_files(NULL, 0), 0);
    remove(file);
}

static void test_options_are_in_the_key(void **state)
{
    (void)state;
    klcl_context *a;
    prepared(&a);
    klcl_context_destroy(a);
    setenv("KLCL_WORK_GROUP", "2", 1); /* another -DKLCL_WG: another binary */
    assert_false(prepared(&a));
    klcl_context_destroy(a);
    assert_int_equal(cache_files(NULL, 0), 2 * GROUPS);
}

/* Without klcl_context_prepare a context builds only what its calls use: the kl group (which settles the
 * work-group size) and kd's, not the other eight. */
static void test_only_used_groups(void **state)
{
    (void)state;
    klcl_context *a = tu_device_context(0);
    static float g[5 * 203];
    double loss;
    compute(a, g, &loss); /* kd */
    klcl_context_destroy(a);
    assert_int_equal(cache_files(NULL, 0), 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_store_then_hit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_damaged_file_is_a_miss, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unwritable_and_off, setup, teardown),
        cmocka_unit_test_setup_teardown(test_options_are_in_the_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_only_used_groups, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
