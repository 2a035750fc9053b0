/* Helpers shared by the test suites: data, device contexts, the contract's tolerances. */
#ifndef KLCL_TEST_UTIL_H
#define KLCL_TEST_UTIL_H

#include <klcl.h>

#include <stddef.h>
#include <stdint.h>

/* Deterministic pseudo-random numbers (xorshift64*): the same seed gives the same data everywhere. */
void tu_seed(uint64_t seed);
double tu_uniform(void);  /* [0, 1) */
double tu_normal(void);   /* standard normal */

/* Teacher and student logits like a distillation batch: teacher ~ N(0, 3^2), student = 0.6 teacher + N(0, 2^2). */
void tu_fill_logits(float *teacher, float *student, size_t rows, size_t vocab, size_t stride);

/* An OpenCL context for the device suites. When no OpenCL device exists the process exits 77 (skipped), or
 * fails the test when the environment variable CI is set: CI always has PoCL. */
klcl_context *tu_device_context(int verify);

/* LOSSES.md tolerances: per-row |dev - ref| <= 1e-5 max(1, |ref|); gradient |dev - ref| <= 1e-6 + 1e-4 |ref|
 * (gradients before scale and denominator). NaN matches NaN and equal infinities match. Return 1 when within. */
int tu_loss_close(double dev, double ref);
int tu_grad_close(double dev, double ref);

/* Minimal .npy reader for the reference vectors (little-endian '<f4', '<f8', '<i4', C order, 1 or 2 dims).
 * Returns malloc'd data and the shape (cols = 1 for 1-D), or NULL. */
void *tu_read_npy(const char *path, char dtype /* 'f' f4, 'd' f8, 'i' i4 */, size_t *rows, size_t *cols);

#endif
