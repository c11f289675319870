"""nanochat's inference engine (commit 8c89661, classic) in PyTorch: the baseline of ``bench.decode_vs``.

Written in this project from nanochat's engine description (reference §8.1),
on ``bench.torch_reference``'s model (nanochat's parameter names, so a
converted checkpoint loads with ``load_state_dict(strict=True)``), not copied
from nanochat. What makes it nanochat's algorithm:

- one cache tensor ``(L, 2, B, H, T, D)``, allocated lazily in the dtype of the
  first K, grown in multiples of 1,024 when a write would overflow it;
  ``insert_kv`` writes at the current position and returns views up to it,
  the last layer advances the position;
- ``generate``: a batch-1 prefill into a cache of ``len(prompt)`` slots, then a
  ``num_samples``-row cache of ``len(prompt) + max_tokens`` with the prefill
  copied in, the first token sampled per row from the expanded logits, then a
  Python loop of one forward per token: ``Tq == Tk`` attends causally,
  ``Tq == 1`` attends to the whole filled cache;
- ``sample_next_token`` with a seeded ``torch.Generator`` (argmax at
  temperature 0; top-k or full softmax + multinomial otherwise), a forced-token
  queue per row (the calculator's ``<|output_start|> ... <|output_end|>``),
  mask 1 = sampled / 0 = forced, rows done on ``<|assistant_end|>``/``<|bos|>``.

Nothing here imports JAX.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from bench.torch_reference import GPT, norm, rotate
from nanochat_jax import calculator

GROW = 1024  # nanochat grows its cache in multiples of this many positions


class KVCache:
    """nanochat's classic cache: ``(L, 2, B, H, T, D)``, lazily allocated, growing, position advanced by the last layer."""

    def __init__(self, batch_size: int, num_heads: int, seq_len: int, head_dim: int, num_layers: int):
        self.shape = [num_layers, 2, batch_size, num_heads, seq_len, head_dim]
        self.kv: torch.Tensor | None = None
        self.pos = 0

    def prefill(self, other: KVCache) -> None:
        """Copy a batch-1 cache into this (empty, larger) one, broadcasting over rows."""
        assert self.kv is None and other.kv is not None, "prefill an empty cache from a filled one"
        self.shape[4] = max(self.shape[4], other.pos)
        self.kv = torch.empty(self.shape, dtype=other.kv.dtype, device=other.kv.device)
        self.kv[:, :, :, :, : other.pos] = other.kv[:, :, :, :, : other.pos]
        self.pos = other.pos

    def insert_kv(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kv is None:
            self.kv = torch.empty(self.shape, dtype=k.dtype, device=k.device)
        t0, t1 = self.pos, self.pos + k.size(2)
        if t1 > self.kv.size(4):
            grown = list(self.kv.shape)
            grown[4] = math.ceil((t1 + GROW) / GROW) * GROW
            bigger = torch.empty(grown, dtype=self.kv.dtype, device=self.kv.device)
            bigger[:, :, :, :, :t0] = self.kv[:, :, :, :, :t0]
            self.kv = bigger
        self.kv[layer, 0, :, :, t0:t1] = k
        self.kv[layer, 1, :, :, t0:t1] = v
        if layer == self.kv.size(0) - 1:
            self.pos = t1
        return self.kv[layer, 0, :, :, :t1], self.kv[layer, 1, :, :, :t1]


def _attention(attn, x: torch.Tensor, cos, sin, cache: KVCache) -> torch.Tensor:
    """nanochat's cached attention: rotary at the cache offset, QK norm, then the three SDPA paths."""
    B, T, C = x.shape
    H, Hkv, D = attn.n_head, attn.n_kv_head, attn.head_dim
    q = norm(rotate(attn.c_q(x).view(B, T, H, D), cos, sin)).transpose(1, 2)
    k = norm(rotate(attn.c_k(x).view(B, T, Hkv, D), cos, sin)).transpose(1, 2)
    v = attn.c_v(x).view(B, T, Hkv, D).transpose(1, 2)
    k, v = cache.insert_kv(attn.layer_idx, k, v)
    Tq, Tk = q.size(2), k.size(2)
    gqa = H != Hkv
    if Tq == Tk:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    elif Tq == 1:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=False, enable_gqa=gqa)
    else:  # a chunk after a prefix: the whole prefix plus causal within the chunk
        mask = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(Tk - Tq)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    return attn.c_proj(y.transpose(1, 2).reshape(B, T, C))


@torch.inference_mode()
def forward_cached(model: GPT, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Softcapped fp32 logits ``(B, T, vocab)`` of ``idx`` placed at ``cache.pos``; writes its K/V into the cache."""
    T0, T = cache.pos, idx.size(1)
    cos, sin = model.cos[:, T0 : T0 + T], model.sin[:, T0 : T0 + T]
    x = norm(model.transformer.wte(idx))
    for block in model.transformer.h:
        x = x + _attention(block.attn, norm(x), cos, sin, cache)
        x = x + block.mlp(norm(x))
    logits = model.lm_head(norm(x))[..., : model.config.vocab_size].float()
    return 15.0 * torch.tanh(logits / 15.0)


def sample_next_token(logits: torch.Tensor, rng: torch.Generator, temperature: float = 1.0, top_k: int | None = None):
    """``(B, vocab)`` -> ``(B, 1)``: argmax at temperature 0, else softmax(l/T) over the top k (or all) + multinomial."""
    if temperature == 0.0:
        return torch.argmax(logits, dim=-1, keepdim=True)
    if top_k is not None and top_k > 0:
        vals, idx = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1)
        probs = F.softmax(vals / temperature, dim=-1)
        return idx.gather(1, torch.multinomial(probs, num_samples=1, generator=rng))
    return torch.multinomial(F.softmax(logits / temperature, dim=-1), num_samples=1, generator=rng)


class _Row:
    """Per-row state: forced tokens to emit, the python block being collected, done."""

    def __init__(self):
        self.forced: deque[int] = deque()
        self.in_python, self.expr, self.completed = False, [], False


class TorchEngine:
    """nanochat's ``Engine.generate`` over ``bench.torch_reference.GPT``; ``special`` maps token names to ids."""

    def __init__(self, model: GPT, special: dict[str, int], tokenizer=None):
        self.model, self.special, self.tokenizer = model, special, tokenizer

    def generate(self, tokens: Sequence[int], num_samples: int = 1, max_tokens: int | None = None, temperature: float = 1.0,
                 top_k: int | None = None, seed: int = 42) -> Iterator[tuple[list[int], list[int]]]:
        model, cfg = self.model, self.model.config
        device = model.lm_head.weight.device
        rng = torch.Generator(device=device).manual_seed(seed)
        shape = (cfg.n_kv_head, cfg.n_embd // cfg.n_head, cfg.n_layer)
        prefill = KVCache(1, shape[0], len(tokens), shape[1], shape[2])
        logits = forward_cached(model, torch.tensor([list(tokens)], dtype=torch.long, device=device), prefill)
        cache = KVCache(num_samples, shape[0], len(tokens) + (max_tokens or cfg.sequence_len), shape[1], shape[2])
        cache.prefill(prefill)
        logits = logits[:, -1, :].expand(num_samples, -1)
        rows = [_Row() for _ in range(num_samples)]
        stop = (self.special["<|assistant_end|>"], self.special["<|bos|>"])
        generated = 0
        while max_tokens is None or generated < max_tokens:
            if all(r.completed for r in rows):
                break
            sampled = sample_next_token(logits, rng, temperature, top_k)[:, 0].tolist()
            column, masks = [], []
            for row, tok in zip(rows, sampled):
                forced = bool(row.forced)
                tok = row.forced.popleft() if forced else tok
                column.append(tok)
                masks.append(0 if forced else 1)
                if tok in stop:
                    row.completed = True
                self._tool_step(row, tok)
            yield column, masks
            generated += 1
            logits = forward_cached(model, torch.tensor(column, dtype=torch.long, device=device)[:, None], cache)[:, -1, :]

    def _tool_step(self, row: _Row, tok: int) -> None:
        """Collect ``<|python_start|> ... <|python_end|>`` and queue the calculator's reply (needs a tokenizer)."""
        sp = self.special
        if tok == sp["<|python_start|>"]:
            row.in_python, row.expr = True, []
        elif tok == sp["<|python_end|>"] and row.in_python:
            row.in_python = False
            result = calculator.evaluate(self.tokenizer.decode(row.expr)) if row.expr and self.tokenizer else None
            if result is not None:
                row.forced.extend([sp["<|output_start|>"], *self.tokenizer.encode(str(result)), sp["<|output_end|>"]])
            row.expr = []
        elif row.in_python:
            row.expr.append(tok)

    def generate_batch(self, tokens: Sequence[int], num_samples: int = 1, **kwargs):
        """Full sequences (prompt included, terminal tokens excluded) and masks (prompt = 0), as nanochat's."""
        results = [list(tokens) for _ in range(num_samples)]
        masks = [[0] * len(tokens) for _ in range(num_samples)]
        done = [False] * num_samples
        stop = (self.special["<|assistant_end|>"], self.special["<|bos|>"])
        for column, mask_column in self.generate(tokens, num_samples, **kwargs):
            for i, (tok, m) in enumerate(zip(column, mask_column)):
                if done[i] or tok in stop:
                    done[i] = True
                    continue
                results[i].append(tok)
                masks[i].append(m)
        return results, masks
