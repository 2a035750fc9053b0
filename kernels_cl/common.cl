/* Helpers shared by every klcl kernel; the host prepends this file to the others.
 *
 * Build-time defines (set by the host, part of every cache key):
 *   KLCL_WG  work-group size of the row kernels, a power of two.
 *
 * Rows are read as 8-wide vectors: vector k (logits 8k .. 8k+7) of a row, or of a part of a split row
 * starting at vector k0, belongs to work-item (k - k0) mod team of the row's team of work-items, so one
 * work-item streams a row contiguously (CPU devices) and a wide team makes coalesced 32-byte loads (GPUs);
 * the last vocab mod 8 logits are read one by one.
 *
 * Softmax statistics are kept against the running maximum m of the (softcapped) logits x:
 *   S = sum_v exp((x_v - m) / tau),   lse(x / tau) = m / tau + log S,
 * so log p_v = (x_v - m) / tau - log S is formed from a difference of nearby values before dividing by tau.
 * exp((x - m)/tau) is evaluated as exp2((x - m) * k) with k = log2(e) / tau. */

#define KLCL_NEG_INF (-INFINITY)

/* Element types, one program per combination (build defines, part of every cache key): KLCL_T_DTYPE and
 * KLCL_S_DTYPE for the teacher and student logits, KLCL_G_DTYPE for the gradient; 0 fp32, 1 fp16, 2 bf16
 * (klcl_dtype). Half-precision inputs are widened exactly as they are loaded: fp16 through vload_half,
 * which needs no cl_khr_fp16, bf16 by moving its 16 bits to the top of a binary32. A half-precision
 * gradient is computed in fp32 and rounded once, to nearest even. */
#ifndef KLCL_T_DTYPE
#define KLCL_T_DTYPE 0
#endif
#ifndef KLCL_S_DTYPE
#define KLCL_S_DTYPE 0
#endif
#ifndef KLCL_G_DTYPE
#define KLCL_G_DTYPE 0
#endif
#define KLCL_CAT_(a, b) a##b
#define KLCL_CAT(a, b) KLCL_CAT_(a, b)

#define KLCL_ELEM_0 float
#define KLCL_ELEM_1 half
#define KLCL_ELEM_2 ushort
#define T_ELEM KLCL_CAT(KLCL_ELEM_, KLCL_T_DTYPE)
#define S_ELEM KLCL_CAT(KLCL_ELEM_, KLCL_S_DTYPE)
#define G_ELEM KLCL_CAT(KLCL_ELEM_, KLCL_G_DTYPE)

inline float8 klcl_load8_0(uint k, __global const float *p) { return vload8(k, p); }
/* fp16 bits to fp32, exactly: normals rebias the exponent, subnormals are an integer times 2^-24 (so no
 * denormal arithmetic is involved), infinities and NaN keep their payload. vload_half8 would do the same,
 * but PoCL 3.1 compiles it as an aligned 16-byte load, which faults on rows whose byte offset is not a
 * multiple of 16 (odd widths); a ushort8 load has no such requirement. */
inline float8 klcl_load8_1(uint k, __global const half *p)
{
    const uint8 h = convert_uint8(vload8(k, (__global const ushort *)p));
    const uint8 em = h & (uint8)(0x7fffu), sign = (h & (uint8)(0x8000u)) << 16;
    const uint8 normal = (em << 13) + (uint8)(112u << 23), special = (em << 13) | (uint8)(0x7f800000u);
    const uint8 sub = as_uint8(convert_float8(em) * 0x1p-24f);
    return as_float8(sign | select(select(normal, special, em >= (uint8)(0x7c00u)), sub, em < (uint8)(0x400u)));
}
inline float8 klcl_load8_2(uint k, __global const ushort *p) { return as_float8(convert_uint8(vload8(k, p)) << 16); }
inline float klcl_load1_0(uint i, __global const float *p) { return p[i]; }
inline float klcl_load1_1(uint i, __global const half *p) { return vload_half(i, p); }
inline float klcl_load1_2(uint i, __global const ushort *p) { return as_float((uint)p[i] << 16); }

inline void klcl_store8_0(float8 x, uint k, __global float *p) { vstore8(x, k, p); }
/* fp32 to fp16 bits, round to nearest even (what vstore_half8_rte does, written out for the same PoCL
 * alignment fault as loads): normals by integer rounding of the rebiased bits (a carry into the exponent
 * is right, up to infinity), subnormals by rounding x 2^24 to an integer, NaN kept quiet. */
inline void klcl_store8_1(float8 x, uint k, __global half *p)
{
    const uint8 b = as_uint8(x), a = b & (uint8)(0x7fffffffu), sign = (b >> 16) & (uint8)(0x8000u);
    const uint8 r = a - (uint8)(112u << 23);
    const uint8 normal = (r + (uint8)(0xfffu) + ((r >> 13) & (uint8)(1u))) >> 13;
    const uint8 sub = convert_uint8_rte(as_float8(a) * 0x1p24f);
    uint8 h = select(normal, sub, a < (uint8)(0x38800000u));
    h = select(h, (uint8)(0x7c00u), a >= (uint8)(0x477ff000u));
    h = select(h, (uint8)(0x7e00u), a > (uint8)(0x7f800000u));
    vstore8(convert_ushort8(sign | h), k, (__global ushort *)p);
}
inline void klcl_store8_2(float8 x, uint k, __global ushort *p)
{
    const uint8 b = as_uint8(x);
    const uint8 rounded = (b + (uint8)(0x7fffu) + ((b >> 16) & (uint8)(1u))) >> 16;
    vstore8(convert_ushort8(select(rounded, (b >> 16) | (uint8)(0x40u), as_uint8(isnan(x)))), k, p);
}
inline void klcl_store1_0(float x, uint i, __global float *p) { p[i] = x; }
inline void klcl_store1_1(float x, uint i, __global half *p) { vstore_half_rte(x, i, p); }
inline void klcl_store1_2(float x, uint i, __global ushort *p)
{
    const uint b = as_uint(x);
    p[i] = (ushort)(isnan(x) ? (b >> 16) | 0x40u : (b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

/* Loads of teacher (T) and student (S) logits widened to fp32, and gradient stores (G). The bounded
 * scalar loads give -inf past a row's own width: the padded columns of LOSSES.md's `pad` policy. */
#define LOAD_T8(k, p) KLCL_CAT(klcl_load8_, KLCL_T_DTYPE)(k, p)
#define LOAD_S8(k, p) KLCL_CAT(klcl_load8_, KLCL_S_DTYPE)(k, p)
#define LOAD_T1(i, p, cols) ((i) < (cols) ? KLCL_CAT(klcl_load1_, KLCL_T_DTYPE)(i, p) : KLCL_NEG_INF)
#define LOAD_S1(i, p, cols) ((i) < (cols) ? KLCL_CAT(klcl_load1_, KLCL_S_DTYPE)(i, p) : KLCL_NEG_INF)
#define STORE_G8(x, k, p) KLCL_CAT(klcl_store8_, KLCL_G_DTYPE)(x, k, p)
#define STORE_G1(x, i, p) KLCL_CAT(klcl_store1_, KLCL_G_DTYPE)(x, i, p)

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
#define FLAG_NO_GRADIENT 64  /* rkl with mass where p = 0: loss +inf, gradient undefined (NaN) */

/* Argmax with ties to the lowest index: (value, index) pairs, the larger value wins. */
inline void argmax_merge(float *val, uint *idx, float val2, uint idx2)
{
    if (val2 > *val || (val2 == *val && idx2 < *idx)) {
        *val = val2;
        *idx = idx2;
    }
}

/* Element-wise helpers, defined once for a scalar (S = 1, T = float) and for an 8-wide vector (S = 8,
 * T = float8). Every choice is a ?: so that vectors select per lane. */
#define KLCL_ELEMENT_HELPERS(T, S)                                                                      \
    /* logit <- cap * tanh(logit / cap) when a softcap is set */                                         \
    inline T softcap##S(T x, float cap) { return cap > 0.0f ? (T)(cap) * tanh(x / cap) : x; }           \
    /* w (lw - log_den) for the weight w = exp(lw): 0 where the weight is exactly 0 (lw = -inf, so      \
     * 0 log 0 = 0), +inf for any other weight against probability 0, judged on logs because w may have  \
     * underflowed while the probability is still positive. */                                           \
    inline T xlogratio##S(T w, T lw, T log_den)                                                         \
    {                                                                                                    \
        return lw == (T)(KLCL_NEG_INF) ? (T)(0.0f)                                                       \
                                       : (log_den == (T)(KLCL_NEG_INF) ? (T)(INFINITY) : w * (lw - log_den)); \
    }                                                                                                    \
    /* log(e^(la + lwa) + e^(lb + lwb)): the log of a mixture by logsumexp, never log of a sum of        \
     * probabilities; lwa, lwb are the log weights (may be -inf). */                                     \
    inline T log_mix##S(T la, T lb, float lwa, float lwb)                                               \
    {                                                                                                    \
        const T x = la + lwa, y = lb + lwb, hi = fmax(x, y), lo = fmin(x, y);                            \
        return hi == (T)(KLCL_NEG_INF) ? (T)(KLCL_NEG_INF) : hi + log1p(exp(lo - hi));                   \
    }

KLCL_ELEMENT_HELPERS(float, 1)
KLCL_ELEMENT_HELPERS(float8, 8)

/* Lane reductions in a fixed order (the same bits on every run). */
inline float hsum8(float8 x)
{
    return ((x.s0 + x.s1) + (x.s2 + x.s3)) + ((x.s4 + x.s5) + (x.s6 + x.s7));
}

inline float hmax8(float8 x)
{
    return fmax(fmax(fmax(x.s0, x.s1), fmax(x.s2, x.s3)), fmax(fmax(x.s4, x.s5), fmax(x.s6, x.s7)));
}
