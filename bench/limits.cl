/* The device limits klcl-bench measures beside the loss kernels, over the same bytes.
 *
 * read_*: a plain streaming read of n floats, one partial sum per work-item so that no load can be dropped:
 *         the bandwidth any reader of these bytes is bound by.
 * exp_*:  the same read with one exponential per float: the exp-throughput limit of an online-softmax pass
 *         (one exp per logit), which bounds the loss kernels on a CPU device.
 * Each comes in two access patterns and the bench keeps the faster as the limit: *_strided (work-item i reads
 * vectors i, i + G, ...: coalesced on GPUs) and *_chunked (work-item i reads one contiguous range: what CPU
 * devices stream best). */

#define LIMIT_KERNELS(name, op)                                                                          \
    __kernel void name##_strided(__global const float8 *x, ulong n8, __global float *out)              \
    {                                                                                                  \
        float8 acc = (float8)(0.0f);                                                                   \
        for (ulong i = get_global_id(0); i < n8; i += get_global_size(0)) acc += op(x[i]);             \
        out[get_global_id(0)] = acc.s0 + acc.s1 + acc.s2 + acc.s3 + acc.s4 + acc.s5 + acc.s6 + acc.s7;  \
    }                                                                                                  \
    __kernel void name##_chunked(__global const float8 *x, ulong n8, __global float *out)              \
    {                                                                                                  \
        const ulong per = (n8 + get_global_size(0) - 1) / get_global_size(0);                          \
        const ulong lo = get_global_id(0) * per, hi = min(lo + per, n8);                               \
        float8 acc = (float8)(0.0f);                                                                   \
        for (ulong i = lo; i < hi; i++) acc += op(x[i]);                                               \
        out[get_global_id(0)] = acc.s0 + acc.s1 + acc.s2 + acc.s3 + acc.s4 + acc.s5 + acc.s6 + acc.s7;  \
    }

#define AS_IS(v) (v)
#define EXP_SHIFTED(v) exp2((v) - 8.0f)

LIMIT_KERNELS(read, AS_IS)
LIMIT_KERNELS(exp, EXP_SHIFTED)
