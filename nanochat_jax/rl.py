"""RL on a task with a reward (nanochat's chat_rl): rollouts on the engine become weighted training batches.

Each step samples ``num_samples`` completions for ``examples_per_step`` prompts
from the current params (tool calls live), scores them with the task's
``reward`` and turns them into ``(inputs, targets, weights)`` rows: targets -1
on the prompt, the padding and the calculator's forced output; every row's
weight is its advantage (reward minus its prompt's mean, no sigma) scaled so
that the runner's ``pg`` loss reproduces nanochat's normalisation (each pass of
``device_batch_size`` rows divided by its own valid-token count, then averaged
over passes). ``best_of_n`` keeps, per prompt, the first best-rewarded sample
(none when all rewards are 0) with weight 1 / kept tokens: the SFT loss on them.
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from nanochat_jax.chat_batches import length_buckets, sft_rows
from nanochat_jax.engine import Engine

OBJECTIVES = ("reinforce", "best_of_n")


def rollout_seed(seed: int, step: int, example: int) -> int:
    """A prompt's sampling seed from (run seed, step, example index); the engine adds the sample index."""
    return ((seed * 1_000_003 + step) * 1_000_003 + example) % 2**31


def advantages(rewards: np.ndarray) -> np.ndarray:
    """``(prompts, samples)`` rewards minus each prompt's mean reward (nanochat: no division by sigma)."""
    return rewards - rewards.mean(axis=1, keepdims=True)


def best_of_n(rewards: np.ndarray) -> np.ndarray:
    """1 on each prompt's first best-rewarded sample, 0 elsewhere; a prompt whose rewards are all <= 0 keeps none."""
    keep = np.zeros_like(rewards)
    rows = np.nonzero(rewards.max(axis=1) > 0)[0]
    keep[rows, rewards[rows].argmax(axis=1)] = 1.0
    return keep


def row_weights(objective: str, rewards: np.ndarray, valid: np.ndarray, pass_rows: int) -> np.ndarray:
    """Per-row weights so that the step's loss is ``sum over rows of weight * sum of the row's token NLL``.

    ``valid``: valid target tokens per row (rows prompt-major, as ``rewards.ravel()``).
    reinforce: ``A / (valid tokens of the row's pass * number of passes)`` (nanochat's
    ``sum(logp * A) / (num_valid * num_passes * examples_per_rank)``, averaged over ranks);
    best_of_n: ``1 / (tokens of all kept rows)``, the mean NLL over the kept responses.
    """
    if objective == "reinforce":
        per_pass = np.maximum(valid.reshape(-1, pass_rows).sum(axis=1), 1)
        return advantages(rewards).ravel() / (np.repeat(per_pass, pass_rows) * len(per_pass))
    if objective == "best_of_n":
        keep = best_of_n(rewards).ravel()
        return keep / max(float((keep * valid).sum()), 1.0)
    raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")


def policy_batches(sequences, masks, weights: np.ndarray, *, num_micro: int, pad_id: int, max_len: int,
                   process_index: int = 0, process_count: int = 1) -> list[dict[str, np.ndarray]]:
    """This process's share of ``num_micro`` micro-batches of (inputs, targets, weights) rows.

    Micro-batch m holds rows ``[m*M, (m+1)*M)`` of the step (``M = rows / num_micro``),
    split evenly over processes; rows are padded to a length bucket, longer ones cut at
    ``max_len``. Weights are multiplied by ``num_micro`` because the runner averages
    the micro-batch losses of a step.
    """
    per_micro = len(sequences) // num_micro
    share = per_micro // process_count
    buckets = length_buckets(max_len)
    out = []
    for m in range(num_micro):
        lo = m * per_micro + process_index * share
        rows = range(lo, lo + share)
        batch = sft_rows([(sequences[r][: max_len + 1], masks[r][: max_len + 1]) for r in rows], pad_id, buckets)
        w = (num_micro * weights[lo : lo + share]).astype(np.float32)
        batch["weights"] = np.where(batch["targets"] >= 0, w[:, None], 0.0).astype(np.float32)
        out.append(batch)
    return out


def valid_counts(masks, max_len: int) -> np.ndarray:
    """Trained tokens per row: sampled positions after the first token, within ``max_len + 1`` tokens."""
    return np.asarray([int(np.sum(np.asarray(m[1 : max_len + 1]) == 1)) for m in masks], np.float64)


class Rollouts:
    """The RL stage's on-policy batch source (a ``trainer.PolicySource``): step s's rollouts become its micro-batches.

    Step s uses examples ``s*E .. s*E+E-1`` of the (shuffled) task, cycling, and
    the seeds ``rollout_seed(seed, s, example)``, so the state is just the step.
    Every process samples the whole step (the engine splits rows over the
    mesh) and keeps its share of the rows.
    """

    exhausted = False  # the horizon is a step count

    def __init__(self, task, tokenizer, rollout, *, objective: str, pass_rows: int, num_micro: int, num_steps: int,
                 max_len: int, seed: int, mesh, process_index: int = 0, process_count: int = 1, state: dict | None = None):  # fmt: skip
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        self.task, self.tokenizer, self.rollout, self.objective = task, tokenizer, rollout, objective
        self.pass_rows, self.num_micro, self.num_steps, self.max_len, self.seed = pass_rows, num_micro, num_steps, max_len, seed
        self.mesh, self.process_index, self.process_count = mesh, process_index, process_count
        self.pad_id = tokenizer.encode_special("<|assistant_end|>")
        self.step = (state or {"step": 0})["step"]
        self.queue: list[dict] = []
        self.policy = None
        self.last: dict[str, float] = {}

    @property
    def progress(self) -> float:
        return self.step / self.num_steps

    def set_policy(self, graphdef, params) -> None:
        self.policy = nnx.merge(graphdef, params)

    def next(self) -> dict[str, np.ndarray]:
        if not self.queue:
            self.queue = self._roll_out()
        return self.queue.pop(0)

    def get_state(self) -> dict:
        return {"step": self.step}

    def scalars(self) -> dict[str, float]:
        return self.last

    def close(self) -> None:
        self.policy = None

    def sample(self, step: int):
        """``(conversations, prompts, sequences, masks, rewards)`` of one step, sequences flat and prompt-major."""
        r, n = self.rollout, len(self.task)
        examples = [(step * r.examples_per_step + e) % n for e in range(r.examples_per_step)]
        conversations = [self.task[i] for i in examples]
        prompts = [self.tokenizer.render_for_completion(c) for c in conversations]
        engine = Engine(self.policy, self.tokenizer, mesh=self.mesh)
        per_call = max(1, r.generate_rows // r.num_samples) if r.generate_rows > 0 else len(prompts)
        seqs, masks = [], []
        for lo in range(0, len(prompts), per_call):  # a row's draws do not depend on the rows beside it
            seeds = [rollout_seed(self.seed, step, i) for i in examples[lo : lo + per_call]]
            got = engine.generate_multi(prompts[lo : lo + per_call], r.num_samples, max_tokens=r.max_new_tokens,
                                        temperature=r.temperature, top_k=r.top_k, seeds=seeds)  # fmt: skip
            seqs, masks = seqs + got[0], masks + got[1]
        rewards = np.asarray([[self.task.reward(c, self.tokenizer.decode(s[len(p):])) for s in row]
                              for c, p, row in zip(conversations, prompts, seqs)], np.float64)  # fmt: skip
        return conversations, prompts, [s for row in seqs for s in row], [m for row in masks for m in row], rewards

    def _roll_out(self) -> list[dict]:
        if self.policy is None:
            raise RuntimeError("Rollouts.next() before set_policy(): an on-policy source samples from given params")
        _, _, seqs, masks, rewards = self.sample(self.step)
        weights = row_weights(self.objective, rewards, valid_counts(masks, self.max_len), self.pass_rows)
        self.last = {"rl/reward": float(rewards.mean()), "rl/sequence_length": float(np.mean([len(s) for s in seqs]))}
        self.step += 1
        self.policy = None  # the next step samples from the params it is given then
        return policy_batches(seqs, masks, weights, num_micro=self.num_micro, pad_id=self.pad_id, max_len=self.max_len,
                              process_index=self.process_index, process_count=self.process_count)  # fmt: skip
