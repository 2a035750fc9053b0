/* klcl-example: every loss of the contract over built-in synthetic logits, on the default device (or the
 * one KLCL_DEVICE names), each checked against the CPU reference by verify mode.
 *
 * The data: ROWS rows over a VOCAB-token vocabulary with long-tailed (Zipf-like) teacher distributions,
 * a student that is a noisy, flatter copy of the teacher, and labels drawn near the teacher's top tokens. */
#include <klcl.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

enum { ROWS = 512, VOCAB = 32000 };

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static double uniform01(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) * (1.0 / 9007199254740992.0);
}

static void make_data(float *teacher, float *student, int32_t *labels)
{
    for (size_t i = 0; i < ROWS; i++) {
        /* Token v has Zipf rank (v * a + c) mod V for an odd row-dependent a: a permutation per row. */
        size_t a = 2 * (size_t)(uniform01() * 1000) + 1, c = (size_t)(uniform01() * VOCAB);
        for (size_t v = 0; v < VOCAB; v++) {
            size_t rank = (v * a + c) % VOCAB;
            double base = -1.1 * log1p((double)rank);
            double noise = (uniform01() - 0.5) * 0.6;
            teacher[i * VOCAB + v] = (float)(4.0 * base + noise);
            student[i * VOCAB + v] = (float)(3.2 * base + 2.0 * (uniform01() - 0.5));
        }
        size_t top = (size_t)(uniform01() * 4); /* one of the four most likely tokens */
        for (size_t v = 0; v < VOCAB; v++)
            if ((v * a + c) % VOCAB == top) labels[i] = (int32_t)v;
    }
}

static double seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(void)
{
    float *teacher = malloc((size_t)ROWS * VOCAB * sizeof *teacher);
    float *student = malloc((size_t)ROWS * VOCAB * sizeof *student);
    float *grad = malloc((size_t)ROWS * VOCAB * sizeof *grad);
    int32_t *labels = malloc(ROWS * sizeof *labels);
    if (!teacher || !student || !grad || !labels) {
        fprintf(stderr, "klcl-example: out of memory\n");
        return 1;
    }
    make_data(teacher, student, labels);

    klcl_context_options opts = KLCL_CONTEXT_OPTIONS_INIT;
    opts.verify = 1;
    klcl_context *ctx = NULL;
    klcl_status st = klcl_context_create(&opts, &ctx);
    if (st != KLCL_OK) {
        fprintf(stderr, "klcl-example: %s\n", klcl_status_string(st));
        return 3;
    }
    printf("klcl %s on %s: %d rows x %d vocabulary, tau 2, scale 4 (tau^2), reduction mean\n\n",
           klcl_version_string(), klcl_context_device_name(ctx), ROWS, VOCAB);
    printf("%-8s %12s %10s %10s %9s %9s %10s  %s\n", "loss", "value", "H(p)", "H(q)", "top-1", "acc", "ms",
           "vs reference (loss, grad; <=1e-5, <=1)");
    int failures = 0;
    for (int l = 0; l < KLCL_LOSS_COUNT; l++) {
        klcl_loss_desc desc;
        klcl_loss_desc_init(&desc, (klcl_loss)l);
        desc.tau = 2.0f;
        desc.scale = 4.0f;
        klcl_batch b = KLCL_BATCH_INIT;
        b.rows = ROWS;
        b.vocab = VOCAB;
        b.teacher = klcl_host_tensor(teacher, 0);
        b.student = klcl_host_tensor(student, 0);
        b.labels = klcl_host_tensor(labels, 0);
        b.grad = klcl_host_tensor(grad, 0);
        klcl_result r;
        double t0 = seconds();
        st = klcl_compute(ctx, &desc, &b, &r);
        double ms = 1e3 * (seconds() - t0);
        if (st != KLCL_OK) {
            fprintf(stderr, "klcl-example: %s: %s\n%s", klcl_loss_name((klcl_loss)l), klcl_last_error(ctx),
                    klcl_build_log(ctx));
            klcl_context_destroy(ctx);
            return st < 0 ? 3 : 2;
        }
        failures += !r.verify_ok;
        printf("%-8s %12.6f %10.4f %10.4f %9.3f %9.3f %10.1f  %.2e, %.2e %s\n", klcl_loss_name((klcl_loss)l),
               r.loss, r.teacher_entropy, r.student_entropy, r.top1_agreement, r.accuracy, ms,
               r.verify_max_loss_err, r.verify_max_grad_err, r.verify_ok ? "ok" : "OUT OF TOLERANCE");
    }
    printf("\n(times include the reference computation of verify mode)\n");
    klcl_context_destroy(ctx);
    free(teacher);
    free(student);
    free(grad);
    free(labels);
    return failures ? 1 : 0;
}
