/* `klcl eval`: the losses of LOSSES.md between teacher and student logits read from .npy or .safetensors
 * files (or the built-in sample), streamed through the device in chunks of rows.
 *
 * Why chunks: the inputs are memory-mapped and may be larger than RAM and than device memory. Each chunk
 * is uploaded once as it is stored (fp16 and bf16 stay 2 bytes: the kernels widen them exactly, so the host
 * moves and holds half the bytes), and every requested loss runs over it with reduction none; the tool then
 * reduces the per-row values itself, in double and in row order, so the result does not depend on the
 * chunk size. Only a big-endian host widens to fp32 on the host (the files are little-endian). */
#define _POSIX_C_SOURCE 200809L /* sigaction, strndup, isatty */

#include "arrays.h"
#include "tool.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define CMD "klcl eval"

enum {
    MAX_LOSSES = KLCL_LOSS_COUNT,
    VERIFY_ROWS = 16,
    CHUNK_BUDGET_BYTES = 256 << 20 /* teacher + student (as uploaded) + fp32 gradient of one chunk */
};

/* In parts: ISO C only promises string literals of 4095 characters. */
static const char *const usage_text[] = {
    "usage: klcl eval [--teacher FILE --student FILE [--labels FILE]] [options]\n"
    "\n"
    "Computes distillation losses (docs/LOSSES.md) between teacher and student logits and prints a summary.\n"
    "Without input files it runs on a built-in sample: 4096 rows x 32000 vocabulary of deterministic\n"
    "Zipf-like synthetic logits with labels (1 row in 64 is padding), losses kl, rkl, jsd, tvd and ce.\n"
    "\n"
    "inputs\n"
    "  --teacher FILE        teacher logits: .npy (fp32, fp16; bf16 with --bf16) or .safetensors (F32, F16,\n"
    "                        BF16); FILE:NAME picks a tensor of a .safetensors file (else it must hold one).\n"
    "                        Shape [N, V] or [B, T, V] (N = B*T rows). Optional for --loss ce alone.\n"
    "  --student FILE        student logits, same rows as the teacher; fp32, fp16 or bf16 independently of\n"
    "                        the teacher's type (half precision is uploaded as it is and widened exactly on\n"
    "                        the device)\n"
    "  --labels FILE         int32 or int64 labels, N values (shape [N] or [B, T]); rows labelled\n"
    "                        --ignore-index are skipped by every loss\n"
    "  --bf16                read 2-byte .npy arrays without a float type ('<u2', '|V2') as bfloat16\n"
    "  --vocab-policy P      teacher and student of different widths V_t != V_s (an error without it):\n"
    "                        truncate uses the first min(V_t, V_s) columns of both, renormalised; pad gives\n"
    "                        the narrower side's missing columns probability 0. Labels must lie in [0, V_s),\n"
    "                        and in [0, min(V_t, V_s)) under truncate. Outputs have the student's width\n"
    "  --teacher-logprobs    the teacher file holds log-probabilities (log-softmax output): at tau 1 without\n"
    "                        softcap they are used as log p with no second normalisation\n"
    "\n"
    "losses (defaults from docs/LOSSES.md)\n"
    "  --loss NAME[,NAME]    kl rkl soft_ce ce jsd skl srkl tvd kd; repeatable, computed in one pass over\n"
    "                        the data (default kl; for the built-in sample kl,rkl,jsd,tvd,ce)\n"
    "  --temperature T       tau > 0 (default 1; --tau is the same)\n"
    "  --softcap C           logit <- C*tanh(logit/C) before tau; 0 means none (default 0)\n"
    "  --scale S             multiplies every per-row loss and the gradient (default 1; tau^2 for Hinton)\n"
    "  --beta B              jsd mixture weight in [0, 1] (default 0.5)\n"
    "  --lambda L            skl and srkl skew in [0, 1] (default 0.1)\n"
    "  --alpha A             kd weight of the hard-label term in [0, 1] (default 0.5)\n"
    "  --label-smoothing E   ce smoothing in [0, 1] (default 0)\n"
    "  --z-loss Z            ce z-loss weight >= 0 (default 0)\n"
    "  --reduction R         none, sum, mean (default) or batchmean; none reports the sum of the rows\n"
    "  --ignore-index I      label that marks a row to skip (default -100)\n"
    "\n",
    "running\n"
    "  --device SPEC         P:D, cpu (the double-precision reference), opencl, or a device name substring\n"
    "                        (default: KLCL_DEVICE, else the first GPU, else the first device; klcl devices)\n"
    "  --chunk-rows N        rows per chunk (default: a chunk's teacher and student as stored and its fp32\n"
    "                        gradient in ~256 MiB)\n"
    "  --verify              compare up to 16 rows spread over the input with the CPU reference, run on\n"
    "                        the same rows as stored (dtypes, widths, --vocab-policy, --teacher-logprobs)\n"
    "                        (tolerance 1e-5 * max(1, |reference|)); when one is out of tolerance: exit 3\n"
    "                        and no output file\n"
    "\n"
    "outputs\n"
    "  --json                print the summary as one JSON object instead of text\n"
    "  --per-row FILE.npy    float32 per-row values after scale (skipped rows 0): shape [N], or [N, losses]\n"
    "                        in --loss order\n",
    "  --grad FILE.npy       gradient of the reduced loss with respect to the student logits, [N, V_s];\n"
    "                        exactly one --loss. Reduction none gives each row's own gradient\n"
    "  --grad-dtype T        f32 (default, '<f4'), f16 ('<f2') or bf16 (stored as '<u2', the bfloat16 bits;\n"
    "                        read back with --bf16): computed in fp32 and rounded once, to nearest even\n"
    "  --quiet               no progress bar and no text summary (--json still prints)\n"
    "\n"
    "Output files are written under a temporary name and renamed at the end: a failed or interrupted run\n"
    "leaves none. Rows holding NaN or +inf logits are not an error: they are counted as non-finite (first\n"
    "few listed), their values are NaN, and the reduced value follows IEEE arithmetic (printed \"nan\").\n"
    "\n"
    "JSON: top-level klcl_version, device, device_spec, reference, sample, teacher, student, labels,\n"
    "teacher_dtype, student_dtype, labels_dtype, teacher_shape, student_shape, labels_shape, rows, vocab (the\n"
    "student's width), teacher_vocab, student_vocab, chunk_rows, chunks, seconds, setup_seconds,\n"
    "rows_per_second, gb_per_second, reduction, options{temperature, softcap, scale, beta, lambda, alpha,\n"
    "label_smoothing, z_loss, ignore_index, vocab_policy, teacher_logprobs}, losses[], metrics{LOSS: {value,\n"
    "value_is, reduction, rows_used, rows_skipped, nonfinite_rows, first_nonfinite[], finite_rows,\n"
    "percentiles{p0, p5, p50, p95, p100}, histogram{lo, hi, counts[10]}, verify{rows, max_rel_err, ok} or\n"
    "null}}, metrics_from, teacher_entropy, student_entropy, top1_agreement, accuracy, verify_ok,\n"
    "per_row_file, grad_file, grad_dtype. teacher_vocab is null without a teacher, vocab_policy without\n"
    "--vocab-policy, grad_dtype without --grad. JSON has no NaN or infinity: such numbers are written as\n"
    "null (value_is then says \"nan\", \"inf\" or \"-inf\"), and so are metrics that are not defined (accuracy\n"
    "without labels, entropies when no row qualifies).\n"
    "\n"
    "exit status: 0 success, 1 out of memory or an output failing part-way, 2 bad usage or input (an\n"
    "output that cannot be created included),\n"
    "3 device or OpenCL failure (or --verify out of tolerance), 130 interrupted (143 terminated)\n",
};

/* ---------------------------------------------------------------------------------------------------- */
/* State                                                                                                    */

typedef struct eval_opts {
    const char *teacher, *student, *labels, *device, *per_row, *grad;
    const char *vocab_policy; /* as given, or NULL; desc.vocab_policy holds its value */
    const char *grad_dtype_name; /* as given, or NULL */
    klcl_dtype grad_dtype;
    klcl_loss losses[MAX_LOSSES];
    size_t loss_count;
    klcl_loss_desc desc; /* the shared parameters; loss and reduction are set per call */
    klcl_reduction reduction;
    size_t chunk_rows; /* 0: automatic */
    int bf16, teacher_logprobs, verify, json, quiet, help;
} eval_opts;

/* What one loss has accumulated over the chunks. */
typedef struct loss_acc {
    double sum; /* per-row values of the used rows, in row order */
    size_t used, skipped;
    float *finite_values; /* every finite per-row value, for percentiles: at most N */
    loss_report rep;
} loss_acc;

/* Means of klcl_result combined over chunks, each weighted by the rows it averages over. */
typedef struct metric_acc {
    double sum, weight;
} metric_acc;

typedef struct eval_state {
    eval_opts o;
    kt_array teacher, student, labels_file, labels; /* labels: a 1-D view of labels_file */
    int have_teacher, have_labels;
    sample *smp;
    size_t rows, vocab, teacher_vocab; /* vocab: the student's width V_s; teacher_vocab: V_t */
    size_t label_limit;                /* labels lie in [0, label_limit): the columns the loss uses */
    const char *teacher_dtype, *student_dtype, *labels_dtype;
    char teacher_shape[160], student_shape[160], labels_shape[160];
    size_t teacher_elem, student_elem; /* bytes per stored logit */
    /* What the library gets: the stored type, or fp32 widened on the host (the sample, a big-endian host). */
    klcl_dtype teacher_cl, student_cl;
    int teacher_widen, student_widen;

    klcl_context *ctx;
    klcl_context *ref_ctx; /* --verify: the CPU reference */
    int on_device;
    cl_mem mem_teacher, mem_student, mem_labels;
    size_t chunk;
    void *teacher_buf, *student_buf; /* chunk copies when the map cannot be handed over as it is */
    float *grad_buf, *row_loss, *per_row_buf;
    uint16_t *grad_half; /* --grad-dtype f16 or bf16: the chunk's gradient rounded for the file */
    int32_t *label_buf;
    void *verify_teacher, *verify_student; /* the sampled rows of a chunk, as the library got them */
    int32_t *verify_labels;
    float *verify_row_loss;
    size_t verify_index[VERIFY_ROWS];

    size_t skipped_total;
    float grad_factor;
    size_t verify_rows[VERIFY_ROWS];
    size_t verify_count;
    loss_acc acc[MAX_LOSSES];
    metric_acc teacher_entropy, student_entropy, agreement, accuracy;

    kt_writer per_row_writer, grad_writer;
    int per_row_state, grad_state; /* 0 none, 1 begun, 2 committed */
    int progress;                  /* draw the progress bar */
    double setup_seconds, seconds;
} eval_state;

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    interrupted = sig;
}

/* Prints "klcl eval: message" on stderr and returns `code`, so that error paths read `return fail(...)`. */
static int fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, CMD ": ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    return code;
}

/* The exit code for a klcl status: device trouble is 3, a refused argument 2, memory 1. */
static int exit_for_status(klcl_status st)
{
    if (st == KLCL_ERR_OUT_OF_HOST_MEMORY) return EXIT_IO;
    if (st < 0 || st == KLCL_ERR_NO_DEVICE || st == KLCL_ERR_KERNEL_SOURCE || st == KLCL_ERR_UNSUPPORTED)
        return EXIT_DEVICE;
    return EXIT_USAGE;
}

/* ---------------------------------------------------------------------------------------------------- */
/* Options                                                                                                  */

typedef enum opt_id {
    O_TEACHER, O_STUDENT, O_LABELS, O_BF16, O_VOCAB_POLICY, O_TEACHER_LOGPROBS, O_LOSS, O_TEMPERATURE, O_SOFTCAP,
    O_SCALE, O_BETA, O_LAMBDA, O_ALPHA, O_LABEL_SMOOTHING, O_Z_LOSS, O_REDUCTION, O_IGNORE_INDEX, O_DEVICE,
    O_CHUNK_ROWS, O_VERIFY, O_JSON, O_PER_ROW, O_GRAD, O_GRAD_DTYPE, O_QUIET, O_HELP
} opt_id;

static const struct {
    const char *name;
    opt_id id;
    int takes_value;
} option_table[] = {
    {"--teacher", O_TEACHER, 1},
    {"--student", O_STUDENT, 1},
    {"--labels", O_LABELS, 1},
    {"--bf16", O_BF16, 0},
    {"--vocab-policy", O_VOCAB_POLICY, 1},
    {"--teacher-logprobs", O_TEACHER_LOGPROBS, 0},
    {"--loss", O_LOSS, 1},
    {"--temperature", O_TEMPERATURE, 1},
    {"--tau", O_TEMPERATURE, 1},
    {"--softcap", O_SOFTCAP, 1},
    {"--scale", O_SCALE, 1},
    {"--beta", O_BETA, 1},
    {"--lambda", O_LAMBDA, 1},
    {"--alpha", O_ALPHA, 1},
    {"--label-smoothing", O_LABEL_SMOOTHING, 1},
    {"--z-loss", O_Z_LOSS, 1},
    {"--reduction", O_REDUCTION, 1},
    {"--ignore-index", O_IGNORE_INDEX, 1},
    {"--device", O_DEVICE, 1},
    {"--chunk-rows", O_CHUNK_ROWS, 1},
    {"--verify", O_VERIFY, 0},
    {"--json", O_JSON, 0},
    {"--per-row", O_PER_ROW, 1},
    {"--grad", O_GRAD, 1},
    {"--grad-dtype", O_GRAD_DTYPE, 1},
    {"--quiet", O_QUIET, 0},
    {"--help", O_HELP, 0},
    {"-h", O_HELP, 0},
};

static int add_losses(eval_opts *o, const char *list)
{
    const char *p = list;
    for (;;) {
        size_t len = strcspn(p, ",");
        char name[32];
        klcl_loss l;
        if (len == 0 || len >= sizeof name)
            return fail(EXIT_USAGE, "--loss '%s': expected loss names separated by commas (kl, rkl, soft_ce, ce, "
                                    "jsd, skl, srkl, tvd, kd)", list);
        memcpy(name, p, len);
        name[len] = '\0';
        if (klcl_loss_from_name(name, &l) != KLCL_OK)
            return fail(EXIT_USAGE, "--loss '%s': unknown loss (known: kl, rkl, soft_ce, ce, jsd, skl, srkl, tvd, kd)",
                        name);
        for (size_t i = 0; i < o->loss_count; i++)
            if (o->losses[i] == l) return fail(EXIT_USAGE, "--loss %s is given twice", name);
        o->losses[o->loss_count++] = l; /* at most KLCL_LOSS_COUNT distinct names exist */
        if (!p[len]) return 0;
        p += len + 1;
    }
}

/* A float parameter of the loss: strictly a number in [lo, hi] (lo excluded when lo_open), stored as the
 * float the library takes. */
static int float_option(const char *opt, const char *text, double lo, double hi, int lo_open, float *out)
{
    double v;
    if (parse_double(CMD, opt, text, lo, hi, lo_open, &v)) return EXIT_USAGE;
    *out = (float)v;
    return 0;
}

static int parse_options(int argc, char **argv, eval_opts *o)
{
    klcl_loss_desc_init(&o->desc, KLCL_LOSS_KL);
    o->reduction = KLCL_REDUCTION_MEAN;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i], *eq = strchr(arg, '=');
        size_t name_len = eq && !strncmp(arg, "--", 2) ? (size_t)(eq - arg) : strlen(arg);
        int found = -1;
        for (size_t k = 0; k < sizeof option_table / sizeof option_table[0]; k++)
            if (strlen(option_table[k].name) == name_len && !strncmp(arg, option_table[k].name, name_len))
                found = (int)k;
        if (found < 0) {
            if (arg[0] != '-')
                return fail(EXIT_USAGE, "unexpected argument '%s': inputs are given with --teacher, --student and "
                                        "--labels (see klcl eval --help)", arg);
            return fail(EXIT_USAGE, "unknown option '%.*s' (see klcl eval --help)", (int)name_len, arg);
        }
        const char *opt = option_table[found].name, *val = NULL;
        if (option_table[found].takes_value) {
            if (eq) {
                val = eq + 1;
            } else if (i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0) {
                val = argv[++i];
            } else {
                return fail(EXIT_USAGE, "%s needs a value%s%s", opt, i + 1 < argc ? ", got the option " : "",
                            i + 1 < argc ? argv[i + 1] : "");
            }
            if (!*val) return fail(EXIT_USAGE, "%s: the value is empty", opt);
        } else if (eq) {
            return fail(EXIT_USAGE, "%s takes no value", opt);
        }
        int rc = 0;
        switch (option_table[found].id) {
        case O_TEACHER: o->teacher = val; break;
        case O_STUDENT: o->student = val; break;
        case O_LABELS: o->labels = val; break;
        case O_BF16: o->bf16 = 1; break;
        case O_VOCAB_POLICY:
            o->vocab_policy = val;
            if (!strcmp(val, "truncate"))
                o->desc.vocab_policy = KLCL_VOCAB_TRUNCATE;
            else if (!strcmp(val, "pad"))
                o->desc.vocab_policy = KLCL_VOCAB_PAD;
            else
                rc = fail(EXIT_USAGE, "--vocab-policy '%s': expected truncate or pad", val);
            break;
        case O_TEACHER_LOGPROBS: o->teacher_logprobs = 1; break;
        case O_LOSS: rc = add_losses(o, val); break;
        case O_TEMPERATURE:
            rc = float_option(opt, val, 0.0, FLT_MAX, 1, &o->desc.tau);
            /* The library refuses a tau whose reciprocal overflows a float; say so here, naming the option. */
            if (!rc && !isfinite(1.0f / o->desc.tau))
                rc = fail(EXIT_USAGE, "%s %s: too small (1/tau must be finite as a float)", opt, val);
            break;
        case O_SOFTCAP: rc = float_option(opt, val, 0.0, FLT_MAX, 0, &o->desc.softcap); break;
        case O_SCALE: rc = float_option(opt, val, -FLT_MAX, FLT_MAX, 0, &o->desc.scale); break;
        case O_BETA: rc = float_option(opt, val, 0.0, 1.0, 0, &o->desc.beta); break;
        case O_LAMBDA: rc = float_option(opt, val, 0.0, 1.0, 0, &o->desc.lambda); break;
        case O_ALPHA: rc = float_option(opt, val, 0.0, 1.0, 0, &o->desc.alpha); break;
        case O_LABEL_SMOOTHING: rc = float_option(opt, val, 0.0, 1.0, 0, &o->desc.label_smoothing); break;
        case O_Z_LOSS: rc = float_option(opt, val, 0.0, FLT_MAX, 0, &o->desc.z_loss); break;
        case O_REDUCTION:
            if (klcl_reduction_from_name(val, &o->reduction) != KLCL_OK)
                rc = fail(EXIT_USAGE, "--reduction '%s': expected none, sum, mean or batchmean", val);
            break;
        case O_IGNORE_INDEX: rc = parse_int32(CMD, opt, val, &o->desc.ignore_index) ? EXIT_USAGE : 0; break;
        case O_DEVICE: o->device = val; break;
        case O_CHUNK_ROWS: rc = parse_size(CMD, opt, val, 1, SIZE_MAX, &o->chunk_rows) ? EXIT_USAGE : 0; break;
        case O_VERIFY: o->verify = 1; break;
        case O_JSON: o->json = 1; break;
        case O_PER_ROW: o->per_row = val; break;
        case O_GRAD: o->grad = val; break;
        case O_GRAD_DTYPE:
            o->grad_dtype_name = val;
            if (!strcmp(val, "f32"))
                o->grad_dtype = KLCL_DTYPE_F32;
            else if (!strcmp(val, "f16"))
                o->grad_dtype = KLCL_DTYPE_F16;
            else if (!strcmp(val, "bf16"))
                o->grad_dtype = KLCL_DTYPE_BF16;
            else
                rc = fail(EXIT_USAGE, "--grad-dtype '%s': expected f32, f16 or bf16", val);
            break;
        case O_QUIET: o->quiet = 1; break;
        case O_HELP: o->help = 1; break;
        }
        if (rc) return rc;
    }
    if (o->grad_dtype_name && !o->grad)
        return fail(EXIT_USAGE, "--grad-dtype %s needs --grad FILE.npy", o->grad_dtype_name);
    return 0;
}

/* ---------------------------------------------------------------------------------------------------- */
/* Inputs                                                                                                   */

static const char *shape_text(const kt_array *a, char *buf, size_t len)
{
    size_t pos = (size_t)snprintf(buf, len, "[");
    for (size_t i = 0; i < a->ndim && pos < len; i++)
        pos += (size_t)snprintf(buf + pos, len - pos, "%s%zu", i ? ", " : "", a->shape[i]);
    if (pos < len) snprintf(buf + pos, len - pos, "]");
    return buf;
}

static const char *dtype_text(kt_dtype d)
{
    switch (d) {
    case KT_F32: return "f32";
    case KT_F16: return "f16";
    case KT_BF16: return "bf16";
    case KT_I32: return "int32";
    case KT_I64: return "int64";
    case KT_U16: return "2-byte untyped";
    }
    return "?";
}

static int open_array(const char *opt, const char *path, kt_array *a)
{
    char err[512];
    if (kt_open(path, a, err, sizeof err) != 0) return fail(EXIT_USAGE, "%s: %s", opt, err);
    /* Read once, front to back: the kernel may read ahead and drop pages behind (files larger than RAM). */
    posix_madvise(a->map, a->map_size, POSIX_MADV_SEQUENTIAL);
    return 0;
}

static int check_logits(const char *opt, const char *path, const kt_array *a, int bf16, const char **dtype)
{
    char shape[160];
    switch (a->dtype) {
    case KT_F32: case KT_F16: case KT_BF16: *dtype = dtype_text(a->dtype); break;
    case KT_U16:
        if (!bf16)
            return fail(EXIT_USAGE, "%s %s: 2-byte values without a float type ('<u2' or '|V2'): pass --bf16 if "
                                    "they are bfloat16", opt, path);
        *dtype = "bf16"; /* declared as 2-byte integers or void; --bf16 says what they are */
        break;
    default:
        return fail(EXIT_USAGE, "%s %s: %s values; logits must be fp32, fp16 or bf16", opt, path,
                    dtype_text(a->dtype));
    }
    if (a->ndim != 2 && a->ndim != 3)
        return fail(EXIT_USAGE, "%s %s: shape %s; logits must have shape [N, V] or [B, T, V]", opt, path,
                    shape_text(a, shape, sizeof shape));
    if (a->rows == 0 || a->cols == 0)
        return fail(EXIT_USAGE, "%s %s: shape %s holds no logits", opt, path, shape_text(a, shape, sizeof shape));
    return 0;
}

/* The type the library gets for a logits file: as stored, the files being little-endian, except on a
 * big-endian host, where rows are widened to fp32 on the host. */
static void upload_type(const kt_array *a, klcl_dtype *dtype, int *widen)
{
    const uint16_t one = 1;
    *widen = *(const uint8_t *)&one != 1;
    *dtype = *widen || a->dtype == KT_F32 ? KLCL_DTYPE_F32 : a->dtype == KT_F16 ? KLCL_DTYPE_F16 : KLCL_DTYPE_BF16;
}

static int open_inputs(eval_state *s)
{
    eval_opts *o = &s->o;
    int rc;
    char shape_a[160], shape_b[160];
    if (!o->teacher && !o->student) {
        if (o->labels) return fail(EXIT_USAGE, "--labels needs --teacher and --student (the built-in sample has "
                                               "labels of its own)");
        s->smp = sample_create(o->desc.ignore_index);
        if (!s->smp) return fail(EXIT_IO, "out of host memory");
        s->rows = SAMPLE_ROWS;
        s->vocab = SAMPLE_VOCAB;
        s->have_teacher = s->have_labels = 1;
        s->teacher_dtype = s->student_dtype = "f32";
        s->labels_dtype = "int32";
        snprintf(s->teacher_shape, sizeof s->teacher_shape, "[%d, %d]", SAMPLE_ROWS, SAMPLE_VOCAB);
        snprintf(s->student_shape, sizeof s->student_shape, "[%d, %d]", SAMPLE_ROWS, SAMPLE_VOCAB);
        snprintf(s->labels_shape, sizeof s->labels_shape, "[%d]", SAMPLE_ROWS);
        s->teacher_elem = s->student_elem = sizeof(float);
        s->teacher_vocab = s->label_limit = SAMPLE_VOCAB;
        s->teacher_cl = s->student_cl = KLCL_DTYPE_F32;
        s->teacher_widen = s->student_widen = 1; /* generated into fp32 buffers */
        if (o->teacher_logprobs)
            return fail(EXIT_USAGE, "--teacher-logprobs needs --teacher (the built-in sample's teacher holds logits)");
        return 0;
    }
    if (!o->student) return fail(EXIT_USAGE, "--student is missing (--teacher was given)");
    if ((rc = open_array("--student", o->student, &s->student))) return rc;
    if ((rc = check_logits("--student", o->student, &s->student, o->bf16, &s->student_dtype))) return rc;
    s->rows = s->student.rows;
    s->vocab = s->student.cols;
    s->student_elem = s->student.elem_size;
    s->teacher_vocab = s->label_limit = s->vocab;
    upload_type(&s->student, &s->student_cl, &s->student_widen);
    shape_text(&s->student, s->student_shape, sizeof s->student_shape);
    if (o->teacher) {
        if ((rc = open_array("--teacher", o->teacher, &s->teacher))) return rc;
        if ((rc = check_logits("--teacher", o->teacher, &s->teacher, o->bf16, &s->teacher_dtype))) return rc;
        s->have_teacher = 1;
        s->teacher_elem = s->teacher.elem_size;
        shape_text(&s->teacher, s->teacher_shape, sizeof s->teacher_shape);
        if (s->teacher.rows != s->rows)
            return fail(EXIT_USAGE, "--teacher %s has %zu rows (shape %s) but --student %s has %zu (shape %s)",
                        o->teacher, s->teacher.rows, shape_text(&s->teacher, shape_a, sizeof shape_a), o->student,
                        s->rows, shape_text(&s->student, shape_b, sizeof shape_b));
        s->teacher_vocab = s->teacher.cols;
        upload_type(&s->teacher, &s->teacher_cl, &s->teacher_widen);
        /* Matching heads of different widths silently would change the loss; the user says how. */
        if (s->teacher_vocab != s->vocab && !o->vocab_policy)
            return fail(EXIT_USAGE, "--teacher %s has vocabulary %zu but --student %s has %zu: choose "
                                    "--vocab-policy truncate (both use the first %zu columns) or --vocab-policy pad "
                                    "(the narrower side's missing columns get probability 0)",
                        o->teacher, s->teacher_vocab, o->student, s->vocab,
                        s->teacher_vocab < s->vocab ? s->teacher_vocab : s->vocab);
        if (o->desc.vocab_policy == KLCL_VOCAB_TRUNCATE && s->teacher_vocab < s->vocab)
            s->label_limit = s->teacher_vocab;
    } else if (o->teacher_logprobs) {
        return fail(EXIT_USAGE, "--teacher-logprobs needs --teacher");
    }
    if (o->labels) {
        if ((rc = open_array("--labels", o->labels, &s->labels_file))) return rc;
        const kt_array *y = &s->labels_file;
        if (y->dtype != KT_I32 && y->dtype != KT_I64)
            return fail(EXIT_USAGE, "--labels %s: %s values; labels must be int32 or int64", o->labels,
                        dtype_text(y->dtype));
        if (y->ndim > 2 || y->rows * y->cols != s->rows)
            return fail(EXIT_USAGE, "--labels %s: shape %s; expected %zu labels (one per row of the logits, shape "
                                    "[N] or [B, T])", o->labels, shape_text(y, shape_a, sizeof shape_a), s->rows);
        /* Labels of [B, T] logits come as [B, T]: read them as the N values they are, in the same order. */
        s->labels = *y;
        s->labels.ndim = 1;
        s->labels.shape[0] = s->labels.rows = s->rows;
        s->labels.cols = 1;
        s->have_labels = 1;
        s->labels_dtype = dtype_text(y->dtype);
        shape_text(y, s->labels_shape, sizeof s->labels_shape);
    }
    return 0;
}

/* stat() of an input path, which may carry a ":NAME" tensor suffix (safetensors). */
static int stat_input(const char *path, struct stat *st)
{
    if (stat(path, st) == 0) return 0;
    const char *colon = strrchr(path, ':');
    if (!colon) return -1;
    char *file = strndup(path, (size_t)(colon - path));
    int rc = file ? stat(file, st) : -1;
    free(file);
    return rc;
}

/* Options that depend on the inputs: default losses, what each loss needs, outputs. */
static int check_request(eval_state *s)
{
    eval_opts *o = &s->o;
    if (o->loss_count == 0) {
        static const klcl_loss demo[] = {KLCL_LOSS_KL, KLCL_LOSS_RKL, KLCL_LOSS_JSD, KLCL_LOSS_TVD, KLCL_LOSS_CE};
        size_t n = s->smp && !o->grad ? sizeof demo / sizeof demo[0] : 1;
        for (size_t i = 0; i < n; i++) o->losses[o->loss_count++] = demo[i];
    }
    for (size_t i = 0; i < o->loss_count; i++) {
        const char *name = klcl_loss_name(o->losses[i]);
        if ((o->losses[i] == KLCL_LOSS_CE || o->losses[i] == KLCL_LOSS_KD) && !s->have_labels)
            return fail(EXIT_USAGE, "--loss %s needs --labels", name);
        if (o->losses[i] != KLCL_LOSS_CE && !s->have_teacher)
            return fail(EXIT_USAGE, "--teacher is missing (--loss %s needs teacher logits; only ce works without)",
                        name);
    }
    if (o->grad && o->loss_count != 1)
        return fail(EXIT_USAGE, "--grad needs exactly one --loss (%zu given)", o->loss_count);

    /* An output must not replace an input or the other output. */
    const char *outputs[2] = {o->per_row, o->grad}, *out_opts[2] = {"--per-row", "--grad"};
    const char *inputs[3] = {o->teacher, o->student, o->labels};
    for (int i = 0; i < 2; i++) {
        struct stat so;
        if (!outputs[i]) continue;
        if (i == 1 && outputs[0] && !strcmp(outputs[0], outputs[1]))
            return fail(EXIT_USAGE, "--per-row and --grad name the same file %s", outputs[1]);
        if (stat(outputs[i], &so) != 0) continue;
        if (S_ISDIR(so.st_mode)) return fail(EXIT_USAGE, "%s %s is a directory", out_opts[i], outputs[i]);
        for (int k = 0; k < 3; k++) {
            struct stat si;
            if (inputs[k] && stat_input(inputs[k], &si) == 0 && si.st_dev == so.st_dev && si.st_ino == so.st_ino)
                return fail(EXIT_USAGE, "%s %s would overwrite the input %s", out_opts[i], outputs[i], inputs[k]);
        }
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------------- */
/* Labels                                                                                                   */

static int read_labels(eval_state *s, size_t row0, size_t n, int32_t *dst)
{
    char err[512];
    if (s->smp) {
        sample_labels(s->smp, row0, n, dst);
        return 0;
    }
    if (kt_labels_i32(&s->labels, row0, n, dst, err, sizeof err) != 0)
        return fail(EXIT_USAGE, "--labels %s: %s", s->o.labels, err);
    return 0;
}

/* Why the label range is what it is, when the student's width is not the whole story. */
static const char *label_limit_note(const eval_state *s)
{
    return s->label_limit < s->vocab ? " (--vocab-policy truncate uses the teacher's narrower width)" : "";
}

/* One pass over the labels before any logits are read: a label out of range fails the run at once rather
 * than after hours of work, and the count of skipped rows gives the gradient's denominator for mean. */
static int scan_labels(eval_state *s)
{
    const int32_t ignore = s->o.desc.ignore_index;
    for (size_t row0 = 0; row0 < s->rows; row0 += s->chunk) {
        size_t n = s->rows - row0 < s->chunk ? s->rows - row0 : s->chunk;
        int rc = read_labels(s, row0, n, s->label_buf);
        if (rc) return rc;
        for (size_t i = 0; i < n; i++) {
            int32_t y = s->label_buf[i];
            if (y == ignore) {
                s->skipped_total++;
            } else if (y < 0 || (size_t)y >= s->label_limit) {
                return fail(EXIT_USAGE, "--labels %s: row %zu has label %d, outside [0, %zu) and not --ignore-index "
                                        "(%d)%s", s->o.labels ? s->o.labels : "(sample)", row0 + i, (int)y,
                            s->label_limit, (int)ignore, label_limit_note(s));
            }
        }
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------------- */
/* Device, chunk size, buffers, outputs                                                                     */

static int open_device(eval_state *s)
{
    klcl_context_options co = KLCL_CONTEXT_OPTIONS_INIT;
    co.device = s->o.device;
    double t0 = now_seconds();
    klcl_status st = klcl_context_create(&co, &s->ctx);
    if (st == KLCL_ERR_NO_DEVICE) {
        const char *env = getenv("KLCL_DEVICE");
        if (s->o.device) return fail(EXIT_DEVICE, "--device %s: no such device (klcl devices lists them)", s->o.device);
        return fail(EXIT_DEVICE, "no OpenCL device matches %s%s (klcl devices lists them)",
                    env && *env ? "KLCL_DEVICE=" : "the default selection", env && *env ? env : "");
    }
    if (st != KLCL_OK)
        return fail(exit_for_status(st), "cannot open the device%s%s: %s", s->o.device ? " " : "",
                    s->o.device ? s->o.device : "", klcl_status_string(st));
    st = klcl_context_prepare(s->ctx);
    if (st != KLCL_OK) {
        const char *log = klcl_build_log(s->ctx);
        fail(exit_for_status(st), "%s: building the kernels failed: %s: %s%s%s", klcl_context_device_name(s->ctx),
             klcl_status_string(st), klcl_last_error(s->ctx), *log ? "\n" : "", log);
        return exit_for_status(st);
    }
    s->on_device = !klcl_context_is_reference(s->ctx);
    if (s->o.verify) {
        /* The reference as a context of its own: it takes the same batches (dtypes, widths, policy, log-prob
         * teachers) as the device, so --verify covers all of them. */
        klcl_context_options ro = KLCL_CONTEXT_OPTIONS_INIT;
        ro.device = "cpu";
        st = klcl_context_create(&ro, &s->ref_ctx);
        if (st != KLCL_OK)
            return fail(exit_for_status(st), "--verify: cannot open the CPU reference: %s", klcl_status_string(st));
    }
    s->setup_seconds = now_seconds() - t0;
    return 0;
}

/* Rows per chunk: --chunk-rows, else what keeps a chunk's teacher and student (as uploaded: 2 bytes a
 * logit for fp16 and bf16) and its fp32 gradient near CHUNK_BUDGET_BYTES; never more than the device can
 * allocate in one buffer. */
static int choose_chunk(eval_state *s)
{
    const size_t teacher_row = s->have_teacher ? s->teacher_vocab * klcl_dtype_size(s->teacher_cl) : 0;
    const size_t student_row = s->vocab * klcl_dtype_size(s->student_cl), grad_row = s->vocab * sizeof(float);
    /* The widest buffer a chunk needs on the device, per row (a host gradient gets device scratch too). */
    size_t row_bytes = teacher_row > student_row ? teacher_row : student_row;
    if (s->o.grad && grad_row > row_bytes) row_bytes = grad_row;
    size_t chunk = s->o.chunk_rows ? s->o.chunk_rows : CHUNK_BUDGET_BYTES / (teacher_row + student_row + grad_row);
    if (chunk < 1) chunk = 1;
    if (chunk > s->rows) chunk = s->rows;
    if (s->on_device) {
        cl_device_id dev;
        cl_ulong max_alloc = 0;
        cl_int err = clGetContextInfo(klcl_context_cl_context(s->ctx), CL_CONTEXT_DEVICES, sizeof dev, &dev, NULL);
        if (err == CL_SUCCESS)
            err = clGetDeviceInfo(dev, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof max_alloc, &max_alloc, NULL);
        if (err != CL_SUCCESS) return fail(EXIT_DEVICE, "clGetDeviceInfo(CL_DEVICE_MAX_MEM_ALLOC_SIZE): %s",
                                           klcl_status_string(err));
        if (max_alloc < row_bytes)
            return fail(EXIT_DEVICE, "one row of logits (%zu bytes) is larger than the device's largest buffer "
                                     "(%llu bytes)", row_bytes, (unsigned long long)max_alloc);
        size_t fit = (size_t)(max_alloc / row_bytes);
        if (chunk > fit) {
            if (s->o.chunk_rows)
                return fail(EXIT_USAGE, "--chunk-rows %zu: a chunk of logits would take %zu bytes, more than the "
                                        "device's largest buffer (%llu bytes); use at most %zu",
                            s->o.chunk_rows, chunk * row_bytes, (unsigned long long)max_alloc, fit);
            chunk = fit;
        }
    }
    s->chunk = chunk;
    return 0;
}

static void *alloc_or_null(size_t count, size_t size, int *failed)
{
    size_t bytes = count * size;
    void *p = malloc(bytes > 0 ? bytes : 1); /* malloc(0) may return NULL, which is no failure */
    if (!p) *failed = 1;
    return p;
}

/* Asks the kernel to read rows [row0, row0 + n) of a mapped array in the background, so that the disk
 * works on the next chunk while the device computes this one. Only a hint: failures change nothing. */
static void prefetch_rows(const kt_array *a, size_t row0, size_t n)
{
    if (!a->map || n == 0) return;
    const size_t row_bytes = a->cols * a->elem_size;
    uintptr_t start = (uintptr_t)(a->data + row0 * row_bytes), end = start + n * row_bytes;
    long page = sysconf(_SC_PAGESIZE);
    if (page > 0) start -= start % (uintptr_t)page; /* posix_madvise wants a page-aligned address */
    posix_madvise((void *)start, end - start, POSIX_MADV_WILLNEED);
}

/* Whether rows of `a` can be handed to the library straight from the map: not widened on the host, and
 * either uploaded by the tool (any address will do) or read on the host at an address aligned for the type. */
static int direct(const eval_state *s, const kt_array *a, int widen)
{
    return !widen && (s->on_device || (uintptr_t)a->data % a->elem_size == 0);
}

static int allocate(eval_state *s)
{
    const size_t chunk = s->chunk, V = s->vocab, VT = s->teacher_vocab, L = s->o.loss_count;
    const size_t t_elem = klcl_dtype_size(s->teacher_cl), s_elem = klcl_dtype_size(s->student_cl);
    int failed = 0;
    if (s->have_teacher && (s->smp || !direct(s, &s->teacher, s->teacher_widen)))
        s->teacher_buf = alloc_or_null(chunk * VT, t_elem, &failed);
    if (s->smp || !direct(s, &s->student, s->student_widen)) s->student_buf = alloc_or_null(chunk * V, s_elem, &failed);
    if (s->o.grad) s->grad_buf = alloc_or_null(chunk * V, sizeof(float), &failed);
    if (s->o.grad && s->o.grad_dtype != KLCL_DTYPE_F32) s->grad_half = alloc_or_null(chunk * V, sizeof(uint16_t), &failed);
    if (s->o.verify) {
        if (s->have_teacher) s->verify_teacher = alloc_or_null(VERIFY_ROWS * VT, t_elem, &failed);
        s->verify_student = alloc_or_null(VERIFY_ROWS * V, s_elem, &failed);
        if (s->have_labels) s->verify_labels = alloc_or_null(VERIFY_ROWS, sizeof(int32_t), &failed);
        s->verify_row_loss = alloc_or_null(VERIFY_ROWS, sizeof(float), &failed);
    }
    if (s->have_labels) s->label_buf = alloc_or_null(chunk, sizeof(int32_t), &failed);
    s->row_loss = alloc_or_null(chunk * L, sizeof(float), &failed);
    if (s->o.per_row) s->per_row_buf = alloc_or_null(chunk * L, sizeof(float), &failed);
    for (size_t l = 0; l < L; l++) s->acc[l].finite_values = alloc_or_null(s->rows, sizeof(float), &failed);
    if (failed)
        return fail(EXIT_IO, "out of host memory for chunks of %zu rows x %zu (try a smaller --chunk-rows)", chunk, V);
    if (!s->on_device) return 0;

    cl_context clctx = klcl_context_cl_context(s->ctx);
    cl_int err = CL_SUCCESS;
    const char *what = "student";
    s->mem_student = clCreateBuffer(clctx, CL_MEM_READ_ONLY, chunk * V * s_elem, NULL, &err);
    if (err == CL_SUCCESS && s->have_teacher) {
        what = "teacher";
        s->mem_teacher = clCreateBuffer(clctx, CL_MEM_READ_ONLY, chunk * VT * t_elem, NULL, &err);
    }
    if (err == CL_SUCCESS && s->have_labels) {
        what = "labels";
        s->mem_labels = clCreateBuffer(clctx, CL_MEM_READ_ONLY, chunk * sizeof(int32_t), NULL, &err);
    }
    if (err != CL_SUCCESS)
        return fail(EXIT_DEVICE, "clCreateBuffer (%s, %zu rows): %s (try a smaller --chunk-rows)", what, chunk,
                    klcl_status_string(err));
    return 0;
}

static int begin_outputs(eval_state *s)
{
    char err[512];
    if (s->o.per_row) {
        size_t shape[2] = {s->rows, s->o.loss_count};
        if (kt_writer_begin(&s->per_row_writer, s->o.per_row, s->o.loss_count > 1 ? 2 : 1, shape, err, sizeof err))
            return fail(EXIT_USAGE, "--per-row: %s", err);
        s->per_row_state = 1;
    }
    if (s->o.grad) {
        size_t shape[2] = {s->rows, s->vocab};
        kt_dtype type = s->o.grad_dtype == KLCL_DTYPE_F16 ? KT_F16 : s->o.grad_dtype == KLCL_DTYPE_BF16 ? KT_BF16 : KT_F32;
        if (kt_writer_begin_as(&s->grad_writer, s->o.grad, type, 2, shape, err, sizeof err))
            return fail(EXIT_USAGE, "--grad: %s", err);
        s->grad_state = 1;
    }
    return 0;
}

/* Commits both outputs; if the second fails, the first is removed again so that a failed run leaves none. */
static int commit_outputs(eval_state *s)
{
    char err[512];
    if (s->per_row_state == 1) {
        if (kt_writer_commit(&s->per_row_writer, err, sizeof err))
            return fail(EXIT_IO, "--per-row: %s", err);
        s->per_row_state = 2;
    }
    if (s->grad_state == 1) {
        if (kt_writer_commit(&s->grad_writer, err, sizeof err)) return fail(EXIT_IO, "--grad: %s", err);
        s->grad_state = 2;
    }
    return 0;
}

/* On failure: temporaries go, and outputs already renamed into place are removed. */
static void discard_outputs(eval_state *s)
{
    if (s->per_row_state == 1) kt_writer_abort(&s->per_row_writer);
    if (s->per_row_state == 2) remove(s->o.per_row);
    if (s->grad_state == 1) kt_writer_abort(&s->grad_writer);
    if (s->grad_state == 2) remove(s->o.grad);
    s->per_row_state = s->grad_state = 0;
}

/* ---------------------------------------------------------------------------------------------------- */
/* Streaming                                                                                                */

/* Bytes of logits one row reads, as stored. */
static size_t row_input_bytes(const eval_state *s)
{
    return (s->have_teacher ? s->teacher_vocab * s->teacher_elem : 0) + s->vocab * s->student_elem;
}

static void progress_draw(const eval_state *s, size_t done, double t0, int final)
{
    static double last;
    double t = now_seconds();
    if (!s->progress || (!final && t - last < 0.1)) return;
    last = t;
    if (final) {
        fprintf(stderr, "\r\033[K");
        return;
    }
    enum { WIDTH = 24 };
    double elapsed = t - t0 > 1e-9 ? t - t0 : 1e-9, frac = (double)done / (double)s->rows;
    double rate = (double)done / elapsed;
    double gbs = rate * (double)row_input_bytes(s) / 1e9;
    double eta = rate > 0.0 ? (double)(s->rows - done) / rate : 0.0;
    char bar[WIDTH + 1];
    size_t fill = (size_t)(frac * WIDTH);
    for (size_t i = 0; i < WIDTH; i++) bar[i] = i < fill ? '#' : '.';
    bar[WIDTH] = '\0';
    fprintf(stderr, "\r[%s] %3.0f%%  %zu/%zu rows  %.0f rows/s  %.2f GB/s  ETA %d:%02d\033[K", bar, 100.0 * frac, done,
            s->rows, rate, gbs, (int)(eta / 60), (int)eta % 60);
    fflush(stderr);
}

/* Rows [row0, row0 + n) of a logits array as the library gets them: straight from the map (buf NULL), or
 * copied into buf as stored (an unaligned map read on the host), or widened to fp32 into buf. */
static const void *logit_rows(const kt_array *a, int widen, size_t row0, size_t n, void *buf)
{
    const uint8_t *src = a->data + row0 * a->cols * a->elem_size;
    if (!buf) return src;
    if (widen)
        kt_rows_f32(a, row0, n, buf);
    else
        memcpy(buf, src, n * a->cols * a->elem_size);
    return buf;
}

static void metric_add(metric_acc *m, double mean, size_t weight)
{
    if (weight && !isnan(mean)) {
        m->sum += mean * (double)weight;
        m->weight += (double)weight;
    }
}

static double metric_mean(const metric_acc *m)
{
    return m->weight > 0.0 ? m->sum / m->weight : NAN;
}

/* A failed klcl_compute: the message names what went wrong, in rows of the whole input. */
static int compute_failed(eval_state *s, klcl_status st, klcl_loss loss, size_t row0, size_t n)
{
    if (st == KLCL_ERR_LABEL_OUT_OF_RANGE && s->label_buf) {
        for (size_t i = 0; i < n; i++) {
            int32_t y = s->label_buf[i];
            if (y != s->o.desc.ignore_index && (y < 0 || (size_t)y >= s->label_limit))
                return fail(EXIT_USAGE, "--labels: row %zu has label %d, outside [0, %zu) and not --ignore-index (%d)%s",
                            row0 + i, (int)y, s->label_limit, (int)s->o.desc.ignore_index, label_limit_note(s));
        }
    }
    return fail(exit_for_status(st), "%s on rows %zu..%zu: %s: %s", klcl_loss_name(loss), row0, row0 + n - 1,
                klcl_status_string(st), klcl_last_error(s->ctx));
}

/* Adds one chunk's per-row values of loss l to its accumulator, in row order. */
static void accumulate(eval_state *s, size_t l, const float *values, size_t row0, size_t n)
{
    loss_acc *a = &s->acc[l];
    for (size_t i = 0; i < n; i++) {
        if (s->label_buf && s->label_buf[i] == s->o.desc.ignore_index) {
            a->skipped++;
            continue;
        }
        a->used++;
        a->sum += values[i];
        if (isfinite(values[i])) {
            a->finite_values[a->rep.finite++] = values[i];
        } else {
            if (a->rep.nonfinite < FIRST_NONFINITE_MAX) a->rep.first_nonfinite[a->rep.nonfinite] = row0 + i;
            a->rep.nonfinite++;
        }
    }
}

/* The parts of a batch every call on a chunk shares, whichever context runs it. */
static klcl_batch batch_base(const eval_state *s, size_t n)
{
    klcl_batch b = KLCL_BATCH_INIT;
    b.rows = n;
    b.vocab = s->vocab;
    b.teacher_vocab = s->teacher_vocab;
    b.teacher_logprobs = s->o.teacher_logprobs;
    return b;
}

/* --verify: the sampled rows of this chunk, as the device got them, through the CPU reference context
 * (double precision, same dtypes, widths, policy and log-prob setting), against the device's values. */
static int verify_chunk(eval_state *s, const void *teacher, const void *student, size_t row0, size_t n)
{
    const size_t t_row = s->teacher_vocab * klcl_dtype_size(s->teacher_cl);
    const size_t s_row = s->vocab * klcl_dtype_size(s->student_cl);
    size_t m = 0;
    for (size_t k = 0; k < s->verify_count; k++) {
        size_t row = s->verify_rows[k];
        if (row < row0 || row >= row0 + n) continue;
        size_t i = row - row0;
        if (s->label_buf && s->label_buf[i] == s->o.desc.ignore_index) continue; /* skipped: nothing to compare */
        if (teacher) memcpy((char *)s->verify_teacher + m * t_row, (const char *)teacher + i * t_row, t_row);
        memcpy((char *)s->verify_student + m * s_row, (const char *)student + i * s_row, s_row);
        if (s->label_buf) s->verify_labels[m] = s->label_buf[i];
        s->verify_index[m++] = i;
    }
    if (m == 0) return 0;
    klcl_batch b = batch_base(s, m);
    if (teacher) {
        b.teacher = klcl_host_tensor(s->verify_teacher, 0);
        b.teacher.dtype = s->teacher_cl;
    }
    b.student = klcl_host_tensor(s->verify_student, 0);
    b.student.dtype = s->student_cl;
    if (s->label_buf) b.labels = klcl_host_tensor(s->verify_labels, 0);
    b.row_loss = klcl_host_tensor(s->verify_row_loss, 0);
    for (size_t l = 0; l < s->o.loss_count; l++) {
        klcl_loss_desc d = s->o.desc;
        d.loss = s->o.losses[l];
        d.reduction = KLCL_REDUCTION_NONE;
        klcl_status st = klcl_compute(s->ref_ctx, &d, &b, NULL);
        if (st != KLCL_OK)
            return fail(exit_for_status(st), "--verify: the reference failed on rows %zu..%zu: %s: %s", row0,
                        row0 + n - 1, klcl_status_string(st), klcl_last_error(s->ref_ctx));
        loss_report *r = &s->acc[l].rep;
        for (size_t j = 0; j < m; j++) {
            double ref = s->verify_row_loss[j], dev = s->row_loss[l * s->chunk + s->verify_index[j]], err;
            if (!isfinite(ref) || !isfinite(dev)) /* NaN matches NaN, an infinity the same infinity */
                err = (isnan(ref) && isnan(dev)) || ref == dev ? 0.0 : INFINITY;
            else
                err = fabs(dev - ref) / (fabs(ref) > 1.0 ? fabs(ref) : 1.0);
            r->verify_rows++;
            if (err > r->verify_max_err) r->verify_max_err = err;
        }
    }
    return 0;
}

static int stream(eval_state *s)
{
    const size_t V = s->vocab, L = s->o.loss_count;
    cl_command_queue q = s->on_device ? klcl_context_cl_queue(s->ctx) : NULL;
    char err[512];
    double t0 = now_seconds();
    for (size_t row0 = 0; row0 < s->rows; row0 += s->chunk) {
        const size_t n = s->rows - row0 < s->chunk ? s->rows - row0 : s->chunk;
        if (interrupted)
            return fail(EXIT_SIGNAL_BASE + (int)interrupted, "%s after %zu rows; no output written",
                        interrupted == SIGINT ? "interrupted" : "terminated", row0);
        const void *teacher = NULL, *student;
        if (s->smp) {
            sample_rows(s->smp, row0, n, s->teacher_buf, s->student_buf);
            teacher = s->teacher_buf;
            student = s->student_buf;
        } else {
            if (s->have_teacher) teacher = logit_rows(&s->teacher, s->teacher_widen, row0, n, s->teacher_buf);
            student = logit_rows(&s->student, s->student_widen, row0, n, s->student_buf);
        }
        if (row0 + n < s->rows) {
            size_t next = s->rows - (row0 + n) < s->chunk ? s->rows - (row0 + n) : s->chunk;
            if (s->have_teacher) prefetch_rows(&s->teacher, row0 + n, next);
            prefetch_rows(&s->student, row0 + n, next);
        }
        int rc = s->have_labels ? read_labels(s, row0, n, s->label_buf) : 0;
        if (rc) return rc;

        klcl_batch b = batch_base(s, n);
        if (s->on_device) {
            /* Uploaded once, as stored; every loss below reads the same buffers. */
            cl_int e = clEnqueueWriteBuffer(q, s->mem_student, CL_TRUE, 0, n * V * klcl_dtype_size(s->student_cl),
                                            student, 0, NULL, NULL);
            if (e == CL_SUCCESS && teacher)
                e = clEnqueueWriteBuffer(q, s->mem_teacher, CL_TRUE, 0,
                                         n * s->teacher_vocab * klcl_dtype_size(s->teacher_cl), teacher, 0, NULL, NULL);
            if (e == CL_SUCCESS && s->have_labels)
                e = clEnqueueWriteBuffer(q, s->mem_labels, CL_TRUE, 0, n * sizeof(int32_t), s->label_buf, 0, NULL,
                                         NULL);
            if (e != CL_SUCCESS)
                return fail(EXIT_DEVICE, "clEnqueueWriteBuffer (rows %zu..%zu): %s", row0, row0 + n - 1,
                            klcl_status_string(e));
            b.student = klcl_mem_tensor(s->mem_student, 0, 0);
            if (teacher) b.teacher = klcl_mem_tensor(s->mem_teacher, 0, 0);
            if (s->have_labels) b.labels = klcl_mem_tensor(s->mem_labels, 0, 0);
        } else {
            b.student = klcl_host_tensor(student, 0);
            if (teacher) b.teacher = klcl_host_tensor(teacher, 0);
            if (s->have_labels) b.labels = klcl_host_tensor(s->label_buf, 0);
        }
        b.student.dtype = s->student_cl;
        if (teacher) b.teacher.dtype = s->teacher_cl;

        for (size_t l = 0; l < L; l++) {
            klcl_loss_desc d = s->o.desc;
            d.loss = s->o.losses[l];
            d.reduction = KLCL_REDUCTION_NONE; /* reduced here, over all rows */
            float *values = s->row_loss + l * s->chunk;
            b.row_loss = klcl_host_tensor(values, 0);
            b.grad = s->grad_buf ? klcl_host_tensor(s->grad_buf, 0) : klcl_host_tensor(NULL, 0);
            klcl_result r;
            klcl_status st = klcl_compute(s->ctx, &d, &b, &r);
            if (st != KLCL_OK) return compute_failed(s, st, d.loss, row0, n);
            accumulate(s, l, values, row0, n);
            if (l == 0) {
                /* Each mean weighted by the rows it averages over, so chunking cannot change it. */
                size_t finite = r.rows_used - r.rows_nonfinite;
                metric_add(&s->teacher_entropy, r.teacher_entropy, r.rows_with_teacher);
                metric_add(&s->student_entropy, r.student_entropy, finite);
                metric_add(&s->agreement, r.top1_agreement, r.rows_with_teacher);
                metric_add(&s->accuracy, r.accuracy, finite);
            }
        }
        if (s->grad_buf) {
            /* Each row's own gradient, times the global 1/denominator (the same float for every chunk). */
            if (s->grad_factor != 1.0f)
                for (size_t i = 0; i < n * V; i++) s->grad_buf[i] *= s->grad_factor;
            int werr;
            if (s->grad_half) {
                /* Rounded once, after the denominator: the library's own half gradient would be rounded
                 * before it, and then again here. */
                klcl_convert(s->grad_buf, KLCL_DTYPE_F32, s->grad_half, s->o.grad_dtype, n * V);
                werr = kt_writer_append_u16(&s->grad_writer, s->grad_half, n * V, err, sizeof err);
            } else {
                werr = kt_writer_append(&s->grad_writer, s->grad_buf, n * V, err, sizeof err);
            }
            if (werr) return fail(EXIT_IO, "--grad: %s", err);
        }
        if (s->per_row_buf) {
            for (size_t i = 0; i < n; i++)
                for (size_t l = 0; l < L; l++) s->per_row_buf[i * L + l] = s->row_loss[l * s->chunk + i];
            if (kt_writer_append(&s->per_row_writer, s->per_row_buf, n * L, err, sizeof err))
                return fail(EXIT_IO, "--per-row: %s", err);
        }
        if (s->o.verify && (rc = verify_chunk(s, teacher, student, row0, n))) return rc;
        progress_draw(s, row0 + n, t0, 0);
    }
    progress_draw(s, s->rows, t0, 1);
    s->seconds = now_seconds() - t0;
    return 0;
}

/* ---------------------------------------------------------------------------------------------------- */
/* Results                                                                                                  */

static void finish_report(eval_state *s, eval_report *rep, loss_report *losses)
{
    memset(rep, 0, sizeof *rep);
    rep->device = klcl_context_device_name(s->ctx);
    rep->device_spec = s->o.device;
    rep->is_reference = !s->on_device;
    rep->sample = s->smp != NULL;
    rep->teacher = s->o.teacher;
    rep->student = s->o.student;
    rep->labels = s->o.labels;
    rep->teacher_dtype = s->have_teacher ? s->teacher_dtype : NULL;
    rep->student_dtype = s->student_dtype;
    rep->labels_dtype = s->have_labels ? s->labels_dtype : NULL;
    rep->teacher_shape = s->teacher_shape;
    rep->student_shape = s->student_shape;
    rep->labels_shape = s->labels_shape;
    rep->rows = s->rows;
    rep->vocab = s->vocab;
    rep->teacher_vocab = s->have_teacher ? s->teacher_vocab : 0;
    rep->vocab_policy = s->o.vocab_policy;
    rep->teacher_logprobs = s->o.teacher_logprobs;
    rep->grad_dtype = s->o.grad ? klcl_dtype_name(s->o.grad_dtype) : NULL;
    rep->chunk_rows = s->chunk;
    rep->chunks = (s->rows + s->chunk - 1) / s->chunk;
    rep->seconds = s->seconds;
    rep->setup_seconds = s->setup_seconds;
    rep->input_bytes = (double)s->rows * (double)row_input_bytes(s);
    rep->desc = s->o.desc;
    rep->reduction = s->o.reduction;
    rep->loss_count = s->o.loss_count;
    rep->loss = losses;
    rep->verify = s->o.verify;
    rep->per_row_path = s->o.per_row;
    rep->grad_path = s->o.grad;
    rep->teacher_entropy = metric_mean(&s->teacher_entropy);
    rep->student_entropy = metric_mean(&s->student_entropy);
    rep->top1_agreement = metric_mean(&s->agreement);
    rep->accuracy = metric_mean(&s->accuracy);
    for (size_t l = 0; l < s->o.loss_count; l++) {
        loss_acc *a = &s->acc[l];
        loss_report *r = &losses[l];
        *r = a->rep;
        r->loss = s->o.losses[l];
        r->rows_used = a->used;
        r->rows_skipped = a->skipped;
        switch (s->o.reduction) {
        case KLCL_REDUCTION_MEAN: r->value = a->used ? a->sum / (double)a->used : 0.0; break;
        case KLCL_REDUCTION_BATCHMEAN: r->value = a->sum / (double)s->rows; break;
        default: r->value = a->sum; break;
        }
        summarize_values(a->finite_values, a->rep.finite, r);
        r->verify_ok = !(r->verify_max_err > 1e-5) && !isnan(r->verify_max_err);
        rep->losses_present |= 1u << r->loss;
    }
}

/* ---------------------------------------------------------------------------------------------------- */

static int run(eval_state *s)
{
    int rc;
    if ((rc = open_inputs(s)) || (rc = check_request(s)) || (rc = open_device(s)) || (rc = choose_chunk(s)) ||
        (rc = allocate(s)))
        return rc;
    if (s->have_labels && (rc = scan_labels(s))) return rc;
    double denom = s->o.reduction == KLCL_REDUCTION_MEAN        ? (double)(s->rows - s->skipped_total)
                   : s->o.reduction == KLCL_REDUCTION_BATCHMEAN ? (double)s->rows
                                                                : 1.0;
    s->grad_factor = (float)(1.0 / (denom > 0.0 ? denom : 1.0)); /* mean over no rows: zero gradient anyway */
    if (s->o.verify) {
        /* Up to VERIFY_ROWS rows spread evenly from the first to the last. */
        s->verify_count = s->rows < VERIFY_ROWS ? s->rows : VERIFY_ROWS;
        for (size_t k = 0; k < s->verify_count; k++)
            s->verify_rows[k] = s->verify_count > 1 ? k * (s->rows - 1) / (s->verify_count - 1) : 0;
    }
    /* From the first temporary file on, Ctrl-C and SIGTERM end the run between chunks, through the cleanup
     * that removes the temporaries. A signal ignored on entry (nohup, background jobs) stays ignored. */
    const int signals[] = {SIGINT, SIGTERM};
    for (size_t i = 0; i < sizeof signals / sizeof signals[0]; i++) {
        struct sigaction sa, old;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sa.sa_flags = (int)SA_RESETHAND; /* a second Ctrl-C kills at once */
        sigemptyset(&sa.sa_mask);
        if (sigaction(signals[i], NULL, &old) == 0 && old.sa_handler != SIG_IGN) sigaction(signals[i], &sa, NULL);
    }
    if ((rc = begin_outputs(s))) return rc;
    s->progress = !s->o.quiet && isatty(STDERR_FILENO);
    if ((rc = stream(s))) return rc;
    if (interrupted)
        return fail(EXIT_SIGNAL_BASE + (int)interrupted, "%s; no output written",
                    interrupted == SIGINT ? "interrupted" : "terminated");

    eval_report rep;
    loss_report losses[MAX_LOSSES];
    finish_report(s, &rep, losses);
    int verify_ok = 1;
    for (size_t l = 0; l < s->o.loss_count; l++) verify_ok &= !s->o.verify || losses[l].verify_ok;
    /* Results the reference contradicts are not kept: the summary still shows the comparison. */
    if (verify_ok && (rc = commit_outputs(s))) return rc;
    if (!verify_ok) rep.per_row_path = rep.grad_path = NULL;
    if (s->o.json)
        report_json(stdout, &rep);
    else if (!s->o.quiet)
        report_text(stdout, &rep);
    if (fflush(stdout) != 0 || ferror(stdout))
        return fail(EXIT_IO, "writing the summary to stdout failed: %s", strerror(errno));
    if (!verify_ok)
        return fail(EXIT_DEVICE, "--verify: %s differs from the CPU reference by more than LOSSES.md allows%s",
                    rep.device, s->o.per_row || s->o.grad ? "; no output file written" : "");
    return 0;
}

static void state_free(eval_state *s)
{
    if (s->mem_teacher) clReleaseMemObject(s->mem_teacher);
    if (s->mem_student) clReleaseMemObject(s->mem_student);
    if (s->mem_labels) clReleaseMemObject(s->mem_labels);
    klcl_context_destroy(s->ctx);
    klcl_context_destroy(s->ref_ctx);
    free(s->teacher_buf);
    free(s->student_buf);
    free(s->grad_buf);
    free(s->row_loss);
    free(s->per_row_buf);
    free(s->label_buf);
    free(s->grad_half);
    free(s->verify_teacher);
    free(s->verify_student);
    free(s->verify_labels);
    free(s->verify_row_loss);
    for (size_t l = 0; l < MAX_LOSSES; l++) free(s->acc[l].finite_values);
    sample_destroy(s->smp);
    kt_close(&s->teacher);
    kt_close(&s->student);
    kt_close(&s->labels_file);
}

int cmd_eval(int argc, char **argv)
{
    eval_state *s = calloc(1, sizeof *s);
    if (!s) return fail(EXIT_IO, "out of host memory");
    int rc = parse_options(argc, argv, &s->o);
    if (rc == 0 && s->o.help) {
        for (size_t i = 0; i < sizeof usage_text / sizeof usage_text[0]; i++) fputs(usage_text[i], stdout);
    } else if (rc == 0) {
        rc = run(s);
        if (rc) discard_outputs(s);
    }
    state_free(s);
    free(s);
    return rc;
}
