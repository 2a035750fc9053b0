#!/usr/bin/python3
"""Plot klcl-bench results: the fraction of the device's limits each operation reaches, against the
vocabulary V (log2 axis), one line per operation (at each V the case with the most rows). Reads the CSV (`klcl-bench --csv FILE`) or the JSON
(`klcl-bench --json FILE`) and writes a PNG.

    ./build/klcl-bench --json /tmp/klcl.json && /usr/bin/python3 bench/plot.py /tmp/klcl.json -o fraction.png

Two panels by default: the fraction of the streaming-read limit and of the exp limit (--limit picks one).
Needs matplotlib (Debian: python3-matplotlib); without it, says so and exits 2. Not part of the tests."""
import argparse
import csv
import json
import sys


def label(op, dtype):
    return op if dtype in (None, "", "f32") else f"{op} {dtype}"


def largest_batches(rows):
    """One row per (op, vocab): the one with the most rows. klcl-bench's few-row shapes (--small-rows) share a
    vocabulary with a full-size one; they measure launch and split overheads, not the curve against V."""
    best = {}
    for r in rows:
        key = (r["op"], r["vocab"])
        if key not in best or r["rows"] > best[key]["rows"]:
            best[key] = r
    return [r for r in rows if best[(r["op"], r["vocab"])] is r]


def load(path):
    """Rows of {op, rows, vocab, frac_read, frac_exp} and a title, from klcl-bench's CSV or JSON; an op in
    another element type than fp32 is labelled with it ("kl bf16")."""
    with open(path, newline="") as f:
        text = f.read()
    if text.lstrip().startswith("{"):
        doc = json.loads(text)
        if doc.get("schema", "").split("/")[0] != "klcl-bench":
            raise ValueError("not a klcl-bench JSON file (no \"schema\": \"klcl-bench/...\")")
        dev = doc["device"]
        title = (f"{dev['name']} ({dev['platform']} {dev['driver']}), "
                 f"work-group {dev['work_group']} ({dev['work_group_source']})")
        rows = [{"op": label(c["op"], c.get("dtype")), "rows": int(c["rows"]), "vocab": int(c["vocab"]),
                 "frac_read": c["fraction_of_read_limit"], "frac_exp": c["fraction_of_exp_limit"]}
                for c in doc["cases"]]
        return largest_batches(rows), f"klcl {doc['klcl_version']} on {title}"
    reader = csv.DictReader(text.splitlines())
    need = {"device", "op", "vocab", "frac_bandwidth", "frac_exp"}
    if not reader.fieldnames or not need <= set(reader.fieldnames):
        raise ValueError("not a klcl-bench CSV file (columns device, op, vocab, frac_bandwidth, frac_exp expected)")
    rows, device = [], ""
    for r in reader:
        device = r["device"]
        rows.append({"op": label(r["op"], r.get("dtype")), "rows": int(r.get("rows") or 0), "vocab": int(r["vocab"]),
                     "frac_read": float(r["frac_bandwidth"]), "frac_exp": float(r["frac_exp"])})
    return largest_batches(rows), f"klcl on {device}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", help="klcl-bench --csv or --json output")
    ap.add_argument("-o", "--output", help="PNG to write (default: the input's name with .png)")
    ap.add_argument("--limit", choices=["both", "read", "exp"], default="both")
    args = ap.parse_args()

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot.py: matplotlib is not installed (Debian: apt-get install python3-matplotlib, then run this "
              "with /usr/bin/python3)", file=sys.stderr)
        return 2
    try:
        rows, title = load(args.results)
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"plot.py: {args.results}: {e}", file=sys.stderr)
        return 2
    if not rows:
        print(f"plot.py: {args.results}: no cases", file=sys.stderr)
        return 2
    out = args.output or (args.results.rsplit(".", 1)[0] + ".png")

    panels = [("frac_read", "fraction of the streaming-read limit"), ("frac_exp", "fraction of the exp limit")]
    if args.limit != "both":
        panels = [p for p in panels if p[0] == "frac_" + args.limit]
    ops = list(dict.fromkeys(r["op"] for r in rows))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        for op in ops:
            pts = sorted((r["vocab"], r[key]) for r in rows if r["op"] == op and r[key] is not None)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=op)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("vocabulary V")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    try:
        fig.savefig(out, dpi=110)
    except OSError as e:
        print(f"plot.py: cannot write {out}: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
