#!/usr/bin/env bash
# One sitting on a GPU machine, for when GPU time is short: finds the device's OpenCL, builds klcl if no
# build is there, then runs the chosen steps, each under its own time limit and with its own log, and
# writes a summary. A step that fails or runs out of time is recorded as such and the next one runs.
#
#   scripts/gpu-check.sh [--out DIR] [--steps LIST] [--before KERNEL_DIR] [--device SPEC] [--budget S]
#                        [--mib N]
#
# Steps (default: all, in this order):
#   info    the platforms and devices (klcl devices, clinfo -l), the driver (nvidia-smi), the loader
#   suites  the test suites that run kernels (ctest -R, the GPU's own defaults)
#   ab      bench/ab.py: the kernels as built, the kernels of --before (KLCL_KERNEL_DIR), and on NVIDIA
#           the register cap (KLCL_BUILD_OPTIONS=-cl-nv-maxrregcount=128), alternated
#   tune    klcl tune into DIR/tuning.tsv (the table stays out of the user's cache)
#   sweep   klcl-bench over every default shape and both dtypes, CSV and JSON, then
#           bench/torch_compare.py --cuda on it where python3 has torch with CUDA
#
# --out DIR      where logs and results go (default: $OUT when set, else build/gpu-check)
# --before DIR   a kernels_cl folder to compare with (e.g. `git archive REV kernels_cl | tar -x -C DIR`)
# --device SPEC  the device, as klcl takes it (default: klcl's, the first GPU, else the first OpenCL device)
# --budget S     start no step with under 40 s of S left, and cut each to what is left (default 540: one
#                10-minute call)
# --mib N        MiB per logits tensor in ab and sweep (default 512)
#
# Where the driver is mounted without an ICD file (NVIDIA's container toolkit: libnvidia-opencl.so.1 under
# /usr/local/nvidia/lib64, nothing in /etc/OpenCL/vendors; docs/DEVICES.md), it writes one in a
# temporary folder and points OCL_ICD_VENDORS at it.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=${OUT:-$root/build/gpu-check}
steps="info,suites,ab,tune,sweep"
before=""
device=""
budget=540
mib=512
while [ $# -gt 0 ]; do
    case $1 in
    --out | --steps | --before | --device | --budget | --mib)
        [ $# -ge 2 ] || { echo "gpu-check: $1 needs a value" >&2; exit 2; }
        case $1 in
        --out) out=$2 ;;
        --steps) steps=$2 ;;
        --before) before=$2 ;;
        --device) device=$2 ;;
        --budget) budget=$2 ;;
        --mib) mib=$2 ;;
        esac
        shift 2
        ;;
    -h | --help)
        awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
        exit 0
        ;;
    *)
        echo "gpu-check: unknown argument '$1' (see --help)" >&2
        exit 2
        ;;
    esac
done
case $budget in '' | *[!0-9]*) echo "gpu-check: --budget $budget: whole seconds" >&2; exit 2 ;; esac
case $mib in '' | *[!0-9]*) echo "gpu-check: --mib $mib: whole MiB" >&2; exit 2 ;; esac
for s in ${steps//,/ }; do
    case $s in info | suites | ab | tune | sweep) ;; *) echo "gpu-check: --steps: unknown step '$s'" >&2; exit 2 ;; esac
done
if [ -n "$before" ] && [ ! -f "$before/losses.cl" ]; then
    echo "gpu-check: --before $before: no losses.cl there" >&2
    exit 2
fi
mkdir -p "$out" || exit 2
summary=$out/summary.txt
: >"$summary"
start=$(date +%s)
say() { echo "$*" | tee -a "$summary"; }
left() { echo $((budget - ($(date +%s) - start))); }

# run NAME LIMIT CMD...: CMD under `timeout LIMIT` (cut to what the budget leaves), output in NAME.log.
run() {
    local name=$1 limit=$2
    shift 2
    local room=$(($(left) - 10))
    if [ "$room" -lt 30 ]; then
        say "$name: not run (budget spent)"
        return 1
    fi
    [ "$limit" -le "$room" ] || limit=$room
    local t0 rc
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
    rc=$?
    case $rc in
    0) say "$name: ok ($(($(date +%s) - t0)) s)" ;;
    124 | 137) say "$name: cut off at ${limit} s (log: $name.log)" ;;
    *) say "$name: failed, exit $rc ($(($(date +%s) - t0)) s; log: $name.log)" ;;
    esac
    return $rc
}

# The loader's view; an ICD file for NVIDIA's library where none names it.
if [ -z "${OCL_ICD_VENDORS:-}" ] && ! grep -qs nvidia /etc/OpenCL/vendors/*.icd; then
    for dir in /usr/local/nvidia/lib64 /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib; do
        if [ -e "$dir/libnvidia-opencl.so.1" ]; then
            icd=$(mktemp -d)
            echo "$dir/libnvidia-opencl.so.1" >"$icd/nvidia.icd"
            export OCL_ICD_VENDORS=$icd
            say "icd: wrote $icd/nvidia.icd naming $dir/libnvidia-opencl.so.1"
            break
        fi
    done
fi

if [ ! -x build/klcl ] || [ ! -x build/klcl-bench ]; then
    run build 300 bash -c 'cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build -j "$(nproc)"' ||
        { say "no build: nothing else can run"; exit 1; }
fi
dev=()
if [ -n "$device" ]; then
    export KLCL_DEVICE=$device
    dev=(--device "$device")
    say "device: $device"
else
    unset KLCL_DEVICE
    say "device: klcl's default: $(./build/klcl devices 2>/dev/null | grep -m1 '^\*' | sed 's/^\* *//')"
fi

for s in ${steps//,/ }; do
    case $s in
    info)
        run info 30 bash -c './build/klcl devices; command -v clinfo >/dev/null && clinfo -l;
            command -v nvidia-smi >/dev/null && nvidia-smi -L && nvidia-smi --query-gpu=driver_version --format=csv;
            ldconfig -p | grep -i opencl; echo "OCL_ICD_VENDORS=${OCL_ICD_VENDORS:-}"'
        ;;
    suites)
        run suites 240 ctest --test-dir build --output-on-failure --timeout 200 \
            -R 'device|inputs|sparse|async|fused|errors|cache'
        ;;
    ab)
        configs=(--config base)
        [ -n "$before" ] && configs+=(--config "before:KLCL_KERNEL_DIR=$(cd "$before" && pwd)")
        # The cap is an option of NVIDIA's compiler only; another compiler refuses it.
        ./build/klcl devices 2>/dev/null | grep -q NVIDIA &&
            configs+=(--config 'cap128:KLCL_BUILD_OPTIONS=-cl-nv-maxrregcount=128')
        run ab 200 python3 bench/ab.py --rounds 2 --out "$out/ab" "${configs[@]}" -- "${dev[@]}" \
            --vocab 4096,32768,131072 --mib "$mib" --small-rows 0 --reps 5
        ;;
    tune)
        KLCL_TUNE_FILE=$out/tuning.tsv run tune 240 ./build/klcl tune "${dev[@]}" --json
        ;;
    sweep)
        run sweep 200 ./build/klcl-bench "${dev[@]}" --mib "$mib" --reps 7 --dtype f32,bf16 \
            --csv "$out/sweep.csv" --json "$out/sweep.json" &&
            if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
                run torch 200 python3 bench/torch_compare.py --cuda --reps 7 --csv "$out/torch.csv" "$out/sweep.csv"
            else
                say "torch: not run (no torch with CUDA in python3)"
            fi
        ;;
    esac
done
say "done in $(($(date +%s) - start)) s; logs and results in $out"
