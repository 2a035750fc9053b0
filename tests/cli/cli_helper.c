/* Helper of the klcl CLI tests (test_cli.sh), standard C only so the tests need no Python:
 *
 *   cli_helper inputs DIR              writes every input file the tests use into DIR
 *   cli_helper close A.npy B.npy       per-element |a - b| <= 1e-5 max(1, |b|) (LOSSES.md's per-row bound)
 *   cli_helper close-grad A.npy B.npy  per-element |a - b| <= 1e-6 + 1e-4 |b| (the gradient bound)
 *   cli_helper scaled A.npy B.npy K    A == (float)(B * (float)(1/K)) bit for bit: the global denominator
 *   cli_helper column A.npy J B.npy    column J of A ([N, L]) equals B ([N]) bit for bit
 *   cli_helper near X Y                |x - y| <= 1e-5 max(1, |y|) for two numbers
 *   cli_helper leading A.npy B.npy     A ([N, Va]) is B ([N, Vb], Vb < Va) bit for bit in its first Vb
 *                                      columns, and exactly 0 in the others
 *   cli_helper affine A.npy B.npy S C  per-element A == S * B + C within 1e-5 max(1, |S * B + C|)
 *   cli_helper rounded A.npy B.npy     A (float16 '<f2' or bfloat16 bits '<u2') is float32 B rounded to that
 *                                      type: within half a unit in the last place of A's type, and A's
 *                                      type is the one asked for
 *
 * NaN matches NaN and equal infinities match. Exit 0 when the check holds, 1 with a message otherwise. The
 * files klcl reads are written here byte by byte (little-endian), so the data do not depend on any library
 * that the tool also uses. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { N = 36, V = 1000, B = 4, T = 9 };

static uint64_t rng = 0x2545F4914F6CDD1Dull;

/* A multiple of 1/32 in [-255/32, 255/32]: exactly representable in fp32, fp16 and bf16 alike, so one set
 * of values can be written in all three types and must give identical results. */
static float draw(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((int)(rng % 511) - 255) / 32.0f;
}

static uint16_t to_half(float x) /* exact for the values draw() makes and for 0 */
{
    uint32_t sign = x < 0 ? 0x8000u : 0;
    float a = fabsf(x);
    if (a == 0.0f) return (uint16_t)sign;
    int e;
    float f = frexpf(a, &e); /* a = f * 2^e, f in [0.5, 1) */
    uint32_t mant = (uint32_t)((f * 2.0f - 1.0f) * 1024.0f);
    return (uint16_t)(sign | (uint32_t)(e - 1 + 15) << 10 | mant);
}

static uint16_t to_bf16(float x) /* exact: the values have at most 8 significant bits */
{
    uint32_t b;
    memcpy(&b, &x, 4);
    return (uint16_t)(b >> 16);
}

/* ---------------------------------------------------------------------------------------------------- */
/* .npy and .safetensors writing                                                                            */

static FILE *create(const char *dir, const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        exit(1);
    }
    return f;
}

/* Header dict given literally (so malformed ones can be written too), padded to 64 bytes like NumPy. */
static void npy_header(FILE *f, const char *dict)
{
    size_t len = strlen(dict), total = 10 + len + 1, pad = (64 - total % 64) % 64;
    size_t hlen = len + pad + 1;
    fwrite("\x93NUMPY\x01\x00", 1, 8, f);
    fputc((int)(hlen & 0xff), f);
    fputc((int)(hlen >> 8), f);
    fputs(dict, f);
    for (size_t i = 0; i < pad; i++) fputc(' ', f);
    fputc('\n', f);
}

static void put_le(FILE *f, uint64_t v, int bytes)
{
    for (int i = 0; i < bytes; i++) fputc((int)(v >> (8 * i)) & 0xff, f);
}

static void put_f32(FILE *f, float x)
{
    uint32_t b;
    memcpy(&b, &x, 4);
    put_le(f, b, 4);
}

typedef enum { W_F32, W_F16, W_BF16 } wtype;

static void put_value(FILE *f, float x, wtype t)
{
    if (t == W_F32)
        put_f32(f, x);
    else
        put_le(f, t == W_F16 ? to_half(x) : to_bf16(x), 2);
}

static void write_npy(const char *dir, const char *name, const char *descr, const char *shape, const float *x,
                      size_t count, wtype t)
{
    char dict[256];
    snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': %s, }", descr, shape);
    FILE *f = create(dir, name);
    npy_header(f, dict);
    for (size_t i = 0; i < count; i++) put_value(f, x[i], t);
    fclose(f);
}

static void write_labels(const char *dir, const char *name, const char *descr, const int64_t *y, size_t n)
{
    char dict[256];
    int bytes = descr[2] == '8' ? 8 : 4;
    snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (%zu,), }", descr, n);
    FILE *f = create(dir, name);
    npy_header(f, dict);
    for (size_t i = 0; i < n; i++) put_le(f, (uint64_t)y[i], bytes);
    fclose(f);
}

typedef struct st_tensor {
    const char *name, *dtype;
    const float *x;
    wtype t;
    int ndim;
    size_t shape[3];
} st_tensor;

static void write_safetensors(const char *dir, const char *name, const st_tensor *ts, int count)
{
    char header[2048];
    size_t pos = 0, offset = 0;
    pos += (size_t)snprintf(header + pos, sizeof header - pos, "{\"__metadata__\": {\"format\": \"pt\"}");
    for (int i = 0; i < count; i++) {
        size_t elems = 1;
        for (int d = 0; d < ts[i].ndim; d++) elems *= ts[i].shape[d];
        size_t bytes = elems * (ts[i].t == W_F32 ? 4 : 2);
        pos += (size_t)snprintf(header + pos, sizeof header - pos, ", \"%s\": {\"dtype\": \"%s\", \"shape\": [",
                                ts[i].name, ts[i].dtype);
        for (int d = 0; d < ts[i].ndim; d++)
            pos += (size_t)snprintf(header + pos, sizeof header - pos, "%s%zu", d ? ", " : "", ts[i].shape[d]);
        pos += (size_t)snprintf(header + pos, sizeof header - pos, "], \"data_offsets\": [%zu, %zu]}", offset,
                                offset + bytes);
        offset += bytes;
    }
    pos += (size_t)snprintf(header + pos, sizeof header - pos, "}");
    while (pos % 8) header[pos++] = ' '; /* the format pads the header to 8 bytes */
    FILE *f = create(dir, name);
    put_le(f, pos, 8);
    fwrite(header, 1, pos, f);
    for (int i = 0; i < count; i++) {
        size_t elems = 1;
        for (int d = 0; d < ts[i].ndim; d++) elems *= ts[i].shape[d];
        for (size_t k = 0; k < elems; k++) put_value(f, ts[i].x[k], ts[i].t);
    }
    fclose(f);
}

static int make_inputs(const char *dir)
{
    static float teacher[N * V], student[N * V];
    int64_t labels[N];
    for (size_t i = 0; i < (size_t)N * V; i++) {
        teacher[i] = draw();
        /* The student follows the teacher loosely: related but not equal distributions. */
        student[i] = roundf((0.6f * teacher[i] + 0.5f * draw()) * 32.0f) / 32.0f;
        if (fabsf(student[i]) > 255.0f / 32.0f) student[i] = copysignf(255.0f / 32.0f, student[i]);
    }
    for (int i = 0; i < N; i++) labels[i] = i % 7 == 3 ? -100 : (int64_t)((i * 7919) % V);

    /* Valid inputs: the same values in every type and layout. */
    write_npy(dir, "t.npy", "<f4", "(36, 1000)", teacher, (size_t)N * V, W_F32);
    write_npy(dir, "s.npy", "<f4", "(36, 1000)", student, (size_t)N * V, W_F32);
    write_npy(dir, "t3.npy", "<f4", "(4, 9, 1000)", teacher, (size_t)N * V, W_F32);
    write_npy(dir, "s3.npy", "<f4", "(4, 9, 1000)", student, (size_t)N * V, W_F32);
    write_npy(dir, "t16.npy", "<f2", "(36, 1000)", teacher, (size_t)N * V, W_F16);
    write_npy(dir, "s16.npy", "<f2", "(36, 1000)", student, (size_t)N * V, W_F16);
    write_npy(dir, "tbf.npy", "<u2", "(36, 1000)", teacher, (size_t)N * V, W_BF16);
    write_npy(dir, "sbf.npy", "|V2", "(36, 1000)", student, (size_t)N * V, W_BF16);
    write_labels(dir, "y.npy", "<i8", labels, N);
    write_labels(dir, "y32.npy", "<i4", labels, N);
    st_tensor pair[] = {{"teacher", "F32", teacher, W_F32, 2, {N, V, 0}},
                        {"student", "BF16", student, W_BF16, 3, {B, T, V}}};
    write_safetensors(dir, "pair.safetensors", pair, 2);
    st_tensor one[] = {{"logits", "F16", student, W_F16, 2, {N, V, 0}}};
    write_safetensors(dir, "student16.safetensors", one, 1);

    /* LOSSES.md's worked example: P = (0.7, 0.3), Q = (0.5, 0.5) as log-probabilities; kl = 0.08228. */
    float wp[2] = {logf(0.7f), logf(0.3f)}, wq[2] = {logf(0.5f), logf(0.5f)};
    write_npy(dir, "wt.npy", "<f4", "(1, 2)", wp, 2, W_F32);
    write_npy(dir, "ws.npy", "<f4", "(1, 2)", wq, 2, W_F32);

    /* Non-finite rows: NaN in the student's row 4, +inf in the teacher's row 5, all -inf in row 30. */
    static float tn[N * V], sn[N * V];
    memcpy(tn, teacher, sizeof tn);
    memcpy(sn, student, sizeof sn);
    sn[4 * V + 17] = NAN;
    tn[5 * V + 2] = INFINITY;
    for (int v = 0; v < V; v++) sn[30 * V + v] = -INFINITY;
    write_npy(dir, "tn.npy", "<f4", "(36, 1000)", tn, (size_t)N * V, W_F32);
    write_npy(dir, "sn.npy", "<f4", "(36, 1000)", sn, (size_t)N * V, W_F32);

    /* Malformed inputs, one per class of error. */
    FILE *f = create(dir, "truncated.npy"); /* header says 36 x 1000, data stop early */
    npy_header(f, "{'descr': '<f4', 'fortran_order': False, 'shape': (36, 1000), }");
    for (int i = 0; i < 100; i++) put_f32(f, teacher[i]);
    fclose(f);
    f = create(dir, "magic.npy");
    fputs("PK\x03\x04 this is a zip file, not an array", f);
    fclose(f);
    write_npy(dir, "shape.npy", "<f4", "(36, 1001)", teacher, (size_t)N * V, W_F32); /* shape needs more */
    write_npy(dir, "f64.npy", "<f8", "(36, 500)", teacher, (size_t)N * V, W_F32);    /* unsupported dtype */
    f = create(dir, "fortran.npy");
    npy_header(f, "{'descr': '<f4', 'fortran_order': True, 'shape': (36, 1000), }");
    for (size_t i = 0; i < (size_t)N * V; i++) put_f32(f, teacher[i]);
    fclose(f);
    write_npy(dir, "rows35.npy", "<f4", "(35, 1000)", student, (size_t)35 * V, W_F32);
    write_npy(dir, "v999.npy", "<f4", "(36, 999)", student, (size_t)N * 999, W_F32);
    write_npy(dir, "flat.npy", "<f4", "(36000,)", student, (size_t)N * V, W_F32);
    write_npy(dir, "ylabels_f32.npy", "<f4", "(36,)", student, N, W_F32);
    write_labels(dir, "y35.npy", "<i8", labels, 35);
    int64_t bad[N];
    memcpy(bad, labels, sizeof bad);
    bad[N - 1] = V; /* the last row: found only at the end if labels were checked chunk by chunk */
    write_labels(dir, "ybad.npy", "<i8", bad, N);
    bad[N - 1] = (int64_t)1 << 40;
    write_labels(dir, "ybig.npy", "<i8", bad, N);
    write_labels(dir, "yint32.npy", "<i4", labels, N);
    st_tensor st16[] = {{"a", "F16", student, W_F16, 2, {N, V, 0}}, {"b", "F16", student, W_F16, 2, {N, V, 0}}};
    write_safetensors(dir, "two.safetensors", st16, 2);

    /* Heads of different widths: W = V - K columns, and the same rows padded back to V by hand. */
    enum { K = 8, W = V - K };
    static float narrow_t[N * W], narrow_s[N * W], pad_t[N * V], pad_s[N * V];
    for (int i = 0; i < N; i++)
        for (int v = 0; v < V; v++) {
            if (v < W) {
                narrow_t[i * W + v] = teacher[i * V + v];
                narrow_s[i * W + v] = student[i * V + v];
            }
            pad_t[i * V + v] = v < W ? teacher[i * V + v] : -INFINITY;
            pad_s[i * V + v] = v < W ? student[i * V + v] : -INFINITY;
        }
    write_npy(dir, "tw.npy", "<f4", "(36, 992)", narrow_t, (size_t)N * W, W_F32);
    write_npy(dir, "sw.npy", "<f4", "(36, 992)", narrow_s, (size_t)N * W, W_F32);
    write_npy(dir, "tw16.npy", "<f2", "(36, 992)", narrow_t, (size_t)N * W, W_F16);
    write_npy(dir, "swbf.npy", "<u2", "(36, 992)", narrow_s, (size_t)N * W, W_BF16);
    write_npy(dir, "tpad.npy", "<f4", "(36, 1000)", pad_t, (size_t)N * V, W_F32);
    write_npy(dir, "spad.npy", "<f4", "(36, 1000)", pad_s, (size_t)N * V, W_F32);
    int64_t narrow_labels[N];
    for (int i = 0; i < N; i++) narrow_labels[i] = labels[i] < 0 ? labels[i] : labels[i] % W;
    write_labels(dir, "yw.npy", "<i8", narrow_labels, N);
    narrow_labels[10] = W + 3; /* a column of the student only: fine under pad, out of range under truncate */
    write_labels(dir, "yw_bad.npy", "<i8", narrow_labels, N);

    /* Teacher log-probabilities (log-softmax in double), and the same shifted by log(1/2): a teacher whose
     * probabilities sum to 1/2, which only a reader that takes them as they are can tell from logits. */
    static float logp[N * V], logp_half[N * V];
    for (int i = 0; i < N; i++) {
        double m = -INFINITY, sum = 0.0;
        for (int v = 0; v < V; v++) m = teacher[i * V + v] > m ? teacher[i * V + v] : m;
        for (int v = 0; v < V; v++) sum += exp(teacher[i * V + v] - m);
        for (int v = 0; v < V; v++) {
            double lp = teacher[i * V + v] - m - log(sum);
            logp[i * V + v] = (float)lp;
            logp_half[i * V + v] = (float)(lp + log(0.5));
        }
    }
    write_npy(dir, "tlogp.npy", "<f4", "(36, 1000)", logp, (size_t)N * V, W_F32);
    write_npy(dir, "tlogp_half.npy", "<f4", "(36, 1000)", logp_half, (size_t)N * V, W_F32);
    return 0;
}

/* ---------------------------------------------------------------------------------------------------- */
/* Reading what klcl writes: float32, float16 or bfloat16 ('<u2') .npy, version 1.0, C order             */

static float half_to_float(uint16_t h) /* written out here, independent of the library's conversions */
{
    int e = h >> 10 & 0x1f, m = h & 0x3ff;
    float v = e == 0 ? ldexpf((float)m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexpf((float)(m | 0x400), e - 25);
    return h & 0x8000 ? -v : v;
}

static const char *read_descr = "<f4"; /* the type the next read_npy expects */

static float *read_npy(const char *path, size_t *rows, size_t *cols)
{
    FILE *f = fopen(path, "rb");
    unsigned char pre[10];
    char header[65536];
    float *x = NULL;
    if (!f || fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY\x01\x00", 8) != 0) goto bad;
    size_t hlen = pre[8] | (size_t)pre[9] << 8;
    if (hlen >= sizeof header || fread(header, 1, hlen, f) != hlen) goto bad;
    header[hlen] = '\0';
    const char *shape = strstr(header, "'shape': (");
    char want[16];
    snprintf(want, sizeof want, "'%s'", read_descr);
    if (!strstr(header, want) || !strstr(header, "'fortran_order': False") || !shape) goto bad;
    size_t dims[2] = {0, 1};
    int nd = 0;
    for (const char *p = shape + strlen("'shape': ("); *p != ')';) {
        char *end;
        if (nd == 2) goto bad;
        dims[nd++] = (size_t)strtoull(p, &end, 10);
        if (end == p) goto bad;
        for (p = end; *p == ',' || *p == ' ';) p++;
    }
    if (nd == 0) goto bad;
    *rows = dims[0];
    *cols = dims[1];
    size_t count = *rows * *cols;
    x = malloc(count ? count * sizeof *x : 1);
    if (!x) goto bad;
    if (!strcmp(read_descr, "<f4")) {
        if (fread(x, sizeof *x, count, f) != count) goto bad;
    } else {
        for (size_t i = 0; i < count; i++) {
            int lo = fgetc(f), hi = fgetc(f);
            if (lo == EOF || hi == EOF) goto bad;
            uint16_t h = (uint16_t)(lo | hi << 8);
            if (read_descr[1] == 'f') {
                x[i] = half_to_float(h);
            } else {
                uint32_t b = (uint32_t)h << 16;
                memcpy(&x[i], &b, 4);
            }
        }
    }
    if (fgetc(f) != EOF) goto bad;
    fclose(f);
    return x;
bad:
    fprintf(stderr, "cli_helper: %s: not a %s .npy of the expected form\n", path, read_descr);
    if (f) fclose(f);
    free(x);
    exit(1);
}

static int same(double a, double b)
{
    return (isnan(a) && isnan(b)) || a == b;
}

static int compare(const char *pa, const char *pb, int grad)
{
    size_t ra, ca, rb, cb;
    float *a = read_npy(pa, &ra, &ca), *b = read_npy(pb, &rb, &cb);
    if (ra != rb || ca != cb) {
        fprintf(stderr, "cli_helper: %s is %zu x %zu, %s is %zu x %zu\n", pa, ra, ca, pb, rb, cb);
        return 1;
    }
    double worst = 0.0;
    size_t at = 0;
    for (size_t i = 0; i < ra * ca; i++) {
        double x = a[i], y = b[i];
        if (same(x, y)) continue;
        double tol = grad ? 1e-6 + 1e-4 * fabs(y) : 1e-5 * (fabs(y) > 1.0 ? fabs(y) : 1.0);
        double ratio = isfinite(x) && isfinite(y) ? fabs(x - y) / tol : INFINITY;
        if (ratio > worst) {
            worst = ratio;
            at = i;
        }
    }
    printf("%s vs %s: largest error %.3g of the tolerance (element %zu)\n", pa, pb, worst, at);
    free(a);
    free(b);
    return worst <= 1.0 ? 0 : 1;
}

static int scaled(const char *pa, const char *pb, const char *k_text)
{
    size_t ra, ca, rb, cb;
    float *a = read_npy(pa, &ra, &ca), *b = read_npy(pb, &rb, &cb);
    float factor = (float)(1.0 / strtod(k_text, NULL));
    int rc = ra != rb || ca != cb;
    for (size_t i = 0; !rc && i < ra * ca; i++)
        if (!same(a[i], b[i] * factor)) {
            fprintf(stderr, "cli_helper: element %zu: %.9g != %.9g * %.9g\n", i, (double)a[i], (double)b[i],
                    (double)factor);
            rc = 1;
        }
    free(a);
    free(b);
    return rc;
}

static int column(const char *pa, const char *j_text, const char *pb)
{
    size_t ra, ca, rb, cb, j = (size_t)strtoul(j_text, NULL, 10);
    float *a = read_npy(pa, &ra, &ca), *b = read_npy(pb, &rb, &cb);
    int rc = ra != rb || cb != 1 || j >= ca;
    for (size_t i = 0; !rc && i < ra; i++)
        if (memcmp(&a[i * ca + j], &b[i], sizeof(float)) != 0) {
            fprintf(stderr, "cli_helper: row %zu: column %zu of %s differs from %s\n", i, j, pa, pb);
            rc = 1;
        }
    if (ra != rb || cb != 1 || j >= ca) fprintf(stderr, "cli_helper: shapes do not fit\n");
    free(a);
    free(b);
    return rc;
}

static int leading(const char *pa, const char *pb)
{
    size_t ra, ca, rb, cb;
    float *a = read_npy(pa, &ra, &ca), *b = read_npy(pb, &rb, &cb);
    int rc = ra != rb || cb >= ca;
    if (rc) fprintf(stderr, "cli_helper: %s is %zu x %zu, %s is %zu x %zu\n", pa, ra, ca, pb, rb, cb);
    for (size_t i = 0; !rc && i < ra; i++)
        for (size_t v = 0; !rc && v < ca; v++) {
            float want = v < cb ? b[i * cb + v] : 0.0f;
            if (memcmp(&a[i * ca + v], &want, sizeof want) != 0 && !(v < cb && same(a[i * ca + v], want))) {
                fprintf(stderr, "cli_helper: row %zu column %zu: %.9g, expected %.9g\n", i, v, (double)a[i * ca + v],
                        (double)want);
                rc = 1;
            }
        }
    free(a);
    free(b);
    return rc;
}

static int affine(const char *pa, const char *pb, const char *s_text, const char *c_text)
{
    size_t ra, ca, rb, cb;
    float *a = read_npy(pa, &ra, &ca), *b = read_npy(pb, &rb, &cb);
    double scale = strtod(s_text, NULL), shift = strtod(c_text, NULL);
    int rc = ra != rb || ca != cb;
    for (size_t i = 0; !rc && i < ra * ca; i++) {
        double want = scale * b[i] + shift;
        if (!same(a[i], want) && !(fabs(a[i] - want) <= 1e-5 * (fabs(want) > 1.0 ? fabs(want) : 1.0))) {
            fprintf(stderr, "cli_helper: element %zu: %.9g, expected %g * %.9g + %g = %.9g\n", i, (double)a[i], scale,
                    (double)b[i], shift, want);
            rc = 1;
        }
    }
    free(a);
    free(b);
    return rc;
}

static int rounded(const char *pa, const char *pb)
{
    size_t ra, ca, rb, cb, nonzero = 0;
    FILE *f = fopen(pa, "rb");
    char head[256] = "";
    if (f) {
        size_t got = fread(head, 1, sizeof head - 1, f);
        head[got] = '\0';
        fclose(f);
    }
    int bf16 = strstr(head + 10, "'<u2'") != NULL; /* the dict starts after the magic and its NUL byte */
    read_descr = bf16 ? "<u2" : "<f2";
    float *a = read_npy(pa, &ra, &ca);
    read_descr = "<f4";
    float *b = read_npy(pb, &rb, &cb);
    int rc = ra != rb || ca != cb;
    /* Half a unit in the last place: 2^-11 relative for fp16 (2^-25 absolute among its subnormals), 2^-8
     * relative for bf16. */
    for (size_t i = 0; !rc && i < ra * ca; i++) {
        double tol = bf16 ? ldexp(fabs(b[i]), -8) : ldexp(fabs(b[i]), -11) + ldexp(1.0, -25);
        if (!same(a[i], b[i]) && !(fabs((double)a[i] - b[i]) <= tol)) {
            fprintf(stderr, "cli_helper: element %zu: %.9g is not %.9g rounded to %s\n", i, (double)a[i], (double)b[i],
                    bf16 ? "bf16" : "f16");
            rc = 1;
        }
        nonzero += a[i] != 0.0f;
    }
    if (!rc && nonzero == 0) {
        fprintf(stderr, "cli_helper: %s holds only zeros\n", pa);
        rc = 1;
    }
    free(a);
    free(b);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "inputs")) return make_inputs(argv[2]);
    if (argc == 4 && !strcmp(argv[1], "close")) return compare(argv[2], argv[3], 0);
    if (argc == 4 && !strcmp(argv[1], "close-grad")) return compare(argv[2], argv[3], 1);
    if (argc == 5 && !strcmp(argv[1], "scaled")) return scaled(argv[2], argv[3], argv[4]);
    if (argc == 5 && !strcmp(argv[1], "column")) return column(argv[2], argv[3], argv[4]);
    if (argc == 6 && !strcmp(argv[1], "affine")) return affine(argv[2], argv[3], argv[4], argv[5]);
    if (argc == 4 && !strcmp(argv[1], "rounded")) return rounded(argv[2], argv[3]);
    if (argc == 4 && !strcmp(argv[1], "leading")) return leading(argv[2], argv[3]);
    if (argc == 4 && !strcmp(argv[1], "near")) {
        char *e1, *e2;
        double x = strtod(argv[2], &e1), y = strtod(argv[3], &e2);
        if (*e1 || *e2 || e1 == argv[2] || e2 == argv[3]) {
            fprintf(stderr, "cli_helper near: '%s' or '%s' is not a number\n", argv[2], argv[3]);
            return 1;
        }
        int ok = same(x, y) || fabs(x - y) <= 1e-5 * (fabs(y) > 1.0 ? fabs(y) : 1.0);
        if (!ok) fprintf(stderr, "cli_helper near: %s and %s differ by more than 1e-5 relative\n", argv[2], argv[3]);
        return !ok;
    }
    fprintf(stderr, "usage: cli_helper inputs DIR | close A B | close-grad A B | scaled A B K | column A J B | "
                    "near X Y | affine A B S C | rounded A B | leading A B\n");
    return 2;
}
