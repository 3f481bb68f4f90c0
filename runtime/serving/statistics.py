"""Triton's statistics extension: per-model counts and durations, as pure bookkeeping.

``perf_analyzer`` reads these before and after each measurement window and reports the server's
side of the latency from the differences, so every field it reads is always present, and the
compute counts move together (it refuses windows where they differ).  The phases of one request,
as this server measures them:

- ``compute_input``: from the handler's start to decoded input arrays (reading and checking the
  body or message);
- ``queue``: from decoded inputs until the request is handed to its NeuronCore Group (waiting for
  one of the group's ``--threads-per-group`` slots);
- ``compute_infer``: from the hand-over until the runtime's answer (the group's own scheduling and
  the worker processes);
- ``compute_output``: encoding the answer;
- ``success``/``fail``: the whole request, per outcome.

``inference_count`` counts rows (a request of batch N is N inferences); ``execution_count`` counts
runs of the model, which is fewer than requests when waiting requests were merged into one run.
Per-batch-size statistics (Triton's ``batch_stats``) are not kept.

Everything is updated on the event loop's thread, so no lock is needed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += ns

    def as_json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


class RequestTiming:
    """Monotonic nanosecond marks of one request's phases (0 = not reached)."""

    __slots__ = ("answered", "decoded", "started", "submitted")

    def __init__(self) -> None:
        self.started = time.perf_counter_ns()
        self.decoded = 0
        self.submitted = 0
        self.answered = 0

    def mark_decoded(self) -> None:
        self.decoded = time.perf_counter_ns()


@dataclass
class ModelStatistics:
    """The statistics of one served model (all its copies together)."""

    name: str
    version: str
    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)

    def record_execution(self) -> None:
        """One run of the model in the runtime, of one request or of several merged."""
        self.execution_count += 1

    def record_success(self, timing: RequestTiming, rows: int) -> None:
        """A request answered: ``rows`` inferences."""
        done = time.perf_counter_ns()
        input_ns = timing.decoded - timing.started
        infer_ns = timing.answered - timing.submitted
        output_ns = done - timing.answered
        self.success.add(done - timing.started)
        self.queue.add(timing.submitted - timing.decoded)
        self.compute_input.add(input_ns)
        self.compute_infer.add(infer_ns)
        self.compute_output.add(output_ns)
        self.inference_count += rows
        self.last_inference_ms = time.time_ns() // 1_000_000

    def record_failure(self, timing: RequestTiming) -> None:
        self.fail.add(time.perf_counter_ns() - timing.started)
        self.last_inference_ms = time.time_ns() // 1_000_000

    def as_json(self) -> dict[str, Any]:
        """The REST form (Triton's), which is also the gRPC message's JSON mapping."""
        zero = Duration().as_json()
        return {
            "name": self.name,
            "version": self.version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.as_json(),
                "fail": self.fail.as_json(),
                "queue": self.queue.as_json(),
                "compute_input": self.compute_input.as_json(),
                "compute_infer": self.compute_infer.as_json(),
                "compute_output": self.compute_output.as_json(),
                # No response cache here: both stay zero.
                "cache_hit": zero,
                "cache_miss": zero,
            },
        }
