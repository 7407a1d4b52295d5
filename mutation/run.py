"""Run the mutation testing of RELIABILITY.md, "Mutation testing": one cosmic-ray session
per module of ``mutation/cosmic-ray.toml``, in its order, then a summary.

    python mutation/run.py [MODULE ...]    # from the repository root; default: all
    python mutation/run.py --survivors [MODULE ...]

Each session is ``mutation/sessions/<module>.sqlite`` (not committed); a session that
exists is resumed, not started again (delete it to start afresh). The test command is
the config's ``test-command`` plus the module's ``[mutation.extra-tests]``. Mutants
that change no code that runs are skipped first (``mutation/skip_unevaluated.py``).
``--survivors`` tests again the mutants that survived in ``<module>.sqlite``, in a copy
``<module>.after.sqlite`` (the score after new tests), with the ``added-tests`` alone.
cosmic-ray rewrites the module in place while a mutant is tested and restores it
after; do not edit the tree during a run.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path

from cosmic_ray.config import serialize_config
from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import TestOutcome, WorkerOutcome

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "cosmic-ray.toml"
SESSIONS = HERE / "sessions"
BIN = Path(sys.executable).parent


def session_name(module: str) -> str:
    return module.removeprefix("bridge/").replace("/", ".").removesuffix(".py")


def summary(session: Path) -> tuple[int, int, int, int, list]:
    """(killed, survived, skipped, pending, survivors) of a session."""
    killed = survived = skipped = 0
    survivors = []
    with use_db(str(session), WorkDB.Mode.open) as db:
        pending = sum(1 for _ in db.pending_work_items)
        for item, result in db.completed_work_items:
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                skipped += 1
            elif (result.worker_outcome == WorkerOutcome.NORMAL
                  and result.test_outcome == TestOutcome.SURVIVED):
                survived += 1
                survivors.append(item)
            else:  # killed by a test, an error or the timeout
                killed += 1
    return killed, survived, skipped, pending, survivors


def reset_survivors(before: Path, after: Path) -> None:
    """``after``: a copy of session ``before`` whose surviving mutants are pending again."""
    shutil.copy(before, after)
    with sqlite3.connect(after) as db:
        db.execute("DELETE FROM work_results WHERE worker_outcome = 'NORMAL' "
                   "AND test_outcome = 'SURVIVED'")


def main(argv: list[str]) -> int:
    survivors_only = "--survivors" in argv
    argv = [a for a in argv if a != "--survivors"]
    suffix = ".after" if survivors_only else ""
    settings = tomllib.loads(CONFIG.read_text())
    base = settings["cosmic-ray"]
    extra = settings.get("mutation", {}).get("extra-tests", {})
    modules = argv or base["module-path"]
    SESSIONS.mkdir(exist_ok=True)
    for module in modules:
        tests = [base["test-command"], *extra.get(module, [])]
        if survivors_only:  # the options of test-command, the added tests alone
            options = [w for w in base["test-command"].split() if not w.startswith("tests/")]
            tests = [" ".join(options), *settings["mutation"]["added-tests"]]
        cfg = {**base, "module-path": [module], "test-command": " ".join(tests)}
        name = session_name(module)
        config = SESSIONS / f"{name}{suffix}.toml"
        config.write_text(serialize_config(cfg))
        session = SESSIONS / f"{name}{suffix}.sqlite"
        if survivors_only:
            reset_survivors(SESSIONS / f"{name}.sqlite", session)
        elif not session.exists():
            subprocess.run([BIN / "cosmic-ray", "init", config, session], check=True)
            subprocess.run([sys.executable, HERE / "skip_unevaluated.py", session], check=True)
        subprocess.run([BIN / "cosmic-ray", "exec", config, session], check=True)
        k, s, sk, p, _ = summary(session)
        print(f"{module}: {k} killed of {k + s} ({100 * k / max(1, k + s):.1f} %), "
              f"{sk} skipped, {p} pending", flush=True)
    print("\nmodule | mutants run | killed | survived | score | skipped (not code that runs)")
    for module in modules:
        session = SESSIONS / f"{session_name(module)}{suffix}.sqlite"
        if session.exists():
            k, s, sk, p, survivors = summary(session)
            print(f"{module} | {k + s} | {k} | {s} | {100 * k / max(1, k + s):.1f} % | {sk}"
                  + (f" | {p} pending" if p else ""))
            for item in survivors:
                for m in item.mutations:
                    print(f"    survived: {m.module_path}:{m.start_pos[0]} {m.operator_name}"
                          f" #{m.occurrence} ({item.job_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
