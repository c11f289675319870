"""Peak tables and MFU with fake accelerator kinds (CPUs have no peak), checked against hand-computed numbers."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from nanochat_jax import hardware

H100 = SimpleNamespace(device_kind="NVIDIA H100 80GB HBM3")
H200 = SimpleNamespace(device_kind="NVIDIA H200")
A100 = SimpleNamespace(device_kind="NVIDIA A100-SXM4-80GB")


@pytest.mark.parametrize("device, peak, bandwidth", [(H100, 989e12, 3.35e12), (H200, 989e12, 4.8e12), (A100, 312e12, 2.0e12),
                                                    ("TPU v5 lite", 197e12, 0.819e12), ("cpu", None, None)])  # fmt: skip
def test_peaks(device, peak, bandwidth):
    assert hardware.peak_flops(device) == peak
    assert hardware.peak_memory_bandwidth(device) == bandwidth


def test_mfu_by_hand():
    # d20-like step: 3.5e9 FLOPs/token x 524,288 tokens in 0.5 s on 8 H100s:
    # 1.835008e15 / 0.5 = 3.670016e15 FLOP/s of 8 x 989e12 = 7.912e15 peak -> 0.4638544
    assert hardware.mfu(3.5e9, 524_288, 0.5, num_devices=8, device=H100) == pytest.approx(0.4638544, rel=1e-6)
    # One H200 (same bf16 peak): 1e9 FLOPs/token x 1e5 tokens in 1 s = 1e14 / 989e12 = 0.1011122...
    assert hardware.mfu(1e9, 1e5, 1.0, num_devices=1, device=H200) == pytest.approx(0.1011122, rel=1e-6)


def test_mfu_unavailable_without_a_peak_or_time():
    assert hardware.mfu(1e9, 1e5, 1.0, num_devices=1, device="cpu") is None
    assert hardware.mfu(1e9, 1e5, 0.0, num_devices=1, device=H100) is None
