"""The package stays small enough to read: no module over 400 lines, no function over 60.

A module past ~400 lines or a function past ~60 is a sign to split: the style we keep, and
issue 15's "Done means". The test lists every offender at once, so one run shows the whole job.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "wkr_celery"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60

#: Offenders let through, each with why and until when; "path::qualname" or "path".
#: Nothing belongs here for good: an entry is a debt, and a stale one fails the test below.
ALLOWED: dict[str, str] = {
    # Being rewritten by the send-path work of issue 15 (item 5, one enqueue for both
    # clients); split it there, then delete this entry.
    "wkr_celery/client/client.py::WKRClient.__init__":
        "issue 15 item 5 rewrites it",
}


def _functions(tree: ast.AST) -> Iterator[tuple[str, int, int]]:
    """(qualified name, first line, length) of every function and method, nested ones too;
    the length runs from the first decorator to the last line of the body."""

    def walk(node: ast.AST, prefix: str) -> Iterator[tuple[str, int, int]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                yield name, first, (child.end_lineno or child.lineno) - first + 1
                yield from walk(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.")
            else:
                yield from walk(child, prefix)

    yield from walk(tree, "")


def _offenders() -> dict[str, str]:
    """Every module and function over its limit, keyed as :data:`ALLOWED` is."""
    found: dict[str, str] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        where = path.relative_to(PACKAGE.parent).as_posix()
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            found[where] = f"{lines} lines (module limit {MAX_MODULE_LINES})"
        for name, first, length in _functions(ast.parse(text)):
            if length > MAX_FUNCTION_LINES:
                found[f"{where}::{name}"] = (f"{length} lines from line {first} (function "
                                             f"limit {MAX_FUNCTION_LINES})")
    return found


def test_no_module_or_function_is_too_long_to_read() -> None:
    offenders = {key: why for key, why in _offenders().items() if key not in ALLOWED}
    listing = "\n".join(f"  {key}: {why}" for key, why in sorted(offenders.items()))
    assert not offenders, f"{len(offenders)} offender(s); split them:\n{listing}"


def test_every_allowed_offender_still_offends() -> None:
    stale = sorted(set(ALLOWED) - set(_offenders()))
    assert not stale, f"no longer over the limit, delete from ALLOWED: {stale}"


def test_the_measure_counts_decorators_nested_functions_and_methods() -> None:
    source = "\n".join([
        "@decorator",
        "def outer():",
        "    def inner():",
        "        return 1",
        "    return inner",
        "class Box:",
        "    async def method(self):",
        "        pass",
    ])
    assert list(_functions(ast.parse(source))) == [
        ("outer", 1, 5), ("outer.inner", 3, 2), ("Box.method", 7, 2)]
