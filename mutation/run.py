"""Run the mutation testing of RELIABILITY.md, "Mutation testing": one cosmic-ray session
per module of ``mutation/cosmic-ray.toml``, in its order, then a summary.

    python mutation/run.py [MODULE ...]    # from the repository root; default: all
    python mutation/run.py --survivors [MODULE ...]
    python mutation/run.py --plan [MODULE ...]     # what would run; runs nothing

Each session is ``mutation/sessions/<module>.sqlite`` (not committed); a session that
exists is resumed, not started again (delete it to start afresh). The test command is
the config's ``test-command`` plus the module's ``[mutation.extra-tests]``, or, for a
module with a ``[mutation.modules."<module>"]`` table, ``mutation/covering.py`` over
the options of ``test-command`` with that table's ``tests`` alone (the tests that
exercise that module; a glob such as ``tests/test_erase*.py`` is expanded here, so a
new file named like it joins) and its ``deselect`` (tests of those files left out):
each mutant runs only the tests of that selection that execute its code, by a map
built under coverage when the session starts (``<module>.map.json``; again for
``--survivors``). Such a table also gives a ``timeout`` if it has one, and its
``sample``: a random sample of that many of the mutants that run (``seed`` picks it:
the same code gives the same sample; no ``sample``, or fewer mutants than that: all of
them). Mutants that change no code that runs are skipped first
(``mutation/skip_unevaluated.py``); then the mutants left out of the sample are marked
skipped as such ("not in the sample"), and neither kind counts in the score.
``--survivors`` tests again the mutants that survived in ``<module>.sqlite``, in a copy
``<module>.after.sqlite`` (the score after new tests), with the ``added-tests`` alone
(a module with a table of its own: with its ``tests``). A mutant that timed out runs
once more; a second time-out is a kill. A mutant whose worker failed (``ABNORMAL``)
counts as pending, never as killed.
cosmic-ray rewrites the module in place while a mutant is tested and restores it
after; do not edit the tree during a run. It is the ``mutation`` extra, not part of
``make install``: ``pip install -c constraints.txt -e '.[mutation]'``.
"""

from __future__ import annotations

import random
import shutil
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path

try:
    from cosmic_ray.config import serialize_config
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkResult
except ImportError:
    raise SystemExit(
        "mutation/run.py needs cosmic-ray, the 'mutation' extra: "
        "pip install -c constraints.txt -e '.[mutation]'"
    ) from None

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "cosmic-ray.toml"
SESSIONS = HERE / "sessions"
BIN = Path(sys.executable).parent
ROOT = HERE.parent
NOT_SAMPLED = "skipped: not in the sample"


def session_name(module: str) -> str:
    return module.removeprefix("bridge/").replace("/", ".").removesuffix(".py")


def test_files(patterns: list[str]) -> list[str]:
    """The test files of ``patterns`` (paths or globs from the repository root), in their
    order, each once; a pattern that matches nothing is an error (a renamed file)."""
    files: list[str] = []
    for pattern in patterns:
        found = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob(pattern))
        if not found:
            raise SystemExit(f"mutation/cosmic-ray.toml: no test file matches {pattern!r}")
        files += [f for f in found if f not in files]
    return files


def plan(settings: dict, module: str, survivors_only: bool = False) -> dict:
    """The cosmic-ray config of one module's session, plus ``sample``, ``seed`` and, for a
    module with a table of its own, ``selection`` (its pytest arguments) and ``map``."""
    base = settings["cosmic-ray"]
    mutation = settings.get("mutation", {})
    own = mutation.get("modules", {}).get(module)
    options = [w for w in base["test-command"].split() if not w.startswith("tests/")]
    selection = test_map = None
    if own is not None:
        selection = [
            *options[3:],
            *test_files(own["tests"]),
            *(w for test in own.get("deselect", []) for w in ("--deselect", test)),
        ]
        suffix = ".after" if survivors_only else ""
        test_map = SESSIONS / f"{session_name(module)}{suffix}.map.json"
        tests = [
            "python",
            "mutation/covering.py",
            "--map",
            str(test_map.relative_to(ROOT)),
            *selection,
        ]
    elif survivors_only:  # the options of test-command, the added tests alone
        tests = [*options, *mutation["added-tests"]]
    else:
        tests = [base["test-command"], *mutation.get("extra-tests", {}).get(module, [])]
    own = own or {}
    cfg = {
        **base,
        "module-path": [module],
        "test-command": " ".join(tests),
        "timeout": float(own.get("timeout", base["timeout"])),
    }
    return {
        "config": cfg,
        "sample": own.get("sample"),
        "seed": own.get("seed", 23),
        "selection": selection,
        "map": test_map,
    }


def take_sample(session: Path, size: int, seed: int) -> int:
    """Mark skipped ("not in the sample") all but ``size`` of the pending mutants, drawn
    at random with ``seed``; how many were left out. Run once, on a new session. The
    draw is from the mutants in the order of what they change (not of their job ids,
    random at each ``init``): the same code and seed give the same sample."""

    def where(item) -> tuple:
        return tuple(
            (str(m.module_path), tuple(m.start_pos), m.operator_name, m.occurrence)
            for m in item.mutations
        )

    with use_db(str(session), WorkDB.Mode.open) as db:
        pending = [item.job_id for item in sorted(db.pending_work_items, key=where)]
        if len(pending) <= size:
            return 0
        kept = set(random.Random(seed).sample(pending, size))
        left_out = [job for job in pending if job not in kept]
        for job in left_out:
            db.set_result(job, WorkResult(output=NOT_SAMPLED, worker_outcome=WorkerOutcome.SKIPPED))
    return len(left_out)


def summary(session: Path) -> tuple[int, int, int, int, list, int, int]:
    """(killed, survived, skipped, pending, survivors, not sampled, killed by a time-out)
    of a session."""
    killed = survived = skipped = not_sampled = timed_out = 0
    survivors = []
    with use_db(str(session), WorkDB.Mode.open) as db:
        pending = sum(1 for _ in db.pending_work_items)
        for item, result in db.completed_work_items:
            if result.worker_outcome == WorkerOutcome.SKIPPED and result.output == NOT_SAMPLED:
                not_sampled += 1
            elif result.worker_outcome == WorkerOutcome.SKIPPED:
                skipped += 1
            elif result.worker_outcome == WorkerOutcome.ABNORMAL:
                pending += 1  # the worker failed, not the tests (an http worker's
                # request timed out): no outcome; delete the result to run it again
            elif (
                result.worker_outcome == WorkerOutcome.NORMAL
                and result.test_outcome == TestOutcome.SURVIVED
            ):
                survived += 1
                survivors.append(item)
            else:  # killed by a test, an error or a time-out (twice: retry_timeouts)
                killed += 1
                timed_out += result.output == "timeout"
    return killed, survived, skipped, pending, survivors, not_sampled, timed_out


def retry_timeouts(session: Path) -> int:
    """Make the mutants of ``session`` that timed out for the first time pending again
    (marked so: a second time-out stands); how many."""
    with sqlite3.connect(session) as db:
        db.execute("CREATE TABLE IF NOT EXISTS timed_out_once (job_id TEXT PRIMARY KEY)")
        jobs = [
            job
            for (job,) in db.execute(
                "SELECT job_id FROM work_results WHERE output = 'timeout' "
                "AND job_id NOT IN (SELECT job_id FROM timed_out_once)"
            )
        ]
        for job in jobs:
            db.execute("INSERT INTO timed_out_once VALUES (?)", (job,))
            db.execute("DELETE FROM work_results WHERE job_id = ?", (job,))
    return len(jobs)


def reset_survivors(before: Path, after: Path) -> None:
    """``after``: a copy of session ``before`` whose surviving mutants are pending again."""
    shutil.copy(before, after)
    with sqlite3.connect(after) as db:
        db.execute(
            "DELETE FROM work_results WHERE worker_outcome = 'NORMAL' AND test_outcome = 'SURVIVED'"
        )


def print_plan(settings: dict, modules: list[str], survivors_only: bool) -> None:
    for module in modules:
        p = plan(settings, module, survivors_only)
        sample = (
            "all mutants"
            if p["sample"] is None
            else f"a random sample of {p['sample']} (seed {p['seed']})"
        )
        print(
            f"{module}: {sample}, {p['config']['timeout']:g} s per mutant\n"
            f"    {p['config']['test-command']}"
        )


def run_session(settings: dict, module: str, survivors_only: bool, suffix: str) -> None:
    """Start (or resume) ``module``'s session, run it, run its time-outs again."""
    p = plan(settings, module, survivors_only)
    name = session_name(module)
    config = SESSIONS / f"{name}{suffix}.toml"
    config.write_text(serialize_config(p["config"]))
    session = SESSIONS / f"{name}{suffix}.sqlite"
    if survivors_only:
        reset_survivors(SESSIONS / f"{name}.sqlite", session)
    elif not session.exists():
        subprocess.run([BIN / "cosmic-ray", "init", config, session], check=True)
        subprocess.run([sys.executable, HERE / "skip_unevaluated.py", session], check=True)
        if p["sample"] is not None:
            left_out = take_sample(session, int(p["sample"]), int(p["seed"]))
            print(
                f"{session}: a random sample of {p['sample']} (seed {p['seed']}); "
                f"{left_out} mutants left out",
                flush=True,
            )
    if p["map"] is not None and (survivors_only or not p["map"].exists()):
        subprocess.run(
            [sys.executable, HERE / "covering.py", "--build", p["map"], module, *p["selection"]],
            cwd=ROOT,
            check=True,
        )
    subprocess.run([BIN / "cosmic-ray", "exec", config, session], check=True)
    timed_out = retry_timeouts(session)
    if timed_out:  # each once more, alone: a time-out is a kill only if it recurs
        print(f"{session}: {timed_out} mutants timed out; each runs once more", flush=True)
        subprocess.run([BIN / "cosmic-ray", "exec", config, session], check=True)
    k, s, sk, pending, _, ns, to = summary(session)
    print(
        f"{module}: {k} killed of {k + s} ({100 * k / max(1, k + s):.1f} %; {to} by "
        f"a time-out, twice), "
        f"{sk} skipped, {ns} not in the sample, {pending} pending",
        flush=True,
    )


def print_table(modules: list[str], suffix: str) -> None:
    print(
        "\nmodule | mutants run | killed (by a time-out) | survived | score"
        " | skipped (not code that runs) | not in the sample"
    )
    for module in modules:
        session = SESSIONS / f"{session_name(module)}{suffix}.sqlite"
        if session.exists():
            k, s, sk, pending, survivors, ns, to = summary(session)
            print(
                f"{module} | {k + s} | {k} ({to}) | {s} | {100 * k / max(1, k + s):.1f} % | {sk}"
                f" | {ns}" + (f" | {pending} pending" if pending else "")
            )
            for item in survivors:
                for m in item.mutations:
                    print(
                        f"    survived: {m.module_path}:{m.start_pos[0]} {m.operator_name}"
                        f" #{m.occurrence} ({item.job_id})"
                    )


def main(argv: list[str]) -> int:
    survivors_only = "--survivors" in argv
    plan_only = "--plan" in argv
    argv = [a for a in argv if a not in ("--survivors", "--plan")]
    suffix = ".after" if survivors_only else ""
    settings = tomllib.loads(CONFIG.read_text())
    modules = argv or settings["cosmic-ray"]["module-path"]
    if plan_only:
        print_plan(settings, modules, survivors_only)
        return 0
    SESSIONS.mkdir(exist_ok=True)
    for module in modules:
        run_session(settings, module, survivors_only, suffix)
    print_table(modules, suffix)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
