/* What both harnesses check after a parse: the invariants the readers promise, as traps so that the
 * fuzzer records them as crashes. Included after arrays.c. */
#ifndef KLCL_FUZZ_COMMON_H
#define KLCL_FUZZ_COMMON_H

#include <stdlib.h>

/* On success the array lies inside the input and its rows x cols match the shape; read the first and last
 * rows the way the tool does. */
static void fuzz_exercise(const kt_array *a, const uint8_t *data, size_t size)
{
    size_t bytes = a->rows * a->cols * a->elem_size, prod = 1, i;
    if (a->ndim < 1 || a->ndim > 8 || a->rows == 0 || a->cols == 0)
        __builtin_trap();
    for (i = 0; i < a->ndim; i++)
        prod *= a->shape[i];
    if (prod != a->rows * a->cols || a->data < data || bytes > size || (size_t)(a->data - data) > size - bytes)
        __builtin_trap();

    if (a->dtype == KT_I32 || a->dtype == KT_I64) {
        int32_t lab[2];
        char err[256];
        if (a->cols == 1) {
            if (kt_labels_i32(a, 0, 1, lab, err, sizeof err) != 0 && err[0] == '\0')
                __builtin_trap();
            if (kt_labels_i32(a, a->rows - 1, 1, lab + 1, err, sizeof err) != 0 && err[0] == '\0')
                __builtin_trap();
        }
    } else {
        float *row = malloc(a->cols * sizeof *row);
        if (!row)
            return;
        kt_rows_f32(a, 0, 1, row);
        kt_rows_f32(a, a->rows - 1, 1, row);
        free(row);
    }
}

/* On failure the array is zeroed and there is a message. */
static void fuzz_check_failure(const kt_array *a, const char *err)
{
    if (a->data || a->map || a->rows || a->cols || a->ndim || err[0] == '\0')
        __builtin_trap();
}

#endif
