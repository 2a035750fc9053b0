/* klcl_tune: times the row kernels at every power-of-two work-group size the device allows, then vector
 * widths 8 and 16 at the fastest size, then split columns (the fewest columns per part of a row split
 * across work-groups) at that size and width, and stores the winners in the tuning table (tune.c).
 *
 * Every candidate is a context of its own with its setting forced (ctx->wg_forced, vw_forced,
 * split_forced, set before the build), all sharing one OpenCL queue, so that one set of cl_mem inputs
 * serves them all and no host transfer is timed. Cases: kl forward and kl with gradient at each
 * vocabulary, rows filling a fixed budget of bytes per tensor (the split phase: one row, the shape a split
 * is for); one sample repeats the call until it lasts about sample_seconds at the default. Candidates
 * take turns sample by sample, so drift on a busy machine (other processes, clock changes) spreads over
 * all of them instead of favouring whichever ran in a quiet moment. A candidate over 3x slower than the
 * best on a case's first sample is not sampled again: it cannot win, and on a CPU device the wide groups
 * are several times slower, which would otherwise dominate the run time. Split candidates that cut the
 * cases' rows alike run the same launches and differ by noise only, so the built-in split columns are
 * kept unless another candidate is clearly faster (SPLIT_MIN_GAIN). */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { MAX_REPS = 101, DEFAULT_REPS = 5, DROP_FACTOR = 3, MAX_CALLS = 100000 };
/* The check's forced split: parts per row, well below the 62 whole 16-wide vectors of its rows of 1003
 * columns (the parts of a row are cut to its vectors). */
enum { CHECK_PARTS = 3 };
#define DEFAULT_SAMPLE_SECONDS 0.1
/* How much lower than the built-in's a split candidate's score must be to be stored instead (3%). */
#define SPLIT_MIN_GAIN 0.03
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
static void progress(const klcl_tune_options *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* One line to o->progress, when there is one. */
static void progress(const klcl_tune_options *o, const char *fmt, ...)
{
    if (!o->progress) return;
    char line[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    o->progress(o->progress_user, line);
}

static klcl_status report_fail(klcl_tune_report *out, klcl_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out->error, sizeof out->error, fmt, ap);
    va_end(ap);
    return st;
}

/* A candidate must compute every loss, with its gradient, as the CPU reference does before it is timed:
 * a setting at which some kernel fails or is wrong is never stored. A small batch with a vector tail
 * (V not a multiple of 8), an ignored row and a hard label at the last column. Every loss runs twice: as
 * the candidate reduces the batch, then with each row cut into CHECK_PARTS parts (as KLCL_ROW_SPLIT does),
 * so that the split and merge kernels are checked at every candidate whether or not it would split rows
 * this short itself. ctx is prepared (its kernels built). */
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
    const size_t split_was = ctx->split_env;
    ctx->verify = 1;
    for (int split = 0; split < 2 && ok; split++) {
        ctx->split_env = split ? CHECK_PARTS : split_was;
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
    }
    ctx->verify = was;
    ctx->split_env = split_was;
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

/* A list of vocabularies (tune->vocabs, tune->split_vocabs; `name` and `count_name` name its fields): two
 * cases each, at most KLCL_TUNE_MAX_CASES in all. */
static klcl_status check_vocabs(const size_t *v, size_t n, const char *name, const char *count_name,
                                klcl_tune_report *out)
{
    if (n && !v)
        return report_fail(out, KLCL_ERR_NULL_POINTER, "tune->%s is NULL but tune->%s is %zu", name, count_name, n);
    if (v && !n)
        return report_fail(out, KLCL_ERR_INVALID_VALUE, "tune->%s is 0 but tune->%s is given", count_name, name);
    if (n > KLCL_TUNE_MAX_CASES / 2)
        return report_fail(out, KLCL_ERR_INVALID_VALUE, "tune->%s %zu: at most %d vocabularies", count_name, n,
                           KLCL_TUNE_MAX_CASES / 2);
    for (size_t i = 0; i < n; i++)
        if (v[i] < 1 || v[i] > 0x7fffffff)
            return report_fail(out, KLCL_ERR_INVALID_SHAPE, "tune->%s[%zu] = %zu: must be in [1, 2^31 - 1]", name, i,
                               v[i]);
    return KLCL_OK;
}

static klcl_status check_options(const klcl_tune_options *o, klcl_tune_report *out)
{
    klcl_status st = check_vocabs(o->vocabs, o->vocab_count, "vocabs", "vocab_count", out);
    if (st == KLCL_OK)
        st = check_vocabs(o->split_vocabs, o->split_vocab_count, "split_vocabs", "split_vocab_count", out);
    if (st != KLCL_OK) return st;
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
    if (o->vector_width != 0 && o->vector_width != 8 && o->vector_width != 16)
        return report_fail(out, KLCL_ERR_INVALID_VALUE, "tune->vector_width %d: must be 8, 16 or 0 (the context's)",
                           o->vector_width);
    if (o->check_only != 0 && o->check_only != 1)
        return report_fail(out, KLCL_ERR_INVALID_VALUE, "tune->check_only %d: must be 0 or 1", o->check_only);
    return KLCL_OK;
}

/* What measure() times: kl forward and kl with gradient at each vocabulary, rows filling tensor_bytes per
 * tensor (or `rows`). */
typedef struct measure_setup {
    const char *what; /* the phase, for progress lines: "work-group sizes", ... */
    const size_t *vocabs;
    size_t nv, rows, tensor_bytes;
    int reps;
    double sample_seconds;
    const klcl_tune_options *o; /* its progress callback */
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
            progress(m->o, "timing %s (%zu candidate%s): %s at %zu x %zu, case %zu of %zu", m->what, nc, nc == 1 ? "" : "s",
                     ops[op].name, rows, vocab, *case_count + 1, 2 * m->nv);
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
                    report_fail(out, st, "timing %s at V = %zu, work-group size %zu, vector width %d, split columns "
                                "%zu: %s", ops[op].name, vocab, cand[c]->wg, cand[c]->vw, cand[c]->split_columns,
                                klcl_last_error(cand[c]));
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

/* A candidate: a context on the tuner's queue with the settings given forced (0: not forced) and its
 * kernels built. On failure *c is NULL and out->error names the candidate (`what`). */
static klcl_status forced_context(const klcl_context_options *shared, size_t wg, int vw, size_t split,
                                  const char *what, klcl_context **c, klcl_tune_report *out)
{
    klcl_status st = klcl_context_create(shared, c);
    if (st == KLCL_OK) {
        (*c)->wg_forced = wg;
        (*c)->vw_forced = vw;
        (*c)->split_forced = split;
        st = klcl_context_prepare(*c);
    }
    if (st != KLCL_OK) {
        report_fail(out, st, "%s: %s", what, *c ? klcl_last_error(*c) : klcl_status_string(st));
        klcl_context_destroy(*c);
        *c = NULL;
    }
    return st;
}

/* The split columns timed: the built-in / 16, / 8, / 4, / 2, x 1, x 2, x 4, each kept to
 * [KLCL_SPLIT_COLUMNS_MIN, KLCL_SPLIT_COLUMNS_MAX], ascending and without repeats. Returns the count. */
static size_t split_candidates(size_t builtin, size_t *out)
{
    static const int shifts[] = {-4, -3, -2, -1, 0, 1, 2};
    size_t n = 0;
    for (size_t i = 0; i < sizeof shifts / sizeof shifts[0]; i++) {
        size_t v = shifts[i] < 0 ? builtin >> -shifts[i] : builtin << shifts[i];
        if (v < KLCL_SPLIT_COLUMNS_MIN) v = KLCL_SPLIT_COLUMNS_MIN;
        if (v > KLCL_SPLIT_COLUMNS_MAX) v = KLCL_SPLIT_COLUMNS_MAX;
        if (n == 0 || out[n - 1] != v) out[n++] = v;
    }
    return n;
}

klcl_status klcl_tune(const klcl_context_options *ctx_opts, const klcl_tune_options *tune, klcl_tune_report *out)
{
    if (!out) return KLCL_ERR_NULL_POINTER;
    memset(out, 0, sizeof *out);
    klcl_tune_options o = KLCL_TUNE_OPTIONS_INIT;
    if (tune) o = *tune;
    klcl_status st = check_options(&o, out);
    if (st != KLCL_OK) return st;
    static const size_t default_vocabs[] = {32768, 131072}, default_split_vocabs[] = {65536, 262144, 1048576};
    const size_t *vocabs = o.vocabs ? o.vocabs : default_vocabs;
    const size_t nv = o.vocabs ? o.vocab_count : 2;
    const size_t *split_vocabs = o.split_vocabs ? o.split_vocabs : default_split_vocabs;
    const size_t nsv = o.split_vocabs ? o.split_vocab_count : 3;
    const int reps = o.reps ? o.reps : DEFAULT_REPS;
    const double sample_seconds = o.sample_seconds > 0.0 ? o.sample_seconds : DEFAULT_SAMPLE_SECONDS;
    const size_t tensor_bytes = o.max_tensor_bytes ? o.max_tensor_bytes : DEFAULT_TENSOR_BYTES;

    klcl_context *base = NULL, *cand[KLCL_TUNE_MAX_CANDIDATES] = {NULL}, *vcand[2] = {NULL, NULL};
    klcl_context *scand[KLCL_TUNE_MAX_SPLITS] = {NULL};
    char what[64];
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
    /* Every size at one width, forced, so that a precheck in another process checks the same pair. */
    const int width = o.vector_width ? o.vector_width : klcl_vector_width_choice(base);
    out->work_group_vector_width = width;
    size_t nc = 0;
    for (size_t w = 1; w <= limit && nc < KLCL_TUNE_MAX_CANDIDATES; w *= 2) {
        int listed = !o.sizes;
        for (size_t i = 0; i < o.size_count; i++) listed |= o.sizes[i] == w;
        if (!listed) continue;
        if (o.precheck && !o.precheck(o.precheck_user, w, width)) {
            out->rejected[out->rejected_count++] = w;
            continue;
        }
        klcl_context *c = NULL;
        progress(&o, "checking work-group size %zu at vector width %d", w, width);
        snprintf(what, sizeof what, "work-group size %zu", w);
        if ((st = forced_context(&shared, w, width, 0, what, &c, out)) != KLCL_OK) goto done;
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
    if (o.check_only) goto done;
    size_t di = 0; /* the candidate the built-in default becomes after clamping */
    for (size_t c = 0; c < nc; c++)
        if (out->candidates[c] <= cand[0]->wg_default) di = c;
    out->default_work_group = out->candidates[di];

    const measure_setup m = {"work-group sizes", vocabs, nv, o.rows, tensor_bytes, reps, sample_seconds, &o};
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
        if (o.precheck && !o.precheck(o.precheck_user, out->best_work_group, widths[i])) {
            out->rejected_vector_widths[out->rejected_vector_width_count++] = widths[i];
            continue;
        }
        klcl_context *c = NULL;
        progress(&o, "checking vector width %d at work-group size %zu", widths[i], out->best_work_group);
        snprintf(what, sizeof what, "vector width %d", widths[i]);
        if ((st = forced_context(&shared, out->best_work_group, widths[i], 0, what, &c, out)) != KLCL_OK) goto done;
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
    const measure_setup vm = {"vector widths", vocabs, nv, o.rows, tensor_bytes, reps, sample_seconds, &o};
    if ((st = measure(base, vcand, nvc, vdi, &vm, vcases, &nvcases, out->vector_width_score, out)) != KLCL_OK)
        goto done;
    size_t vbest = 0;
    for (size_t c = 0; c < nvc; c++)
        if (out->vector_width_score[c] < out->vector_width_score[vbest]) vbest = c;
    out->best_vector_width = out->vector_widths[vbest];
    out->default_vector_width = out->vector_widths[vdi];

    /* Split columns at the fastest size and width, on one row at each split vocabulary: the shape whose
     * rows are split (a row is split only when rows are too few to fill the device). */
    size_t columns[KLCL_TUNE_MAX_SPLITS];
    const size_t ncolumns = split_candidates(vcand[vbest]->split_default, columns);
    size_t nsc = 0, sdi = 0;
    out->default_split_columns = vcand[vbest]->split_default;
    for (size_t i = 0; i < ncolumns; i++) {
        klcl_context *c = NULL;
        snprintf(what, sizeof what, "split columns %zu", columns[i]);
        st = forced_context(&shared, out->best_work_group, out->best_vector_width, columns[i], what, &c, out);
        if (st != KLCL_OK) goto done;
        /* No check of its own: the split columns only choose how many parts a row is cut into, and these
         * kernels, at this size and width, passed the check with rows forced into parts. */
        if (columns[i] == out->default_split_columns) sdi = nsc;
        out->split_columns[nsc] = columns[i];
        scand[nsc++] = c;
    }
    out->split_count = nsc;
    const measure_setup sm = {"split columns", split_vocabs, nsv, 1, tensor_bytes, reps, sample_seconds, &o};
    if ((st = measure(base, scand, nsc, sdi, &sm, out->split_cases, &out->split_case_count, out->split_score, out)) !=
        KLCL_OK)
        goto done;
    /* The fastest only when it beats the built-in by SPLIT_MIN_GAIN (the top of this file says why). */
    size_t sbest = 0;
    for (size_t c = 0; c < nsc; c++)
        if (out->split_score[c] < out->split_score[sbest]) sbest = c;
    if (out->split_score[sbest] > (1.0 - SPLIT_MIN_GAIN) * out->split_score[sdi]) sbest = sdi;
    out->best_split_columns = out->split_columns[sbest];

    if (!o.dry_run) {
        char wg[32], vw[32], split[32], best_ms[32], default_ms[32], date[32];
        snprintf(wg, sizeof wg, "%zu", out->best_work_group);
        snprintf(vw, sizeof vw, "%d", out->best_vector_width);
        snprintf(split, sizeof split, "%zu", out->best_split_columns);
        snprintf(best_ms, sizeof best_ms, "%.4f", 1e3 * out->best_score);
        snprintf(default_ms, sizeof default_ms, "%.4f", 1e3 * out->default_score);
        time_t secs = time(NULL);
        struct tm utc;
        if (!gmtime_r(&secs, &utc) || !strftime(date, sizeof date, "%Y-%m-%d", &utc)) date[0] = '\0';
        const char *names[] = {"work_group", "vector_width", "split_columns", "best_ms", "default_ms", "date"};
        const char *values[] = {wg, vw, split, best_ms, default_ms, date};
        st = klcl_tune_table_store(base, names, values, sizeof names / sizeof names[0]);
        if (st != KLCL_OK) {
            report_fail(out, st, "%s", klcl_last_error(base));
            goto done;
        }
        out->written = 1;
    }
done:
    for (size_t c = 0; c < KLCL_TUNE_MAX_CANDIDATES; c++) klcl_context_destroy(cand[c]);
    for (size_t c = 0; c < 2; c++) klcl_context_destroy(vcand[c]);
    for (size_t c = 0; c < KLCL_TUNE_MAX_SPLITS; c++) klcl_context_destroy(scand[c]);
    klcl_context_destroy(base);
    return st;
}
