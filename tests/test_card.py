"""card.py: the model card says which precision and CPU class trained the model."""

from __future__ import annotations

from simcse_ops.card import training_hardware_section


def test_training_hardware_names_precision_and_cpu_class():
    text = "\n".join(training_hardware_section({
        "steps": 88, "precision": "fp32", "cpu_class": "x86 AVX2", "cpu_model": "AMD EPYC 7B12",
        "gpu": None, "torch_threads": 2}))
    assert "Trained in **fp32** on AMD EPYC 7B12 (x86 AVX2), 2 threads" in text
    assert "only in the same precision" in text


def test_training_hardware_on_a_gpu_and_for_untrained_or_old_records():
    gpu = "\n".join(training_hardware_section({"steps": 5, "precision": "bf16", "cpu_class": "x86 AMX",
                                               "cpu_model": "Xeon", "gpu": "NVIDIA H100", "torch_threads": 8}))
    assert "Trained in **bf16** on NVIDIA H100" in gpu
    assert "Not trained" in "\n".join(training_hardware_section({"method": "pretrained", "steps": 0}))
    assert "Not recorded" in "\n".join(training_hardware_section({"steps": 3}))
