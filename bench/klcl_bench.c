/* klcl-bench: how close klcl's kernels come to this device's limits, measured in the same run.
 *
 * For each vocabulary V it fills N x V teacher and student logits on the device (N chosen so that one
 * tensor holds about --mib MiB), then times, as the median of --reps runs after one warm-up:
 *   read       a streaming read of the bytes the loss must read (teacher + student): the bandwidth limit;
 *   exp        one exponential per logit read (the online softmax's minimum): the exp-throughput limit;
 *              each limit is the faster of a GPU-style (strided) and a CPU-style (chunked) access pattern;
 *   klcl ops   kl forward; kl, ce and jsd forward with gradient (cl_mem tensors, no host transfers);
 *   reference  the CPU reference on a few rows, as a rate per logit, for the speed-up.
 * Per case it prints useful bytes per second (inputs read once, gradient written once), the fraction of the
 * streaming limit, logits per second, the fraction of the exp limit, and the speed-up over the reference.
 *
 *   klcl-bench [--device SPEC] [--mib N] [--reps N] [--vocab V,V,...] [--csv FILE]
 */
#include <klcl.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

extern const char *const klcl_bench_kernel_sources[];
extern const size_t klcl_bench_kernel_lengths[];

typedef struct bench_op {
    const char *name;
    klcl_loss loss;
    int with_grad;
} bench_op;

static const bench_op ops[] = {
    {"kl", KLCL_LOSS_KL, 0},
    {"kl+grad", KLCL_LOSS_KL, 1},
    {"ce+grad", KLCL_LOSS_CE, 1},
    {"jsd+grad", KLCL_LOSS_JSD, 1},
};
enum { OP_COUNT = sizeof ops / sizeof ops[0], MAX_REPS = 101, REF_ROWS = 4 };

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

/* Median seconds of a limit kernel over n floats (n a multiple of 8). */
static double time_kernel(cl_command_queue q, cl_kernel k, cl_mem x, size_t n, cl_mem out, size_t items, int reps)
{
    cl_ulong n8 = n / 8;
    clSetKernelArg(k, 0, sizeof x, &x);
    clSetKernelArg(k, 1, sizeof n8, &n8);
    clSetKernelArg(k, 2, sizeof out, &out);
    double t[MAX_REPS];
    for (int r = -1; r < reps; r++) {
        double t0 = now();
        cl_int err = clEnqueueNDRangeKernel(q, k, 1, NULL, &items, NULL, 0, NULL, NULL);
        if (err != CL_SUCCESS) die("limit kernel launch failed", err);
        clFinish(q);
        if (r >= 0) t[r] = now() - t0;
    }
    return median(t, reps);
}

/* A limit: the faster of its two access patterns (strided suits GPUs, chunked suits CPUs). */
static double time_limit(cl_command_queue q, cl_kernel strided, cl_kernel chunked, cl_mem x, size_t n, cl_mem out,
                         cl_uint units, int reps)
{
    double a = time_kernel(q, strided, x, n, out, (size_t)units * 256, reps);
    double b = time_kernel(q, chunked, x, n, out, (size_t)units * 4, reps);
    return a < b ? a : b;
}

int main(int argc, char **argv)
{
    const char *device = NULL, *csv_path = NULL;
    double mib = 64.0;
    int reps = 5;
    size_t vocabs[16] = {4096, 16384, 32000, 65536, 131072, 262144};
    size_t nv = 6;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--device") && v) device = argv[++i];
        else if (!strcmp(a, "--mib") && v) mib = atof(argv[++i]);
        else if (!strcmp(a, "--reps") && v) reps = atoi(argv[++i]);
        else if (!strcmp(a, "--csv") && v) csv_path = argv[++i];
        else if (!strcmp(a, "--vocab") && v) {
            nv = 0;
            for (char *p = argv[++i]; *p && nv < 16;) {
                vocabs[nv++] = strtoul(p, &p, 10);
                if (*p == ',') p++;
                else if (*p) die("--vocab takes numbers separated by commas", 2);
            }
        } else {
            fprintf(stderr, "usage: klcl-bench [--device SPEC] [--mib N] [--reps N] [--vocab V,V,...] [--csv FILE]\n");
            return 2;
        }
    }
    if (!(mib > 0.0) || reps < 1 || reps > MAX_REPS) die("--mib must be > 0 and --reps in [1, 101]", 2);
    for (size_t i = 0; i < nv; i++)
        if (vocabs[i] == 0 || vocabs[i] % 8) die("every --vocab value must be a positive multiple of 8", 2);

    klcl_context_options o = KLCL_CONTEXT_OPTIONS_INIT;
    o.device = device ? device : "opencl";
    klcl_context *ctx = NULL;
    klcl_status st = klcl_context_create(&o, &ctx);
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
    cl_kernel k_read[2], k_exp[2];
    const char *names[4] = {"read_strided", "read_chunked", "exp_strided", "exp_chunked"};
    for (int i = 0; i < 2; i++) {
        k_read[i] = clCreateKernel(prog, names[i], &err);
        k_exp[i] = clCreateKernel(prog, names[2 + i], &err);
        if (!k_read[i] || !k_exp[i]) die("limit kernels missing", err);
    }
    if (klcl_context_prepare(ctx) != KLCL_OK) die(klcl_last_error(ctx), 3);

    FILE *csv = csv_path ? fopen(csv_path, "w") : NULL;
    if (csv_path && !csv) die("cannot open the --csv file", 2);
    if (csv) fprintf(csv, "device,op,rows,vocab,seconds,useful_gbps,read_gbps,frac_bandwidth,glogits_per_s,"
                          "exp_glogits_per_s,frac_exp,speedup_vs_reference\n");
    printf("klcl-bench %s on %s (%u compute units): median of %d after a warm-up, ~%.0f MiB per tensor\n",
           klcl_version_string(), klcl_context_device_name(ctx), units, reps, mib);
    printf("limits per V: 'read' streams teacher+student once; 'exp' does one exp per logit read\n\n");
    printf("%-9s %6s %7s %9s %9s %7s %9s %7s %9s\n", "op", "N", "V", "ms", "GB/s", "of read", "Glogit/s",
           "of exp", "vs ref");

    cl_mem partial = clCreateBuffer(cc, CL_MEM_READ_WRITE, (size_t)units * 256 * sizeof(float), NULL, &err);
    for (size_t iv = 0; iv < nv; iv++) {
        const size_t vocab = vocabs[iv];
        size_t rows = (size_t)(mib * 1048576.0 / 4.0 / (double)vocab);
        if (rows < 1) rows = 1;
        const size_t n = rows * vocab;
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

        double t_read = time_limit(q, k_read[0], k_read[1], logits, 2 * n, partial, units, reps);
        double t_exp = time_limit(q, k_exp[0], k_exp[1], logits, 2 * n, partial, units, reps);
        double read_gbps = 2.0 * (double)n * 4.0 / t_read * 1e-9;
        double exp_rate = 2.0 * (double)n / t_exp * 1e-9; /* logits per second */
        printf("%-9s %6zu %7zu %9.3f %9.2f %7s %9.3f %7s %9s\n", "read", rows, vocab, 1e3 * t_read, read_gbps, "1.00",
               2.0 * (double)n / t_read * 1e-9, "", "");
        printf("%-9s %6zu %7zu %9.3f %9s %7s %9.3f %7s %9s\n", "exp", rows, vocab, 1e3 * t_exp, "", "", exp_rate,
               "1.00", "");

        for (int op = 0; op < OP_COUNT; op++) {
            klcl_loss_desc desc;
            klcl_loss_desc_init(&desc, ops[op].loss);
            klcl_batch b = KLCL_BATCH_INIT;
            b.rows = rows;
            b.vocab = vocab;
            b.student = klcl_mem_tensor(logits, n * sizeof(float), 0);
            if (ops[op].loss != KLCL_LOSS_CE) b.teacher = klcl_mem_tensor(logits, 0, 0);
            else b.labels = klcl_mem_tensor(ybuf, 0, 0);
            if (ops[op].with_grad) b.grad = klcl_mem_tensor(grad, 0, 0);
            double t[MAX_REPS];
            for (int r = -1; r < reps; r++) {
                double t0 = now();
                st = klcl_compute(ctx, &desc, &b, NULL);
                if (st != KLCL_OK) die(klcl_last_error(ctx), st);
                if (r >= 0) t[r] = now() - t0;
            }
            double sec = median(t, reps);
            /* The reference on REF_ROWS rows, as a rate per logit. */
            klcl_batch rb = KLCL_BATCH_INIT;
            size_t rr = rows < REF_ROWS ? rows : REF_ROWS;
            float *rgrad = ops[op].with_grad ? malloc(rr * vocab * sizeof(float)) : NULL;
            rb.rows = rr;
            rb.vocab = vocab;
            rb.student = klcl_host_tensor(host + n, 0);
            if (ops[op].loss != KLCL_LOSS_CE) rb.teacher = klcl_host_tensor(host, 0);
            else rb.labels = klcl_host_tensor(labels, 0);
            if (rgrad) rb.grad = klcl_host_tensor(rgrad, 0);
            double t0 = now();
            if (klcl_compute(ref, &desc, &rb, NULL) != KLCL_OK) die(klcl_last_error(ref), 2);
            double ref_per_logit = (now() - t0) / (double)(rr * vocab);
            free(rgrad);

            int inputs = ops[op].loss == KLCL_LOSS_CE ? 1 : 2;
            double bytes = (double)n * 4.0 * (inputs + (ops[op].with_grad ? 1 : 0));
            double gbps = bytes / sec * 1e-9, logit_rate = (double)n * inputs / sec * 1e-9;
            double speedup = ref_per_logit * (double)n / sec;
            printf("%-9s %6zu %7zu %9.3f %9.2f %7.2f %9.3f %7.2f %8.1fx\n", ops[op].name, rows, vocab, 1e3 * sec,
                   gbps, gbps / read_gbps, logit_rate, logit_rate / exp_rate, speedup);
            if (csv)
                fprintf(csv, "\"%s\",%s,%zu,%zu,%.6g,%.4g,%.4g,%.4g,%.4g,%.4g,%.4g,%.4g\n",
                        klcl_context_device_name(ctx), ops[op].name, rows, vocab, sec, gbps, read_gbps,
                        gbps / read_gbps, logit_rate, exp_rate, logit_rate / exp_rate, speedup);
        }
        printf("\n");
        clReleaseMemObject(logits);
        clReleaseMemObject(grad);
        clReleaseMemObject(ybuf);
        free(host);
        free(labels);
    }
    if (csv) fclose(csv);
    clReleaseMemObject(partial);
    for (int i = 0; i < 2; i++) {
        clReleaseKernel(k_read[i]);
        clReleaseKernel(k_exp[i]);
    }
    clReleaseProgram(prog);
    klcl_context_destroy(ref);
    klcl_context_destroy(ctx);
    return 0;
}
