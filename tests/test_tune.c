/* The tuning table and the tuner: entries written and read back, damaged tables are misses (the default
 * applies), the precedence KLCL_WORK_GROUP > table > default as klcl_context_work_group reports it (and
 * KLCL_SPLIT_COLUMNS > split_columns > built-in as klcl_context_split_columns does, which the row strategy
 * follows), bad arguments refused with their name, and a small real tuning run whose entries a new context
 * then uses. Every test works on its own table in a temporary folder (KLCL_TUNE_FILE). */
#include "test_util.h"

#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[64], table[128];
static size_t default_wg; /* what this device gets with no variable and no table */

/* The device the suites use (tu_device_context's choice), for klcl_tune's options. */
static const char *device_spec(void)
{
    const char *d = getenv("KLCL_DEVICE");
    return !d || !*d || strcmp(d, "cpu") == 0 ? "opencl" : d;
}

/* A new context's setting (klcl_context_work_group or klcl_context_split_columns) and its source. */
static size_t fresh_setting(klcl_status (*query)(klcl_context *, size_t *, klcl_work_group_source *),
                            klcl_work_group_source *source)
{
    klcl_context *ctx = tu_device_context(0);
    size_t v = 0;
    assert_int_equal(query(ctx, &v, source), KLCL_OK);
    klcl_context_destroy(ctx);
    return v;
}

static size_t fresh_wg(klcl_work_group_source *source)
{
    return fresh_setting(klcl_context_work_group, source);
}

static size_t fresh_split(klcl_work_group_source *source)
{
    return fresh_setting(klcl_context_split_columns, source);
}

/* The documented built-in split columns of the suites' device, from its type read through OpenCL. */
static size_t builtin_split(void)
{
    klcl_context *ctx = tu_device_context(0);
    cl_device_id dev;
    cl_device_type type = 0;
    assert_int_equal(clGetCommandQueueInfo(klcl_context_cl_queue(ctx), CL_QUEUE_DEVICE, sizeof dev, &dev, NULL), 0);
    assert_int_equal(clGetDeviceInfo(dev, CL_DEVICE_TYPE, sizeof type, &type, NULL), 0);
    klcl_context_destroy(ctx);
    return (type & CL_DEVICE_TYPE_CPU) ? 262144 : 4096;
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/klcl-tune-test-XXXXXX");
    assert_non_null(mkdtemp(dir));
    snprintf(table, sizeof table, "%s/tuning.tsv", dir);
    setenv("KLCL_TUNE_FILE", table, 1);
    unsetenv("KLCL_WORK_GROUP");
    unsetenv("KLCL_SPLIT_COLUMNS");
    klcl_work_group_source source;
    default_wg = fresh_wg(&source);
    assert_int_equal(source, KLCL_WORK_GROUP_DEFAULT);
    assert_true(default_wg >= 1);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    remove(table);
    rmdir(dir);
    unsetenv("KLCL_TUNE_FILE");
    unsetenv("KLCL_WORK_GROUP");
    unsetenv("KLCL_SPLIT_COLUMNS");
    return 0;
}

/* Each test starts without a table, KLCL_WORK_GROUP or KLCL_SPLIT_COLUMNS. */
static int clean(void **state)
{
    (void)state;
    remove(table);
    rmdir(table); /* the unreadable-table test puts a folder there */
    setenv("KLCL_TUNE_FILE", table, 1);
    unsetenv("KLCL_WORK_GROUP");
    unsetenv("KLCL_SPLIT_COLUMNS");
    return 0;
}

/* A size the table can hold that differs from the default, so that using the table is observable. */
static size_t other_wg(void)
{
    return default_wg == 4 ? 2 : 4;
}

static void write_text(const char *path, const char *text, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

/* This device's key, read through OpenCL rather than through the library, tab-joined. */
static void device_key(char *out, size_t cap)
{
    klcl_context *ctx = tu_device_context(0);
    cl_device_id dev;
    cl_platform_id plat;
    assert_int_equal(clGetCommandQueueInfo(klcl_context_cl_queue(ctx), CL_QUEUE_DEVICE, sizeof dev, &dev, NULL), 0);
    assert_int_equal(clGetDeviceInfo(dev, CL_DEVICE_PLATFORM, sizeof plat, &plat, NULL), 0);
    char name[256] = "", vendor[256] = "", driver[256] = "", platform[256] = "";
    clGetDeviceInfo(dev, CL_DEVICE_NAME, sizeof name - 1, name, NULL);
    clGetDeviceInfo(dev, CL_DEVICE_VENDOR, sizeof vendor - 1, vendor, NULL);
    clGetDeviceInfo(dev, CL_DRIVER_VERSION, sizeof driver - 1, driver, NULL);
    clGetPlatformInfo(plat, CL_PLATFORM_VERSION, sizeof platform - 1, platform, NULL);
    snprintf(out, cap, "%s\t%s\t%s\t%s\t%s", name, vendor, driver, platform, klcl_version_string());
    klcl_context_destroy(ctx);
}

#define FIRST_LINE "# klcl tuning table, format 1\n"
#define KEYS "device\tvendor\tdriver\tplatform\tklcl"
#define HEADER FIRST_LINE KEYS "\twork_group\n"

/* A table holding one row for this device: after the key, the columns named in `columns` (tab-separated)
 * holding `cells`. */
static void write_row(const char *columns, const char *cells)
{
    char key[1400], text[1800];
    device_key(key, sizeof key);
    int n = snprintf(text, sizeof text, FIRST_LINE KEYS "\t%s\n%s\t%s\n", columns, key, cells);
    write_text(table, text, (size_t)n);
}

/* A table holding one row for this device with the given work_group cell. */
static void write_entry(const char *work_group)
{
    write_row("work_group", work_group);
}

static size_t table_get(void)
{
    klcl_context *ctx = tu_device_context(0);
    size_t wg = 99;
    assert_int_equal(klcl_tune_table_get(ctx, &wg), KLCL_OK);
    klcl_context_destroy(ctx);
    return wg;
}

static char *read_all(const char *path)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    static char buf[65536];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    return buf;
}

static int count_lines(const char *s)
{
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

static void test_round_trip(void **state)
{
    (void)state;
    assert_int_equal(table_get(), 0); /* no file: a miss */
    klcl_context *ctx = tu_device_context(0);
    assert_int_equal(klcl_tune_table_set(ctx, 16), KLCL_OK);
    assert_int_equal(table_get(), 16);
    /* Replacing keeps one row per device. */
    assert_int_equal(klcl_tune_table_set(ctx, other_wg()), KLCL_OK);
    assert_int_equal(table_get(), other_wg());
    const char *text = read_all(table);
    assert_int_equal(count_lines(text), 3);
    assert_int_equal(strncmp(text, "# klcl tuning table, format 1", 29), 0);
    klcl_context_destroy(ctx);
    /* The file is keyed as documented: a row written by hand from the OpenCL strings is found. */
    write_entry("8");
    assert_int_equal(table_get(), 8);
}

static void test_other_rows_and_columns_kept(void **state)
{
    (void)state;
    /* Another device's row, and a column this version does not know (a later parameter). */
    const char *text = "# klcl tuning table, format 1\n"
                       "device\tvendor\tdriver\tplatform\tklcl\twork_group\tsplit\n"
                       "Some GPU\tSomeone\t1.0\tOpenCL 3.0\t0.1.0\t128\t4\n";
    write_text(table, text, strlen(text));
    klcl_context *ctx = tu_device_context(0);
    assert_int_equal(klcl_tune_table_set(ctx, 2), KLCL_OK);
    klcl_context_destroy(ctx);
    assert_int_equal(table_get(), 2);
    const char *now = read_all(table);
    assert_int_equal(count_lines(now), 4);
    assert_non_null(strstr(now, "\tsplit"));
    assert_non_null(strstr(now, "Some GPU\tSomeone\t1.0\tOpenCL 3.0\t0.1.0\t128\t4\n"));
}

/* Every damaged form must be a miss: the default size, source default, and no entry reported. */
static void expect_miss(const char *what)
{
    klcl_work_group_source source = KLCL_WORK_GROUP_TABLE;
    size_t wg = fresh_wg(&source);
    if (source != KLCL_WORK_GROUP_DEFAULT || wg != default_wg)
        fail_msg("%s: got %zu from %s, expected the default %zu", what, wg, klcl_work_group_source_name(source),
                 default_wg);
    if (table_get() != 0) fail_msg("%s: klcl_tune_table_get found an entry", what);
}

static void test_damaged_tables_are_misses(void **state)
{
    (void)state;
    char key[1400], text[1600];
    device_key(key, sizeof key);
    /* The intact table first, so that each damage below is what turns a hit into a miss. */
    int n = snprintf(text, sizeof text, HEADER "%s\t8\n", key);
    write_text(table, text, (size_t)n);
    assert_int_equal(table_get(), 8);

    write_text(table, text, (size_t)n - 1);
    expect_miss("no final newline");
    write_text(table, text, (size_t)n - 3);
    expect_miss("cut inside the last row");
    write_text(table, text, strlen(HEADER) - 5);
    expect_miss("cut inside the header");
    write_text(table, "", 0);
    expect_miss("empty file");
    n = snprintf(text, sizeof text, "# klcl tuning table, format 2\n%s\t8\n", key);
    write_text(table, text, (size_t)n);
    expect_miss("another format");
    n = snprintf(text, sizeof text, "device\tvendor\tdriver\tplatform\tklcl\twork_group\n%s\t8\n", key);
    write_text(table, text, (size_t)n);
    expect_miss("no first line");
    n = snprintf(text, sizeof text, "# klcl tuning table, format 1\ndevice\tvendor\tdriver\tplatform\twork_group\n"
                                    "%s\t8\n", key);
    write_text(table, text, (size_t)n);
    expect_miss("a key column missing");
    n = snprintf(text, sizeof text, HEADER "%s\t8\textra\n", key);
    write_text(table, text, (size_t)n);
    expect_miss("a row with a cell too many");
    n = snprintf(text, sizeof text, HEADER "%s\t8\nshort\trow\n", key);
    write_text(table, text, (size_t)n);
    expect_miss("another row with too few cells");
    n = snprintf(text, sizeof text, HEADER "%s\t8\n", key);
    text[strlen(HEADER) + 2] = '\0'; /* a NUL inside the device name */
    write_text(table, text, (size_t)n);
    expect_miss("a NUL byte");
    const char *bad_values[] = {"12", "0", "8192", "abc", "-8", "8 ", "", "+8", "0x8"};
    for (size_t i = 0; i < sizeof bad_values / sizeof bad_values[0]; i++) {
        char what[64];
        write_entry(bad_values[i]);
        snprintf(what, sizeof what, "work_group '%s'", bad_values[i]);
        expect_miss(what);
    }
    /* Another klcl version's row: not this key. */
    n = snprintf(text, sizeof text, HEADER "%s.1\t8\n", key);
    write_text(table, text, (size_t)n);
    expect_miss("another klcl version");
    /* Unreadable: a folder where the file should be; and, unless root (who reads anything), no permission. */
    remove(table);
    assert_int_equal(mkdir(table, 0700), 0);
    expect_miss("a folder in place of the table");
    assert_int_equal(rmdir(table), 0);
    if (geteuid() != 0) {
        write_entry("8");
        assert_int_equal(chmod(table, 0), 0);
        expect_miss("no read permission");
    }
    setenv("KLCL_TUNE_FILE", "/nonexistent-klcl-folder/tuning.tsv", 1);
    expect_miss("a table in a folder that does not exist");
}

static void test_precedence(void **state)
{
    (void)state;
    klcl_work_group_source source;
    const size_t in_table = other_wg(), in_env = in_table == 2 ? 8 : 2;
    write_entry(in_table == 2 ? "2" : "4");
    assert_int_equal(fresh_wg(&source), in_table);
    assert_int_equal(source, KLCL_WORK_GROUP_TABLE);
    char env[16];
    snprintf(env, sizeof env, "%zu", in_env);
    setenv("KLCL_WORK_GROUP", env, 1);
    assert_int_equal(fresh_wg(&source), in_env);
    assert_int_equal(source, KLCL_WORK_GROUP_ENV);
    /* A value the variable cannot mean is ignored, as before: the table applies. */
    setenv("KLCL_WORK_GROUP", "lots", 1);
    assert_int_equal(fresh_wg(&source), in_table);
    assert_int_equal(source, KLCL_WORK_GROUP_TABLE);
    unsetenv("KLCL_WORK_GROUP");
    remove(table);
    assert_int_equal(fresh_wg(&source), default_wg);
    assert_int_equal(source, KLCL_WORK_GROUP_DEFAULT);
    /* A context keeps the size it was built with when the table changes later. */
    klcl_context *ctx = tu_device_context(0);
    size_t wg = 0;
    assert_int_equal(klcl_context_work_group(ctx, &wg, NULL), KLCL_OK);
    assert_int_equal(klcl_tune_table_set(ctx, in_table), KLCL_OK);
    assert_int_equal(klcl_context_work_group(ctx, &wg, &source), KLCL_OK);
    assert_int_equal(wg, default_wg);
    assert_int_equal(source, KLCL_WORK_GROUP_DEFAULT);
    klcl_context_destroy(ctx);
    assert_int_equal(fresh_wg(&source), in_table);
}

/* A new context's split columns must be `want` from `source`; `what` says which case failed. */
static void expect_split(size_t want, klcl_work_group_source want_source, const char *what)
{
    klcl_work_group_source source = KLCL_WORK_GROUP_FORCED;
    const size_t got = fresh_split(&source);
    if (got != want || source != want_source)
        fail_msg("%s: split columns %zu from %s, expected %zu from %s", what, got, klcl_work_group_source_name(source),
                 want, klcl_work_group_source_name(want_source));
}

/* Values KLCL_SPLIT_COLUMNS and the table's split_columns cannot mean (not a power of two, outside
 * [64, 2^30], not plain decimal digits): each is ignored. */
static const char *const bad_split[] = {"100", "32", "2147483648", "0", "", "abc", "-64", "+1024", "1024 ", "0x400",
                                        "99999999999999999999"};
enum { BAD_SPLIT = sizeof bad_split / sizeof bad_split[0] };

static void test_split_columns_env(void **state)
{
    (void)state;
    const size_t builtin = builtin_split();
    expect_split(builtin, KLCL_WORK_GROUP_DEFAULT, "no variable, no table");
    setenv("KLCL_SPLIT_COLUMNS", "1024", 1);
    expect_split(1024, KLCL_WORK_GROUP_ENV, "KLCL_SPLIT_COLUMNS=1024");
    setenv("KLCL_SPLIT_COLUMNS", "64", 1);
    expect_split(64, KLCL_WORK_GROUP_ENV, "KLCL_SPLIT_COLUMNS=64 (the smallest)");
    setenv("KLCL_SPLIT_COLUMNS", "1073741824", 1);
    expect_split((size_t)1 << 30, KLCL_WORK_GROUP_ENV, "KLCL_SPLIT_COLUMNS=2^30 (the largest)");
    for (size_t i = 0; i < BAD_SPLIT; i++) {
        char what[64];
        setenv("KLCL_SPLIT_COLUMNS", bad_split[i], 1);
        snprintf(what, sizeof what, "KLCL_SPLIT_COLUMNS='%s'", bad_split[i]);
        expect_split(builtin, KLCL_WORK_GROUP_DEFAULT, what);
    }
}

/* The table's split_columns: a valid cell is used, an invalid one is a miss for that setting alone (the
 * row's work_group still applies), and a table without the column (an older version's) is a miss too. */
static void test_split_columns_table(void **state)
{
    (void)state;
    const size_t builtin = builtin_split();
    klcl_work_group_source source;
    char cells[64];
    snprintf(cells, sizeof cells, "%zu\t8192", other_wg());
    write_row("work_group\tsplit_columns", cells);
    expect_split(8192, KLCL_WORK_GROUP_TABLE, "split_columns 8192");
    assert_int_equal(fresh_wg(&source), other_wg());
    for (size_t i = 0; i < BAD_SPLIT; i++) {
        char what[64];
        snprintf(cells, sizeof cells, "%zu\t%s", other_wg(), bad_split[i]);
        write_row("work_group\tsplit_columns", cells);
        snprintf(what, sizeof what, "split_columns '%s'", bad_split[i]);
        expect_split(builtin, KLCL_WORK_GROUP_DEFAULT, what);
        assert_int_equal(fresh_wg(&source), other_wg());
        assert_int_equal(source, KLCL_WORK_GROUP_TABLE);
    }
    write_entry("8");
    expect_split(builtin, KLCL_WORK_GROUP_DEFAULT, "no split_columns column");
}

static void test_split_columns_precedence(void **state)
{
    (void)state;
    write_row("work_group\tsplit_columns", "8\t8192");
    expect_split(8192, KLCL_WORK_GROUP_TABLE, "table");
    setenv("KLCL_SPLIT_COLUMNS", "1024", 1);
    expect_split(1024, KLCL_WORK_GROUP_ENV, "KLCL_SPLIT_COLUMNS over the table");
    setenv("KLCL_SPLIT_COLUMNS", "1000", 1);
    expect_split(8192, KLCL_WORK_GROUP_TABLE, "an ignored KLCL_SPLIT_COLUMNS, then the table");
    unsetenv("KLCL_SPLIT_COLUMNS");
    remove(table);
    expect_split(builtin_split(), KLCL_WORK_GROUP_DEFAULT, "neither");
}

static void test_split_columns_query(void **state)
{
    (void)state;
    size_t columns = 99;
    klcl_work_group_source source = KLCL_WORK_GROUP_TABLE;
    assert_int_equal(klcl_context_split_columns(NULL, &columns, NULL), KLCL_ERR_NULL_POINTER);
    klcl_context *ctx = tu_device_context(0);
    assert_int_equal(klcl_context_split_columns(ctx, NULL, &source), KLCL_ERR_NULL_POINTER);
    assert_non_null(strstr(klcl_last_error(ctx), "columns"));
    assert_int_equal(klcl_context_split_columns(ctx, &columns, NULL), KLCL_OK); /* source may be NULL */
    assert_int_equal(columns, builtin_split());
    klcl_context_destroy(ctx);

    klcl_context_options ro = KLCL_CONTEXT_OPTIONS_INIT;
    ro.device = "cpu";
    assert_int_equal(klcl_context_create(&ro, &ctx), KLCL_OK);
    columns = 99;
    assert_int_equal(klcl_context_split_columns(ctx, &columns, &source), KLCL_OK);
    assert_int_equal(columns, 0);
    assert_int_equal(source, KLCL_WORK_GROUP_DEFAULT);
    assert_int_equal(klcl_context_split_columns(ctx, NULL, NULL), KLCL_ERR_NULL_POINTER);
    assert_non_null(strstr(klcl_last_error(ctx), "columns"));
    klcl_context_destroy(ctx);
}

/* The parts of one row of 65536 columns on a new context. */
static size_t parts_of_one_row(void)
{
    klcl_context *ctx = tu_device_context(0);
    size_t parts = 0;
    assert_int_equal(klcl_context_row_strategy(ctx, 1, 65536, NULL, &parts), KLCL_OK);
    klcl_context_destroy(ctx);
    return parts;
}

/* The row strategy splits by the context's split columns. Work-groups of one work-item keep the floor of
 * 8 vectors per work-item below 4096 columns on any device; one row is fewer than any device's target. */
static void test_row_strategy_follows_split_columns(void **state)
{
    (void)state;
    setenv("KLCL_WORK_GROUP", "1", 1);
    setenv("KLCL_SPLIT_COLUMNS", "4096", 1);
    size_t parts = parts_of_one_row();
    if (parts < 2 || 65536 / parts < 4096) fail_msg("KLCL_SPLIT_COLUMNS=4096: %zu parts of 65536 columns", parts);
    setenv("KLCL_SPLIT_COLUMNS", "65536", 1);
    assert_int_equal(parts_of_one_row(), 1);
    write_row("work_group\tsplit_columns", "1\t16384");
    unsetenv("KLCL_SPLIT_COLUMNS");
    parts = parts_of_one_row();
    if (parts < 2 || 65536 / parts < 16384) fail_msg("table split_columns 16384: %zu parts of 65536 columns", parts);
    remove(table);
    parts = parts_of_one_row();
    if (builtin_split() > 65536 / 2 ? parts != 1 : parts < 2)
        fail_msg("built-in split columns %zu: %zu parts of 65536 columns", builtin_split(), parts);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    klcl_context *ctx = tu_device_context(0);
    size_t wg;
    assert_int_equal(klcl_context_work_group(NULL, &wg, NULL), KLCL_ERR_NULL_POINTER);
    assert_int_equal(klcl_context_work_group(ctx, NULL, NULL), KLCL_ERR_NULL_POINTER);
    assert_non_null(strstr(klcl_last_error(ctx), "size"));
    assert_int_equal(klcl_tune_table_get(ctx, NULL), KLCL_ERR_NULL_POINTER);
    assert_non_null(strstr(klcl_last_error(ctx), "work_group"));
    const size_t bad[] = {0, 3, 8192};
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(klcl_tune_table_set(ctx, bad[i]), KLCL_ERR_INVALID_VALUE);
        assert_non_null(strstr(klcl_last_error(ctx), "work_group"));
    }
    assert_int_equal(access(table, F_OK), -1); /* nothing written */
    /* A table that cannot be written: the status and the path, and nothing left behind. */
    setenv("KLCL_TUNE_FILE", "/nonexistent-klcl-folder/tuning.tsv", 1);
    assert_int_not_equal(klcl_tune_table_set(ctx, 4), KLCL_OK);
    assert_non_null(strstr(klcl_last_error(ctx), "/nonexistent-klcl-folder/tuning.tsv"));
    klcl_context_destroy(ctx);

    klcl_context_options ro = KLCL_CONTEXT_OPTIONS_INIT;
    ro.device = "cpu";
    assert_int_equal(klcl_context_create(&ro, &ctx), KLCL_OK);
    assert_int_equal(klcl_context_work_group(ctx, &wg, NULL), KLCL_OK);
    assert_int_equal(wg, 0);
    assert_int_equal(klcl_tune_table_set(ctx, 4), KLCL_ERR_UNSUPPORTED);
    assert_int_equal(klcl_tune_table_get(ctx, &wg), KLCL_ERR_UNSUPPORTED);
    klcl_context_destroy(ctx);

    assert_string_equal(klcl_work_group_source_name(KLCL_WORK_GROUP_TABLE), "table");
    assert_string_equal(klcl_work_group_source_name(KLCL_WORK_GROUP_ENV), "env");
    assert_string_equal(klcl_work_group_source_name(KLCL_WORK_GROUP_DEFAULT), "default");
    assert_null(klcl_work_group_source_name((klcl_work_group_source)42));

    char path[8];
    setenv("KLCL_TUNE_FILE", "/tmp/a/rather/long/path.tsv", 1);
    assert_int_equal(klcl_tune_table_path(path, sizeof path), KLCL_ERR_INVALID_VALUE);
    assert_int_equal(klcl_tune_table_path(NULL, 8), KLCL_ERR_NULL_POINTER);
}

/* klcl_tune refuses bad options before touching any device, naming the option. */
static void expect_refused(const klcl_tune_options *t, klcl_status want, const char *name)
{
    klcl_tune_report r;
    klcl_status st = klcl_tune(NULL, t, &r);
    if (st != want) fail_msg("%s: status %d, expected %d (%s)", name, st, want, r.error);
    if (!strstr(r.error, name)) fail_msg("the message does not name %s: %s", name, r.error);
}

static void test_tune_bad_options(void **state)
{
    (void)state;
    assert_int_equal(klcl_tune(NULL, NULL, NULL), KLCL_ERR_NULL_POINTER);
    klcl_tune_options t = KLCL_TUNE_OPTIONS_INIT;
    t.reps = -1;
    expect_refused(&t, KLCL_ERR_INVALID_VALUE, "reps");
    t.reps = 102;
    expect_refused(&t, KLCL_ERR_INVALID_VALUE, "reps");
    t = (klcl_tune_options)KLCL_TUNE_OPTIONS_INIT;
    t.sample_seconds = NAN;
    expect_refused(&t, KLCL_ERR_NONFINITE_ARG, "sample_seconds");
    t.sample_seconds = -1.0;
    expect_refused(&t, KLCL_ERR_INVALID_VALUE, "sample_seconds");
    t = (klcl_tune_options)KLCL_TUNE_OPTIONS_INIT;
    t.vocab_count = 1;
    expect_refused(&t, KLCL_ERR_NULL_POINTER, "vocabs");
    size_t v[5] = {1024, 0, 1024, 1024, 1024};
    t.vocabs = v;
    t.vocab_count = 5;
    expect_refused(&t, KLCL_ERR_INVALID_VALUE, "vocab_count");
    t.vocab_count = 2;
    expect_refused(&t, KLCL_ERR_INVALID_SHAPE, "vocabs[1]");
    t = (klcl_tune_options)KLCL_TUNE_OPTIONS_INIT;
    t.split_vocab_count = 1;
    expect_refused(&t, KLCL_ERR_NULL_POINTER, "split_vocabs");
    size_t sv[5] = {4096, 0, 4096, 4096, 4096};
    t.split_vocabs = sv;
    t.split_vocab_count = 0;
    expect_refused(&t, KLCL_ERR_INVALID_VALUE, "split_vocab_count");
    t.split_vocab_count = 5;
    expect_refused(&t, KLCL_ERR_INVALID_VALUE, "split_vocab_count");
    t.split_vocab_count = 2;
    expect_refused(&t, KLCL_ERR_INVALID_SHAPE, "split_vocabs[1]");
    sv[1] = (size_t)1 << 31;
    expect_refused(&t, KLCL_ERR_INVALID_SHAPE, "split_vocabs[1]");
    t = (klcl_tune_options)KLCL_TUNE_OPTIONS_INIT;
    t.size_count = 2;
    expect_refused(&t, KLCL_ERR_NULL_POINTER, "sizes");
    const size_t odd[] = {4, 3};
    t.sizes = odd;
    expect_refused(&t, KLCL_ERR_INVALID_VALUE, "sizes[1]");
    t = (klcl_tune_options)KLCL_TUNE_OPTIONS_INIT;
    t.max_work_group = 8192;
    expect_refused(&t, KLCL_ERR_INVALID_VALUE, "max_work_group");
    t = (klcl_tune_options)KLCL_TUNE_OPTIONS_INIT;
    t.vector_width = 4;
    expect_refused(&t, KLCL_ERR_INVALID_VALUE, "vector_width");
    t = (klcl_tune_options)KLCL_TUNE_OPTIONS_INIT;
    t.check_only = 2;
    expect_refused(&t, KLCL_ERR_INVALID_VALUE, "check_only");
    klcl_context_options cpu = KLCL_CONTEXT_OPTIONS_INIT;
    cpu.device = "cpu";
    klcl_tune_report r;
    assert_int_equal(klcl_tune(&cpu, NULL, &r), KLCL_ERR_UNSUPPORTED);
    assert_non_null(strstr(r.error, "CPU reference"));
    assert_int_equal(access(table, F_OK), -1);
}

/* What the precheck and progress callbacks saw: the pairs asked about, in order, and the lines. */
typedef struct seen {
    size_t w[16];
    int vw[16];
    size_t n;
    int reject_vw;    /* reject every pair at a width other than the first pair's (-1: none) */
    size_t reject_w;  /* reject this size (0: none) */
    int reject_all;
    char lines[64][160];
    size_t nlines;
} seen;

static int record_precheck(void *user, size_t w, int vw)
{
    seen *s = user;
    if (s->n < 16) {
        s->w[s->n] = w;
        s->vw[s->n++] = vw;
    }
    return !(s->reject_all || w == s->reject_w || (s->reject_vw >= 0 && vw != s->vw[0]));
}

static void record_progress(void *user, const char *what)
{
    seen *s = user;
    assert_true(strlen(what) < 160 && what[0]);
    if (s->nlines < 64) snprintf(s->lines[s->nlines++], 160, "%s", what);
}

/* The first progress line that starts with `prefix`, or NULL. */
static const char *line_starting(const seen *s, const char *prefix)
{
    for (size_t i = 0; i < s->nlines; i++)
        if (!strncmp(s->lines[i], prefix, strlen(prefix))) return s->lines[i];
    return NULL;
}

/* check_only: sizes built and checked at the width asked for, a precheck's refusal reported as a rejection
 * without a build, nothing timed or stored; a precheck that refuses every size leaves none. */
static void test_check_only_and_precheck(void **state)
{
    (void)state;
    const size_t sizes[] = {1, 2};
    seen *s = calloc(1, sizeof *s);
    klcl_tune_report *r = calloc(1, sizeof *r);
    assert_non_null(s);
    assert_non_null(r);
    s->reject_vw = -1;
    s->reject_w = 2;
    klcl_tune_options t = KLCL_TUNE_OPTIONS_INIT;
    t.sizes = sizes;
    t.size_count = 2;
    t.vector_width = 8;
    t.check_only = 1;
    t.precheck = record_precheck;
    t.precheck_user = s;
    t.progress = record_progress;
    t.progress_user = s;
    klcl_context_options co = KLCL_CONTEXT_OPTIONS_INIT;
    co.device = device_spec();
    klcl_status st = klcl_tune(&co, &t, r);
    if (st != KLCL_OK) fail_msg("check only: %s", r->error);
    assert_int_equal(r->work_group_vector_width, 8);
    assert_int_equal(r->candidate_count, 1);
    assert_int_equal(r->candidates[0], 1);
    assert_int_equal(r->rejected_count, 1);
    assert_int_equal(r->rejected[0], 2);
    assert_int_equal(r->case_count, 0);
    assert_int_equal(r->vector_width_count, 0);
    assert_int_equal(r->split_count, 0);
    assert_false(r->written);
    assert_int_equal(access(table, F_OK), -1);
    assert_int_equal(s->n, 2);
    assert_int_equal(s->w[0], 1);
    assert_int_equal(s->vw[0], 8);
    assert_int_equal(s->w[1], 2);
    assert_int_equal(s->vw[1], 8);
    /* Only the size the precheck let through was built and checked; nothing was timed. */
    assert_int_equal(s->nlines, 1);
    assert_string_equal(s->lines[0], "checking work-group size 1 at vector width 8");

    memset(s, 0, sizeof *s);
    s->reject_vw = -1;
    s->reject_all = 1;
    t.vector_width = 0;
    assert_int_equal(klcl_tune(&co, &t, r), KLCL_ERR_UNSUPPORTED);
    assert_non_null(strstr(r->error, "no work-group size"));
    assert_int_equal(r->rejected_count, 2);
    assert_int_equal(s->nlines, 0);
    assert_true(s->vw[0] == 8 || s->vw[0] == 16); /* the context's own width */
    assert_int_equal(r->work_group_vector_width, s->vw[0]);
    free(s);
    free(r);
}

/* A real run on small shapes: every listed candidate checked and timed, the fastest stored, and a new
 * context uses it. Size 2 is listed on purpose: PoCL 3.1 used to hang or crash there in the two-pass
 * losses (a return between barriers, since removed from the kernels). Two sizes only: each one costs a
 * build and a check of every loss, over a minute on a cold compiler cache. */
static void test_tiny_tune_run(void **state)
{
    (void)state;
    size_t vocabs[] = {1000, 4096}, split_vocabs[] = {4096, 16384};
    const size_t sizes[] = {2, 1}; /* any order */
    klcl_tune_options t = KLCL_TUNE_OPTIONS_INIT;
    t.vocabs = vocabs;
    t.vocab_count = 2;
    t.split_vocabs = split_vocabs;
    t.split_vocab_count = 2;
    t.rows = 16;
    t.reps = 3;
    t.sample_seconds = 0.002;
    klcl_context_options co = KLCL_CONTEXT_OPTIONS_INIT;
    co.device = device_spec();
    klcl_tune_report *r = calloc(1, sizeof *r);
    assert_non_null(r);

    /* The dry run on one size: every candidate costs a build of all kernels, and what it tests (nothing
     * written) does not need more. */
    t.sizes = sizes + 1;
    t.size_count = 1;
    t.dry_run = 1;
    /* A precheck refusing the other width: only the sizes' width is timed, the other reported rejected. */
    seen *s = calloc(1, sizeof *s);
    assert_non_null(s);
    s->reject_vw = 1;
    t.precheck = record_precheck;
    t.precheck_user = s;
    t.progress = record_progress;
    t.progress_user = s;
    klcl_status st = klcl_tune(&co, &t, r);
    if (st != KLCL_OK) fail_msg("dry run: %s", r->error);
    assert_false(r->written);
    assert_int_equal(access(table, F_OK), -1);
    const int w0 = r->work_group_vector_width;
    assert_int_equal(s->n, 3);
    assert_int_equal(s->w[0], 1);
    assert_int_equal(s->vw[0], w0);
    assert_int_equal(s->w[1] + s->w[2], 2);
    assert_int_equal(s->vw[1], 8);
    assert_int_equal(s->vw[2], 16);
    assert_int_equal(r->rejected_vector_width_count, 1);
    assert_int_equal(r->rejected_vector_widths[0], 24 - w0);
    assert_int_equal(r->vector_width_count, 1);
    assert_int_equal(r->vector_widths[0], w0);
    assert_int_equal(r->best_vector_width, w0);
    assert_non_null(line_starting(s, "checking work-group size 1 at vector width "));
    assert_non_null(line_starting(s, "timing work-group sizes (1 candidate): kl at 16 x 1000, case 1 of 4"));
    assert_non_null(line_starting(s, "timing work-group sizes (1 candidate): kl+grad at 16 x 4096, case 4 of 4"));
    assert_non_null(line_starting(s, "timing vector widths (1 candidate): "));
    assert_non_null(line_starting(s, "timing split columns (7 candidates): kl at 1 x 16384, case 3 of 4"));
    free(s);
    t.precheck = NULL;
    t.progress = NULL;

    t.sizes = sizes;
    t.size_count = 2;
    t.dry_run = 0;
    st = klcl_tune(&co, &t, r);
    if (st != KLCL_OK) fail_msg("klcl_tune: %s", r->error);
    assert_true(r->written);
    assert_string_equal(r->table_path, table);
    assert_true(r->candidate_count >= 1 && r->candidate_count <= 2);
    assert_int_equal(r->rejected_count, 0);
    const size_t in_order[] = {1, 2};
    int best_found = 0, default_found = 0;
    for (size_t c = 0; c < r->candidate_count; c++) {
        assert_int_equal(r->candidates[c], in_order[c]);
        assert_true(isfinite(r->score[c]) && r->score[c] > 0.0);
        assert_true(r->best_score <= r->score[c]);
        best_found += r->candidates[c] == r->best_work_group;
        default_found += r->candidates[c] == r->default_work_group;
    }
    assert_int_equal(best_found, 1);
    assert_int_equal(default_found, 1);
    assert_int_equal(r->case_count, 4);
    for (size_t k = 0; k < r->case_count; k++) {
        assert_int_equal(r->cases[k].rows, 16);
        assert_int_equal(r->cases[k].vocab, vocabs[k / 2]);
        assert_string_equal(r->cases[k].op, k % 2 ? "kl+grad" : "kl");
        assert_true(r->cases[k].calls >= 1);
        for (size_t c = 0; c < r->candidate_count; c++) {
            assert_true(r->cases[k].seconds[c] > 0.0);
            assert_true(r->cases[k].samples[c] == 1 || r->cases[k].samples[c] == 3);
        }
    }
    /* The score is the geometric mean of the cases, recomputed here from the report. */
    for (size_t c = 0; c < r->candidate_count; c++) {
        double logs = 0.0;
        for (size_t k = 0; k < r->case_count; k++) logs += log(r->cases[k].seconds[c]);
        assert_true(fabs(exp(logs / 4.0) - r->score[c]) <= 1e-9 * r->score[c]);
    }

    klcl_work_group_source source;
    size_t wg = fresh_wg(&source);
    assert_int_equal(source, KLCL_WORK_GROUP_TABLE);
    assert_int_equal(wg, r->best_work_group);
    assert_int_equal(table_get(), r->best_work_group);

    /* Vector widths at the fastest size: both pass the check here, the stored one is the faster, a new
     * context takes it from the table, and KLCL_VECTOR_WIDTH overrides it. */
    assert_int_equal(r->vector_width_count, 2);
    assert_int_equal(r->rejected_vector_width_count, 0);
    assert_int_equal(r->vector_widths[0], 8);
    assert_int_equal(r->vector_widths[1], 16);
    assert_true(r->vector_width_score[0] > 0.0 && r->vector_width_score[1] > 0.0);
    assert_int_equal(r->best_vector_width, r->vector_width_score[1] < r->vector_width_score[0] ? 16 : 8);
    int width = 0;
    for (int env = 0; env < 2; env++) {
        if (env) setenv("KLCL_VECTOR_WIDTH", r->best_vector_width == 8 ? "16" : "8", 1);
        klcl_context *c = NULL;
        assert_int_equal(klcl_context_create(&co, &c), KLCL_OK);
        assert_int_equal(klcl_context_vector_width(c, &width, &source), KLCL_OK);
        assert_int_equal(source, env ? KLCL_WORK_GROUP_ENV : KLCL_WORK_GROUP_TABLE);
        assert_int_equal(width, env ? 24 - r->best_vector_width : r->best_vector_width);
        klcl_context_destroy(c);
        unsetenv("KLCL_VECTOR_WIDTH");
    }

    /* Split columns at that size and width: the built-in / 16 to x 4, all checked and timed on one row at
     * each split vocabulary; the stored one is the built-in unless the fastest is 3% faster, and a new
     * context takes it from the table. */
    const size_t builtin = builtin_split();
    assert_int_equal(r->default_split_columns, builtin);
    assert_int_equal(r->split_count, 7);
    size_t fastest = 0, default_at = 99, best_at = 99;
    for (size_t c = 0; c < r->split_count; c++) {
        assert_int_equal(r->split_columns[c], c < 4 ? builtin >> (4 - c) : builtin << (c - 4));
        assert_true(isfinite(r->split_score[c]) && r->split_score[c] > 0.0);
        if (r->split_score[c] < r->split_score[fastest]) fastest = c;
        if (r->split_columns[c] == builtin) default_at = c;
        if (r->split_columns[c] == r->best_split_columns) best_at = c;
    }
    assert_int_equal(default_at, 4);
    assert_true(best_at < r->split_count);
    assert_int_equal(best_at, r->split_score[fastest] <= 0.97 * r->split_score[default_at] ? fastest : default_at);
    assert_int_equal(r->split_case_count, 4);
    for (size_t k = 0; k < r->split_case_count; k++) {
        assert_int_equal(r->split_cases[k].rows, 1);
        assert_int_equal(r->split_cases[k].vocab, split_vocabs[k / 2]);
        assert_string_equal(r->split_cases[k].op, k % 2 ? "kl+grad" : "kl");
        for (size_t c = 0; c < r->split_count; c++) assert_true(r->split_cases[k].seconds[c] > 0.0);
    }
    assert_non_null(strstr(read_all(table), "\tsplit_columns\t"));
    size_t columns = 0;
    klcl_context *c = NULL;
    assert_int_equal(klcl_context_create(&co, &c), KLCL_OK);
    assert_int_equal(klcl_context_split_columns(c, &columns, &source), KLCL_OK);
    assert_int_equal(source, KLCL_WORK_GROUP_TABLE);
    assert_int_equal(columns, r->best_split_columns);
    klcl_context_destroy(c);
    free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_round_trip, clean),
        cmocka_unit_test_setup(test_other_rows_and_columns_kept, clean),
        cmocka_unit_test_setup(test_damaged_tables_are_misses, clean),
        cmocka_unit_test_setup(test_precedence, clean),
        cmocka_unit_test_setup(test_split_columns_env, clean),
        cmocka_unit_test_setup(test_split_columns_table, clean),
        cmocka_unit_test_setup(test_split_columns_precedence, clean),
        cmocka_unit_test_setup(test_split_columns_query, clean),
        cmocka_unit_test_setup(test_row_strategy_follows_split_columns, clean),
        cmocka_unit_test_setup(test_bad_arguments, clean),
        cmocka_unit_test_setup(test_tune_bad_options, clean),
        cmocka_unit_test_setup(test_check_only_and_precheck, clean),
        cmocka_unit_test_setup(test_tiny_tune_run, clean),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
