"""Statistics bookkeeping: what perf_analyzer reads, with counts that move together."""

from __future__ import annotations

import pytest

from neuron_runtime.serving.statistics import ModelStatistics, RequestTiming


def timing(started: int, decoded: int, submitted: int, answered: int) -> RequestTiming:
    mark = RequestTiming()
    mark.started, mark.decoded, mark.submitted, mark.answered = (
        started,
        decoded,
        submitted,
        answered,
    )
    return mark


@pytest.mark.parametrize(
    ("batches", "inferences"),
    [([1], 1), ([8, 8, 2], 18), ([], 0)],
    ids=["one", "mixed-batches", "none"],
)
def test_successes_count_rows_and_executions(batches: list[int], inferences: int) -> None:
    stats = ModelStatistics("m", "1")
    for rows in batches:
        stats.record_execution()
        stats.record_success(timing(0, 10, 15, 115), rows)
    document = stats.as_json()
    assert document["inference_count"] == inferences
    assert document["execution_count"] == len(batches)
    phases = document["inference_stats"]
    assert phases["queue"] == {"count": len(batches), "ns": 5 * len(batches)}
    assert phases["compute_input"] == {"count": len(batches), "ns": 10 * len(batches)}
    assert phases["compute_infer"] == {"count": len(batches), "ns": 100 * len(batches)}
    # perf_analyzer refuses a window whose compute counts differ.
    counts = {phases[p]["count"] for p in ("compute_input", "compute_infer", "compute_output")}
    assert counts == {len(batches)}
    assert phases["success"]["count"] == len(batches)
    assert phases["cache_hit"] == phases["cache_miss"] == {"count": 0, "ns": 0}
    assert (document["last_inference"] > 0) == bool(batches)


def test_a_failure_counts_only_as_a_failure() -> None:
    stats = ModelStatistics("m", "1")
    stats.record_failure(RequestTiming())
    document = stats.as_json()
    assert document["inference_stats"]["fail"]["count"] == 1
    assert document["inference_stats"]["success"]["count"] == 0
    assert document["execution_count"] == document["inference_count"] == 0
    assert document["inference_stats"]["compute_infer"]["count"] == 0
