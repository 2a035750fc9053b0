/* The device limits klcl-bench measures beside the loss kernels, over the same bytes.
 *
 * read_*: a plain streaming read of n floats, one partial sum per work-item so that no load can be dropped:
 *         the bandwidth any reader of these bytes is bound by.
 * exp_*:  the same read with one exponential per float: the exp-throughput limit of an online-softmax pass
 *         (one exp per logit), which bounds the loss kernels on a CPU device.
 * Each comes in two access patterns (*_strided: work-item i reads vectors i, i + G, ...: coalesced on GPUs;
 * *_chunked: work-item i reads one contiguous range: what CPU devices stream best) and two vector widths
 * (8 and 16 floats: a CPU with 512-bit vectors computes 16-wide exponentials ~1.6x faster than 8-wide),
 * and the bench keeps the fastest as the limit. */

inline float sum8(float8 a) { return (a.s0 + a.s1) + (a.s2 + a.s3) + (a.s4 + a.s5) + (a.s6 + a.s7); }
inline float sum16(float16 a) { return sum8(a.lo) + sum8(a.hi); }

#define LIMIT_KERNELS(name, op, W)                                                                       \
    __kernel void name##_strided##W(__global const float##W *x, ulong nw, __global float *out)         \
    {                                                                                                  \
        float##W acc = (float##W)(0.0f);                                                               \
        for (ulong i = get_global_id(0); i < nw; i += get_global_size(0)) acc += op(x[i]);             \
        out[get_global_id(0)] = sum##W(acc);                                                    \
    }                                                                                                  \
    __kernel void name##_chunked##W(__global const float##W *x, ulong nw, __global float *out)         \
    {                                                                                                  \
        const ulong per = (nw + get_global_size(0) - 1) / get_global_size(0);                          \
        const ulong lo = get_global_id(0) * per, hi = min(lo + per, nw);                               \
        float##W acc = (float##W)(0.0f);                                                               \
        for (ulong i = lo; i < hi; i++) acc += op(x[i]);                                               \
        out[get_global_id(0)] = sum##W(acc);                                                    \
    }

#define AS_IS(v) (v)
#define EXP_SHIFTED(v) exp2((v) - 8.0f)

LIMIT_KERNELS(read, AS_IS, 8)
LIMIT_KERNELS(exp, EXP_SHIFTED, 8)
LIMIT_KERNELS(read, AS_IS, 16)
LIMIT_KERNELS(exp, EXP_SHIFTED, 16)
