"""The public API's types: mypy checks a ``@batched`` task's ``.delay()`` against its sample type.

Given tests/typing/batched_calls.py, whose lines meant to fail end with ``# E: <code>``,
When mypy checks it (strict, as the library is checked),
Then it reports exactly those lines with those codes, and nothing else.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SNIPPET = ROOT / "tests" / "typing" / "batched_calls.py"
EXPECTED = re.compile(r"#\s*E:\s*([a-z-]+)\s*$")
REPORTED = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+): error: .*\[(?P<code>[a-z-]+)\]$")


def expected_errors() -> set[tuple[int, str]]:
    lines = SNIPPET.read_text().splitlines()
    return {(number, match.group(1)) for number, line in enumerate(lines, 1) if (match := EXPECTED.search(line))}


def reported_errors(output: str) -> set[tuple[int, str]]:
    found = set()
    for line in output.splitlines():
        match = REPORTED.match(line.strip())
        if match and Path(match.group("path")).name == SNIPPET.name:
            found.add((int(match.group("line")), match.group("code")))
    return found


def test_mypy_reports_the_wrong_sample_types_and_only_them(tmp_path: Path) -> None:
    # Given the snippet expects some errors
    expected = expected_errors()
    assert expected, "the snippet must contain calls that should fail"
    # When mypy checks it with the project's settings
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(tmp_path / "mypy-cache"),
            "--no-error-summary",
            "--show-error-codes",
            "--no-pretty",
            str(SNIPPET),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
    )
    # Then it fails, on exactly the lines marked, with the codes marked
    assert run.returncode == 1, run.stdout + run.stderr
    assert reported_errors(run.stdout) == expected, run.stdout + run.stderr
