/* Shared pieces of the klcl command-line tool: exit codes, the subcommands, the built-in sample and the
 * summary writers. The array readers and the .npy writer are in arrays.h. */
#ifndef KLCL_TOOLS_TOOL_H
#define KLCL_TOOLS_TOOL_H

#include <klcl.h>

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Exit codes, documented in `klcl --help`. */
enum {
    EXIT_OK = 0,
    EXIT_IO = 1,     /* out of host memory, or an output file could not be written to the end */
    EXIT_USAGE = 2,  /* bad command line or bad input file */
    EXIT_DEVICE = 3, /* OpenCL failure, no such device, or --verify found a result out of tolerance */
    EXIT_SIGNAL_BASE = 128 /* + the signal: 130 for SIGINT, 143 for SIGTERM */
};

/* Subcommands: argv[0] is the subcommand's name. */
int cmd_eval(int argc, char **argv);
int cmd_tune(int argc, char **argv); /* tune_cmd.c */

/* Strict number parsing for options: the whole string must be a number inside the range, else a message
 * naming the option is printed (prefixed by `cmd`) and -1 returned. */
int parse_double(const char *cmd, const char *opt, const char *text, double lo, double hi, int lo_open,
                 double *out);
int parse_size(const char *cmd, const char *opt, const char *text, size_t lo, size_t hi, size_t *out);
int parse_int32(const char *cmd, const char *opt, const char *text, int32_t *out);

double now_seconds(void);

/* ---------------------------------------------------------------------------------------------------- */
/* The built-in sample of `klcl eval` without input files                                                 */

enum { SAMPLE_ROWS = 4096, SAMPLE_VOCAB = 32000, SAMPLE_PAD_EVERY = 64 };

typedef struct sample sample;

/* Every row is generated from its own index, so any chunking gives the same data. Rows whose index is
 * SAMPLE_PAD_EVERY - 1 modulo SAMPLE_PAD_EVERY carry `ignore_index` as their label (padding). NULL when out
 * of memory. */
sample *sample_create(int32_t ignore_index);
void sample_destroy(sample *s);
void sample_rows(const sample *s, size_t row0, size_t n, float *teacher, float *student);
void sample_labels(const sample *s, size_t row0, size_t n, int32_t *labels);

/* ---------------------------------------------------------------------------------------------------- */
/* What `klcl eval` found, for the text and JSON summaries                                                */

enum { FIRST_NONFINITE_MAX = 8, HIST_BINS = 10, PERCENTILES = 5 };
extern const double percentile_points[PERCENTILES]; /* 0, 5, 50, 95, 100 */

typedef struct loss_report {
    klcl_loss loss;
    double value;            /* the reduced value (for reduction none, the sum) */
    size_t rows_used, rows_skipped, nonfinite;
    size_t first_nonfinite[FIRST_NONFINITE_MAX];
    size_t finite;           /* used rows with a finite value: what the percentiles and histogram cover */
    double percentiles[PERCENTILES];
    double hist_lo, hist_hi;
    size_t hist[HIST_BINS];
    size_t verify_rows;      /* sampled rows compared with the reference (0: --verify not given) */
    double verify_max_err;   /* max |value - reference| / max(1, |reference|) */
    int verify_ok;
} loss_report;

typedef struct eval_report {
    const char *device;      /* device name */
    const char *device_spec; /* --device, or NULL */
    int is_reference;
    const char *teacher, *student, *labels; /* paths (NULL: none); the sample says so in `sample` */
    int sample;
    const char *teacher_dtype, *student_dtype, *labels_dtype;
    const char *teacher_shape, *student_shape, *labels_shape; /* "[4096, 32000]" */
    size_t rows, vocab, chunk_rows, chunks; /* vocab: the student's width */
    size_t teacher_vocab;    /* the teacher's width; 0 without a teacher */
    const char *vocab_policy; /* --vocab-policy as given, or NULL */
    int teacher_logprobs;    /* --teacher-logprobs given */
    const char *grad_dtype;  /* "f32", "f16", "bf16" with --grad; NULL without */
    double seconds, setup_seconds;
    double input_bytes;      /* bytes of logits read, as stored */
    klcl_loss_desc desc;     /* the options (loss field unused) */
    klcl_reduction reduction;
    unsigned losses_present; /* bit per klcl_loss among the losses computed */
    size_t loss_count;
    loss_report *loss;
    double teacher_entropy, student_entropy, top1_agreement, accuracy; /* NaN: not defined */
    int verify;              /* --verify given */
    const char *per_row_path, *grad_path;
} eval_report;

void report_text(FILE *f, const eval_report *r);
void report_json(FILE *f, const eval_report *r);

/* Percentiles (linear interpolation between closest ranks, as NumPy's default) and a HIST_BINS-bin
 * histogram over [min, max] of `n` finite values; sorts `values` in place. */
void summarize_values(float *values, size_t n, loss_report *out);

/* A JSON string literal of s (escaped), or null for NULL (report.c). */
void tool_json_string(FILE *f, const char *s);

#endif
