"""Calculator: correct arithmetic, nanochat's count form, and refusal of everything else.

Malicious inputs are checked two ways: the call returns None, and the side
effect the input would have had if executed (creating a file) did not happen.
Python's ``eval``/``exec``/``compile`` are additionally replaced by traps for
the duration of those tests, so an accidental call would fail loudly.
"""

from __future__ import annotations

import ast
import builtins
import time

import pytest

from nanochat_jax.calculator import evaluate


@pytest.mark.parametrize(
    "expr, want",
    [
        ("2 + 3", 5),
        ("2+3*4", 14),
        ("(2+3)*4", 20),
        ("10 / 4", 2.5),
        ("10 // 4", 2),
        ("-7 // 2", -4),
        ("10 % 4", 2),
        ("-3 ** 2", -9),  # ** binds tighter than unary minus, as in Python
        ("(-3) ** 2", 9),
        ("2 ** -2", 0.25),
        ("2 ** 10", 1024),
        ("1,234 + 1", 1235),  # nanochat strips digit-group commas
        ("1,000,000 * 3", 3000000),
        ("3.5 * 2", 7.0),
        ("0.1 + 0.2", 0.1 + 0.2),
        ("+4 - -4", 8),
        ("  12 *  (3 - 1) ", 24),
        ("'strawberry'.count('r')", 3),
        ('"banana".count("an")', 2),
        ("'Mississippi'.count('s') * 2 + 1", 9),
        ("'a,b,c'.count(',')", 2),  # commas inside quotes are kept
        ("(" * 100 + "1" + ")" * 100, 1),  # parentheses alone add no depth
    ],
)
def test_allowed(expr, want):
    got = evaluate(expr)
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize(
    "expr",
    [
        "",
        "   ",
        "1 / 0",
        "5 % 0",
        "2 +",
        "x + 1",
        "True + 1",
        "None",
        "'abc'",
        "'abc' * 3",
        "'abc' + 'd'",
        "len('abc')",
        "'abc'.upper()",
        "'abc'.count('a', 1)",
        "'abc'.count(x='a')",
        "'abc'.count(1)",
        "b'abc'.count(b'a')",
        "(1).bit_length()",
        "[1, 2][0]",
        "{1: 2}",
        "1 if 1 else 2",
        "1 < 2",
        "1 << 100",
        "lambda: 1",
        "f'{1}'",
        "1j * 2",
        "(-8) ** 0.5",  # complex result
        "10 ** 400",  # over the integer bound
        "9 ** 9 ** 9",  # refused before computing (would take ages/memory otherwise)
        "2 ** 10 ** 10",
        "1.5 ** 100000",
        "1e400",  # inf literal
        "1e308 * 10",  # overflows to inf
        "(1+" * 60 + "1" + ")" * 60,  # nested deeper than MAX_DEPTH
        "-" * 300 + "1",
        "1+" * 300 + "1",  # too many nodes
        "1" * 600,  # over the length cap
    ],
)
def test_refused(expr):
    assert evaluate(expr) is None


def test_huge_power_is_refused_quickly():
    t0 = time.perf_counter()
    for expr in ["9 ** 9 ** 9", "99999999999 ** 99999999999", "(10 ** 99) ** (10 ** 99)", "2 ** 3 ** 4 ** 5"]:
        assert evaluate(expr) is None
    assert time.perf_counter() - t0 < 0.5


def test_deadline_bounds_evaluation():
    # Every node checks the deadline; an expired one refuses even valid input.
    assert evaluate("1 + 2 * 3", timeout=-1.0) is None
    assert evaluate("1 + 2 * 3", timeout=5.0) == 7


@pytest.fixture
def no_dynamic_code(monkeypatch):
    """Make eval/exec/compile explode if anything calls them during the test."""

    real_compile = builtins.compile

    def trap(*a, **k):
        raise AssertionError("dynamic code execution was attempted")

    def parse_only_compile(source, filename, mode, flags=0, *a, **k):
        # ast.parse is compile(..., flags=PyCF_ONLY_AST): it builds a tree and runs nothing.
        if not flags & ast.PyCF_ONLY_AST:
            trap()
        return real_compile(source, filename, mode, flags, *a, **k)

    monkeypatch.setattr(builtins, "eval", trap)
    monkeypatch.setattr(builtins, "exec", trap)
    monkeypatch.setattr(builtins, "compile", parse_only_compile)


PAYLOADS = [
    "__import__('os').system('touch {p}')",
    "open('{p}', 'w').write('x')",
    "__builtins__.open('{p}', 'w')",
    "().__class__.__base__.__subclasses__()",
    "[c for c in ().__class__.__base__.__subclasses__() if c.__name__ == 'Popen'][0]('touch {p}', shell=True)",
    "(lambda: __import__('os').system('touch {p}'))()",
    "exec(\"open('{p}','w')\")",
    "eval(\"__import__('os').system('touch {p}')\")",
    "getattr(__import__('pathlib').Path('{p}'), 'touch')()",
    "'{p}'.count('x') + __import__('pathlib').Path('{p}').touch()",
    "1 + 2 if __import__('os').system('touch {p}') else 3",
    "'x'.count(__import__('os').system('touch {p}'))",
    "'x'.__class__.count('x', 'x')",
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_malicious_inputs_are_refused_and_not_executed(payload, tmp_path, no_dynamic_code):
    target = tmp_path / "pwned"
    expr = payload.format(p=target)
    assert evaluate(expr) is None
    assert not target.exists()
