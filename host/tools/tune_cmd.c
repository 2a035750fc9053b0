/* klcl tune: times the row kernels at every work-group size the device allows (klcl_tune), prints the
 * table of times, and stores the fastest size in the tuning table for the device; --show prints what is
 * stored and what a new context would use, without timing anything. */
#include "tool.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CMD "klcl tune"

static const char *const tune_usage =
    "usage: klcl tune [--device SPEC] [--vocab V,V,...] [--rows N] [--reps N] [--sample-seconds S]\n"
    "                 [--max-work-group N] [--dry-run] [--json]\n"
    "       klcl tune --show [--device SPEC] [--json]\n"
    "\n"
    "Times the row kernels (kl forward and kl with gradient at each vocabulary) at every power-of-two\n"
    "work-group size from 1 to the device's limit, and stores the fastest (lowest geometric mean of the\n"
    "median times) in the tuning table, keyed by device, vendor, driver, platform version and klcl version.\n"
    "Contexts created afterwards on that device use it, unless KLCL_WORK_GROUP is set.\n"
    "\n"
    "  --device SPEC          P:D, opencl, or a device name substring (default: as klcl eval picks)\n"
    "  --vocab V,V,...        vocabularies to time, at most 4 (default 32768,131072)\n"
    "  --rows N               rows per call (default: as many as fit in 32 MiB per logits tensor)\n"
    "  --reps N               timed samples per size and case, the median kept (default 5)\n"
    "  --sample-seconds S     one sample repeats the call for about this long (default 0.1)\n"
    "  --max-work-group N     largest size to time (default: the device's limit)\n"
    "  --dry-run              time and print, leave the table alone\n"
    "  --show                 print the table's path, this device's entry and the size a new context uses\n"
    "  --json                 print one JSON object instead of text\n"
    "\n"
    "table: $KLCL_TUNE_FILE, else tuning.tsv in the binary cache folder ($KLCL_CACHE_DIR, else\n"
    "$XDG_CACHE_HOME/klcl, else ~/.cache/klcl)\n";

static void json_str(const char *s)
{
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if (*p < 0x20)
            printf("\\u%04x", *p);
        else
            putchar(*p);
    }
    putchar('"');
}

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
    size_t stored = 0, used = 0;
    klcl_work_group_source source = KLCL_WORK_GROUP_DEFAULT;
    if (klcl_context_is_reference(ctx)) {
        fprintf(stderr, CMD ": the CPU reference has no work-group size (pick an OpenCL device with --device)\n");
        klcl_context_destroy(ctx);
        return EXIT_USAGE;
    }
    if ((st = klcl_tune_table_get(ctx, &stored)) != KLCL_OK ||
        (st = klcl_context_work_group(ctx, &used, &source)) != KLCL_OK) {
        fprintf(stderr, CMD ": %s: %s\n", klcl_status_string(st), klcl_last_error(ctx));
        klcl_context_destroy(ctx);
        return device_exit(st);
    }
    if (json) {
        printf("{\n  \"device\": ");
        json_str(klcl_context_device_name(ctx));
        printf(",\n  \"table_path\": ");
        if (path_st == KLCL_OK)
            json_str(path);
        else
            printf("null");
        if (stored)
            printf(",\n  \"stored_work_group\": %zu", stored);
        else
            printf(",\n  \"stored_work_group\": null");
        printf(",\n  \"work_group\": %zu,\n  \"source\": \"%s\"\n}\n", used, klcl_work_group_source_name(source));
    } else {
        printf("device      %s\n", klcl_context_device_name(ctx));
        printf("table       %s\n", path_st == KLCL_OK ? path : "(none: set KLCL_TUNE_FILE, KLCL_CACHE_DIR or HOME)");
        if (stored)
            printf("entry       work_group %zu\n", stored);
        else
            printf("entry       none for this device, driver and klcl version\n");
        printf("work group  %zu (%s)\n", used, klcl_work_group_source_name(source));
    }
    klcl_context_destroy(ctx);
    return EXIT_OK;
}

static void print_text(const klcl_tune_report *r)
{
    printf("klcl tune on %s: median ms per call; * fastest, d built-in default\n\n", r->device);
    printf("%-8s %7s %8s %6s", "op", "N", "V", "calls");
    for (size_t c = 0; c < r->candidate_count; c++) printf(" %8zu", r->candidates[c]);
    printf("\n");
    for (size_t k = 0; k < r->case_count; k++) {
        const klcl_tune_case *tc = &r->cases[k];
        printf("%-8s %7zu %8zu %6zu", tc->op, tc->rows, tc->vocab, tc->calls);
        for (size_t c = 0; c < r->candidate_count; c++)
            printf(" %7.3f%s", 1e3 * tc->seconds[c], tc->samples[c] == 1 ? "~" : " ");
        printf("\n");
    }
    printf("%-8s %7s %8s %6s", "geomean", "", "", "");
    for (size_t c = 0; c < r->candidate_count; c++)
        printf(" %7.3f%c", 1e3 * r->score[c],
               r->candidates[c] == r->best_work_group ? '*' : r->candidates[c] == r->default_work_group ? 'd' : ' ');
    printf("\n(~: one sample only, over 3x slower than the best on its first)\n\n");
    printf("fastest: work-group %zu, %.3f ms geometric mean; default %zu: %.3f ms (%.2fx)\n", r->best_work_group,
           1e3 * r->best_score, r->default_work_group, 1e3 * r->default_score, r->default_score / r->best_score);
    if (r->written)
        printf("stored in %s\n", r->table_path);
    else
        printf("dry run: %s not changed\n", r->table_path[0] ? r->table_path : "the table");
}

static void print_json(const klcl_tune_report *r)
{
    printf("{\n  \"device\": ");
    json_str(r->device);
    printf(",\n  \"klcl_version\": ");
    json_str(klcl_version_string());
    printf(",\n  \"table_path\": ");
    json_str(r->table_path);
    printf(",\n  \"written\": %s,\n  \"best_work_group\": %zu,\n  \"default_work_group\": %zu,\n",
           r->written ? "true" : "false", r->best_work_group, r->default_work_group);
    printf("  \"best_ms\": %.6g,\n  \"default_ms\": %.6g,\n  \"candidates\": [", 1e3 * r->best_score,
           1e3 * r->default_score);
    for (size_t c = 0; c < r->candidate_count; c++)
        printf("%s{\"work_group\": %zu, \"geomean_ms\": %.6g}", c ? ", " : "", r->candidates[c], 1e3 * r->score[c]);
    printf("],\n  \"cases\": [\n");
    for (size_t k = 0; k < r->case_count; k++) {
        const klcl_tune_case *tc = &r->cases[k];
        printf("    {\"op\": \"%s\", \"rows\": %zu, \"vocab\": %zu, \"calls_per_sample\": %zu, \"ms\": [", tc->op,
               tc->rows, tc->vocab, tc->calls);
        for (size_t c = 0; c < r->candidate_count; c++) printf("%s%.6g", c ? ", " : "", 1e3 * tc->seconds[c]);
        printf("], \"samples\": [");
        for (size_t c = 0; c < r->candidate_count; c++) printf("%s%d", c ? ", " : "", tc->samples[c]);
        printf("]}%s\n", k + 1 < r->case_count ? "," : "");
    }
    printf("  ]\n}\n");
}

int cmd_tune(int argc, char **argv)
{
    klcl_tune_options t = KLCL_TUNE_OPTIONS_INIT;
    size_t vocabs[KLCL_TUNE_MAX_CASES / 2];
    const char *device = NULL;
    int json = 0, show_only = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const int flag = !strcmp(a, "--dry-run") || !strcmp(a, "--json") || !strcmp(a, "--show") ||
                         !strcmp(a, "--help") || !strcmp(a, "-h");
        const int valued = !strcmp(a, "--device") || !strcmp(a, "--vocab") || !strcmp(a, "--rows") ||
                           !strcmp(a, "--reps") || !strcmp(a, "--sample-seconds") || !strcmp(a, "--max-work-group");
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
            char item[32];
            t.vocab_count = 0;
            for (const char *p = v; *p;) {
                size_t len = strcspn(p, ",");
                if (t.vocab_count == KLCL_TUNE_MAX_CASES / 2) {
                    fprintf(stderr, CMD ": --vocab %s: at most %d vocabularies\n", v, KLCL_TUNE_MAX_CASES / 2);
                    return EXIT_USAGE;
                }
                snprintf(item, sizeof item, "%.*s", (int)(len < 31 ? len : 31), p);
                if (parse_size(CMD, "--vocab", item, 1, 0x7fffffff, &vocabs[t.vocab_count++])) return EXIT_USAGE;
                p += len + (p[len] == ',');
            }
            t.vocabs = vocabs;
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
    klcl_status st = klcl_tune(&co, &t, r);
    int rc = EXIT_OK;
    if (st != KLCL_OK) {
        fprintf(stderr, CMD ": %s: %s\n", klcl_status_string(st), r->error);
        rc = device_exit(st);
    } else if (json) {
        print_json(r);
    } else {
        print_text(r);
    }
    free(r);
    return rc;
}
