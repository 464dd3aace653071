"""hardware.py: the CPU / GPU report and the precision rule, with every device query stubbed (no test
depends on the machine it runs on)."""

from __future__ import annotations

import logging

import pytest
import torch

from simcse_ops import hardware
from simcse_ops.errors import ConfigError
from simcse_ops.hardware import CpuInfo

AMX = CpuInfo("Intel(R) Xeon(R) Platinum 8481C", "x86_64",
              frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16"}), "AVX512")
ZEN4 = CpuInfo("AMD EPYC 9B14", "x86_64", frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}), "AVX512")
ZEN2 = CpuInfo("AMD EPYC 7B12", "x86_64", frozenset({"avx2"}), "AVX2")


@pytest.fixture
def cpu(monkeypatch):
    """Set the CPU `resolve_precision` sees."""
    def use(info: CpuInfo) -> None:
        monkeypatch.setattr(hardware, "cpu_info", lambda: info)
    return use


@pytest.fixture
def gpu(monkeypatch):
    """A CUDA device, with or without bf16."""
    def use(bf16: bool, name: str = "NVIDIA Tesla T4") -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: name)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    return use


def test_gpu_with_bf16_trains_in_bf16(gpu, cpu):
    gpu(True, "NVIDIA H100 80GB HBM3")
    cpu(ZEN2)  # the host CPU does not matter on CUDA
    assert hardware.resolve_precision("auto", "cuda") == "bf16"
    assert hardware.resolve_precision("bf16", torch.device("cuda", 0)) == "bf16"


def test_gpu_without_bf16_trains_in_fp32_and_refuses_an_explicit_bf16(gpu, cpu):
    gpu(False)
    cpu(AMX)
    assert hardware.resolve_precision("auto", "cuda") == "fp32"
    with pytest.raises(ConfigError, match=r"variants.x.precision: bf16, but the GPU NVIDIA Tesla T4 has no bf16"):
        hardware.resolve_precision("bf16", "cuda", key="variants.x.precision")


@pytest.mark.parametrize("info", [AMX, ZEN4], ids=["amx", "avx512_bf16"])
def test_cpu_with_native_bf16_trains_in_bf16(cpu, info, caplog):
    cpu(info)
    with caplog.at_level(logging.WARNING, logger="simcse_ops.hardware"):
        assert hardware.resolve_precision("auto", "cpu") == "bf16"
        assert hardware.resolve_precision("bf16", "cpu") == "bf16"
    assert caplog.records == []


def test_avx2_only_cpu_trains_in_fp32(cpu, caplog):
    cpu(ZEN2)
    with caplog.at_level(logging.WARNING, logger="simcse_ops.hardware"):
        assert hardware.resolve_precision("auto", "cpu") == "fp32"
    assert caplog.records == []


def test_explicit_bf16_on_avx2_runs_with_one_warning_naming_the_cpu_and_the_cost(cpu, caplog):
    cpu(ZEN2)
    with caplog.at_level(logging.WARNING, logger="simcse_ops.hardware"):
        assert hardware.resolve_precision("bf16", "cpu", key="variants.sup-nli.precision") == "bf16"
    assert len(caplog.records) == 1
    line = caplog.records[0].getMessage()
    assert "\n" not in line
    for part in ("AMD EPYC 7B12", "x86 AVX2", "27x slower", "variants.sup-nli.precision: auto"):
        assert part in line


def test_fp32_is_fp32_everywhere_and_unknown_requests_name_the_key(cpu, gpu):
    cpu(AMX)
    gpu(True)
    assert hardware.resolve_precision("fp32", "cpu") == "fp32"
    assert hardware.resolve_precision("fp32", "cuda") == "fp32"
    with pytest.raises(ConfigError, match=r"variants.b.precision: 'fp16' is not a precision; expected one of auto, fp32, bf16"):
        hardware.resolve_precision("fp16", "cpu", key="variants.b.precision")


@pytest.mark.parametrize(("flags", "arch", "expected"), [
    ({"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16"}, "x86_64", "x86 AMX"),
    ({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}, "x86_64", "x86 AVX-512 BF16+VNNI"),
    ({"avx2", "avx512f", "avx512_vnni"}, "x86_64", "x86 AVX-512 VNNI"),
    ({"avx2", "avx512f"}, "x86_64", "x86 AVX-512"),
    ({"avx2"}, "x86_64", "x86 AVX2"),
    (set(), "x86_64", "x86"),
    (set(), "aarch64", "aarch64"),
])
def test_cpu_class(flags, arch, expected):
    info = CpuInfo("cpu", arch, frozenset(flags), "DEFAULT")
    assert info.cpu_class == expected
    assert info.native_bf16 == bool(flags & {"amx_bf16", "avx512_bf16"})


def test_read_cpuinfo_takes_the_first_processor(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nmodel name\t: AMD EPYC 7B12\nflags\t\t: fpu sse avx2 fma\n\n"
                    "processor\t: 1\nmodel name\t: other\nflags\t\t: fpu\n")
    assert hardware.read_cpuinfo(path) == ("AMD EPYC 7B12", frozenset({"fpu", "sse", "avx2", "fma"}))
    assert hardware.read_cpuinfo(tmp_path / "missing") == ("", frozenset())


def _stub_machine(monkeypatch, gpu, proc_flags, torch_flags, with_gpu):
    monkeypatch.setattr(hardware, "read_cpuinfo", lambda: ("AMD EPYC 7B12", frozenset(proc_flags)))
    monkeypatch.setattr(hardware, "read_torch_cpu", lambda: ("AVX2", frozenset(torch_flags), "AMD EPYC"))
    monkeypatch.setattr(hardware.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    if with_gpu:
        gpu(True, "NVIDIA H100 80GB HBM3")
    else:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_machine_report_on_an_avx2_cpu(monkeypatch, gpu):
    _stub_machine(monkeypatch, gpu, {"fpu", "avx2", "fma"}, {"avx2"}, with_gpu=False)
    report = hardware.machine_report()
    assert report["cpu_model"] == "AMD EPYC 7B12"
    assert report["cpu_class"] == "x86 AVX2"
    assert report["flags"] == {"avx2": True, "avx512f": False, "avx512_vnni": False, "avx512_bf16": False,
                               "amx_bf16": False}
    assert report["torch_cpu_capability"] == "AVX2"
    assert report["torch_threads"] == 2
    assert report["gpu"] is None
    assert hardware.precision_record("fp32", "cpu") == {"precision": "fp32", "cpu_class": "x86 AVX2",
                                                        "cpu_model": "AMD EPYC 7B12", "gpu": None}


def test_machine_report_with_a_gpu_and_flags_only_torch_reports(monkeypatch, gpu):
    _stub_machine(monkeypatch, gpu, set(), {"avx2", "avx512f", "avx512_bf16"}, with_gpu=True)
    report = hardware.machine_report()
    assert report["cpu_class"] == "x86 AVX-512 BF16"
    assert report["gpu"] == {"name": "NVIDIA H100 80GB HBM3", "bf16": True, "count": 1}
    assert hardware.precision_record("bf16", "cuda")["gpu"] == "NVIDIA H100 80GB HBM3"
    assert hardware.describe_device("cuda") == "cuda (NVIDIA H100 80GB HBM3)"


def test_autocast_enters_bf16_only_for_bf16():
    with hardware.autocast("fp32", "cpu"):
        assert not torch.is_autocast_enabled("cpu")
    with hardware.autocast("bf16", torch.device("cpu")):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_every_benchmark_records_the_machine_report():
    """Each benchmark's JSON line carries `machine_report()`, not a bare `x86_64`."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "benchmarks"
    scripts = sorted(root.glob("*.py"))
    assert scripts
    for path in scripts:
        text = path.read_text(encoding="utf-8")
        assert '"machine": machine_report()' in text or '"machine": {**machine_report()' in text, \
            f"{path.name}: its JSON line has no machine_report()"
        assert "platform.machine()" not in text and "platform.processor()" not in text, path.name
