"""nanochat's classic GPT (commit 8c89661) in plain PyTorch, written from the spec.

Why this file exists: it is the independent side of every parity check (the
tests import it from here) and the model of the PyTorch benchmark baseline. The
JAX model (``nanochat_jax.gpt``) is compared against it, and the converter
(``nanochat_jax.convert``) reads and writes state dicts with exactly the names
and shapes this module has, which are nanochat's own:

  transformer.wte.weight               (padded_vocab, n_embd)
  transformer.h.{i}.attn.c_q.weight    (n_head*head_dim, n_embd)
  transformer.h.{i}.attn.c_k.weight    (n_kv_head*head_dim, n_embd)
  transformer.h.{i}.attn.c_v.weight    (n_kv_head*head_dim, n_embd)
  transformer.h.{i}.attn.c_proj.weight (n_embd, n_embd)
  transformer.h.{i}.mlp.c_fc.weight    (4*n_embd, n_embd)
  transformer.h.{i}.mlp.c_proj.weight  (n_embd, 4*n_embd)
  lm_head.weight                       (padded_vocab, n_embd)

The rotary tables are non-persistent buffers, so a ``state_dict()`` of this
module has exactly the key set nanochat's ``load_state_dict(strict=True)``
expects.

It is written to be usable as the PyTorch side of a benchmark too: no
data-dependent Python control flow in ``forward`` (``torch.compile`` friendly)
and it runs unchanged under ``torch.autocast(dtype=torch.bfloat16)``.
Nothing here imports JAX.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

PAD_VOCAB_TO = 64
ROTARY_BASE = 10000
SOFTCAP = 15.0


@dataclass
class GPTConfig:
    """nanochat's six model fields, all explicit; ``GPTConfig(**meta['model_config'])`` works."""

    sequence_len: int
    vocab_size: int
    n_layer: int
    n_head: int
    n_kv_head: int
    n_embd: int

    @classmethod
    def from_depth(cls, depth: int, vocab_size: int = 65536, sequence_len: int = 2048) -> "GPTConfig":
        """The classic depth dial, derived independently of the JAX code."""
        n_embd = 64 * depth
        n_head = max(1, (n_embd + 127) // 128)
        return cls(sequence_len, vocab_size, depth, n_head, n_head, n_embd)


def padded_vocab(vocab_size: int) -> int:
    return ((vocab_size + PAD_VOCAB_TO - 1) // PAD_VOCAB_TO) * PAD_VOCAB_TO


def norm(x: torch.Tensor) -> torch.Tensor:
    """Parameter-free RMSNorm over the last axis with torch's default eps."""
    return F.rms_norm(x, (x.size(-1),))


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Half-split rotary on (B, T, H, D): first half paired with second half.

    cos/sin are bf16 buffers; in fp32 activations the products promote to
    fp32 and the result is cast back to the activation dtype.
    """
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    first = a * cos + b * sin
    second = b * cos - a * sin
    return torch.cat((first, second), dim=-1).to(x.dtype)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        assert config.n_head % config.n_kv_head == 0
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head
        self.head_dim = config.n_embd // config.n_head
        C, D = config.n_embd, self.head_dim
        self.c_q = nn.Linear(C, self.n_head * D, bias=False)
        self.c_k = nn.Linear(C, self.n_kv_head * D, bias=False)
        self.c_v = nn.Linear(C, self.n_kv_head * D, bias=False)
        self.c_proj = nn.Linear(C, C, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        # Rotary first, then QK-norm (nanochat's order).
        q = norm(rotate(q, cos, sin))
        k = norm(rotate(k, cos, sin))
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D) for SDPA
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=self.n_head != self.n_kv_head
        )
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer_idx)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(norm(x), cos, sin)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    """``model(idx)`` -> fp32 logits (B, T, vocab); ``model(idx, targets)`` -> loss."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        vp = padded_vocab(config.vocab_size)
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(vp, config.n_embd),
                "h": nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            }
        )
        self.lm_head = nn.Linear(config.n_embd, vp, bias=False)
        self.rotary_seq_len = 10 * config.sequence_len
        cos, sin = self._rotary_tables(self.rotary_seq_len)
        # Not persistent: nanochat's checkpoints never contain them.
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def _rotary_tables(self, num_positions: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, T, 1, D/2) tables computed in fp32, then stored as bf16 like nanochat."""
        D = self.config.n_embd // self.config.n_head
        inv_freq = 1.0 / (ROTARY_BASE ** (torch.arange(0, D, 2, dtype=torch.float32, device=device) / D))
        pos = torch.arange(num_positions, dtype=torch.float32, device=device)
        angles = torch.outer(pos, inv_freq)
        cos = angles.cos().bfloat16()[None, :, None, :]
        sin = angles.sin().bfloat16()[None, :, None, :]
        return cos, sin

    @torch.no_grad()
    def init_weights(self) -> None:
        """nanochat's classic init; also (re)builds the rotary buffers.

        Linear: N(0, std), std = 1/sqrt(fan_in) * min(1, sqrt(fan_out/fan_in));
        embedding N(0, 1); lm_head and both c_proj zero. Needed after
        ``to_empty`` from the meta device, where buffers hold garbage.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                fan_out, fan_in = module.weight.shape
                std = 1.0 / math.sqrt(fan_in) * min(1.0, math.sqrt(fan_out / fan_in))
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=1.0)
        nn.init.zeros_(self.lm_head.weight)
        for block in self.transformer.h:
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
        cos, sin = self._rotary_tables(self.rotary_seq_len, device=self.lm_head.weight.device)
        self.cos, self.sin = cos, sin

    @torch.no_grad()
    def randomize_weights(self, seed: int = 0, scale: float = 1.0) -> None:
        """Every weight random (incl. the zero-initialised ones) for parity tests.

        Uses the same std rule as ``init_weights`` for all Linears so no part
        of the network is silently skipped by a zero matrix.
        """
        g = torch.Generator().manual_seed(seed)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                fan_out, fan_in = module.weight.shape
                std = scale / math.sqrt(fan_in) * min(1.0, math.sqrt(fan_out / fan_in))
                w = torch.randn(module.weight.shape, generator=g) * std
                module.weight.copy_(w.to(module.weight.dtype))
            elif isinstance(module, nn.Embedding):
                module.weight.copy_(torch.randn(module.weight.shape, generator=g).to(module.weight.dtype))

    def num_params(self) -> int:
        """Every parameter, embedding and vocab padding included (works on meta)."""
        return sum(p.numel() for p in self.parameters())

    def estimate_flops(self) -> int:
        """FLOPs per token: 6*(N - N_wte) + 12*L*H*D*T (PaLM appendix B)."""
        cfg = self.config
        n_wte = self.transformer.wte.weight.numel()
        D = cfg.n_embd // cfg.n_head
        return 6 * (self.num_params() - n_wte) + 12 * cfg.n_layer * cfg.n_head * D * cfg.sequence_len

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, loss_reduction: str = "mean"):
        T = idx.shape[1]
        assert T <= self.cos.size(1), f"sequence of {T} exceeds rotary cache of {self.cos.size(1)}"
        cos, sin = self.cos[:, :T], self.sin[:, :T]
        x = norm(self.transformer.wte(idx))
        for block in self.transformer.h:
            x = block(x, cos, sin)
        x = norm(x)
        logits = self.lm_head(x)[..., : self.config.vocab_size].float()
        logits = SOFTCAP * torch.tanh(logits / SOFTCAP)
        if targets is None:
            return logits
        return F.cross_entropy(
            logits.reshape(-1, logits.size(-1)),
            targets.reshape(-1),
            ignore_index=-1,
            reduction=loss_reduction,
        )


def build_meta(config: GPTConfig) -> GPT:
    """A weightless model on the meta device (for parameter/FLOP counting)."""
    with torch.device("meta"):
        return GPT(config)
