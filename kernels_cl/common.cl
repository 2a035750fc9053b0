/* Helpers shared by every klcl kernel; the host prepends this file to the others.
 *
 * Build-time defines (set by the host, part of every cache key):
 *   KLCL_WG  work-group size of the row kernels, a power of two.
 *
 * Softmax statistics are kept against the running maximum m of the (softcapped) logits x:
 *   S = sum_v exp((x_v - m) / tau),   lse(x / tau) = m / tau + log S,
 * so log p_v = (x_v - m) / tau - log S is formed from a difference of nearby values before dividing by tau.
 * exp((x - m)/tau) is evaluated as exp2((x - m) * k) with k = log2(e) / tau. */

#define KLCL_NEG_INF (-INFINITY)

/* Layout of the per-row statistics the row kernel writes and the gradient kernel reads
 * (host/internal.h mirrors these numbers). */
#define RS_MAX_T 0   /* running max of the teacher's softcapped logits */
#define RS_LOGS_T 1  /* log S_t at tau */
#define RS_MAX_S 2
#define RS_LOGS_S 3  /* log S_s at tau */
#define RS_LOGS_S1 4 /* log S_s at tau = 1 (kd's hard-label term) */
#define RS_AUX 5     /* the loss's row sum the gradient needs (see losses.cl) */
#define RS_G_REF 6   /* g = dL/dq at the reference token (the student's argmax) */
#define RS_H_T 7     /* teacher entropy */
#define RS_H_S 8     /* student entropy */
#define RS_COUNT 9

#define RF_FLAGS 0
#define RF_ARGMAX_T 1
#define RF_ARGMAX_S 2
#define RF_COUNT 4

#if defined(KLCL_HOST_LAYOUT) && KLCL_HOST_LAYOUT != RS_COUNT * 1000 + RS_H_T * 100 + RS_H_S * 10 + RF_COUNT
#error "per-row layout differs between kernels_cl/common.cl and host/internal.h"
#endif

#define FLAG_SKIPPED 1       /* mask 0 or label == ignore_index */
#define FLAG_INVALID 2       /* NaN or +inf in a logit the loss uses, or a row that is all -inf */
#define FLAG_BAD_LABEL 4     /* label outside [0, V) and not ignore_index: the call fails */
#define FLAG_AGREE 8         /* argmax teacher == argmax student */
#define FLAG_CORRECT 16      /* argmax student == label */
#define FLAG_TEACHER_OK 32   /* the teacher row was present and finite: teacher metrics are meaningful */

inline float softcap_logit(float x, float cap)
{
    return cap > 0.0f ? cap * tanh(x / cap) : x;
}

/* Adds one logit to a running (max, sum of exponentials) pair. */
inline void online_add(float *m, float *s, float x, float k)
{
    if (x > *m) {
        *s = *s * exp2((*m - x) * k) + 1.0f;
        *m = x;
    } else if (x > KLCL_NEG_INF) {
        *s += exp2((x - *m) * k);
    }
}

/* Merges the pair (m2, s2) into (m, s): the step of the fixed reduction tree. */
inline void online_merge(float *m, float *s, float m2, float s2, float k)
{
    if (m2 == KLCL_NEG_INF) return;
    if (*m == KLCL_NEG_INF) {
        *m = m2;
        *s = s2;
        return;
    }
    float mx = fmax(*m, m2);
    *s = *s * exp2((*m - mx) * k) + s2 * exp2((m2 - mx) * k);
    *m = mx;
}

/* Argmax with ties to the lowest index: (value, index) pairs, the larger value wins. */
inline void argmax_merge(float *val, uint *idx, float val2, uint idx2)
{
    if (val2 > *val || (val2 == *val && idx2 < *idx)) {
        *val = val2;
        *idx = idx2;
    }
}

/* w * (log_num - log_den) with 0 * log 0 = 0 and a positive weight against probability 0 giving +inf. */
inline float xlogratio(float w, float log_num, float log_den)
{
    if (w == 0.0f) return 0.0f;
    if (log_den == KLCL_NEG_INF) return INFINITY;
    return w * (log_num - log_den);
}

/* log(e^(la + lwa) + e^(lb + lwb)): the log of a mixture, by logsumexp, never log of a sum of
 * probabilities. lwa, lwb are the log weights (may be -inf). */
inline float log_mix(float la, float lb, float lwa, float lwb)
{
    float x = la + lwa, y = lb + lwb;
    float hi = fmax(x, y), lo = fmin(x, y);
    if (hi == KLCL_NEG_INF) return KLCL_NEG_INF;
    return hi + log1p(exp(lo - hi));
}

/* Sum of a work-group's private values in a fixed tree: the same inputs always add in the same order. */
inline float group_sum(float x, __local float *scratch)
{
    uint lid = get_local_id(0);
    scratch[lid] = x;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint off = KLCL_WG / 2; off > 0; off >>= 1) {
        if (lid < off) scratch[lid] += scratch[lid + off];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    float r = scratch[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    return r;
}
