/* Array files for the klcl tool: .npy and .safetensors, memory-mapped and validated, never trusted.
 *
 * Every reader maps the file read-only and checks the header against the file size before handing out a
 * pointer into the map, so a truncated, malformed or hostile file gives an error message naming the file
 * and what is wrong, never a crash, a hang or an out-of-bounds read. Data stay in the map: rows are read
 * (and widened to fp32 where needed) chunk by chunk, so files larger than RAM work. */
#ifndef KLCL_TOOLS_ARRAYS_H
#define KLCL_TOOLS_ARRAYS_H

#include <stddef.h>
#include <stdint.h>

typedef enum kt_dtype {
    KT_F32,  /* little-endian IEEE binary32 */
    KT_F16,  /* little-endian IEEE binary16 */
    KT_BF16, /* bfloat16: the top 16 bits of a binary32 */
    KT_I32,  /* little-endian int32 */
    KT_I64,  /* little-endian int64 */
    KT_U16   /* 2-byte values of no declared float type (.npy '<u2' or '|V2'): bf16 only when the user says so */
} kt_dtype;

/* A mapped array, flattened to rows x cols: shape [N, V] gives N x V, [B, T, V] gives (B*T) x V, and a
 * 1-D shape [N] gives N x 1. */
typedef struct kt_array {
    const uint8_t *data; /* first element, inside the map; C order, rows contiguous */
    kt_dtype dtype;
    size_t elem_size;    /* bytes per element */
    size_t ndim;
    size_t shape[8];
    size_t rows, cols;
    /* owned mapping */
    void *map;
    size_t map_size;
} kt_array;

/* Opens an array file. `path` may end in ":NAME" to choose a tensor of a .safetensors file (without it,
 * the file must hold exactly one tensor); the format is chosen by content (.npy magic, else safetensors).
 * Returns 0, or -1 with a message in err (naming the file and the problem) and *out zeroed. */
int kt_open(const char *path, kt_array *out, char *err, size_t err_len);

/* Unmaps. Accepts a zeroed array. */
void kt_close(kt_array *a);

/* Widens rows [row0, row0 + n) of a float array (F32, F16, BF16, or U16 read as bf16) into fp32 dst
 * (n x cols, contiguous). Exact: fp16 and bf16 values are representable in fp32. */
void kt_rows_f32(const kt_array *a, size_t row0, size_t n, float *dst);

/* Reads n integer labels from row0 of a 1-D (or N x 1) I32 or I64 array into int32 dst. Returns 0, or -1
 * with a message when a value does not fit in int32 (naming the index). */
int kt_labels_i32(const kt_array *a, size_t row0, size_t n, int32_t *dst, char *err, size_t err_len);

/* Writes a float32 .npy of the given shape (ndim 1 or 2) to `path` through a temporary file in the same
 * folder, renamed at the end: a failure leaves no file behind. Returns 0, or -1 with a message. */
int kt_write_npy_f32(const char *path, const float *data, size_t ndim, const size_t *shape, char *err,
                     size_t err_len);

/* Streaming variant for outputs larger than memory: begin, append rows, then commit (rename) or abort
 * (remove the temporary). */
typedef struct kt_writer {
    void *file;      /* FILE * of the temporary */
    char *tmp_path;
    char *final_path;
    size_t expected; /* elements announced in the header */
    size_t written;
    size_t elem_size; /* bytes per element: 4 (f32) or 2 (f16, bf16) */
} kt_writer;

/* kt_writer_begin writes float32 ('<f4'); kt_writer_begin_as also KT_F16 ('<f2') and KT_BF16, stored as
 * '<u2' (NumPy has no bfloat16; the readers take '<u2' as bf16 when told so, and NumPy users view the
 * uint16 bits as bf16). kt_writer_append takes fp32 values for an f32 array, kt_writer_append_u16 the bits
 * of 2-byte elements (host order; written little-endian) for the others. */
int kt_writer_begin(kt_writer *w, const char *path, size_t ndim, const size_t *shape, char *err, size_t err_len);
int kt_writer_begin_as(kt_writer *w, const char *path, kt_dtype dtype, size_t ndim, const size_t *shape, char *err,
                       size_t err_len);
int kt_writer_append(kt_writer *w, const float *data, size_t n, char *err, size_t err_len);
int kt_writer_append_u16(kt_writer *w, const uint16_t *data, size_t n, char *err, size_t err_len);
int kt_writer_commit(kt_writer *w, char *err, size_t err_len); /* fails if fewer elements than announced */
void kt_writer_abort(kt_writer *w);

#endif
