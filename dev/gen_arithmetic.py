"""Synthetic arithmetic word problems in GSM8K's format (question / answer with <<expr=result>> and #### N).

The tiny pipeline's SFT teaches calculator use on them and its RL gets a
reward signal from them: a d4 model cannot solve real GSM8K. Deterministic:
one ``random.Random(seed)`` draws every problem. Every annotation's result is
what Python's ``eval`` (and so the engine's calculator) prints for its
expression, so the tool output the model sees in training is the one it
gets at inference; division is ``//`` on exact multiples for that reason.
Used by ``dev/build_chat_data.py``.
"""

from __future__ import annotations

import random

NAMES = ["Ava", "Ben", "Chloe", "Dev", "Emma", "Felix", "Grace", "Hiro", "Isla", "Jamal", "Kira", "Leo", "Maya",
         "Noah", "Olivia", "Priya", "Quinn", "Rosa", "Sam", "Tara", "Umar", "Vera", "Wei", "Xena", "Yusuf", "Zoe"]
ITEMS = ["apples", "pencils", "stickers", "marbles", "cookies", "books", "shells", "cards", "stamps", "eggs",
         "balloons", "crayons", "buttons", "oranges", "toy cars", "beads", "muffins", "coins", "flowers", "rocks"]
CONTAINERS = ["box", "bag", "jar", "basket", "crate", "pack", "tray", "bucket"]


def calc(expr: str) -> str:
    """``expr = <<expr=result>>result`` with the result Python prints, GSM8K style."""
    result = str(eval(expr, {"__builtins__": {}}))  # the generator's own literals only
    return f"<<{expr}={result}>>{result}"


def num(n: int) -> str:
    """Numbers in questions get thousands separators, as people write them."""
    return f"{n:,}"


def add(r):
    n, m, item = r.sample(NAMES, 2) + [r.choice(ITEMS)]
    a, b = r.randint(2, 99), r.randint(2, 99)
    q = f"{n} has {a} {item}. {m} gives {n} {b} more {item}. How many {item} does {n} have now?"
    return q, f"{n} has {a} + {b} = {calc(f'{a}+{b}')} {item} now."


def subtract(r):
    n, m, item = r.sample(NAMES, 2) + [r.choice(ITEMS)]
    a = r.randint(10, 120)
    b = r.randint(1, a - 1)
    q = f"{n} had {a} {item} and gave {b} of them to {m}. How many {item} does {n} have left?"
    return q, f"{n} has {a} - {b} = {calc(f'{a}-{b}')} {item} left."


def multiply(r):
    item, box = r.choice(ITEMS), r.choice(CONTAINERS)
    a, b = r.randint(2, 25), r.randint(2, 40)
    q = f"A {box} holds {a} {item}. How many {item} are there in {b} {box}s?"
    return q, f"{b} {box}s hold {b} * {a} = {calc(f'{b}*{a}')} {item}."


def divide(r):
    n, item = r.choice(NAMES), r.choice(ITEMS)
    b, each = r.randint(2, 12), r.randint(2, 30)
    q = f"{n} shares {b * each} {item} equally among {b} friends. How many {item} does each friend get?"
    return q, f"Each friend gets {b * each} divided by {b}, which is {calc(f'{b * each}//{b}')} {item}."


def change(r):
    n, item = r.choice(NAMES), r.choice(ITEMS)
    a, p = r.randint(2, 12), r.randint(1, 9)
    bill = r.choice([x for x in (10, 20, 50, 100, 200) if x >= a * p])
    q = f"{n} buys {a} {item} that cost ${p} each and pays with a ${bill} bill. How much change does {n} get?"
    return q, (f"The {item} cost {a} * {p} = ${calc(f'{a}*{p}')}.\n"
               f"The change is {bill} - {a * p} = ${calc(f'{bill}-{a * p}')}.")


def times_as_many(r):
    n, m, item = r.sample(NAMES, 2) + [r.choice(ITEMS)]
    a, b, k = r.randint(2, 30), r.randint(2, 30), r.randint(2, 6)
    q = f"{n} has {a} red {item} and {b} blue {item}. {m} has {k} times as many {item} as {n}. How many {item} does {m} have?"
    return q, f"{n} has {a} + {b} = {calc(f'{a}+{b}')} {item}.\n{m} has {a + b} * {k} = {calc(f'{a + b}*{k}')} {item}."


def temperature(r):
    a, b = r.randint(-5, 15), r.randint(2, 25)
    q = f"In the morning the temperature was {a} degrees. By midnight it had dropped by {b} degrees. What was the temperature at midnight?"
    return q, f"At midnight it was {a} - {b} = {calc(f'{a}-{b}')} degrees."


def savings(r):
    n = r.choice(NAMES)
    a, w = r.randint(3, 60), r.randint(2, 20)
    s = r.randint(1, a * w - 1)
    q = f"{n} saves ${a} every week for {w} weeks, then spends ${num(s)} on a gift. How much money does {n} have left?"
    return q, f"{n} saves {a} * {w} = ${calc(f'{a}*{w}')}.\nAfter the gift {n} has {a * w} - {s} = ${calc(f'{a * w}-{s}')}."


def distance(r):
    v, h = r.randint(40, 320), r.randint(2, 12)
    q = f"A train travels at {v} kilometres per hour for {h} hours. How many kilometres does it travel?"
    return q, f"It travels {v} * {h} = {calc(f'{v}*{h}')} kilometres."


def school(r):
    s, c = r.randint(1000, 9000), r.randint(100, 900)
    q = f"A school has {num(s)} students. {num(c)} more students join next year. How many students will the school have?"
    return q, f"The school will have {s} + {c} = {calc(f'{s}+{c}')} students."


TEMPLATES = [add, subtract, multiply, divide, change, times_as_many, temperature, savings, distance, school]


def problem(r: random.Random) -> dict:
    question, solution = r.choice(TEMPLATES)(r)
    final = solution.rsplit(">>", 1)[1].split()[0].rstrip(".")
    return {"question": question, "answer": f"{solution}\n#### {final}"}


def generate(n_train: int, n_test: int, seed: int = 1234) -> tuple[list[dict], list[dict]]:
    """Distinct problems: the first ``n_test`` drawn are the test split, the rest train."""
    r, seen, rows = random.Random(seed), set(), []
    while len(rows) < n_train + n_test:
        row = problem(r)
        if row["question"] not in seen:
            seen.add(row["question"])
            rows.append(row)
    return rows[n_test:], rows[:n_test]
