"""``make audit`` (a step of ``make test``): pip-audit of the locked set, constraints.txt.

Exit 0 when no pin has a known vulnerability, and also when the advisory database
cannot be reached (said in one line: an offline machine passes, loudly); exit 1 when a
pin has one; exit 2 when pip-audit fails for another reason. ``--self-check`` first
audits a pin with known vulnerabilities (urllib3 1.26.0): where the database answers
and does not flag it, the audit is blind, and that fails too.

The database is PyPI's (its per-version JSON), then OSV's. A mirror that serves
packages but not that JSON makes pip-audit skip every pin as "not found on PyPI" and
say "No known vulnerabilities found": counted here as unreachable, never as clean.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

SERVICES = ("pypi", "osv")
KNOWN_VULNERABLE = "urllib3==1.26.0"
_UNREACHABLE = re.compile(
    r"ConnectionError|ConnectTimeout|ReadTimeout|NameResolutionError|Max retries exceeded|"
    r"Name or service not known|Temporary failure in name resolution|Network is unreachable|"
    r"Connection refused|Could not connect|timed out|SSLError|ServiceError"
)


@dataclass
class Result:
    verdict: str  # "vulnerable", "clean", "unreachable" or "error"
    lines: list[str] = field(default_factory=list)


Runner = Callable[[str, str, int], subprocess.CompletedProcess]


def pip_audit(requirements: str, service: str, timeout: int) -> subprocess.CompletedProcess:
    """pip-audit of the pins in ``requirements`` alone (no resolution, no pip run)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pip_audit",
            "-r",
            requirements,
            "--no-deps",
            "--disable-pip",
            "-s",
            service,
            "-f",
            "json",
            "--progress-spinner",
            "off",
            "--timeout",
            str(timeout),
        ],
        capture_output=True,
        text=True,
        check=False,
    )


def classify(returncode: int, stdout: str, stderr: str) -> Result:
    """What one pip-audit run found, from its exit status, JSON report and stderr."""
    try:
        report = json.loads(stdout) if stdout.strip() else None
    except ValueError:
        report = None
    if not isinstance(report, dict):
        tail = [line for line in stderr.strip().splitlines() if line.strip()][-1:] or [
            f"pip-audit exited {returncode} without a report"
        ]
        return Result("unreachable" if _UNREACHABLE.search(stderr) else "error", tail)
    dependencies = report.get("dependencies", [])
    vulnerable = [
        f"{dep['name']} {dep.get('version', '?')}: {vuln['id']} (fixed in "
        f"{', '.join(vuln.get('fix_versions') or []) or 'no release yet'})"
        for dep in dependencies
        for vuln in dep.get("vulns") or []
    ]
    if vulnerable:
        return Result("vulnerable", vulnerable)
    skipped = [dep for dep in dependencies if "skip_reason" in dep]
    audited = len(dependencies) - len(skipped)
    if returncode != 0:
        return Result("error", [f"pip-audit exited {returncode}"])
    if not audited:
        why = skipped[0]["skip_reason"] if skipped else "the requirements name no pin"
        return Result("unreachable", [f"no pin could be audited ({why})"])
    return Result(
        "clean",
        [f"{audited} pins audited: no known vulnerability"]
        + [f"not audited: {dep['skip_reason']}" for dep in skipped],
    )


def audit(requirements: str, run: Runner = pip_audit, timeout: int = 15) -> Result:
    """The first answer a service gives about ``requirements``; unreachable if none does."""
    tried = []
    for service in SERVICES:
        completed = run(requirements, service, timeout)
        result = classify(completed.returncode, completed.stdout, completed.stderr)
        if result.verdict != "unreachable":
            return result
        tried.append(f"{service}: {result.lines[0]}")
    return Result("unreachable", tried)


def self_check(run: Runner = pip_audit, timeout: int = 15) -> Result:
    """The audit of a known-vulnerable pin: "vulnerable" where the database answers."""
    fd, path = tempfile.mkstemp(prefix="audit-self-check-", suffix=".txt")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(KNOWN_VULNERABLE + "\n")
        return audit(path, run, timeout)
    finally:
        os.unlink(path)


def main(argv: list[str] | None = None, run: Runner = pip_audit) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("requirements", nargs="?", default="constraints.txt")
    parser.add_argument(
        "--self-check",
        action="store_true",
        help=f"first check that the database flags {KNOWN_VULNERABLE}",
    )
    parser.add_argument("--timeout", type=int, default=15, help="seconds per request")
    args = parser.parse_args(argv)

    def say(text: str) -> None:
        print(f"audit: {text}", flush=True)

    if args.self_check:
        check = self_check(run, args.timeout)
        if check.verdict == "unreachable":
            say(
                "SKIPPED: the advisory database could not be reached, nothing was audited "
                f"({'; '.join(check.lines)})"
            )
            return 0
        if check.verdict != "vulnerable":
            say(
                f"FAILED self-check: {KNOWN_VULNERABLE} was not flagged ({check.verdict}: "
                f"{'; '.join(check.lines)}); the audit cannot be trusted"
            )
            return 2 if check.verdict == "error" else 1
        say(f"self-check: {KNOWN_VULNERABLE} is flagged, as it must be")
    result = audit(args.requirements, run, args.timeout)
    if result.verdict == "unreachable":
        say(
            f"SKIPPED: the advisory database could not be reached, {args.requirements} was "
            f"not audited ({'; '.join(result.lines)})"
        )
        return 0
    if result.verdict == "vulnerable":
        say(f"FAILED: known vulnerabilities in {args.requirements}:")
        for line in result.lines:
            print(f"  {line}")
        return 1
    if result.verdict == "error":
        say(f"FAILED: pip-audit could not audit {args.requirements}: {result.lines[0]}")
        return 2
    for line in result.lines:
        say(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
