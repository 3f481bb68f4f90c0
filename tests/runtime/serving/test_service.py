"""How the service hands a request to the runtime: on the event loop, through ``submit``.

No thread of the server waits on the runtime: the loop submits and awaits the runtime's future.
A request cancelled while the runtime works (a client hanging up) must not cancel the runtime's
future, whose owner, the group's thread, would then fail to set its result.  Requests that find
their group full wait, and go in together as one run, each getting its own rows back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from neuron_cores.models import ModelEntry
from neuron_runtime.serving.metrics import ServingMetrics
from neuron_runtime.serving.service import InferenceService
from neuron_runtime.serving.statistics import RequestTiming


@dataclass(frozen=True)
class Spec:
    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass
class HandPredictor:
    """A predictor whose futures the test completes by hand; blocking calls are a failure."""

    name: str = "m"
    group: int = 0
    futures: list[concurrent.futures.Future[dict[str, np.ndarray[Any, Any]]]] = field(
        default_factory=list
    )
    submit_threads: list[int] = field(default_factory=list)
    submitted: list[Mapping[str, Any]] = field(default_factory=list)

    @property
    def feed_tensors(self) -> Mapping[str, Spec]:
        return {"x": Spec("x", (-1, 2), "float32")}

    @property
    def fetch_tensors(self) -> Mapping[str, Spec]:
        return {"y": Spec("y", (-1, 2), "float32")}

    def submit(
        self, feeds: Mapping[str, Any], /
    ) -> concurrent.futures.Future[dict[str, np.ndarray[Any, Any]]]:
        self.submit_threads.append(threading.get_ident())
        self.submitted.append(feeds)
        future: concurrent.futures.Future[dict[str, np.ndarray[Any, Any]]] = (
            concurrent.futures.Future()
        )
        self.futures.append(future)
        return future

    def __call__(self, feeds: Mapping[str, Any], /) -> dict[str, np.ndarray[Any, Any]]:
        raise AssertionError("the server must not block a thread on the runtime")


def service_with(predictor: HandPredictor, threads_per_group: int = 4) -> InferenceService:
    service = InferenceService(
        entries=[ModelEntry("m", "/m")],
        loader=lambda path, name: predictor,
        metrics=ServingMetrics(CollectorRegistry()),
        threads_per_group=threads_per_group,
    )
    service.load_models()
    return service


async def _settle(predictor: HandPredictor, count: int) -> None:
    for _ in range(200):
        if len(predictor.futures) >= count:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{count} submits expected, saw {len(predictor.futures)}")


def test_requests_are_submitted_from_the_loop_and_answered_by_the_runtime_thread() -> None:
    predictor = HandPredictor()
    service = service_with(predictor)

    async def scenario() -> dict[str, Any]:
        served = service.model("m")
        timing = RequestTiming()
        timing.mark_decoded()
        task = asyncio.create_task(
            service.infer(served, {"x": np.ones((1, 2), np.float32)}, timing)
        )
        await _settle(predictor, 1)
        # The answer comes from another thread, as a group's thread would give it.
        answer = {"y": np.zeros((1, 2), np.float32)}
        threading.Thread(target=predictor.futures[0].set_result, args=(answer,)).start()
        outputs = dict(await asyncio.wait_for(task, 10))
        assert timing.answered >= timing.submitted > 0
        return outputs

    outputs = asyncio.run(scenario())
    assert list(outputs) == ["y"]
    assert predictor.submit_threads == [threading.get_ident()]  # asyncio.run's loop: this thread


@pytest.mark.parametrize("outcome", ["result", "error"], ids=["result", "error"])
def test_a_cancelled_request_leaves_the_runtime_future_alone(outcome: str) -> None:
    predictor = HandPredictor()
    service = service_with(predictor)
    errors: list[dict[str, Any]] = []

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, context: errors.append(context))
        served = service.model("m")
        task = asyncio.create_task(service.infer(served, {"x": np.ones((1, 2), np.float32)}))
        await _settle(predictor, 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        future = predictor.futures[0]
        assert not future.cancelled()
        # What the group's thread does next: raises InvalidStateError if the future was cancelled.
        if outcome == "result":
            future.set_result({"y": np.zeros((1, 2), np.float32)})
        else:
            future.set_exception(RuntimeError("worker said no"))
        await asyncio.sleep(0.05)  # the loop runs the late callback, which must stay quiet

    asyncio.run(scenario())
    assert errors == []


def test_requests_waiting_for_a_full_group_run_merged_and_get_their_own_rows() -> None:
    predictor = HandPredictor()
    service = service_with(predictor, threads_per_group=2)

    async def scenario() -> list[Any]:
        served = service.model("m")
        rows = [1, 1, 2, 3, 1]
        tasks = [
            asyncio.create_task(service.infer(served, {"x": np.full((n, 2), index, np.float32)}))
            for index, n in enumerate(rows)
        ]
        await _settle(predictor, 2)
        await asyncio.sleep(0.05)
        assert len(predictor.futures) == 2  # the group is full: three requests wait here
        predictor.futures[0].set_result({"y": np.zeros((1, 2), np.float32)})
        await _settle(predictor, 3)
        # The three waiting requests went in as one run of 2 + 3 + 1 rows; answer it as a model
        # with a batch dimension would, row by row.
        (merged,) = predictor.submitted[2:]
        assert merged["x"].shape == (6, 2)
        predictor.futures[2].set_result({"y": merged["x"] * 10})
        predictor.futures[1].set_result({"y": np.ones((1, 2), np.float32)})
        return list(await asyncio.wait_for(asyncio.gather(*tasks), 10))

    answers = asyncio.run(scenario())
    assert len(predictor.futures) == 3
    for index, (answer, n) in enumerate(zip(answers, [1, 1, 2, 3, 1], strict=True)):
        assert answer["y"].shape == (n, 2)
        if index >= 2:
            assert (answer["y"] == index * 10).all()


def test_a_merged_answer_without_one_row_per_input_row_fails_every_request_in_it() -> None:
    predictor = HandPredictor()
    service = service_with(predictor, threads_per_group=1)

    async def scenario() -> list[Any]:
        served = service.model("m")
        tasks = [
            asyncio.create_task(service.infer(served, {"x": np.ones((1, 2), np.float32)}))
            for _ in range(3)
        ]
        await _settle(predictor, 1)
        predictor.futures[0].set_result({"y": np.zeros((1, 2), np.float32)})
        await _settle(predictor, 2)
        predictor.futures[1].set_result({"y": np.zeros((1, 2), np.float32)})  # 1 row for 2
        return list(await asyncio.gather(*tasks, return_exceptions=True))

    first, *merged = asyncio.run(scenario())
    assert first["y"].shape == (1, 2)
    for outcome in merged:
        assert isinstance(outcome, RuntimeError)
        assert "one row per input row" in str(outcome)


@pytest.mark.parametrize(
    ("second", "runs"),
    [
        (np.ones((2, 2), np.float32), 2),
        (np.ones((2, 3), np.float32), 3),
        (np.ones((2, 2), np.float64), 3),
    ],
    ids=["same-kind-joins", "other-inner-shape-runs-alone", "other-dtype-runs-alone"],
)
def test_only_requests_of_one_shape_and_dtype_join(second: np.ndarray[Any, Any], runs: int) -> None:
    predictor = HandPredictor()
    service = service_with(predictor, threads_per_group=1)

    async def scenario() -> None:
        served = service.model("m")
        inputs = [np.ones((1, 2), np.float32), np.ones((1, 2), np.float32), second]
        tasks = [asyncio.create_task(service.infer(served, {"x": x})) for x in inputs]
        for index in range(runs):
            await _settle(predictor, index + 1)
            feeds = predictor.submitted[index]["x"]
            predictor.futures[index].set_result({"y": np.zeros((feeds.shape[0], 2), np.float32)})
        await asyncio.wait_for(asyncio.gather(*tasks), 10)

    asyncio.run(scenario())
    assert len(predictor.futures) == runs


@pytest.mark.parametrize("answered_on_loop", [True, False], ids=["loop-thread", "other-thread"])
def test_an_answer_given_on_the_loop_does_not_wake_the_loop(answered_on_loop: bool) -> None:
    """A group that lent its workers to the loop resolves the future on the loop's own thread: the
    answer is then scheduled with ``call_soon``, with no wake-up through ``call_soon_threadsafe``;
    an answer from another thread still wakes the loop."""
    predictor = HandPredictor()
    service = service_with(predictor)
    wakes: list[int] = []

    async def scenario() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        threadsafe = loop.call_soon_threadsafe

        def counted(*args: Any, **kwargs: Any) -> asyncio.Handle:
            wakes.append(1)
            return threadsafe(*args, **kwargs)

        loop.call_soon_threadsafe = counted  # type: ignore[method-assign,assignment]
        task = asyncio.create_task(service.infer(service.model("m"), {"x": np.ones((1, 2))}))
        await _settle(predictor, 1)
        answer = {"y": np.zeros((1, 2), np.float32)}
        if answered_on_loop:
            predictor.futures[0].set_result(answer)
        else:
            threading.Thread(target=predictor.futures[0].set_result, args=(answer,)).start()
        return dict(await asyncio.wait_for(task, 10))

    outputs = asyncio.run(scenario())
    assert list(outputs) == ["y"]
    assert len(wakes) == (0 if answered_on_loop else 1)
