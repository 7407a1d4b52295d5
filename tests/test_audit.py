"""tools/audit.py, the dependency audit of ``make test``: a known-vulnerable pin fails,
an advisory database that cannot be reached is said and passes, and a database that
answers without flagging the known-vulnerable pin fails the self-check.

pip-audit's answers are the ones it gives (its JSON report, its stderr), recorded; the
live run is ``make audit`` (``--self-check`` audits urllib3 1.26.0 for real)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tools import audit

FLAGGED = {
    "dependencies": [
        {
            "name": "urllib3",
            "version": "1.26.0",
            "vulns": [
                {"id": "PYSEC-2021-108", "fix_versions": ["1.26.5"], "aliases": ["CVE-2021-33503"]},
                {"id": "GHSA-34jh-p97f-mpxf", "fix_versions": ["1.26.18", "2.0.7"], "aliases": []},
            ],
        }
    ],
    "fixes": [],
}
CLEAN = {
    "dependencies": [
        {"name": "flask", "version": "3.1.3", "vulns": []},
        {"name": "jinja2", "version": "3.1.6", "vulns": []},
        {"name": "urllib3", "version": "2.8.0", "vulns": []},
    ],
    "fixes": [],
}
# A mirror that serves packages but not PyPI's per-version JSON: every pin skipped.
MIRROR = {
    "dependencies": [
        {
            "name": "urllib3",
            "skip_reason": "Dependency not found on PyPI "
            "and could not be audited: urllib3 (1.26.0)",
        }
    ],
    "fixes": [],
}
OFFLINE = (
    "Traceback (most recent call last):\n  ...\nrequests.exceptions.ConnectionError: "
    "HTTPSConnectionPool(host='api.osv.dev', port=443): Max retries exceeded with url: "
    "/v1/query (Caused by NameResolutionError(\"Failed to resolve 'api.osv.dev'\"))\n"
)


def answers(**by_service):
    """A pip-audit runner answering ``(report or None, exit status, stderr)`` per
    service; the self-check's requirements get ``self_check`` when it is given."""
    calls = []

    def run(requirements, service, timeout):
        checking = os.path.basename(requirements).startswith("audit-self-check-")
        calls.append(("self-check" if checking else requirements, service))
        key = (
            f"{service}_self_check"
            if checking and f"{service}_self_check" in by_service
            else service
        )
        report, status, stderr = by_service[key]
        return subprocess.CompletedProcess([], status, json.dumps(report) if report else "", stderr)

    run.calls = calls
    return run


def test_a_known_vulnerable_pin_fails_the_audit(capsys):
    run = answers(pypi=(FLAGGED, 1, ""))
    assert audit.main(["requirements.txt"], run=run) == 1
    out = capsys.readouterr().out
    assert "FAILED: known vulnerabilities in requirements.txt" in out
    assert "urllib3 1.26.0: PYSEC-2021-108 (fixed in 1.26.5)" in out
    assert "urllib3 1.26.0: GHSA-34jh-p97f-mpxf (fixed in 1.26.18, 2.0.7)" in out


def test_a_clean_locked_set_passes(capsys):
    assert audit.main(["constraints.txt"], run=answers(pypi=(CLEAN, 0, ""))) == 0
    assert "audit: 3 pins audited: no known vulnerability" in capsys.readouterr().out


@pytest.mark.parametrize("pypi", [(MIRROR, 0, ""), (None, 1, OFFLINE)])
def test_an_unreachable_database_is_said_and_passes(capsys, pypi):
    """pip-audit itself says "No known vulnerabilities found" when a mirror skips every
    pin: that is not a clean audit, and the line says so."""
    run = answers(pypi=pypi, osv=(None, 1, OFFLINE))
    assert audit.main(["--self-check", "constraints.txt"], run=run) == 0
    out = capsys.readouterr().out
    assert out.startswith("audit: SKIPPED: the advisory database could not be reached")
    assert "no known vulnerability" not in out
    assert run.calls == [("self-check", "pypi"), ("self-check", "osv")]


def test_the_second_database_answers_when_the_first_cannot(capsys):
    run = answers(pypi=(MIRROR, 0, ""), osv=(FLAGGED, 1, ""))
    assert audit.main(["constraints.txt"], run=run) == 1
    assert run.calls == [("constraints.txt", "pypi"), ("constraints.txt", "osv")]


def test_a_database_that_does_not_flag_the_known_vulnerable_pin_fails(capsys):
    run = answers(pypi=(CLEAN, 0, ""))
    assert audit.main(["--self-check", "constraints.txt"], run=run) == 1
    assert "FAILED self-check: urllib3==1.26.0 was not flagged" in capsys.readouterr().out
    assert run.calls == [("self-check", "pypi")]  # the locked set is not audited blind


def test_the_self_check_then_the_locked_set(capsys):
    run = answers(pypi_self_check=(FLAGGED, 1, ""), pypi=(CLEAN, 0, ""))
    assert audit.main(["--self-check", "constraints.txt"], run=run) == 0
    out = capsys.readouterr().out
    assert "self-check: urllib3==1.26.0 is flagged, as it must be" in out
    assert "3 pins audited: no known vulnerability" in out


def test_another_pip_audit_failure_is_not_taken_for_offline(capsys):
    run = answers(pypi=(None, 2, "pip-audit: error: argument --timeout: invalid int value"))
    assert audit.main(["constraints.txt"], run=run) == 2
    assert "FAILED: pip-audit could not audit constraints.txt" in capsys.readouterr().out
