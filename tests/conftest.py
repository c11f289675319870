"""Test-session setup: 8 host CPU devices so sharding is exercised on CPU.

XLA reads the flag once, at backend start, so it must be set before anything
imports jax. Single-device tests are unaffected: unsharded work runs on
device 0 as usual.
"""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
