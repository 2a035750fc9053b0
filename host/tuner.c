/* klcl_tune: times the row kernels at every power-of-two work-group size the device allows, then vector
 * widths 8 and 16 at the fastest size, and stores the winners in the tuning table (tune.c).
 *
 * Every candidate is a context of its own with its size forced (ctx->wg_forced, set before the build),
 * all sharing one OpenCL queue, so that one set of cl_mem inputs serves them all and no host transfer is
 * timed. Cases: kl forward and kl with gradient at each vocabulary, rows filling a fixed budget of bytes
 * per tensor; one sample repeats the call until it lasts about sample_seconds at the default size.
 * Candidates take turns sample by sample, so drift on a busy machine (other processes, clock changes)
 * spreads over all of them instead of favouring whichever ran in a quiet moment. A candidate over 3x
 * slower than the best on a case's first sample is not sampled again: it cannot win, and on a CPU device
 * the wide groups are several times slower, which would otherwise dominate the run time. */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { MAX_REPS = 101, DEFAULT_REPS = 5, DROP_FACTOR = 3, MAX_CALLS = 100000 };
#define DEFAULT_SAMPLE_SECONDS 0.1
#define DEFAULT_TENSOR_BYTES ((size_t)32 << 20)

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

static klcl_status report_fail(klcl_tune_report *out, klcl_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static klcl_status report_fail(klcl_tune_report *out, klcl_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out->error, sizeof out->error, fmt, ap);
    va_end(ap);
    return st;
}

/* A candidate must compute every loss, with its gradient, as the CPU reference does before it is timed:
 * a size at which some kernel fails or is wrong is never stored. A small batch with a vector tail
 * (V not a multiple of 8), an ignored row and a hard label at the last column. */
static int computes_correctly(klcl_context *ctx)
{
    enum { ROWS = 3, VOCAB = 1003 };
    static float teacher[ROWS * VOCAB], student[ROWS * VOCAB], grad[ROWS * VOCAB];
    static const int32_t labels[ROWS] = {5, VOCAB - 1, -100};
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (size_t k = 0; k < ROWS * VOCAB; k++) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        teacher[k] = (float)((double)(x >> 40) / 16777216.0 * 8.0 - 4.0);
        student[k] = 0.5f * teacher[k] + (float)((double)((x >> 20) & 0xfffff) / 1048576.0 - 0.5);
    }
    int was = ctx->verify, ok = 1;
    ctx->verify = 1;
    for (int l = 0; l < KLCL_LOSS_COUNT && ok; l++) {
        klcl_loss_desc desc;
        klcl_loss_desc_init(&desc, (klcl_loss)l);
        desc.tau = 2.0f;
        klcl_batch b = KLCL_BATCH_INIT;
        b.rows = ROWS;
        b.vocab = VOCAB;
        b.teacher = klcl_host_tensor(teacher, 0);
        b.student = klcl_host_tensor(student, 0);
        b.labels = klcl_host_tensor(labels, 0);
        b.grad = klcl_host_tensor(grad, 0);
        klcl_result r;
        ok = klcl_compute(ctx, &desc, &b, &r) == KLCL_OK && r.verified && r.verify_ok;
    }
    ctx->verify = was;
    return ok;
}

/* Seconds per call over `calls` calls. */
static klcl_status time_calls(klcl_context *ctx, const klcl_loss_desc *desc, const klcl_batch *b, size_t calls,
                              double *sec)
{
    double t0 = now();
    for (size_t i = 0; i < calls; i++) {
        klcl_status st = klcl_compute(ctx, desc, b, NULL);
        if (st != KLCL_OK) return st;
    }
    *sec = (now() - t0) / (double)calls;
    return KLCL_OK;
}

static klcl_status check_options(const klcl_tune_options *o, klcl_tune_report *out)
{
    if (o->vocab_count && !o->vocabs)
        return report_fail(out, KLCL_ERR_NULL_POINTER, "tune->vocabs is NULL but tune->vocab_count is %zu",
                           o->vocab_count);
    if (o->vocabs && !o->vocab_count)
        return report_fail(out, KLCL_ERR_INVALID_VALUE, "tune->vocab_count is 0 but tune->vocabs is given");
    if (o->vocab_count > KLCL_TUNE_MAX_CASES / 2)
        return report_fail(out, KLCL_ERR_INVALID_VALUE, "tune->vocab_count %zu: at most %d vocabularies",
                           o->vocab_count, KLCL_TUNE_MAX_CASES / 2);
    for (size_t i = 0; i < o->vocab_count; i++)
        if (o->vocabs[i] < 1 || o->vocabs[i] > 0x7fffffff)
            return report_fail(out, KLCL_ERR_INVALID_SHAPE, "tune->vocabs[%zu] = %zu: must be in [1, 2^31 - 1]", i,
                               o->vocabs[i]);
    if (o->reps < 0 || o->reps > MAX_REPS)
        return report_fail(out, KLCL_ERR_INVALID_VALUE, "tune->reps %d: must be in [0, %d] (0: %d)", o->reps,
                           MAX_REPS, DEFAULT_REPS);
    if (!isfinite(o->sample_seconds))
        return report_fail(out, KLCL_ERR_NONFINITE_ARG, "tune->sample_seconds is not finite");
    if (o->sample_seconds < 0.0 || o->sample_seconds > 60.0)
        return report_fail(out, KLCL_ERR_INVALID_VALUE, "tune->sample_seconds %g: must be in [0, 60] (0: %g)",
                           o->sample_seconds, DEFAULT_SAMPLE_SECONDS);
    if (o->max_work_group > KLCL_WORK_GROUP_LIMIT)
        return report_fail(out, KLCL_ERR_INVALID_VALUE, "tune->max_work_group %zu: must be at most %d",
                           o->max_work_group, KLCL_WORK_GROUP_LIMIT);
    if (o->size_count && !o->sizes)
        return report_fail(out, KLCL_ERR_NULL_POINTER, "tune->sizes is NULL but tune->size_count is %zu",
                           o->size_count);
    if (o->sizes && !o->size_count)
        return report_fail(out, KLCL_ERR_INVALID_VALUE, "tune->size_count is 0 but tune->sizes is given");
    for (size_t i = 0; i < o->size_count; i++)
        if (o->sizes[i] < 1 || o->sizes[i] > KLCL_WORK_GROUP_LIMIT || (o->sizes[i] & (o->sizes[i] - 1)))
            return report_fail(out, KLCL_ERR_INVALID_VALUE,
                               "tune->sizes[%zu] = %zu: must be a power of two from 1 to %d", i, o->sizes[i],
                               KLCL_WORK_GROUP_LIMIT);
    if (o->rows > 0x7fffffff)
        return report_fail(out, KLCL_ERR_INVALID_SHAPE, "tune->rows %zu: must be below 2^31", o->rows);
    return KLCL_OK;
}

/* What measure() times: kl forward and kl with gradient at each vocabulary, rows filling tensor_bytes per
 * tensor (or `rows`). */
typedef struct measure_setup {
    const size_t *vocabs;
    size_t nv, rows, tensor_bytes;
    int reps;
    double sample_seconds;
} measure_setup;

/* Times candidates cand[0..nc) on every case of m into cases[0..*case_count) (di: the built-in default,
 * which sets the calls per sample) and gives each candidate the geometric mean of its case times in
 * score[] (every case weighs alike, whatever its absolute time). */
static klcl_status measure(klcl_context *base, klcl_context *const *cand, size_t nc, size_t di, const measure_setup *m,
                           klcl_tune_case *cases, size_t *case_count, double *score, klcl_tune_report *out)
{
    klcl_status st = KLCL_OK;
    cl_int err;
    cl_mem teacher = NULL, student = NULL, grad = NULL;
    float *host = NULL;
    const int reps = m->reps;
    *case_count = 0;
    static const struct {
        const char *name;
        int with_grad;
    } ops[] = {{"kl", 0}, {"kl+grad", 1}};
    klcl_loss_desc desc;
    klcl_loss_desc_init(&desc, KLCL_LOSS_KL);
    for (size_t iv = 0; iv < m->nv; iv++) {
        const size_t vocab = m->vocabs[iv];
        size_t rows = m->rows ? m->rows : m->tensor_bytes / (vocab * sizeof(float));
        if (rows < 1) rows = 1;
        const size_t n = rows * vocab;
        free(host);
        if (!(host = malloc(2 * n * sizeof(float)))) {
            st = report_fail(out, KLCL_ERR_OUT_OF_HOST_MEMORY, "%zu x %zu logits: out of host memory", rows, vocab);
            goto done;
        }
        /* Logits uniform in [-6, 6), as klcl-bench draws them. */
        uint64_t x = 0x2545F4914F6CDD1Dull;
        for (size_t k = 0; k < 2 * n; k++) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            host[k] = (float)((double)(x >> 40) / 16777216.0 * 12.0 - 6.0);
        }
        if (teacher) clReleaseMemObject(teacher);
        if (student) clReleaseMemObject(student);
        if (grad) clReleaseMemObject(grad);
        const cl_mem_flags in = CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR;
        teacher = clCreateBuffer(base->cl_ctx, in, n * sizeof(float), host, &err);
        student = teacher ? clCreateBuffer(base->cl_ctx, in, n * sizeof(float), host + n, &err) : NULL;
        grad = student ? clCreateBuffer(base->cl_ctx, CL_MEM_READ_WRITE, n * sizeof(float), NULL, &err) : NULL;
        if (!grad) {
            st = report_fail(out, (klcl_status)err, "clCreateBuffer for %zu x %zu logits failed (%d): lower the rows",
                             rows, vocab, err);
            goto done;
        }
        for (int op = 0; op < 2; op++) {
            klcl_tune_case *tc = &cases[(*case_count)++];
            snprintf(tc->op, sizeof tc->op, "%s", ops[op].name);
            tc->rows = rows;
            tc->vocab = vocab;
            klcl_batch b = KLCL_BATCH_INIT;
            b.rows = rows;
            b.vocab = vocab;
            b.teacher = klcl_mem_tensor(teacher, 0, 0);
            b.student = klcl_mem_tensor(student, 0, 0);
            if (ops[op].with_grad) b.grad = klcl_mem_tensor(grad, 0, 0);

            /* One untimed call each (first launches, scratch), then the calls per sample from the default. */
            double first[KLCL_TUNE_MAX_CANDIDATES], t[KLCL_TUNE_MAX_CANDIDATES][MAX_REPS], one = 0.0;
            for (size_t c = 0; c < nc && st == KLCL_OK; c++) st = time_calls(cand[c], &desc, &b, 1, &one);
            if (st == KLCL_OK) st = time_calls(cand[di], &desc, &b, 1, &one);
            if (st != KLCL_OK) goto compute_failed;
            double want = ceil(m->sample_seconds / (one > 1e-9 ? one : 1e-9));
            tc->calls = want < 1.0 ? 1 : want > MAX_CALLS ? MAX_CALLS : (size_t)want;

            double best_first = INFINITY;
            for (size_t c = 0; c < nc; c++) {
                if ((st = time_calls(cand[c], &desc, &b, tc->calls, &first[c])) != KLCL_OK) goto compute_failed;
                if (first[c] < best_first) best_first = first[c];
            }
            for (int r = 0; r < reps; r++)
                for (size_t c = 0; c < nc; c++)
                    if (first[c] <= DROP_FACTOR * best_first &&
                        (st = time_calls(cand[c], &desc, &b, tc->calls, &t[c][r])) != KLCL_OK)
                        goto compute_failed;
            for (size_t c = 0; c < nc; c++) {
                int kept = first[c] <= DROP_FACTOR * best_first;
                tc->seconds[c] = kept ? median(t[c], reps) : first[c];
                tc->samples[c] = kept ? reps : 1;
            }
            continue;
        compute_failed:
            report_fail(out, st, "timing %s at V = %zu: %s", ops[op].name, vocab, klcl_last_error(base));
            for (size_t c = 0; c < nc; c++)
                if (klcl_last_error(cand[c])[0]) {
                    report_fail(out, st, "timing %s at V = %zu, work-group size %zu, vector width %d: %s",
                                ops[op].name, vocab, cand[c]->wg, cand[c]->vw, klcl_last_error(cand[c]));
                    break;
                }
            goto done;
        }
    }

    for (size_t c = 0; c < nc; c++) {
        double logs = 0.0;
        for (size_t k = 0; k < *case_count; k++) logs += log(cases[k].seconds[c]);
        score[c] = exp(logs / (double)*case_count);
    }
done:
    if (teacher) clReleaseMemObject(teacher);
    if (student) clReleaseMemObject(student);
    if (grad) clReleaseMemObject(grad);
    free(host);
    return st;
}

klcl_status klcl_tune(const klcl_context_options *ctx_opts, const klcl_tune_options *tune, klcl_tune_report *out)
{
    if (!out) return KLCL_ERR_NULL_POINTER;
    memset(out, 0, sizeof *out);
    klcl_tune_options o = KLCL_TUNE_OPTIONS_INIT;
    if (tune) o = *tune;
    klcl_status st = check_options(&o, out);
    if (st != KLCL_OK) return st;
    static const size_t default_vocabs[] = {32768, 131072};
    const size_t *vocabs = o.vocabs ? o.vocabs : default_vocabs;
    const size_t nv = o.vocabs ? o.vocab_count : 2;
    const int reps = o.reps ? o.reps : DEFAULT_REPS;
    const double sample_seconds = o.sample_seconds > 0.0 ? o.sample_seconds : DEFAULT_SAMPLE_SECONDS;
    const size_t tensor_bytes = o.max_tensor_bytes ? o.max_tensor_bytes : DEFAULT_TENSOR_BYTES;

    klcl_context *base = NULL, *cand[KLCL_TUNE_MAX_CANDIDATES] = {NULL}, *vcand[2] = {NULL, NULL};
    st = klcl_context_create(ctx_opts, &base);
    if (st != KLCL_OK) {
        const char *spec = ctx_opts && ctx_opts->device ? ctx_opts->device : getenv("KLCL_DEVICE");
        report_fail(out, st, "cannot open the device%s%s%s (%s)", spec ? " '" : "", spec ? spec : "", spec ? "'" : "",
                    ctx_opts && ctx_opts->device ? "options->device" : spec ? "KLCL_DEVICE" : "the default");
        goto done;
    }
    snprintf(out->device, sizeof out->device, "%s", base->device_name);
    klcl_tune_table_path(out->table_path, sizeof out->table_path);
    if (base->is_reference) {
        st = report_fail(out, KLCL_ERR_UNSUPPORTED, "the CPU reference has no work-group size to tune");
        goto done;
    }

    /* Candidates: 1, 2, 4, ... until the device refuses or the clamps (device, kernel, local memory) turn a
     * size into a smaller one already timed. */
    size_t dev_max = 0;
    cl_int err = clGetDeviceInfo(base->device, CL_DEVICE_MAX_WORK_GROUP_SIZE, sizeof dev_max, &dev_max, NULL);
    if (err != CL_SUCCESS) {
        st = report_fail(out, (klcl_status)err, "clGetDeviceInfo(CL_DEVICE_MAX_WORK_GROUP_SIZE) failed (%d)", err);
        goto done;
    }
    size_t limit = o.max_work_group ? o.max_work_group : KLCL_WORK_GROUP_LIMIT;
    if (limit > dev_max) limit = dev_max;
    klcl_context_options shared = KLCL_CONTEXT_OPTIONS_INIT;
    shared.queue = base->queue;
    size_t nc = 0;
    for (size_t w = 1; w <= limit && nc < KLCL_TUNE_MAX_CANDIDATES; w *= 2) {
        int listed = !o.sizes;
        for (size_t i = 0; i < o.size_count; i++) listed |= o.sizes[i] == w;
        if (!listed) continue;
        klcl_context *c = NULL;
        st = klcl_context_create(&shared, &c);
        if (st == KLCL_OK) {
            c->wg_forced = w;
            st = klcl_context_prepare(c);
        }
        if (st != KLCL_OK) {
            report_fail(out, st, "work-group size %zu: %s", w, c ? klcl_last_error(c) : klcl_status_string(st));
            klcl_context_destroy(c);
            goto done;
        }
        if (c->wg != w) {
            klcl_context_destroy(c);
            break;
        }
        if (!computes_correctly(c)) {
            out->rejected[out->rejected_count++] = w;
            klcl_context_destroy(c);
            continue;
        }
        cand[nc] = c;
        out->candidates[nc++] = w;
    }
    out->candidate_count = nc;
    if (nc == 0) {
        st = report_fail(out, KLCL_ERR_UNSUPPORTED, "no work-group size computes the losses correctly on this device");
        goto done;
    }
    size_t di = 0; /* the candidate the built-in default becomes after clamping */
    for (size_t c = 0; c < nc; c++)
        if (out->candidates[c] <= cand[0]->wg_default) di = c;
    out->default_work_group = out->candidates[di];

    const measure_setup m = {vocabs, nv, o.rows, tensor_bytes, reps, sample_seconds};
    if ((st = measure(base, cand, nc, di, &m, out->cases, &out->case_count, out->score, out)) != KLCL_OK) goto done;
    size_t best = 0;
    for (size_t c = 0; c < nc; c++)
        if (out->score[c] < out->score[best]) best = c;
    out->best_work_group = out->candidates[best];
    out->best_score = out->score[best];
    out->default_score = out->score[di];

    /* Vector widths 8 and 16 at the fastest work-group size, on the same cases. */
    static const int widths[2] = {8, 16};
    size_t nvc = 0, vdi = 0;
    for (size_t i = 0; i < 2; i++) {
        klcl_context *c = NULL;
        st = klcl_context_create(&shared, &c);
        if (st == KLCL_OK) {
            c->wg_forced = out->best_work_group;
            c->vw_forced = widths[i];
            st = klcl_context_prepare(c);
        }
        if (st != KLCL_OK) {
            report_fail(out, st, "vector width %d: %s", widths[i], c ? klcl_last_error(c) : klcl_status_string(st));
            klcl_context_destroy(c);
            goto done;
        }
        if (!computes_correctly(c)) {
            out->rejected_vector_widths[out->rejected_vector_width_count++] = widths[i];
            klcl_context_destroy(c);
            continue;
        }
        if (widths[i] == c->vw_default) vdi = nvc;
        out->vector_widths[nvc] = widths[i];
        vcand[nvc++] = c;
    }
    out->vector_width_count = nvc;
    if (nvc == 0) {
        st = report_fail(out, KLCL_ERR_UNSUPPORTED, "no vector width computes the losses correctly on this device");
        goto done;
    }
    klcl_tune_case vcases[KLCL_TUNE_MAX_CASES];
    size_t nvcases = 0;
    if ((st = measure(base, vcand, nvc, vdi, &m, vcases, &nvcases, out->vector_width_score, out)) != KLCL_OK)
        goto done;
    size_t vbest = 0;
    for (size_t c = 0; c < nvc; c++)
        if (out->vector_width_score[c] < out->vector_width_score[vbest]) vbest = c;
    out->best_vector_width = out->vector_widths[vbest];
    out->default_vector_width = out->vector_widths[vdi];

    if (!o.dry_run) {
        char wg[32], vw[32], best_ms[32], default_ms[32], date[32];
        snprintf(wg, sizeof wg, "%zu", out->best_work_group);
        snprintf(vw, sizeof vw, "%d", out->best_vector_width);
        snprintf(best_ms, sizeof best_ms, "%.4f", 1e3 * out->best_score);
        snprintf(default_ms, sizeof default_ms, "%.4f", 1e3 * out->default_score);
        time_t secs = time(NULL);
        struct tm utc;
        if (!gmtime_r(&secs, &utc) || !strftime(date, sizeof date, "%Y-%m-%d", &utc)) date[0] = '\0';
        const char *names[] = {"work_group", "vector_width", "best_ms", "default_ms", "date"};
        const char *values[] = {wg, vw, best_ms, default_ms, date};
        st = klcl_tune_table_store(base, names, values, 5);
        if (st != KLCL_OK) {
            report_fail(out, st, "%s", klcl_last_error(base));
            goto done;
        }
        out->written = 1;
    }
done:
    for (size_t c = 0; c < KLCL_TUNE_MAX_CANDIDATES; c++) klcl_context_destroy(cand[c]);
    for (size_t c = 0; c < 2; c++) klcl_context_destroy(vcand[c]);
    klcl_context_destroy(base);
    return st;
}
