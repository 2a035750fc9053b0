/* klcl tune: times the row kernels at every work-group size the device allows, then vector widths and
 * split columns (klcl_tune), prints the tables of times, and stores the winners in the tuning table for
 * the device; --show prints what is stored and what a new context would use, without timing anything.
 *
 * Each size is first checked in a child process (every loss with gradient against the CPU reference,
 * klcl_tune on that size alone): a driver can crash on a size it claims to support, and a crash in a
 * child only rejects that size, where in klcl_tune itself it would end the run. The parent touches no
 * OpenCL state before the children are done, so forking is safe. */
#define _POSIX_C_SOURCE 200809L /* fork, waitpid */

#include "tool.h"

#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define CMD "klcl tune"

static const char *const tune_usage =
    "usage: klcl tune [--device SPEC] [--vocab V,V,...] [--split-vocab V,V,...] [--rows N] [--reps N]\n"
    "                 [--sample-seconds S] [--max-work-group N] [--dry-run] [--json]\n"
    "       klcl tune --show [--device SPEC] [--json]\n"
    "\n"
    "Checks every power-of-two work-group size from 1 to the device's limit on every loss against the CPU\n"
    "reference, each in a child process (a size that fails, differs or crashes is rejected), times the\n"
    "rest on the row kernels (kl forward and kl with gradient at each vocabulary), and picks the fastest\n"
    "(lowest geometric mean of the median times). At that size it checks and times vector widths 8 and 16\n"
    "the same way, then at that width the split columns (the fewest columns per part when a row is split\n"
    "across work-groups: 1/16 to 4 times the built-in, on one row at each split vocabulary; the built-in\n"
    "is kept unless another is at least 3% faster). It stores the three in the tuning table, keyed by\n"
    "device, vendor, driver, platform version and klcl version.\n"
    "Contexts created afterwards on that device use them, unless KLCL_WORK_GROUP, KLCL_VECTOR_WIDTH or\n"
    "KLCL_SPLIT_COLUMNS is set.\n"
    "\n"
    "  --device SPEC          P:D, opencl, or a device name substring (default: as klcl eval picks)\n"
    "  --vocab V,V,...        vocabularies to time, at most 4 (default 32768,131072)\n"
    "  --split-vocab V,V,...  vocabularies of the split columns' cases, one row each, at most 4\n"
    "                         (default 65536,262144,1048576)\n"
    "  --rows N               rows per call (default: as many as fit in 32 MiB per logits tensor)\n"
    "  --reps N               timed samples per size and case, the median kept (default 5)\n"
    "  --sample-seconds S     one sample repeats the call for about this long (default 0.1)\n"
    "  --max-work-group N     largest size to time (default: the device's limit)\n"
    "  --dry-run              time and print, leave the table alone\n"
    "  --show                 print the table's path, this device's entry and the settings a new context\n"
    "                         uses\n"
    "  --json                 print one JSON object instead of text\n"
    "\n"
    "table: $KLCL_TUNE_FILE, else tuning.tsv in the binary cache folder ($KLCL_CACHE_DIR, else\n"
    "$XDG_CACHE_HOME/klcl, else ~/.cache/klcl)\n";

static int device_exit(klcl_status st)
{
    if (st == KLCL_ERR_OUT_OF_HOST_MEMORY) return EXIT_IO;
    if (st == KLCL_ERR_INVALID_VALUE || st == KLCL_ERR_INVALID_SHAPE || st == KLCL_ERR_NULL_POINTER) return EXIT_USAGE;
    return EXIT_DEVICE;
}

/* --show: the stored entry and what a context on the device would use now. */
static int show(const char *device, int json)
{
    klcl_context_options co = KLCL_CONTEXT_OPTIONS_INIT;
    co.device = device;
    klcl_context *ctx = NULL;
    char path[1024];
    klcl_status path_st = klcl_tune_table_path(path, sizeof path);
    klcl_status st = klcl_context_create(&co, &ctx);
    if (st != KLCL_OK) {
        fprintf(stderr, CMD ": cannot open the device%s%s: %s\n", device ? " " : "", device ? device : "",
                klcl_status_string(st));
        return EXIT_DEVICE;
    }
    size_t stored = 0, used = 0, split = 0;
    int width = 0;
    klcl_work_group_source source = KLCL_WORK_GROUP_DEFAULT, width_source = KLCL_WORK_GROUP_DEFAULT;
    klcl_work_group_source split_source = KLCL_WORK_GROUP_DEFAULT;
    if (klcl_context_is_reference(ctx)) {
        fprintf(stderr, CMD ": the CPU reference has no work-group size (pick an OpenCL device with --device)\n");
        klcl_context_destroy(ctx);
        return EXIT_USAGE;
    }
    if ((st = klcl_tune_table_get(ctx, &stored)) != KLCL_OK ||
        (st = klcl_context_work_group(ctx, &used, &source)) != KLCL_OK ||
        (st = klcl_context_vector_width(ctx, &width, &width_source)) != KLCL_OK ||
        (st = klcl_context_split_columns(ctx, &split, &split_source)) != KLCL_OK) {
        fprintf(stderr, CMD ": %s: %s\n", klcl_status_string(st), klcl_last_error(ctx));
        klcl_context_destroy(ctx);
        return device_exit(st);
    }
    if (json) {
        printf("{\n  \"device\": ");
        tool_json_string(stdout, klcl_context_device_name(ctx));
        printf(",\n  \"table_path\": ");
        if (path_st == KLCL_OK)
            tool_json_string(stdout, path);
        else
            printf("null");
        if (stored)
            printf(",\n  \"stored_work_group\": %zu", stored);
        else
            printf(",\n  \"stored_work_group\": null");
        printf(",\n  \"work_group\": %zu,\n  \"source\": \"%s\",\n  \"vector_width\": %d,\n  \"vector_width_source\": "
               "\"%s\",\n  \"split_columns\": %zu,\n  \"split_columns_source\": \"%s\"\n}\n",
               used, klcl_work_group_source_name(source), width, klcl_work_group_source_name(width_source), split,
               klcl_work_group_source_name(split_source));
    } else {
        printf("device      %s\n", klcl_context_device_name(ctx));
        printf("table       %s\n", path_st == KLCL_OK ? path : "(none: set KLCL_TUNE_FILE, KLCL_CACHE_DIR or HOME)");
        if (stored)
            printf("entry       work_group %zu\n", stored);
        else
            printf("entry       none for this device, driver and klcl version\n");
        printf("work group  %zu (%s)\n", used, klcl_work_group_source_name(source));
        printf("vector      %d floats (%s)\n", width, klcl_work_group_source_name(width_source));
        printf("split       parts of %zu columns or more (%s)\n", split, klcl_work_group_source_name(split_source));
    }
    klcl_context_destroy(ctx);
    return EXIT_OK;
}

/* What the child checks found. */
typedef struct size_checks {
    size_t ok[KLCL_TUNE_MAX_CANDIDATES], n_ok;
    size_t bad[KLCL_TUNE_MAX_CANDIDATES], n_bad;
    char why[KLCL_TUNE_MAX_CANDIDATES][64];
} size_checks;

enum { CHILD_OK = 0, CHILD_REJECTED = 10, CHILD_BEYOND = 11, CHILD_FAILED = 12 };

/* In the child: klcl_tune on size w alone, tiny shapes (the split phase's too), table untouched. */
static int child_check(const char *device, size_t w)
{
    klcl_context_options co = KLCL_CONTEXT_OPTIONS_INIT;
    co.device = device;
    size_t vocab = 64;
    klcl_tune_options t = KLCL_TUNE_OPTIONS_INIT;
    t.sizes = &w;
    t.size_count = 1;
    t.vocabs = &vocab;
    t.vocab_count = 1;
    t.split_vocabs = &vocab;
    t.split_vocab_count = 1;
    t.rows = 1;
    t.reps = 1;
    t.sample_seconds = 1e-6;
    t.dry_run = 1;
    klcl_tune_report *r = calloc(1, sizeof *r);
    if (!r) return CHILD_FAILED;
    klcl_status st = klcl_tune(&co, &t, r);
    int rc = st == KLCL_OK                  ? CHILD_OK
             : r->rejected_count            ? CHILD_REJECTED
             : st == KLCL_ERR_UNSUPPORTED   ? CHILD_BEYOND
                                            : CHILD_FAILED;
    free(r);
    return rc;
}

/* Checks 1, 2, 4, ... up to max_wg (0: until the device's limit) each in a child process. -1 when no
 * child can be started. */
static int check_sizes(const char *device, size_t max_wg, size_checks *c)
{
    memset(c, 0, sizeof *c);
    for (size_t w = 1; w <= (max_wg ? max_wg : 4096); w *= 2) {
        fflush(NULL);
        pid_t pid = fork();
        if (pid < 0) return -1;
        if (pid == 0) _exit(child_check(device, w));
        int status = 0;
        if (waitpid(pid, &status, 0) != pid) return -1;
        if (WIFEXITED(status) && WEXITSTATUS(status) == CHILD_OK) {
            c->ok[c->n_ok++] = w;
            continue;
        }
        if (WIFEXITED(status) && WEXITSTATUS(status) == CHILD_BEYOND) break;
        if (WIFSIGNALED(status))
            snprintf(c->why[c->n_bad], sizeof c->why[0], "crashed (signal %d)", WTERMSIG(status));
        else if (WEXITSTATUS(status) == CHILD_REJECTED)
            snprintf(c->why[c->n_bad], sizeof c->why[0], "results differ from the CPU reference");
        else
            snprintf(c->why[c->n_bad], sizeof c->why[0], "failed (exit status %d)", WEXITSTATUS(status));
        c->bad[c->n_bad++] = w;
        if (WIFEXITED(status) && WEXITSTATUS(status) == CHILD_FAILED && w == 1) break; /* no device: the run says */
    }
    return 0;
}

/* A phase's times: one column per candidate (cand[0..n), the setting timed), one row per case, then the
 * geometric means, marking the stored candidate (*) and the built-in default (d). */
static void print_times(const klcl_tune_case *cases, size_t ncases, const size_t *cand, size_t n, const double *score,
                        size_t best, size_t def)
{
    printf("%-8s %7s %8s %6s", "op", "N", "V", "calls");
    for (size_t c = 0; c < n; c++) printf(" %8zu", cand[c]);
    printf("\n");
    for (size_t k = 0; k < ncases; k++) {
        const klcl_tune_case *tc = &cases[k];
        printf("%-8s %7zu %8zu %6zu", tc->op, tc->rows, tc->vocab, tc->calls);
        for (size_t c = 0; c < n; c++) printf(" %7.3f%s", 1e3 * tc->seconds[c], tc->samples[c] == 1 ? "~" : " ");
        printf("\n");
    }
    printf("%-8s %7s %8s %6s", "geomean", "", "", "");
    for (size_t c = 0; c < n; c++)
        printf(" %7.3f%c", 1e3 * score[c], cand[c] == best ? '*' : cand[c] == def ? 'd' : ' ');
    printf("\n");
}

static void print_text(const klcl_tune_report *r, const size_checks *checks)
{
    printf("klcl tune on %s: median ms per call; * fastest (stored), d built-in default\n\n", r->device);
    print_times(r->cases, r->case_count, r->candidates, r->candidate_count, r->score, r->best_work_group,
                r->default_work_group);
    printf("(~: one sample only, over 3x slower than the best on its first)\n");
    for (size_t i = 0; i < checks->n_bad; i++)
        printf("rejected: work-group %zu: %s\n", checks->bad[i], checks->why[i]);
    for (size_t i = 0; i < r->rejected_count; i++)
        printf("rejected: work-group %zu: results differ from the CPU reference\n", r->rejected[i]);
    printf("\n");
    printf("fastest: work-group %zu, %.3f ms geometric mean; default %zu: %.3f ms (%.2fx)\n", r->best_work_group,
           1e3 * r->best_score, r->default_work_group, 1e3 * r->default_score, r->default_score / r->best_score);
    printf("vector widths at work-group %zu:", r->best_work_group);
    for (size_t c = 0; c < r->vector_width_count; c++)
        printf(" %d: %.3f ms%s", r->vector_widths[c], 1e3 * r->vector_width_score[c],
               r->vector_widths[c] == r->best_vector_width ? " (fastest)"
               : r->vector_widths[c] == r->default_vector_width ? " (default)"
                                                                 : "");
    for (size_t i = 0; i < r->rejected_vector_width_count; i++)
        printf("; %d rejected (results differ from the CPU reference)", r->rejected_vector_widths[i]);
    printf("\n\n");
    printf("split columns (the fewest per part of a split row) at work-group %zu, vector width %d; * stored, d\n"
           "built-in default, kept unless another is at least 3%% faster:\n",
           r->best_work_group, r->best_vector_width);
    print_times(r->split_cases, r->split_case_count, r->split_columns, r->split_count, r->split_score,
                r->best_split_columns, r->default_split_columns);
    printf("\n");
    if (r->written)
        printf("stored in %s\n", r->table_path);
    else
        printf("dry run: %s not changed\n", r->table_path[0] ? r->table_path : "the table");
}

/* A phase's cases as a JSON array (after its key), times per candidate in the report's order. */
static void print_json_cases(const klcl_tune_case *cases, size_t ncases, size_t n)
{
    printf("[\n");
    for (size_t k = 0; k < ncases; k++) {
        const klcl_tune_case *tc = &cases[k];
        printf("    {\"op\": \"%s\", \"rows\": %zu, \"vocab\": %zu, \"calls_per_sample\": %zu, \"ms\": [", tc->op,
               tc->rows, tc->vocab, tc->calls);
        for (size_t c = 0; c < n; c++) printf("%s%.6g", c ? ", " : "", 1e3 * tc->seconds[c]);
        printf("], \"samples\": [");
        for (size_t c = 0; c < n; c++) printf("%s%d", c ? ", " : "", tc->samples[c]);
        printf("]}%s\n", k + 1 < ncases ? "," : "");
    }
    printf("  ]");
}

static void print_json(const klcl_tune_report *r, const size_checks *checks)
{
    printf("{\n  \"device\": ");
    tool_json_string(stdout, r->device);
    printf(",\n  \"klcl_version\": ");
    tool_json_string(stdout, klcl_version_string());
    printf(",\n  \"table_path\": ");
    tool_json_string(stdout, r->table_path);
    printf(",\n  \"written\": %s,\n  \"best_work_group\": %zu,\n  \"default_work_group\": %zu,\n",
           r->written ? "true" : "false", r->best_work_group, r->default_work_group);
    printf("  \"best_ms\": %.6g,\n  \"default_ms\": %.6g,\n", 1e3 * r->best_score, 1e3 * r->default_score);
    printf("  \"best_vector_width\": %d,\n  \"default_vector_width\": %d,\n  \"vector_widths\": [",
           r->best_vector_width, r->default_vector_width);
    for (size_t c = 0; c < r->vector_width_count; c++)
        printf("%s{\"vector_width\": %d, \"geomean_ms\": %.6g}", c ? ", " : "", r->vector_widths[c],
               1e3 * r->vector_width_score[c]);
    printf("],\n  \"rejected_vector_widths\": [");
    for (size_t i = 0; i < r->rejected_vector_width_count; i++)
        printf("%s%d", i ? ", " : "", r->rejected_vector_widths[i]);
    printf("],\n  \"best_split_columns\": %zu,\n  \"default_split_columns\": %zu,\n  \"split_columns\": [",
           r->best_split_columns, r->default_split_columns);
    for (size_t c = 0; c < r->split_count; c++)
        printf("%s{\"split_columns\": %zu, \"geomean_ms\": %.6g}", c ? ", " : "", r->split_columns[c],
               1e3 * r->split_score[c]);
    printf("],\n  \"split_cases\": ");
    print_json_cases(r->split_cases, r->split_case_count, r->split_count);
    printf(",\n  \"candidates\": [");
    for (size_t c = 0; c < r->candidate_count; c++)
        printf("%s{\"work_group\": %zu, \"geomean_ms\": %.6g}", c ? ", " : "", r->candidates[c], 1e3 * r->score[c]);
    printf("],\n  \"rejected\": [");
    for (size_t i = 0; i < checks->n_bad + r->rejected_count; i++) {
        int mine = i < checks->n_bad;
        printf("%s{\"work_group\": %zu, \"why\": ", i ? ", " : "",
               mine ? checks->bad[i] : r->rejected[i - checks->n_bad]);
        tool_json_string(stdout, mine ? checks->why[i] : "results differ from the CPU reference");
        printf("}");
    }
    printf("],\n  \"cases\": ");
    print_json_cases(r->cases, r->case_count, r->candidate_count);
    printf("\n}\n");
}

/* --vocab and --split-vocab: V,V,... into out[0..*count), at most KLCL_TUNE_MAX_CASES / 2. 0 when
 * valid; else the message is printed. */
static int parse_vocabs(const char *opt, const char *v, size_t *out, size_t *count)
{
    char item[32];
    *count = 0;
    for (const char *p = v; *p;) {
        size_t len = strcspn(p, ",");
        if (*count == KLCL_TUNE_MAX_CASES / 2) {
            fprintf(stderr, CMD ": %s %s: at most %d vocabularies\n", opt, v, KLCL_TUNE_MAX_CASES / 2);
            return 1;
        }
        snprintf(item, sizeof item, "%.*s", (int)(len < 31 ? len : 31), p);
        if (parse_size(CMD, opt, item, 1, 0x7fffffff, &out[(*count)++])) return 1;
        p += len + (p[len] == ',');
    }
    return 0;
}

int cmd_tune(int argc, char **argv)
{
    klcl_tune_options t = KLCL_TUNE_OPTIONS_INIT;
    size_t vocabs[KLCL_TUNE_MAX_CASES / 2], split_vocabs[KLCL_TUNE_MAX_CASES / 2];
    const char *device = NULL;
    int json = 0, show_only = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const int flag = !strcmp(a, "--dry-run") || !strcmp(a, "--json") || !strcmp(a, "--show") ||
                         !strcmp(a, "--help") || !strcmp(a, "-h");
        const int valued = !strcmp(a, "--device") || !strcmp(a, "--vocab") || !strcmp(a, "--split-vocab") ||
                           !strcmp(a, "--rows") || !strcmp(a, "--reps") || !strcmp(a, "--sample-seconds") ||
                           !strcmp(a, "--max-work-group");
        if (!flag && !valued) {
            fprintf(stderr, CMD ": unknown argument '%s' (see klcl tune --help)\n", a);
            return EXIT_USAGE;
        }
        if (flag) {
            if (!strcmp(a, "--dry-run")) t.dry_run = 1;
            else if (!strcmp(a, "--json")) json = 1;
            else if (!strcmp(a, "--show")) show_only = 1;
            else {
                fputs(tune_usage, stdout);
                return EXIT_OK;
            }
            continue;
        }
        if (i + 1 >= argc || !argv[i + 1][0]) {
            fprintf(stderr, CMD ": %s needs a value\n", a);
            return EXIT_USAGE;
        }
        const char *v = argv[++i];
        size_t n = 0;
        double s = 0.0;
        if (!strcmp(a, "--device")) {
            device = v;
        } else if (!strcmp(a, "--vocab")) {
            if (parse_vocabs(a, v, vocabs, &t.vocab_count)) return EXIT_USAGE;
            t.vocabs = vocabs;
        } else if (!strcmp(a, "--split-vocab")) {
            if (parse_vocabs(a, v, split_vocabs, &t.split_vocab_count)) return EXIT_USAGE;
            t.split_vocabs = split_vocabs;
        } else if (!strcmp(a, "--rows")) {
            if (parse_size(CMD, a, v, 1, 0x7fffffff, &t.rows)) return EXIT_USAGE;
        } else if (!strcmp(a, "--reps")) {
            if (parse_size(CMD, a, v, 1, SIZE_MAX, &n)) return EXIT_USAGE;
            if (n > 101) {
                fprintf(stderr, CMD ": --reps %s: must be at most 101\n", v);
                return EXIT_USAGE;
            }
            t.reps = (int)n;
        } else if (!strcmp(a, "--sample-seconds")) {
            if (parse_double(CMD, a, v, 0.0, 60.0, 1, &s)) return EXIT_USAGE;
            t.sample_seconds = s;
        } else {
            if (parse_size(CMD, a, v, 1, SIZE_MAX, &t.max_work_group)) return EXIT_USAGE;
            if (t.max_work_group > 4096) {
                fprintf(stderr, CMD ": --max-work-group %s: must be at most 4096\n", v);
                return EXIT_USAGE;
            }
        }
    }
    if (device && !strcmp(device, "cpu")) {
        fprintf(stderr, CMD ": --device cpu: the CPU reference has no work-group size to tune\n");
        return EXIT_USAGE;
    }
    if (show_only) return show(device, json);

    klcl_context_options co = KLCL_CONTEXT_OPTIONS_INIT;
    co.device = device;
    klcl_tune_report *r = calloc(1, sizeof *r);
    if (!r) {
        fprintf(stderr, CMD ": out of host memory\n");
        return EXIT_IO;
    }
    size_checks checks;
    if (check_sizes(device, t.max_work_group, &checks) != 0) {
        fprintf(stderr, CMD ": cannot start a child process to check the sizes\n");
        free(r);
        return EXIT_IO;
    }
    if (checks.n_ok == 0 && checks.n_bad > 0 && checks.bad[0] == 1 && strncmp(checks.why[0], "failed", 6) != 0) {
        fprintf(stderr, CMD ": no work-group size works on this device (1: %s)\n", checks.why[0]);
        free(r);
        return EXIT_DEVICE;
    }
    /* With no size passed, the run itself reports why (no device, ...). */
    if (checks.n_ok) {
        t.sizes = checks.ok;
        t.size_count = checks.n_ok;
    }
    klcl_status st = klcl_tune(&co, &t, r);
    int rc = EXIT_OK;
    if (st != KLCL_OK) {
        fprintf(stderr, CMD ": %s: %s\n", klcl_status_string(st), r->error);
        rc = device_exit(st);
    } else if (json) {
        print_json(r, &checks);
    } else {
        print_text(r, &checks);
    }
    free(r);
    return rc;
}
