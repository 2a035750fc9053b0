#!/usr/bin/env bash
# End-to-end tests of the klcl command-line tool: the built binary on .npy and .safetensors files this test
# writes itself (cli_helper inputs), checked against the CPU reference (--device cpu), LOSSES.md's worked
# example, every exit code, chunk-size invariance and that a failed run leaves no output behind.
#
#   test_cli.sh KLCL CLI_HELPER WORK_DIR
#
# Runs on whatever device klcl picks by default (PoCL here). With no OpenCL device at all the default is
# the CPU reference and the comparisons are trivial, which CI (CI set) refuses: there PoCL must be present.
set -euo pipefail

KLCL=$1
HELPER=$2
WORK=$3
rm -rf "$WORK"
mkdir -p "$WORK"
cd "$WORK"
"$HELPER" inputs .

passed=0
failed=0
ok() { passed=$((passed + 1)); }
bad() {
    failed=$((failed + 1))
    echo "FAIL: $*" >&2
}

# run NAME ARGS...: runs klcl, stdout to NAME.out, stderr to NAME.err, exit status in $rc.
run() {
    local name=$1
    shift
    set +e
    "$KLCL" "$@" >"$name.out" 2>"$name.err"
    rc=$?
    set -e
}

# expect EXIT PATTERN ARGS...: klcl exits EXIT (never by a signal) and, when PATTERN is not empty, stderr
# matches it (the message names the file or option at fault).
n_expect=0
expect() {
    local want=$1 pattern=$2
    shift 2
    n_expect=$((n_expect + 1))
    run "expect$n_expect" "$@"
    if [ "$rc" -ne "$want" ]; then
        bad "klcl $* exited $rc, expected $want; stderr: $(cat "expect$n_expect.err")"
    elif [ "$want" -ne 0 ] && ! [ -s "expect$n_expect.err" ]; then
        bad "klcl $* exited $rc without a message"
    elif [ -n "$pattern" ] && ! grep -qE -- "$pattern" "expect$n_expect.err"; then
        bad "klcl $*: stderr does not match '$pattern': $(cat "expect$n_expect.err")"
    else
        ok
    fi
}

# value JSON LOSS: the reduced value of LOSS in a --json report ("null" when not finite).
value() {
    awk -v key="\"$2\": {" 'index($0, key) { found = 1 } found && /"value":/ { gsub(/[",]/, ""); print $2; exit }' "$1"
}
# top JSON KEY: a top-level scalar of a --json report.
top() {
    awk -v key="\"$2\":" 'index($0, key) == 3 { sub(/^ *"[^"]*": */, ""); sub(/,$/, ""); print; exit }' "$1"
}

# Whether JSON parses strictly (no NaN or Infinity tokens); python3 only when present.
if command -v python3 >/dev/null 2>&1; then
    json_ok() {
        python3 -c '
import json, sys
def refuse(token): raise ValueError("bare " + token)
json.load(open(sys.argv[1]), parse_constant=refuse)' "$1"
    }
else
    echo "note: python3 not found; JSON checked with grep only"
    json_ok() { ! grep -qE ':[[:space:]]*-?(nan|NaN|inf|Infinity)' "$1"; }
fi

LOSSES="kl rkl soft_ce ce jsd skl srkl tvd kd"
IN=(--teacher t.npy --student s.npy --labels y.npy)

echo "== basics"
expect 0 "" --version
grep -q "^klcl 0\." "expect$n_expect.out" && ok || bad "--version prints no version"
expect 0 "" --help
grep -q "eval" "expect$n_expect.out" && ok || bad "--help does not mention eval"
expect 0 "" eval --help
grep -q -- "--chunk-rows" "expect$n_expect.out" && ok || bad "eval --help does not list --chunk-rows"
for opt in --vocab-policy --teacher-logprobs --grad-dtype teacher_vocab student_vocab; do
    grep -q -- "$opt" "expect$n_expect.out" && ok || bad "eval --help does not mention $opt"
done
expect 0 "" help eval
expect 2 "unknown command" frobnicate
expect 2 "usage"
expect 0 "" devices
grep -qE "^\*? *cpu " "expect$n_expect.out" && ok || bad "devices does not list the CPU reference"
expect 0 "" devices --json
json_ok "expect$n_expect.out" && ok || bad "devices --json is not valid JSON"
if grep -q '"id": "0:0"' "expect$n_expect.out"; then
    have_device=1
else
    have_device=0
    echo "note: no OpenCL device; the default device is the CPU reference"
    [ -z "${CI:-}" ] || bad "CI is set but no OpenCL device was found (PoCL should provide one)"
fi
expect 2 "unknown argument" devices --bogus

echo "== LOSSES.md worked example: P = (0.7, 0.3), Q = (0.5, 0.5) gives kl 0.08228"
for dev in default cpu; do
    args=(eval --teacher wt.npy --student ws.npy --json)
    [ "$dev" = cpu ] && args+=(--device cpu)
    expect 0 "" "${args[@]}"
    "$HELPER" near "$(value "expect$n_expect.out" kl)" 0.0822828785 && ok || bad "worked example on $dev"
done
expect 0 "" eval --teacher wt.npy --student ws.npy
grep -qE "^kl +0\.08228" "expect$n_expect.out" && ok || bad "worked example: text summary lacks 0.08228"

echo "== every loss: default device against the CPU reference (values, per-row, gradient)"
PARAMS=(--temperature 2 --scale 4 --softcap 6 --beta 0.3 --lambda 0.2 --alpha 0.4 --label-smoothing 0.1 --z-loss 0.001)
for loss in $LOSSES; do
    for set in default custom; do
        extra=()
        [ "$set" = custom ] && extra=("${PARAMS[@]}")
        for dev in default cpu; do
            d=()
            [ "$dev" = cpu ] && d=(--device cpu)
            run "$loss-$set-$dev" eval "${IN[@]}" --loss "$loss" "${extra[@]}" "${d[@]}" --reduction sum --json \
                --per-row "$loss-$set-$dev.rows.npy" --grad "$loss-$set-$dev.grad.npy"
            [ "$rc" -eq 0 ] && ok || bad "$loss ($set, $dev) exited $rc: $(cat "$loss-$set-$dev.err")"
        done
        a="$loss-$set-default" b="$loss-$set-cpu"
        "$HELPER" near "$(value "$a.out" "$loss")" "$(value "$b.out" "$loss")" && ok || bad "$loss ($set): value"
        "$HELPER" close "$a.rows.npy" "$b.rows.npy" >/dev/null && ok || bad "$loss ($set): per-row values"
        # tvd's gradient is a subgradient at the kink p = q: LOSSES.md accepts either side there.
        if [ "$loss" != tvd ]; then
            "$HELPER" close-grad "$a.grad.npy" "$b.grad.npy" >/dev/null && ok || bad "$loss ($set): gradient"
        fi
    done
done

echo "== --verify"
expect 0 "" eval "${IN[@]}" --loss kl,rkl,soft_ce,ce,jsd,skl,srkl,tvd,kd --verify --json
[ "$(top "expect$n_expect.out" verify_ok)" = true ] && ok || bad "--verify does not report verify_ok true"

echo "== input types and layouts give identical results"
run base eval "${IN[@]}" --loss kl,ce --per-row base.npy --json
[ "$rc" -eq 0 ] && ok || bad "base run exited $rc"
variant=0
same_as_base() {
    variant=$((variant + 1))
    run "variant$variant" eval "$@" --loss kl,ce --per-row "variant$variant.npy" --json
    if [ "$rc" -ne 0 ]; then
        bad "klcl eval $* exited $rc: $(cat "variant$variant.err")"
    elif ! cmp -s base.npy "variant$variant.npy"; then
        bad "klcl eval $*: per-row values differ from the fp32 [N, V] run"
    else
        ok
    fi
}
same_as_base --teacher t3.npy --student s3.npy --labels y.npy                    # [B, T, V]
same_as_base --teacher t16.npy --student s16.npy --labels y.npy                  # fp16
same_as_base --teacher tbf.npy --student sbf.npy --labels y.npy --bf16           # '<u2' and '|V2' as bf16
same_as_base --teacher t.npy --student s.npy --labels y32.npy                    # int32 labels
same_as_base --teacher pair.safetensors:teacher --student pair.safetensors:student --labels y.npy
same_as_base --teacher t.npy --student student16.safetensors --labels y.npy      # the only tensor
[ "$(top variant2.out student_dtype)" = '"f16"' ] && ok || bad "fp16 input not reported as f16"

echo "== fp16 and bf16 are uploaded as they are and widened on the device: the same bits as fp32"
# The values are exact in all three types, and the library widens exactly: per-row values and gradients
# must equal the fp32 run's bit for bit, in any mix of types, and --verify (the reference on the same
# half-precision rows) must pass.
run half-base eval "${IN[@]}" --loss jsd --per-row half-base.rows.npy --grad half-base.grad.npy
[ "$rc" -eq 0 ] && ok || bad "fp32 run for the half-precision comparison exited $rc"
for pair in "t16.npy s16.npy" "tbf.npy sbf.npy" "t16.npy sbf.npy" "t.npy s16.npy" "tbf.npy s.npy"; do
    read -r tf sf <<<"$pair"
    name="half-${tf%.npy}-${sf%.npy}"
    run "$name" eval --teacher "$tf" --student "$sf" --labels y.npy --bf16 --loss jsd --verify --json --chunk-rows 7 \
        --per-row "$name.rows.npy" --grad "$name.grad.npy"
    if [ "$rc" -ne 0 ]; then
        bad "teacher $tf, student $sf exited $rc: $(cat "$name.err")"
        continue
    fi
    cmp -s half-base.rows.npy "$name.rows.npy" && ok || bad "teacher $tf, student $sf: per-row values differ from fp32"
    cmp -s half-base.grad.npy "$name.grad.npy" && ok || bad "teacher $tf, student $sf: gradient differs from fp32"
    [ "$(top "$name.out" verify_ok)" = true ] && ok || bad "teacher $tf, student $sf: --verify not ok"
done
[ "$(top half-t16-sbf.out teacher_dtype)" = '"f16"' ] && [ "$(top half-t16-sbf.out student_dtype)" = '"bf16"' ] && ok ||
    bad "a mixed f16/bf16 run does not report both dtypes"

echo "== --grad-dtype: the f32 gradient rounded once"
for loss in kl ce; do
    run "gd-$loss-f32" eval "${IN[@]}" --loss "$loss" --reduction mean --grad "gd-$loss-f32.npy" --grad-dtype f32
    run "gd-$loss-default" eval "${IN[@]}" --loss "$loss" --reduction mean --grad "gd-$loss-default.npy"
    cmp -s "gd-$loss-f32.npy" "gd-$loss-default.npy" && ok || bad "$loss: --grad-dtype f32 is not the default output"
    for dt in f16 bf16; do
        run "gd-$loss-$dt" eval "${IN[@]}" --loss "$loss" --reduction mean --grad "gd-$loss-$dt.npy" --grad-dtype "$dt" \
            --json
        [ "$rc" -eq 0 ] && ok || bad "--grad-dtype $dt ($loss) exited $rc: $(cat "gd-$loss-$dt.err")"
        [ "$(top "gd-$loss-$dt.out" grad_dtype)" = "\"$dt\"" ] && ok || bad "--grad-dtype $dt not reported in JSON"
        "$HELPER" rounded "gd-$loss-$dt.npy" "gd-$loss-f32.npy" && ok ||
            bad "$loss: the $dt gradient is not the f32 gradient rounded to $dt"
    done
done
# A bf16 gradient file reads back as an input (with --bf16), as the readers take bf16.
expect 0 "" eval --teacher gd-kl-bf16.npy --student gd-kl-bf16.npy --bf16 --loss kl --json
grep -q '"student_dtype": "bf16"' "expect$n_expect.out" && ok || bad "a bf16 gradient file does not read back as bf16"

echo "== heads of different widths (teacher or student 8 columns narrower)"
# pad with the teacher narrower equals an equal-width run whose teacher has those columns at -inf; truncate
# equals a run on the first 992 columns of both. Labels (yw.npy) lie in [0, 992).
ML=kl,rkl,jsd,tvd,ce
run mm-pad eval --teacher tw.npy --student s.npy --labels yw.npy --vocab-policy pad --loss "$ML" --verify --json \
    --per-row mm-pad.rows.npy
run mm-pad-ref eval --teacher tpad.npy --student s.npy --labels yw.npy --loss "$ML" --per-row mm-pad-ref.rows.npy
"$HELPER" close mm-pad.rows.npy mm-pad-ref.rows.npy >/dev/null && ok || bad "pad (teacher narrower) != -inf padded run"
[ "$(top mm-pad.out verify_ok)" = true ] && ok || bad "pad (teacher narrower): --verify not ok"
[ "$(top mm-pad.out teacher_vocab)" = 992 ] && [ "$(top mm-pad.out student_vocab)" = 1000 ] &&
    [ "$(top mm-pad.out vocab)" = 1000 ] && ok || bad "pad: teacher_vocab/student_vocab/vocab not 992/1000/1000"
grep -q '"vocab_policy": "pad"' mm-pad.out && ok || bad "pad: vocab_policy not in the JSON options"
for loss in kl jsd; do
    run "mm-pad-$loss" eval --teacher tw.npy --student s.npy --labels yw.npy --vocab-policy pad --loss "$loss" \
        --grad "mm-pad-$loss.grad.npy"
    run "mm-pad-ref-$loss" eval --teacher tpad.npy --student s.npy --labels yw.npy --loss "$loss" \
        --grad "mm-pad-ref-$loss.grad.npy"
    "$HELPER" close-grad "mm-pad-$loss.grad.npy" "mm-pad-ref-$loss.grad.npy" >/dev/null && ok ||
        bad "pad (teacher narrower): $loss gradient != -inf padded run's"
done
# The student narrower under pad: teacher mass on the missing columns makes kl +inf; rkl and the rest stay
# finite. Compared with a student padded by hand with -inf.
run mm-spad eval --teacher t.npy --student sw.npy --labels yw.npy --vocab-policy pad --loss "$ML" --verify --json \
    --per-row mm-spad.rows.npy
run mm-spad-ref eval --teacher t.npy --student spad.npy --labels yw.npy --loss "$ML" --per-row mm-spad-ref.rows.npy
"$HELPER" close mm-spad.rows.npy mm-spad-ref.rows.npy >/dev/null && ok || bad "pad (student narrower) != -inf padded run"
[ "$(top mm-spad.out verify_ok)" = true ] && ok || bad "pad (student narrower): --verify not ok"
grep -q '"value_is": "inf"' mm-spad.out && ok || bad "pad (student narrower): kl is not +inf"
for side in teacher student; do
    if [ "$side" = teacher ]; then targs=(--teacher tw.npy --student s.npy); else targs=(--teacher t.npy --student sw.npy); fi
    run "mm-trunc-$side" eval "${targs[@]}" --labels yw.npy --vocab-policy truncate --loss "$ML" --verify --json \
        --per-row "mm-trunc-$side.rows.npy"
    [ "$rc" -eq 0 ] && ok || bad "truncate ($side narrower) exited $rc: $(cat "mm-trunc-$side.err")"
    [ "$(top "mm-trunc-$side.out" verify_ok)" = true ] && ok || bad "truncate ($side narrower): --verify not ok"
done
run mm-trunc-ref eval --teacher tw.npy --student sw.npy --labels yw.npy --loss "$ML" --per-row mm-trunc-ref.rows.npy
cmp -s mm-trunc-teacher.rows.npy mm-trunc-ref.rows.npy && ok || bad "truncate (teacher narrower) != run on 992 columns"
cmp -s mm-trunc-student.rows.npy mm-trunc-ref.rows.npy && ok || bad "truncate (student narrower) != run on 992 columns"
# The gradient keeps the student's shape: the first 992 columns are the narrow run's, the rest 0.
run mm-trunc-g eval --teacher tw.npy --student s.npy --labels yw.npy --vocab-policy truncate --loss kl \
    --grad mm-trunc-g.npy
run mm-trunc-g-ref eval --teacher tw.npy --student sw.npy --labels yw.npy --loss kl --grad mm-trunc-g-ref.npy
"$HELPER" leading mm-trunc-g.npy mm-trunc-g-ref.npy && ok || bad "truncate: gradient is not the narrow one, then zeros"
# Half precision and a mismatch at once, with --verify.
run mm-half eval --teacher tw16.npy --student s16.npy --labels yw.npy --vocab-policy pad --loss "$ML" --verify --json \
    --per-row mm-half.rows.npy
cmp -s mm-half.rows.npy mm-pad.rows.npy && ok || bad "pad with fp16 inputs differs from the fp32 run"
[ "$(top mm-half.out verify_ok)" = true ] && ok || bad "pad with fp16 inputs: --verify not ok"
run mm-half2 eval --teacher t16.npy --student swbf.npy --bf16 --labels yw.npy --vocab-policy truncate --loss "$ML" \
    --verify --json --per-row mm-half2.rows.npy
cmp -s mm-half2.rows.npy mm-trunc-ref.rows.npy && ok || bad "truncate with f16/bf16 inputs differs from the fp32 run"
[ "$(top mm-half2.out verify_ok)" = true ] && ok || bad "truncate with f16/bf16 inputs: --verify not ok"
# Labels index the columns the loss uses: 995 is a student column, outside truncate's 992.
expect 2 "yw_bad.npy: row 10 has label 995, outside \[0, 992\)" \
    eval --teacher tw.npy --student s.npy --labels yw_bad.npy --vocab-policy truncate --loss kl
expect 0 "" eval --teacher tw.npy --student s.npy --labels yw_bad.npy --vocab-policy pad --loss kl
expect 0 "" eval --teacher tw.npy --student s.npy --vocab-policy truncate --loss kl
grep -qE "vocabulary 1000 \(student; teacher 992, --vocab-policy truncate\)" "expect$n_expect.out" && ok ||
    bad "text summary does not show both widths"
expect 0 "" eval "${IN[@]}" --vocab-policy pad --json # equal widths: accepted, nothing to match
[ "$(top "expect$n_expect.out" teacher_vocab)" = 1000 ] && ok || bad "equal widths: teacher_vocab not 1000"

echo "== --teacher-logprobs"
# Log-softmax of t.npy as the teacher: the same distribution, so the same values as the logits give.
run lp eval --teacher tlogp.npy --student s.npy --labels y.npy --teacher-logprobs --loss kl,soft_ce,jsd,tvd --verify \
    --json --per-row lp.rows.npy
run lp-ref eval "${IN[@]}" --loss kl,soft_ce,jsd,tvd --per-row lp-ref.rows.npy
"$HELPER" close lp.rows.npy lp-ref.rows.npy >/dev/null && ok || bad "--teacher-logprobs: values differ from the logits'"
[ "$(top lp.out verify_ok)" = true ] && ok || bad "--teacher-logprobs: --verify not ok"
grep -q '"teacher_logprobs": true' lp.out && ok || bad "--teacher-logprobs not in the JSON options"
# Log-probabilities of mass 1/2 are taken as they are (no renormalisation): kl = 1/2 kl(logits) + 1/2 log(1/2).
# Read as logits instead, they would give kl(logits) itself: the check tells the two apart.
run lph eval --teacher tlogp_half.npy --student s.npy --teacher-logprobs --loss kl --verify --json --per-row lph.rows.npy
run lph-ref eval --teacher t.npy --student s.npy --loss kl --per-row lph-ref.rows.npy
"$HELPER" affine lph.rows.npy lph-ref.rows.npy 0.5 -0.34657359027997264 && ok ||
    bad "--teacher-logprobs: log-probabilities were renormalised"
[ "$(top lph.out verify_ok)" = true ] && ok || bad "--teacher-logprobs (mass 1/2): --verify not ok"
run lph-logits eval --teacher tlogp_half.npy --student s.npy --loss kl --per-row lph-logits.rows.npy
"$HELPER" close lph-logits.rows.npy lph-ref.rows.npy >/dev/null && ok ||
    bad "without --teacher-logprobs the shifted log-probabilities are not read as logits"

echo "== several losses in one pass equal separate runs"
run multi eval "${IN[@]}" --loss kl,rkl --loss ce --per-row multi.npy
[ "$rc" -eq 0 ] && ok || bad "multi-loss run exited $rc"
col=0
for loss in kl rkl ce; do
    run "single-$loss" eval "${IN[@]}" --loss "$loss" --per-row "single-$loss.npy"
    "$HELPER" column multi.npy "$col" "single-$loss.npy" && ok || bad "column $col of the multi-loss output ($loss)"
    col=$((col + 1))
done

echo "== chunk size does not change anything"
for chunk in 1 5 7 1000; do
    run "chunk$chunk" eval "${IN[@]}" --loss jsd --chunk-rows "$chunk" --json --per-row "chunk$chunk.rows.npy" \
        --grad "chunk$chunk.grad.npy"
    [ "$rc" -eq 0 ] && ok || bad "--chunk-rows $chunk exited $rc"
    [ "$(top "chunk$chunk.out" chunk_rows)" = "$([ "$chunk" -gt 36 ] && echo 36 || echo "$chunk")" ] && ok ||
        bad "--chunk-rows $chunk not reported"
done
for chunk in 5 7 1000; do
    [ "$(value chunk1.out jsd)" = "$(value "chunk$chunk.out" jsd)" ] && ok || bad "--chunk-rows $chunk: value differs"
    cmp -s chunk1.rows.npy "chunk$chunk.rows.npy" && ok || bad "--chunk-rows $chunk: per-row file differs"
    cmp -s chunk1.grad.npy "chunk$chunk.grad.npy" && ok || bad "--chunk-rows $chunk: gradient file differs"
done

echo "== gradient denominators are global (31 rows used of 36)"
for red in none sum mean batchmean; do
    run "grad-$red" eval "${IN[@]}" --loss kl --reduction "$red" --chunk-rows 5 --grad "grad-$red.npy"
    [ "$rc" -eq 0 ] && ok || bad "--reduction $red with --grad exited $rc"
done
cmp -s grad-none.npy grad-sum.npy && ok || bad "reduction none and sum gradients differ"
"$HELPER" scaled grad-mean.npy grad-sum.npy 31 && ok || bad "mean gradient is not the sum gradient / 31"
"$HELPER" scaled grad-batchmean.npy grad-sum.npy 36 && ok || bad "batchmean gradient is not the sum gradient / 36"

echo "== non-finite rows are reported, not an error"
expect 0 "" eval --teacher tn.npy --student sn.npy --labels y.npy --loss kl,ce --json
j="expect$n_expect.out"
json_ok "$j" && ok || bad "JSON with non-finite values does not parse strictly"
[ "$(value "$j" kl)" = null ] && ok || bad "a NaN value is not null in JSON"
grep -q '"value_is": "nan"' "$j" && ok || bad "value_is does not say nan"
grep -q '"first_nonfinite": \[4, 5, 30\]' "$j" && ok || bad "kl: first_nonfinite is not [4, 5, 30]"
grep -q '"first_nonfinite": \[4, 30\]' "$j" && ok || bad "ce: first_nonfinite is not [4, 30] (ce ignores the teacher)"
expect 0 "" eval --teacher tn.npy --student sn.npy --labels y.npy --loss kl
grep -qE "^kl +nan " "expect$n_expect.out" && ok || bad "text summary does not print nan"
grep -q "first: 4 5 30" "expect$n_expect.out" && ok || bad "text summary does not list the non-finite rows"

echo "== malformed inputs and bad options: exit 2 with a message naming the culprit"
expect 2 "truncated.npy" eval --teacher t.npy --student truncated.npy
expect 2 "magic.npy" eval --teacher magic.npy --student s.npy
expect 2 "shape.npy" eval --teacher t.npy --student shape.npy
expect 2 "f64.npy.*dtype" eval --teacher f64.npy --student s.npy
expect 2 "fortran.npy.*Fortran" eval --teacher fortran.npy --student s.npy
expect 2 "rows35.npy" eval --teacher t.npy --student rows35.npy
expect 2 "t\.npy has vocabulary 1000 but --student v999\.npy has 999: choose --vocab-policy" \
    eval --teacher t.npy --student v999.npy
expect 2 "--vocab-policy 'zero'" eval --teacher t.npy --student s.npy --vocab-policy zero
expect 2 "--teacher-logprobs needs --teacher" eval --student s.npy --labels y.npy --loss ce --teacher-logprobs
expect 2 "--grad-dtype 'f64'" eval "${IN[@]}" --grad g.npy --grad-dtype f64
expect 2 "--grad-dtype f16 needs --grad" eval "${IN[@]}" --grad-dtype f16
expect 2 "flat.npy" eval --teacher flat.npy --student flat.npy
expect 2 "y35.npy" eval --teacher t.npy --student s.npy --labels y35.npy
expect 2 "ybad.npy.*row 35" eval --teacher t.npy --student s.npy --labels ybad.npy
expect 2 "ybig.npy" eval --teacher t.npy --student s.npy --labels ybig.npy
expect 2 "ylabels_f32.npy" eval --teacher t.npy --student s.npy --labels ylabels_f32.npy
expect 2 "tbf.npy.*--bf16" eval --teacher tbf.npy --student s.npy
expect 2 "two.safetensors" eval --teacher t.npy --student two.safetensors
expect 2 "two.safetensors" eval --teacher t.npy --student two.safetensors:c
expect 2 "missing.npy" eval --teacher t.npy --student missing.npy
expect 2 "--student" eval --teacher t.npy
expect 2 "--teacher" eval --student s.npy
expect 2 "--labels" eval --teacher t.npy --student s.npy --loss ce
expect 2 "--loss" eval "${IN[@]}" --loss nope
expect 2 "--loss" eval "${IN[@]}" --loss kl,kl
expect 2 "--beta" eval "${IN[@]}" --beta 1.5
expect 2 "--temperature" eval "${IN[@]}" --temperature abc
expect 2 "--temperature" eval "${IN[@]}" --temperature 0
expect 2 "--temperature" eval "${IN[@]}" --temperature 2x
expect 2 "--scale" eval "${IN[@]}" --scale inf
expect 2 "--z-loss" eval "${IN[@]}" --z-loss -1
expect 2 "--chunk-rows" eval "${IN[@]}" --chunk-rows 0
expect 2 "--chunk-rows" eval "${IN[@]}" --chunk-rows -2
expect 2 "--ignore-index" eval "${IN[@]}" --ignore-index 1e3
expect 2 "--reduction" eval "${IN[@]}" --reduction avg
expect 2 "--bogus" eval "${IN[@]}" --bogus
expect 2 "--teacher needs a value" eval --teacher
expect 2 "--teacher needs a value" eval --teacher --student s.npy
expect 2 "--json takes no value" eval --json=yes
expect 2 "stray" eval stray
expect 2 "--grad" eval "${IN[@]}" --loss kl,rkl --grad g.npy
expect 2 "would overwrite" eval "${IN[@]}" --per-row s.npy

echo "== no such device: exit 3"
expect 3 "no-such-device" eval --teacher wt.npy --student ws.npy --device no-such-device
KLCL_DEVICE=no-such-device expect 3 "KLCL_DEVICE" eval --teacher wt.npy --student ws.npy

echo "== a failed run leaves no output file"
mkdir -p fail
expect 2 "row 35" eval "${IN[@]/y.npy/ybad.npy}" --chunk-rows 1 --per-row fail/rows.npy --grad fail/grad.npy
[ -z "$(ls -A fail)" ] && ok || bad "labels out of range left files behind: $(ls -A fail)"
expect 2 "--temperature" eval "${IN[@]}" --per-row fail/rows.npy --grad fail/grad.npy --temperature nope
[ -z "$(ls -A fail)" ] && ok || bad "a bad option left files behind: $(ls -A fail)"
mkdir -p fail/dir/inside
expect 2 "directory" eval "${IN[@]}" --per-row fail/rows.npy --grad fail/dir
rm -r fail/dir
[ -z "$(ls -A fail)" ] && ok || bad "an output naming a directory left files behind: $(ls -A fail)"
expect 2 "cannot create" eval "${IN[@]}" --per-row fail/rows.npy --grad fail/no/such/dir/grad.npy
[ -z "$(ls -A fail)" ] && ok || bad "an uncreatable output left files behind: $(ls -A fail)"
# Stopped mid-stream (the built-in sample, one row per chunk): the temporaries go too.
set +e
"$KLCL" eval --chunk-rows 1 --per-row fail/rows.npy --grad fail/grad.npy --loss kl >term.out 2>term.err &
pid=$!
for _ in $(seq 300); do
    ls fail 2>/dev/null | grep -q tmp && break
    sleep 0.05
done
sleep 0.1
kill -TERM "$pid"
wait "$pid"
rc=$?
set -e
[ "$rc" -eq 143 ] && ok || bad "SIGTERM mid-run: exit $rc, expected 143 ($(cat term.err))"
[ -z "$(ls -A fail)" ] && ok || bad "SIGTERM mid-run left files behind: $(ls -A fail)"

echo "== output streams"
expect 0 "" eval "${IN[@]}" --quiet --per-row quiet.npy
[ ! -s "expect$n_expect.out" ] && [ -f quiet.npy ] && ok || bad "--quiet printed a summary or wrote no file"
expect 0 "" eval "${IN[@]}"
[ ! -s "expect$n_expect.err" ] && ok || bad "stderr is not a terminal, yet something was printed there"
if script -V 2>/dev/null | grep -q util-linux; then
    # A pseudo-terminal on stderr (util-linux script): the progress bar shows rows, throughput and ETA.
    script -qec "'$KLCL' eval ${IN[*]} --chunk-rows 1 >/dev/null" progress.log >/dev/null 2>&1 || true
    grep -q "rows/s" progress.log && grep -q "ETA" progress.log && ok || bad "no progress bar on a terminal"
else
    echo "note: util-linux script(1) not found; the progress bar on a terminal was not tested"
fi

echo "== the built-in sample"
expect 0 "" eval --verify --json
j="expect$n_expect.out"
json_ok "$j" && ok || bad "the sample's JSON does not parse"
for loss in kl rkl jsd tvd ce; do
    [ -n "$(value "$j" "$loss")" ] && [ "$(value "$j" "$loss")" != null ] && ok || bad "sample: no value for $loss"
done
for key in device rows vocab seconds teacher_entropy student_entropy top1_agreement accuracy; do
    [ -n "$(top "$j" "$key")" ] && [ "$(top "$j" "$key")" != null ] && ok || bad "sample: top-level $key missing"
done
[ "$(top "$j" rows)" = 4096 ] && [ "$(top "$j" vocab)" = 32000 ] && ok || bad "sample: not 4096 x 32000"
[ "$(top "$j" verify_ok)" = true ] && ok || bad "sample: --verify not ok"
grep -q '"rows_skipped": 64' "$j" && ok || bad "sample: padding rows not skipped"

echo "== klcl tune"
# Its own table in the work folder: nothing outside the test is read or written.
export KLCL_TUNE_FILE="$WORK/tuning.tsv"
expect 0 "" tune --help
grep -q -- "--max-work-group" "expect$n_expect.out" && ok || bad "tune --help does not list --max-work-group"
expect 0 "" help tune
expect 2 "unknown argument '--bogus'" tune --bogus
expect 2 "--rows needs a value" tune --rows
expect 2 "--reps" tune --reps 0
expect 2 "--reps 500" tune --reps 500
expect 2 "--vocab" tune --vocab 0
expect 2 "--vocab" tune --vocab 1024,x
expect 2 "--vocab.*at most 4" tune --vocab 8,8,8,8,8
expect 2 "--split-vocab 0" tune --split-vocab 0
expect 2 "--split-vocab.*at most 4" tune --split-vocab 8,8,8,8,8
expect 2 "--sample-seconds" tune --sample-seconds -1
expect 2 "--max-work-group 5000" tune --max-work-group 5000
expect 2 "--device cpu" tune --device cpu
expect 2 "--jobs" tune --jobs 0
expect 2 "--jobs" tune --jobs 65
expect 2 "--check 3:0" tune --check 3:0
expect 2 "--check 4:12" tune --check 4:12
expect 2 "--check 1:8x" tune --check 1:8x
[ ! -e "$KLCL_TUNE_FILE" ] && ok || bad "a refused tune command wrote the table"
if [ "$have_device" = 1 ]; then
    expect 3 "no-such-device" tune --device no-such-device --vocab 64 --rows 2 --reps 1
    # Sizes 1 and 2 only: each size is a build and a check of every loss in a child process (minutes of CI).
    TINY=(--vocab 1000 --split-vocab 4096 --rows 8 --reps 1 --sample-seconds 0.002 --max-work-group 2)
    expect 0 "" tune "${TINY[@]}" --dry-run
    [ ! -e "$KLCL_TUNE_FILE" ] && ok || bad "tune --dry-run wrote the table"
    # Progress on stderr: both sizes checked in processes of their own, then the timing.
    for line in "work-group size 1: passed" "work-group size 2: passed" "timing work-group sizes \\(2 candidates\\)" \
        "checking vector width (8|16) at work-group size [12] in a process of its own" "timing split columns"; do
        grep -qE "^klcl tune: $line" "expect$n_expect.err" && ok || bad "tune progress lacks '$line'"
    done
    expect 0 "" tune "${TINY[@]}" --dry-run --quiet --jobs 1
    [ ! -s "expect$n_expect.err" ] && ok || bad "tune --quiet wrote to stderr: $(cat "expect$n_expect.err")"
    # One pair checked the way the tuner's own processes check it: the width it used, then exit 0.
    expect 0 "" tune --check 1:8
    [ "$(cat "expect$n_expect.out")" = "8 " ] && ok || bad "tune --check 1:8 printed '$(cat "expect$n_expect.out")'"
    # A build the device's compiler refuses: each check fails, saying why, and so does the run.
    KLCL_BUILD_OPTIONS=-no-such-option expect 3 "clBuildProgram" tune "${TINY[@]}" --dry-run
    grep -q "^klcl tune: work-group size 1: failed (exit status 12): .*clBuildProgram" "expect$n_expect.err" &&
        ok || bad "a failed check does not say why: $(cat "expect$n_expect.err")"
    KLCL_BUILD_OPTIONS=-no-such-option run check-fails tune --check 1:0
    [ "$rc" = 12 ] && grep -q "clBuildProgram" check-fails.out && ok ||
        bad "tune --check with a refused build: exit $rc, '$(cat check-fails.out)'"
    expect 0 "" tune "${TINY[@]}" --json
    j="expect$n_expect.out"
    json_ok "$j" && ok || bad "tune --json is not valid JSON"
    [ "$(top "$j" written)" = true ] && [ -s "$KLCL_TUNE_FILE" ] && ok || bad "tune did not write the table"
    best=$(top "$j" best_work_group)
    best_split=$(top "$j" best_split_columns)
    [ -n "$best_split" ] && [ "$best_split" != null ] && grep -q '"split_columns": \[{"split_columns": ' "$j" &&
        ok || bad "tune --json lacks the split columns"
    # Sizes the child checks rejected are never stored.
    for w in $(grep -o '"work_group": [0-9]*, "why"' "$j" | grep -o '[0-9]*'); do
        [ "$w" != "$best" ] && ok || bad "tune stored the rejected size $w"
    done
    grep -q '"candidates": \[{"work_group": 1,' "$j" && ok || bad "tune did not time work-group size 1"
    expect 0 "" tune --show --json
    json_ok "expect$n_expect.out" && ok || bad "tune --show --json is not valid JSON"
    [ "$(top "expect$n_expect.out" source)" = '"table"' ] && [ "$(top "expect$n_expect.out" work_group)" = "$best" ] &&
        ok || bad "after tune, a new context does not use the table's $best: $(cat "expect$n_expect.out")"
    [ "$(top "expect$n_expect.out" split_columns_source)" = '"table"' ] &&
        [ "$(top "expect$n_expect.out" split_columns)" = "$best_split" ] &&
        ok || bad "after tune, a new context does not use the table's split columns $best_split"
    KLCL_SPLIT_COLUMNS=1024 expect 0 "" tune --show --json
    [ "$(top "expect$n_expect.out" split_columns_source)" = '"env"' ] &&
        [ "$(top "expect$n_expect.out" split_columns)" = 1024 ] &&
        ok || bad "KLCL_SPLIT_COLUMNS does not take precedence over the table"
    KLCL_WORK_GROUP=2 expect 0 "" tune --show --json
    [ "$(top "expect$n_expect.out" source)" = '"env"' ] && [ "$(top "expect$n_expect.out" work_group)" = 2 ] &&
        ok || bad "KLCL_WORK_GROUP does not take precedence over the table"
    expect 0 "" tune --show
    grep -q "^work group  $best (table)" "expect$n_expect.out" && ok || bad "tune --show text lacks the size"
    grep -q "^split       parts of $best_split columns or more (table)" "expect$n_expect.out" &&
        ok || bad "tune --show text lacks the split columns"
fi
unset KLCL_TUNE_FILE

echo "== klcl bench"
# A copy of klcl alone in a folder, with nothing on PATH: klcl-bench cannot be found.
mkdir -p alone empty-path
cp "$KLCL" alone/klcl
set +e
PATH="$WORK/empty-path" ./alone/klcl bench >bench.out 2>bench.err
rc=$?
set -e
[ "$rc" -eq 2 ] && grep -q "klcl-bench was not found" bench.err && ok || bad "bench without klcl-bench: exit $rc"
if [ -x "$(dirname "$KLCL")/klcl-bench" ]; then
    # Found next to klcl: its own usage message and exit status come through.
    expect 2 "usage: klcl-bench" bench --no-such-flag
    # --ops: unknown names and repeats refused, naming the option; the operations asked for are the ones run
    # (kd with labels and a teacher), in that order, and no others.
    expect 2 "^klcl-bench: --ops kl,nope: expected" bench --ops kl,nope
    expect 2 "--ops jsd\+grad,jsd\+grad: .*each once" bench --ops jsd+grad,jsd+grad
    run bench_ops bench --mib 0.125 --vocab 4096 --reps 1 --small-rows 0 --dtype f32 --ops kd+grad,tvd
    ops_run=$(awk '$2 == "f32" && $1 != "read" {print $1}' bench_ops.out | tr '\n' ' ')
    [ "$rc" -eq 0 ] && [ "$ops_run" = "kd+grad tvd " ] && ok ||
        bad "bench --ops kd+grad,tvd: exit $rc, ran '$ops_run'; stderr: $(cat bench_ops.err)"
else
    echo "note: klcl-bench not built; only its absence was tested"
fi

echo "== NumPy-written files"
# The first python3 that has NumPy (Debian's python3-numpy lives with /usr/bin/python3).
numpy_python=""
for py in python3 /usr/bin/python3; do
    if command -v "$py" >/dev/null 2>&1 && "$py" -c "import numpy" >/dev/null 2>&1; then
        numpy_python=$py
        break
    fi
done
if [ -n "$numpy_python" ]; then
    "$numpy_python" - <<'EOF'
import numpy as np
t = np.load("t.npy"); s = np.load("s.npy"); y = np.load("y.npy")
np.save("np_t.npy", t.reshape(4, 9, 1000)); np.save("np_s.npy", s.reshape(4, 9, 1000))
np.save("np_t16.npy", t.astype(np.float16)); np.save("np_s16.npy", s.astype(np.float16))
np.save("np_tbf.npy", (t.view(np.uint32) >> 16).astype(np.uint16))
np.save("np_sbf.npy", (s.view(np.uint32) >> 16).astype(np.uint16))
np.save("np_y.npy", y.astype(np.int64))
EOF
    same_as_base --teacher np_t.npy --student np_s.npy --labels np_y.npy
    same_as_base --teacher np_t16.npy --student np_s16.npy --labels np_y.npy
    same_as_base --teacher np_tbf.npy --student np_sbf.npy --labels np_y.npy --bf16
else
    echo "note: NumPy is not importable: the NumPy-written files part did not run (not a failure)"
fi

echo "cli: $passed checks passed, $failed failed (device: $([ "$have_device" = 1 ] && echo OpenCL || echo none))"
[ "$failed" -eq 0 ]
