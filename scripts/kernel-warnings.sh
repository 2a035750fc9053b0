#!/usr/bin/env bash
# Compiles the kernels with clang's OpenCL C front end, warnings as errors, under the build settings klcl
# gives them (work-group 1, 2 and 256, vector widths 8 and 16, the plain and the GPU row loop, fp32, fp16 and
# bf16 inputs and gradients), the four .cl files in the order the library joins them. A device's compiler
# prints what this finds on the user's terminal (PoCL: "1 warning generated." per build), and a warning
# that only one setting shows (an && that a work-group size folds to a constant) passes every test.
# Needs clang (Debian's clang-14, which scripts/setup.sh installs); CI runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
cc=""
for c in clang clang-14 clang-15; do command -v "$c" >/dev/null && { cc=$c; break; }; done
[ -n "$cc" ] || { echo "kernel-warnings: no clang on PATH (Debian package clang)" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# clang declares vload_half and vstore_half_rte for OpenCL C 1.2 only with named address space built-ins on
# some targets; the kernels use the __global forms.
{
    echo 'float __attribute__((overloadable)) vload_half(size_t, const __global half *);'
    echo 'void __attribute__((overloadable)) vstore_half_rte(float, size_t, __global half *);'
    cat kernels_cl/common.cl kernels_cl/losses.cl kernels_cl/sparse.cl kernels_cl/convert.cl
} >"$work/all.cl"
runs=0 failed=0
for wg in 1 2 256; do
    for vw in 8 16; do
        for loop in "" -DKLCL_PREFETCH; do
            for types in "0 0 0" "1 1 1" "2 2 2" "2 0 0"; do
                read -r t s g <<<"$types"
                runs=$((runs + 1))
                if ! "$cc" -x cl -cl-std=CL1.2 -Xclang -finclude-default-header -fsyntax-only -Werror \
                    -DKLCL_WG=$wg -DKLCL_VW=$vw $loop -DKLCL_HAS_FP64 -DKLCL_GROUP=-1 -DKLCL_T_DTYPE=$t \
                    -DKLCL_S_DTYPE=$s -DKLCL_G_DTYPE=$g "$work/all.cl" 2>"$work/log"; then
                    failed=$((failed + 1))
                    echo "kernel-warnings: KLCL_WG=$wg KLCL_VW=$vw ${loop:-(plain loop)} dtypes $types:" >&2
                    sed "s|$work/all.cl|kernels (joined)|" "$work/log" | head -20 >&2
                fi
            done
        done
    done
done
echo "kernel-warnings: $runs settings, $failed with warnings or errors ($cc)"
[ "$failed" -eq 0 ]
