#!/usr/bin/env bash
# Estimates, without an NVIDIA GPU, the registers, spills and stack each of klcl's kernels would use on one:
# the kernels are compiled to PTX by clang with libclc's built-ins and assembled by NVIDIA's ptxas, which
# reports what every kernel uses. NVIDIA's OpenCL driver compiles with its own front end and built-ins, so
# these are estimates of the driver's figures, good for comparing two versions of a kernel, not for the
# last register (docs/DEVICES.md has both side by side).
#
# Needs clang-14 and libclc-14 (Debian) and ptxas (NVIDIA's CUDA toolkit, on PATH or in /usr/local/cuda/bin).
#
# usage: scripts/nvptx-registers.sh [--loss N] [--vw 8|16] [--wg N] [--plain] [--arch sm_NN]
#                                   [--maxrregcount N] [-- clang options...]
#   --loss N          the loss group to build (its klcl_loss number; default 0, kl)
#   --vw, --wg        vector width and work-group size (default 8 and 256, what a GPU gets)
#   --plain           the plain row loop instead of the GPU row loop (no -DKLCL_PREFETCH)
#   --maxrregcount N  ptxas's register limit, as -cl-nv-maxrregcount=N gives it through the driver
#   --arch            the GPU (default sm_90: H100, H200)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
loss=0 vw=8 wg=256 prefetch="-DKLCL_PREFETCH" arch=sm_90 maxreg=""
while [ $# -gt 0 ]; do
    case "$1" in
    --loss) loss="$2"; shift 2 ;;
    --vw) vw="$2"; shift 2 ;;
    --wg) wg="$2"; shift 2 ;;
    --plain) prefetch=""; shift ;;
    --arch) arch="$2"; shift 2 ;;
    --maxrregcount) maxreg="--maxrregcount $2"; shift 2 ;;
    --) shift; break ;;
    *) echo "nvptx-registers: unknown argument '$1' (see the usage at the top of $0)" >&2; exit 2 ;;
    esac
done
PATH="$PATH:/usr/local/cuda/bin:/usr/lib/llvm-14/bin"
libclc=/usr/lib/clc/nvptx64--nvidiacl.bc
for tool in clang-14 llvm-link opt llc ptxas; do
    command -v "$tool" >/dev/null || { echo "nvptx-registers: $tool not found" >&2; exit 2; }
done
[ -f "$libclc" ] || { echo "nvptx-registers: $libclc not found (Debian package libclc-14)" >&2; exit 2; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# clang 14 declares vload_half and vstore_half_rte for OpenCL C 1.2 only with named address space built-ins,
# which this target leaves off; the kernels use the __global forms.
{
    echo 'float __attribute__((overloadable)) vload_half(size_t, const __global half *);'
    echo 'void __attribute__((overloadable)) vstore_half_rte(float, size_t, __global half *);'
    cat "$root/kernels_cl/common.cl" "$root/kernels_cl/losses.cl"
} >"$work/src.cl"
# Every function inlined, as the driver does: OpenCL C's plain `inline` would otherwise leave large helpers
# as calls, with a calling convention's registers of their own.
clang-14 -x cl -cl-std=CL1.2 -target nvptx64--nvidiacl -Xclang -finclude-default-header -O3 -fgnu89-inline \
    '-Dinline=__attribute__((always_inline)) inline' -DKLCL_WG="$wg" -DKLCL_VW="$vw" -DKLCL_HAS_FP64 $prefetch \
    -DKLCL_GROUP="$loss" -DKLCL_T_DTYPE=0 -DKLCL_S_DTYPE=0 -DKLCL_G_DTYPE=0 "$@" -emit-llvm -c "$work/src.cl" \
    -o "$work/k.bc"
llvm-link "$work/k.bc" "$libclc" -o "$work/linked.bc"
opt -O3 "$work/linked.bc" -o "$work/opt.bc"
llc -mcpu=sm_70 -mattr=+ptx64 "$work/opt.bc" -o "$work/k.ptx"
# shellcheck disable=SC2086
if ! ptxas -arch="$arch" -v $maxreg "$work/k.ptx" -o "$work/k.cubin" >"$work/ptxas.log" 2>&1; then
    cat "$work/ptxas.log" >&2
    exit 1
fi
awk '/Compiling entry function/ { name = $7; gsub("\047", "", name) }
    /bytes stack frame/ && name != "" { stack = $1; spill_st = $5; spill_ld = $9 }
    /Used [0-9]+ registers/ && name != "" {
        printf "%-22s %3d registers, %4d bytes stack, %4d/%4d bytes spilled (stores/loads)\n",
               name, $5, stack, spill_st, spill_ld; name = "" }' "$work/ptxas.log"
