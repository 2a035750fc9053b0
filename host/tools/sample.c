/* The built-in sample of `klcl eval`: synthetic teacher and student logits shaped like a language model's,
 * so that the tool shows something meaningful with no files at hand.
 *
 * Each row ranks the vocabulary by a row-specific permutation v -> (a*v + c) mod V and gives the token of
 * rank r the teacher logit 1.7 * (-1.1 log(1 + r)) plus a little noise: a long-tailed, Zipf-like
 * distribution. The student is a flatter, noisier copy, and the label is drawn from the teacher's
 * distribution, except on every SAMPLE_PAD_EVERY-th row, which is padding (ignore_index), as in a batch of
 * padded sequences.
 *
 * Every row is generated from its own index alone, never from a stream shared across rows, so the data are
 * the same whatever chunk size the caller reads them in: that is what makes `--chunk-rows` results
 * comparable. */
#include "tool.h"

#include <math.h>
#include <stdlib.h>

/* Logit = sharpness * base(rank) + noise * uniform(-1/2, 1/2). Chosen so the numbers look like a small
 * language model distilled from a larger one: teacher entropy near 1.9 nats, student near 2.5, top-1
 * agreement near 0.83. */
static const double TEACHER_SHARPNESS = 1.7, TEACHER_NOISE = 0.4;
static const double STUDENT_SHARPNESS = 1.5, STUDENT_NOISE = 2.5;

struct sample {
    int32_t ignore_index;
    double base[SAMPLE_VOCAB]; /* -1.1 log(1 + rank): computed once, not once per logit */
    double cdf[SAMPLE_VOCAB];  /* of the teacher's noiseless distribution over ranks, to draw labels */
};

typedef struct row_gen {
    uint64_t state; /* xorshift64* */
    size_t a, c;    /* the rank permutation: rank(v) = (a*v + c) mod V, a coprime with V */
    double label_u; /* uniform draw that picks the label's rank */
} row_gen;

static uint64_t next_u64(row_gen *g)
{
    g->state ^= g->state >> 12;
    g->state ^= g->state << 25;
    g->state ^= g->state >> 27;
    return g->state * 0x2545F4914F6CDD1Dull;
}

static double uniform01(row_gen *g)
{
    return (double)(next_u64(g) >> 11) * (1.0 / 9007199254740992.0);
}

static size_t gcd(size_t x, size_t y)
{
    while (y) {
        size_t t = x % y;
        x = y;
        y = t;
    }
    return x;
}

/* The inverse of a modulo m (a coprime with m), by the extended Euclidean algorithm. */
static size_t inverse_mod(size_t a, size_t m)
{
    long long r0 = (long long)m, r1 = (long long)a, t0 = 0, t1 = 1;
    while (r1) {
        long long q = r0 / r1, r = r0 - q * r1, t = t0 - q * t1;
        r0 = r1;
        r1 = r;
        t0 = t1;
        t1 = t;
    }
    return (size_t)(t0 < 0 ? t0 + (long long)m : t0);
}

/* The per-row generator, seeded by a SplitMix64 hash of the row index so that neighbouring rows are
 * unrelated. The permutation and label are drawn first, so labels can be had without the logits. */
static row_gen row_start(size_t row)
{
    uint64_t z = 0x9E3779B97F4A7C15ull * ((uint64_t)row + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    row_gen g = {z ? z : 1, 0, 0, 0};
    do {
        g.a = 1 + 2 * (size_t)(next_u64(&g) % (SAMPLE_VOCAB / 2));
    } while (gcd(g.a, SAMPLE_VOCAB) != 1);
    g.c = (size_t)(next_u64(&g) % SAMPLE_VOCAB);
    g.label_u = uniform01(&g);
    return g;
}

sample *sample_create(int32_t ignore_index)
{
    sample *s = malloc(sizeof *s);
    if (!s) return NULL;
    s->ignore_index = ignore_index;
    double total = 0.0;
    for (size_t r = 0; r < SAMPLE_VOCAB; r++) {
        s->base[r] = -1.1 * log1p((double)r);
        total += exp(TEACHER_SHARPNESS * s->base[r]); /* the largest term is exp(0): no overflow */
        s->cdf[r] = total;
    }
    for (size_t r = 0; r < SAMPLE_VOCAB; r++) s->cdf[r] /= total;
    return s;
}

void sample_destroy(sample *s)
{
    free(s);
}

void sample_rows(const sample *s, size_t row0, size_t n, float *teacher, float *student)
{
    for (size_t i = 0; i < n; i++) {
        row_gen g = row_start(row0 + i);
        float *t = teacher + i * SAMPLE_VOCAB, *q = student + i * SAMPLE_VOCAB;
        size_t rank = g.c; /* rank of token 0; each next token adds a (mod V) */
        for (size_t v = 0; v < SAMPLE_VOCAB; v++) {
            double base = s->base[rank];
            t[v] = (float)(TEACHER_SHARPNESS * base + TEACHER_NOISE * (uniform01(&g) - 0.5));
            q[v] = (float)(STUDENT_SHARPNESS * base + STUDENT_NOISE * (uniform01(&g) - 0.5));
            rank += g.a;
            if (rank >= SAMPLE_VOCAB) rank -= SAMPLE_VOCAB;
        }
    }
}

void sample_labels(const sample *s, size_t row0, size_t n, int32_t *labels)
{
    for (size_t i = 0; i < n; i++) {
        size_t row = row0 + i;
        if (row % SAMPLE_PAD_EVERY == SAMPLE_PAD_EVERY - 1) {
            labels[i] = s->ignore_index;
            continue;
        }
        row_gen g = row_start(row);
        /* A rank drawn from the teacher's distribution (first rank whose cdf exceeds the draw), then the
         * token of that rank: a*v + c = rank (mod V). */
        size_t lo = 0, hi = SAMPLE_VOCAB - 1;
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (s->cdf[mid] > g.label_u)
                hi = mid;
            else
                lo = mid + 1;
        }
        size_t diff = (lo + SAMPLE_VOCAB - g.c) % SAMPLE_VOCAB;
        labels[i] = (int32_t)(diff * inverse_mod(g.a, SAMPLE_VOCAB) % SAMPLE_VOCAB);
    }
}
