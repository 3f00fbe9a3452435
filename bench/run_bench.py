#!/usr/bin/env python3
"""make bench: run build/flashmla_bench once per microkernel and report against the roofline.

The benchmark binary is run twice, natively (the best microkernel CPUID allows) and with
FLASHMLA_ISA=portable (the microkernel is chosen once per process, capped by that variable).
Each run measures its own machine limits (peak.dram_read_*: DRAM read bandwidth;
peak.insn_*: the instruction peak of the products' arithmetic, register-resident FMA / VDPBF16PS
loops and, on AMX, TDPBF16PS on resident tiles, the fastest taken as the compute peak;
peak.matrix_qk_*: the microkernel's qk on L1-resident operands, reported beside it and used as
the peak only where no instruction peak exists; all the fastest repetition) next to the
operation cases, which report FlashMLA's FLOPs and bytes per call (the median repetition is used).

Per case and run: kernel (microkernel), ISA cap, threads, median µs, TFLOP/s, GB/s, arithmetic
intensity, roofline = min(compute peak, intensity x DRAM bandwidth) with the native run's peaks
(the machine's limits, measured in the same invocation), % of roofline (= roofline time /
measured time) and the speed-up over the portable run.

Outputs: a table on stdout, <out>/bench.csv, <out>/bench.json, <out>/roofline.png and the raw
Google Benchmark JSON of each run (<out>/raw_<run>.json).

Then the GPU benchmark (build/flashmla_bench_gpu, bench/gpu/bench_gpu.cpp), where the build has
the CUDA backend and a CUDA device answers: each operation on DeepSeek's shapes with the kernels
the library picks for the device and with the portable ones, CUDA-event times with L2 flushed
before each call, FlashMLA's FLOPs and bytes, and the roofline of the device's limits (memory:
2 x memory clock x bus width; tensor: NVIDIA's dense bf16 figure) beside a measured device copy:
a second table, <out>/gpu.csv and <out>/gpu.json. Without a device it says so and goes on.

    python bench/run_bench.py [--build-dir build] [--out bench_results] [--quick]
                              [--filter REGEX] [--threads N] [--gpu-only | --no-gpu]
                              [--gpu-exe PATH]
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

# (run name, FLASHMLA_ISA value; None = no cap)
RUNS = [("native", None), ("portable", "portable")]
BASELINE = "portable"

# --quick: the machine limits and the smallest case of each operation (seconds per run).
QUICK_FILTER = (r"grid_b2_sq1_sk140|grid_v32_b4_sq1|grid_sq62_sk592|grid_b2_sq64_sk64")

# Parts Google Benchmark appends to a case name.
_SUFFIX = re.compile(r"^(real_time|manual_time|repeats:\d+|min_time:[0-9.]+s?|"
                     r"min_warmup_time:[0-9.]+s?|iterations:\d+|threads:\d+)$")
_TO_US = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}
OPS = ["dense_decode", "sparse_decode", "sparse_prefill", "mha_fwd", "mha_bwd"]


def case_name(run_name: str) -> str:
    parts = run_name.split("/")
    return "/".join([parts[0]] + [p for p in parts[1:] if not _SUFFIX.match(p)])


def run_binary(exe: Path, isa: str | None, bench_filter: str, extra: list[str]) -> dict:
    env = dict(os.environ)
    env.pop("FLASHMLA_ISA", None)
    if isa:
        env["FLASHMLA_ISA"] = isa
    cmd = [str(exe), "--benchmark_format=json", f"--benchmark_filter={bench_filter}"] + extra
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    try:  # exit code 1 with JSON: some cases failed; they are reported with their errors
        return json.loads(proc.stdout)
    except json.JSONDecodeError as e:
        sys.exit(f"run_bench: {' '.join(cmd)} exited with {proc.returncode} and printed no "
                 f"valid JSON ({e})")


def parse_run(doc: dict) -> tuple[dict, dict, list[str]]:
    """Median rows by case name, the run's peaks, and error messages."""
    rows, errors = {}, []
    for b in doc.get("benchmarks", []):
        name = case_name(b.get("run_name", b["name"]))
        if b.get("error_occurred"):
            errors.append(f"{name}: {b.get('error_message', 'error')}")
            rows[name] = {"error": b.get("error_message", "error")}
            continue
        # Kernels: the median repetition; machine limits: the fastest (a ceiling is the best
        # rate observed). A single repetition (--reps 1) has no aggregates, only its run.
        wanted = "min" if name.startswith("peak.") else "median"
        agg = b.get("run_type") == "aggregate" and b.get("aggregate_name") == wanted
        single = b.get("run_type") == "iteration" and b.get("repetitions", 1) <= 1
        if not (agg or single):
            continue
        us = b["real_time"] * _TO_US[b.get("time_unit", "ns")]
        rows[name] = {
            "us": us,
            "flops": b.get("flops", 0.0),
            "bytes": b.get("bytes", 0.0),
            "threads": int(b.get("threads_used", 0)),
            "kernel": b.get("label", ""),
            "copies": int(b.get("copies", 1)),
            "cold": bool(b.get("cold", 0)),
        }
    dram = rows.get(next((n for n in rows if n.startswith("peak.dram_read")), ""), {})
    peaks = {}
    if "us" in dram:
        peaks["dram_bytes_per_s"] = dram["bytes"] / (dram["us"] * 1e-6)

    def fastest(prefix):
        cands = [(n, r) for n, r in rows.items() if n.startswith(prefix) and "us" in r]
        if not cands:
            return None, None
        name, r = max(cands, key=lambda nr: nr[1]["flops"] / nr[1]["us"])
        return name, r["flops"] / (r["us"] * 1e-6)

    # The compute ceiling: the instruction peak (register-resident FMA / VDPBF16PS / TDPBF16PS)
    # where the run has one, else the microkernel's own qk peak (the portable run).
    qk_name, qk_rate = fastest("peak.matrix")
    insn_name, insn_rate = fastest("peak.insn")
    if qk_rate:
        peaks["microkernel_qk_flops_per_s"] = qk_rate
        peaks["microkernel_qk_case"] = qk_name
    best_name, best_rate = (insn_name, insn_rate) if insn_rate else (qk_name, qk_rate)
    if best_rate:
        peaks["matrix_flops_per_s"] = best_rate
        peaks["matrix_case"] = best_name
    return rows, peaks, errors


def op_of(name: str) -> str:
    return name.split(".", 1)[0]


def roofline(flops_per_s: float, intensity: float, peak, bw) -> dict:
    """roof_tflops = min(peak, intensity x bw), the bound that sets it, and % of it reached;
    nothing where a limit is unknown or the case does no arithmetic."""
    if not peak or not bw or flops_per_s <= 0:
        return {}
    mem_roof = intensity * bw
    roof = min(peak, mem_roof)
    return {"roof_tflops": roof / 1e12, "bound": "compute" if peak <= mem_roof else "memory",
            "pct_roofline": 100.0 * flops_per_s / roof}


def build_rows(runs: dict) -> list[dict]:
    """One row per (case, run), cases in the binary's order."""
    order = []
    for run in runs.values():
        for name in run["rows"]:
            if not name.startswith("peak.") and name not in order:
                order.append(name)
    out = []
    for idx, name in enumerate(order, 1):
        base = runs.get(BASELINE, {}).get("rows", {}).get(name, {})
        for run_name, run in runs.items():
            r = run["rows"].get(name)
            if r is None:
                continue
            row = {"index": idx, "case": name, "op": op_of(name), "run": run_name,
                   "isa_cap": run["isa_cap"], "cpu_isa": run["cpu_isa"],
                   "kernel": r.get("kernel") or run["microkernel"],
                   "threads": r.get("threads") or run["threads"]}
            if "error" in r:
                row["error"] = r["error"]
                out.append(row)
                continue
            us, flops, nbytes = r["us"], r["flops"], r["bytes"]
            row.update(median_us=us, flops=flops, bytes=nbytes, copies=r["copies"],
                       cold=r["cold"])
            t = us * 1e-6
            row["tflops"] = flops / t / 1e12
            row["gbps"] = nbytes / t / 1e9
            row["intensity"] = flops / nbytes if nbytes > 0 else math.inf
            # The machine's limits: the native run's (its microkernel is the fastest the CPU
            # has); the portable run is judged against the same roofline.
            pk = runs[RUNS[0][0]]["peaks"] if RUNS[0][0] in runs else run["peaks"]
            peak, bw = pk.get("matrix_flops_per_s"), pk.get("dram_bytes_per_s")
            row.update(roofline(flops / t, row["intensity"], peak, bw))
            row["dram_gbps"] = (bw or 0) / 1e9
            row["matrix_peak_tflops"] = (peak or 0) / 1e12
            if "us" in base:
                row["speedup_vs_portable"] = base["us"] / us
            out.append(row)
    return out


def fmt(v, spec, missing="-"):
    return missing if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def print_table(rows: list[dict], runs: dict) -> None:
    for run_name, run in runs.items():
        pk = run["peaks"]
        dram = pk.get("dram_bytes_per_s", 0) / 1e9
        mat = pk.get("matrix_flops_per_s", 0) / 1e12
        qk = pk.get("microkernel_qk_flops_per_s", 0) / 1e12
        print(f"{run_name:>8}: microkernel {run['microkernel']}, {run['threads']} threads | "
              f"DRAM read {dram:.1f} GB/s | compute peak {mat:.3f} TFLOP/s "
              f"({pk.get('matrix_case', '-').removeprefix('peak.')}) | microkernel qk "
              f"{qk:.3f} TFLOP/s | {run['seconds']:.0f} s")
    width = max([len(r["case"]) for r in rows] + [4])
    head = (f"{'#':>3} {'case':<{width}} {'run':<8} {'kernel':<8} {'thr':>3} {'median us':>11} "
            f"{'TFLOP/s':>8} {'GB/s':>7} {'FLOP/B':>7} {'bound':<7} {'%roof':>6} "
            f"{'x port':>6} {'data':<4}")
    print(head)
    print("-" * len(head))
    for r in rows:
        if "error" in r:
            print(f"{r['index']:>3} {r['case']:<{width}} {r['run']:<8} ERROR: {r['error']}")
            continue
        print(f"{r['index']:>3} {r['case']:<{width}} {r['run']:<8} {r['kernel']:<8} "
              f"{r['threads']:>3} {r['median_us']:>11.1f} {r['tflops']:>8.4f} {r['gbps']:>7.2f} "
              f"{fmt(r['intensity'], '7.1f'):>7} {r.get('bound', '-'):<7} "
              f"{fmt(r.get('pct_roofline'), '6.1f'):>6} "
              f"{fmt(r.get('speedup_vs_portable'), '6.2f'):>6} "
              f"{'DRAM' if r['cold'] else 'LLC':<4}")
    print("x port: speed-up over the portable run; data: inputs rotated over copies larger than "
          "2x LLC (DRAM) or not (LLC); %roof: roofline time / measured time, roofline from the "
          "native run's DRAM bandwidth and compute peak")


CSV_FIELDS = ["index", "case", "op", "run", "isa_cap", "cpu_isa", "kernel", "threads",
              "median_us", "flops", "bytes", "tflops", "gbps", "intensity", "roof_tflops",
              "bound", "pct_roofline", "speedup_vs_portable", "dram_gbps", "matrix_peak_tflops",
              "cold", "copies", "error"]


def write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in CSV_FIELDS})


def plot(path: Path, rows: list[dict], runs: dict, title: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
        from matplotlib.ticker import FuncFormatter, LogLocator
    except ImportError:
        print("run_bench: matplotlib missing, no roofline.png (bash scripts/setup-python.sh)",
              file=sys.stderr)
        return
    import numpy as np

    ok = [r for r in rows if "error" not in r and r.get("flops", 0) > 0 and r.get("bytes", 0) > 0]
    fig, ax = plt.subplots(figsize=(12.5, 7.5))
    colors = dict(zip(OPS, ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]))
    run_style = {"native": dict(ls="-", marker="o", filled=True),
                 "portable": dict(ls="--", marker="s", filled=False)}
    # x range: every case and every run's ridge point (peak / bandwidth), so both the
    # bandwidth slope and the flat peak of each roofline show.
    xs = [r["intensity"] for r in ok] or [1.0]
    for run in runs.values():
        pk = run["peaks"]
        if pk.get("matrix_flops_per_s") and pk.get("dram_bytes_per_s"):
            xs.append(pk["matrix_flops_per_s"] / pk["dram_bytes_per_s"])
    x = np.logspace(math.log10(min(xs) / 4), math.log10(max(xs) * 20), 200)
    for run_name, run in runs.items():
        pk = run["peaks"]
        peak, bw = pk.get("matrix_flops_per_s"), pk.get("dram_bytes_per_s")
        if not peak or not bw:
            continue
        st = run_style.get(run_name, dict(ls=":", marker="^", filled=True))
        ax.plot(x, np.minimum(peak, x * bw) / 1e9, color="black", ls=st["ls"], lw=1.6,
                alpha=0.8)
        who = run_name if run["microkernel"] == run_name else f"{run_name} ({run['microkernel']})"
        # At the right end, past every case (the x range extends a decade beyond them).
        ax.annotate(f"{who}: compute peak {peak / 1e9:.0f} GFLOP/s",
                    xy=(x[-1], peak / 1e9), xytext=(-4, 3), textcoords="offset points",
                    ha="right", va="bottom", fontsize=9)
    # Each case: native and portable points joined by a thin line (the speed-up).
    by_case: dict[str, dict] = {}
    for r in ok:
        by_case.setdefault(r["case"], {})[r["run"]] = r
    for case, per_run in by_case.items():
        if len(per_run) > 1:
            pts = sorted(per_run.values(), key=lambda r: r["tflops"])
            ax.plot([p["intensity"] for p in pts], [p["tflops"] * 1e3 for p in pts],
                    color="0.7", lw=0.8, zorder=1)
    for r in ok:
        st = run_style.get(r["run"], dict(marker="^", filled=True))
        c = colors.get(r["op"], "tab:gray")
        ax.scatter(r["intensity"], r["tflops"] * 1e3, marker=st["marker"], s=46, zorder=3,
                   facecolors=c if st["filled"] else "white", edgecolors=c, linewidths=1.4)
        if r["run"] == "native":
            ax.annotate(str(r["index"]), (r["intensity"], r["tflops"] * 1e3), xytext=(4, 3),
                        textcoords="offset points", fontsize=7, color=c)
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):  # 1-2-5 ticks, plain numbers
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_xlabel("arithmetic intensity (FLOP/byte, FlashMLA's counting)")
    ax.set_ylabel("GFLOP/s")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    handles = [Line2D([], [], color=colors[o], marker="o", ls="", label=o) for o in OPS
               if any(r["op"] == o for r in ok)]
    for n, run in runs.items():
        if n not in run_style:
            continue
        pk = run["peaks"]
        handles.append(Line2D(
            [], [], color="black", marker=run_style[n]["marker"], ls=run_style[n]["ls"],
            markerfacecolor="black" if run_style[n]["filled"] else "white",
            label=f"{n} run ({run['microkernel']}): cases and roofline\n"
                  f"  DRAM read {pk.get('dram_bytes_per_s', 0) / 1e9:.1f} GB/s, "
                  f"compute peak {pk.get('matrix_flops_per_s', 0) / 1e9:.0f} GFLOP/s"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.text(0.01, 0.005, "numbers = case # in bench.csv / the table; grey line joins a case's "
             "native and portable points", fontsize=7, color="0.35")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


# ---- the GPU benchmark ----

GPU_NO_DEVICE = 3  # flashmla_bench_gpu's exit status when no CUDA device answers
GPU_CSV_FIELDS = ["case", "op", "kernels", "median_us", "flops", "bytes", "tflops", "gbps",
                  "intensity", "roof_tflops", "bound", "pct_roofline", "speedup_vs_portable",
                  "error"]


def run_gpu(exe: Path, bench_filter: str, quick: bool, out: Path) -> dict | None:
    """The GPU benchmark's rows and limits, or None when there is no device."""
    cmd = [str(exe), "--benchmark_format=json", f"--benchmark_filter={bench_filter}"]
    if quick:
        cmd += ["--reps", "2", "--min-time", "0.01"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode == GPU_NO_DEVICE:
        print(f"run_bench: GPU: {proc.stderr.strip() or 'no device'}")
        return None
    try:
        doc = json.loads(proc.stdout)
    except json.JSONDecodeError as e:
        sys.exit(f"run_bench: {' '.join(cmd)} exited with {proc.returncode} and printed no "
                 f"valid JSON ({e}): {proc.stderr.strip()}")
    (out / "raw_gpu.json").write_text(json.dumps(doc, indent=1))
    rows, _, errors = parse_run(doc)
    ctx = doc.get("context", {})
    limits = {"dram_bytes_per_s": float(ctx.get("flashmla_gpu_dram_bytes_per_s", 0) or 0),
              "flops_per_s": float(ctx.get("flashmla_gpu_bf16_flops_per_s", 0) or 0),
              "flops_basis": ctx.get("flashmla_gpu_flops_basis", "?"),
              "device": ctx.get("flashmla_gpu", "?")}
    copy = rows.get("peak.device_copy", {})
    if "us" in copy:
        limits["copy_bytes_per_s"] = copy["bytes"] / (copy["us"] * 1e-6)
    return {"rows": rows, "limits": limits, "errors": errors, "context": ctx}


def gpu_rows(gpu: dict) -> list[dict]:
    """One row per case and kernel generation; roofline from the device's limits (the measured
    copy where the memory clock is unknown)."""
    lim = gpu["limits"]
    peak = lim["flops_per_s"]
    bw = lim["dram_bytes_per_s"] or lim.get("copy_bytes_per_s", 0)
    out = []
    for name, r in gpu["rows"].items():
        if name.startswith("peak."):
            continue
        case, _, kernels = name.rpartition(".")
        row = {"case": case, "op": op_of(case), "kernels": kernels}
        if "error" in r:
            row["error"] = r["error"]
            out.append(row)
            continue
        t = r["us"] * 1e-6
        row.update(median_us=r["us"], flops=r["flops"], bytes=r["bytes"],
                   tflops=r["flops"] / t / 1e12, gbps=r["bytes"] / t / 1e9,
                   intensity=r["flops"] / r["bytes"] if r["bytes"] > 0 else math.inf)
        row.update(roofline(r["flops"] / t, row["intensity"], peak, bw))
        portable = gpu["rows"].get(f"{case}.portable", {})
        if "us" in portable:
            row["speedup_vs_portable"] = portable["us"] / r["us"]
        out.append(row)
    return out


def print_gpu_table(rows: list[dict], gpu: dict) -> None:
    lim = gpu["limits"]
    print(f"\nGPU: {lim['device']} | memory {lim['dram_bytes_per_s'] / 1e9:.0f} GB/s "
          f"(clock x bus), device copy {lim.get('copy_bytes_per_s', 0) / 1e9:.0f} GB/s "
          f"(measured) | tensor bf16 {lim['flops_per_s'] / 1e12:.0f} TFLOP/s "
          f"({lim['flops_basis']})")
    width = max([len(r["case"]) for r in rows] + [4])
    head = (f"{'case':<{width}} {'kernels':<8} {'median us':>11} {'TFLOP/s':>8} {'GB/s':>8} "
            f"{'FLOP/B':>7} {'bound':<7} {'%roof':>6} {'x port':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        if "error" in r:
            print(f"{r['case']:<{width}} {r['kernels']:<8} ERROR: {r['error']}")
            continue
        print(f"{r['case']:<{width}} {r['kernels']:<8} {r['median_us']:>11.1f} "
              f"{r['tflops']:>8.2f} {r['gbps']:>8.1f} {fmt(r['intensity'], '7.1f'):>7} "
              f"{r.get('bound', '-'):<7} {fmt(r.get('pct_roofline'), '6.1f'):>6} "
              f"{fmt(r.get('speedup_vs_portable'), '6.2f'):>6}")
    print("kernels: picked = those the library chooses for this device, portable = "
          "FLASHMLA_CUDA_PORTABLE=1; times: CUDA events around one call, L2 flushed before it; "
          "%roof against min(tensor peak, FLOP/B x memory bandwidth)")


def write_gpu_outputs(out: Path, rows: list[dict], gpu: dict) -> None:
    with (out / "gpu.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=GPU_CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in GPU_CSV_FIELDS})
    (out / "gpu.json").write_text(json.dumps(
        {"limits": gpu["limits"], "cases": rows, "errors": gpu["errors"]}, indent=1,
        default=str))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build-dir", default="build", help="where flashmla_bench is (default build)")
    ap.add_argument("--out", default="bench_results", help="output folder (default bench_results)")
    ap.add_argument("--quick", action="store_true",
                    help="the machine limits and one tiny case per operation, short repetitions")
    ap.add_argument("--filter", help="regex of case names to run (the machine limits always run)")
    ap.add_argument("--threads", type=int, help="worker threads (default: all cores)")
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--gpu-only", action="store_true", help="only the GPU benchmark")
    which.add_argument("--no-gpu", action="store_true", help="only the CPU benchmark")
    ap.add_argument("--gpu-exe", help="the GPU benchmark binary (default <build-dir>/"
                    "flashmla_bench_gpu; <build-dir>/flashmla_bench_gpu_harness runs its code "
                    "on the CPU harness at tiny shapes)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    status = 0 if args.gpu_only else cpu_main(args, out)
    if not args.no_gpu:
        status = max(status, gpu_main(args, out))
    return status


def gpu_main(args, out: Path) -> int:
    exe = Path(args.gpu_exe) if args.gpu_exe else Path(args.build_dir) / "flashmla_bench_gpu"
    if not exe.exists():
        print(f"run_bench: GPU: {exe} not built (no CUDA backend in this build)")
        return 1 if args.gpu_only else 0
    cases = args.filter or "."
    gpu = run_gpu(exe, rf"^peak\.|({cases})", args.quick, out)
    if gpu is None:
        return 0
    rows = gpu_rows(gpu)
    print_gpu_table(rows, gpu)
    write_gpu_outputs(out, rows, gpu)
    print(f"run_bench: wrote {out / 'gpu.csv'}, {out / 'gpu.json'}")
    if gpu["errors"]:
        print("run_bench: GPU cases with errors:\n  " + "\n  ".join(gpu["errors"]),
              file=sys.stderr)
        return 1
    return 0


def cpu_main(args, out: Path) -> int:

    exe = Path(args.build_dir) / "flashmla_bench"
    if not exe.exists():
        sys.exit(f"run_bench: {exe} not found (build it: cmake --build {args.build_dir} "
                 f"--target flashmla_bench)")

    cases = args.filter or (QUICK_FILTER if args.quick else ".")
    bench_filter = rf"^peak\.|({cases})"
    extra = []
    if args.quick:
        extra += ["--reps", "3", "--min-time", "0.05"]
    if args.threads is not None:
        extra += ["--threads", str(args.threads)]

    runs = {}
    errors = []
    for run_name, isa in RUNS:
        print(f"run_bench: {run_name} run (FLASHMLA_ISA={isa or '<unset>'}) ...", flush=True)
        t0 = time.time()
        doc = run_binary(exe, isa, bench_filter, extra)
        seconds = time.time() - t0
        (out / f"raw_{run_name}.json").write_text(json.dumps(doc, indent=1))
        rows, peaks, errs = parse_run(doc)
        ctx = doc.get("context", {})
        errors += [f"[{run_name}] {e}" for e in errs]
        runs[run_name] = {"isa_cap": ctx.get("flashmla_isa_cap", isa or "native"),
                          "cpu_isa": ctx.get("flashmla_cpu_isa", "?"),
                          "microkernel": ctx.get("flashmla_microkernel", "?"),
                          "threads": int(ctx.get("flashmla_threads", 0)),
                          "seconds": seconds, "peaks": peaks, "rows": rows, "context": ctx}

    rows = build_rows(runs)
    print()
    print_table(rows, runs)

    nat = runs[RUNS[0][0]]
    title = (f"flashmla CPU roofline: {cpu_model()}, {nat['threads']} threads, native microkernel "
             f"{nat['microkernel']} vs portable (bench/run_bench.py"
             f"{' --quick' if args.quick else ''})")
    write_csv(out / "bench.csv", rows)
    summary = {
        "command": " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
        "cpu": cpu_model(),
        "filter": bench_filter,
        "runs": {n: {k: v for k, v in r.items() if k != "rows"} for n, r in runs.items()},
        "cases": rows,
        "errors": errors,
    }
    (out / "bench.json").write_text(json.dumps(summary, indent=1, default=str))
    plot(out / "roofline.png", rows, runs, title)
    print(f"\nrun_bench: wrote {out / 'bench.csv'}, {out / 'bench.json'}, "
          f"{out / 'roofline.png'}")
    if errors:
        print("run_bench: cases with errors:\n  " + "\n  ".join(errors), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
