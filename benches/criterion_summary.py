#!/usr/bin/env python3
"""Prints criterion's results as a Markdown table: the median time of each benchmark, its
median absolute deviation, and, with --baseline NAME, the median of that saved baseline and the
ratio.

    cargo bench --bench layer -- --save-baseline before      # once, on the old code
    cargo bench --bench layer -- --baseline before           # on the new code
    python3 benches/criterion_summary.py --baseline before [FILTER]

Reads target/criterion/<group>/<function>/<value>/{new,<baseline>}/estimates.json.
"""
import argparse
import json
import os
import sys


def fmt(ns):
    if ns is None:
        return "-"
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.3g} µs"
    return f"{ns:.3g} ns"


def load(path):
    try:
        with open(path) as f:
            est = json.load(f)
    except OSError:
        return None, None
    return est["median"]["point_estimate"], est["median_abs_dev"]["point_estimate"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", help="a baseline saved with --save-baseline")
    parser.add_argument("--dir", default=os.path.join("target", "criterion"))
    parser.add_argument("filter", nargs="?", default="")
    args = parser.parse_args()
    rows = []
    for root, _dirs, files in os.walk(args.dir):
        if "benchmark.json" not in files or os.path.basename(root) != "new":
            continue
        with open(os.path.join(root, "benchmark.json")) as f:
            bench_id = json.load(f)["full_id"]
        if args.filter not in bench_id:
            continue
        median, mad = load(os.path.join(root, "estimates.json"))
        base = None
        if args.baseline:
            base, _ = load(os.path.join(os.path.dirname(root), args.baseline, "estimates.json"))
        rows.append((bench_id, median, mad, base))
    if not rows:
        sys.exit(f"no criterion results under {args.dir}")
    rows.sort()
    if args.baseline:
        print(f"| benchmark | {args.baseline} (median) | now (median ± MAD) | now / {args.baseline} |")
        print("|---|---:|---:|---:|")
    else:
        print("| benchmark | median | ± MAD |")
        print("|---|---:|---:|")
    for bench_id, median, mad, base in rows:
        if args.baseline:
            ratio = f"{median / base:.2f}" if base else "-"
            print(f"| {bench_id} | {fmt(base)} | {fmt(median)} ± {fmt(mad)} | {ratio} |")
        else:
            print(f"| {bench_id} | {fmt(median)} | {fmt(mad)} |")


if __name__ == "__main__":
    main()
