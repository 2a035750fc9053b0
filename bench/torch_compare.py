#!/usr/bin/python3
"""klcl against PyTorch on the same cases: reads the CSV that `klcl-bench --csv FILE` wrote, times the same
operations and shapes with PyTorch (eager; `torch.compile` too where this PyTorch has it), and prints one
table of ratios (PyTorch time / klcl time: above 1 means klcl is faster) with geometric means.

    ./build/klcl-bench --csv /tmp/klcl.csv && /usr/bin/python3 bench/torch_compare.py /tmp/klcl.csv

Runs on the CPU, or on CUDA with --cuda. Not part of the tests: it needs python3-torch.
PyTorch computes each loss the way a training script does (log_softmax, then the loss), in the case's
element type (the CSV's dtype column: f32, bf16 or f16); a type this PyTorch cannot compute on this device
is reported as such and left out of the means."""
import argparse
import csv
import math
import os
import statistics
import time

import torch
import torch.nn.functional as F


def kl_forward(t, s, y):
    with torch.no_grad():
        return F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean")


def kl_grad(t, s, y):
    s = s.detach().requires_grad_()
    F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean").backward()
    return s.grad


def ce_grad(t, s, y):
    s = s.detach().requires_grad_()
    F.cross_entropy(s, y).backward()
    return s.grad


def jsd_grad(t, s, y, beta=0.5):
    """Generalized JSD as TRL's GKD trainer writes it (mixture by logsumexp)."""
    s = s.detach().requires_grad_()
    lq, lp = F.log_softmax(s, -1), F.log_softmax(t, -1)
    lm = torch.logsumexp(torch.stack([lq + math.log(1 - beta), lp + math.log(beta)]), 0)
    loss = beta * F.kl_div(lm, lp, log_target=True, reduction="batchmean") + (1 - beta) * F.kl_div(
        lm, lq, log_target=True, reduction="batchmean")
    loss.backward()
    return s.grad


DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}

OPS = {"kl": kl_forward, "kl+grad": kl_grad, "ce+grad": ce_grad, "jsd+grad": jsd_grad}


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
    ap.add_argument("klcl_csv")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--cuda", action="store_true")
    ap.add_argument("--csv", help="write the joined table here")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="PyTorch CPU threads (default: all cores)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, args.threads))
    dev = torch.device("cuda" if args.cuda else "cpu")
    sync = torch.cuda.synchronize if args.cuda else (lambda: None)
    compiled = {}
    if hasattr(torch, "compile"):
        compiled = {name: torch.compile(fn) for name, fn in OPS.items()}

    rows = list(csv.DictReader(open(args.klcl_csv)))
    print(f"klcl on {rows[0]['device']} against PyTorch {torch.__version__} on {dev} "
          f"({torch.get_num_threads()} threads); ratio = PyTorch time / klcl time")
    head = f"{'op':<9} {'type':<5} {'N':>6} {'V':>7} {'klcl ms':>9} {'torch ms':>9} {'ratio':>7}"
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
            print(f"{op:<9} {dt:<5} {n:>6} {v:>7} {1e3 * klcl_s:>9.2f}  PyTorch cannot: {str(e).splitlines()[0][:60]}")
            continue
        line = f"{op:<9} {dt:<5} {n:>6} {v:>7} {1e3 * klcl_s:>9.2f} {1e3 * eager:>9.2f} {eager / klcl_s:>7.2f}"
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
