"""make bench's driver (bench/run_bench.py) on the quick case set: it runs build/flashmla_bench
natively and with the portable microkernel, prints the table, and writes a CSV, a JSON summary
and the roofline PNG with a row per case and run; its GPU table on made-up figures and on the GPU
benchmark's own code run on the CPU harness. (Figures are the benchmark's business, not the
tests': only the outputs' presence and consistency, and the arithmetic, are checked.)"""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("FLASHMLA_BUILD_DIR", ROOT / "build"))


def test_run_bench_quick_writes_table_csv_json_and_png(tmp_path):
    exe = BUILD / "flashmla_bench"
    if not exe.exists():
        pytest.skip(f"{exe} not built (make test builds it first)")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run_bench.py"), "--build-dir", str(BUILD),
         "--out", str(tmp_path), "--quick"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "%roof" in proc.stdout and "x port" in proc.stdout

    rows = list(csv.DictReader((tmp_path / "bench.csv").open()))
    ops = {r["op"] for r in rows}
    assert ops == {"dense_decode", "sparse_decode", "sparse_prefill", "mha_fwd", "mha_bwd"}
    assert {r["run"] for r in rows} == {"native", "portable"}
    for r in rows:
        assert not r["error"], r
        assert float(r["median_us"]) > 0 and float(r["flops"]) > 0 and float(r["bytes"]) > 0
        # > 0 only: the limits are measured on the same busy machine, so a ceiling check on a
        # ratio of two timings would be a timed assertion (it failed at 124% once).
        assert float(r["pct_roofline"]) > 0, r
        assert float(r["speedup_vs_portable"]) > 0
        if r["run"] == "portable":
            assert r["kernel"] == "portable"

    summary = json.loads((tmp_path / "bench.json").read_text())
    assert summary["errors"] == []
    native = summary["runs"]["native"]["peaks"]
    assert native["dram_bytes_per_s"] > 1e9 and native["matrix_flops_per_s"] > 1e9
    assert len(summary["cases"]) == len(rows)

    png = (tmp_path / "roofline.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def load_run_bench():
    import importlib.util
    spec = importlib.util.spec_from_file_location("run_bench", ROOT / "bench" / "run_bench.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_table_roofline_arithmetic():
    """run_bench.py's GPU rows on made-up figures: TFLOP/s, GB/s, the roofline
    min(peak, FLOP/B x bandwidth), the bound it names, and the speed-up over the portable run."""
    rb = load_run_bench()
    gpu = {"limits": {"dram_bytes_per_s": 3.35e12, "flops_per_s": 989e12, "flops_basis": "x",
                      "device": "d"},
           "rows": {"peak.device_copy": {"us": 1000.0, "bytes": 2e9},
                    # 242 FLOP/B: memory-bound on H100 (ridge 295)
                    "dense_decode.a.picked": {"us": 100.0, "flops": 242e9 * 0.5, "bytes": 0.5e9},
                    "dense_decode.a.portable": {"us": 250.0, "flops": 242e9 * 0.5,
                                                "bytes": 0.5e9},
                    # 1000 FLOP/B: compute-bound
                    "sparse_prefill.b.picked": {"us": 2000.0, "flops": 1e12, "bytes": 1e9},
                    "sparse_prefill.b.portable": {"error": "boom"}}}
    rows = {(r["case"], r["kernels"]): r for r in rb.gpu_rows(gpu)}
    a = rows[("dense_decode.a", "picked")]
    assert a["op"] == "dense_decode" and a["bound"] == "memory"
    assert a["tflops"] == pytest.approx(1210.0) and a["gbps"] == pytest.approx(5000.0)
    assert a["roof_tflops"] == pytest.approx(242 * 3.35)
    assert a["pct_roofline"] == pytest.approx(100 * 1210.0 / (242 * 3.35))
    assert a["speedup_vs_portable"] == pytest.approx(2.5)
    assert rows[("dense_decode.a", "portable")]["speedup_vs_portable"] == pytest.approx(1.0)
    b = rows[("sparse_prefill.b", "picked")]
    assert b["bound"] == "compute" and b["roof_tflops"] == pytest.approx(989.0)
    assert b["pct_roofline"] == pytest.approx(100 * 500.0 / 989.0)
    assert "speedup_vs_portable" not in b  # the portable run failed
    assert rows[("sparse_prefill.b", "portable")]["error"] == "boom"
    assert ("peak.device_copy", "") not in rows and len(rows) == 4
    # Without a memory clock, the measured copy (run_gpu: from peak.device_copy) is the bandwidth.
    gpu["limits"].update(dram_bytes_per_s=0, copy_bytes_per_s=2e12)
    a = {(r["case"], r["kernels"]): r for r in rb.gpu_rows(gpu)}[("dense_decode.a", "picked")]
    assert a["roof_tflops"] == pytest.approx(242 * 2.0)


def test_run_bench_gpu_on_the_harness(tmp_path):
    """The GPU benchmark's own code (flashmla_bench_gpu_harness: the CPU harness, tiny shapes)
    through run_bench.py: every operation with both kernel generations, and the outputs."""
    exe = BUILD / "flashmla_bench_gpu_harness"
    if not exe.exists():
        pytest.skip(f"{exe} not built (needs the CUDA harness)")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run_bench.py"), "--gpu-only", "--quick",
         "--gpu-exe", str(exe), "--out", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "GPU: CPU harness" in proc.stdout
    rows = list(csv.DictReader((tmp_path / "gpu.csv").open()))
    assert {r["op"] for r in rows} == {"dense_decode", "sparse_decode", "sparse_prefill"}
    cases = {r["case"] for r in rows}
    assert len(cases) == 8 and len(rows) == 16
    for r in rows:
        assert not r["error"], r
        assert r["kernels"] in ("picked", "portable")
        assert float(r["median_us"]) > 0 and float(r["flops"]) > 0 and float(r["bytes"]) > 0
        assert float(r["intensity"]) == pytest.approx(float(r["flops"]) / float(r["bytes"]))
    summary = json.loads((tmp_path / "gpu.json").read_text())
    assert summary["limits"]["device"] == "CPU harness" and summary["errors"] == []
    assert summary["limits"]["copy_bytes_per_s"] > 0
