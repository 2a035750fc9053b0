/* klcl tune: times the row kernels at every work-group size the device allows, then vector widths and
 * split columns (klcl_tune), prints the tables of times, and stores the winners in the tuning table for
 * the device; --show prints what is stored and what a new context would use, without timing anything.
 *
 * Each (size, width) pair is first checked in a process of its own (`klcl tune --check W:VW`, which runs
 * every loss with gradient against the CPU reference): a driver can crash on a size it claims to
 * support, and a crash there only rejects the pair, where in klcl_tune itself it would end the run. The
 * sizes are checked several at once, before any timing (a check is mostly the device compiler's work:
 * 15-38 s per size with PoCL's compiler cache cold, two at once on 2 cores); the other vector width at
 * the fastest size is checked when klcl_tune asks (tune->precheck). The checks run this executable afresh (exec), never a
 * forked copy of a process that has used OpenCL. */
#define _POSIX_C_SOURCE 200809L /* fork, waitpid */

#include "tool.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define CMD "klcl tune"
#define WHY_CHARS 200 /* why a check failed, as printed */

static const char *const tune_usage =
    "usage: klcl tune [--device SPEC] [--vocab V,V,...] [--split-vocab V,V,...] [--rows N] [--reps N]\n"
    "                 [--sample-seconds S] [--max-work-group N] [--jobs N] [--dry-run] [--json] [--quiet]\n"
    "       klcl tune --show [--device SPEC] [--json]\n"
    "       klcl tune --check W:VW [--device SPEC]\n"
    "\n"
    "Checks every power-of-two work-group size from 1 to the device's limit on every loss against the CPU\n"
    "reference, each in a process of its own and several at once (a size that fails, differs or crashes\n"
    "is rejected), times the rest on the row kernels (kl forward and kl with gradient at each vocabulary),\n"
    "and picks the fastest (lowest geometric mean of the median times). At that size it checks the other\n"
    "vector width in a process of its own, times widths 8 and 16 the same way, then at the faster width\n"
    "the split columns (the fewest columns per part when a row is split across work-groups: 1/16 to 4\n"
    "times the built-in, on one row at each split vocabulary; the built-in is kept unless another is at\n"
    "least 3% faster). It stores the three in the tuning table, keyed by device, vendor, driver, platform\n"
    "version and klcl version. Progress goes to stderr.\n"
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
    "  --jobs N               size checks run at once, 1 to 64 (default: the online CPUs, at most 8);\n"
    "                         the timing always runs alone\n"
    "  --dry-run              time and print, leave the table alone\n"
    "  --quiet                no progress lines\n"
    "  --show                 print the table's path, this device's entry and the settings a new context\n"
    "                         uses\n"
    "  --check W:VW           check work-group size W at vector width VW (8, 16, or 0: the context's) and\n"
    "                         exit: 0 passed, 10 results differ, 11 beyond the device, 12 failed; prints\n"
    "                         the width checked and any error (what the checking processes run)\n"
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

/* What the checks in other processes found: the sizes at the work-group phase's width (`width`, as the
 * first child to report resolved it), then any other width the run asked about at one size. */
typedef struct size_checks {
    size_t ok[KLCL_TUNE_MAX_CANDIDATES], n_ok;
    size_t bad[KLCL_TUNE_MAX_CANDIDATES], n_bad;
    char why[KLCL_TUNE_MAX_CANDIDATES][WHY_CHARS];
    int width;
    int width_bad[2];
    size_t n_width_bad;
    char width_why[2][WHY_CHARS];
    const char *device;
    int quiet;
} size_checks;

/* A check's exit statuses; CHILD_CRASHED is the parent's name for a check killed by a signal. */
enum { CHILD_OK = 0, CHILD_REJECTED = 10, CHILD_BEYOND = 11, CHILD_FAILED = 12, CHILD_NO_EXEC = 13, CHILD_CRASHED = 14 };

/* --check W:VW, in the child: klcl_tune on that pair alone, check only, table untouched. Prints the width
 * it checked at (VW 0: the context's choice) and, on failure, why; the exit status says how it went. */
static int child_check(const char *device, size_t w, int vw)
{
    klcl_context_options co = KLCL_CONTEXT_OPTIONS_INIT;
    co.device = device;
    klcl_tune_options t = KLCL_TUNE_OPTIONS_INIT;
    t.sizes = &w;
    t.size_count = 1;
    t.vector_width = vw;
    t.check_only = 1;
    t.dry_run = 1;
    klcl_tune_report *r = calloc(1, sizeof *r);
    if (!r) return CHILD_FAILED;
    klcl_status st = klcl_tune(&co, &t, r);
    int rc = st == KLCL_OK                  ? CHILD_OK
             : r->rejected_count            ? CHILD_REJECTED
             : st == KLCL_ERR_UNSUPPORTED   ? CHILD_BEYOND
                                            : CHILD_FAILED;
    printf("%d %s\n", r->work_group_vector_width, st == KLCL_OK ? "" : r->error);
    free(r);
    return rc;
}

/* A check running in another process. */
typedef struct check_run {
    pid_t pid;
    int fd; /* its standard output */
    size_t w;
    int vw;
    double t0;
} check_run;

/* Starts `klcl tune --check W:VW` by running this executable afresh: a forked copy of a process that has
 * used OpenCL must not use it again (the drivers' threads are not copied), while a new program image
 * starts clean, whatever the parent has done. 0, or -1 when no process or pipe can be made. */
static int check_start(const char *device, size_t w, int vw, check_run *run)
{
    int p[2];
    if (pipe(p) != 0) return -1;
    char pair[48];
    snprintf(pair, sizeof pair, "%zu:%d", w, vw);
    char *args[] = {"klcl", "tune", "--check", pair, device ? "--device" : NULL, (char *)device, NULL};
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        close(p[0]);
        close(p[1]);
        return -1;
    }
    if (pid == 0) {
        dup2(p[1], STDOUT_FILENO);
        close(p[0]);
        close(p[1]);
        execv("/proc/self/exe", args);
        _exit(CHILD_NO_EXEC);
    }
    close(p[1]);
    run->pid = pid;
    run->fd = p[0];
    run->w = w;
    run->vw = vw;
    run->t0 = now_seconds();
    return 0;
}

/* After the check's process has exited with `status`: reads what it printed, closes the pipe, returns
 * CHILD_OK, _REJECTED, _BEYOND, _FAILED (no exec too) or _CRASHED and, unless it passed, why in `why`;
 * *vw the width it checked at (0 if it did not say). */
static int check_end(check_run *run, int status, int *vw, char *why)
{
    char out[WHY_CHARS + 32] = "";
    size_t n = 0;
    ssize_t got;
    while (n + 1 < sizeof out && (got = read(run->fd, out + n, sizeof out - 1 - n)) > 0) n += (size_t)got;
    out[n] = '\0';
    close(run->fd);
    out[strcspn(out, "\n")] = '\0';
    char *rest = NULL;
    long width = strtol(out, &rest, 10);
    *vw = width == 8 || width == 16 ? (int)width : 0;
    const char *error = rest && *rest == ' ' ? rest + 1 : "";
    why[0] = '\0';
    if (WIFSIGNALED(status)) {
        snprintf(why, WHY_CHARS, "crashed (signal %d)", WTERMSIG(status));
        return CHILD_CRASHED;
    }
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : CHILD_FAILED;
    if (code == CHILD_OK || code == CHILD_BEYOND) return code;
    if (code == CHILD_REJECTED)
        snprintf(why, WHY_CHARS, "results differ from the CPU reference");
    else if (code == CHILD_NO_EXEC)
        snprintf(why, WHY_CHARS, "failed: /proc/self/exe could not be run to check it"); /* so: in-process */
    else
        snprintf(why, WHY_CHARS, "failed (exit status %d)%s%.*s", code, error[0] ? ": " : "", WHY_CHARS - 40, error);
    return code == CHILD_REJECTED ? CHILD_REJECTED : CHILD_FAILED; /* CHILD_NO_EXEC too */
}

static void note(const size_checks *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A progress line on stderr, unless --quiet. */
static void note(const size_checks *c, const char *fmt, ...)
{
    if (c->quiet) return;
    va_list ap;
    va_start(ap, fmt);
    fputs(CMD ": ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* Checks 1, 2, 4, ... up to max_wg (0: 4096, where the device's limit stops it first) at the context's
 * vector width, each in a process of its own, `jobs` at a time; the sizes from the first one beyond the
 * device's limit on are dropped, and a failure at size 1 (no device, say) stops the rest. -1 when no
 * process can be started. */
static int check_sizes(size_t max_wg, int jobs, size_checks *c)
{
    enum { N = KLCL_TUNE_MAX_CANDIDATES };
    int code[N];
    char why[N][WHY_CHARS];
    check_run run[N];
    size_t running = 0, next = 0, stop = N;
    const size_t top = max_wg ? max_wg : 4096;
    while (next < N && ((size_t)1 << next) <= top) next++;
    const size_t count = next;
    next = 0;
    note(c, "checking work-group sizes 1 to %zu against the CPU reference, each in a process of its own, %d at a time",
         (size_t)1 << (count - 1), jobs);
    for (;;) {
        while (running < (size_t)jobs && next < count && next < stop) {
            if (check_start(c->device, (size_t)1 << next, 0, &run[next]) != 0) {
                if (!running) return -1;
                break;
            }
            code[next++] = -1;
            running++;
        }
        if (!running) break;
        int status = 0;
        const pid_t pid = wait(&status);
        if (pid < 0 && errno == EINTR) continue;
        if (pid < 0) return -1;
        size_t k = 0;
        while (k < next && !(code[k] == -1 && run[k].pid == pid)) k++;
        if (k == next) continue; /* not one of ours */
        running--;
        int vw = 0;
        code[k] = check_end(&run[k], status, &vw, why[k]);
        if (vw && !c->width) c->width = vw;
        if (code[k] == CHILD_BEYOND && k < stop) stop = k;
        if (code[k] == CHILD_FAILED && k == 0) stop = 1;
        if (code[k] != CHILD_BEYOND)
            note(c, "work-group size %zu: %s (%.1f s)", run[k].w, code[k] == CHILD_OK ? "passed" : why[k],
                 now_seconds() - run[k].t0);
    }
    for (size_t k = 0; k < next && k < stop; k++) {
        const size_t w = (size_t)1 << k;
        if (code[k] == CHILD_OK) {
            c->ok[c->n_ok++] = w;
        } else {
            memcpy(c->why[c->n_bad], why[k], WHY_CHARS);
            c->bad[c->n_bad++] = w;
        }
    }
    return 0;
}

/* tune->precheck: a pair the size checks covered gets their answer; any other (the other vector width at
 * the fastest size) is checked now in a process of its own. */
static int precheck(void *user, size_t w, int vw)
{
    size_checks *c = user;
    if (vw == c->width) {
        for (size_t i = 0; i < c->n_ok; i++)
            if (c->ok[i] == w) return 1;
        for (size_t i = 0; i < c->n_bad; i++)
            if (c->bad[i] == w) return 0;
    }
    note(c, "checking vector width %d at work-group size %zu in a process of its own", vw, w);
    check_run run;
    char why[WHY_CHARS];
    int status = 0, got = 0;
    pid_t done = -1;
    if (check_start(c->device, w, vw, &run) == 0)
        while ((done = waitpid(run.pid, &status, 0)) < 0 && errno == EINTR) {
        }
    if (done != run.pid) {
        snprintf(why, sizeof why, "not checked: no process could be started");
    } else {
        const int code = check_end(&run, status, &got, why);
        if (code == CHILD_OK) return 1;
        if (code == CHILD_BEYOND) snprintf(why, sizeof why, "beyond what the device allows");
    }
    note(c, "vector width %d at work-group size %zu: %s", vw, w, why);
    if (c->n_width_bad < 2) {
        memcpy(c->width_why[c->n_width_bad], why, WHY_CHARS);
        c->width_bad[c->n_width_bad++] = vw;
    }
    return 0;
}

/* tune->progress: the library's lines on stderr. */
static void progress(void *user, const char *what)
{
    note(user, "%s", what);
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

/* Why vector width vw was rejected: its check in another process, else this process's own check. */
static const char *width_why(const size_checks *c, int vw)
{
    for (size_t i = 0; i < c->n_width_bad; i++)
        if (c->width_bad[i] == vw) return c->width_why[i];
    return "results differ from the CPU reference";
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
        printf("; %d rejected (%s)", r->rejected_vector_widths[i], width_why(checks, r->rejected_vector_widths[i]));
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
    for (size_t i = 0; i < r->rejected_vector_width_count; i++) {
        printf("%s{\"vector_width\": %d, \"why\": ", i ? ", " : "", r->rejected_vector_widths[i]);
        tool_json_string(stdout, width_why(checks, r->rejected_vector_widths[i]));
        printf("}");
    }
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
    const char *device = NULL, *check = NULL;
    int json = 0, show_only = 0, quiet = 0;
    size_t jobs = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const int flag = !strcmp(a, "--dry-run") || !strcmp(a, "--json") || !strcmp(a, "--show") ||
                         !strcmp(a, "--quiet") || !strcmp(a, "--help") || !strcmp(a, "-h");
        const int valued = !strcmp(a, "--device") || !strcmp(a, "--vocab") || !strcmp(a, "--split-vocab") ||
                           !strcmp(a, "--rows") || !strcmp(a, "--reps") || !strcmp(a, "--sample-seconds") ||
                           !strcmp(a, "--max-work-group") || !strcmp(a, "--jobs") || !strcmp(a, "--check");
        if (!flag && !valued) {
            fprintf(stderr, CMD ": unknown argument '%s' (see klcl tune --help)\n", a);
            return EXIT_USAGE;
        }
        if (flag) {
            if (!strcmp(a, "--dry-run")) t.dry_run = 1;
            else if (!strcmp(a, "--json")) json = 1;
            else if (!strcmp(a, "--show")) show_only = 1;
            else if (!strcmp(a, "--quiet")) quiet = 1;
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
        } else if (!strcmp(a, "--jobs")) {
            if (parse_size(CMD, a, v, 1, 64, &jobs)) return EXIT_USAGE;
        } else if (!strcmp(a, "--check")) {
            check = v;
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
    if (check) {
        size_t w = 0;
        int vw = -1, used = 0;
        if (sscanf(check, "%zu:%d%n", &w, &vw, &used) != 2 || check[used] || w < 1 || w > 4096 || (w & (w - 1)) ||
            (vw != 0 && vw != 8 && vw != 16)) {
            fprintf(stderr, CMD ": --check %s: must be W:VW, W a power of two from 1 to 4096, VW 8, 16 or 0\n", check);
            return EXIT_USAGE;
        }
        /* _exit: no exit-time work in a check process (a leak checker's pass, say, that could fail it
         * after its answer); the tuning process runs the same code and exits normally. */
        const int rc = child_check(device, w, vw);
        fflush(NULL);
        _exit(rc);
    }
    if (!jobs) {
        const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        jobs = cpus < 1 ? 1 : cpus > 8 ? 8 : (size_t)cpus;
    }

    klcl_context_options co = KLCL_CONTEXT_OPTIONS_INIT;
    co.device = device;
    klcl_tune_report *r = calloc(1, sizeof *r);
    if (!r) {
        fprintf(stderr, CMD ": out of host memory\n");
        return EXIT_IO;
    }
    size_checks checks;
    memset(&checks, 0, sizeof checks);
    checks.device = device;
    checks.quiet = quiet;
    if (check_sizes(t.max_work_group, (int)jobs, &checks) != 0) {
        fprintf(stderr, CMD ": cannot start a process to check the sizes\n");
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
    /* When size 1 failed (rather than crashed or differed), the device itself is at fault, or no check
     * process could run: no precheck, so that this process meets the same failure and reports it with its
     * status, or checks the sizes itself. */
    if (checks.n_ok == 0 && checks.n_bad > 0 && checks.bad[0] == 1 && !strncmp(checks.why[0], "failed", 6)) {
        checks.n_bad = 0; /* what this process finds is the report */
    } else {
        t.precheck = precheck;
        t.precheck_user = &checks;
    }
    t.progress = progress;
    t.progress_user = &checks;
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
