/* Element-type conversions of the fused linear + loss path (host/fused.c), which multiplies in fp32: fp16
 * and bf16 hidden states, heads and biases are widened to fp32 before CLBlast's GEMMs, and the fp32
 * gradients the GEMMs accumulate are rounded once to the caller's type after them.
 *
 * Both kernels convert a block of `rows` x `width` elements between two matrices that each have their own
 * offset and row stride (in elements), so that a caller's strided tensor is read or written where it is.
 * `dtype` is the half-precision side's klcl_dtype: 1 fp16, 2 bf16. Work-item (k, r) converts elements
 * 8k .. 8k+7 of row r, and the work-item holding a row's last width mod 8 elements converts them one by
 * one; the global size is (ceil(width / 8), rows). The conversions are common.cl's: widening is exact
 * (fp16 from its bits, since PoCL's vload_half8 faults on rows that are not 16-byte aligned), narrowing
 * rounds to nearest even, as the row kernels do for half logits and gradients. */

#if KLCL_IN_GROUP(KLCL_GROUP_SHARED)
__kernel void klcl_widen(__global const ushort *src, ulong src_offset, ulong src_stride, int dtype,
                         __global float *dst, ulong dst_offset, ulong dst_stride, ulong width)
{
    const ulong first = 8 * (ulong)get_global_id(0), row = get_global_id(1);
    __global const ushort *s = src + src_offset + row * src_stride + first;
    __global float *d = dst + dst_offset + row * dst_stride + first;
    if (first + 8 <= width) {
        vstore8(dtype == 1 ? klcl_load8_1(0, (__global const half *)s) : klcl_load8_2(0, s), 0, d);
        return;
    }
    for (uint i = 0; first + i < width; i++)
        d[i] = dtype == 1 ? klcl_load1_1(i, (__global const half *)s) : klcl_load1_2(i, s);
}

__kernel void klcl_narrow(__global const float *src, ulong src_offset, ulong src_stride, int dtype,
                          __global ushort *dst, ulong dst_offset, ulong dst_stride, ulong width)
{
    const ulong first = 8 * (ulong)get_global_id(0), row = get_global_id(1);
    __global const float *s = src + src_offset + row * src_stride + first;
    __global ushort *d = dst + dst_offset + row * dst_stride + first;
    if (first + 8 <= width) {
        if (dtype == 1) klcl_store8_1(vload8(0, s), 0, (__global half *)d);
        else klcl_store8_2(vload8(0, s), 0, d);
        return;
    }
    for (uint i = 0; first + i < width; i++) {
        if (dtype == 1) klcl_store1_1(s[i], i, (__global half *)d);
        else klcl_store1_2(s[i], i, d);
    }
}
#endif
