/* klcl: the command-line tool. `klcl devices` lists where losses can run, `klcl eval` computes them over
 * teacher and student logits in files (eval.c), `klcl tune` picks the work-group size per device
 * (tune_cmd.c), `klcl bench` runs klcl-bench. This file holds the command
 * dispatch, the two small commands, and the strict number parsing every option uses. */
#define _POSIX_C_SOURCE 200809L /* readlink, access, execv */

#include "tool.h"

#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *const main_usage =
    "usage: klcl COMMAND [ARGS]\n"
    "\n"
    "Knowledge-distillation losses (docs/LOSSES.md) on any OpenCL device.\n"
    "\n"
    "commands\n"
    "  eval      losses and metrics between teacher and student logits in .npy or .safetensors files,\n"
    "            streamed through the device; with no files, a built-in sample (try: klcl eval)\n"
    "  devices   the OpenCL platforms and devices, with the id --device takes, and the CPU reference\n"
    "  tune      time the kernels at each work-group size and store the fastest for the device\n"
    "  bench     run klcl-bench (kernel throughput against the device's limits) with ARGS\n"
    "\n"
    "  klcl eval --help       every eval option and the JSON schema\n"
    "  klcl --version         versions of the tool and of the library it runs on\n"
    "\n"
    "environment: KLCL_DEVICE (default device), KLCL_KERNEL_DIR, KLCL_WORK_GROUP, KLCL_TUNE_FILE; see README.md\n"
    "exit status: 0 success, 1 out of memory or an output failing part-way, 2 bad usage or input (an\n"
    "output that cannot be created included),\n"
    "3 device or OpenCL failure, 130 interrupted (143 terminated)\n";

static const char *const devices_usage =
    "usage: klcl devices [--json]\n"
    "\n"
    "Lists every OpenCL platform and device with the id to pass as --device P:D (or KLCL_DEVICE), its\n"
    "memory, largest buffer, compute units and driver, and the CPU reference (\"cpu\"). The default device\n"
    "is marked: KLCL_DEVICE when set, else the first GPU, else the first OpenCL device, else cpu.\n";

/* ---------------------------------------------------------------------------------------------------- */
/* Shared helpers                                                                                           */

double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int parse_double(const char *cmd, const char *opt, const char *text, double lo, double hi, int lo_open,
                 double *out)
{
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (end == text || *end != '\0' || isnan(v)) {
        fprintf(stderr, "%s: %s '%s': not a number\n", cmd, opt, text);
        return -1;
    }
    if (errno == ERANGE || !isfinite(v)) {
        fprintf(stderr, "%s: %s %s: must be a finite number\n", cmd, opt, text);
        return -1;
    }
    if (v < lo || v > hi || (lo_open && v == lo)) {
        if (hi >= FLT_MAX && lo <= -FLT_MAX)
            fprintf(stderr, "%s: %s %s: must fit in a float (magnitude below %g)\n", cmd, opt, text, (double)FLT_MAX);
        else if (hi >= FLT_MAX)
            fprintf(stderr, "%s: %s %s: must be %s %g\n", cmd, opt, text, lo_open ? ">" : ">=", lo);
        else
            fprintf(stderr, "%s: %s %s: must be in %s%g, %g]\n", cmd, opt, text, lo_open ? "(" : "[", lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

int parse_size(const char *cmd, const char *opt, const char *text, size_t lo, size_t hi, size_t *out)
{
    char *end;
    errno = 0;
    /* strtoull accepts "-5" as a huge number: refuse signs outright. */
    unsigned long long v = text[0] == '-' || text[0] == '+' ? 0 : strtoull(text, &end, 10);
    if (text[0] == '-' || text[0] == '+' || end == text || *end != '\0') {
        fprintf(stderr, "%s: %s '%s': not a whole number\n", cmd, opt, text);
        return -1;
    }
    if (errno == ERANGE || v < lo || v > hi) {
        fprintf(stderr, "%s: %s %s: must be at least %zu\n", cmd, opt, text, lo);
        return -1;
    }
    *out = (size_t)v;
    return 0;
}

int parse_int32(const char *cmd, const char *opt, const char *text, int32_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (end == text || *end != '\0') {
        fprintf(stderr, "%s: %s '%s': not a whole number\n", cmd, opt, text);
        return -1;
    }
    if (errno == ERANGE || v < INT32_MIN || v > INT32_MAX) {
        fprintf(stderr, "%s: %s %s: must fit in int32\n", cmd, opt, text);
        return -1;
    }
    *out = (int32_t)v;
    return 0;
}

/* ---------------------------------------------------------------------------------------------------- */
/* klcl devices                                                                                             */

/* Which entry the library picks when nothing names a device: -1 for the CPU reference. With KLCL_DEVICE
 * set, the library's own choice is asked for and matched by name. */
static long default_device(const klcl_device_info *d, size_t n)
{
    const char *env = getenv("KLCL_DEVICE");
    if (env && *env) {
        klcl_context *ctx = NULL;
        long found = -2; /* -2: nothing matches (the variable names no device) */
        if (klcl_context_create(NULL, &ctx) == KLCL_OK) {
            if (klcl_context_is_reference(ctx)) found = -1;
            for (size_t i = 0; i < n && found == -2; i++)
                if (!strcmp(d[i].name, klcl_context_device_name(ctx))) found = (long)i;
        }
        klcl_context_destroy(ctx);
        return found;
    }
    for (size_t i = 0; i < n; i++)
        if (d[i].is_gpu) return (long)i;
    return n ? 0 : -1;
}

static int cmd_devices(int argc, char **argv)
{
    int json = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) {
            json = 1;
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(devices_usage, stdout);
            return EXIT_OK;
        } else {
            fprintf(stderr, "klcl devices: unknown argument '%s' (see klcl devices --help)\n", argv[i]);
            return EXIT_USAGE;
        }
    }
    size_t n = 0;
    klcl_status st = klcl_list_devices(NULL, 0, &n);
    klcl_device_info *d = NULL;
    if (st == KLCL_OK && n) {
        d = calloc(n, sizeof *d);
        st = d ? klcl_list_devices(d, n, &n) : KLCL_ERR_OUT_OF_HOST_MEMORY;
    }
    int rc = EXIT_OK;
    if (st != KLCL_OK) {
        fprintf(stderr, "klcl devices: listing the OpenCL devices failed: %s\n", klcl_status_string(st));
        rc = st == KLCL_ERR_OUT_OF_HOST_MEMORY ? EXIT_IO : EXIT_DEVICE;
        goto done;
    }
    long def = default_device(d, n);
    const char *env = getenv("KLCL_DEVICE");
    if (json) {
        printf("{\n  \"devices\": [\n");
        for (size_t i = 0; i < n; i++) {
            printf("    {\"id\": ");
            tool_json_string(stdout, d[i].id);
            printf(", \"platform\": ");
            tool_json_string(stdout, d[i].platform_name);
            printf(", \"name\": ");
            tool_json_string(stdout, d[i].name);
            printf(", \"type\": \"%s\", \"global_mem_bytes\": %llu, \"max_alloc_bytes\": %llu, "
                   "\"compute_units\": %u, \"driver\": ",
                   d[i].is_gpu ? "gpu" : d[i].is_cpu ? "cpu" : "other", (unsigned long long)d[i].global_mem_bytes,
                   (unsigned long long)d[i].max_alloc_bytes, d[i].compute_units);
            tool_json_string(stdout, d[i].driver_version);
            printf(", \"default\": %s},\n", def == (long)i ? "true" : "false");
        }
        printf("    {\"id\": \"cpu\", \"platform\": null, \"name\": \"CPU reference (double precision)\", "
               "\"type\": \"reference\", \"global_mem_bytes\": null, \"max_alloc_bytes\": null, "
               "\"compute_units\": null, \"driver\": null, \"default\": %s}\n  ],\n",
               def == -1 ? "true" : "false");
        printf("  \"klcl_device\": ");
        if (env && *env)
            tool_json_string(stdout, env);
        else
            printf("null");
        printf("\n}\n");
        goto done;
    }
    if (n == 0) printf("No OpenCL device found (is an OpenCL driver such as pocl-opencl-icd installed?).\n\n");
    printf("  %-6s %-5s %-36s %-28s %10s %10s %5s  %s\n", "id", "type", "name", "platform", "memory", "max buffer",
           "CUs", "driver");
    for (size_t i = 0; i < n; i++) {
        printf("%c %-6s %-5s %-36.36s %-28.28s %6.1f GiB %6.1f GiB %5u  %s\n", def == (long)i ? '*' : ' ', d[i].id,
               d[i].is_gpu ? "GPU" : d[i].is_cpu ? "CPU" : "other", d[i].name, d[i].platform_name,
               (double)d[i].global_mem_bytes / 1073741824.0, (double)d[i].max_alloc_bytes / 1073741824.0,
               d[i].compute_units, d[i].driver_version);
    }
    printf("%c %-6s %-5s %s\n", def == -1 ? '*' : ' ', "cpu", "ref",
           "CPU reference: double precision, no OpenCL, always available (slow; the yardstick)");
    if (env && *env)
        printf("\n* default, as KLCL_DEVICE=%s selects%s. Pass the id to --device.\n", env,
               def == -2 ? " (it matches no device: klcl eval will fail)" : "");
    else
        printf("\n* default (KLCL_DEVICE unset: the first GPU, else the first OpenCL device, else cpu). "
               "Pass the id to --device.\n");
done:
    free(d);
    return rc;
}

/* ---------------------------------------------------------------------------------------------------- */
/* klcl bench                                                                                               */

/* klcl-bench next to this executable (the build folder, or an installed bin/), else on PATH. */
static int find_bench(char *out, size_t len)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
        self[n] = '\0';
        char *slash = strrchr(self, '/');
        if (slash) {
            *slash = '\0';
            if ((size_t)snprintf(out, len, "%s/klcl-bench", self) < len && access(out, X_OK) == 0) return 0;
        }
    }
    const char *path = getenv("PATH");
    while (path && *path) {
        size_t dir_len = strcspn(path, ":");
        if ((size_t)snprintf(out, len, "%.*s%sklcl-bench", (int)dir_len, path, dir_len ? "/" : "") < len &&
            access(out, X_OK) == 0)
            return 0;
        path += dir_len + (path[dir_len] == ':');
    }
    return -1;
}

static int cmd_bench(int argc, char **argv)
{
    char path[PATH_MAX + 32];
    if (find_bench(path, sizeof path) != 0) {
        fprintf(stderr, "klcl bench: klcl-bench was not found next to klcl or on PATH (build it with the CMake "
                        "option KLCL_BUILD_BENCH=ON)\n");
        return EXIT_USAGE;
    }
    argv[0] = "klcl-bench";
    fflush(NULL);
    execv(path, argv);
    fprintf(stderr, "klcl bench: cannot run %s: %s\n", path, strerror(errno));
    (void)argc;
    return EXIT_USAGE;
}

/* ---------------------------------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    if (argc < 2) {
        fputs(main_usage, stderr);
        return EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        if (argc > 2 && strcmp(cmd, "help") == 0) {
            char *help_argv[] = {argv[2], "--help", NULL};
            if (!strcmp(argv[2], "eval")) return cmd_eval(2, help_argv);
            if (!strcmp(argv[2], "devices")) return cmd_devices(2, help_argv);
            if (!strcmp(argv[2], "bench")) return cmd_bench(2, help_argv);
            if (!strcmp(argv[2], "tune")) return cmd_tune(2, help_argv);
        }
        fputs(main_usage, stdout);
        return EXIT_OK;
    }
    if (!strcmp(cmd, "--version") || !strcmp(cmd, "-V") || !strcmp(cmd, "version")) {
        printf("klcl %d.%d.%d (library %s)\n", KLCL_VERSION_MAJOR, KLCL_VERSION_MINOR, KLCL_VERSION_PATCH,
               klcl_version_string());
        return EXIT_OK;
    }
    if (!strcmp(cmd, "eval")) return cmd_eval(argc - 1, argv + 1);
    if (!strcmp(cmd, "devices")) return cmd_devices(argc - 1, argv + 1);
    if (!strcmp(cmd, "bench")) return cmd_bench(argc - 1, argv + 1);
    if (!strcmp(cmd, "tune")) return cmd_tune(argc - 1, argv + 1);
    fprintf(stderr, "klcl: unknown command '%s' (commands: eval, devices, tune, bench; see klcl --help)\n", cmd);
    return EXIT_USAGE;
}
