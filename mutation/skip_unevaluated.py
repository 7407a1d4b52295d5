"""Mark as skipped the mutants of a cosmic-ray session that change no code that runs.

cosmic-ray's binary-operator mutations also hit two places that are not an operator
evaluated at run time: ``X | None`` in annotations (every module mutated has
``from __future__ import annotations``, so annotations are never evaluated) and the
``**`` of dict unpacking (``{**a, **b}``), which its parser takes for a power operator.
A mutant of either is equivalent or meaningless; it is recorded as SKIPPED, not run.

    python mutation/skip_unevaluated.py SESSION.sqlite
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import WorkerOutcome, WorkResult

_OPS = {
    "Add": ast.Add,
    "Sub": ast.Sub,
    "Mul": ast.Mult,
    "Div": ast.Div,
    "FloorDiv": ast.FloorDiv,
    "Mod": ast.Mod,
    "Pow": ast.Pow,
    "RShift": ast.RShift,
    "LShift": ast.LShift,
    "BitOr": ast.BitOr,
    "BitAnd": ast.BitAnd,
    "BitXor": ast.BitXor,
}


def _spans(tree):
    """(operator spans evaluated at run time, annotation spans) of a module."""
    evaluated, annotations = [], []
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp):
            # the operator lies between the end of the left operand and the right one
            evaluated.append(
                (
                    type(node.op),
                    (node.left.end_lineno, node.left.end_col_offset),
                    (node.right.lineno, node.right.col_offset),
                )
            )
        ann = []
        if isinstance(node, ast.arg | ast.AnnAssign) and node.annotation is not None:
            ann.append(node.annotation)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns:
            ann.append(node.returns)
        annotations += [((a.lineno, a.col_offset), (a.end_lineno, a.end_col_offset)) for a in ann]
    return evaluated, annotations


def unevaluated(module: str, operator: str, start: tuple[int, int], cache: dict = {}) -> str | None:  # noqa: B006 - a cache
    """Why a binary-operator mutant at ``start`` changes nothing that runs, or None."""
    if "ReplaceBinaryOperator_" not in operator:
        return None
    op = _OPS[operator.split("ReplaceBinaryOperator_")[1].split("_")[0]]
    if module not in cache:
        cache[module] = _spans(ast.parse(Path(module).read_text()))
    evaluated, annotations = cache[module]
    if any(a <= start < b for a, b in annotations):
        return "annotation (never evaluated)"
    if not any(kind is op and a <= start < b for kind, a, b in evaluated):
        return "not a binary operator (dict unpacking)"
    return None


def main(session: str) -> int:
    skipped = 0
    with use_db(session, WorkDB.Mode.open) as db:
        for item in list(db.pending_work_items):
            for m in item.mutations:
                why = unevaluated(str(m.module_path), m.operator_name, tuple(m.start_pos))
                if why:
                    db.set_result(
                        item.job_id,
                        WorkResult(output=f"skipped: {why}", worker_outcome=WorkerOutcome.SKIPPED),
                    )
                    skipped += 1
                    break
    print(f"{session}: {skipped} mutants skipped (they change no code that runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
