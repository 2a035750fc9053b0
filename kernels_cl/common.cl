/* Helpers shared by every klcl kernel; the host prepends this file to the others.
 *
 * Build-time defines (set by the host, part of every cache key):
 *   KLCL_WG     work-group size of the row kernels, a power of two.
 *   KLCL_GROUP  which kernels this program holds: one loss's (its klcl_loss number: row and gradient
 *               kernels), or KLCL_GROUP_SHARED (the reduction, sparse and conversion kernels); absent or
 *               negative: every kernel (a standalone compiler, oclgrind). A process builds only the groups
 *               it uses, and a small program loads from a binary cache in a fraction of a whole one's time.
 *
 * The row kernels read rows as vectors of KLCL_VW floats (8 or 16): vector k (logits KLCL_VW k ..
 * KLCL_VW k + KLCL_VW - 1) of a row, or of a part of a split row starting at vector k0, belongs to
 * work-item (k - k0) mod team of the row's team of work-items, so one work-item streams a row
 * contiguously (CPU devices) and a wide team makes coalesced loads (GPUs); the last vocab mod KLCL_VW
 * logits are read one by one. The sparse and conversion kernels read 8 at a time.
 *
 * Softmax statistics are kept against the running maximum m of the (softcapped) logits x:
 *   S = sum_v exp((x_v - m) / tau),   lse(x / tau) = m / tau + log S,
 * so log p_v = (x_v - m) / tau - log S is formed from a difference of nearby values before dividing by tau.
 * exp((x - m)/tau) is evaluated as exp2((x - m) * k) with k = log2(e) / tau. */

#define KLCL_NEG_INF (-INFINITY)

#define KLCL_GROUP_SHARED 9 /* host/internal.h mirrors it */
#ifndef KLCL_GROUP
#define KLCL_GROUP (-1)
#endif
#define KLCL_IN_GROUP(g) (KLCL_GROUP < 0 || KLCL_GROUP == (g))

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

/* Vector loads (klcl_load<W>_<dtype>: vector k, widened to fp32) and stores (klcl_store<W>_<dtype>: fp32
 * rounded to the type) for vector widths W = 8 and 16.
 * fp16 bits to fp32, exactly: normals rebias the exponent, subnormals are an integer times 2^-24 (so no
 * denormal arithmetic is involved), infinities and NaN keep their payload. vload_half8 would do the same,
 * but PoCL 3.1 compiles it as an aligned 16-byte load, which faults on rows whose byte offset is not a
 * multiple of 16 (odd widths); a ushort load has no such requirement.
 * fp32 to fp16 bits, round to nearest even (what vstore_half_rte does, written out for the same PoCL
 * alignment fault as loads): normals by integer rounding of the rebiased bits (a carry into the exponent
 * is right, up to infinity), subnormals by rounding x 2^24 to an integer, NaN kept quiet. */
#define KLCL_VECTOR_IO(W)                                                                                \
    inline float##W klcl_load##W##_0(uint k, __global const float *p) { return vload##W(k, p); }         \
    inline float##W klcl_load##W##_1(uint k, __global const half *p)                                    \
    {                                                                                                    \
        const uint##W h = convert_uint##W(vload##W(k, (__global const ushort *)p));                      \
        const uint##W em = h & (uint##W)(0x7fffu), sign = (h & (uint##W)(0x8000u)) << 16;                \
        const uint##W normal = (em << 13) + (uint##W)(112u << 23);                                       \
        const uint##W special = (em << 13) | (uint##W)(0x7f800000u);                                     \
        const uint##W sub = as_uint##W(convert_float##W(em) * 0x1p-24f);                                 \
        return as_float##W(sign | select(select(normal, special, em >= (uint##W)(0x7c00u)), sub,         \
                                         em < (uint##W)(0x400u)));                                       \
    }                                                                                                    \
    inline float##W klcl_load##W##_2(uint k, __global const ushort *p)                                  \
    {                                                                                                    \
        return as_float##W(convert_uint##W(vload##W(k, p)) << 16);                                       \
    }                                                                                                    \
    inline void klcl_store##W##_0(float##W x, uint k, __global float *p) { vstore##W(x, k, p); }         \
    inline void klcl_store##W##_1(float##W x, uint k, __global half *p)                                 \
    {                                                                                                    \
        const uint##W b = as_uint##W(x), a = b & (uint##W)(0x7fffffffu);                                 \
        const uint##W sign = (b >> 16) & (uint##W)(0x8000u), r = a - (uint##W)(112u << 23);              \
        const uint##W normal = (r + (uint##W)(0xfffu) + ((r >> 13) & (uint##W)(1u))) >> 13;              \
        const uint##W sub = convert_uint##W##_rte(as_float##W(a) * 0x1p24f);                            \
        uint##W h = select(normal, sub, a < (uint##W)(0x38800000u));                                     \
        h = select(h, (uint##W)(0x7c00u), a >= (uint##W)(0x477ff000u));                                  \
        h = select(h, (uint##W)(0x7e00u), a > (uint##W)(0x7f800000u));                                   \
        vstore##W(convert_ushort##W(sign | h), k, (__global ushort *)p);                                 \
    }                                                                                                    \
    inline void klcl_store##W##_2(float##W x, uint k, __global ushort *p)                               \
    {                                                                                                    \
        const uint##W b = as_uint##W(x);                                                                 \
        const uint##W rounded = (b + (uint##W)(0x7fffu) + ((b >> 16) & (uint##W)(1u))) >> 16;            \
        vstore##W(convert_ushort##W(select(rounded, (b >> 16) | (uint##W)(0x40u), as_uint##W(isnan(x)))), \
                  k, p);                                                                                 \
    }

KLCL_VECTOR_IO(8)
KLCL_VECTOR_IO(16)

inline float klcl_load1_0(uint i, __global const float *p) { return p[i]; }
inline float klcl_load1_1(uint i, __global const half *p) { return vload_half(i, p); }
inline float klcl_load1_2(uint i, __global const ushort *p) { return as_float((uint)p[i] << 16); }

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
/* The same at the row kernels' vector width KLCL_VW (8 or 16, a build define: 16 where the device's
 * preferred float vector is that wide, as on a CPU with 512-bit vectors). */
#ifndef KLCL_VW
#define KLCL_VW 8
#endif
#define floatV KLCL_CAT(float, KLCL_VW)
#define intV KLCL_CAT(int, KLCL_VW)
#define uintV KLCL_CAT(uint, KLCL_VW)
#define vstoreV KLCL_CAT(vstore, KLCL_VW)
#define LOAD_TV(k, p) KLCL_CAT(KLCL_CAT(klcl_load, KLCL_VW), KLCL_CAT(_, KLCL_T_DTYPE))(k, p)
#define LOAD_SV(k, p) KLCL_CAT(KLCL_CAT(klcl_load, KLCL_VW), KLCL_CAT(_, KLCL_S_DTYPE))(k, p)
#define STORE_GV(x, k, p) KLCL_CAT(KLCL_CAT(klcl_store, KLCL_VW), KLCL_CAT(_, KLCL_G_DTYPE))(x, k, p)
#define KLCL_LANES_8 (uint8)(0, 1, 2, 3, 4, 5, 6, 7)
#define KLCL_LANES_16 (uint16)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
#define KLCL_LANES KLCL_CAT(KLCL_LANES_, KLCL_VW) /* lane j holds logit KLCL_VW k + j */
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

/* Element-wise helpers, defined once for a scalar (S = 1, T = float) and for 8- and 16-wide vectors
 * (S = 8, 16; T = float8, float16). Every choice is a ?: so that vectors select per lane. */
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
    }                                                                                                    \
    /* The same log of a mixture where the weights p = e^la, q = e^lb are already known: log(wa p + wb q) \
     * where that sum is at least 2^-100, far above where p or q could have lost bits to underflow (each   \
     * is within a few units in the last place, so the log is within a few 1e-8 of logsumexp's), else    \
     * log_mix. One log instead of an exp and a log1p, which on PoCL cost jsd with gradient 70% of its     \
     * time. Lane by lane: the same bits at any vector width. */                                          \
    inline T log_mix_pq##S(T la, T lb, T p, T q, float wa, float wb, float lwa, float lwb)              \
    {                                                                                                    \
        const T m = wa * p + wb * q;                                                                     \
        if (KLCL_ALL##S(m >= (T)(MIX_DIRECT_MIN))) return log(m);                                        \
        return m >= (T)(MIX_DIRECT_MIN) ? log(m) : log_mix##S(la, lb, lwa, lwb);                         \
    }

/* Whether a comparison holds in every lane (a scalar comparison gives 1, a vector one -1 per lane). */
#define KLCL_ALL1(c) (c)
#define KLCL_ALL8(c) all(c)
#define KLCL_ALL16(c) all(c)
/* The smallest mixture whose log log_mix_pq takes directly (2^-100). */
#define MIX_DIRECT_MIN 0x1p-100f
KLCL_ELEMENT_HELPERS(float, 1)
KLCL_ELEMENT_HELPERS(float8, 8)
KLCL_ELEMENT_HELPERS(float16, 16)
#define softcapV KLCL_CAT(softcap, KLCL_VW)
#define xlogratioV KLCL_CAT(xlogratio, KLCL_VW)
#define log_mixV KLCL_CAT(log_mix, KLCL_VW)
#define log_mix_pqV KLCL_CAT(log_mix_pq, KLCL_VW)

/* Lane reductions in a fixed order (the same bits on every run). */
inline float hsum8(float8 x)
{
    return ((x.s0 + x.s1) + (x.s2 + x.s3)) + ((x.s4 + x.s5) + (x.s6 + x.s7));
}

inline float hmax8(float8 x)
{
    return fmax(fmax(fmax(x.s0, x.s1), fmax(x.s2, x.s3)), fmax(fmax(x.s4, x.s5), fmax(x.s6, x.s7)));
}

inline uint hminu8(uint8 x)
{
    return min(min(min(x.s0, x.s1), min(x.s2, x.s3)), min(min(x.s4, x.s5), min(x.s6, x.s7)));
}

inline float hsum16(float16 x) { return hsum8(x.lo) + hsum8(x.hi); }
inline float hmax16(float16 x) { return fmax(hmax8(x.lo), hmax8(x.hi)); }
inline uint hminu16(uint16 x) { return min(hminu8(x.lo), hminu8(x.hi)); }
#define hsumV KLCL_CAT(hsum, KLCL_VW)
#define hmaxV KLCL_CAT(hmax, KLCL_VW)
#define hminuV KLCL_CAT(hminu, KLCL_VW)
