/* The summaries of `klcl eval`: percentiles and histograms of the per-row values, then the text report
 * (for people) and the JSON report (for programs; schema in `klcl eval --help` and README.md). */
#include "tool.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

const double percentile_points[PERCENTILES] = {0.0, 5.0, 50.0, 95.0, 100.0};

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

void summarize_values(float *values, size_t n, loss_report *out)
{
    memset(out->hist, 0, sizeof out->hist);
    out->finite = n;
    if (n == 0) {
        for (int i = 0; i < PERCENTILES; i++) out->percentiles[i] = NAN;
        out->hist_lo = out->hist_hi = NAN;
        return;
    }
    qsort(values, n, sizeof *values, cmp_float);
    for (int i = 0; i < PERCENTILES; i++) {
        double pos = percentile_points[i] / 100.0 * (double)(n - 1);
        size_t lo = (size_t)pos;
        double frac = pos - (double)lo;
        double v = values[lo];
        if (lo + 1 < n && frac > 0.0) v += ((double)values[lo + 1] - v) * frac;
        out->percentiles[i] = v;
    }
    out->hist_lo = values[0];
    out->hist_hi = values[n - 1];
    double width = out->hist_hi - out->hist_lo;
    for (size_t i = 0; i < n; i++) {
        /* All values in the first bin when they are all equal; the maximum belongs to the last bin. */
        size_t bin = width > 0.0 ? (size_t)(((double)values[i] - out->hist_lo) / width * HIST_BINS) : 0;
        out->hist[bin < HIST_BINS ? bin : HIST_BINS - 1]++;
    }
}

/* ---------------------------------------------------------------------------------------------------- */
/* Text                                                                                                     */

/* A number as people read it: "nan" for any NaN (printf may say "-nan"), "inf", "-inf". */
static const char *num(char *buf, size_t len, const char *fmt, double x)
{
    if (isnan(x))
        snprintf(buf, len, "nan");
    else if (isinf(x))
        snprintf(buf, len, x > 0 ? "inf" : "-inf");
    else
        snprintf(buf, len, fmt, x);
    return buf;
}

static int has_loss(const eval_report *r, klcl_loss l)
{
    return (r->losses_present >> l) & 1u;
}

static void text_options(FILE *f, const eval_report *r)
{
    const klcl_loss_desc *d = &r->desc;
    fprintf(f, "  options   tau %g, reduction %s", (double)d->tau, klcl_reduction_name(r->reduction));
    if (d->softcap > 0.0f) fprintf(f, ", softcap %g", (double)d->softcap);
    if (d->scale != 1.0f) fprintf(f, ", scale %g", (double)d->scale);
    if (has_loss(r, KLCL_LOSS_JSD)) fprintf(f, ", beta %g", (double)d->beta);
    if (has_loss(r, KLCL_LOSS_SKL) || has_loss(r, KLCL_LOSS_SRKL)) fprintf(f, ", lambda %g", (double)d->lambda);
    if (has_loss(r, KLCL_LOSS_KD)) fprintf(f, ", alpha %g", (double)d->alpha);
    if (has_loss(r, KLCL_LOSS_CE) && d->label_smoothing > 0.0f)
        fprintf(f, ", label smoothing %g", (double)d->label_smoothing);
    if (has_loss(r, KLCL_LOSS_CE) && d->z_loss > 0.0f) fprintf(f, ", z-loss %g", (double)d->z_loss);
    if (r->labels || r->sample) fprintf(f, ", ignore index %d", (int)d->ignore_index);
    if (r->teacher_logprobs) fprintf(f, ", teacher log-probabilities");
    fprintf(f, "\n");
}

static void text_histograms(FILE *f, const eval_report *r)
{
    enum { BAR = 40 };
    char lo[32], hi[32];
    fprintf(f, "\nper-row values (finite rows; %d bins from the smallest to the largest)\n", HIST_BINS);
    for (size_t l = 0; l < r->loss_count; l++) {
        const loss_report *L = &r->loss[l];
        fprintf(f, "  %s\n", klcl_loss_name(L->loss));
        if (L->finite == 0) {
            fprintf(f, "    (no finite values)\n");
            continue;
        }
        size_t peak = 0;
        for (int b = 0; b < HIST_BINS; b++)
            if (L->hist[b] > peak) peak = L->hist[b];
        int bins = L->hist_hi > L->hist_lo ? HIST_BINS : 1; /* one value: one bin says it all */
        double width = (L->hist_hi - L->hist_lo) / HIST_BINS;
        for (int b = 0; b < bins; b++) {
            double a = L->hist_lo + width * b, z = b == HIST_BINS - 1 ? L->hist_hi : L->hist_lo + width * (b + 1);
            if (bins == 1) z = L->hist_hi;
            size_t len = peak ? (L->hist[b] * BAR + peak - 1) / peak : 0;
            char bar[BAR + 1];
            memset(bar, '#', len);
            bar[len] = '\0';
            char range[80];
            snprintf(range, sizeof range, "[%s, %s%c", num(lo, sizeof lo, "%.5g", a), num(hi, sizeof hi, "%.5g", z),
                     b == bins - 1 ? ']' : ')');
            fprintf(f, "    %-26s %6zu %s\n", range, L->hist[b], bar);
        }
    }
}

void report_text(FILE *f, const eval_report *r)
{
    char b[5][32];
    fprintf(f, "klcl %s eval on %s%s\n", klcl_version_string(), r->device,
            r->is_reference ? "" : " (OpenCL)");
    if (r->sample)
        fprintf(f, "  data      built-in sample: Zipf-like synthetic logits with labels, 1 row in %d padding\n",
                SAMPLE_PAD_EVERY);
    if (r->teacher_dtype)
        fprintf(f, "  teacher   %s %s%s%s\n", r->teacher_dtype, r->teacher_shape, r->teacher ? "  " : "",
                r->teacher ? r->teacher : "");
    fprintf(f, "  student   %s %s%s%s\n", r->student_dtype, r->student_shape, r->student ? "  " : "",
            r->student ? r->student : "");
    if (r->labels_dtype)
        fprintf(f, "  labels    %s %s%s%s\n", r->labels_dtype, r->labels_shape, r->labels ? "  " : "",
                r->labels ? r->labels : "");
    fprintf(f, "  rows      %zu x vocabulary %zu", r->rows, r->vocab);
    if (r->teacher_vocab && r->teacher_vocab != r->vocab)
        fprintf(f, " (student; teacher %zu, --vocab-policy %s)", r->teacher_vocab,
                r->vocab_policy ? r->vocab_policy : "?");
    fprintf(f, ", in %zu chunk%s of up to %zu rows\n", r->chunks, r->chunks == 1 ? "" : "s", r->chunk_rows);
    text_options(f, r);
    double secs = r->seconds > 0.0 ? r->seconds : 1e-9;
    fprintf(f, "  time      %.3f s (+ %.3f s device setup): %.0f rows/s, %.3f GB/s of logits%s\n", r->seconds,
            r->setup_seconds, (double)r->rows / secs, r->input_bytes / secs / 1e9,
            r->sample ? " (generating the sample included)" : "");

    fprintf(f, "\n%-8s %15s %9s %8s %10s %10s %10s %10s %10s %10s\n", "loss", "value", "rows used", "skipped",
            "non-finite", "p0", "p5", "p50", "p95", "p100");
    for (size_t l = 0; l < r->loss_count; l++) {
        const loss_report *L = &r->loss[l];
        char v[32];
        fprintf(f, "%-8s %15s %9zu %8zu %10zu", klcl_loss_name(L->loss), num(v, sizeof v, "%.9g", L->value),
                L->rows_used, L->rows_skipped, L->nonfinite);
        for (int i = 0; i < PERCENTILES; i++) fprintf(f, " %10s", num(b[i], sizeof b[i], "%.5g", L->percentiles[i]));
        fprintf(f, "\n");
    }
    if (r->reduction == KLCL_REDUCTION_NONE)
        fprintf(f, "(reduction none: the value is the sum of the per-row values)\n");
    for (size_t l = 0; l < r->loss_count; l++) {
        const loss_report *L = &r->loss[l];
        if (!L->nonfinite) continue;
        fprintf(f, "%s: %zu non-finite row%s (NaN or infinite; excluded from percentiles and metrics), first:",
                klcl_loss_name(L->loss), L->nonfinite, L->nonfinite == 1 ? "" : "s");
        size_t shown = L->nonfinite < FIRST_NONFINITE_MAX ? L->nonfinite : FIRST_NONFINITE_MAX;
        for (size_t i = 0; i < shown; i++) fprintf(f, " %zu", L->first_nonfinite[i]);
        fprintf(f, "%s\n", L->nonfinite > shown ? " ..." : "");
    }

    fprintf(f, "\nmetrics (means over the rows %s used whose value is finite)\n", klcl_loss_name(r->loss[0].loss));
    if (r->teacher_dtype) /* without a teacher (ce alone) these are not defined */
        fprintf(f, "  teacher entropy  %s nats\n", num(b[0], sizeof b[0], "%.6f", r->teacher_entropy));
    fprintf(f, "  student entropy  %s nats\n", num(b[0], sizeof b[0], "%.6f", r->student_entropy));
    if (r->teacher_dtype)
        fprintf(f, "  top-1 agreement  %s\n", num(b[0], sizeof b[0], "%.6f", r->top1_agreement));
    if (r->labels || r->sample)
        fprintf(f, "  accuracy         %s (student argmax == label)\n", num(b[0], sizeof b[0], "%.6f", r->accuracy));

    text_histograms(f, r);

    if (r->verify) {
        size_t rows = 0, worst = 0;
        int ok = 1;
        for (size_t l = 0; l < r->loss_count; l++) {
            const loss_report *L = &r->loss[l];
            if (L->verify_rows > rows) rows = L->verify_rows;
            if (L->verify_max_err > r->loss[worst].verify_max_err || isnan(L->verify_max_err)) worst = l;
            ok &= L->verify_ok;
        }
        fprintf(f, "\nverify    %zu sampled row%s x %zu loss%s against the CPU reference (double precision)\n", rows,
                rows == 1 ? "" : "s", r->loss_count, r->loss_count == 1 ? "" : "es");
        for (size_t l = 0; l < r->loss_count; l++) {
            const loss_report *L = &r->loss[l];
            fprintf(f, "  %-8s largest |value - reference| / max(1, |reference|) = %s %s\n", klcl_loss_name(L->loss),
                    num(b[0], sizeof b[0], "%.3g", L->verify_max_err), L->verify_ok ? "ok" : "OUT OF TOLERANCE");
        }
        fprintf(f, "  %s: every row within 1e-05 * max(1, |reference|)%s\n", ok ? "ok" : "FAILED",
                ok ? "" : " does not hold");
    }
    if (r->per_row_path || r->grad_path) fprintf(f, "\n");
    if (r->per_row_path)
        fprintf(f, "wrote per-row values, float32 [%zu%s] (%s), to %s\n", r->rows, r->loss_count > 1 ? ", losses" : "",
                r->loss_count > 1 ? "columns in --loss order" : "after scale; skipped rows 0", r->per_row_path);
    if (r->grad_path) {
        const char *type = !r->grad_dtype || !strcmp(r->grad_dtype, "f32") ? "float32"
                           : !strcmp(r->grad_dtype, "f16")                 ? "float16"
                                                                           : "bfloat16 (as uint16 bits)";
        fprintf(f, "wrote the gradient of %s with respect to the student logits, %s [%zu, %zu], to %s\n",
                klcl_loss_name(r->loss[0].loss), type, r->rows, r->vocab, r->grad_path);
    }
}

/* ---------------------------------------------------------------------------------------------------- */
/* JSON                                                                                                     */

void tool_json_string(FILE *f, const char *s)
{
    if (!s) {
        fputs("null", f);
        return;
    }
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

/* JSON has no NaN or infinity: such values are written as null (see "value_is" for the loss value). */
static void json_number(FILE *f, double x)
{
    if (isfinite(x))
        fprintf(f, "%.17g", x);
    else
        fputs("null", f);
}

/* A float option as the shortest decimal that reads back as the same float (0.1, not 0.100000001). */
static void json_float(FILE *f, float x)
{
    char buf[32];
    for (int digits = 6; digits <= 9; digits++) {
        snprintf(buf, sizeof buf, "%.*g", digits, (double)x);
        if (strtof(buf, NULL) == x) break;
    }
    fputs(buf, f);
}

static const char *finiteness(double x)
{
    return isnan(x) ? "nan" : isinf(x) ? (x > 0 ? "inf" : "-inf") : "finite";
}

/* ",\n  \"key\": value" inside the top-level object. */
static void key_string(FILE *f, const char *key, const char *value)
{
    fprintf(f, ",\n  \"%s\": ", key);
    tool_json_string(f, value);
}

static void key_number(FILE *f, const char *key, double value)
{
    fprintf(f, ",\n  \"%s\": ", key);
    json_number(f, value);
}

static void json_loss(FILE *f, const eval_report *r, const loss_report *L)
{
    fprintf(f, "    ");
    tool_json_string(f, klcl_loss_name(L->loss));
    fprintf(f, ": {\n      \"value\": ");
    json_number(f, L->value);
    fprintf(f, ",\n      \"value_is\": \"%s\",\n      \"reduction\": \"%s\",\n", finiteness(L->value),
            klcl_reduction_name(r->reduction));
    fprintf(f, "      \"rows_used\": %zu,\n      \"rows_skipped\": %zu,\n      \"nonfinite_rows\": %zu,\n",
            L->rows_used, L->rows_skipped, L->nonfinite);
    fprintf(f, "      \"first_nonfinite\": [");
    size_t shown = L->nonfinite < FIRST_NONFINITE_MAX ? L->nonfinite : FIRST_NONFINITE_MAX;
    for (size_t i = 0; i < shown; i++) fprintf(f, "%s%zu", i ? ", " : "", L->first_nonfinite[i]);
    fprintf(f, "],\n      \"finite_rows\": %zu,\n      \"percentiles\": {", L->finite);
    for (int i = 0; i < PERCENTILES; i++) {
        fprintf(f, "%s\"p%g\": ", i ? ", " : "", percentile_points[i]);
        json_number(f, L->percentiles[i]);
    }
    fprintf(f, "},\n      \"histogram\": {\"lo\": ");
    json_number(f, L->hist_lo);
    fprintf(f, ", \"hi\": ");
    json_number(f, L->hist_hi);
    fprintf(f, ", \"counts\": [");
    for (int b = 0; b < HIST_BINS; b++) fprintf(f, "%s%zu", b ? ", " : "", L->hist[b]);
    fprintf(f, "]},\n      \"verify\": ");
    if (r->verify) {
        fprintf(f, "{\"rows\": %zu, \"max_rel_err\": ", L->verify_rows);
        json_number(f, L->verify_max_err);
        fprintf(f, ", \"ok\": %s}", L->verify_ok ? "true" : "false");
    } else {
        fputs("null", f);
    }
    fprintf(f, "\n    }");
}

void report_json(FILE *f, const eval_report *r)
{
    const klcl_loss_desc *d = &r->desc;
    double secs = r->seconds > 0.0 ? r->seconds : 1e-9;
    fprintf(f, "{\n  \"klcl_version\": ");
    tool_json_string(f, klcl_version_string());
    key_string(f, "device", r->device);
    key_string(f, "device_spec", r->device_spec);
    fprintf(f, ",\n  \"reference\": %s,\n  \"sample\": %s,\n  \"teacher\": ", r->is_reference ? "true" : "false",
            r->sample ? "true" : "false");
    tool_json_string(f, r->teacher);
    key_string(f, "student", r->student);
    key_string(f, "labels", r->labels);
    key_string(f, "teacher_dtype", r->teacher_dtype);
    key_string(f, "student_dtype", r->student_dtype);
    key_string(f, "labels_dtype", r->labels_dtype);
    fprintf(f, ",\n  \"teacher_shape\": %s,\n  \"student_shape\": %s,\n  \"labels_shape\": %s",
            r->teacher_dtype ? r->teacher_shape : "null", r->student_shape, r->labels_dtype ? r->labels_shape : "null");
    fprintf(f, ",\n  \"rows\": %zu,\n  \"vocab\": %zu,\n  \"teacher_vocab\": ", r->rows, r->vocab);
    if (r->teacher_vocab)
        fprintf(f, "%zu", r->teacher_vocab);
    else
        fputs("null", f);
    fprintf(f, ",\n  \"student_vocab\": %zu,\n  \"chunk_rows\": %zu,\n  \"chunks\": %zu,\n", r->vocab, r->chunk_rows,
            r->chunks);
    fprintf(f, "  \"seconds\": ");
    json_number(f, r->seconds);
    key_number(f, "setup_seconds", r->setup_seconds);
    key_number(f, "rows_per_second", (double)r->rows / secs);
    key_number(f, "gb_per_second", r->input_bytes / secs / 1e9);
    fprintf(f, ",\n  \"reduction\": \"%s\",\n", klcl_reduction_name(r->reduction));
    const struct {
        const char *name;
        float value;
    } opts[] = {{"temperature", d->tau}, {"softcap", d->softcap}, {"scale", d->scale}, {"beta", d->beta},
                {"lambda", d->lambda}, {"alpha", d->alpha}, {"label_smoothing", d->label_smoothing},
                {"z_loss", d->z_loss}};
    fprintf(f, "  \"options\": {");
    for (size_t i = 0; i < sizeof opts / sizeof opts[0]; i++) {
        fprintf(f, "\"%s\": ", opts[i].name);
        json_float(f, opts[i].value);
        fprintf(f, ", ");
    }
    fprintf(f, "\"ignore_index\": %d, \"vocab_policy\": ", (int)d->ignore_index);
    tool_json_string(f, r->vocab_policy);
    fprintf(f, ", \"teacher_logprobs\": %s},\n", r->teacher_logprobs ? "true" : "false");
    fprintf(f, "  \"losses\": [");
    for (size_t l = 0; l < r->loss_count; l++) {
        fprintf(f, "%s", l ? ", " : "");
        tool_json_string(f, klcl_loss_name(r->loss[l].loss));
    }
    fprintf(f, "],\n  \"metrics\": {\n");
    for (size_t l = 0; l < r->loss_count; l++) {
        json_loss(f, r, &r->loss[l]);
        fprintf(f, "%s\n", l + 1 < r->loss_count ? "," : "");
    }
    fprintf(f, "  },\n  \"metrics_from\": ");
    tool_json_string(f, klcl_loss_name(r->loss[0].loss));
    key_number(f, "teacher_entropy", r->teacher_entropy);
    key_number(f, "student_entropy", r->student_entropy);
    key_number(f, "top1_agreement", r->top1_agreement);
    key_number(f, "accuracy", r->accuracy);
    fprintf(f, ",\n  \"verify_ok\": ");
    if (r->verify) {
        int ok = 1;
        for (size_t l = 0; l < r->loss_count; l++) ok &= r->loss[l].verify_ok;
        fputs(ok ? "true" : "false", f);
    } else {
        fputs("null", f);
    }
    key_string(f, "per_row_file", r->per_row_path);
    key_string(f, "grad_file", r->grad_path);
    key_string(f, "grad_dtype", r->grad_dtype);
    fprintf(f, "\n}\n");
}
