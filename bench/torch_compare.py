#!/usr/bin/python3
"""klcl against PyTorch on the same cases: reads the CSV that `klcl-bench --csv FILE` wrote, times the same
operations and shapes with PyTorch (eager; `torch.compile` too where this PyTorch has it), and prints one
table of ratios (PyTorch time / klcl time: above 1 means klcl is faster) with geometric means.

    ./build/klcl-bench --csv /tmp/klcl.csv && /usr/bin/python3 bench/torch_compare.py /tmp/klcl.csv

Runs on the CPU, or on CUDA with --cuda. Not part of the tests: it needs python3-torch.
PyTorch computes each loss the way a training script does (log_softmax, then the loss; every loss klcl-bench
can run, with klcl's default parameters), in the case's element type (the CSV's dtype column: f32, bf16 or
f16); a type this PyTorch cannot compute on this device is reported as such and left out of the means.
--check compares PyTorch's loss values with klcl's (`klcl eval`) on a small case of every loss first."""
import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F


# klcl_loss_desc_init's defaults, which klcl-bench runs with: tau 1, scale 1, beta 0.5, lambda 0.1, alpha 0.5.
BETA, LAMBDA, ALPHA = 0.5, 0.1, 0.5


def mixture_kl(la, lb, wa):
    """KL(a || m) with m = wa a + (1 - wa) b, log m by logsumexp (never the log of a sum of probabilities),
    as TRL's GKD trainer and DistiLLM write their mixtures."""
    lm = torch.logsumexp(torch.stack([la + math.log(wa), lb + math.log(1 - wa)]), 0)
    return F.kl_div(lm, la, log_target=True, reduction="batchmean")


def loss_value(name, t, s, y):
    """The loss of klcl's `name` the way a training script writes it: log_softmax, then the loss, mean
    over the rows."""
    if name == "ce":
        return F.cross_entropy(s, y)
    lq, lp = F.log_softmax(s, -1), F.log_softmax(t, -1)
    if name == "kl":
        return F.kl_div(lq, lp, log_target=True, reduction="batchmean")
    if name == "rkl":
        return F.kl_div(lp, lq, log_target=True, reduction="batchmean")
    if name == "soft_ce":
        return -(lp.exp() * lq).sum(-1).mean()
    if name == "jsd":
        lm = torch.logsumexp(torch.stack([lq + math.log(1 - BETA), lp + math.log(BETA)]), 0)
        return BETA * F.kl_div(lm, lp, log_target=True, reduction="batchmean") + (1 - BETA) * F.kl_div(
            lm, lq, log_target=True, reduction="batchmean")
    if name == "skl":
        return mixture_kl(lp, lq, LAMBDA)
    if name == "srkl":
        return mixture_kl(lq, lp, LAMBDA)
    if name == "tvd":
        return 0.5 * (lp.exp() - lq.exp()).abs().sum(-1).mean()
    if name == "kd":
        return ALPHA * F.cross_entropy(s, y) + (1 - ALPHA) * F.kl_div(lq, lp, log_target=True, reduction="batchmean")
    raise ValueError(name)


def operation(name, grad):
    """klcl-bench's op `name` (forward) or `name+grad` (the loss and its gradient with respect to s)."""
    def forward(t, s, y):
        with torch.no_grad():
            return loss_value(name, t, s, y)

    def with_grad(t, s, y):
        s = s.detach().requires_grad_()
        loss_value(name, t, s, y).backward()
        return s.grad

    return with_grad if grad else forward


DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}

LOSSES = ("kl", "rkl", "soft_ce", "ce", "jsd", "skl", "srkl", "tvd", "kd")
OPS = {name + suffix: operation(name, suffix == "+grad") for name in LOSSES for suffix in ("", "+grad")}


def check_values(klcl):
    """PyTorch's loss values, in double precision, against klcl's CPU reference (`klcl eval --device cpu`,
    double precision, its per-row values stored as fp32) on the same 8 x 1000 fp32 logits and labels: every
    loss, default parameters. Returns the number of losses that disagree by more than 1e-7 relative."""
    import numpy
    g = torch.Generator().manual_seed(2)
    n, v = 8, 1000
    t = torch.rand(n, v, generator=g) * 12 - 6
    s = torch.rand(n, v, generator=g) * 12 - 6
    y = (torch.arange(n) * 7919) % v
    with tempfile.TemporaryDirectory() as d:
        paths = [os.path.join(d, f) for f in ("t.npy", "s.npy", "y.npy")]
        for path, x in zip(paths, (t.numpy(), s.numpy(), y.numpy().astype(numpy.int32))):
            numpy.save(path, x)
        run = subprocess.run([klcl, "eval", "--teacher", paths[0], "--student", paths[1], "--labels", paths[2],
                              "--loss", ",".join(LOSSES), "--device", "cpu", "--json", "--quiet"],
                             capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit(f"--check: {klcl} eval failed ({run.returncode}): {run.stderr.strip()}")
    metrics = json.loads(run.stdout)["metrics"]
    bad = 0
    print(f"PyTorch (double) against klcl's reference on {n} x {v}:")
    for name in LOSSES:
        want = metrics[name]["value"]
        got = float(loss_value(name, t.double(), s.double(), y))
        ok = want is not None and abs(got - want) <= 1e-7 * max(1.0, abs(want))
        bad += not ok
        print(f"  {name:<8} klcl {want!r:<22} PyTorch {got!r:<22} {'ok' if ok else 'DIFFERS'}")
    return bad


# The shortest timing sample and the most runs in one, as klcl-bench times klcl.
SAMPLE_MIN_S = 0.02
SAMPLE_MAX_RUNS = 1000


def median_seconds(fn, args, reps, sync):
    """Median over reps samples, after a warm-up, of the mean of as many back-to-back runs as fill
    SAMPLE_MIN_S (at least one)."""
    t0 = time.perf_counter()
    fn(*args)  # warm-up
    sync()
    one = time.perf_counter() - t0
    runs = max(1, min(SAMPLE_MAX_RUNS, math.ceil(SAMPLE_MIN_S / one))) if one > 0 else SAMPLE_MAX_RUNS
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(runs):
            fn(*args)
        sync()
        times.append((time.perf_counter() - t0) / runs)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("klcl_csv", nargs="?")
    ap.add_argument("--check", action="store_true",
                    help="first compare PyTorch's loss values with klcl's on a small case (exit 1 if one differs)")
    ap.add_argument("--klcl", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                   "build", "klcl"), help="the klcl tool, for --check")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--cuda", action="store_true")
    ap.add_argument("--csv", help="write the joined table here")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="PyTorch CPU threads (default: all cores)")
    args = ap.parse_args()
    if not args.klcl_csv and not args.check:
        ap.error("a klcl-bench CSV (or --check) is needed")
    if args.check and check_values(args.klcl):
        sys.exit(1)
    if not args.klcl_csv:
        return
    torch.set_num_threads(max(1, args.threads))
    dev = torch.device("cuda" if args.cuda else "cpu")
    sync = torch.cuda.synchronize if args.cuda else (lambda: None)
    compiled = {}
    if hasattr(torch, "compile"):
        compiled = {name: torch.compile(fn) for name, fn in OPS.items()}

    rows = list(csv.DictReader(open(args.klcl_csv)))
    print(f"klcl on {rows[0]['device']} against PyTorch {torch.__version__} on {dev} "
          f"({torch.get_num_threads()} threads); ratio = PyTorch time / klcl time")
    head = f"{'op':<12} {'type':<5} {'N':>6} {'V':>7} {'klcl ms':>9} {'torch ms':>9} {'ratio':>7}"
    if compiled:
        head += f" {'compiled ms':>11} {'ratio':>7}"
    print(head)
    ratios, out = {}, []
    for r in rows:
        op, n, v, dt = r["op"], int(r["rows"]), int(r["vocab"]), r.get("dtype", "f32")
        if op not in OPS or dt not in DTYPES:
            continue
        g = torch.Generator(device=dev).manual_seed(1)
        # The same distribution as klcl-bench: uniform in [-6, 6), in the case's type, drawn on the device
        # (drawing 2^27 values on the host for each case would cost more than the timed calls).
        t = (torch.rand(n, v, generator=g, device=dev) * 12 - 6).to(DTYPES[dt])
        s = (torch.rand(n, v, generator=g, device=dev) * 12 - 6).to(DTYPES[dt])
        y = ((torch.arange(n) * 7919) % v).to(dev)
        klcl_s = float(r["seconds"])
        try:
            eager = median_seconds(OPS[op], (t, s, y), args.reps, sync)
        except RuntimeError as e:  # e.g. a half type this PyTorch has no CPU kernel for
            print(f"{op:<12} {dt:<5} {n:>6} {v:>7} {1e3 * klcl_s:>9.2f}  PyTorch cannot: {str(e).splitlines()[0][:60]}")
            continue
        line = f"{op:<12} {dt:<5} {n:>6} {v:>7} {1e3 * klcl_s:>9.2f} {1e3 * eager:>9.2f} {eager / klcl_s:>7.2f}"
        rec = {"op": op, "dtype": dt, "rows": n, "vocab": v, "klcl_s": klcl_s, "torch_s": eager,
               "ratio": eager / klcl_s}
        key = op if dt == "f32" else f"{op} {dt}"
        ratios.setdefault(key, []).append(eager / klcl_s)
        if compiled:
            comp = median_seconds(compiled[op], (t, s, y), args.reps, sync)
            line += f" {1e3 * comp:>11.2f} {comp / klcl_s:>7.2f}"
            rec.update(compiled_s=comp, compiled_ratio=comp / klcl_s)
            ratios.setdefault(key + " (compiled)", []).append(comp / klcl_s)
        print(line)
        out.append(rec)
        del t, s, y

    def gmean(xs):
        return math.exp(sum(math.log(x) for x in xs) / len(xs))

    print("\ngeometric mean of the ratios (above 1: klcl faster); slowest case in brackets")
    for op, rs in ratios.items():
        print(f"  {op:<20} {gmean(rs):6.2f}  [min {min(rs):.2f}]")
    every = [x for k, rs in ratios.items() if "compiled" not in k for x in rs]
    print(f"  {'all, eager':<20} {gmean(every):6.2f}  [min {min(every):.2f}]")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=sorted({k for rec in out for k in rec}))
            w.writeheader()
            w.writerows(out)


if __name__ == "__main__":
    main()
