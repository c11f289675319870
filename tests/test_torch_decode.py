"""``bench.torch_decode``, the PyTorch side of ``bench.decode_vs``: its KV-cache decode against a full recompute.

The reference is ``bench.torch_reference.GPT``'s plain forward over the whole
sequence each step (no cache), greedy; the engine must produce the same
tokens for several rows and across a cache that grows (nanochat's 1,024-slot
growth); a finished python block queues the calculator's reply. Special ids
lie outside the vocabulary, so a random model never stops early.
"""

from __future__ import annotations

import json
import sys

import pytest

torch = pytest.importorskip("torch")

from bench.torch_decode import KVCache, TorchEngine, _Row, forward_cached  # noqa: E402
from bench.torch_reference import GPT, GPTConfig  # noqa: E402

SPECIAL = {name: 300 + i for i, name in enumerate(("<|bos|>", "<|assistant_end|>", "<|python_start|>", "<|python_end|>",
                                                    "<|output_start|>", "<|output_end|>"))}  # fmt: skip


class DigitTokenizer:
    """Ids 0-9 are the digits, as the calculator's reply needs."""

    def encode(self, text):
        return [int(c) for c in text]

    def decode(self, ids):
        return "+".join(str(i) for i in ids)


def model(seed=0) -> GPT:
    m = GPT(GPTConfig(sequence_len=64, vocab_size=256, n_layer=2, n_head=2, n_kv_head=1, n_embd=64))
    m.randomize_weights(seed=seed)
    return m.eval()


@torch.no_grad()
def full_greedy(m: GPT, prompt, n):
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(m(torch.tensor([ids]))[0, -1].argmax()))
    return ids


def test_cached_greedy_matches_full_recompute():
    m = model()
    prompt = [5, 17, 33, 2, 90, 41]
    eng = TorchEngine(m, SPECIAL)
    seqs, masks = eng.generate_batch(prompt, num_samples=3, max_tokens=20, temperature=0.0)
    assert seqs == [full_greedy(m, prompt, 20)] * 3
    assert masks == [[0] * len(prompt) + [1] * 20] * 3


def test_cache_grows_and_keeps_its_contents():
    m = model(1)
    ids = torch.tensor([[3, 8, 13, 21, 34]])
    cache = KVCache(1, 1, 2, 32, 2)  # room for 2 slots: the prompt already overflows it
    logits = forward_cached(m, ids, cache)
    assert cache.kv.size(4) == 2048 and cache.pos == 5  # 5 + 1,024 rounded up to a multiple of 1,024
    torch.testing.assert_close(logits, m(ids), rtol=1e-5, atol=1e-5)
    step = forward_cached(m, torch.tensor([[55]]), cache)
    torch.testing.assert_close(step[:, -1], m(torch.tensor([[3, 8, 13, 21, 34, 55]]))[:, -1], rtol=1e-5, atol=1e-5)


def test_python_block_queues_the_calculator_reply():
    eng = TorchEngine(model(2), SPECIAL, DigitTokenizer())
    row = _Row()
    for tok in [SPECIAL["<|python_start|>"], 2, 3, SPECIAL["<|python_end|>"]]:
        eng._tool_step(row, tok)
    assert list(row.forced) == [SPECIAL["<|output_start|>"], 5, SPECIAL["<|output_end|>"]]  # "2+3" = 5
    assert not row.in_python and row.expr == []


FAKE_ENGINE = '''
"""A stand-in for a nanochat checkout's engine.py: this project's port behind nanochat's constructor."""
import json, os
from bench.torch_decode import TorchEngine

SPECIALS = ("<|bos|>", "<|assistant_end|>", "<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>")

class Engine(TorchEngine):
    def __init__(self, model, tokenizer):
        with open(os.environ["FAKE_NANOCHAT_LOG"], "a") as f:
            f.write(json.dumps({"device": str(model.lm_head.weight.device), "training": model.training}) + "\\n")
        super().__init__(model, {n: tokenizer.encode_special(n) for n in SPECIALS}, tokenizer)
'''


def test_decode_vs_runs_a_nanochat_checkouts_engine(tmp_path, monkeypatch, capsys):
    """``bench.decode_vs --nanochat PATH`` builds the checkout's GPT on meta, loads the weights and runs its Engine."""
    from bench import decode_vs

    pkg = tmp_path / "checkout" / "nanochat"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "gpt.py").write_text("from bench.torch_reference import GPT, GPTConfig  # nanochat's names\n")
    (pkg / "engine.py").write_text(FAKE_ENGINE)
    log = tmp_path / "engine.jsonl"
    monkeypatch.setenv("FAKE_NANOCHAT_LOG", str(log))
    monkeypatch.setattr(sys, "path", list(sys.path))  # decode_vs prepends the checkout; undone after

    def ours():
        return [m for m in sys.modules if m == "nanochat" or m.startswith("nanochat.")]

    earlier = {m: sys.modules.pop(m) for m in ours()}  # another test's stand-in must not answer for this checkout
    try:
        rows = decode_vs.main(["--depth", "1", "--vocab_size", "256", "--seq_len", "64", "--prompt_tokens", "8",
                               "--max_tokens", "6", "--batch_sizes", "1,2", "--repeats", "1",
                               "--nanochat", str(tmp_path / "checkout")])  # fmt: skip
    finally:
        for name in ours():
            del sys.modules[name]
        sys.modules.update(earlier)
    assert [b for b, *_ in rows] == [1, 2] and all(0 < n <= 6 * b for b, n, *_ in rows)  # tokens equal, else main exits
    assert "torch side: nanochat checkout" in capsys.readouterr().out
    assert [json.loads(ln) for ln in log.read_text().splitlines()] == [{"device": "cpu", "training": False}]
