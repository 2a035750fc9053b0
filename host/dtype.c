/* Element types: names, sizes, and exact conversions between fp32, fp16 and bf16 on the host (the CPU
 * reference and verify mode widen half-precision rows with these; narrowing rounds to nearest even). */
#include "internal.h"

#include <string.h>

static float bits_to_float(uint32_t bits)
{
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static uint32_t float_to_bits(float f)
{
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    return bits;
}

/* binary16 -> binary32, exact for every input: subnormals renormalised, infinities kept, NaN payloads
 * moved to the top of the binary32 mantissa. */
static float half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | (mant << 13));
    if (exp != 0) return bits_to_float(sign | ((exp + 112) << 23) | (mant << 13));
    if (mant == 0) return bits_to_float(sign);
    uint32_t e = 113; /* value = mant * 2^-24: move the leading one up to the implicit bit */
    while (!(mant & 0x400u)) {
        mant <<= 1;
        e--;
    }
    return bits_to_float(sign | (e << 23) | ((mant & 0x3ffu) << 13));
}

/* binary32 -> binary16, round to nearest even; overflow to infinity, NaN stays NaN (quiet). */
static uint16_t float_to_half(float f)
{
    uint32_t x = float_to_bits(f), sign = (x >> 16) & 0x8000u, exp = (x >> 23) & 0xffu, mant = x & 0x7fffffu;
    if (exp == 0xff) return (uint16_t)(sign | 0x7c00u | (mant ? 0x200u | (mant >> 13) : 0u));
    int e = (int)exp - 127 + 15;
    if (e >= 0x1f) return (uint16_t)(sign | 0x7c00u);
    if (e <= 0) {
        if (e < -10) return (uint16_t)sign; /* below half the smallest subnormal: rounds to zero */
        mant |= 0x800000u;                  /* subnormal: shift the full significand into place */
        uint32_t shift = (uint32_t)(14 - e), half_ulp = 1u << (shift - 1);
        uint32_t q = mant >> shift, rest = mant & ((1u << shift) - 1);
        if (rest > half_ulp || (rest == half_ulp && (q & 1u))) q++;
        return (uint16_t)(sign | q);
    }
    uint32_t q = ((uint32_t)e << 10) | (mant >> 13), rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (q & 1u))) q++; /* a carry into the exponent is right */
    return (uint16_t)(sign | q);
}

/* binary32 -> bfloat16, round to nearest even; NaN stays NaN (quiet). */
static uint16_t float_to_bf16(float f)
{
    uint32_t x = float_to_bits(f);
    if ((x & 0x7f800000u) == 0x7f800000u && (x & 0x7fffffu)) return (uint16_t)((x >> 16) | 0x40u);
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

static float load_one(const void *src, klcl_dtype dtype, size_t i)
{
    if (dtype == KLCL_DTYPE_F32) return ((const float *)src)[i];
    uint16_t h = ((const uint16_t *)src)[i];
    return dtype == KLCL_DTYPE_F16 ? half_to_float(h) : bits_to_float((uint32_t)h << 16);
}

klcl_status klcl_convert(const void *src, klcl_dtype from, void *dst, klcl_dtype to, size_t count)
{
    if (!klcl_dtype_name(from) || !klcl_dtype_name(to)) return KLCL_ERR_INVALID_VALUE;
    if (count == 0) return KLCL_OK;
    if (!src || !dst) return KLCL_ERR_NULL_POINTER;
    for (size_t i = 0; i < count; i++) {
        float v = load_one(src, from, i);
        switch (to) {
        case KLCL_DTYPE_F32: ((float *)dst)[i] = v; break;
        case KLCL_DTYPE_F16: ((uint16_t *)dst)[i] = float_to_half(v); break;
        case KLCL_DTYPE_BF16: ((uint16_t *)dst)[i] = float_to_bf16(v); break;
        }
    }
    return KLCL_OK;
}

void klcl_widen_row(const klcl_tensor *t, size_t row, size_t stride, size_t cols, float *out)
{
    const size_t size = klcl_dtype_size(t->dtype);
    klcl_convert((const char *)t->host + row * stride * size, t->dtype, out, KLCL_DTYPE_F32, cols);
}
