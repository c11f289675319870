"""The calculator tool the chat model calls between <|python_start|> and <|python_end|>.

nanochat runs the text through ``eval`` behind a deny-list; model output is
untrusted and deny-lists leak, so here the text is only parsed (``ast``, which
runs no code) and the tree walked: number literals, ``+ - * / // % **``, unary
signs, and nanochat's ``'literal'.count('literal')``. Anything else, or any
bound exceeded (text length, node count, depth, integer size checked *before*
``**``, a deadline), returns ``None`` -- nanochat's "no output" contract.
Commas are stripped outside string literals (``1,000`` is a thousand).
"""

from __future__ import annotations

import ast
import math
import operator
import time

MAX_EXPR_CHARS = 512
MAX_NODES = 256
MAX_DEPTH = 48
# Any integer (operand, intermediate or result) must stay below 10**MAX_INT_DIGITS.
# str() of the result then stays short enough for the engine's forced-token queue.
MAX_INT_DIGITS = 100
_INT_LIMIT = 10**MAX_INT_DIGITS
MAX_INT_BITS = _INT_LIMIT.bit_length()
DEFAULT_TIMEOUT_S = 0.5

_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARYOPS = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class Refused(Exception):
    """The expression is outside the whitelist or over a resource bound."""


def strip_commas_outside_strings(expr: str) -> str:
    """Remove ',' digit-group separators but leave commas inside quotes alone."""
    out = []
    quote = None
    escaped = False
    for ch in expr:
        if quote is None:
            if ch in ("'", '"'):
                quote = ch
            elif ch == ",":
                continue
        elif escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == quote:
            quote = None
        out.append(ch)
    return "".join(out)


class _Evaluator:
    def __init__(self, deadline: float):
        self.deadline = deadline
        self.nodes = 0

    def _tick(self, depth: int) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise Refused("too many nodes")
        if depth > MAX_DEPTH:
            raise Refused("nested too deeply")
        if time.monotonic() > self.deadline:
            raise Refused("deadline exceeded")

    @staticmethod
    def _check_number(value):
        # bool is an int subclass: reject it so True/False never act as 1/0.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Refused(f"not a number: {type(value).__name__}")
        if isinstance(value, int) and abs(value) >= _INT_LIMIT:
            raise Refused("integer too large")
        if isinstance(value, float) and not math.isfinite(value):
            raise Refused("non-finite float")
        return value

    def visit(self, node: ast.AST, depth: int = 0):
        self._tick(depth)
        if isinstance(node, ast.Expression):
            return self.visit(node.body, depth + 1)
        if isinstance(node, ast.Constant):
            return self._check_number(node.value)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARYOPS:
            return self._check_number(_UNARYOPS[type(node.op)](self.visit(node.operand, depth + 1)))
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            left = self.visit(node.left, depth + 1)
            right = self.visit(node.right, depth + 1)
            if isinstance(node.op, ast.Pow):
                self._check_pow(left, right)
            return self._check_number(_BINOPS[type(node.op)](left, right))
        if isinstance(node, ast.Call):
            return self._count(node, depth)
        raise Refused(f"{type(node).__name__} is not allowed")

    @staticmethod
    def _check_pow(base, exp) -> None:
        """Bound ``base ** exp`` before computing it (the one operator that can explode).

        Integers: |result| has about exp * log2|base| bits, so that product is
        checked against the integer bound. Floats overflow to OverflowError
        (caught) or inf (refused by _check_number), but a huge integer
        exponent with a float base is refused here too. Complex results
        (negative base, fractional exponent) are refused by _check_number.
        """
        if isinstance(exp, int):
            if abs(exp) > 10 * MAX_INT_BITS and abs(base) not in (0, 1):
                raise Refused("exponent too large")
            if isinstance(base, int) and exp > 0 and exp * max(abs(base).bit_length() - 1, 0) > MAX_INT_BITS:
                raise Refused("power too large")

    def _count(self, node: ast.Call, depth: int) -> int:
        """Only ``'literal'.count('literal')``: one positional string argument, no keywords."""
        func = node.func
        if not (
            isinstance(func, ast.Attribute)
            and func.attr == "count"
            and isinstance(func.value, ast.Constant)
            and type(func.value.value) is str
            and len(node.args) == 1
            and not node.keywords
            and isinstance(node.args[0], ast.Constant)
            and type(node.args[0].value) is str
        ):
            raise Refused("only 'string'.count('string') calls are allowed")
        self._tick(depth + 1)
        return func.value.value.count(node.args[0].value)


def evaluate(expr: str, timeout: float = DEFAULT_TIMEOUT_S) -> int | float | None:
    """Evaluate a calculator expression; ``None`` when it is refused or fails."""
    if not isinstance(expr, str) or len(expr) > MAX_EXPR_CHARS:
        return None
    deadline = time.monotonic() + timeout
    expr = strip_commas_outside_strings(expr).strip()
    if not expr:
        return None
    try:
        tree = ast.parse(expr, mode="eval")
        return _Evaluator(deadline).visit(tree)
    except (Refused, SyntaxError, ValueError, TypeError, ArithmeticError, RecursionError, MemoryError):
        # ArithmeticError covers ZeroDivisionError and OverflowError.
        return None
