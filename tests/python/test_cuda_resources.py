"""scripts/check_cuda_resources.py (the ptxas resource check of the CUDA kernels) and
scripts/nvcc-capture.sh (the compiler launcher that keeps each file's report): parsing of
nvcc --resource-usage reports, rejection of spills and of shared memory above each
architecture's limit, missing architectures, and the launcher with a stand-in compiler (and
with nvcc itself where it is installed)."""
import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SCRIPT = os.path.join(ROOT, "scripts", "check_cuda_resources.py")
CAPTURE = os.path.join(ROOT, "scripts", "nvcc-capture.sh")

spec = importlib.util.spec_from_file_location("check_cuda_resources", SCRIPT)
ccr = importlib.util.module_from_spec(spec)
sys.modules["check_cuda_resources"] = ccr
spec.loader.exec_module(ccr)

OK_K = "_ZN8flashmla4cuda6device7good_k1ENS_4core6ParamsE"
SPILL_K = "_ZN8flashmla4cuda6device13spilly_kernelILb1EEEvPf"
SMEM_K = "_Z10big_staticPf"
HELPER = "_Z6helperPfi"


def block(arch, funcs, device_funcs=()):
    """One ptxas run's report (as nvcc --resource-usage prints it) for one architecture.
    funcs: (name, regs, stack, spill stores, spill loads, smem)."""
    lines = ["ptxas info    : 0 bytes gmem"]
    for name, regs, stack, st, ld, smem in funcs:
        lines.append(f"ptxas info    : Compiling entry function '{name}' for '{arch}'")
        lines.append(f"ptxas info    : Function properties for {name}")
        lines.append(f"    {stack} bytes stack frame, {st} bytes spill stores, {ld} bytes spill loads")
        used = f"ptxas info    : Used {regs} registers, used 1 barriers"
        if smem:
            used += f", {smem} bytes smem"
        if arch == "sm_80":
            used += ", 544 bytes cmem[0]"
        lines.append(used)
        lines.append("ptxas info    : Compile time = 12.345 ms")
    for name, stack, st, ld in device_funcs:
        lines.append(f"ptxas info    : Function properties for {name}")
        lines.append(f"    {stack} bytes stack frame, {st} bytes spill stores, {ld} bytes spill loads")
    return "\n".join(lines) + "\n"


GOOD = [(OK_K, 128, 0, 0, 0, 0)]


def sample_log():
    """Architectures in completion order (nvcc --threads), not build order."""
    return (block("sm_120", GOOD + [(SPILL_K, 255, 824, 920, 924, 0)])
            + block("sm_80", GOOD + [(SPILL_K, 255, 0, 0, 0, 0)])
            + block("sm_90a", GOOD + [(SPILL_K, 168, 0, 0, 0, 0)]))


def by_key(funcs):
    return {(f.name, f.arch): f for f in funcs}


def test_parses_every_kernel_and_architecture():
    funcs = by_key(ccr.parse_log(sample_log(), "decode/x.cu"))
    assert set(funcs) == {(k, a) for k in (OK_K, SPILL_K) for a in ("sm_80", "sm_90a", "sm_120")}
    f = funcs[(SPILL_K, "sm_120")]
    assert (f.regs, f.stack, f.spill_stores, f.spill_loads, f.smem) == (255, 824, 920, 924, 0)
    assert f.entry and f.file == "decode/x.cu"
    assert funcs[(SPILL_K, "sm_90a")].regs == 168
    assert funcs[(OK_K, "sm_80")].regs == 128


def test_spilling_kernel_is_rejected_naming_kernel_and_arch():
    problems = ccr.check(ccr.parse_log(sample_log(), "decode/x.cu"),
                         ["sm_80", "sm_90a", "sm_120"], None)
    assert len(problems) == 1, problems
    assert "spilly_kernel" in problems[0] and "[sm_120]" in problems[0]
    assert "920 bytes stores" in problems[0] and "924 bytes loads" in problems[0]


def test_clean_report_passes():
    text = block("sm_80", GOOD) + block("sm_90a", GOOD)
    assert ccr.check(ccr.parse_log(text, "a.cu"), ["sm_80", "sm_90a"], None) == []


@pytest.mark.parametrize("arch,smem,bad", [
    ("sm_80", 163 * 1024, False), ("sm_80", 163 * 1024 + 1, True),
    ("sm_120", 99 * 1024, False), ("sm_120", 99 * 1024 + 16, True),
    ("sm_86", 99 * 1024 + 16, True), ("sm_89", 100 * 1024, True),
    ("sm_90a", 227 * 1024, False), ("sm_90a", 228 * 1024, True),
    ("sm_100a", 200 * 1024, False), ("sm_100a", 227 * 1024 + 4, True),
])
def test_static_shared_memory_limit_per_architecture(arch, smem, bad):
    funcs = ccr.parse_log(block(arch, [(SMEM_K, 32, 0, 0, 0, smem)]), "s.cu")
    assert funcs[0].smem == smem
    problems = ccr.check(funcs, [arch], None)
    assert bool(problems) == bad, problems
    if bad:
        assert "big_static" in problems[0] and f"[{arch}]" in problems[0]


def test_unknown_architecture_has_no_silent_limit():
    problems = ccr.check(ccr.parse_log(block("sm_110", GOOD), "a.cu"), ["sm_110"], None)
    assert len(problems) == 1 and "no shared memory limit known for sm_110" in problems[0]


def test_spilling_device_function_is_rejected():
    text = block("sm_80", [("_Z6callerPf", 40, 128, 0, 0, 0)], [(HELPER, 136, 8, 8)])
    funcs = by_key(ccr.parse_log(text, "f.cu"))
    helper = funcs[(HELPER, "sm_80")]
    assert not helper.entry and helper.spill_stores == 8
    problems = ccr.check(list(funcs.values()), ["sm_80"], None)
    assert len(problems) == 1 and "device function helper [sm_80]" in problems[0]


def test_stack_limit_is_optional():
    funcs = ccr.parse_log(block("sm_80", [("_Z6callerPf", 40, 128, 0, 0, 0)]), "f.cu")
    assert ccr.check(funcs, ["sm_80"], None) == []
    problems = ccr.check(funcs, ["sm_80"], 64)
    assert len(problems) == 1 and "128 bytes stack frame" in problems[0]


def test_missing_architecture_is_reported():
    text = block("sm_80", GOOD) + block("sm_90a", GOOD)
    problems = ccr.check(ccr.parse_log(text, "a.cu"), ["sm_80", "sm_90a", "sm_100a"], None)
    assert problems == ["a.cu: kernels but no ptxas report for sm_100a"]


def test_host_only_file_needs_no_report_per_architecture():
    text = "ptxas info    : 0 bytes gmem\n" * 4  # a launch-only .cu
    assert ccr.parse_log(text, "launch.cu") == []


def test_old_verbose_format_without_barriers():
    text = textwrap.dedent(f"""\
        ptxas info    : 0 bytes gmem
        ptxas info    : Compiling entry function '{OK_K}' for 'sm_80'
        ptxas info    : Function properties for {OK_K}
            0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
        ptxas info    : Used 64 registers, 1024 bytes smem, 360 bytes cmem[0]
        """)
    (f,) = ccr.parse_log(text, "a.cu")
    assert (f.regs, f.smem, f.arch) == (64, 1024, "sm_80")


def make_build(tmp_path, files, archs=("sm_80", "sm_90a", "sm_120")):
    ptxas = tmp_path / "ptxas"
    (ptxas / "decode").mkdir(parents=True)
    (ptxas / "architectures.txt").write_text("\n".join(archs) + "\n")
    for rel, text in files.items():
        (ptxas / rel).write_text(text)
    return tmp_path


def test_main_fails_on_the_spilling_kernel(tmp_path, capsys):
    src = tmp_path / "x.cu"
    src.write_text("")
    build = make_build(tmp_path, {"decode/x.cu.log": f"# source: {src}\n" + sample_log()})
    assert ccr.main([str(build)]) == 1
    out, err = capsys.readouterr()
    assert "spilly_kernel<true>" in out and "good_k1" in out  # the table
    assert "FAIL" in err and "spilly_kernel<true> [sm_120] (decode/x.cu)" in err


def test_main_passes_a_clean_build_and_skips_stale_logs(tmp_path, capsys):
    src = tmp_path / "y.cu"
    src.write_text("")
    clean = block("sm_80", GOOD) + block("sm_90a", GOOD) + block("sm_120", GOOD)
    build = make_build(tmp_path, {
        "decode/y.cu.log": f"# source: {src}\n" + clean,
        "decode/gone.cu.log": f"# source: {tmp_path / 'gone.cu'}\n" + sample_log(),
    })
    assert ccr.main([str(build)]) == 0
    out, _ = capsys.readouterr()
    assert "skipped decode/gone.cu" in out and "ok: 1 kernels x 3 architectures" in out


WGMMA_NOTE = ("ptxas info    : (C7519) warpgroup.arrive is injected in around line 120 by "
              "compiler to allow use of registers in GMMA in function '_Z6wgmmakPf'\n")


def test_serialised_wgmma_fails_naming_the_function(tmp_path, capsys):
    src = tmp_path / "w.cu"
    src.write_text("")
    clean = block("sm_80", GOOD) + block("sm_90a", GOOD) + block("sm_120", GOOD)
    build = make_build(tmp_path, {"decode/w.cu.log": f"# source: {src}\n" + WGMMA_NOTE + clean})
    assert ccr.main([str(build)]) == 1
    _, err = capsys.readouterr()
    assert "wgmmak (decode/w.cu): ptxas C7519" in err and "warpgroup.arrive" in err
    assert ccr.wgmma_notes(clean, "w.cu") == []


def test_main_fails_without_reports(tmp_path, capsys):
    assert ccr.main([str(make_build(tmp_path, {}))]) == 1
    assert ccr.main([str(tmp_path / "nowhere")]) == 2


# ---- scripts/nvcc-capture.sh ----

FAKE_NVCC = """#!/bin/sh
# stands in for nvcc: prints a ptxas report and a warning on stderr; exits with $FAKE_RC
cat >&2 <<'EOF'
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z1kPf' for 'sm_80'
ptxas info    : Function properties for _Z1kPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 8 registers, used 0 barriers, 360 bytes cmem[0]
EOF
echo "x.cu(3): warning #177-D: variable \\"y\\" was declared but never referenced" >&2
exit ${FAKE_RC:-0}
"""


def run_capture(tmp_path, rc=0, env_extra=None):
    fake = tmp_path / "fake_nvcc"
    fake.write_text(FAKE_NVCC)
    fake.chmod(0o755)
    srcroot = tmp_path / "src" / "cuda"
    (srcroot / "decode").mkdir(parents=True, exist_ok=True)
    src = srcroot / "decode" / "k.cu"
    src.write_text("")
    env = dict(os.environ, FAKE_RC=str(rc), **(env_extra or {}))
    p = subprocess.run(["bash", CAPTURE, str(tmp_path / "ptxas"), str(srcroot), str(fake),
                        "-x", "cu", "-c", str(src), "-o", "k.cu.o"],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    return p, tmp_path / "ptxas" / "decode" / "k.cu.log", src


def test_capture_keeps_the_report_and_passes_warnings_through(tmp_path):
    p, log, src = run_capture(tmp_path)
    assert p.returncode == 0
    assert "warning #177-D" in p.stderr and "ptxas info" not in p.stderr
    text = log.read_text()
    assert text.startswith(f"# source: {src}\n") and "Used 8 registers" in text
    (f,) = ccr.parse_log(text, "k.cu")
    assert (f.name, f.arch, f.regs) == ("_Z1kPf", "sm_80", 8)


def test_capture_echo_and_failed_compile_leaves_no_log(tmp_path):
    p, log, _ = run_capture(tmp_path, env_extra={"FLASHMLA_PTXAS_ECHO": "1"})
    assert p.returncode == 0 and "ptxas info" in p.stderr and log.exists()
    p, log, _ = run_capture(tmp_path, rc=3)
    assert p.returncode == 3 and not log.exists()


NVCC = shutil.which("nvcc") or next(
    (c for c in ("/usr/local/cuda/bin/nvcc",) if os.access(c, os.X_OK)), None)

SPILLING_CU = r"""
__global__ void __launch_bounds__(1024, 2) spills(float* x, int n) {
  float a[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) a[i] = x[i * n + threadIdx.x];
#pragma unroll
  for (int k = 0; k < 8; ++k)
#pragma unroll
    for (int i = 0; i < 64; ++i) a[i] = a[i] * a[(i + k) & 63] + a[(i * 7) & 63];
#pragma unroll
  for (int i = 0; i < 64; ++i) x[i * n + threadIdx.x] = a[i];
}
__global__ void fine(float* x) { x[threadIdx.x] *= 2.f; }
"""


@pytest.mark.skipif(NVCC is None, reason="nvcc not installed")
def test_real_nvcc_spill_is_caught(tmp_path, capsys):
    srcroot = tmp_path / "src"
    srcroot.mkdir()
    src = srcroot / "spills.cu"
    src.write_text(SPILLING_CU)
    p = subprocess.run(["bash", CAPTURE, str(tmp_path / "ptxas"), str(srcroot), NVCC,
                        "-arch=sm_80", "--resource-usage", "-c", str(src), "-o",
                        str(tmp_path / "spills.o")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    (tmp_path / "ptxas" / "architectures.txt").write_text("sm_80\n")
    assert ccr.main([str(tmp_path)]) == 1
    _, err = capsys.readouterr()
    assert "kernel spills(float *, int) [sm_80]" in err or "kernel spills [sm_80]" in err
    assert "fine" not in err


# ---- scripts/check_cuda_arch_guards.sh ----

WGMMA_FENCE = 'asm volatile("wgmma.fence.sync.aligned;\\n" ::: "memory");'


@pytest.mark.skipif(NVCC is None, reason="nvcc not installed")
def test_arch_guard_check_rejects_wgmma_behind_cuda_arch_only(tmp_path):
    """A copy of the repository layout: one kernel guards wgmma with the feature macro (fine on
    plain sm_90), the other with __CUDA_ARCH__ >= 900 (plain sm_90 sees it: rejected)."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(os.path.join(ROOT, "scripts", "check_cuda_arch_guards.sh"), tmp_path / "scripts")
    (tmp_path / "include").mkdir()
    cuda = tmp_path / "src" / "cuda" / "hopper"
    cuda.mkdir(parents=True)
    (cuda / "good.cu").write_text(
        "__global__ void good() {\n#if defined(__CUDA_ARCH_FEAT_SM90_ALL)\n  "
        + WGMMA_FENCE + "\n#endif\n}\n")
    (cuda / "bad.cu").write_text(
        "__global__ void bad() {\n#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900\n  "
        + WGMMA_FENCE + "\n#endif\n}\n")
    p = subprocess.run(["bash", str(tmp_path / "scripts" / "check_cuda_arch_guards.sh"), NVCC, "2"],
                       capture_output=True, text=True)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "FAIL: src/cuda/hopper/bad.cu for plain sm_90" in p.stdout
    assert "not supported on .target 'sm_90'" in p.stdout
    assert "good.cu" not in p.stdout
