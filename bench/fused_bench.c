/* klcl-fused-bench: the fused linear + loss path (klcl_compute_fused) against (a) its GEMMs alone, with the
 * same chunking, and (b) the unfused path (full N x V logits, klcl_compute with the gradient, then the
 * backward GEMMs). Reports the median time of --reps runs after one warm-up run of each path (the paths
 * take turns within each run), the device memory each path allocates beyond the inputs and outputs they
 * share, and the cost of the first use of CLBlast (its kernel compilation), which klcl_fused_warm moves out
 * of the first step.
 *
 *   klcl-fused-bench [--rows N] [--dim D] [--vocab V] [--chunk C] [--reps R] [--loss NAME]
 *                    [--dtype f32|f16|bf16] [--teacher-logits] [--skip-unfused]
 *
 * The teacher is given as hidden states and head of the same width as the student's (two forward GEMMs per
 * chunk), or with --teacher-logits as precomputed N x V logits in device memory (one forward GEMM).
 * --dtype gives the fused path its hidden states and heads in that type (the gradients stay fp32); the
 * values are rounded to it first, and the other two paths take the same values in fp32, as the fused path
 * computes after widening them. The device comes from KLCL_DEVICE as for every klcl program. */
#include <klcl.h>

#include <clblast_c.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void die(const char *what, long code)
{
    fprintf(stderr, "klcl-fused-bench: %s failed (%ld)\n", what, code);
    exit(3);
}

static cl_context clctx;
static cl_command_queue queue;

/* x rounded to `dtype` in place, so that every path computes on the same values, and a device copy in that
 * type for the fused path; NULL for fp32, where the fp32 buffer serves. */
static cl_mem half_buffer(float *x, size_t count, klcl_dtype dtype)
{
    if (dtype == KLCL_DTYPE_F32) return NULL;
    uint16_t *bits = malloc(count * sizeof(uint16_t));
    if (!bits) die("malloc", 0);
    klcl_convert(x, KLCL_DTYPE_F32, bits, dtype, count);
    klcl_convert(bits, dtype, x, KLCL_DTYPE_F32, count);
    cl_int err;
    cl_mem m = clCreateBuffer(clctx, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, count * sizeof(uint16_t), bits, &err);
    if (!m) die("clCreateBuffer", err);
    free(bits);
    return m;
}

/* The fused path's input: the half-precision copy when there is one. */
static klcl_tensor input(cl_mem fp32, cl_mem half, klcl_dtype dtype)
{
    klcl_tensor t = klcl_mem_tensor(half ? half : fp32, 0, 0);
    t.dtype = half ? dtype : KLCL_DTYPE_F32;
    return t;
}

static cl_mem buffer(size_t count, const float *init)
{
    cl_int err;
    cl_mem m = clCreateBuffer(clctx, CL_MEM_READ_WRITE | (init ? CL_MEM_COPY_HOST_PTR : 0), count * sizeof(float),
                              (void *)init, &err);
    if (!m) die("clCreateBuffer", err);
    return m;
}

static void gemm(int ta, int tb, size_t m, size_t n, size_t k, float alpha, cl_mem a, size_t lda, cl_mem b,
                 size_t ldb, float beta, cl_mem c, size_t ldc)
{
    CLBlastStatusCode s = CLBlastSgemm(CLBlastLayoutRowMajor, ta ? CLBlastTransposeYes : CLBlastTransposeNo,
                                       tb ? CLBlastTransposeYes : CLBlastTransposeNo, m, n, k, alpha, a, 0, lda, b, 0,
                                       ldb, beta, c, 0, ldc, &queue, NULL);
    if (s != CLBlastSuccess) die("CLBlastSgemm", s);
}

/* Row offsets for CLBlast: a sub-matrix starting at row r0 of a dense matrix of width w. */
static void gemm_at(int ta, int tb, size_t m, size_t n, size_t k, float alpha, cl_mem a, size_t a_off, size_t lda,
                    cl_mem b, size_t b_off, size_t ldb, float beta, cl_mem c, size_t c_off, size_t ldc)
{
    CLBlastStatusCode s = CLBlastSgemm(CLBlastLayoutRowMajor, ta ? CLBlastTransposeYes : CLBlastTransposeNo,
                                       tb ? CLBlastTransposeYes : CLBlastTransposeNo, m, n, k, alpha, a, a_off, lda, b,
                                       b_off, ldb, beta, c, c_off, ldc, &queue, NULL);
    if (s != CLBlastSuccess) die("CLBlastSgemm", s);
}

int main(int argc, char **argv)
{
    size_t N = 2048, D = 256, V = 8192, chunk = 0;
    int reps = 5, teacher_logits = 0, skip_unfused = 0;
    const char *loss_name = "kl", *dtype_name = "f32";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--teacher-logits")) teacher_logits = 1;
        else if (!strcmp(a, "--skip-unfused")) skip_unfused = 1;
        else if (v && !strcmp(a, "--rows")) N = strtoul(argv[++i], NULL, 10);
        else if (v && !strcmp(a, "--dim")) D = strtoul(argv[++i], NULL, 10);
        else if (v && !strcmp(a, "--vocab")) V = strtoul(argv[++i], NULL, 10);
        else if (v && !strcmp(a, "--chunk")) chunk = strtoul(argv[++i], NULL, 10);
        else if (v && !strcmp(a, "--reps")) reps = atoi(argv[++i]);
        else if (v && !strcmp(a, "--loss")) loss_name = argv[++i];
        else if (v && !strcmp(a, "--dtype")) dtype_name = argv[++i];
        else {
            fprintf(stderr, "usage: klcl-fused-bench [--rows N] [--dim D] [--vocab V] [--chunk C (0: automatic)] "
                            "[--reps R] [--loss NAME] [--dtype f32|f16|bf16] [--teacher-logits] [--skip-unfused]\n");
            return 2;
        }
    }
    if (!N || !D || !V || reps < 1 || reps > 1000) {
        fprintf(stderr, "klcl-fused-bench: rows, dim and vocab must be >= 1 and reps in [1, 1000]\n");
        return 2;
    }
    klcl_loss_desc desc;
    klcl_loss loss;
    if (klcl_loss_from_name(loss_name, &loss) != KLCL_OK) {
        fprintf(stderr, "klcl-fused-bench: unknown loss %s\n", loss_name);
        return 2;
    }
    klcl_dtype dtype = KLCL_DTYPE_F32;
    while (dtype < KLCL_DTYPE_COUNT && strcmp(klcl_dtype_name(dtype), dtype_name)) dtype++;
    if (dtype == KLCL_DTYPE_COUNT) {
        fprintf(stderr, "klcl-fused-bench: unknown --dtype %s (f32, f16 or bf16)\n", dtype_name);
        return 2;
    }
    klcl_loss_desc_init(&desc, loss);
    desc.reduction = KLCL_REDUCTION_MEAN;

    klcl_context_options o = KLCL_CONTEXT_OPTIONS_INIT;
    o.device = getenv("KLCL_DEVICE");
    if (!o.device || !*o.device) o.device = "opencl";
    klcl_context *ctx;
    klcl_status st = klcl_context_create(&o, &ctx);
    if (st != KLCL_OK) {
        fprintf(stderr, "klcl-fused-bench: no OpenCL device: %s\n", klcl_status_string(st));
        return 3;
    }
    clctx = klcl_context_cl_context(ctx);
    queue = klcl_context_cl_queue(ctx);

    /* Inputs like a language model's last layer: hidden N(0, 1), heads N(0, 3/sqrt(D)). */
    srand(1);
    float *h = malloc(N * D * sizeof(float)), *w = malloc(V * D * sizeof(float));
    int32_t *labels = malloc(N * sizeof(int32_t));
    if (!h || !w || !labels) die("malloc", 0);
    for (size_t k = 0; k < N * D; k++) h[k] = (float)((rand() / (double)RAND_MAX - 0.5) * 3.464);
    for (size_t k = 0; k < V * D; k++) w[k] = (float)((rand() / (double)RAND_MAX - 0.5) * 3.464 * 3.0 / sqrt((double)D));
    for (size_t i = 0; i < N; i++) labels[i] = (int32_t)((size_t)rand() % V);
    cl_mem hs_half = half_buffer(h, N * D, dtype), ws_half = half_buffer(w, V * D, dtype);
    cl_mem hs = buffer(N * D, h), ws = buffer(V * D, w), dh = buffer(N * D, NULL), dw = buffer(V * D, NULL);
    for (size_t k = 0; k < N * D; k++) h[k] = 0.7f * h[k] + 0.3f * (float)(rand() / (double)RAND_MAX - 0.5);
    for (size_t k = 0; k < V * D; k++) w[k] = 0.8f * w[k];
    cl_mem ht_half = half_buffer(h, N * D, dtype), wt_half = half_buffer(w, V * D, dtype);
    cl_mem ht = buffer(N * D, h), wt = buffer(V * D, w);
    cl_mem tl = NULL;
    if (teacher_logits) {
        tl = buffer(N * V, NULL); /* the caller's precomputed teacher logits */
        gemm(0, 1, N, V, D, 1.0f, ht, D, wt, D, 0.0f, tl, V);
    }
    free(h);
    free(w);

    char devname[256] = "";
    snprintf(devname, sizeof devname, "%s", klcl_context_device_name(ctx));
    printf("device: %s\n", devname);
    printf("shape: N=%zu tokens, D=%zu, V=%zu, loss %s (mean), teacher as %s, hidden states and heads %s\n", N, D,
           V, loss_name, teacher_logits ? "logits" : "hidden states + head", dtype_name);

    double t0 = now();
    st = klcl_fused_warm(ctx);
    if (st != KLCL_OK) {
        fprintf(stderr, "klcl_fused_warm: %s: %s\n", klcl_status_string(st), klcl_last_error(ctx));
        return 3;
    }
    double warm = now() - t0;
    t0 = now();
    st = klcl_fused_warm(ctx);
    double warm2 = now() - t0;
    printf("first use of CLBlast + klcl kernels (klcl_fused_warm): %.2f s; again: %.3f s\n", warm, warm2);

    klcl_fused_batch fb = KLCL_FUSED_BATCH_INIT;
    fb.rows = N;
    fb.student = (klcl_linear){D, V, input(hs, hs_half, dtype), input(ws, ws_half, dtype), {0}};
    if (teacher_logits) fb.teacher_logits = klcl_mem_tensor(tl, 0, 0);
    else fb.teacher = (klcl_linear){D, V, input(ht, ht_half, dtype), input(wt, wt_half, dtype), {0}};
    fb.labels = klcl_host_tensor(labels, 0);
    fb.grad_hidden = klcl_mem_tensor(dh, 0, 0);
    fb.grad_weight = klcl_mem_tensor(dw, 0, 0);
    klcl_fused_options fo = {chunk, 0};
    klcl_fused_info info;
    klcl_result fr;

    /* One fused call first, for the chunk size the other two paths then use. */
    st = klcl_compute_fused(ctx, &desc, &fb, &fo, &fr, &info);
    if (st != KLCL_OK) {
        fprintf(stderr, "klcl_compute_fused: %s: %s\n", klcl_status_string(st), klcl_last_error(ctx));
        return 3;
    }
    const size_t c = info.chunk_rows;
    const size_t fused_bytes = info.device_bytes;
    const size_t logits_sides = teacher_logits ? 1 : 2;
    const size_t gemm_bytes = logits_sides * c * V * sizeof(float);
    cl_mem zs = buffer(c * V, NULL), zt = teacher_logits ? NULL : buffer(c * V, NULL);
    cl_mem zsf = NULL, ztf = NULL;
    size_t unfused_bytes = 0;
    if (!skip_unfused) {
        cl_int err;
        zsf = clCreateBuffer(clctx, CL_MEM_READ_WRITE, N * V * sizeof(float), NULL, &err);
        if (!teacher_logits) ztf = clCreateBuffer(clctx, CL_MEM_READ_WRITE, N * V * sizeof(float), NULL, &err);
        if (!zsf || (!teacher_logits && !ztf)) {
            fprintf(stderr, "unfused path: the full logits (%zu bytes each) do not fit the device; --skip-unfused\n",
                    N * V * sizeof(float));
            return 3;
        }
        unfused_bytes = logits_sides * N * V * sizeof(float);
    }

    /* The three paths in turn within each repetition, so that a change in the machine's load falls on all
     * three alike; the first repetition is a warm-up. */
    double *times = malloc(3 * (size_t)reps * sizeof(double));
    if (!times) die("malloc", 0);
    double *t_gemm_v = times, *t_fused_v = times + reps, *t_unfused_v = times + 2 * reps;
    double unfused_loss = NAN;
    for (int r = -1; r < reps; r++) {
        /* (a) the GEMMs alone, chunk by chunk: forward (student, and teacher when given as hidden states),
         * dH = dZ W, dW += dZ^T H */
        t0 = now();
        for (size_t r0 = 0; r0 < N; r0 += c) {
            size_t n = N - r0 < c ? N - r0 : c;
            gemm_at(0, 1, n, V, D, 1.0f, hs, r0 * D, D, ws, 0, D, 0.0f, zs, 0, V);
            if (!teacher_logits) gemm_at(0, 1, n, V, D, 1.0f, ht, r0 * D, D, wt, 0, D, 0.0f, zt, 0, V);
            gemm_at(0, 0, n, D, V, 1.0f, zs, 0, V, ws, 0, D, 0.0f, dh, r0 * D, D);
            gemm_at(1, 0, V, D, n, 1.0f, zs, 0, V, hs, r0 * D, D, r0 ? 1.0f : 0.0f, dw, 0, D);
        }
        clFinish(queue);
        if (r >= 0) t_gemm_v[r] = now() - t0;

        /* (b) fused */
        t0 = now();
        st = klcl_compute_fused(ctx, &desc, &fb, &fo, &fr, &info);
        if (st != KLCL_OK) {
            fprintf(stderr, "klcl_compute_fused: %s: %s\n", klcl_status_string(st), klcl_last_error(ctx));
            return 3;
        }
        if (r >= 0) t_fused_v[r] = now() - t0;

        /* (c) unfused: full logits, klcl_compute with the gradient in place, then the backward GEMMs */
        if (skip_unfused) continue;
        t0 = now();
        gemm(0, 1, N, V, D, 1.0f, hs, D, ws, D, 0.0f, zsf, V);
        if (!teacher_logits) gemm(0, 1, N, V, D, 1.0f, ht, D, wt, D, 0.0f, ztf, V);
        klcl_batch b = KLCL_BATCH_INIT;
        b.rows = N;
        b.vocab = V;
        b.student = klcl_mem_tensor(zsf, 0, 0);
        b.teacher = klcl_mem_tensor(teacher_logits ? tl : ztf, 0, 0);
        b.labels = klcl_host_tensor(labels, 0);
        b.grad = klcl_mem_tensor(zsf, 0, 0);
        klcl_result ur;
        st = klcl_compute(ctx, &desc, &b, &ur);
        if (st != KLCL_OK) {
            fprintf(stderr, "klcl_compute: %s: %s\n", klcl_status_string(st), klcl_last_error(ctx));
            return 3;
        }
        unfused_loss = ur.loss;
        gemm(0, 0, N, D, V, 1.0f, zsf, V, ws, D, 0.0f, dh, D);
        gemm(1, 0, V, D, N, 1.0f, zsf, V, hs, D, 0.0f, dw, D);
        clFinish(queue);
        if (r >= 0) t_unfused_v[r] = now() - t0;
    }
    const double t_gemm = median(t_gemm_v, reps), t_fused = median(t_fused_v, reps);
    const double t_unfused = skip_unfused ? NAN : median(t_unfused_v, reps);
    cl_mem scratch[] = {zs, zt, zsf, ztf};
    for (size_t i = 0; i < 4; i++)
        if (scratch[i]) clReleaseMemObject(scratch[i]);

    const double gemm_flops = 2.0 * (double)N * (double)V * (double)D * (double)(logits_sides + 2);
    const size_t shared = (2 * N * D + 2 * V * D) * sizeof(float) +
                          (teacher_logits ? N * V * sizeof(float) : (N * D + V * D) * sizeof(float));
    printf("chunk: %zu rows (%zu chunks)\n", c, info.chunks);
    printf("inputs and outputs every path shares (H, W, dH, dW, the teacher's): %.1f MiB\n", shared / 1048576.0);
    printf("\n%-34s %10s %10s %14s\n", "path", "median s", "GFLOP/s", "working MiB");
    printf("%-34s %10.4f %10.1f %14.1f\n", "GEMMs alone (same chunks)", t_gemm, gemm_flops / t_gemm * 1e-9,
           gemm_bytes / 1048576.0);
    printf("%-34s %10.4f %10.1f %14.1f\n", "fused (klcl_compute_fused)", t_fused, gemm_flops / t_fused * 1e-9,
           fused_bytes / 1048576.0);
    if (!skip_unfused)
        printf("%-34s %10.4f %10.1f %14.1f\n", "unfused (full logits)", t_unfused, gemm_flops / t_unfused * 1e-9,
               unfused_bytes / 1048576.0);
    printf("\nfused / GEMMs alone: %.3fx time (target <= 1.15)\n", t_fused / t_gemm);
    if (!skip_unfused) {
        printf("fused / unfused: %.3fx time, %.3fx working memory\n", t_fused / t_unfused,
               (double)fused_bytes / (double)unfused_bytes);
        printf("loss: fused %.9g, unfused %.9g (relative difference %.2g)\n", fr.loss, unfused_loss,
               fabs(fr.loss - unfused_loss) / fmax(1e-30, fabs(unfused_loss)));
    }
    printf("(working memory: logits chunks plus klcl's per-chunk scratch for the fused path, as klcl_fused_info "
           "reports; the logits buffers alone for the other two)\n");

    free(times);
    free(labels);
    cl_mem all[] = {hs, ws, dh, dw, ht, wt, tl, hs_half, ws_half, ht_half, wt_half};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (all[i]) clReleaseMemObject(all[i]);
    klcl_context_destroy(ctx);
    return 0;
}
