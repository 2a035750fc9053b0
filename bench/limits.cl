/* The device limits klcl-bench measures beside the loss kernels, over the same bytes and shapes.
 *
 * read_sum: a plain streaming read of n floats (float4 loads), one partial sum per work-item, so the
 *           compiler cannot drop the loads: the bandwidth any reader of these bytes is bound by.
 * exp_only: the exponentials of an online softmax over n logits and nothing else (one exp per logit),
 *           reading the logits: the exp-throughput limit of a loss pass on a CPU device. */

__kernel void read_sum(__global const float4 *x, ulong n4, __global float *out)
{
    float4 acc = (float4)(0.0f);
    for (ulong i = get_global_id(0); i < n4; i += get_global_size(0)) acc += x[i];
    out[get_global_id(0)] = acc.x + acc.y + acc.z + acc.w;
}

__kernel void exp_only(__global const float4 *x, ulong n4, __global float *out)
{
    float4 acc = (float4)(0.0f);
    for (ulong i = get_global_id(0); i < n4; i += get_global_size(0)) acc += exp(x[i] - 1.0f);
    out[get_global_id(0)] = acc.x + acc.y + acc.z + acc.w;
}
