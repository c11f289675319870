"""Peak dense bf16 FLOP/s by accelerator, for MFU reported the nanochat way.

MFU = flops_per_token * tokens / seconds / (peak * devices). nanochat hard-codes
989e12 (H100 SXM bf16 dense, no sparsity); the same basis is used for H200,
whose tensor cores are the H100's. CPUs have no meaningful published peak, so
MFU is reported as unavailable there rather than invented.
"""

from __future__ import annotations

import jax

# Matched as lower-case substrings of jax.Device.device_kind, first match wins.
PEAK_BF16_FLOPS = (
    ("h200", 989e12),
    ("h100", 989e12),
    ("h800", 989e12),
    ("a100", 312e12),
    ("a800", 312e12),
    ("l4", 121e12),
    ("tpu v6", 918e12),
    ("tpu v5p", 459e12),
    ("tpu v5 lite", 197e12),
    ("tpu v5e", 197e12),
    ("tpu v4", 275e12),
)

# Peak HBM bandwidth (bytes/s) for memory-bound decode utilisation.
PEAK_MEMORY_BANDWIDTH = (
    ("h200", 4.8e12),
    ("h100", 3.35e12),
    ("a100", 2.0e12),
    ("tpu v6", 1.64e12),
    ("tpu v5p", 2.765e12),
    ("tpu v5 lite", 0.819e12),
    ("tpu v5e", 0.819e12),
    ("tpu v4", 1.2e12),
)


def _lookup(table, device) -> float | None:
    kind = device if isinstance(device, str) else (device or jax.devices()[0]).device_kind
    for key, value in table:
        if key in kind.lower():
            return value
    return None


def peak_flops(device=None) -> float | None:
    """Peak bf16 FLOP/s of one device (a ``jax.Device``, its ``device_kind``, or device 0), None when unknown (CPU)."""
    return _lookup(PEAK_BF16_FLOPS, device)


def peak_memory_bandwidth(device=None) -> float | None:
    return _lookup(PEAK_MEMORY_BANDWIDTH, device)


def mfu(flops_per_token: float, tokens: float, seconds: float, num_devices: int | None = None, device=None) -> float | None:
    """Model FLOPs utilisation in [0, 1] of ``num_devices`` (default: all) like ``device`` (default: device 0); None where the peak is unknown."""
    peak = peak_flops(device)
    if peak is None or seconds <= 0:
        return None
    num_devices = num_devices or jax.device_count()
    return flops_per_token * tokens / seconds / (peak * num_devices)


def default_compute_dtype() -> str:
    """bf16 where matmul units are built for it (GPU/TPU), fp32 on CPU."""
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def peak_memory_bytes() -> int | None:
    """Peak device memory in use so far (device 0), when the backend reports it."""
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")
