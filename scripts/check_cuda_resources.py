#!/usr/bin/env python3
"""Checks the ptxas resource report of every CUDA kernel of a build.

    scripts/check_cuda_resources.py <build dir> [--max-stack BYTES]
    scripts/check_cuda_resources.py <log file>...          (reports given directly)

A build with the CUDA backend (cmake/cuda.cmake) compiles each src/cuda/**/*.cu with nvcc
--resource-usage through scripts/nvcc-capture.sh, which keeps the translation unit's report in
<build>/ptxas/<file>.log, and lists the architectures built in <build>/ptxas/architectures.txt.
This script parses every report and prints one row per kernel (and non-inlined device function)
and architecture: registers, stack frame, spill stores / loads, static shared memory. It fails
(exit 1, one line per problem naming the kernel and the architecture) when
  - a function spills (spill stores or loads > 0),
  - a kernel's static shared memory exceeds the architecture's per-block limit (the opt-in
    maximum of the CUDA programming guide: 163 KiB on sm_80/87, 99 KiB on sm_86/89/120/121,
    227 KiB on sm_90/100/103); dynamic shared memory is checked by the kernels' own constants,
  - --max-stack is given and a stack frame exceeds it,
  - a file has kernels but no report for one of the architectures the build compiles for,
  - there is no report at all,
  - ptxas reports that it serialised wgmma instructions or injected warpgroup fences (its C75xx
    "Potential Performance Loss" / "warpgroup.arrive is injected" notes): the kernel compiles
    and runs, but its wgmma no longer overlap.
Exit 2 on a usage error.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys

KIB = 1024
# Maximum shared memory per block (opt-in), by compute capability (arch without a/f suffix).
SMEM_LIMIT = {
    75: 64 * KIB,
    80: 163 * KIB,
    86: 99 * KIB,
    87: 163 * KIB,
    89: 99 * KIB,
    90: 227 * KIB,
    100: 227 * KIB,
    103: 227 * KIB,
    120: 99 * KIB,
    121: 99 * KIB,
}

RE_GMEM = re.compile(r"^ptxas info\s*:\s*\d+ bytes gmem")
RE_ENTRY = re.compile(r"^ptxas info\s*:\s*Compiling entry function '([^']+)' for '(sm_\w+)'")
RE_PROPS = re.compile(r"^ptxas info\s*:\s*Function properties for (\S+)")
RE_STACK = re.compile(
    r"^\s*(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
RE_USED = re.compile(r"^ptxas info\s*:\s*Used (\d+) registers(.*)$")
RE_SMEM = re.compile(r"(\d+) bytes smem")
RE_SOURCE = re.compile(r"^# source: (.*)$")
RE_WGMMA_NOTE = re.compile(r"\((C75\d\d)\)(.*(?:wgmma|warpgroup|GMMA).*)$")
RE_NOTE_FUNC = re.compile(r"function '([^']+)'")


def wgmma_notes(text: str, file: str = "") -> list[str]:
    """ptxas's notes that a function's wgmma were serialised or needed injected fences, one
    line each naming the function and the file."""
    notes = []
    for line in text.splitlines():
        m = RE_WGMMA_NOTE.search(line)
        if not m:
            continue
        f = RE_NOTE_FUNC.search(line)
        who = "?"
        if f:
            demangle_all([f.group(1)])
            who = short_name(f.group(1))
        notes.append(f"{who} ({file}): ptxas {m.group(1)}:{m.group(2).rstrip()}")
    return notes


@dataclasses.dataclass
class Func:
    name: str             # mangled
    arch: str             # e.g. sm_90a; "?" when ptxas named none
    file: str             # the log (or source) it came from
    entry: bool = False   # a kernel (__global__); False: a non-inlined device function
    regs: int | None = None
    stack: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    smem: int = 0         # static shared memory (bytes)


def parse_log(text: str, file: str = "") -> list[Func]:
    """Every function of one translation unit's ptxas report (nvcc --resource-usage or
    -Xptxas -v). nvcc runs one ptxas per architecture, each report starting with 'N bytes gmem';
    with --threads they come in any order but are not interleaved."""
    funcs: list[Func] = []
    block: list[Func] = []       # functions of the current ptxas run
    block_arch: str | None = None
    current: Func | None = None  # the entry being compiled ('Used N registers' is its)
    props: Func | None = None    # the function whose 'Function properties' line came last

    def close_block() -> None:
        for f in block:
            if f.arch == "?" and block_arch:
                f.arch = block_arch
        funcs.extend(block)
        block.clear()

    def find(name: str, arch: str) -> Func | None:
        for f in block:
            if f.name == name and f.arch == arch:
                return f
        return None

    for line in text.splitlines():
        if RE_GMEM.match(line):
            close_block()
            block_arch, current, props = None, None, None
            continue
        m = RE_ENTRY.match(line)
        if m:
            name, arch = m.group(1), m.group(2)
            block_arch = arch
            current = find(name, arch) or Func(name, arch, file)
            current.entry = True
            if current not in block:
                block.append(current)
            continue
        m = RE_PROPS.match(line)
        if m:
            name = m.group(1)
            arch = block_arch or "?"
            props = find(name, arch)
            if props is None:
                props = Func(name, arch, file, entry=current is not None and name == current.name)
                block.append(props)
            continue
        m = RE_STACK.match(line)
        if m and props is not None:
            props.stack, props.spill_stores, props.spill_loads = map(int, m.groups())
            props = None
            continue
        m = RE_USED.match(line)
        if m and current is not None:
            current.regs = int(m.group(1))
            s = RE_SMEM.search(m.group(2))
            current.smem = int(s.group(1)) if s else 0
    close_block()
    return funcs


def arch_number(arch: str) -> int | None:
    m = re.match(r"sm_(\d+)", arch)
    return int(m.group(1)) if m else None


def check(funcs: list[Func], expected_archs: list[str], max_stack: int | None) -> list[str]:
    problems = []
    demangle_all([f.name for f in funcs])
    for f in funcs:
        what = f"{'kernel' if f.entry else 'device function'} {short_name(f.name)} [{f.arch}] ({f.file})"
        if f.spill_stores or f.spill_loads:
            problems.append(f"{what}: spills {f.spill_stores} bytes stores, "
                            f"{f.spill_loads} bytes loads (must be 0)")
        if max_stack is not None and f.stack > max_stack:
            problems.append(f"{what}: {f.stack} bytes stack frame (limit {max_stack})")
        if f.entry:
            n = arch_number(f.arch)
            limit = SMEM_LIMIT.get(n) if n is not None else None
            if limit is None:
                problems.append(f"{what}: no shared memory limit known for {f.arch} "
                                f"(add it to SMEM_LIMIT in {os.path.basename(__file__)})")
            elif f.smem > limit:
                problems.append(f"{what}: {f.smem} bytes static shared memory, above the "
                                f"{limit // KIB} KiB per-block limit of {f.arch}")
            if f.regs is None:
                problems.append(f"{what}: no 'Used N registers' line in the report")
    # Every file with kernels has a report for every architecture the build compiles for.
    by_file: dict[str, set[str]] = {}
    for f in funcs:
        if f.entry:
            by_file.setdefault(f.file, set()).add(f.arch)
    for file, archs in sorted(by_file.items()):
        for a in expected_archs:
            if a not in archs:
                problems.append(f"{file}: kernels but no ptxas report for {a}")
    return problems


_demangled: dict[str, str] = {}


def demangle_all(names: list[str]) -> None:
    todo = sorted({n for n in names if n not in _demangled})
    if not todo:
        return
    out = None
    if shutil.which("c++filt"):
        try:
            out = subprocess.run(["c++filt"], input="\n".join(todo) + "\n", text=True,
                                 capture_output=True, check=True).stdout.splitlines()
        except (OSError, subprocess.CalledProcessError):
            out = None
    if out is None or len(out) != len(todo):
        out = todo
    _demangled.update(zip(todo, out))


def short_name(mangled: str) -> str:
    """flashmla::cuda::device::foo<true>(Args) -> foo<true>: the table shows the function and
    its template arguments, not its namespace or parameter list."""
    name = _demangled.get(mangled, mangled)
    if name.startswith("void "):  # a template's return type
        name = name[len("void "):]
    depth = 0
    for i, c in enumerate(name):
        if c == "<":
            depth += 1
        elif c == ">":
            depth -= 1
        elif c == "(" and depth == 0 and i > 0:
            name = name[:i]
            break
    for prefix in ("flashmla::cuda::device::", "flashmla::cuda::harness::", "flashmla::cuda::"):
        name = name.replace(prefix, "")
    return name


def arch_sort_key(arch: str):
    n = arch_number(arch)
    return (n if n is not None else 1 << 30, arch)


def print_table(funcs: list[Func], out=None) -> None:
    out = out or sys.stdout
    rows = [("kernel", "arch", "regs", "stack", "spill st", "spill ld", "smem", "file")]
    for f in sorted(funcs, key=lambda f: (f.file, short_name(f.name), arch_sort_key(f.arch))):
        name = short_name(f.name) + ("" if f.entry else " (device fn)")
        rows.append((name, f.arch, "-" if f.regs is None else str(f.regs), str(f.stack),
                     str(f.spill_stores), str(f.spill_loads), str(f.smem), f.file))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for k, r in enumerate(rows):
        cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1])]
        cells += [r[i].rjust(widths[i]) for i in range(2, 7)]
        cells.append(r[7])
        print("  ".join(cells), file=out)
        if k == 0:
            print("  ".join("-" * w for w in widths), file=out)


def load_reports(paths: list[str]) -> tuple[list[Func], list[str], list[str], list[str]]:
    """(functions, expected architectures, notes, wgmma problems) from a build directory or
    log files."""
    funcs: list[Func] = []
    expected: list[str] = []
    notes: list[str] = []
    wgmma: list[str] = []
    logs: list[tuple[str, str]] = []  # (path, display name)
    for p in paths:
        if os.path.isdir(p):
            root = os.path.join(p, "ptxas")
            if not os.path.isdir(root):
                raise FileNotFoundError(f"{root}: no such directory (was the build configured "
                                        "with the CUDA backend, FLASHMLA_WITH_CUDA?)")
            archs_file = os.path.join(root, "architectures.txt")
            if os.path.exists(archs_file):
                with open(archs_file) as fh:
                    expected += [a.strip() for a in fh if a.strip()]
            for d, _, files in os.walk(root):
                for name in sorted(files):
                    if name.endswith(".log"):
                        full = os.path.join(d, name)
                        logs.append((full, os.path.relpath(full, root)[:-len(".log")]))
        else:
            logs.append((p, os.path.basename(p)))
    for path, display in sorted(logs):
        with open(path, errors="replace") as fh:
            text = fh.read()
        m = RE_SOURCE.search(text.split("\n", 1)[0]) if text else None
        if m and not os.path.exists(m.group(1)):
            notes.append(f"skipped {display}: its source {m.group(1)} no longer exists")
            continue
        funcs += parse_log(text, display)
        wgmma += wgmma_notes(text, display)
    return funcs, list(dict.fromkeys(expected)), notes, wgmma


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", help="build directory (reads <dir>/ptxas) or ptxas logs")
    ap.add_argument("--max-stack", type=int, default=None,
                    help="fail when a stack frame exceeds this many bytes (default: no limit)")
    ap.add_argument("--arch", action="append", default=None,
                    help="an architecture every file with kernels must have a report for "
                         "(default: <build>/ptxas/architectures.txt)")
    args = ap.parse_args(argv)
    try:
        funcs, expected, notes, wgmma = load_reports(args.paths)
    except OSError as e:
        print(f"check_cuda_resources: {e}", file=sys.stderr)
        return 2
    if args.arch:
        expected = args.arch
    for n in notes:
        print(f"check_cuda_resources: {n}")
    if not funcs:
        print("check_cuda_resources: FAIL: no kernel in any ptxas report "
              f"({', '.join(args.paths)})", file=sys.stderr)
        return 1
    demangle_all([f.name for f in funcs])
    print_table(funcs)
    problems = check(funcs, expected, args.max_stack) + wgmma
    kernels = {f.name for f in funcs if f.entry}
    archs = sorted({f.arch for f in funcs}, key=arch_sort_key)
    if problems:
        for p in problems:
            print(f"check_cuda_resources: FAIL: {p}", file=sys.stderr)
        return 1
    print(f"check_cuda_resources: ok: {len(kernels)} kernels x {len(archs)} architectures "
          f"({', '.join(archs)}): no spills, static shared memory within each limit, "
          "no serialised wgmma")
    return 0


if __name__ == "__main__":
    sys.exit(main())
