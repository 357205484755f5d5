"""Smoke test of the benchmark harness: ``python -m benchmarks.run --quick`` on a tiny subset.

Checks the report's rows and that every request succeeded; no timing is
asserted (figures from a shared 2-core machine mean nothing in a test).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.systems import SYSTEMS

REPO = Path(__file__).resolve().parent.parent
# The anchors (service-streamer, celery-batches) need .venv-anchors; without it
# the harness skips them with a note, and this test checks that note instead.
ANCHOR = "threaded"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_quick_run_reports_a_row_per_system(tmp_path: Path) -> None:
    # Given a tiny run: noop only, one repetition, a few requests per workload
    systems = ["direct", "naive", "ours", ANCHOR]
    argv = [
        sys.executable,
        "-m",
        "benchmarks.run",
        "--quick",
        "--models",
        "noop",
        "--systems",
        *systems,
        "--reps",
        "1",
        "--workers",
        "1",
        "--saturation",
        "64",
        "--drain",
        "64",
        "--light",
        "5",
        "--clients",
        "1",
        "--out",
        str(tmp_path),
    ]

    # When the harness runs as a user would run it
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=110)

    # Then it succeeds and its table has one row per system (or a note for missing anchors)
    assert done.returncode == 0, done.stderr[-3000:]
    report = next(tmp_path.glob("*.md")).read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ") and not line.startswith("| system")]
    labels = [row.split(" | ")[0].lstrip("| ") for row in rows]
    expected = ["direct", "naive", "ours"]
    if SYSTEMS[ANCHOR].available():
        expected.append(ANCHOR)
    else:
        assert f"skipped {ANCHOR}" in report
    assert sorted(labels) == sorted(SYSTEMS[name].label for name in expected)
    assert all(row.rstrip(" |").endswith("| 0") for row in rows), rows  # no failed request

    # And every workload of every system was measured once
    figures = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert sorted(entry["system"] for entry in figures) == sorted(expected)
    for entry in figures:
        assert [sorted(rep) for rep in entry["reps"]] == [["drain", "light", "saturation"]]
        for workload, measured in entry["reps"][0].items():
            assert measured["requests"] > 0, (entry["system"], workload)
