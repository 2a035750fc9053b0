#!/usr/bin/env python3
"""A/B comparison of klcl configurations on one device, in one run.

Runs klcl-bench once per configuration per round, the configurations alternating within each round
(A B C, A B C, ...) so that a drift of the machine's speed falls on all of them alike, keeps every run's
table and CSV, and prints per case the median time of each configuration over the rounds, its ratio to
the first configuration's, and its median fraction of the device's limit (read bandwidth on a GPU, exp
throughput on a CPU device).

A configuration is NAME or NAME:VAR=VALUE;VAR=VALUE...: environment settings for klcl-bench, for example
kernels from another folder (KLCL_KERNEL_DIR), options for the device's compiler (KLCL_BUILD_OPTIONS), a
loop or a strategy (KLCL_PREFETCH, KLCL_FUSE_GRAD, KLCL_VECTOR_WIDTH, KLCL_WORK_GROUP).

  bench/ab.py --rounds 3 --config base \\
      --config 'cap128:KLCL_BUILD_OPTIONS=-cl-nv-maxrregcount=128' \\
      -- --vocab 4096,32768,131072 --small-rows 0 --reps 5
"""
import argparse
import csv
import os
import statistics
import subprocess
import sys


def parse_config(text):
    name, _, settings = text.partition(":")
    if not name or "=" in name:
        raise argparse.ArgumentTypeError(f"configuration '{text}': NAME or NAME:VAR=VALUE;...")
    env = {}
    for item in filter(None, settings.split(";")):
        var, eq, value = item.partition("=")
        if not eq or not var:
            raise argparse.ArgumentTypeError(f"configuration '{text}': '{item}' is not VAR=VALUE")
        env[var] = value
    return name, env


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", default=os.path.join(root, "build", "klcl-bench"), help="klcl-bench to run")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each configuration (default 2)")
    ap.add_argument("--out", default=os.path.join(root, "build", "ab-results"),
                    help="folder for each run's table and CSV (default build/ab-results)")
    ap.add_argument("--config", type=parse_config, action="append", required=True,
                    help="NAME or NAME:VAR=VALUE;...; the first is the baseline")
    ap.add_argument("bench_args", nargs="*", help="arguments for klcl-bench, after --")
    a = ap.parse_args()
    names = [n for n, _ in a.config]
    if len(set(names)) != len(names):
        ap.error("configuration names must differ")
    if a.rounds < 1:
        ap.error("--rounds must be at least 1")
    if not os.access(a.bench, os.X_OK):
        ap.error(f"--bench: {a.bench} is not an executable (build klcl first)")
    os.makedirs(a.out, exist_ok=True)

    times = {}  # (op, dtype, rows, vocab) -> name -> [seconds]
    fracs = {}  # the same -> name -> [fraction of the limit]
    order = []
    for r in range(1, a.rounds + 1):
        for name, settings in a.config:
            stem = os.path.join(a.out, f"{name}-r{r}")
            env = dict(os.environ, **settings)
            cmd = [a.bench, *a.bench_args, "--csv", stem + ".csv"]
            print(f"round {r}, {name}: {' '.join(f'{k}={v}' for k, v in settings.items())} {' '.join(cmd)}",
                  flush=True)
            with open(stem + ".txt", "w") as table:
                done = subprocess.run(cmd, env=env, stdout=table, stderr=subprocess.STDOUT)
            if done.returncode != 0:
                sys.exit(f"ab: {name} (round {r}) failed with status {done.returncode}; see {stem}.txt")
            with open(stem + ".csv", newline="") as f:
                for row in csv.DictReader(f):
                    key = (row["op"], row["dtype"], int(row["rows"]), int(row["vocab"]))
                    if key not in times:
                        order.append(key)
                    times.setdefault(key, {}).setdefault(name, []).append(float(row["seconds"]))
                    frac = row["frac_exp"] or row["frac_bandwidth"]
                    fracs.setdefault(key, {}).setdefault(name, []).append(float(frac) if frac else float("nan"))

    base = names[0]
    opw = max([9] + [len(key[0]) for key in order])
    head = f"{'op':<{opw}} {'type':<5} {'N':>6} {'V':>7}"
    for n in names:
        head += f" | {n + ' ms':>12} {'x' + base[:6]:>8} {'limit':>6}"
    print("\nmedian over rounds; x" + base + ": the baseline's time / this one's (above 1: faster); "
          "limit: fraction of the exp limit on CPU devices, of the read bandwidth elsewhere")
    print(head)
    for key in order:
        line = f"{key[0]:<{opw}} {key[1]:<5} {key[2]:>6} {key[3]:>7}"
        b = statistics.median(times[key][base]) if base in times[key] else float("nan")
        for n in names:
            if n not in times[key]:
                line += f" | {'-':>12} {'-':>8} {'-':>6}"
                continue
            t = statistics.median(times[key][n])
            line += f" | {t * 1e3:>12.3f} {b / t:>8.2f} {statistics.median(fracs[key][n]):>6.2f}"
        print(line)


if __name__ == "__main__":
    main()
