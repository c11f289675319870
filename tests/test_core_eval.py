"""CORE against an independent one-example-at-a-time reference on real rows of the shipped slice.

The reference is written from the spec (nanochat's core_eval): its own prompt
strings ("\\n\\n".join of blocks), its own few-shot draw (``Random(1234+idx).sample``
over a list without the item), per-prompt tokenization, plain-loop prefix /
suffix search, and one naive full forward per example (float64 log-softmax on
host). The library's batched, bucketed, 8-device-sharded scores must match it
per example. Also: hand-written prompt strings, hand-number aggregation, the
resumable bundle download against a local HTTP server, and malformed files.
"""

import glob
import http.server
import io
import json
import random
import shutil
import socket
import threading
import zipfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from model_helpers import random_gpt

from nanochat_jax import cli, core_eval, eval_bundle
from nanochat_jax.eval_bundle import BundleError, load_tasks, slice_bundle_dir
from nanochat_jax.gpt import GPTConfig
from nanochat_jax.sharding import make_mesh
from nanochat_jax.tokenizer import Tokenizer

SLICE = slice_bundle_dir()
SEQ_LEN = 128  # short enough that the 10-shot prompts are truncated


@pytest.fixture(scope="module")
def tok():
    texts = [line for f in sorted(glob.glob(str(SLICE / "eval_data/*/*.jsonl"))) for line in open(f)]
    return Tokenizer.train_from_iterator(iter(texts), 400)


@pytest.fixture(scope="module")
def model(tok):
    return random_gpt(GPTConfig(sequence_len=SEQ_LEN, vocab_size=tok.get_vocab_size(), n_layer=2, n_head=2, n_kv_head=2, n_embd=64), seed=3)


def file_rows(uri):
    return [json.loads(line) for line in open(SLICE / "eval_data" / uri)]


def spec_of(label):
    return next(s for s in load_tasks(SLICE) if s.label == label)


# ----------------------------------------------------------------------------- the reference


def ref_prompts(item, shots, kind, delim):
    if kind == "multiple_choice":
        head = [s["query"] + delim + s["choices"][s["gold"]] for s in shots]
        return ["\n\n".join(head + [item["query"] + delim + c]) for c in item["choices"]]
    if kind == "schema":
        head = [s["context_options"][s["gold"]] + delim + s["continuation"] for s in shots]
        return ["\n\n".join(head + [c + delim + item["continuation"]]) for c in item["context_options"]]
    head = [s["context"].strip() + delim + s["continuation"] for s in shots]
    prompt = "\n\n".join(head + [item["context"].strip() + delim])
    return [prompt.strip(), prompt + item["continuation"]]


def ref_sequences(tok, rows, idx, spec):
    others = [i for i in range(len(rows)) if i != idx]
    shots = [rows[i] for i in random.Random(1234 + idx).sample(others, spec.num_fewshot)] if spec.num_fewshot else []
    toks = [tok.encode(p, prepend=tok.get_bos_token_id()) for p in ref_prompts(rows[idx], shots, spec.task_type, spec.delimiter)]
    if spec.task_type == "language_modeling":
        assert toks[1][: len(toks[0])] == toks[0]
        toks, starts = toks[1:], [len(toks[0])]
    elif spec.task_type == "multiple_choice":
        k = 0
        while k < min(map(len, toks)) and len({t[k] for t in toks}) == 1:
            k += 1
        starts = [k] * len(toks)
    else:
        k = 0
        while k < min(map(len, toks)) and len({t[len(t) - 1 - k] for t in toks}) == 1:
            k += 1
        starts = [len(t) - k for t in toks]
    ends = [len(t) for t in toks]
    cut = [max(0, len(t) - SEQ_LEN) for t in toks]
    return [t[c:] for t, c in zip(toks, cut)], [s - c for s, c in zip(starts, cut)], [e - c for e, c in zip(ends, cut)]


naive_logits = nnx.jit(lambda model, ids: model(ids))  # jit only to keep the test fast: the plain full forward


def ref_forward(model, seqs, pad):
    """One forward for one example's sequences (right-padded with BOS to SEQ_LEN): log-probabilities in float64."""
    batch = np.array([s + [pad] * (SEQ_LEN - len(s)) for s in seqs], np.int32)
    logits = np.asarray(naive_logits(model, jnp.asarray(batch)), np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    return batch, logp


def ref_example(model, tok, rows, idx, spec):
    seqs, starts, ends = ref_sequences(tok, rows, idx, spec)
    batch, logp = ref_forward(model, seqs, tok.get_bos_token_id())
    means, matches = [], []
    for i, (s, e) in enumerate(zip(starts, ends)):
        positions = range(s - 1, e - 1)
        means.append(-np.mean([logp[i, p, batch[i, p + 1]] for p in positions]))
        matches.append(all(logp[i, p].argmax() == batch[i, p + 1] for p in positions))
    correct = matches[0] if spec.task_type == "language_modeling" else means.index(min(means)) == rows[idx]["gold"]
    return (seqs, starts, ends), means, matches, correct


def ref_rows(spec, n):
    rows = file_rows(spec.dataset_uri)
    random.Random(1337).shuffle(rows)
    return rows[:n]


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("label,n", [("copa", 12), ("arc_easy", 11), ("winogrande", 12), ("lambada_openai", 8), ("jeopardy", 12)])
def test_batched_sharded_scores_equal_the_one_example_reference(model, tok, label, n):
    spec, mesh = spec_of(label), make_mesh()
    rows = core_eval.task_rows(SLICE, spec, n)
    assert rows == ref_rows(spec, n)
    refs = [ref_example(model, tok, rows, i, spec) for i in range(n)]
    seqs, starts, ends = ([x for r in refs for x in r[0][k]] for k in range(3))
    singles = [core_eval.single_row(*x) for x in zip(seqs, starts, ends)]
    packed = [row for r in refs for row in core_eval.item_rows(*r[0], spec)]  # MC: an uncropped item's choices share a row
    if spec.task_type == "multiple_choice" and not spec.num_fewshot:
        assert len(packed) == n < len(singles)
    for rows_ in (singles, packed):
        means, matches = core_eval.score_rows(*nnx.split(model), rows_, max_len=SEQ_LEN, pad_id=tok.get_bos_token_id(),
                                              mesh=mesh, batch_tokens=512)  # fmt: skip
        np.testing.assert_allclose(means, [m for r in refs for m in r[1]], rtol=2e-5, atol=2e-5)
        assert matches.tolist() == [m for r in refs for m in r[2]]
    outcomes = core_eval.task_outcomes(model, tok, rows, spec, mesh=mesh, batch_tokens=512, chunk_examples=5)
    assert outcomes.tolist() == [r[3] for r in refs]
    if spec.num_fewshot:
        assert max(len(s) for r in refs for s in r[0][0]) == SEQ_LEN  # the truncation path ran


def test_greedy_match_flag_both_ways(model, tok):
    """LM correctness needs continuations the model predicts: make some with the reference's own greedy steps."""
    base = tok.encode(file_rows("language_understanding/lambada_openai.jsonl")[0]["context"], prepend=tok.get_bos_token_id())[:30]
    seq = list(base)
    for _ in range(5):
        _, logp = ref_forward(model, [seq], 0)
        seq.append(int(logp[0, len(seq) - 1].argmax()))
    wrong = seq[:-1] + [(seq[-1] + 1) % tok.get_vocab_size()]
    seqs = [seq, wrong, seq[:33]]
    rows_ = [core_eval.single_row(s, 30, e) for s, e in zip(seqs, [35, 35, 33])]
    _, matches = core_eval.score_rows(*nnx.split(model), rows_, max_len=SEQ_LEN, pad_id=tok.get_bos_token_id(),
                                      mesh=make_mesh(), batch_tokens=256)  # fmt: skip
    assert matches.tolist() == [True, False, True]


def test_rendered_prompts_of_real_rows():
    arc = file_rows("world_knowledge/arc_easy.jsonl")
    assert core_eval.render_mc(arc[94], "\nAnswer: ", [arc[15]]) == [
        "Question: A sample of sulfur forms crystals when it\nAnswer: freezes.\n\nQuestion: What makes up most of a human skeleton?\nAnswer: " + c
        for c in ("muscle", "bone", "skin", "blood")
    ]
    wino = file_rows("language_understanding/winogrande.jsonl")
    assert core_eval.render_schema(wino[81], " ", [wino[41]]) == [
        "The man used  his eyes to read the letters but the letters were too small.\n\n"
        "God liked to control the day and the night, but the day was too bright.",
        "The man used  his eyes to read the letters but the letters were too small.\n\n"
        "God liked to control the day and the night, but the night was too bright.",
    ]
    jeo = file_rows("world_knowledge/jeopardy_all.jsonl")
    shots = "LITERATURE: Goethe called him Faust; Marlowe dubbed him this\nAnswer: Dr. Faustus\n\n"
    assert core_eval.render_lm(jeo[26], "\nAnswer: ", [jeo[93]]) == [
        shots + "SCIENCE: In 1973 it became the first comet studied by men in space\nAnswer:",
        shots + "SCIENCE: In 1973 it became the first comet studied by men in space\nAnswer: Kohoutek",
    ]
    assert core_eval.render_lm({"context": "  The end \n", "continuation": "x"}, " ", []) == ["The end", "The end x"]


def test_fewshot_draw_is_nanochats():
    for n, idx, k in [(11, 0, 10), (11, 10, 10), (50, 7, 3), (1000, 999, 10), (5000, 1234, 10)]:
        expected = random.Random(1234 + idx).sample([i for i in range(n) if i != idx], k)
        assert core_eval.fewshot_indices(n, idx, k) == expected


def write_bundle(root: Path, tasks, baselines, rows_by_uri):
    lines = ["icl_tasks:"]
    for label, kind, uri, shots in tasks:
        lines += [f"- label: {label}", f"  dataset_uri: {uri}", f"  num_fewshot: [{shots}]", f"  icl_task_type: {kind}"]
    (root / "eval_data").mkdir(parents=True)
    (root / "core.yaml").write_text("\n".join(lines) + "\n")
    (root / "eval_meta_data.csv").write_text("Eval Task,Random baseline\n" + "".join(f"{k},{v}\n" for k, v in baselines.items()))
    for uri, rows in rows_by_uri.items():
        (root / "eval_data" / uri).write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_centered_accuracy_and_core_by_hand(tmp_path, monkeypatch, model, tok):
    mc = [{"query": "q", "choices": ["a", "b"], "gold": 0}] * 4
    lm = [{"context": "c", "continuation": "d"}] * 4
    sc = [{"context_options": ["a", "b"], "continuation": "c", "gold": 1}] * 4
    write_bundle(tmp_path, [("A", "multiple_choice", "a.jsonl", 0), ("B", "language_modeling", "b.jsonl", 0), ("C", "schema", "c.jsonl", 0)],
                 {"A": 25, "B": 0, "C": 50}, {"a.jsonl": mc, "b.jsonl": lm, "c.jsonl": sc})  # fmt: skip
    fixed = {"A": [1, 1, 1, 0], "B": [1, 0, 0, 0], "C": [1, 0, 0, 0]}
    monkeypatch.setattr(core_eval, "task_outcomes", lambda m, t, rows, spec, **kw: np.array(fixed[spec.label], bool))
    out = core_eval.evaluate_core(model, tok, tmp_path, log=lambda s: None)
    assert out["results"] == {"A": 0.75, "B": 0.25, "C": 0.25}
    assert out["centered_results"] == pytest.approx({"A": 2 / 3, "B": 0.25, "C": -0.5})
    assert out["core_metric"] == pytest.approx(5 / 36) and out["slice"] is False
    some = core_eval.evaluate_core(model, tok, tmp_path, log=lambda s: None, tasks=["C", "A"])
    assert list(some["results"].items()) == [("A", 0.75), ("C", 0.25)]  # bundle order, only those tasks
    assert some["core_metric"] == pytest.approx((2 / 3 - 0.5) / 2)
    with pytest.raises(core_eval.BundleError, match=r"unknown CORE task\(s\) \['D'\]"):
        core_eval.evaluate_core(model, tok, tmp_path, tasks=["A", "D"])


# ----------------------------------------------------------------------------- malformed files


def _edit_csv_drop(path, label):
    path.write_text("".join(line for line in path.read_text().splitlines(True) if not line.startswith(label + ",")))


def _edit_line(path, n, text):
    lines = path.read_text().splitlines(True)
    lines[n - 1] = text + "\n"
    path.write_text("".join(lines))


CORRUPTIONS = {
    "no yaml": (lambda b: (b / "core.yaml").unlink(), "core.yaml not found"),
    "bad yaml": (lambda b: (b / "core.yaml").write_text("icl_tasks: [unclosed"), "core.yaml is not valid YAML"),
    "no task list": (lambda b: (b / "core.yaml").write_text("foo: 1\n"), "core.yaml needs a non-empty 'icl_tasks'"),
    "bad type": (lambda b: (b / "core.yaml").write_text((b / "core.yaml").read_text().replace("icl_task_type: schema", "icl_task_type: essay")),
                 "core.yaml icl_tasks[8] (winogrande)"),
    "no field": (lambda b: (b / "core.yaml").write_text((b / "core.yaml").read_text().replace("  num_fewshot: [0]\n", "", 1)), "icl_tasks[0]"),
    "no csv": (lambda b: (b / "eval_meta_data.csv").unlink(), "eval_meta_data.csv not found"),
    "csv columns": (lambda b: (b / "eval_meta_data.csv").write_text("task,baseline\ncopa,50\n"), "eval_meta_data.csv needs the columns"),
    "csv baseline": (lambda b: _edit_csv_drop(b / "eval_meta_data.csv", "copa"), "eval_meta_data.csv has no 'Random baseline' for task 'copa'"),
    "no jsonl": (lambda b: (b / "eval_data/commonsense_reasoning/copa.jsonl").unlink(), "copa.jsonl not found (task copa"),
    "bad json": (lambda b: _edit_line(b / "eval_data/commonsense_reasoning/copa.jsonl", 3, "{oops"), "copa.jsonl line 3: not valid JSON"),
    "missing key": (lambda b: _edit_line(b / "eval_data/language_understanding/winogrande.jsonl", 1, '{"continuation": "x", "gold": 0}'),
                    "winogrande.jsonl line 1: a schema row needs the keys"),
    "bad gold": (lambda b: _edit_line(b / "eval_data/world_knowledge/arc_easy.jsonl", 2, '{"query": "q", "choices": ["a"], "gold": 3}'),
                 "arc_easy.jsonl line 2: gold 3"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_malformed_bundle_names_the_file(tmp_path, name):
    bundle = tmp_path / "bundle"
    shutil.copytree(SLICE, bundle)
    corrupt, message = CORRUPTIONS[name]
    corrupt(bundle)
    with pytest.raises(BundleError) as e:
        for spec in load_tasks(bundle):
            core_eval.task_rows(bundle, spec, -1)
    assert message in str(e.value)
    assert str(bundle) in str(e.value)


def test_missing_bundle_dir_is_one_clear_error(tmp_path):
    with pytest.raises(BundleError, match=f"{tmp_path}/nowhere/core.yaml not found"):
        eval_bundle.resolve_bundle(tmp_path / "nowhere")


def test_too_few_rows_for_the_shots():
    with pytest.raises(BundleError, match="task jeopardy: max_per_task=5 leaves too few rows for 10 few-shot"):
        core_eval.task_rows(SLICE, spec_of("jeopardy"), 5)


# ----------------------------------------------------------------------------- download


class RangeServer:
    """Serves one zip; honours ``Range: bytes=N-`` unless ``ignore_range``; ``cuts`` requests die half-way."""

    def __init__(self, body: bytes, cuts: int = 0, ignore_range: bool = False):
        self.body, self.cuts, self.ranges = body, cuts, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                rng = self.headers.get("Range")
                outer.ranges.append(rng)
                start = int(rng[len("bytes=") : -1]) if rng and not ignore_range else 0
                part = outer.body[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(part)))
                self.end_headers()
                if outer.cuts:
                    outer.cuts -= 1
                    self.wfile.write(part[: len(part) // 2])
                    self.close_connection = True
                    return
                self.wfile.write(part)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/eval_bundle.zip"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def bundle_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for f in sorted(SLICE.rglob("*")):
            if f.is_file():
                z.write(f, "eval_bundle/" + str(f.relative_to(SLICE)))
    return buf.getvalue()


@pytest.fixture
def no_proxy(monkeypatch, tmp_path):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("NANOCHAT_JAX_BASE_DIR", str(tmp_path / "base"))
    return tmp_path / "base"


@pytest.mark.parametrize("ignore_range", [False, True])
def test_interrupted_download_resumes_with_a_range_request(no_proxy, ignore_range):
    body = bundle_zip()
    server = RangeServer(body, cuts=1, ignore_range=ignore_range)
    try:
        target = eval_bundle.download_bundle(no_proxy / "eval_bundle", url=server.url, backoff_s=0.01)
    finally:
        server.close()
    assert server.ranges[0] is None and server.ranges[1] == f"bytes={len(body) // 2}-"
    assert [s.label for s in load_tasks(target)] == [s.label for s in load_tasks(SLICE)]
    assert (target / "eval_data/commonsense_reasoning/copa.jsonl").read_bytes() == (SLICE / "eval_data/commonsense_reasoning/copa.jsonl").read_bytes()
    assert sorted(p.name for p in no_proxy.iterdir()) == ["eval_bundle"]  # no zip, no .tmp, no work dir


def test_partial_file_of_a_killed_run_is_continued(no_proxy):
    body = bundle_zip()
    no_proxy.mkdir(parents=True)
    (no_proxy / "eval_bundle.zip.tmp").write_bytes(body[:1000])
    server = RangeServer(body)
    try:
        target = eval_bundle.resolve_bundle(None, url=server.url)
        assert eval_bundle.resolve_bundle(None, url=server.url) == target  # present: not fetched again
    finally:
        server.close()
    assert server.ranges == ["bytes=1000-"] and target == no_proxy / "eval_bundle"
    assert (target / "core.yaml").read_text() == (SLICE / "core.yaml").read_text()


def test_served_garbage_is_rejected_and_not_kept(no_proxy):
    server = RangeServer(b"<html>AccessDenied</html>")
    try:
        with pytest.raises(Exception, match="not a zip file"):
            eval_bundle.download_bundle(no_proxy / "eval_bundle", url=server.url, attempts=2, backoff_s=0.01)
    finally:
        server.close()
    assert sorted(p.name for p in no_proxy.iterdir()) == []


def test_unreachable_bundle_url_is_one_clear_error_and_leaves_nothing(no_proxy, capsys, monkeypatch):
    with socket.socket() as s:  # a port nothing listens on: the connection is refused
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/eval_bundle.zip"
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    with pytest.raises(SystemExit) as info:
        cli.main(lambda: eval_bundle.download_bundle(no_proxy / "eval_bundle", url=url, attempts=2, backoff_s=0.01))
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and err.startswith(f"error: could not download {url} after 2 attempt(s)"), err
    assert not no_proxy.exists() or sorted(p.name for p in no_proxy.iterdir()) == []
