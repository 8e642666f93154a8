"""What machine a figure was measured on: the CPU's name (as `lscpu` gives it), the
device's, and the device's measured fp32 matrix-product peak."""

from __future__ import annotations

import platform
import subprocess
import time
from pathlib import Path

import torch


def cpu_name() -> str:
    """`lscpu`'s model name (what BENCHMARKS.md names machines by), else Python's guess."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines()
                    if line.startswith("Model name"))  # fmt: skip
    except (OSError, subprocess.SubprocessError, StopIteration):
        return platform.processor() or platform.machine()


def _first_processor() -> list[str]:
    """/proc/cpuinfo's lines for the first processor, up to its flags (all the kinds and
    routes depend on); none where the file cannot be read."""
    lines = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            lines.append(line)
            if line.startswith("flags"):
                break
    except OSError:
        return []
    return lines


def cpu_description() -> str:
    """The CPU's model name and instruction-set flags, from the first processor's entries:
    what decides which instructions compiled code may use and which route is faster here
    (it keys the kernel cache: its text must not change)."""
    named = (line for line in _first_processor() if line.startswith(("model name", "flags")))
    return platform.machine() + platform.processor() + "".join(named)


# The instruction sets that decide which route is fastest here (BENCHMARKS.md, "Machines"
# names CPU kinds by them): AVX2 alone, AVX-512, bfloat16 multiplies, Intel's AMX tiles.
KIND_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")


def cpu_kind() -> str:
    """The CPU's name with what tells its kinds apart: family, model and the instruction
    sets of KIND_FLAGS, e.g. "AMD EPYC (family 25 model 17; avx2 avx512f avx512_bf16)".
    Two CPUs of one name (`lscpu` says "AMD EPYC" for three of our kinds) differ here."""
    lines = _first_processor()
    if not lines:
        return cpu_name()
    fields: dict[str, str] = {}
    for line in lines:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    named = " ".join(flag for flag in KIND_FLAGS if flag in flags) or "no AVX2"
    family, model = fields.get("cpu family"), fields.get("model")
    where = f"family {family} model {model}; " if family and model else ""
    return f"{cpu_name()} ({where}{named})"


def ran_on(device: torch.device, world_size: int = 1) -> str:
    """Where a run trained, as a result records it: the CPU kind and its threads, or the
    CUDA device and how many processes shared the work."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} x {world_size}"
    threads = torch.get_num_threads()
    processes = f", {world_size} processes" if world_size > 1 else ""
    return f"{cpu_kind()}, {threads} thread{'s' if threads > 1 else ''}{processes}"


def code_version() -> str:
    """Which code ran: `git describe --always --dirty` of the checkout cifarlab runs from,
    else the package's version (an installed copy)."""
    from . import __version__

    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return __version__
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else __version__


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()}, {torch.get_num_threads()} threads"


def matmul_peak_gflops(device: torch.device, size: int = 2048, repeats: int = 10) -> float:
    """fp32 [size x size] @ [size x size], best of `repeats` (the peak, not the typical).
    On the CPU, the better of two libraries: torch.mm (MKL) and oneDNN's matmul, which the
    convolutions use. On AMD CPUs MKL's GEMM does not use AVX-512 and reaches about half of
    what oneDNN does, so torch.mm alone would understate the machine's peak."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    products = [lambda: a @ b]
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        a_dnn, b_dnn = a.to_mkldnn(), b.t().contiguous().to_mkldnn()
        products.append(lambda: torch._C._nn.mkldnn_linear(a_dnn, b_dnn, None))
    best = float("inf")
    for product in products:
        for _ in range(repeats + 2):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            product()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9
