/* klcl-bench: how close klcl's kernels come to this device's limits, measured in the same run.
 *
 * For each vocabulary V it fills N x V teacher and student logits on the device (N chosen so that one
 * tensor holds about --mib MiB), then times, as the median of --reps samples after one warm-up (a sample is
 * the mean of as many back-to-back runs as fill SAMPLE_MIN_S, at least one: a shape of a millisecond or
 * less is then not timed by the driver's wake-up of its threads, and a training loop calls back to back):
 *   read       a streaming read of the bytes the loss must read (teacher + student): the bandwidth limit;
 *   exp        one exponential per logit read (the online softmax's minimum): the exp-throughput limit;
 *              each limit is the fastest of a GPU-style (strided) and a CPU-style (chunked) access pattern,
 *              with 8- and 16-wide vectors;
 *   klcl ops   kl forward; kl, ce and jsd forward with gradient, or those of --ops (cl_mem tensors, no host
 *              transfers), for each element type of --dtype (inputs and gradient in that type; the same N as
 *              fp32);
 *   reference  the CPU reference on a few rows, as a rate per logit, for the speed-up.
 * Per case it prints useful bytes per second (inputs read once, gradient written once, in the case's type),
 * the fraction of the streaming limit over those bytes, logits per second, the fraction of the exp limit,
 * and the speed-up over the reference. Before the sweep it times a new process getting ready (context,
 * kernels built or loaded from the caches, one small call): twice, the second with every cache warm.
 *
 * Then, at --small-vocab, the few-row shapes of --small-rows (rows klcl splits across work-groups). Each
 * case prints the row strategy klcl used (work-items per row, parts per row: klcl_context_row_strategy).
 *
 *   klcl-bench [--device SPEC] [--mib N] [--reps N] [--vocab V,V,...] [--dtype f32,bf16]
 *              [--small-rows N,N,...] [--small-vocab V] [--ops OP,OP,...] [--csv FILE] [--json FILE]
 *              [--format table|csv|json] [--tune]
 *
 * --ops picks the operations: each a loss (kl, rkl, soft_ce, ce, jsd, skl, srkl, tvd, kd) for its forward
 * pass, or LOSS+grad with its gradient; kd and ce get labels, every loss but ce a teacher.
 *
 * --small-rows defaults to 1,2 and --small-vocab to 262144; --small-rows 0 leaves the few-row shapes out.
 *
 * --csv and --json write the results to a file as well; --format picks what goes to standard output (the
 * table by default). --tune runs `klcl tune` first (the klcl tool next to this program), whose entry in the
 * tuning table then applies to the run; the tool checks each size in a child process, which a driver that
 * crashes on some size needs.
 * The JSON schema is in README.md ("klcl-bench JSON").
 */
#define _POSIX_C_SOURCE 200809L /* fork, execv, readlink, popen */

#include <klcl.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern const char *const klcl_bench_kernel_sources[];
extern const size_t klcl_bench_kernel_lengths[];

typedef struct bench_op {
    const char *name;
    klcl_loss loss;
    int with_grad;
} bench_op;

/* --ops: LOSS (forward) or LOSS+grad for every loss of klcl_loss_name; by default the four below. */
enum { MAX_OPS = 2 * KLCL_LOSS_COUNT };
static bench_op ops[MAX_OPS] = {
    {"kl", KLCL_LOSS_KL, 0},
    {"kl+grad", KLCL_LOSS_KL, 1},
    {"ce+grad", KLCL_LOSS_CE, 1},
    {"jsd+grad", KLCL_LOSS_JSD, 1},
};
static int nops = 4;
enum { MAX_REPS = 101, REF_ROWS = 4, MAX_VOCABS = 16, MAX_DTYPES = 3 };
/* The shortest timing sample, and the most runs one sample may take. */
#define SAMPLE_MIN_S 0.02
enum { SAMPLE_MAX_RUNS = 1000 };
enum { MAX_SMALL = 8, MAX_SHAPES = MAX_VOCABS + MAX_SMALL };
enum { FORMAT_TABLE, FORMAT_CSV, FORMAT_JSON };

/* One measured operation, kept for the JSON written at the end. */
typedef struct bench_case {
    const char *op;
    klcl_dtype dtype;
    size_t rows, vocab, team, parts;
    double seconds, gbps, frac_read, logit_rate, frac_exp, speedup;
} bench_case;

/* The two limits at one vocabulary. */
typedef struct bench_limit {
    klcl_dtype dtype; /* the read limit is over the inputs' bytes in this type */
    size_t rows, vocab;
    double read_seconds, read_gbps, exp_seconds, exp_rate;
} bench_limit;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Runs per sample for a run that took `one` seconds. */
static int runs_per_sample(double one)
{
    const double n = one > 0.0 ? ceil(SAMPLE_MIN_S / one) : SAMPLE_MAX_RUNS;
    return n < 1.0 ? 1 : n > SAMPLE_MAX_RUNS ? SAMPLE_MAX_RUNS : (int)n;
}

static double median(double *t, int n)
{
    qsort(t, (size_t)n, sizeof *t, cmp_double);
    return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

static void die(const char *what, long code)
{
    fprintf(stderr, "klcl-bench: %s (%ld)\n", what, code);
    exit(code < 0 ? 3 : 2);
}

/* Median seconds per run of `run(arg, n)`, which does n runs back to back and waits for them: over reps
 * samples after a one-run warm-up, each sample as many runs as fill SAMPLE_MIN_S (at least one). */
static double median_seconds(void (*run)(void *arg, int n), void *arg, int reps)
{
    double t[MAX_REPS];
    int runs = 1;
    for (int r = -1; r < reps; r++) {
        const double t0 = now();
        run(arg, runs);
        const double sec = (now() - t0) / runs;
        if (r < 0)
            runs = runs_per_sample(sec);
        else
            t[r] = sec;
    }
    return median(t, reps);
}

#define USAGE                                                                                          \
    "usage: klcl-bench [--device SPEC] [--mib N] [--reps N] [--vocab V,V,...] [--dtype f32,bf16] "         \
    "[--small-rows N,N,...] [--small-vocab V] [--ops OP,OP,...] [--csv FILE] [--json FILE] "                    \
    "[--format table|csv|json] [--tune]\n"

static void usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "klcl-bench: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n%s", USAGE);
    exit(2);
}

/* Runs `klcl tune [--device SPEC]` from this program's folder, its output on stdout or (to keep a CSV or
 * JSON stdout parseable) on stderr; exits with its status when it fails. */
static void run_tuner(const char *device, int to_stderr)
{
    char path[4096];
    ssize_t n = readlink("/proc/self/exe", path, sizeof path - 8);
    char *slash = n > 0 ? memchr(path, '/', (size_t)n) : NULL;
    if (!slash) die("--tune: cannot find this program's folder", 2);
    path[n] = '\0';
    strcpy(strrchr(path, '/') + 1, "klcl");
    if (access(path, X_OK) != 0) {
        fprintf(stderr, "klcl-bench: --tune runs the klcl tool, which is not next to klcl-bench (%s)\n", path);
        exit(2);
    }
    char *args[] = {"klcl", "tune", device ? "--device" : NULL, (char *)device, NULL};
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) die("--tune: fork failed", 2);
    if (pid == 0) {
        if (to_stderr) dup2(2, 1);
        execv(path, args);
        _exit(127);
    }
    int status = 0;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "klcl-bench: --tune: klcl tune failed\n");
        exit(WIFEXITED(status) && WEXITSTATUS(status) ? WEXITSTATUS(status) : 3);
    }
}

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p < 0x20)
            fprintf(f, "\\u%04x", *p);
        else
            fputc(*p, f);
    }
    fputc('"', f);
}

/* JSON has no NaN or infinity: null. */
static void json_num(FILE *f, const char *key, double v, const char *after)
{
    fprintf(f, "\"%s\": ", key);
    if (isfinite(v))
        fprintf(f, "%.6g", v);
    else
        fputs("null", f);
    fputs(after, f);
}

static void device_text(cl_device_id dev, cl_device_info what, char *out, size_t cap)
{
    out[0] = '\0';
    if (clGetDeviceInfo(dev, what, cap - 1, out, NULL) != CL_SUCCESS) out[0] = '\0';
    out[cap - 1] = '\0';
}

static void write_json(FILE *f, int argc, char **argv, cl_device_id dev, const char *device_name, cl_uint units,
                       size_t wg, klcl_work_group_source wg_source, double mib, int reps, double startup_first,
                       double startup_warm, double platforms_ms, const bench_limit *lim, size_t nlim, const bench_case *cases,
                       size_t ncases)
{
    char vendor[256], driver[256], version[256], platform_name[256], platform_version[256];
    cl_platform_id plat = NULL;
    device_text(dev, CL_DEVICE_VENDOR, vendor, sizeof vendor);
    device_text(dev, CL_DRIVER_VERSION, driver, sizeof driver);
    device_text(dev, CL_DEVICE_VERSION, version, sizeof version);
    platform_name[0] = platform_version[0] = '\0';
    if (clGetDeviceInfo(dev, CL_DEVICE_PLATFORM, sizeof plat, &plat, NULL) == CL_SUCCESS) {
        if (clGetPlatformInfo(plat, CL_PLATFORM_NAME, sizeof platform_name - 1, platform_name, NULL) != CL_SUCCESS)
            platform_name[0] = '\0';
        if (clGetPlatformInfo(plat, CL_PLATFORM_VERSION, sizeof platform_version - 1, platform_version, NULL) !=
            CL_SUCCESS)
            platform_version[0] = '\0';
        platform_name[sizeof platform_name - 1] = platform_version[sizeof platform_version - 1] = '\0';
    }
    fprintf(f, "{\n  \"schema\": \"klcl-bench/1\",\n  \"klcl_version\": ");
    json_str(f, klcl_version_string());
    fprintf(f, ",\n  \"command\": [");
    for (int i = 0; i < argc; i++) {
        if (i) fputs(", ", f);
        json_str(f, argv[i]);
    }
    fprintf(f, "],\n  \"device\": {\"name\": ");
    json_str(f, device_name);
    fprintf(f, ", \"vendor\": ");
    json_str(f, vendor);
    fprintf(f, ", \"driver\": ");
    json_str(f, driver);
    fprintf(f, ", \"version\": ");
    json_str(f, version);
    fprintf(f, ", \"platform\": ");
    json_str(f, platform_name);
    fprintf(f, ", \"platform_version\": ");
    json_str(f, platform_version);
    fprintf(f, ", \"compute_units\": %u, \"work_group\": %zu, \"work_group_source\": \"%s\"},\n", units, wg,
            klcl_work_group_source_name(wg_source));
    fprintf(f, "  \"mib_per_tensor\": %.6g,\n  \"reps\": %d,\n  \"startup\": {", mib, reps);
    json_num(f, "first_ms", startup_first, ", ");
    json_num(f, "warm_ms", startup_warm, ", ");
    json_num(f, "opencl_platforms_ms", platforms_ms, "},\n  \"limits\": [\n");
    for (size_t i = 0; i < nlim; i++) {
        fprintf(f, "    {\"dtype\": \"%s\", \"rows\": %zu, \"vocab\": %zu, ", klcl_dtype_name(lim[i].dtype),
                lim[i].rows, lim[i].vocab);
        json_num(f, "read_seconds", lim[i].read_seconds, ", ");
        json_num(f, "read_bytes_per_s", lim[i].read_gbps * 1e9, ", ");
        json_num(f, "exp_seconds", lim[i].exp_seconds, ", ");
        json_num(f, "exp_logits_per_s", lim[i].exp_rate * 1e9, i + 1 < nlim ? "},\n" : "}\n");
    }
    fprintf(f, "  ],\n  \"cases\": [\n");
    for (size_t i = 0; i < ncases; i++) {
        const bench_case *c = &cases[i];
        fprintf(f, "    {\"op\": \"%s\", \"dtype\": \"%s\", \"rows\": %zu, \"vocab\": %zu, \"team\": %zu, "
                   "\"parts\": %zu, ", c->op, klcl_dtype_name(c->dtype), c->rows, c->vocab, c->team, c->parts);
        json_num(f, "median_seconds", c->seconds, ", ");
        json_num(f, "useful_bytes_per_s", c->gbps * 1e9, ", ");
        json_num(f, "fraction_of_read_limit", c->frac_read, ", ");
        json_num(f, "logits_per_s", c->logit_rate * 1e9, ", ");
        json_num(f, "fraction_of_exp_limit", c->frac_exp, ", ");
        json_num(f, "speedup_vs_reference", c->speedup, i + 1 < ncases ? "},\n" : "}\n");
    }
    fprintf(f, "  ]\n}\n");
}

/* n launches of a limit kernel, queued back to back, then waited for. */
typedef struct limit_launch {
    cl_command_queue q;
    cl_kernel k;
    size_t items, local;
} limit_launch;

static void run_limit(void *arg, int n)
{
    const limit_launch *l = arg;
    for (int i = 0; i < n; i++) {
        cl_int err =
            clEnqueueNDRangeKernel(l->q, l->k, 1, NULL, &l->items, l->local ? &l->local : NULL, 0, NULL, NULL);
        if (err != CL_SUCCESS) die("limit kernel launch failed", err);
    }
    clFinish(l->q);
}

/* n klcl calls, one after the other (each returns when its results are ready). */
typedef struct compute_call {
    klcl_context *ctx;
    const klcl_loss_desc *desc;
    const klcl_batch *b;
} compute_call;

static void run_compute(void *arg, int n)
{
    const compute_call *c = arg;
    for (int i = 0; i < n; i++) {
        klcl_status st = klcl_compute(c->ctx, c->desc, c->b, NULL);
        if (st != KLCL_OK) die(klcl_last_error(c->ctx), st);
    }
}

/* Median seconds of a limit kernel over n floats read as vectors of `width`, in work-groups of `local`
 * work-items (0: the driver's choice). */
static double time_kernel(cl_command_queue q, cl_kernel k, cl_mem x, size_t n, size_t width, cl_mem out,
                          size_t items, size_t local, int reps)
{
    cl_ulong nw = n / width;
    clSetKernelArg(k, 0, sizeof x, &x);
    clSetKernelArg(k, 1, sizeof nw, &nw);
    clSetKernelArg(k, 2, sizeof out, &out);
    limit_launch l = {q, k, items, local};
    return median_seconds(run_limit, &l, reps);
}

/* A limit: the fastest of its kernels k[4], two access patterns (strided suits GPUs, chunked suits CPUs)
 * at vector widths 8 and 16 (limits.cl). The chunked kernels also run in work-groups of one work-item: left
 * to choose, PoCL 3.1 puts the few work-items of a chunked launch in one work-group, which runs on one core
 * (half the limit on 2 cores). */
static double time_limit(cl_command_queue q, const cl_kernel *k, cl_mem x, size_t n, cl_mem out, cl_uint units,
                         int reps)
{
    double best = INFINITY;
    for (int i = 0; i < 4; i++)
        for (size_t local = 0; local <= (size_t)(i % 2); local++) {
            const double t =
                time_kernel(q, k[i], x, n, i < 2 ? 8 : 16, out, (size_t)units * (i % 2 ? 4 : 256), local, reps);
            if (t < best) best = t;
        }
    return best;
}

/* The child side of the start-up measurement (--startup-probe). Prints two figures in milliseconds: the
 * OpenCL platforms' own loading (the first clGetPlatformIDs of a process, which loads the drivers: any
 * OpenCL program pays it), then klcl getting ready after it: a context, its kernels built or loaded from
 * the caches, and one small kl call with gradient. */
static int startup_probe(const char *device)
{
    double t0 = now();
    cl_uint np = 0;
    clGetPlatformIDs(0, NULL, &np);
    const double platforms_ms = 1e3 * (now() - t0);
    t0 = now();
    klcl_context_options o = KLCL_CONTEXT_OPTIONS_INIT;
    o.device = device ? device : "opencl";
    klcl_context *ctx = NULL;
    if (klcl_context_create(&o, &ctx) != KLCL_OK) return 2;
    float t[64], s[64], g[64];
    for (int i = 0; i < 64; i++) t[i] = s[i] = (float)(i % 7);
    klcl_loss_desc desc;
    klcl_loss_desc_init(&desc, KLCL_LOSS_KL);
    klcl_batch b = KLCL_BATCH_INIT;
    b.rows = 1;
    b.vocab = 64;
    b.teacher = klcl_host_tensor(t, 0);
    b.student = klcl_host_tensor(s, 0);
    b.grad = klcl_host_tensor(g, 0);
    klcl_status st = klcl_compute(ctx, &desc, &b, NULL);
    const double ms = 1e3 * (now() - t0);
    klcl_context_destroy(ctx);
    if (st != KLCL_OK) return 2;
    printf("%.3f %.3f\n", platforms_ms, ms);
    return 0;
}

/* Milliseconds a new process of this program takes to get ready (startup_probe), after the OpenCL
 * platforms' loading (*platforms_ms); NAN when it fails. */
static double time_startup(const char *device, double *platforms_ms)
{
    char path[4096], cmd[8300];
    ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
    if (n <= 0 || strchr(path, '\'') || (device && strchr(device, '\''))) return NAN;
    path[n] = '\0';
    snprintf(cmd, sizeof cmd, "'%s' --startup-probe%s%s%s", path, device ? " --device '" : "", device ? device : "",
             device ? "'" : "");
    fflush(NULL);
    FILE *p = popen(cmd, "r");
    if (!p) return NAN;
    double ms = NAN;
    *platforms_ms = NAN;
    if (fscanf(p, "%lf %lf", platforms_ms, &ms) != 2) ms = NAN;
    return pclose(p) == 0 ? ms : NAN;
}

/* --ops: each OP a loss's name (forward) or NAME+grad (with its gradient), each once. */
static void parse_ops(const char *v)
{
    static char names[MAX_OPS][32];
    const char *msg = "--ops %s: expected a comma-separated list of losses (kl, rkl, soft_ce, ce, jsd, skl, srkl, "
                      "tvd, kd), each alone (forward) or with +grad, each once";
    nops = 0;
    for (const char *p = v; *p;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        int grad = len > 5 && !strncmp(p + len - 5, "+grad", 5), found = -1;
        size_t base = grad ? len - 5 : len;
        for (int l = 0; l < KLCL_LOSS_COUNT; l++) {
            const char *name = klcl_loss_name((klcl_loss)l);
            if (strlen(name) == base && !strncmp(p, name, base)) found = l;
        }
        if (found < 0 || nops == MAX_OPS) usage_error(msg, v);
        for (int i = 0; i < nops; i++)
            if (ops[i].loss == (klcl_loss)found && ops[i].with_grad == grad) usage_error(msg, v);
        snprintf(names[nops], sizeof names[nops], "%s%s", klcl_loss_name((klcl_loss)found), grad ? "+grad" : "");
        ops[nops] = (bench_op){names[nops], (klcl_loss)found, grad};
        nops++;
        p = end ? end + 1 : p + len;
        if (end && !*p) usage_error(msg, v);
    }
}

static int parse_dtypes(const char *v, klcl_dtype *out)
{
    int n = 0;
    for (const char *p = v; *p;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        klcl_dtype d;
        if (len == 3 && !strncmp(p, "f32", 3)) d = KLCL_DTYPE_F32;
        else if (len == 3 && !strncmp(p, "f16", 3)) d = KLCL_DTYPE_F16;
        else if (len == 4 && !strncmp(p, "bf16", 4)) d = KLCL_DTYPE_BF16;
        else usage_error("--dtype %s: expected a comma-separated list of f32, f16 and bf16", v);
        for (int i = 0; i < n; i++)
            if (out[i] == d) usage_error("--dtype %s: a type is listed twice", v);
        out[n++] = d;
        p = end ? end + 1 : p + len;
        if (end && !*p) usage_error("--dtype %s: expected a comma-separated list of f32, f16 and bf16", v);
    }
    return n;
}

/* A comma-separated list of whole numbers for option `opt` into out[max]; each must be positive (or, with
 * allow_zero, the list may be the single value 0: none) and, with mult8, a multiple of 8. Returns the count. */
static size_t parse_list(const char *opt, const char *v, size_t *out, size_t max, int mult8, int allow_zero)
{
    if (allow_zero && !strcmp(v, "0")) return 0;
    size_t n = 0;
    char msg[160];
    snprintf(msg, sizeof msg, "%s %%s: every value must be a positive %sin [1, 2^31 - 1], at most %zu, "
             "separated by commas", opt, mult8 ? "multiple of 8 " : "number ", max);
    for (const char *p = v; *p;) {
        char *end = NULL;
        unsigned long long x = strtoull(p, &end, 10);
        if (n == max || end == p || *p == '-' || x == 0 || (mult8 && x % 8) || x > 0x7fffffff ||
            (*end && *end != ','))
            usage_error(msg, v);
        out[n++] = (size_t)x;
        p = *end ? end + 1 : end;
    }
    return n;
}

int main(int argc, char **argv)
{
    const char *device = NULL, *csv_path = NULL, *json_path = NULL;
    double mib = 64.0;
    int reps = 5, format = FORMAT_TABLE, tune = 0;
    size_t vocabs[MAX_VOCABS] = {4096, 16384, 32000, 65536, 131072, 262144};
    size_t nv = 6, small_rows[MAX_SMALL] = {1, 2}, nsmall = 2, small_vocab = 262144;
    klcl_dtype dtypes[MAX_DTYPES] = {KLCL_DTYPE_F32, KLCL_DTYPE_BF16};
    int nd = 2, probe = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        char *end = NULL;
        if (!strcmp(a, "--tune") || !strcmp(a, "--startup-probe")) {
            *(a[2] == 't' ? &tune : &probe) = 1;
            continue;
        }
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            printf("%s", USAGE);
            return 0;
        }
        if (strcmp(a, "--device") && strcmp(a, "--mib") && strcmp(a, "--reps") && strcmp(a, "--csv") &&
            strcmp(a, "--json") && strcmp(a, "--format") && strcmp(a, "--vocab") && strcmp(a, "--dtype") &&
            strcmp(a, "--small-rows") && strcmp(a, "--small-vocab") && strcmp(a, "--ops"))
            usage_error("unknown argument '%s'", a);
        if (!v || !*v) usage_error("%s needs a value", a);
        i++;
        if (!strcmp(a, "--device")) device = v;
        else if (!strcmp(a, "--csv")) csv_path = v;
        else if (!strcmp(a, "--json")) json_path = v;
        else if (!strcmp(a, "--dtype")) nd = parse_dtypes(v, dtypes);
        else if (!strcmp(a, "--ops")) parse_ops(v);
        else if (!strcmp(a, "--small-rows")) nsmall = parse_list(a, v, small_rows, MAX_SMALL, 0, 1);
        else if (!strcmp(a, "--small-vocab")) {
            size_t sv[1];
            parse_list(a, v, sv, 1, 1, 0);
            small_vocab = sv[0];
        }
        else if (!strcmp(a, "--mib")) {
            mib = strtod(v, &end);
            if (*end || !(mib > 0.0) || mib > 1e6) usage_error("--mib %s: must be a number above 0", v);
        } else if (!strcmp(a, "--reps")) {
            long r = strtol(v, &end, 10);
            if (*end || r < 1 || r > MAX_REPS) usage_error("--reps %s: must be a whole number from 1 to 101", v);
            reps = (int)r;
        } else if (!strcmp(a, "--format")) {
            if (!strcmp(v, "table")) format = FORMAT_TABLE;
            else if (!strcmp(v, "csv")) format = FORMAT_CSV;
            else if (!strcmp(v, "json")) format = FORMAT_JSON;
            else usage_error("--format %s: expected table, csv or json", v);
        } else {
            nv = parse_list(a, v, vocabs, MAX_VOCABS, 1, 0);
        }
    }
    /* The shapes: --mib's rows at each vocabulary, then the few-row ones. */
    size_t shape_rows[MAX_SHAPES], shape_vocab[MAX_SHAPES], nshapes = 0;
    for (size_t i = 0; i < nv; i++) {
        size_t rows = (size_t)(mib * 1048576.0 / 4.0 / (double)vocabs[i]);
        shape_rows[nshapes] = rows < 1 ? 1 : rows;
        shape_vocab[nshapes++] = vocabs[i];
    }
    for (size_t i = 0; i < nsmall; i++) {
        shape_rows[nshapes] = small_rows[i];
        shape_vocab[nshapes++] = small_vocab;
    }
    if (probe) return startup_probe(device);
    /* Text for a person goes to stdout with the table, else to stderr, keeping stdout parseable. */
    FILE *text = format == FORMAT_TABLE ? stdout : stderr;
    int opw = 9; /* the table's first column: the longest op's name */
    for (int i = 0; i < nops; i++)
        if ((int)strlen(ops[i].name) > opw) opw = (int)strlen(ops[i].name);

    /* Outputs are opened first: a bad path fails now, not after the run. */
    FILE *csv = csv_path ? fopen(csv_path, "w") : NULL;
    if (csv_path && !csv) usage_error("--csv %s: cannot create the file", csv_path);
    FILE *json = json_path ? fopen(json_path, "w") : NULL;
    if (json_path && !json) usage_error("--json %s: cannot create the file", json_path);

    klcl_context_options o = KLCL_CONTEXT_OPTIONS_INIT;
    o.device = device ? device : "opencl";
    klcl_status st;
    if (tune) {
        run_tuner(o.device, text != stdout);
        fprintf(text, "\n");
    }
    /* Before this process holds the device: the first child may build or fill the caches, the second finds
     * them warm. */
    double platforms_ms;
    const double startup_first = time_startup(device, &platforms_ms);
    const double startup_warm = time_startup(device, &platforms_ms);
    klcl_context *ctx = NULL;
    st = klcl_context_create(&o, &ctx);
    if (st != KLCL_OK) die(klcl_status_string(st), st);
    klcl_context_options ro = KLCL_CONTEXT_OPTIONS_INIT;
    ro.device = "cpu";
    klcl_context *ref = NULL;
    if (klcl_context_create(&ro, &ref) != KLCL_OK) die("cannot create the reference context", 2);
    cl_context cc = klcl_context_cl_context(ctx);
    cl_command_queue q = klcl_context_cl_queue(ctx);
    cl_device_id dev;
    clGetCommandQueueInfo(q, CL_QUEUE_DEVICE, sizeof dev, &dev, NULL);
    cl_uint units = 1;
    clGetDeviceInfo(dev, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof units, &units, NULL);

    cl_int err;
    const char *src = klcl_bench_kernel_sources[0];
    cl_program prog = clCreateProgramWithSource(cc, 1, &src, &klcl_bench_kernel_lengths[0], &err);
    if (!prog || clBuildProgram(prog, 1, &dev, NULL, NULL, NULL) != CL_SUCCESS) die("limit kernels do not build", -11);
    cl_kernel k_read[4], k_exp[4];
    const char *names[4] = {"strided8", "chunked8", "strided16", "chunked16"};
    for (int i = 0; i < 4; i++) {
        char name[32];
        snprintf(name, sizeof name, "read_%s", names[i]);
        k_read[i] = clCreateKernel(prog, name, &err);
        snprintf(name, sizeof name, "exp_%s", names[i]);
        k_exp[i] = clCreateKernel(prog, name, &err);
        if (!k_read[i] || !k_exp[i]) die("limit kernels missing", err);
    }
    size_t wg = 0;
    klcl_work_group_source wg_source = KLCL_WORK_GROUP_DEFAULT;
    if (klcl_context_work_group(ctx, &wg, &wg_source) != KLCL_OK) die(klcl_last_error(ctx), 3);

    FILE *table = format == FORMAT_TABLE ? stdout : NULL;
    if (table) {
        printf("klcl-bench %s on %s (%u compute units, work-group %zu from %s): median of %d samples of "
               ">= %.0f ms of back-to-back runs after a warm-up, ~%.0f MiB per tensor\n",
               klcl_version_string(), klcl_context_device_name(ctx), units, wg, klcl_work_group_source_name(wg_source),
               reps, 1e3 * SAMPLE_MIN_S, mib);
        printf("a new process: ready in %.1f ms with warm caches (first: %.1f ms): context, kernels, one small call,\n"
               "  after the OpenCL platforms' own loading (%.1f ms, paid by any OpenCL program)\n",
               startup_warm, startup_first, platforms_ms);
        printf("limits per shape: 'read' streams teacher+student once (in the type of the rows below it); 'exp' does "
               "one exp per logit read;\nteam: work-items per row, parts: work-groups per row\n\n");
        printf("%-*s %-5s %6s %7s %9s %9s %7s %9s %7s %9s %5s %5s\n", opw, "op", "type", "N", "V", "ms", "GB/s", "of read",
               "Glogit/s", "of exp", "vs ref", "team", "parts");
    }
    bench_case cases[MAX_SHAPES * MAX_DTYPES * MAX_OPS];
    bench_limit limits[MAX_SHAPES * MAX_DTYPES];
    size_t ncases = 0, nlimits = 0;

    cl_mem partial = clCreateBuffer(cc, CL_MEM_READ_WRITE, (size_t)units * 256 * sizeof(float), NULL, &err);
    for (size_t iv = 0; iv < nshapes; iv++) {
        const size_t vocab = shape_vocab[iv], rows = shape_rows[iv];
        const size_t n = rows * vocab;
        size_t team = 0, parts = 0;
        if (klcl_context_row_strategy(ctx, rows, vocab, &team, &parts) != KLCL_OK) die(klcl_last_error(ctx), 3);
        /* Teacher and student back to back in one buffer, so the limit kernels read exactly both. */
        float *host = malloc(2 * n * sizeof(float));
        int32_t *labels = malloc(rows * sizeof(int32_t));
        if (!host || !labels) die("out of host memory", 2);
        uint64_t x = 0x2545F4914F6CDD1Dull;
        for (size_t k = 0; k < 2 * n; k++) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            host[k] = (float)((double)(x >> 40) / 16777216.0 * 12.0 - 6.0);
        }
        for (size_t i = 0; i < rows; i++) labels[i] = (int32_t)((i * 7919u) % vocab);
        cl_mem logits = clCreateBuffer(cc, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, 2 * n * sizeof(float), host, &err);
        cl_mem grad = clCreateBuffer(cc, CL_MEM_READ_WRITE, n * sizeof(float), NULL, &err);
        cl_mem ybuf = clCreateBuffer(cc, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, rows * sizeof(int32_t), labels, &err);
        if (!logits || !grad || !ybuf) die("device allocation failed: lower --mib", err);
        double t_exp = time_limit(q, k_exp, logits, 2 * n, partial, units, reps);
        double exp_rate = 2.0 * (double)n / t_exp * 1e-9; /* logits per second */
        for (int id = 0; id < nd; id++) {
            const klcl_dtype dt = dtypes[id];
            const size_t elem = klcl_dtype_size(dt);
            /* The rows in this type: converted on the host (rounded to nearest even), uploaded once. */
            void *hd = host;
            cl_mem in = logits;
            if (dt != KLCL_DTYPE_F32) {
                if (!(hd = malloc(2 * n * elem)) || klcl_convert(host, KLCL_DTYPE_F32, hd, dt, 2 * n) != KLCL_OK)
                    die("out of host memory", 2);
                in = clCreateBuffer(cc, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, 2 * n * elem, hd, &err);
                if (!in) die("device allocation failed: lower --mib", err);
            }
            /* The read limit over the same bytes: 2 n elements of this type are 2 n elem / 4 floats. */
            double t_read = time_limit(q, k_read, logits, 2 * n * elem / 4, partial, units, reps);
            double read_gbps = 2.0 * (double)n * (double)elem / t_read * 1e-9;
            limits[nlimits++] = (bench_limit){dt, rows, vocab, t_read, read_gbps, t_exp, exp_rate};
            if (table) {
                printf("%-*s %-5s %6zu %7zu %9.3f %9.2f %7s %9.3f %7s %9s\n", opw, "read", klcl_dtype_name(dt), rows, vocab,
                       1e3 * t_read, read_gbps, "1.00", 2.0 * (double)n / t_read * 1e-9, "", "");
                if (id == 0)
                    printf("%-*s %-5s %6zu %7zu %9.3f %9s %7s %9.3f %7s %9s\n", opw, "exp", "", rows, vocab, 1e3 * t_exp, "",
                           "", exp_rate, "1.00", "");
            }
            for (int op = 0; op < nops; op++) {
                klcl_loss_desc desc;
                klcl_loss_desc_init(&desc, ops[op].loss);
                klcl_batch b = KLCL_BATCH_INIT;
                b.rows = rows;
                b.vocab = vocab;
                b.student = klcl_mem_tensor(in, n * elem, 0);
                b.student.dtype = dt;
                if (ops[op].loss != KLCL_LOSS_CE) {
                    b.teacher = klcl_mem_tensor(in, 0, 0);
                    b.teacher.dtype = dt;
                }
                if (ops[op].loss == KLCL_LOSS_CE || ops[op].loss == KLCL_LOSS_KD) b.labels = klcl_mem_tensor(ybuf, 0, 0);
                if (ops[op].with_grad) {
                    b.grad = klcl_mem_tensor(grad, 0, 0);
                    b.grad.dtype = dt;
                }
                compute_call call = {ctx, &desc, &b};
                double sec = median_seconds(run_compute, &call, reps);
                /* The reference on REF_ROWS rows of the same type, as a rate per logit. */
                klcl_batch rb = KLCL_BATCH_INIT;
                size_t rr = rows < REF_ROWS ? rows : REF_ROWS;
                void *rgrad = ops[op].with_grad ? malloc(rr * vocab * elem) : NULL;
                rb.rows = rr;
                rb.vocab = vocab;
                rb.student = klcl_host_tensor((const char *)hd + n * elem, 0);
                rb.student.dtype = dt;
                if (ops[op].loss != KLCL_LOSS_CE) {
                    rb.teacher = klcl_host_tensor(hd, 0);
                    rb.teacher.dtype = dt;
                }
                if (ops[op].loss == KLCL_LOSS_CE || ops[op].loss == KLCL_LOSS_KD) rb.labels = klcl_host_tensor(labels, 0);
                if (rgrad) {
                    rb.grad = klcl_host_tensor(rgrad, 0);
                    rb.grad.dtype = dt;
                }
                double t0 = now();
                if (klcl_compute(ref, &desc, &rb, NULL) != KLCL_OK) die(klcl_last_error(ref), 2);
                double ref_per_logit = (now() - t0) / (double)(rr * vocab);
                free(rgrad);

                int inputs = ops[op].loss == KLCL_LOSS_CE ? 1 : 2;
                double bytes = (double)n * (double)elem * (inputs + (ops[op].with_grad ? 1 : 0));
                double gbps = bytes / sec * 1e-9, logit_rate = (double)n * inputs / sec * 1e-9;
                double speedup = ref_per_logit * (double)n / sec;
                cases[ncases++] = (bench_case){ops[op].name, dt,        rows,           vocab,      team,
                                               parts,        sec,       gbps,           gbps / read_gbps,
                                               logit_rate,   logit_rate / exp_rate, speedup};
                if (table)
                    printf("%-*s %-5s %6zu %7zu %9.3f %9.2f %7.2f %9.3f %7.2f %8.1fx %5zu %5zu\n", opw, ops[op].name,
                           klcl_dtype_name(dt), rows, vocab, 1e3 * sec, gbps, gbps / read_gbps, logit_rate,
                           logit_rate / exp_rate, speedup, team, parts);
            }
            if (dt != KLCL_DTYPE_F32) {
                clReleaseMemObject(in);
                free(hd);
            }
        }
        if (table) printf("\n");
        clReleaseMemObject(logits);
        clReleaseMemObject(grad);
        clReleaseMemObject(ybuf);
        free(host);
        free(labels);
    }
    /* CSV: the columns torch_compare.py reads come first; dtype and work_group were added later, at the end. */
    FILE *csv_out[2] = {csv, format == FORMAT_CSV ? stdout : NULL};
    for (int k = 0; k < 2; k++) {
        FILE *f = csv_out[k];
        if (!f) continue;
        fprintf(f, "device,op,rows,vocab,seconds,useful_gbps,read_gbps,frac_bandwidth,glogits_per_s,"
                   "exp_glogits_per_s,frac_exp,speedup_vs_reference,dtype,work_group,team,parts\n");
        for (size_t i = 0; i < ncases; i++) {
            const bench_case *c = &cases[i];
            const bench_limit *l = &limits[0];
            for (size_t j = 0; j < nlimits; j++)
                if (limits[j].vocab == c->vocab && limits[j].rows == c->rows && limits[j].dtype == c->dtype)
                    l = &limits[j];
            fprintf(f, "\"%s\",%s,%zu,%zu,%.6g,%.4g,%.4g,%.4g,%.4g,%.4g,%.4g,%.4g,%s,%zu,%zu,%zu\n",
                    klcl_context_device_name(ctx), c->op, c->rows, c->vocab, c->seconds, c->gbps, l->read_gbps,
                    c->frac_read, c->logit_rate, l->exp_rate, c->frac_exp, c->speedup, klcl_dtype_name(c->dtype), wg,
                    c->team, c->parts);
        }
    }
    FILE *json_out[2] = {json, format == FORMAT_JSON ? stdout : NULL};
    for (int k = 0; k < 2; k++)
        if (json_out[k])
            write_json(json_out[k], argc, argv, dev, klcl_context_device_name(ctx), units, wg, wg_source, mib, reps,
                       startup_first, startup_warm, platforms_ms, limits, nlimits, cases, ncases);
    if (csv && fclose(csv) != 0) die("--csv: writing the file failed", 2);
    if (json && fclose(json) != 0) die("--json: writing the file failed", 2);
    clReleaseMemObject(partial);
    for (int i = 0; i < 4; i++) {
        clReleaseKernel(k_read[i]);
        clReleaseKernel(k_exp[i]);
    }
    clReleaseProgram(prog);
    klcl_context_destroy(ref);
    klcl_context_destroy(ctx);
    return 0;
}
