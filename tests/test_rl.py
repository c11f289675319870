"""RL (nanochat_jax.rl, train.rl): the loss and masks against nanochat's recipe, zero-advantage steps, exact resume.

The reference re-implements chat_rl's per-example collation and objective in
numpy from the spec: pad each example's samples with <|assistant_end|>, mask
the targets where the mask is 0, then ``sum(logp * A) / (num_valid *
num_passes * examples)`` per pass of ``device_batch_size`` rows.
"""

import shutil

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from nanochat_jax import checkpoint, rl, sharding
from nanochat_jax.config import parse_args
from nanochat_jax.gpt import GPTConfig
from nanochat_jax.optim import nanochat_optimizer
from nanochat_jax.results import load_results
from nanochat_jax.tasks.gsm8k import GSM8K
from nanochat_jax.tokenizer import Tokenizer
from nanochat_jax.train_step import accumulated_grads, init_train_state, make_train_step, split_model
from nanochat_jax.trainer import pad_batch
from model_helpers import random_gpt
from train import rl as train_rl


@pytest.fixture(scope="module")
def tok():
    task = GSM8K("synthetic", "train")
    text = [task[i]["messages"][0]["content"] + " " + str(task[i]["messages"][1]["content"]) for i in range(200)]
    return Tokenizer.train_from_iterator(iter(text), vocab_size=384)


def config(tok) -> GPTConfig:
    return GPTConfig(sequence_len=256, vocab_size=tok.get_vocab_size(), n_layer=1, n_head=1, n_kv_head=1, n_embd=64)


def fake_rollouts(tok, rng, examples=2, samples=4):
    """Prompt (mask 0), sampled tokens (1) with a forced tool-output run (0) in some rows, lengths differing (padding)."""
    end = tok.encode_special("<|assistant_end|>")
    seqs, masks = [], []
    for e in range(examples):
        prompt = [tok.get_bos_token_id(), *rng.integers(0, end, 5 + e).tolist()]
        for s in range(samples):
            n = int(rng.integers(3, 12))
            body, mask = rng.integers(0, end, n).tolist(), [1] * n
            if s % 2:
                body += [tok.encode_special("<|output_start|>"), 7, tok.encode_special("<|output_end|>"), *rng.integers(0, end, 2).tolist()]
                mask += [0, 0, 0, 1, 1]
            seqs.append(prompt + body)
            masks.append([0] * len(prompt) + mask)
    return seqs, masks


def nanochat_reference(model, tok, seqs, masks, rewards, dbs):
    """chat_rl's targets per example and its loss, in numpy (fp64 log-softmax)."""
    end, (E, S) = tok.encode_special("<|assistant_end|>"), rewards.shape
    loss, targets_all = 0.0, []
    for e in range(E):
        rows = range(e * S, (e + 1) * S)
        width = max(len(seqs[r]) for r in rows)
        ids = np.array([seqs[r] + [end] * (width - len(seqs[r])) for r in rows])
        mask = np.array([masks[r] + [0] * (width - len(masks[r])) for r in rows])
        inputs, targets = ids[:, :-1], np.where(mask[:, 1:] == 0, -1, ids[:, 1:])
        targets_all += list(targets)
        logits = np.asarray(model(inputs.astype(np.int32)), np.float64)
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        picked = np.where(targets >= 0, np.take_along_axis(logp, np.maximum(targets, 0)[..., None], -1)[..., 0], 0.0)
        adv = rewards[e] - rewards[e].mean()
        for p in range(S // dbs):
            sl = slice(p * dbs, (p + 1) * dbs)
            num_valid = max((targets[sl] >= 0).sum(), 1)
            loss -= (picked[sl] * adv[sl, None]).sum() / (num_valid * (S // dbs) * E)
    return loss, targets_all


def stacked(micro):
    width = max(m["targets"].shape[1] for m in micro)
    micro = [pad_batch(m, width) for m in micro]
    return {k: np.stack([m[k] for m in micro]) for k in micro[0]}


pg_loss_and_grads = jax.jit(lambda g, p, b: accumulated_grads(g, p, b, "pg"), static_argnums=0)


def test_loss_and_masks_match_nanochat_on_padded_rows_with_forced_tokens(tok):
    model = random_gpt(config(tok), seed=1)
    seqs, masks = fake_rollouts(tok, np.random.default_rng(0))
    rewards = np.array([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]])
    dbs, max_len = 2, 255
    weights = rl.row_weights("reinforce", rewards, rl.valid_counts(masks, max_len), dbs)
    micro = rl.policy_batches(seqs, masks, weights, num_micro=2, pad_id=tok.encode_special("<|assistant_end|>"), max_len=max_len)
    batch = stacked(micro)
    graphdef, params = split_model(model)
    loss, _ = pg_loss_and_grads(graphdef, params, batch)
    want, want_targets = nanochat_reference(model, tok, seqs, masks, rewards, dbs)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5, atol=1e-7)
    got_targets = batch["targets"].reshape(len(seqs), -1)
    for got, ref in zip(got_targets, want_targets):  # prompt, forced output and padding all -1
        np.testing.assert_array_equal(got[: len(ref)], ref)
        assert (got[len(ref) :] == -1).all()

    # best_of_n: the SFT loss (mean NLL) over the first best sample of each prompt with a nonzero reward
    keep = rl.best_of_n(np.array([[0.0, 0.5, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    np.testing.assert_array_equal(keep, [[0, 1, 0, 0], [0, 0, 0, 0]])
    w = rl.row_weights("best_of_n", np.array([[0.0, 0.5, 0.5, 0.0], [0.0] * 4]), rl.valid_counts(masks, max_len), dbs)
    micro = rl.policy_batches(seqs, masks, w, num_micro=2, pad_id=0, max_len=max_len)
    loss, _ = pg_loss_and_grads(graphdef, params, stacked(micro))
    ids, mask = np.asarray(seqs[1], np.int32), np.asarray(masks[1])
    want_sft = float(model(ids[None, :-1], np.where(mask[1:] == 0, -1, ids[1:])[None]))
    np.testing.assert_allclose(float(loss), want_sft, rtol=1e-5)


def test_equal_rewards_give_zero_advantage_and_leave_params_unchanged(tok):
    cfg = config(tok)
    mesh = sharding.make_mesh()
    seqs, masks = fake_rollouts(tok, np.random.default_rng(1), examples=2, samples=4)
    valid = rl.valid_counts(masks, 255)
    np.testing.assert_array_equal(rl.advantages(np.full((2, 4), 0.7)), 0.0)

    tx = nanochat_optimizer(cfg, weight_decay=0.0, mesh=mesh, shard_muon=True)
    graphdef, _, shardings = init_train_state(random_gpt(cfg, seed=2), tx, mesh, shard_muon=True)
    step = make_train_step(graphdef, tx, shardings, mesh, grad_clip=0.0, loss="pg")

    def one_step(rewards):
        _, state, _ = init_train_state(random_gpt(cfg, seed=2), tx, mesh, shard_muon=True)
        before = [np.asarray(x) for x in jax.tree.leaves(state.params)]
        w = rl.row_weights("reinforce", rewards, valid, 1)
        batch = stacked(rl.policy_batches(seqs, masks, w, num_micro=1, pad_id=0, max_len=255))
        batch = {k: sharding.make_global_microbatches(v, mesh) for k, v in batch.items()}
        state, _ = step(state, batch, np.float32(1.0), np.float32(0.95))
        return before, [np.asarray(x) for x in jax.tree.leaves(state.params)]

    before, after = one_step(np.array([[1.0] * 4, [0.0] * 4]))  # each group all-equal: A = 0 everywhere
    for x, y in zip(before, after):
        np.testing.assert_array_equal(x, y)
    before, after = one_step(np.array([[1.0, 0, 0, 0], [0.0] * 4]))  # the same rows with a signal do move
    assert any(not np.array_equal(x, y) for x, y in zip(before, after))


def test_rollouts_do_not_depend_on_how_rows_are_batched(tok):
    graphdef, params = split_model(random_gpt(config(tok), seed=4))

    def sampled(generate_rows):
        r = ml_collections.ConfigDict(dict(examples_per_step=2, num_samples=4, max_new_tokens=8, temperature=1.0, top_k=50,
                                           generate_rows=generate_rows))  # fmt: skip
        source = rl.Rollouts(GSM8K("synthetic", "train"), tok, r, objective="reinforce", pass_rows=1, num_micro=1, num_steps=9,
                             max_len=255, seed=0, mesh=None)  # fmt: skip
        source.set_policy(graphdef, params)
        return source.sample(3)[2:4]

    once, chunked = sampled(0), sampled(4)  # one engine call for the step vs one per prompt
    assert once == chunked and len(set(map(tuple, once[0]))) > 1


@pytest.mark.parametrize("P", [1, 2, 4])
def test_every_process_layout_trains_the_one_process_rows(tok, P):
    """The processes' shares of micro-batch m, in process order and padded to the width the trainer agrees, are the
    one-process micro-batch: rows [8m, 8m+8) of the step with their weights. The state (the step) is global."""
    seqs, masks = fake_rollouts(tok, np.random.default_rng(5), examples=4, samples=4)  # 16 rows, 2 micro-batches of 8
    seqs[1] = seqs[1] + [3] * 70  # one row longer than the 64 bucket: P = 1's micro-batch 0 is wider than some shares
    masks[1] = masks[1] + [1] * 70
    weights = np.arange(1.0, 17.0)  # distinct, so a row in the wrong place shows
    kw = dict(num_micro=2, pad_id=tok.encode_special("<|assistant_end|>"), max_len=255)
    one = rl.policy_batches(seqs, masks, weights, **kw)
    shares = [rl.policy_batches(seqs, masks, weights, process_index=p, process_count=P, **kw) for p in range(P)]
    assert one[0]["targets"].shape == (8, 128) and one[1]["targets"].shape == (8, 64)
    for m, want in enumerate(one):
        width = want["targets"].shape[1]
        got = {k: np.concatenate([pad_batch(s[m], width)[k] for s in shares]) for k in want}
        np.testing.assert_array_equal(got["targets"], want["targets"])
        np.testing.assert_array_equal(got["weights"], want["weights"])
        own = np.repeat([s[m]["inputs"].shape[1] for s in shares], 8 // P)  # each row's width in its own share
        for row, cols in enumerate(own):  # past a share's width the trainer pads inputs with 0, all masked above
            np.testing.assert_array_equal(got["inputs"][row, :cols], want["inputs"][row, :cols])


class LengthReward(GSM8K):
    """A reward a random model earns sometimes, so the resume test's updates are not all zero."""

    def reward(self, conversation, completion):
        return float(len(completion) % 3 == 0)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tok):
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("rl")
    mp.setenv("NANOCHAT_JAX_BASE_DIR", str(root))
    mp.setattr(train_rl, "tasks", lambda cfg: (LengthReward("synthetic", "train"), GSM8K("synthetic", "test")))
    tok_dir = tok.save(root / "tok")
    checkpoint.save_model_checkpoint(random_gpt(config(tok), seed=3), {"tokenizer_dir": str(tok_dir)},
                                     checkpoint.stage_dir("sft") / "r", 0)  # fmt: skip
    yield root
    mp.undo()


def rl_args(tag, **loop):
    extra = [f"--config.loop.{k}={v}" for k, v in loop.items()]
    return parse_args(["--config=configs/tiny_rl.py", "--config.source.model_tag=r", "--config.rollout.examples_per_step=2",
                       "--config.rollout.num_samples=4", "--config.rollout.max_new_tokens=8", "--config.loop.device_batch_size=1",
                       "--config.loop.num_iterations=4", "--config.loop.eval_every=4", "--config.loop.eval_examples=2",
                       "--config.loop.eval_samples=4", "--config.log.tensorboard=False", f"--config.loop.model_tag={tag}",
                       *extra])  # fmt: skip


def params_of(root, tag):
    model, meta = checkpoint.load_model_checkpoint(root / checkpoint.STAGE_DIRS["rl"] / tag)
    return jax.tree.leaves(nnx.state(model, nnx.Param)), meta


def test_interrupted_and_resumed_run_ends_bit_identical(base_dir):
    full = train_rl.run(rl_args("full", save_every=2))
    ckpts = base_dir / checkpoint.STAGE_DIRS["rl"]
    shutil.copytree(ckpts / "full" / "2", ckpts / "half" / "2")  # what a run stopped after step 2 leaves
    resumed = train_rl.run(rl_args("half", save_every=2, resume=True))
    assert resumed["iterations"] == full["iterations"] == 4
    (a, meta), (b, _) = params_of(base_dir, "full"), params_of(base_dir, "half")
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    source = jax.tree.leaves(nnx.state(checkpoint.load_model_checkpoint(checkpoint.stage_dir("sft") / "r")[0], nnx.Param))
    assert any(not np.array_equal(x, y) for x, y in zip(a, source))  # the rewards did move the params
    assert meta["stage"] == "rl" and meta["source"] == "sft/r/0"
    saved = load_results("rl", "full", "rl")
    assert saved["steps"] == 4 and len(saved["reward_by_step"]) == 4 and set(saved) >= {"pass@1", "pass@4"}
    assert 0 < np.mean(saved["reward_by_step"]) < 1 and saved["pass@1"] == resumed["final_rl_pass@1"]
