/* Array files for the klcl tool: .npy and .safetensors readers, an .npy writer.
 *
 * kt_open maps the file and hands the bytes to parse_buffer, which works on memory only (the fuzzers in
 * fuzz/ include this file and call parse_npy and parse_safetensors on their input directly). Every length
 * read from a file is compared with what is left of the buffer before it is used, with overflow-checked
 * arithmetic, so the parsers never look outside [buf, buf + size).
 *
 * Values are read with explicit little-endian byte loads (memcpy on little-endian hosts, where the
 * compiler turns them into plain loads): data inside the map has no alignment guarantee. */
#define _POSIX_C_SOURCE 200809L

#include "arrays.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define KT_MAX_DIMS 8
#define KT_MAX_NESTING 64   /* JSON values nested deeper than this are rejected: bounds the recursion */
#define KT_NAME_CAP 1024    /* decoded tensor names longer than this can be listed but not selected */
#define KT_LISTED_NAMES 5   /* names quoted in "not found" and "choose one" messages */

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define KT_HOST_LE 1
#else
#define KT_HOST_LE 0
#endif

/* ---------------------------------------------------------------------------------------------------- */
/* Small helpers */

__attribute__((format(printf, 3, 4))) static void set_err(char *err, size_t err_len, const char *fmt, ...)
{
    va_list ap;
    if (!err || err_len == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, err_len, fmt, ap);
    va_end(ap);
}

static uint16_t ld16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static uint32_t ld32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t ld64(const uint8_t *p) { return (uint64_t)ld32(p) | (uint64_t)ld32(p + 4) << 32; }

static float bits_to_float(uint32_t bits)
{
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* IEEE binary16 -> binary32, exact for every input: subnormals are renormalised, infinities kept, NaN
 * payloads shifted into the top of the binary32 mantissa (so a signalling NaN stays a NaN). */
static float half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t bits;

    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (mant << 13); /* rebias: 127 - 15 */
    } else if (mant == 0) {
        bits = sign;
    } else {
        /* value = mant * 2^-24: shift the leading one up to the implicit bit, one exponent step each. */
        uint32_t e = 113;
        while (!(mant & 0x400u)) {
            mant <<= 1;
            e--;
        }
        bits = sign | (e << 23) | ((mant & 0x3ffu) << 13);
    }
    return bits_to_float(bits);
}

/* a * b into *out; returns -1 when the product does not fit in size_t. */
static int mul_size(size_t a, size_t b, size_t *out)
{
    if (a != 0 && b > SIZE_MAX / a)
        return -1;
    *out = a * b;
    return 0;
}

/* Copies a name for a message: non-printable bytes become '?', long names end in "...". */
static void printable(char *dst, size_t cap, const char *src, size_t len)
{
    size_t i, n = len < cap - 1 ? len : cap - 1;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)src[i];
        dst[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    dst[n] = '\0';
    if (len > n && cap > 4)
        memcpy(dst + cap - 4, "...", 4);
}

/* Checks a shape and gives its element and byte counts. `tensor` (NULL for .npy) is named in messages. */
static int check_shape(const char *file, const char *tensor, const size_t *shape, size_t ndim, size_t elem_size,
                       size_t *count, size_t *bytes, char *err, size_t err_len)
{
    char who[160];
    size_t i, n = 1;
    if (tensor)
        snprintf(who, sizeof who, "tensor '%s'", tensor);
    else
        snprintf(who, sizeof who, "array");
    if (ndim == 0) {
        set_err(err, err_len, "%s: %s is 0-d (a scalar): only 1 to %d dimensions are supported", file, who,
                KT_MAX_DIMS);
        return -1;
    }
    if (ndim > KT_MAX_DIMS) {
        set_err(err, err_len, "%s: %s has %zu dimensions: at most %d are supported", file, who, ndim, KT_MAX_DIMS);
        return -1;
    }
    for (i = 0; i < ndim; i++) {
        if (shape[i] == 0) {
            set_err(err, err_len, "%s: %s is an empty array (dimension %zu is 0)", file, who, i);
            return -1;
        }
    }
    /* Zero dimensions are out, so an overflow cannot hide behind a later factor of 0. */
    for (i = 0; i < ndim; i++) {
        if (mul_size(n, shape[i], &n) != 0) {
            set_err(err, err_len, "%s: shape of %s overflows: the element count does not fit in size_t", file, who);
            return -1;
        }
    }
    if (mul_size(n, elem_size, bytes) != 0) {
        set_err(err, err_len, "%s: shape of %s overflows: the byte count does not fit in size_t", file, who);
        return -1;
    }
    *count = n;
    return 0;
}

static void fill_array(kt_array *a, const uint8_t *data, kt_dtype dt, size_t elem_size, const size_t *shape,
                       size_t ndim)
{
    size_t i;
    memset(a, 0, sizeof *a);
    a->data = data;
    a->dtype = dt;
    a->elem_size = elem_size;
    a->ndim = ndim;
    a->rows = 1;
    for (i = 0; i < ndim; i++)
        a->shape[i] = shape[i];
    /* check_shape has bounded the product, so these cannot overflow. */
    if (ndim == 1) {
        a->rows = shape[0];
        a->cols = 1;
    } else {
        for (i = 0; i + 1 < ndim; i++)
            a->rows *= shape[i];
        a->cols = shape[ndim - 1];
    }
}

/* ---------------------------------------------------------------------------------------------------- */
/* Header scanner: JSON (safetensors) or the Python dict literal of .npy. Bounded by [p, end); the first
 * error is kept, later calls fail at once. */

typedef struct scanner {
    const uint8_t *begin, *p, *end;
    int python;        /* .npy: Python literals ('...' strings, True/False, tuples); else strict JSON */
    const char *file;
    const char *kind;  /* for messages: ".npy header" or ".safetensors header" */
    char *err;
    size_t err_len;
    int failed;
} scanner;

__attribute__((format(printf, 2, 3))) static int sc_fail(scanner *s, const char *fmt, ...)
{
    char what[256];
    va_list ap;
    if (s->failed)
        return -1;
    s->failed = 1;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    set_err(s->err, s->err_len, "%s: malformed %s (at byte %zu of the header): %s", s->file, s->kind,
            (size_t)(s->p - s->begin), what);
    return -1;
}

static void sc_ws(scanner *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

/* The next non-blank byte, or -1 at the end. */
static int sc_peek(scanner *s)
{
    sc_ws(s);
    return s->p < s->end ? *s->p : -1;
}

static int sc_expect(scanner *s, char c)
{
    int got = sc_peek(s);
    if (got == c) {
        s->p++;
        return 0;
    }
    if (got < 0)
        return sc_fail(s, "unexpected end, expected '%c'", c);
    return sc_fail(s, "expected '%c'", c);
}

/* Matches a bare word (true, False, null...) followed by a non-identifier byte. */
static int sc_word(scanner *s, const char *w)
{
    size_t n = strlen(w);
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, w, n) != 0)
        return 0;
    if ((size_t)(s->end - s->p) > n) {
        uint8_t c = s->p[n];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_')
            return 0;
    }
    s->p += n;
    return 1;
}

static int hex4(scanner *s, uint32_t *v)
{
    int i;
    *v = 0;
    if (s->end - s->p < 4)
        return sc_fail(s, "truncated \\u escape");
    for (i = 0; i < 4; i++) {
        uint8_t c = *s->p++;
        uint32_t d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return sc_fail(s, "bad hex digit in \\u escape");
        *v = *v << 4 | d;
    }
    return 0;
}

/* Decoded string output: keeps the first cap - 1 bytes (NUL-terminated), counts them all. */
typedef struct strbuf {
    char *buf;
    size_t cap, len;
} strbuf;

static void sb_put(strbuf *b, uint8_t c)
{
    if (b->buf && b->len + 1 < b->cap)
        b->buf[b->len] = (char)c;
    b->len++;
}

static void sb_utf8(strbuf *b, uint32_t cp)
{
    if (cp < 0x80) {
        sb_put(b, (uint8_t)cp);
    } else if (cp < 0x800) {
        sb_put(b, (uint8_t)(0xc0 | cp >> 6));
        sb_put(b, (uint8_t)(0x80 | (cp & 0x3f)));
    } else if (cp < 0x10000) {
        sb_put(b, (uint8_t)(0xe0 | cp >> 12));
        sb_put(b, (uint8_t)(0x80 | ((cp >> 6) & 0x3f)));
        sb_put(b, (uint8_t)(0x80 | (cp & 0x3f)));
    } else {
        sb_put(b, (uint8_t)(0xf0 | cp >> 18));
        sb_put(b, (uint8_t)(0x80 | ((cp >> 12) & 0x3f)));
        sb_put(b, (uint8_t)(0x80 | ((cp >> 6) & 0x3f)));
        sb_put(b, (uint8_t)(0x80 | (cp & 0x3f)));
    }
}

/* JSON \uXXXX, with surrogate pairs joined; a lone surrogate is an error. */
static int sc_unicode(scanner *s, strbuf *b)
{
    uint32_t hi, lo;
    if (hex4(s, &hi) != 0)
        return -1;
    if (hi >= 0xdc00 && hi <= 0xdfff)
        return sc_fail(s, "lone low surrogate in \\u escape");
    if (hi >= 0xd800 && hi <= 0xdbff) {
        if (s->end - s->p < 2 || s->p[0] != '\\' || s->p[1] != 'u')
            return sc_fail(s, "high surrogate without its low half");
        s->p += 2;
        if (hex4(s, &lo) != 0)
            return -1;
        if (lo < 0xdc00 || lo > 0xdfff)
            return sc_fail(s, "high surrogate without its low half");
        hi = 0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00);
    }
    sb_utf8(b, hi);
    return 0;
}

static int sc_escape(scanner *s, strbuf *b)
{
    uint8_t c;
    if (s->p >= s->end)
        return sc_fail(s, "unterminated string");
    c = *s->p++;
    switch (c) {
    case '"': case '\\': sb_put(b, c); return 0;
    case 'n': sb_put(b, '\n'); return 0;
    case 't': sb_put(b, '\t'); return 0;
    case 'r': sb_put(b, '\r'); return 0;
    default: break;
    }
    if (s->python && c == '\'') {
        sb_put(b, c);
        return 0;
    }
    if (!s->python) {
        switch (c) {
        case '/': sb_put(b, c); return 0;
        case 'b': sb_put(b, '\b'); return 0;
        case 'f': sb_put(b, '\f'); return 0;
        case 'u': return sc_unicode(s, b);
        default: break;
        }
    }
    s->p--;
    return sc_fail(s, "unsupported escape '\\%c'", (c >= 0x20 && c < 0x7f) ? c : '?');
}

/* A quoted string ("..." in JSON; '...' or "..." in Python). Control characters are rejected, as JSON
 * requires: a header is text. `buf` may be NULL to skip the string; *len gets the full decoded length. */
static int sc_string(scanner *s, char *buf, size_t cap, size_t *len)
{
    strbuf b = {buf, cap, 0};
    int c = sc_peek(s);
    uint8_t quote;
    if (c != '"' && !(s->python && c == '\''))
        return c < 0 ? sc_fail(s, "unexpected end, expected a string") : sc_fail(s, "expected a string");
    quote = (uint8_t)c;
    s->p++;
    for (;;) {
        uint8_t ch;
        if (s->p >= s->end)
            return sc_fail(s, "unterminated string");
        ch = *s->p;
        if (ch == quote)
            break;
        if (ch < 0x20)
            return sc_fail(s, "control character 0x%02x in a string", ch);
        s->p++;
        if (ch == '\\') {
            if (sc_escape(s, &b) != 0)
                return -1;
        } else {
            sb_put(&b, ch);
        }
    }
    s->p++;
    if (buf && cap)
        buf[b.len < cap ? b.len : cap - 1] = '\0';
    if (len)
        *len = b.len;
    return 0;
}

/* An unsigned integer for a shape or an offset: no sign, no fraction, no exponent, no leading zero, and
 * it must fit in size_t. Python 2 longs ("3L") appear in old .npy headers and are accepted there. */
static int sc_uint(scanner *s, size_t *v)
{
    int c = sc_peek(s);
    size_t n = 0;
    if (c == '-')
        return sc_fail(s, "negative number where a size was expected");
    if (c < '0' || c > '9')
        return c < 0 ? sc_fail(s, "unexpected end, expected a number") : sc_fail(s, "expected an unsigned integer");
    if (c == '0' && s->end - s->p > 1 && s->p[1] >= '0' && s->p[1] <= '9')
        return sc_fail(s, "number with a leading zero");
    while (s->p < s->end && *s->p >= '0' && *s->p <= '9') {
        size_t d = (size_t)(*s->p - '0');
        if (n > (SIZE_MAX - d) / 10)
            return sc_fail(s, "number too large for size_t");
        n = n * 10 + d;
        s->p++;
    }
    if (s->python && s->p < s->end && (*s->p == 'L' || *s->p == 'l'))
        s->p++;
    if (s->p < s->end && (*s->p == '.' || *s->p == 'e' || *s->p == 'E'))
        return sc_fail(s, "expected an unsigned integer, not a fraction");
    *v = n;
    return 0;
}

/* A list of unsigned integers between `open` and `close`: stores the first `cap`, counts them all. */
static int sc_uint_list(scanner *s, char open, char close, size_t *vals, size_t cap, size_t *count)
{
    size_t n = 0;
    if (sc_expect(s, open) != 0)
        return -1;
    for (;;) {
        size_t v = 0;
        int c = sc_peek(s);
        if (c == close && (n == 0 || s->python)) /* Python allows "(3,)"; JSON no trailing comma */
            break;
        if (sc_uint(s, &v) != 0)
            return -1;
        if (n < cap)
            vals[n] = v;
        n++;
        c = sc_peek(s);
        if (c == ',') {
            s->p++;
            continue;
        }
        if (c == close)
            break;
        return c < 0 ? sc_fail(s, "unexpected end in a list") : sc_fail(s, "expected ',' or '%c' in a list", close);
    }
    s->p++;
    *count = n;
    return 0;
}

static int sc_skip_value(scanner *s, int depth);

/* Skips the members of an object or array after its opening bracket. */
static int sc_skip_members(scanner *s, int depth, int object)
{
    char close = object ? '}' : ']';
    if (sc_peek(s) == close) {
        s->p++;
        return 0;
    }
    for (;;) {
        int c;
        if (object && (sc_string(s, NULL, 0, NULL) != 0 || sc_expect(s, ':') != 0))
            return -1;
        if (sc_skip_value(s, depth + 1) != 0)
            return -1;
        c = sc_peek(s);
        if (c == ',') {
            s->p++;
            continue;
        }
        if (c == close) {
            s->p++;
            return 0;
        }
        return c < 0 ? sc_fail(s, "unexpected end") : sc_fail(s, "expected ',' or '%c'", close);
    }
}

static int sc_skip_number(scanner *s)
{
    const uint8_t *start;
    if (s->p < s->end && *s->p == '-')
        s->p++;
    start = s->p;
    if (s->p < s->end && *s->p == '0')
        s->p++;
    else
        while (s->p < s->end && *s->p >= '0' && *s->p <= '9')
            s->p++;
    if (s->p == start)
        return sc_fail(s, "expected a value");
    if (s->p < s->end && *s->p == '.') {
        s->p++;
        start = s->p;
        while (s->p < s->end && *s->p >= '0' && *s->p <= '9')
            s->p++;
        if (s->p == start)
            return sc_fail(s, "digits expected after '.'");
    }
    if (s->p < s->end && (*s->p == 'e' || *s->p == 'E')) {
        s->p++;
        if (s->p < s->end && (*s->p == '+' || *s->p == '-'))
            s->p++;
        start = s->p;
        while (s->p < s->end && *s->p >= '0' && *s->p <= '9')
            s->p++;
        if (s->p == start)
            return sc_fail(s, "digits expected in exponent");
    }
    return 0;
}

/* Skips any JSON value (for __metadata__ and keys of a tensor entry that are not ours). The depth limit
 * keeps the recursion shallow whatever the file holds. */
static int sc_skip_value(scanner *s, int depth)
{
    int c = sc_peek(s);
    if (depth > KT_MAX_NESTING)
        return sc_fail(s, "values nested deeper than %d levels", KT_MAX_NESTING);
    switch (c) {
    case -1: return sc_fail(s, "unexpected end, expected a value");
    case '"': return sc_string(s, NULL, 0, NULL);
    case '{': s->p++; return sc_skip_members(s, depth, 1);
    case '[': s->p++; return sc_skip_members(s, depth, 0);
    default: break;
    }
    if (sc_word(s, "true") || sc_word(s, "false") || sc_word(s, "null"))
        return 0;
    return sc_skip_number(s);
}

/* After the closing '}': only blanks may follow (npy pads with spaces and a '\n', safetensors with spaces). */
static int sc_end(scanner *s)
{
    if (sc_peek(s) >= 0)
        return sc_fail(s, "unexpected text after the closing '}'");
    return 0;
}

/* Between members of the top-level dict: ',' then maybe '}' (Python allows a trailing comma), or '}'.
 * Returns 1 when the dict is closed, 0 for another member, -1 on error. */
static int sc_next_member(scanner *s)
{
    int c = sc_peek(s);
    if (c == '}') {
        s->p++;
        return 1;
    }
    if (c != ',')
        return c < 0 ? sc_fail(s, "unexpected end, expected ',' or '}'") : sc_fail(s, "expected ',' or '}'");
    s->p++;
    if (s->python && sc_peek(s) == '}') {
        s->p++;
        return 1;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------------- */
/* .npy */

typedef struct npy_dtype {
    const char *descr;
    kt_dtype dtype;
    size_t size;
} npy_dtype;

/* What the reader accepts. '=' is native order, which is little-endian on the hosts where the table
 * lists it; '|' (no order) only makes sense for the opaque 2-byte void type. */
static const npy_dtype npy_dtypes[] = {
    {"<f4", KT_F32, 4}, {"<f2", KT_F16, 2}, {"<i4", KT_I32, 4}, {"<i8", KT_I64, 8}, {"<u2", KT_U16, 2},
    {"|V2", KT_U16, 2},
#if KT_HOST_LE
    {"=f4", KT_F32, 4}, {"=f2", KT_F16, 2}, {"=i4", KT_I32, 4}, {"=i8", KT_I64, 8}, {"=u2", KT_U16, 2},
#endif
};

static int npy_descr(const char *file, const char *d, size_t len, kt_dtype *dt, size_t *es, char *err,
                     size_t err_len)
{
    char shown[40];
    size_t i;
    for (i = 0; i < sizeof npy_dtypes / sizeof npy_dtypes[0]; i++) {
        if (len == strlen(npy_dtypes[i].descr) && memcmp(d, npy_dtypes[i].descr, len) == 0) {
            *dt = npy_dtypes[i].dtype;
            *es = npy_dtypes[i].size;
            return 0;
        }
    }
    printable(shown, sizeof shown, d, len);
    if (len > 0 && d[0] == '>')
        set_err(err, err_len, "%s: unsupported dtype '%s': big-endian data is not supported", file, shown);
    else
        set_err(err, err_len, "%s: unsupported dtype '%s' (supported: <f4, <f2, <i4, <i8, <u2, |V2)", file, shown);
    return -1;
}

typedef struct npy_header {
    char descr[32];
    size_t descr_len;
    int fortran;
    size_t shape[KT_MAX_DIMS];
    size_t ndim;
    int have_descr, have_fortran, have_shape;
} npy_header;

/* One "'key': value" member of the header dict. */
static int npy_member(scanner *s, npy_header *h)
{
    char key[32];
    size_t klen;
    int c;
    if (sc_string(s, key, sizeof key, &klen) != 0 || sc_expect(s, ':') != 0)
        return -1;
    if (klen == 5 && memcmp(key, "descr", 5) == 0) {
        if (h->have_descr++)
            return sc_fail(s, "duplicate key 'descr'");
        c = sc_peek(s);
        if (c != '\'' && c != '"')
            return sc_fail(s, "'descr' is not a string (structured dtypes are not supported)");
        return sc_string(s, h->descr, sizeof h->descr, &h->descr_len);
    }
    if (klen == 13 && memcmp(key, "fortran_order", 13) == 0) {
        if (h->have_fortran++)
            return sc_fail(s, "duplicate key 'fortran_order'");
        sc_ws(s);
        if (sc_word(s, "True"))
            h->fortran = 1;
        else if (!sc_word(s, "False"))
            return sc_fail(s, "'fortran_order' must be True or False");
        return 0;
    }
    if (klen == 5 && memcmp(key, "shape", 5) == 0) {
        if (h->have_shape++)
            return sc_fail(s, "duplicate key 'shape'");
        return sc_uint_list(s, '(', ')', h->shape, KT_MAX_DIMS, &h->ndim);
    }
    printable(key, sizeof key, key, klen < sizeof key ? klen : sizeof key - 1);
    return sc_fail(s, "unexpected key '%s' (expected descr, fortran_order, shape)", key);
}

static int npy_dict(scanner *s, npy_header *h)
{
    int r;
    if (sc_expect(s, '{') != 0)
        return -1;
    if (sc_peek(s) == '}') {
        s->p++;
        return sc_end(s);
    }
    do {
        if (npy_member(s, h) != 0)
            return -1;
    } while ((r = sc_next_member(s)) == 0);
    return r < 0 ? -1 : sc_end(s);
}

static int parse_npy(const uint8_t *buf, size_t size, const char *file, kt_array *out, char *err, size_t err_len)
{
    npy_header h;
    scanner s;
    size_t hstart, hlen, count, bytes;
    kt_dtype dt;
    size_t es;
    unsigned major, minor;

    memset(out, 0, sizeof *out);
    memset(&h, 0, sizeof h);
    if (size < 6 || memcmp(buf, "\x93NUMPY", 6) != 0) {
        set_err(err, err_len, "%s: bad magic: not an .npy file", file);
        return -1;
    }
    if (size < 10) {
        set_err(err, err_len, "%s: truncated .npy header (%zu bytes)", file, size);
        return -1;
    }
    major = buf[6];
    minor = buf[7];
    if (major < 1 || major > 3 || minor != 0) {
        set_err(err, err_len, "%s: unsupported .npy format version %u.%u (1.0, 2.0 and 3.0 are read)", file, major,
                minor);
        return -1;
    }
    if (major == 1) {
        hlen = ld16(buf + 8);
        hstart = 10;
    } else {
        if (size < 12) {
            set_err(err, err_len, "%s: truncated .npy header (%zu bytes)", file, size);
            return -1;
        }
        hlen = ld32(buf + 8);
        hstart = 12;
    }
    if (hlen > size - hstart) {
        set_err(err, err_len,
                "%s: truncated .npy header: header length %zu goes beyond the end of the file (%zu bytes)", file,
                hlen, size);
        return -1;
    }

    s = (scanner){buf + hstart, buf + hstart, buf + hstart + hlen, 1, file, ".npy header", err, err_len, 0};
    if (npy_dict(&s, &h) != 0)
        return -1;
    if (!h.have_descr || !h.have_fortran || !h.have_shape) {
        set_err(err, err_len, "%s: .npy header is missing the key '%s'", file,
                !h.have_descr ? "descr" : !h.have_fortran ? "fortran_order" : "shape");
        return -1;
    }
    if (npy_descr(file, h.descr, h.descr_len < sizeof h.descr ? h.descr_len : sizeof h.descr - 1, &dt, &es, err,
                  err_len) != 0)
        return -1;
    if (h.fortran) {
        set_err(err, err_len, "%s: Fortran order is not supported (save the array in C order)", file);
        return -1;
    }
    if (check_shape(file, NULL, h.shape, h.ndim, es, &count, &bytes, err, err_len) != 0)
        return -1;
    /* Nothing may be missing and nothing may follow: a size mismatch means a truncated or foreign file. */
    if (bytes != size - hstart - hlen) {
        set_err(err, err_len, "%s: data size disagrees with the file size: the shape needs %zu bytes of data, the file "
                "holds %zu after the header", file, bytes, size - hstart - hlen);
        return -1;
    }
    fill_array(out, buf + hstart + hlen, dt, es, h.shape, h.ndim);
    return 0;
}

/* ---------------------------------------------------------------------------------------------------- */
/* .safetensors */

typedef struct st_entry {
    char dtype[16];
    size_t dtype_len;
    size_t shape[KT_MAX_DIMS];
    size_t ndim;      /* all dimensions, even those beyond KT_MAX_DIMS that were not stored */
    size_t off[2];
    size_t noff;
    int have_dtype, have_shape, have_offsets;
} st_entry;

typedef struct st_names {
    char names[KT_LISTED_NAMES][64];
    size_t count;     /* all tensors, listed or not */
} st_names;

static int st_member(scanner *s, st_entry *e)
{
    char key[16];
    size_t klen;
    if (sc_string(s, key, sizeof key, &klen) != 0 || sc_expect(s, ':') != 0)
        return -1;
    if (klen == 5 && memcmp(key, "dtype", 5) == 0) {
        if (e->have_dtype++)
            return sc_fail(s, "duplicate key 'dtype'");
        return sc_string(s, e->dtype, sizeof e->dtype, &e->dtype_len);
    }
    if (klen == 5 && memcmp(key, "shape", 5) == 0) {
        if (e->have_shape++)
            return sc_fail(s, "duplicate key 'shape'");
        return sc_uint_list(s, '[', ']', e->shape, KT_MAX_DIMS, &e->ndim);
    }
    if (klen == 12 && memcmp(key, "data_offsets", 12) == 0) {
        if (e->have_offsets++)
            return sc_fail(s, "duplicate key 'data_offsets'");
        return sc_uint_list(s, '[', ']', e->off, 2, &e->noff);
    }
    return sc_skip_value(s, 2); /* keys we do not use: skipped, as the format allows */
}

static int st_entry_parse(scanner *s, st_entry *e, const char *name)
{
    int c;
    memset(e, 0, sizeof *e);
    if (sc_expect(s, '{') != 0)
        return -1;
    if (sc_peek(s) != '}') {
        for (;;) {
            if (st_member(s, e) != 0)
                return -1;
            c = sc_peek(s);
            if (c == ',') {
                s->p++;
                continue;
            }
            if (c == '}')
                break;
            return c < 0 ? sc_fail(s, "unexpected end, expected ',' or '}'") : sc_fail(s, "expected ',' or '}'");
        }
    }
    s->p++;
    if (!e->have_dtype || !e->have_shape || !e->have_offsets)
        return sc_fail(s, "tensor '%s' is missing the key '%s'", name,
                       !e->have_dtype ? "dtype" : !e->have_shape ? "shape" : "data_offsets");
    return 0;
}

static void st_list(char *dst, size_t cap, const st_names *n)
{
    size_t i, used = 0, shown = n->count < KT_LISTED_NAMES ? n->count : KT_LISTED_NAMES;
    dst[0] = '\0';
    for (i = 0; i < shown && used < cap; i++)
        used += (size_t)snprintf(dst + used, cap - used, "%s%s", i ? ", " : "", n->names[i]);
    if (n->count > shown && used < cap)
        snprintf(dst + used, cap - used, ", ... (%zu in all)", n->count);
}

static int st_dtype(const char *file, const char *name, const st_entry *e, kt_dtype *dt, size_t *es, char *err,
                    size_t err_len)
{
    static const npy_dtype table[] = {
        {"F32", KT_F32, 4}, {"F16", KT_F16, 2}, {"BF16", KT_BF16, 2}, {"I32", KT_I32, 4}, {"I64", KT_I64, 8},
    };
    char shown[24];
    size_t i;
    for (i = 0; i < sizeof table / sizeof table[0]; i++) {
        if (e->dtype_len == strlen(table[i].descr) && memcmp(e->dtype, table[i].descr, e->dtype_len) == 0) {
            *dt = table[i].dtype;
            *es = table[i].size;
            return 0;
        }
    }
    printable(shown, sizeof shown, e->dtype, e->dtype_len < sizeof e->dtype ? e->dtype_len : sizeof e->dtype - 1);
    set_err(err, err_len, "%s: tensor '%s' has unsupported dtype '%s' (supported: F32, F16, BF16, I32, I64)", file,
            name, shown);
    return -1;
}

/* The chosen tensor against the buffer: dtype, shape, and offsets that are ordered, inside the buffer and
 * exactly as long as the shape says. */
static int st_check(const char *file, const char *name, const st_entry *e, size_t buf_size, kt_dtype *dt,
                    size_t *es, char *err, size_t err_len)
{
    size_t count, bytes;
    if (st_dtype(file, name, e, dt, es, err, err_len) != 0)
        return -1;
    if (check_shape(file, name, e->shape, e->ndim, *es, &count, &bytes, err, err_len) != 0)
        return -1;
    if (e->noff != 2) {
        set_err(err, err_len, "%s: tensor '%s': data_offsets must hold 2 numbers, not %zu", file, name, e->noff);
        return -1;
    }
    if (e->off[0] > e->off[1]) {
        set_err(err, err_len, "%s: tensor '%s': data_offsets [%zu, %zu] are not ordered", file, name, e->off[0],
                e->off[1]);
        return -1;
    }
    if (e->off[1] > buf_size) {
        set_err(err, err_len, "%s: tensor '%s': data_offsets [%zu, %zu] go beyond the data buffer (%zu bytes)", file,
                name, e->off[0], e->off[1], buf_size);
        return -1;
    }
    if (e->off[1] - e->off[0] != bytes) {
        set_err(err, err_len, "%s: tensor '%s': data size disagrees with the shape: data_offsets span %zu bytes, the "
                "shape needs %zu", file, name, e->off[1] - e->off[0], bytes);
        return -1;
    }
    return 0;
}

typedef struct st_pick {
    const char *want;       /* name asked for, or NULL for "the only tensor" */
    st_entry chosen;
    char name[64];          /* for messages */
    int found;
    st_names names;
    char first[KT_NAME_CAP]; /* the first tensor's name, when no name is wanted */
    size_t first_len;
} st_pick;

/* One "name": {...} member of the top-level object. */
static int st_top_member(scanner *s, st_pick *pk, char *name)
{
    size_t nlen;
    st_entry e;
    char shown[64];
    const char *target;
    size_t target_len;
    int match;
    if (sc_string(s, name, KT_NAME_CAP, &nlen) != 0 || sc_expect(s, ':') != 0)
        return -1;
    if (nlen == 12 && memcmp(name, "__metadata__", 12) == 0)
        return sc_skip_value(s, 1);
    printable(shown, sizeof shown, name, nlen < KT_NAME_CAP ? nlen : KT_NAME_CAP - 1);
    if (st_entry_parse(s, &e, shown) != 0)
        return -1;
    if (pk->names.count < KT_LISTED_NAMES)
        memcpy(pk->names.names[pk->names.count], shown, sizeof shown);
    pk->names.count++;
    /* Without a wanted name the first tensor is taken, and later ones are compared with it so that a
     * duplicate is reported as such rather than as a choice between two equal names. */
    if (!pk->want && pk->names.count == 1) {
        pk->first_len = nlen;
        memcpy(pk->first, name, nlen < KT_NAME_CAP ? nlen : KT_NAME_CAP - 1);
        match = 1;
    } else {
        target = pk->want ? pk->want : pk->first;
        target_len = pk->want ? strlen(pk->want) : pk->first_len;
        match = nlen < KT_NAME_CAP && nlen == target_len && memcmp(name, target, nlen) == 0;
    }
    if (!match)
        return 0;
    if (pk->found)
        return sc_fail(s, "tensor name '%s' appears twice", shown);
    pk->found = 1;
    pk->chosen = e;
    memcpy(pk->name, shown, sizeof shown);
    return 0;
}

static int st_header(scanner *s, st_pick *pk, char *name)
{
    int r;
    if (sc_peek(s) != '{')
        return sc_fail(s, "expected a JSON object (not an .npy or .safetensors file?)");
    s->p++;
    if (sc_peek(s) == '}') {
        s->p++;
        return sc_end(s);
    }
    do {
        if (st_top_member(s, pk, name) != 0)
            return -1;
    } while ((r = sc_next_member(s)) == 0);
    return r < 0 ? -1 : sc_end(s);
}

/* Picks `want` (NULL: the only tensor) from a safetensors buffer. */
static int parse_safetensors(const uint8_t *buf, size_t size, const char *file, const char *want, kt_array *out,
                             char *err, size_t err_len)
{
    st_pick *pk = NULL;
    char *name = NULL;
    char list[400];
    scanner s;
    uint64_t n64;
    size_t hlen, data_start, data_size;
    kt_dtype dt;
    size_t es;
    int rc = -1;

    memset(out, 0, sizeof *out);
    if (size < 8) {
        set_err(err, err_len, "%s: file too short (%zu bytes) for an .npy or .safetensors header", file, size);
        goto fail;
    }
    n64 = ld64(buf);
    if (n64 > size - 8) {
        set_err(err, err_len, "%s: not .npy (no magic) and not .safetensors: header length %llu goes beyond the "
                "end of the file (%zu bytes)", file, (unsigned long long)n64, size);
        goto fail;
    }
    hlen = (size_t)n64;
    data_start = 8 + hlen;
    data_size = size - data_start;
    pk = calloc(1, sizeof *pk);
    name = malloc(KT_NAME_CAP);
    if (!pk || !name) {
        set_err(err, err_len, "%s: out of memory", file);
        goto fail;
    }
    pk->want = want;
    s = (scanner){buf + 8, buf + 8, buf + data_start, 0, file, ".safetensors header", err, err_len, 0};
    if (st_header(&s, pk, name) != 0)
        goto fail;

    st_list(list, sizeof list, &pk->names);
    if (pk->names.count == 0) {
        set_err(err, err_len, "%s: the .safetensors file holds no tensors", file);
        goto fail;
    }
    if (!want && pk->names.count > 1) {
        set_err(err, err_len, "%s holds %zu tensors: choose one with %s:NAME (available: %s)", file,
                pk->names.count, file, list);
        goto fail;
    }
    if (!pk->found) {
        char shown[64];
        printable(shown, sizeof shown, want, strlen(want));
        set_err(err, err_len, "%s: tensor '%s' not found (available: %s)", file, shown, list);
        goto fail;
    }
    if (st_check(file, pk->name, &pk->chosen, data_size, &dt, &es, err, err_len) != 0)
        goto fail;
    fill_array(out, buf + data_start + pk->chosen.off[0], dt, es, pk->chosen.shape, pk->chosen.ndim);
    rc = 0;
fail:
    free(name);
    free(pk);
    return rc;
}

/* ---------------------------------------------------------------------------------------------------- */
/* Opening files */

/* The format comes from the content; the .npy extension only decides which error a file without the
 * magic gets (a bad magic rather than a safetensors complaint). */
static int parse_buffer(const uint8_t *buf, size_t size, const char *file, const char *name, kt_array *out,
                        char *err, size_t err_len)
{
    size_t flen = strlen(file);
    int npy_magic = size >= 6 && memcmp(buf, "\x93NUMPY", 6) == 0;
    int npy_named = flen >= 4 && strcmp(file + flen - 4, ".npy") == 0;
    if (npy_magic || npy_named || (size > 0 && buf[0] == 0x93)) {
        if (name) {
            set_err(err, err_len, "%s: a tensor name (':%s') only applies to .safetensors files", file, name);
            memset(out, 0, sizeof *out);
            return -1;
        }
        return parse_npy(buf, size, file, out, err, err_len);
    }
    return parse_safetensors(buf, size, file, name, out, err, err_len);
}

/* "file:NAME" -> file and NAME when the part before the last ':' is an existing file; else the whole
 * string is the path. *file is malloc'd; *name points into it. */
static int split_path(const char *path, char **file, const char **name)
{
    const char *colon = strrchr(path, ':');
    struct stat st;
    char *copy = strdup(path);
    *file = copy;
    *name = NULL;
    if (!copy)
        return -1;
    if (colon && colon != path) {
        size_t at = (size_t)(colon - path);
        copy[at] = '\0';
        if (stat(copy, &st) == 0 && !S_ISDIR(st.st_mode))
            *name = copy + at + 1;
        else
            copy[at] = ':';
    }
    return 0;
}

static int map_file(const char *file, void **map, size_t *size, char *err, size_t err_len)
{
    struct stat st;
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    int rc = -1;
    *map = NULL;
    *size = 0;
    if (fd < 0) {
        set_err(err, err_len, "%s: cannot open: %s", file, strerror(errno));
        goto fail;
    }
    if (fstat(fd, &st) != 0) {
        set_err(err, err_len, "%s: cannot stat: %s", file, strerror(errno));
        goto fail;
    }
    if (S_ISDIR(st.st_mode) || !S_ISREG(st.st_mode)) {
        set_err(err, err_len, "%s: not a regular file", file);
        goto fail;
    }
    if (st.st_size == 0) { /* mmap refuses 0 bytes */
        set_err(err, err_len, "%s: empty file", file);
        goto fail;
    }
    if ((uintmax_t)st.st_size > SIZE_MAX) {
        set_err(err, err_len, "%s: file too large to map", file);
        goto fail;
    }
    *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (*map == MAP_FAILED) {
        *map = NULL;
        set_err(err, err_len, "%s: cannot map: %s", file, strerror(errno));
        goto fail;
    }
    *size = (size_t)st.st_size;
    rc = 0;
fail:
    if (fd >= 0)
        close(fd);
    return rc;
}

int kt_open(const char *path, kt_array *out, char *err, size_t err_len)
{
    char *file = NULL;
    const char *name = NULL;
    void *map = NULL;
    size_t size = 0;
    int rc = -1;

    memset(out, 0, sizeof *out);
    if (!path) {
        set_err(err, err_len, "no path given");
        goto fail;
    }
    if (split_path(path, &file, &name) != 0) {
        set_err(err, err_len, "%s: out of memory", path);
        goto fail;
    }
    if (name && !*name) {
        set_err(err, err_len, "%s: empty tensor name after ':'", file);
        goto fail;
    }
    if (map_file(file, &map, &size, err, err_len) != 0)
        goto fail;
    if (parse_buffer(map, size, file, name, out, err, err_len) != 0)
        goto fail;
    out->map = map;
    out->map_size = size;
    map = NULL;
    rc = 0;
fail:
    if (map)
        munmap(map, size);
    if (rc != 0)
        memset(out, 0, sizeof *out);
    free(file);
    return rc;
}

void kt_close(kt_array *a)
{
    if (!a)
        return;
    if (a->map)
        munmap(a->map, a->map_size);
    memset(a, 0, sizeof *a);
}

/* ---------------------------------------------------------------------------------------------------- */
/* Reading values */

static void widen_row(const kt_array *a, const uint8_t *src, float *dst)
{
    size_t j, n = a->cols;
    switch (a->dtype) {
    case KT_F32:
        if (KT_HOST_LE) {
            memcpy(dst, src, n * sizeof(float));
        } else {
            for (j = 0; j < n; j++)
                dst[j] = bits_to_float(ld32(src + 4 * j));
        }
        break;
    case KT_F16:
        for (j = 0; j < n; j++)
            dst[j] = half_to_float(ld16(src + 2 * j));
        break;
    case KT_BF16:
    case KT_U16:
        for (j = 0; j < n; j++)
            dst[j] = bits_to_float((uint32_t)ld16(src + 2 * j) << 16);
        break;
    default: /* integers are not widened: see kt_rows_f32 */
        for (j = 0; j < n; j++)
            dst[j] = NAN;
        break;
    }
}

/* The function has no error channel, so misuse gives NaN rows rather than a read outside the array:
 * rows past the end and integer arrays come out as NaN. */
void kt_rows_f32(const kt_array *a, size_t row0, size_t n, float *dst)
{
    size_t i, row_bytes = a->cols * a->elem_size;
    for (i = 0; i < n; i++) {
        const uint8_t *src = row0 + i < a->rows && row0 + i >= row0 ? a->data + (row0 + i) * row_bytes : NULL;
        if (src) {
            widen_row(a, src, dst + i * a->cols);
        } else {
            size_t j;
            for (j = 0; j < a->cols; j++)
                dst[i * a->cols + j] = NAN;
        }
    }
}

int kt_labels_i32(const kt_array *a, size_t row0, size_t n, int32_t *dst, char *err, size_t err_len)
{
    size_t i;
    if (a->dtype != KT_I32 && a->dtype != KT_I64) {
        set_err(err, err_len, "labels must be int32 or int64 integers");
        return -1;
    }
    if (a->cols != 1) {
        set_err(err, err_len, "labels must be 1-D (or N x 1), not %zu x %zu", a->rows, a->cols);
        return -1;
    }
    if (row0 > a->rows || n > a->rows - row0) {
        set_err(err, err_len, "labels %zu..%zu requested, the array holds %zu", row0, row0 + n, a->rows);
        return -1;
    }
    for (i = 0; i < n; i++) {
        const uint8_t *p = a->data + (row0 + i) * a->elem_size;
        int64_t v = a->dtype == KT_I32 ? (int64_t)(int32_t)ld32(p) : (int64_t)ld64(p);
        if (v < INT32_MIN || v > INT32_MAX) {
            set_err(err, err_len, "label at index %zu (%lld) does not fit in int32", row0 + i, (long long)v);
            return -1;
        }
        dst[i] = (int32_t)v;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------------- */
/* Writing */

/* A version 1.0 header for little-endian `descr` in C order, padded with spaces so that the data start
 * on a multiple of 64 bytes, as numpy writes it. Returns the total length. */
static size_t npy_write_header(char *hdr, size_t cap, const char *descr, size_t ndim, const size_t *shape)
{
    size_t i, len, total, pad;
    len = (size_t)snprintf(hdr + 10, cap - 10, "{'descr': '%s', 'fortran_order': False, 'shape': (", descr);
    for (i = 0; i < ndim; i++)
        len += (size_t)snprintf(hdr + 10 + len, cap - 10 - len, "%s%zu", i ? ", " : "", shape[i]);
    len += (size_t)snprintf(hdr + 10 + len, cap - 10 - len, "%s), }", ndim == 1 ? "," : "");
    total = 10 + len + 1;
    pad = (64 - total % 64) % 64;
    memset(hdr + 10 + len, ' ', pad);
    hdr[10 + len + pad] = '\n';
    total += pad;
    memcpy(hdr, "\x93NUMPY\x01\x00", 8);
    hdr[8] = (char)((total - 10) & 0xff);
    hdr[9] = (char)((total - 10) >> 8);
    return total;
}

static void writer_free(kt_writer *w)
{
    free(w->tmp_path);
    free(w->final_path);
    memset(w, 0, sizeof *w);
}

int kt_writer_begin(kt_writer *w, const char *path, size_t ndim, const size_t *shape, char *err, size_t err_len)
{
    return kt_writer_begin_as(w, path, KT_F32, ndim, shape, err, err_len);
}

int kt_writer_begin_as(kt_writer *w, const char *path, kt_dtype dtype, size_t ndim, const size_t *shape, char *err,
                       size_t err_len)
{
    char hdr[512]; /* 8 dims of 20 digits: under 300 bytes */
    size_t i, count = 1, bytes, hlen, elem_size;
    const char *descr;
    FILE *f = NULL;

    memset(w, 0, sizeof *w);
    switch (dtype) {
    case KT_F32: descr = "<f4", elem_size = 4; break;
    case KT_F16: descr = "<f2", elem_size = 2; break;
    case KT_BF16: descr = "<u2", elem_size = 2; break; /* NumPy has no bfloat16: its bits as uint16 */
    default:
        set_err(err, err_len, "%s: the writer takes f32, f16 or bf16 elements", path ? path : "(null)");
        goto fail;
    }
    if (!path || ndim < 1 || ndim > KT_MAX_DIMS || !shape) {
        set_err(err, err_len, "%s: cannot write an array of %zu dimensions", path ? path : "(null)", ndim);
        goto fail;
    }
    for (i = 0; i < ndim; i++) {
        if (mul_size(count, shape[i], &count) != 0)
            break;
    }
    if (i < ndim || mul_size(count, elem_size, &bytes) != 0) {
        set_err(err, err_len, "%s: shape overflows size_t", path);
        goto fail;
    }
    w->final_path = strdup(path);
    w->tmp_path = malloc(strlen(path) + 32);
    if (!w->final_path || !w->tmp_path) {
        set_err(err, err_len, "%s: out of memory", path);
        goto fail;
    }
    /* Same folder as the target, so the final rename cannot cross file systems. */
    snprintf(w->tmp_path, strlen(path) + 32, "%s.tmp.%ld", path, (long)getpid());
    f = fopen(w->tmp_path, "wb");
    if (!f) {
        set_err(err, err_len, "%s: cannot create %s: %s", path, w->tmp_path, strerror(errno));
        free(w->tmp_path); /* not ours: abort must not remove whatever has that name */
        w->tmp_path = NULL;
        goto fail;
    }
    w->file = f;
    hlen = npy_write_header(hdr, sizeof hdr, descr, ndim, shape);
    if (fwrite(hdr, 1, hlen, f) != hlen) {
        set_err(err, err_len, "%s: write failed: %s", w->tmp_path, strerror(errno));
        goto fail;
    }
    w->expected = count;
    w->elem_size = elem_size;
    return 0;
fail:
    kt_writer_abort(w);
    return -1;
}

int kt_writer_append(kt_writer *w, const float *data, size_t n, char *err, size_t err_len)
{
    if (!w->file) {
        set_err(err, err_len, "writer is not open");
        return -1;
    }
    if (w->elem_size != 4) {
        set_err(err, err_len, "%s: float32 elements appended to an array of %zu-byte elements", w->final_path,
                w->elem_size);
        return -1;
    }
    if (n > w->expected - w->written) {
        set_err(err, err_len, "%s: appending %zu elements would exceed the %zu the shape announced (%zu written)",
                w->final_path, n, w->expected, w->written);
        return -1;
    }
    if (n == 0)
        return 0;
#if KT_HOST_LE
    if (fwrite(data, sizeof(float), n, w->file) != n) {
        set_err(err, err_len, "%s: write failed: %s", w->tmp_path, strerror(errno));
        return -1;
    }
#else
    {
        uint8_t le[4096];
        size_t i, j;
        for (i = 0; i < n; i += sizeof le / 4) {
            size_t m = n - i < sizeof le / 4 ? n - i : sizeof le / 4;
            for (j = 0; j < m; j++) {
                uint32_t b;
                memcpy(&b, data + i + j, 4);
                le[4 * j] = (uint8_t)b, le[4 * j + 1] = (uint8_t)(b >> 8);
                le[4 * j + 2] = (uint8_t)(b >> 16), le[4 * j + 3] = (uint8_t)(b >> 24);
            }
            if (fwrite(le, 4, m, w->file) != m) {
                set_err(err, err_len, "%s: write failed: %s", w->tmp_path, strerror(errno));
                return -1;
            }
        }
    }
#endif
    w->written += n;
    return 0;
}

int kt_writer_append_u16(kt_writer *w, const uint16_t *data, size_t n, char *err, size_t err_len)
{
    uint8_t le[4096];
    size_t i, j;
    if (!w->file) {
        set_err(err, err_len, "writer is not open");
        return -1;
    }
    if (w->elem_size != 2) {
        set_err(err, err_len, "%s: 2-byte elements appended to an array of %zu-byte elements", w->final_path,
                w->elem_size);
        return -1;
    }
    if (n > w->expected - w->written) {
        set_err(err, err_len, "%s: appending %zu elements would exceed the %zu the shape announced (%zu written)",
                w->final_path, n, w->expected, w->written);
        return -1;
    }
    for (i = 0; i < n; i += sizeof le / 2) {
        size_t m = n - i < sizeof le / 2 ? n - i : sizeof le / 2;
        for (j = 0; j < m; j++)
            le[2 * j] = (uint8_t)data[i + j], le[2 * j + 1] = (uint8_t)(data[i + j] >> 8);
        if (fwrite(le, 2, m, w->file) != m) {
            set_err(err, err_len, "%s: write failed: %s", w->tmp_path, strerror(errno));
            return -1;
        }
    }
    w->written += n;
    return 0;
}

/* Finishes the writer whatever happens: on success the file is in place, on failure nothing is left. */
int kt_writer_commit(kt_writer *w, char *err, size_t err_len)
{
    FILE *f = w->file;
    int rc = -1;
    if (!f) {
        set_err(err, err_len, "writer is not open");
        goto fail;
    }
    if (w->written != w->expected) {
        set_err(err, err_len, "%s: only %zu of the %zu elements the shape announced were written", w->final_path,
                w->written, w->expected);
        goto fail;
    }
    /* fsync before rename: after a crash the name points at complete data or at the old file. */
    if (fflush(f) != 0 || fsync(fileno(f)) != 0) {
        set_err(err, err_len, "%s: write failed: %s", w->tmp_path, strerror(errno));
        goto fail;
    }
    w->file = NULL;
    if (fclose(f) != 0) {
        set_err(err, err_len, "%s: write failed: %s", w->tmp_path, strerror(errno));
        goto fail;
    }
    if (rename(w->tmp_path, w->final_path) != 0) {
        set_err(err, err_len, "%s: cannot rename %s into place: %s", w->final_path, w->tmp_path, strerror(errno));
        goto fail;
    }
    writer_free(w);
    rc = 0;
fail:
    if (rc != 0)
        kt_writer_abort(w);
    return rc;
}

void kt_writer_abort(kt_writer *w)
{
    if (!w)
        return;
    if (w->file)
        fclose(w->file);
    if (w->tmp_path)
        remove(w->tmp_path);
    writer_free(w);
}

int kt_write_npy_f32(const char *path, const float *data, size_t ndim, const size_t *shape, char *err,
                     size_t err_len)
{
    kt_writer w;
    if (kt_writer_begin(&w, path, ndim, shape, err, err_len) != 0)
        return -1;
    if (kt_writer_append(&w, data, w.expected, err, err_len) != 0) {
        kt_writer_abort(&w);
        return -1;
    }
    return kt_writer_commit(&w, err, err_len);
}
