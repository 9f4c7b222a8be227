#!/usr/bin/env python3
"""rdask and Dask side by side, in one invocation: the same workloads, the same threads.

    python3 benches/compare/compare.py            # full run (Dask takes several minutes)
    python3 benches/compare/compare.py --quick    # fewer repetitions

It installs Python's dask[distributed] into benches/compare/.venv if it is missing, builds
rdask-bench in release mode, runs `rdask-bench --compare` and then the Dask side
(dask_side.py) with Dask's default settings and with its best one for many small tasks
(`distributed.scheduler.worker-saturation: inf`), and prints a table: workload, rdask
median, Dask median (the better of its two settings, named), how many times better rdask
is, and min–max of each. See BENCHMARKS.md."""

import argparse
import json
import os
import statistics
import subprocess
import sys
import venv

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
VENV = os.path.join(HERE, ".venv")
PY = os.path.join(VENV, "bin", "python")
HIGHER_IS_BETTER = {"tasks/s", "MB/s", "ratio"}


def ensure_dask():
    if not os.path.exists(PY):
        print(f"creating {VENV}", file=sys.stderr)
        venv.create(VENV, with_pip=True)
    ok = subprocess.run([PY, "-c", "import distributed"], capture_output=True).returncode == 0
    if not ok:
        print("installing dask[distributed] into the virtual environment", file=sys.stderr)
        subprocess.run([PY, "-m", "pip", "install", "-q", "dask[distributed]"], check=True)
    out = subprocess.run([PY, "-c", "import dask, distributed; print(dask.__version__, distributed.__version__)"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def lines(cmd, label):
    print(f"running {label}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, RUST_LOG="warn", RDASK_NO_DASHBOARD="1"))
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{label} failed ({proc.returncode})")
    figures = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            f = json.loads(line)
            figures[(f["setting"].split(" (")[0], f["workload"])] = f
    return figures


def describe(values, unit):
    if unit == "ratio":
        fmt = "{:.3f}"
    elif unit in ("tasks/s", "MB/s") or max(values) >= 100:
        fmt = "{:,.0f}"
    else:
        fmt = "{:.2f}" if max(values) < 10 else "{:.1f}"
    med = statistics.median(values)
    return fmt.format(med), f"{fmt.format(min(values))}–{fmt.format(max(values))}", med


def p99(values):
    s = sorted(values)
    return [s[round((len(s) - 1) * 0.99)]]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 repetitions, 1 of Dask's long workloads")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    repeats = 3 if args.quick else args.repeats
    big = 1 if args.quick else 3
    versions = ensure_dask()
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "rdask-benches"], cwd=ROOT, check=True)
    rdask = lines([os.path.join(ROOT, "target", "release", "rdask-bench"), "--compare",
                   "--repeats", str(repeats)], "rdask")
    dask_runs = {}
    for saturation in ("default", "inf"):
        dask_runs[saturation] = lines([PY, os.path.join(HERE, "dask_side.py"), "--repeats", str(repeats),
                                       "--big-repeats", str(big), "--saturation", saturation],
                                      f"Dask ({saturation} worker-saturation)")
    print()
    print(f"rdask vs Dask {versions.split()[0]} (distributed {versions.split()[1]}), "
          f"2 threads per worker/node, {repeats} repetitions (Dask's long workloads: {big}); "
          f"medians, min–max")
    header = ["setting", "workload", "rdask", "Dask (best setting)", "rdask ×", "rdask min–max", "Dask min–max"]
    rows = []
    for key, r in rdask.items():
        setting, workload = key
        variants = [(name, run[key]) for name, run in dask_runs.items() if key in run]
        if not variants:
            continue
        unit = r["unit"]
        stats = [("", r["values"], None)]
        if workload == "1,000 round trips":
            stats = [(" median", r["values"], lambda v: v), (" p99", p99(r["values"]), p99)]
        for tag, rv, pick in stats:
            best = None
            for name, d in variants:
                dv = pick(d["values"]) if pick else d["values"]
                med = statistics.median(dv)
                better = best is None or (med > best[2] if unit in HIGHER_IS_BETTER else med < best[2])
                if better:
                    best = (name, dv, med)
            rm, rr, rmed = describe(rv, unit)
            dm, dr, dmed = describe(best[1], unit)
            ratio = rmed / dmed if unit in HIGHER_IS_BETTER else dmed / rmed
            rows.append([setting, workload + tag, f"{rm} {unit}", f"{dm} {unit} ({best[0]})",
                         f"{ratio:,.1f}", rr, dr])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for row in [header, ["-" * w for w in widths]] + rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)))


if __name__ == "__main__":
    main()
