"""The chaos run of ``make chaos`` (tests/chaos.py), reduced: 50,000 recipients, four pollers
and two Celery workers on servers of the test's own, and every kind of fault at least once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import chaos


@pytest.mark.timeout(600)
def test_a_send_under_every_kind_of_fault_loses_nothing_and_duplicates_within_the_bound(
    tmp_path: Path,
) -> None:
    plan = chaos.Plan(folder=tmp_path, recipients=50_000, kills=4, stops=1, timeout=480)
    report = chaos.run(plan)

    assert report.failures() == [], f"\n{report.table()}\nlogs in {tmp_path}"
    assert report.emails == report.sent == 49_500
    assert report.duplicates <= report.bound
    # Every kind of fault happened (a kill of a Celery worker lands while it expands).
    assert set(report.faults) == set(chaos.KINDS)
    assert report.faults["kill -9 poller"] == 3
    assert report.faults["kill -9 celery worker"] == 1
