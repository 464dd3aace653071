"""The machine a run lands on, and the training precision it runs in.

One home for two ideas that go together:

- **What the hardware is** (`cpu_info`, `machine_report`): the CPU model, the instruction-set
  flags that decide matrix speed (`CPU_FLAGS`), torch's CPU capability (the kernels ATen
  dispatches to: `AVX2`, `AVX512`, ...), a short CPU class, torch's threads and the GPU if any.
  Benchmarks, train.json, the MLflow run and the model card all record it, so a figure always
  says which machine made it.
- **The precision rule** (`resolve_precision`), applied by every place that autocasts (training,
  TSDAE, dev evaluation, the `torch-bf16` benchmark path) through `autocast`:

      requested   device                                        effective
      fp32        any                                           fp32
      auto        CUDA with bf16 (torch.cuda.is_bf16_supported) bf16 autocast
      auto        CUDA without bf16                             fp32
      auto        CPU with AMX-BF16 or AVX512-BF16              bf16 autocast
      auto        any other CPU (AVX2-only, AVX-512 without BF16, arm64, ...), other devices  fp32
      bf16        CPU without native bf16                       bf16, with ONE warning naming the CPU
                                                                and the measured cost
      bf16        CUDA without bf16                             ConfigError (autocast cannot run)

  Why: without a bf16 matrix unit oneDNN emulates bf16 matmuls, and a SimCSE step gets far
  slower instead of faster. Measured (all-MiniLM-L6-v2, batch 128, length 32, forward + backward
  + AdamW, 2 threads): on an AVX2-only EPYC fp32 2.31 s/step, bf16 autocast 61.4 s/step (27x
  slower); on a Xeon with AMX bf16 autocast is about 2x faster than fp32.

Nothing is probed at import; `cpu_info()` reads /proc/cpuinfo and torch on each call (cheap).
Tests stub `read_cpuinfo` and the torch.cuda queries.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from simcse_ops.config import PrecisionRequest
from simcse_ops.errors import ConfigError

log = logging.getLogger(__name__)

Precision = Literal["bf16", "fp32"]
REQUESTS: tuple[str, ...] = get_args(PrecisionRequest)  # what params.yaml `variants.<V>.precision` accepts

# The flags that decide how fast a transformer's matmuls run on x86 (/proc/cpuinfo spelling).
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")

# torch.cpu.get_capabilities() spells some flags differently from /proc/cpuinfo.
_TORCH_FLAG_NAMES = {"avx2": "avx2", "avx512_f": "avx512f", "avx512_vnni": "avx512_vnni",
                     "avx512_bf16": "avx512_bf16", "amx_bf16": "amx_bf16"}

BF16_COST = ("measured 27x slower per training step than fp32 on an AVX2-only AMD EPYC "
             "(all-MiniLM-L6-v2, batch 128, length 32: 61.4 s vs 2.31 s)")


@dataclass(frozen=True)
class CpuInfo:
    """What decides CPU matrix speed: the model name, the `CPU_FLAGS` present, torch's capability."""

    model: str
    arch: str
    flags: frozenset[str]
    torch_capability: str

    @property
    def native_bf16(self) -> bool:
        """True where the CPU multiplies bf16 matrices natively (AMX-BF16 or AVX512-BF16)."""
        return any(f in self.flags for f in NATIVE_BF16_FLAGS)

    @property
    def cpu_class(self) -> str:
        """A short class for tables and logs: "x86 AMX", "x86 AVX-512 BF16+VNNI", "x86 AVX-512 VNNI",
        "x86 AVX-512", "x86 AVX2", "x86" or the architecture (e.g. "aarch64")."""
        f = self.flags
        if self.arch not in ("x86_64", "amd64", "i686", "x86"):
            return self.arch or "unknown"
        if "amx_bf16" in f:
            return "x86 AMX"
        if "avx512f" in f:
            extras = [name for flag, name in (("avx512_bf16", "BF16"), ("avx512_vnni", "VNNI")) if flag in f]
            return "x86 AVX-512" + (" " + "+".join(extras) if extras else "")
        if "avx2" in f:
            return "x86 AVX2"
        return "x86"


def read_cpuinfo(path: Path | str = "/proc/cpuinfo") -> tuple[str, frozenset[str]]:
    """(model name, every flag) of the first processor in /proc/cpuinfo; ("", {}) where there is
    no such file (macOS, Windows)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "", frozenset()
    model, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:  # Features: arm64
            flags = frozenset(value.split())
        if model and flags:
            break
    return model, flags


def read_torch_cpu() -> tuple[str, frozenset[str], str]:
    """(torch's CPU capability, CPU_FLAGS that torch's cpuinfo reports, its CPU name)."""
    capability = str(torch.backends.cpu.get_cpu_capability())
    caps: dict[str, Any] = {}
    if hasattr(torch.cpu, "get_capabilities"):  # torch >= 2.9
        caps = dict(torch.cpu.get_capabilities())
    flags = frozenset(ours for theirs, ours in _TORCH_FLAG_NAMES.items() if caps.get(theirs) is True)
    return capability, flags, str(caps.get("cpu_name", ""))


def cpu_info() -> CpuInfo:
    """The CPU this process runs on: /proc/cpuinfo's model and flags, joined with what torch reports."""
    model, proc_flags = read_cpuinfo()
    capability, torch_flags, torch_name = read_torch_cpu()
    flags = frozenset(f for f in CPU_FLAGS if f in proc_flags) | torch_flags
    return CpuInfo(model=model or torch_name or platform.processor() or "unknown CPU",
                   arch=platform.machine().lower(), flags=flags, torch_capability=capability)


def gpu_info() -> dict[str, Any] | None:
    """{name, bf16, count} of the CUDA device torch sees; None without one."""
    if not torch.cuda.is_available():
        return None
    return {"name": torch.cuda.get_device_name(0), "bf16": bool(torch.cuda.is_bf16_supported()),
            "count": torch.cuda.device_count()}


def machine_report() -> dict[str, Any]:
    """The `machine` object of every benchmark line (and of train.json's hardware fields):
    CPU model and class, the `CPU_FLAGS` as booleans, torch's CPU capability, threads, GPU or None."""
    cpu = cpu_info()
    return {
        "cpu_model": cpu.model,
        "cpu_class": cpu.cpu_class,
        "arch": cpu.arch,
        "flags": {f: f in cpu.flags for f in CPU_FLAGS},
        "torch_cpu_capability": cpu.torch_capability,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gpu": gpu_info(),
    }


def describe_device(device) -> str:
    """`cuda:0 (NVIDIA H100 80GB HBM3)` or `cpu (x86 AMX, Intel(R) Xeon(R) Processor)`, for log lines."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    cpu = cpu_info()
    return f"{device} ({cpu.cpu_class}, {cpu.model})"


HARDWARE_KEYS = ("precision", "cpu_class", "cpu_model", "gpu")  # `precision_record`'s keys


def precision_record(precision: str, device) -> dict[str, Any]:
    """What made a run's numbers, for train.json, the MLflow run and the model card: the
    effective precision, the CPU class and model, the GPU name (None on CPU)."""
    device = torch.device(device)
    cpu = cpu_info()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"precision": precision, "cpu_class": cpu.cpu_class, "cpu_model": cpu.model, "gpu": gpu}


def resolve_precision(requested: str, device, key: str = "precision") -> Precision:
    """The precision a run uses on `device` (a torch.device or its name), by the rule in the
    module docstring. `key` names the params.yaml key in messages (e.g. variants.biomed.precision)."""
    if requested not in REQUESTS:
        raise ConfigError(f"{key}: {requested!r} is not a precision; expected one of {', '.join(REQUESTS)}")
    if requested == "fp32":
        return "fp32"
    kind = torch.device(device).type
    if kind == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16"
        if requested == "bf16":
            raise ConfigError(f"{key}: bf16, but the GPU {torch.cuda.get_device_name()} has no bf16 support; "
                              "set it to auto or fp32")
        return "fp32"
    if kind != "cpu":
        return "bf16" if requested == "bf16" else "fp32"
    cpu = cpu_info()
    if cpu.native_bf16:
        return "bf16"
    if requested == "bf16":
        log.warning("%s: bf16 on %s (%s) without native bf16 (AMX-BF16 or AVX512-BF16) is emulated, %s; "
                    "set %s: auto (fp32 on this CPU)", key, cpu.model, cpu.cpu_class, BF16_COST, key)
        return "bf16"
    return "fp32"


def autocast(precision: Precision, device):
    """The context every forward pass of a run enters: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
