"""docs/celery.md tells the truth: every "yes" names tests that exist, and the rows no other file proves.

The feature table is what users read to decide whether to rely on a feature;
a "yes" whose test was renamed or removed would go on claiming it. The two
features proved here (PENDING, result_expires) are checked against an
ordinary task of the same app.
"""

from __future__ import annotations

import importlib
import re

import pytest

from tests.servers import ROOT

TABLE = ROOT / "docs" / "celery.md"
TEST_REFERENCE = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def feature_rows() -> list[tuple[str, str, str]]:
    """(feature, supported, the rest of the row) for each row of the table."""
    rows = []
    for line in TABLE.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 4 and (cells[1] in ("yes", "not yet") or cells[1].startswith("no: ")):
            rows.append((cells[0], cells[1], " | ".join(cells[2:])))
    return rows


def test_the_table_lists_the_features_users_ask_about():
    features = " ".join(feature for feature, _, _ in feature_rows())
    for name in ("delay", "revoke", "expires", "ignore_result", "result_expires", "-Q", "Flower", "chains", "ETA"):
        assert name in features, f"docs/celery.md has no row for {name}"


@pytest.mark.parametrize("feature, supported, rest", feature_rows(), ids=lambda value: str(value)[:40])
def test_every_yes_names_tests_that_exist(feature, supported, rest):
    references = TEST_REFERENCE.findall(rest)
    if supported == "not yet":
        assert not references, f"{feature}: a 'not yet' row names a test; flip it to yes"
        return
    assert references, f"{feature}: a 'yes' without the test that proves it"
    for path, name in references:
        source = ROOT / path
        assert source.is_file(), f"{feature}: {path} does not exist"
        assert re.search(rf"^(async )?def {name}\(", source.read_text(), re.MULTILINE), f"{feature}: no {path}::{name}"


@pytest.fixture
def expiring(app_module_env):
    return importlib.import_module("tests.apps.expiring")


def test_state_is_pending_until_a_worker_runs_the_task(expiring, start_worker):
    # Given a batched and an ordinary task sent while no worker runs
    batched_result = expiring.double.delay(4)
    plain_result = expiring.plain_double.delay(4)
    # Then both read PENDING, as Celery says of any task it knows nothing of yet
    assert batched_result.state == plain_result.state == "PENDING"
    # When a worker starts, both succeed
    start_worker("tests.apps.expiring")
    assert batched_result.get(timeout=30) == plain_result.get(timeout=30) == 8
    assert batched_result.state == plain_result.state == "SUCCESS"


def test_stored_results_expire_after_result_expires(expiring, start_worker):
    # Given an app with result_expires = 120 s, and a worker
    start_worker("tests.apps.expiring")
    backend = expiring.app.backend
    # When a batched and an ordinary task have stored their results
    batched_result, plain_result = expiring.double.delay(1), expiring.plain_double.delay(1)
    assert batched_result.get(timeout=30) == plain_result.get(timeout=30) == 2
    ttls = [backend.client.ttl(backend.get_key_for_task(result.id)) for result in (batched_result, plain_result)]
    # Then both keys expire within result_expires, as the ordinary task's does
    assert all(0 < ttl <= expiring.RESULT_EXPIRES for ttl in ttls), ttls
    assert abs(ttls[0] - ttls[1]) <= 5, ttls
