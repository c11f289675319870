"""Stage-to-stage restore onto a mesh that spans several processes.

Two real JAX processes (2 CPU devices each, joined by ``jax.distributed``) restore
one checkpoint onto their common 4-device mesh; each must see every parameter,
placed on all 4 devices, with the saved values.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from nanochat_jax import checkpoint
from nanochat_jax.gpt import GPT, GPTConfig

ROOT = Path(__file__).resolve().parents[1]
WORKER = textwrap.dedent(
    """
    import json, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import jax
    jax.distributed.initialize(f"127.0.0.1:{sys.argv[2]}", num_processes=2, process_id=int(sys.argv[1]))
    import numpy as np
    from nanochat_jax import checkpoint, sharding
    params, meta = checkpoint.load_params(sys.argv[3], None, sharding.make_mesh())
    leaves = jax.tree.leaves(params)
    print(json.dumps({"process_count": jax.process_count(), "devices": [len(x.sharding.device_set) for x in leaves],
                      "sums": [float(np.asarray(x.addressable_shards[0].data, np.float64).sum()) for x in leaves],
                      "step": meta["step"]}))
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_restore_a_checkpoint_onto_their_global_mesh(tmp_path):
    config = GPTConfig(sequence_len=16, vocab_size=128, n_layer=2, n_head=1, n_kv_head=1, n_embd=64)
    model = GPT(config, rngs=nnx.Rngs(3))
    model.lm_head[...] = jax.random.normal(jax.random.key(4), model.lm_head[...].shape)  # no all-zero leaf
    checkpoint.save_model_checkpoint(model, {}, tmp_path / "ck", 7)
    want = [float(np.asarray(x, np.float64).sum()) for x in jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param)))]

    env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "JAX_PLATFORMS": "cpu"}
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(i), port, str(tmp_path / "ck")], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]  # fmt: skip
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
        got = json.loads(out.strip().splitlines()[-1])
        assert got["process_count"] == 2 and got["step"] == 7
        assert got["devices"] == [4] * len(want)
        np.testing.assert_allclose(got["sums"], want, rtol=1e-6)
