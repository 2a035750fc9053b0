/* The tuning table: the settings measured best for a device (work-group size, vector width, split
 * columns), on disk, and the precedence that picks each of a context's settings (klcl_tune's forced
 * candidate > the environment variable: KLCL_WORK_GROUP, KLCL_VECTOR_WIDTH, KLCL_SPLIT_COLUMNS > table >
 * built-in default).
 *
 * File: $KLCL_TUNE_FILE, else tuning.tsv in the binary cache's folder. Text, tab-separated:
 *
 *     # klcl tuning table, format 1 (...)
 *     device  vendor  driver  platform  klcl  work_group  vector_width  split_columns  best_ms  ...  date
 *     <one row per device key>
 *
 * The second line names the columns; a reader finds its columns by name and ignores the others, so later
 * parameters become new columns without a new format (vector_width and split_columns came that way: an
 * older table without them is a miss for those settings alone). The key columns are the device name,
 * vendor, driver version, platform version and klcl version: any of them changing means the measurement
 * no longer applies. Written whole to a temporary file and renamed. A file that is not exactly this shape
 * (another first line, a missing key or work_group column, a row with the wrong number of cells, no final
 * newline: a truncated write) is a miss as a whole; a cell that is not decimal digits in its setting's
 * range (work_group: a power of two in [1, KLCL_WORK_GROUP_LIMIT]; vector_width: 8 or 16; split_columns:
 * a power of two in [KLCL_SPLIT_COLUMNS_MIN, KLCL_SPLIT_COLUMNS_MAX]) is a miss for that setting of its
 * device. A miss means the default, never an error. */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TABLE_MAGIC "# klcl tuning table, format 1"
#define TABLE_FIRST_LINE \
    TABLE_MAGIC " (tab-separated; the next line names the columns; one row per device; written by klcl tune)"
enum { TABLE_MAX_BYTES = 1 << 20, MAX_COLS = 32, FIELD_BYTES = 256 };

static const char *const key_columns[] = {"device", "vendor", "driver", "platform", "klcl"};
enum { KEY_COLUMNS = sizeof key_columns / sizeof key_columns[0] };

typedef struct tune_key {
    char field[KEY_COLUMNS][FIELD_BYTES];
} tune_key;

/* A parsed table: the file's text split in place into cells. */
typedef struct table {
    char *text;
    size_t ncols, nrows;
    const char *col[MAX_COLS];
    const char **cells; /* nrows x ncols */
} table;

/* Tabs and line breaks would break the format: a device string holding one is stored with spaces. */
static void flatten(char *s)
{
    for (; *s; s++)
        if (*s == '\t' || *s == '\n' || *s == '\r') *s = ' ';
}

static void key_of(const klcl_context *ctx, tune_key *k)
{
    klcl_device_string(ctx->device, CL_DEVICE_NAME, k->field[0], FIELD_BYTES);
    klcl_device_string(ctx->device, CL_DEVICE_VENDOR, k->field[1], FIELD_BYTES);
    klcl_device_string(ctx->device, CL_DRIVER_VERSION, k->field[2], FIELD_BYTES);
    klcl_platform_string(ctx->platform, CL_PLATFORM_VERSION, k->field[3], FIELD_BYTES);
    snprintf(k->field[4], FIELD_BYTES, "%s", klcl_version_string());
    for (int i = 0; i < KEY_COLUMNS; i++) flatten(k->field[i]);
}

klcl_status klcl_tune_table_path(char *out, size_t cap)
{
    if (!out) return KLCL_ERR_NULL_POINTER;
    const char *file = getenv("KLCL_TUNE_FILE");
    int n;
    if (file && *file) {
        n = snprintf(out, cap, "%s", file);
    } else {
        char dir[3072];
        if (!klcl_cache_dir(dir, sizeof dir, 0)) {
            if (cap) out[0] = '\0';
            return KLCL_ERR_UNSUPPORTED;
        }
        n = snprintf(out, cap, "%s/tuning.tsv", dir);
    }
    if (n < 0 || (size_t)n >= cap) {
        if (cap) out[0] = '\0';
        return KLCL_ERR_INVALID_VALUE;
    }
    return KLCL_OK;
}

static void table_free(table *t)
{
    free(t->text);
    free(t->cells);
    memset(t, 0, sizeof *t);
}

static int column(const table *t, const char *name)
{
    for (size_t c = 0; c < t->ncols; c++)
        if (strcmp(t->col[c], name) == 0) return (int)c;
    return -1;
}

/* Splits the line at *at (ending in '\n') into cells at tabs; returns the count, or -1 past max. */
static int split_line(char **at, const char **cells, size_t max)
{
    char *p = *at;
    size_t n = 0;
    for (;;) {
        if (n == max) return -1;
        cells[n++] = p;
        p += strcspn(p, "\t\n");
        char sep = *p;
        *p++ = '\0';
        if (sep == '\n') break;
    }
    *at = p;
    return (int)n;
}

/* Reads and checks the whole table; 0 on any miss (t left empty). */
static int table_read(const char *path, table *t)
{
    memset(t, 0, sizeof *t);
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    size_t cap = 4096, len = 0, got;
    char *text = malloc(cap + 1);
    while (text && (got = fread(text + len, 1, cap - len, f)) > 0) {
        len += got;
        if (len == cap) {
            char *bigger = cap >= TABLE_MAX_BYTES ? NULL : realloc(text, 2 * cap + 1);
            if (!bigger) {
                free(text);
                text = NULL;
                break;
            }
            text = bigger;
            cap *= 2;
        }
    }
    int read_error = ferror(f);
    fclose(f);
    if (!text || read_error) goto miss;
    text[len] = '\0';
    t->text = text;
    /* A whole file ends with a newline and holds no NUL; anything else was cut short or is not ours. */
    if (len == 0 || text[len - 1] != '\n' || strlen(text) != len) goto miss;
    size_t lines = 0;
    for (size_t i = 0; i < len; i++) lines += text[i] == '\n';
    char *at = text;
    char *first_end = strchr(at, '\n');
    *first_end = '\0';
    size_t magic = strlen(TABLE_MAGIC);
    if (strncmp(at, TABLE_MAGIC, magic) != 0 || (at[magic] != '\0' && at[magic] != ' ')) goto miss;
    at = first_end + 1;
    if (lines < 2) goto miss;
    int n = split_line(&at, t->col, MAX_COLS);
    if (n < 1) goto miss;
    t->ncols = (size_t)n;
    for (size_t c = 0; c < t->ncols; c++) {
        if (!t->col[c][0]) goto miss;
        for (size_t d = 0; d < c; d++)
            if (strcmp(t->col[c], t->col[d]) == 0) goto miss;
    }
    for (int i = 0; i < KEY_COLUMNS; i++)
        if (column(t, key_columns[i]) < 0) goto miss;
    if (column(t, "work_group") < 0) goto miss;
    t->nrows = lines - 2;
    t->cells = calloc(t->nrows ? t->nrows * t->ncols : 1, sizeof *t->cells);
    if (!t->cells) goto miss;
    for (size_t r = 0; r < t->nrows; r++)
        if (split_line(&at, t->cells + r * t->ncols, t->ncols) != (int)t->ncols) goto miss;
    return 1;
miss:
    if (!t->text) free(text);
    table_free(t);
    return 0;
}

/* The row of key k, or -1. */
static long find_row(const table *t, const tune_key *k)
{
    int kc[KEY_COLUMNS];
    for (int i = 0; i < KEY_COLUMNS; i++) kc[i] = column(t, key_columns[i]);
    for (size_t r = 0; r < t->nrows; r++) {
        int same = 1;
        for (int i = 0; i < KEY_COLUMNS && same; i++) same = strcmp(t->cells[r * t->ncols + kc[i]], k->field[i]) == 0;
        if (same) return (long)r;
    }
    return -1;
}

/* A setting as the table and the environment hold it: decimal digits only (no sign, space or prefix), at
 * most 10 of them; 0 otherwise. The setting's own check then says whether the value is in its range. */
static size_t parse_setting(const char *s)
{
    if (!s || !*s || strspn(s, "0123456789") != strlen(s) || strlen(s) > 10) return 0;
    return (size_t)strtoull(s, NULL, 10);
}

static int is_pow2(size_t v)
{
    return v && !(v & (v - 1));
}

/* The table's work_group: a power of two in [1, KLCL_WORK_GROUP_LIMIT], as klcl_tune_table_set stores. */
static int work_group_ok(size_t w)
{
    return is_pow2(w) && w <= KLCL_WORK_GROUP_LIMIT;
}

/* KLCL_WORK_GROUP: any size the clamps can make sense of, not only powers of two (they round down). */
static int work_group_env_ok(size_t w)
{
    return w >= 1 && w <= KLCL_WORK_GROUP_LIMIT;
}

static int vector_width_ok(size_t w)
{
    return w == 8 || w == 16;
}

static int split_columns_ok(size_t c)
{
    return is_pow2(c) && c >= KLCL_SPLIT_COLUMNS_MIN && c <= KLCL_SPLIT_COLUMNS_MAX;
}

/* The environment variable `name` when `valid` accepts it, else 0: a value it cannot mean is ignored. */
static size_t env_setting(const char *name, int (*valid)(size_t))
{
    const size_t v = parse_setting(getenv(name));
    return valid(v) ? v : 0;
}

/* This device's entry in column `name` of the table when `valid` accepts it, else 0. */
static size_t table_lookup(const klcl_context *ctx, const char *name, int (*valid)(size_t))
{
    char path[4096];
    if (klcl_tune_table_path(path, sizeof path) != KLCL_OK) return 0;
    table t;
    if (!table_read(path, &t)) return 0;
    tune_key k;
    key_of(ctx, &k);
    long r = find_row(&t, &k);
    const int col = column(&t, name);
    size_t v = r < 0 || col < 0 ? 0 : parse_setting(t.cells[(size_t)r * t.ncols + (size_t)col]);
    table_free(&t);
    return valid(v) ? v : 0;
}

/* A build setting from, in order: the tuner's candidate (forced), the environment (env, already checked),
 * this device's entry in the table's `column` when `valid` accepts it, the built-in; *source says which.
 * The table is read only when neither of the first two is set. */
static size_t choose_setting(const klcl_context *ctx, size_t forced, size_t env, const char *column,
                             int (*valid)(size_t), size_t builtin, klcl_work_group_source *source)
{
    size_t v = 0;
    if (forced) {
        *source = KLCL_WORK_GROUP_FORCED;
        return forced;
    }
    if (env) {
        *source = KLCL_WORK_GROUP_ENV;
        return env;
    }
    if ((v = table_lookup(ctx, column, valid)) != 0) {
        *source = KLCL_WORK_GROUP_TABLE;
        return v;
    }
    *source = KLCL_WORK_GROUP_DEFAULT;
    return builtin;
}

size_t klcl_work_group_request(klcl_context *ctx, size_t builtin)
{
    ctx->wg_default = builtin;
    return choose_setting(ctx, ctx->wg_forced, env_setting("KLCL_WORK_GROUP", work_group_env_ok), "work_group",
                          work_group_ok, builtin, &ctx->wg_source);
}

int klcl_vector_width_request(klcl_context *ctx, int builtin)
{
    ctx->vw_default = builtin;
    return (int)choose_setting(ctx, (size_t)ctx->vw_forced, env_setting("KLCL_VECTOR_WIDTH", vector_width_ok),
                               "vector_width", vector_width_ok, (size_t)builtin, &ctx->vw_source);
}

size_t klcl_split_columns_request(klcl_context *ctx, size_t builtin)
{
    ctx->split_default = builtin;
    return choose_setting(ctx, ctx->split_forced, env_setting("KLCL_SPLIT_COLUMNS", split_columns_ok),
                          "split_columns", split_columns_ok, builtin, &ctx->split_source);
}

/* What klcl_context_work_group, klcl_context_vector_width and klcl_context_split_columns share: the
 * checks (`what` names the output argument in the message), the source's default, and the build the value
 * comes from. KLCL_OK without a build on the CPU reference, which has no value to give. */
static klcl_status setting_query(klcl_context *ctx, const void *out, const char *what, klcl_work_group_source *source)
{
    if (!ctx) return KLCL_ERR_NULL_POINTER;
    ctx->error[0] = '\0';
    if (!out) return klcl_fail(ctx, KLCL_ERR_NULL_POINTER, "%s is NULL", what);
    if (source) *source = KLCL_WORK_GROUP_DEFAULT;
    return ctx->is_reference ? KLCL_OK : klcl_program_build(ctx);
}

klcl_status klcl_context_vector_width(klcl_context *ctx, int *width, klcl_work_group_source *source)
{
    const klcl_status st = setting_query(ctx, width, "klcl_context_vector_width: width", source);
    if (width) *width = 0;
    if (st != KLCL_OK || ctx->is_reference) return st;
    *width = ctx->vw;
    if (source) *source = ctx->vw_source;
    return KLCL_OK;
}

klcl_status klcl_context_split_columns(klcl_context *ctx, size_t *columns, klcl_work_group_source *source)
{
    const klcl_status st = setting_query(ctx, columns, "klcl_context_split_columns: columns", source);
    if (columns) *columns = 0;
    if (st != KLCL_OK || ctx->is_reference) return st;
    *columns = ctx->split_columns;
    if (source) *source = ctx->split_source;
    return KLCL_OK;
}

const char *klcl_work_group_source_name(klcl_work_group_source source)
{
    switch (source) {
    case KLCL_WORK_GROUP_DEFAULT: return "default";
    case KLCL_WORK_GROUP_TABLE: return "table";
    case KLCL_WORK_GROUP_ENV: return "env";
    case KLCL_WORK_GROUP_FORCED: return "forced";
    }
    return NULL;
}

klcl_status klcl_context_work_group(klcl_context *ctx, size_t *size, klcl_work_group_source *source)
{
    const klcl_status st = setting_query(ctx, size, "klcl_context_work_group: size", source);
    if (size) *size = 0;
    if (st != KLCL_OK || ctx->is_reference) return st;
    *size = ctx->wg;
    if (source) *source = ctx->wg_source;
    return KLCL_OK;
}

klcl_status klcl_tune_table_get(klcl_context *ctx, size_t *work_group)
{
    if (!ctx) return KLCL_ERR_NULL_POINTER;
    ctx->error[0] = '\0';
    if (!work_group) return klcl_fail(ctx, KLCL_ERR_NULL_POINTER, "klcl_tune_table_get: work_group is NULL");
    *work_group = 0;
    if (ctx->is_reference)
        return klcl_fail(ctx, KLCL_ERR_UNSUPPORTED, "the CPU reference has no work-group size to look up");
    *work_group = table_lookup(ctx, "work_group", work_group_ok);
    return KLCL_OK;
}

/* Writes t (with ncols columns named col) to path through a temporary file in the same folder. */
static klcl_status table_write(klcl_context *ctx, const char *path, const char *const *col, size_t ncols,
                               const char *const *cells, size_t nrows)
{
    char tmp[4200];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.XXXXXX", path) >= sizeof tmp)
        return klcl_fail(ctx, KLCL_ERR_INVALID_VALUE, "tuning table %s: path too long", path);
    int fd = mkstemp(tmp);
    if (fd < 0) return klcl_fail(ctx, KLCL_ERR_INVALID_VALUE, "tuning table %s: %s", tmp, strerror(errno));
    FILE *f = fdopen(fd, "wb");
    if (!f) {
        close(fd);
        remove(tmp);
        return klcl_fail(ctx, KLCL_ERR_OUT_OF_HOST_MEMORY, "tuning table %s: fdopen failed", tmp);
    }
    int ok = fprintf(f, "%s\n", TABLE_FIRST_LINE) > 0;
    for (size_t c = 0; c < ncols; c++) ok = ok && fprintf(f, "%s%s", col[c], c + 1 < ncols ? "\t" : "\n") >= 0;
    for (size_t r = 0; r < nrows; r++)
        for (size_t c = 0; c < ncols; c++)
            ok = ok && fprintf(f, "%s%s", cells[r * ncols + c], c + 1 < ncols ? "\t" : "\n") >= 0;
    int saved = errno;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) {
        if (ok) saved = errno;
        remove(tmp);
        return klcl_fail(ctx, KLCL_ERR_INVALID_VALUE, "tuning table %s: cannot write: %s", path, strerror(saved));
    }
    return KLCL_OK;
}

klcl_status klcl_tune_table_store(klcl_context *ctx, const char *const *names, const char *const *values, size_t n)
{
    char path[4096];
    if (ctx->is_reference)
        return klcl_fail(ctx, KLCL_ERR_UNSUPPORTED, "the CPU reference has no work-group size to store");
    klcl_status st = klcl_tune_table_path(path, sizeof path);
    if (st != KLCL_OK)
        return klcl_fail(ctx, st, "tuning table: no folder (set KLCL_TUNE_FILE, KLCL_CACHE_DIR or HOME)");
    const char *file = getenv("KLCL_TUNE_FILE");
    char dir[3072];
    if (!(file && *file) && !klcl_cache_dir(dir, sizeof dir, 1))
        return klcl_fail(ctx, KLCL_ERR_INVALID_VALUE, "tuning table %s: cannot create its folder", path);

    table old;
    if (!table_read(path, &old)) memset(&old, 0, sizeof old); /* missing or damaged: start afresh */
    tune_key k;
    key_of(ctx, &k);

    /* Columns: the keys, the old file's other columns (kept for rows written by newer versions), then the
     * new values' columns. */
    const char *col[MAX_COLS];
    size_t ncols = 0;
    for (int i = 0; i < KEY_COLUMNS; i++) col[ncols++] = key_columns[i];
    for (size_t c = 0; c < old.ncols && ncols < MAX_COLS; c++) {
        int seen = 0;
        for (size_t d = 0; d < ncols && !seen; d++) seen = strcmp(col[d], old.col[c]) == 0;
        if (!seen) col[ncols++] = old.col[c];
    }
    for (size_t v = 0; v < n; v++) {
        int seen = 0;
        for (size_t d = 0; d < ncols && !seen; d++) seen = strcmp(col[d], names[v]) == 0;
        if (!seen && ncols < MAX_COLS) col[ncols++] = names[v];
    }

    long mine = old.ncols ? find_row(&old, &k) : -1;
    size_t nrows = old.nrows + (mine < 0);
    const char **cells = calloc(nrows * ncols, sizeof *cells);
    char(*flat)[FIELD_BYTES] = calloc(n ? n : 1, sizeof *flat);
    if (!cells || !flat) {
        st = klcl_fail(ctx, KLCL_ERR_OUT_OF_HOST_MEMORY, "tuning table: out of host memory");
        goto done;
    }
    for (size_t r = 0; r < old.nrows; r++)
        for (size_t c = 0; c < ncols; c++) {
            int oc = column(&old, col[c]);
            cells[r * ncols + c] = oc < 0 ? "" : old.cells[r * old.ncols + (size_t)oc];
        }
    size_t row = mine < 0 ? old.nrows : (size_t)mine;
    for (size_t c = 0; c < ncols; c++) cells[row * ncols + c] = "";
    for (int i = 0; i < KEY_COLUMNS; i++) cells[row * ncols + (size_t)i] = k.field[i];
    for (size_t v = 0; v < n; v++) {
        snprintf(flat[v], FIELD_BYTES, "%s", values[v]);
        flatten(flat[v]);
        for (size_t c = 0; c < ncols; c++)
            if (strcmp(col[c], names[v]) == 0) cells[row * ncols + c] = flat[v];
    }
    st = table_write(ctx, path, col, ncols, cells, nrows);
done:
    free(cells);
    free(flat);
    table_free(&old);
    return st;
}

klcl_status klcl_tune_table_set(klcl_context *ctx, size_t work_group)
{
    if (!ctx) return KLCL_ERR_NULL_POINTER;
    ctx->error[0] = '\0';
    if (!work_group_ok(work_group))
        return klcl_fail(ctx, KLCL_ERR_INVALID_VALUE, "work_group %zu: must be a power of two from 1 to %d",
                         work_group, KLCL_WORK_GROUP_LIMIT);
    char text[32];
    snprintf(text, sizeof text, "%zu", work_group);
    const char *names[] = {"work_group"}, *values[] = {text};
    return klcl_tune_table_store(ctx, names, values, 1);
}
