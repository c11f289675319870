"""The calculator tool the chat model calls between <|python_start|> and <|python_end|>.

It accepts what nanochat 8c89661's ``use_calculator`` accepts and returns the
same value (the engine forces ``str(value)``), so tool-using generations from
a nanochat checkpoint match nanochat's. nanochat's rules, applied to the text
as written here:

1. every ``,`` is removed (digit groups; commas inside quotes too);
2. text made only of ``0123456789*+-/.()`` and spaces is arithmetic, refused
   if it contains ``**`` (nanochat's guard against huge powers);
3. otherwise it must use only ASCII letters, digits, quotes, ``()._`` and
   spaces, contain none of nanochat's deny-listed words (case-insensitive),
   and contain ``.count(``.

Anything else, or anything that raises, gives ``None`` ("no output").
nanochat then runs ``eval``; here the text is only parsed (``ast``, no code
runs) and walked. Arithmetic evaluates exactly as Python does (literals,
``+ - * / //``, signs, ``()``, ``...``). Deliberately stricter, for safety
(docs/DIVERGENCES.md): rule 3 evaluates only ``'literal'.count('literal')``,
and text longer than ``MAX_EXPR_CHARS`` is refused.
"""

from __future__ import annotations

import ast
import operator

MAX_EXPR_CHARS = 1000
ARITHMETIC_CHARS = frozenset("0123456789*+-/.() ")
STRING_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'\"()._ ")
DENY_LIST = ("__", "import", "exec", "eval", "compile", "open", "file", "input", "raw_input", "globals", "locals",
             "vars", "dir", "getattr", "setattr", "delattr", "hasattr")  # fmt: skip

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv}
_UNARYOPS = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class Refused(Exception):
    """The expression is outside what the calculator evaluates."""


def passes_nanochat_filters(expr: str) -> bool:
    """nanochat's text rules 2 and 3 (after comma removal): whether it would hand the text to eval."""
    if set(expr) <= ARITHMETIC_CHARS:
        return "**" not in expr
    lower = expr.lower()
    return set(expr) <= STRING_CHARS and not any(word in lower for word in DENY_LIST) and ".count(" in expr


def _arith(node: ast.AST):
    """Python's value of an arithmetic tree (only the nodes rule 2's characters can spell)."""
    if isinstance(node, ast.Constant) and (type(node.value) in (int, float) or node.value is Ellipsis):
        return node.value
    if isinstance(node, ast.Tuple) and not node.elts:
        return ()
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARYOPS:
        return _UNARYOPS[type(node.op)](_arith(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _BINOPS[type(node.op)](_arith(node.left), _arith(node.right))
    raise Refused(f"{type(node).__name__} is not arithmetic")  # e.g. (2)(3), which Python rejects too


def _count(node: ast.AST) -> int:
    """``'literal'.count('literal')`` and nothing else."""
    if not (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "count"
        and isinstance(node.func.value, ast.Constant)
        and type(node.func.value.value) is str
        and len(node.args) == 1
        and not node.keywords
        and isinstance(node.args[0], ast.Constant)
        and type(node.args[0].value) is str
    ):
        raise Refused("only 'string'.count('string') is evaluated")
    return node.func.value.value.count(node.args[0].value)


def evaluate(expr: str):
    """nanochat's ``use_calculator``: the value of ``expr``, or ``None`` when it is refused or fails."""
    if not isinstance(expr, str) or len(expr) > MAX_EXPR_CHARS:
        return None
    expr = expr.replace(",", "")
    if not passes_nanochat_filters(expr):
        return None
    try:
        tree = ast.parse(expr.strip(" "), mode="eval").body
        return _arith(tree) if set(expr) <= ARITHMETIC_CHARS else _count(tree)
    except (Refused, SyntaxError, ValueError, TypeError, ArithmeticError, RecursionError, MemoryError):
        return None  # ArithmeticError: ZeroDivisionError, OverflowError (e.g. int / int too large for a float)
