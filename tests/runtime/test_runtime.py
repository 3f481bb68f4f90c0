"""The runtime end to end: groups, load order, execution in worker processes, switching."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import neuron_runtime.group
from neuron_runtime import (
    InvalidInputError,
    ModelDoesNotFitError,
    ModelLoadError,
    NeuronRuntime,
    Predictor,
    RuntimeClosedError,
    WorkerLostError,
)
from neuron_runtime.artifact import load_artifact, read_stage_weights
from neuron_runtime.layers import run_layer

Factory = Callable[..., NeuronRuntime]
ModelDir = Callable[..., Path]


def _image(batch: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 32, 32, 3), dtype=np.float32)


def _reference(path: Path, x: np.ndarray) -> np.ndarray:
    """The model run in this process, layer by layer: what the workers must compute."""
    artifact = load_artifact(path)
    for stage in range(artifact.cores):
        weights = read_stage_weights(artifact, stage)
        for layer in artifact.stage_layers(stage):
            x = run_layer(layer, weights[layer.name], x)
    return x


def test_models_fill_groups_in_order_then_wrap(
    runtime_factory: Factory, model_dir: ModelDir
) -> None:
    runtime = runtime_factory(NEURONCORE_GROUP_SIZES="2,1,1")
    assert [g.cores for g in runtime.groups] == [(0, 1), (2,), (3,)]
    path = model_dir("mlp", 1)
    predictors = [runtime.load_model(path) for _ in range(5)]
    assert [p.group for p in predictors] == [0, 1, 2, 0, 1]
    assert [p.name for p in predictors] == ["mlp", "mlp#2", "mlp#3", "mlp#4", "mlp#5"]
    assert predictors[0].feed_tensors["input"].shape == (-1, 16)
    assert predictors[0].fetch_tensors["output"].dtype == "float32"
    assert "group 0: cores 0,1; group 1: core 2" in runtime.describe_layout()


def test_model_compiled_for_more_cores_than_its_group(
    runtime_factory: Factory, model_dir: ModelDir
) -> None:
    runtime = runtime_factory(NEURONCORE_GROUP_SIZES="2,1")
    runtime.load_model(model_dir("mlp", 2))  # group 0 has 2 cores: fits
    with pytest.raises(ModelDoesNotFitError) as info:
        runtime.load_model(model_dir("mlp", 2))  # group 1 has 1 core
    assert "compiled for 2 NeuronCores" in str(info.value)
    assert "Group 1 has only 1" in str(info.value)


def test_same_input_is_bit_identical_on_every_group_and_pipeline(
    runtime_factory: Factory, model_dir: ModelDir
) -> None:
    runtime = runtime_factory(NEURONCORE_GROUP_SIZES="2,1,1")
    pipelined = runtime.load_model(model_dir("resnet", 2))
    singles = [runtime.load_model(model_dir("resnet", 1)) for _ in range(2)]
    x = _image()
    outputs = [p({"input": x})["output"] for p in (pipelined, *singles)]
    for out in outputs[1:]:
        np.testing.assert_array_equal(out, outputs[0])
    np.testing.assert_allclose(outputs[0], _reference(model_dir("resnet", 1), x), rtol=1e-5)
    assert outputs[0].shape == (2, 10)
    np.testing.assert_allclose(outputs[0].sum(axis=1), 1.0, rtol=1e-5)


def test_batches_of_any_size(runtime_factory: Factory, model_dir: ModelDir) -> None:
    runtime = runtime_factory(NEURONCORE_GROUP_SIZES="2")
    predictor = runtime.load_model(model_dir("resnet", 2))
    for batch in (1, 9, 3):
        x = _image(batch, seed=batch)
        out = predictor({"input": x})["output"]
        np.testing.assert_allclose(out, _reference(model_dir("resnet", 2), x), rtol=1e-5)


def test_calls_from_many_threads(runtime_factory: Factory, model_dir: ModelDir) -> None:
    runtime = runtime_factory(NEURONCORE_GROUP_SIZES="1,2")
    predictors = [runtime.load_model(model_dir("mlp", 1)), runtime.load_model(model_dir("mlp", 2))]
    inputs = [np.full((2, 16), i / 10, dtype=np.float32) for i in range(12)]
    expected = [_reference(model_dir("mlp", 1), x) for x in inputs]

    def call(i: int) -> np.ndarray:
        return predictors[i % 2]({"input": inputs[i % 12]})["output"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(call, range(96)))
    for i, out in enumerate(results):
        np.testing.assert_allclose(out, expected[i % 12], rtol=1e-5)
    stats = runtime.stats()
    assert [g.requests for g in stats.groups] == [48, 48]
    assert all(seconds > 0 for seconds in stats.core_busy_seconds.values())
    assert sorted(stats.core_busy_seconds) == [0, 1, 2]


@pytest.mark.parametrize(
    ("feeds", "message"),
    [
        ({"x": np.zeros((1, 16), np.float32)}, "takes feeds ['input'], got ['x']"),
        ({"input": np.zeros((1, 16), np.float64)}, "must be float32, got float64"),
        ({"input": np.zeros((1, 15), np.float32)}, "must have shape [-1, 16]"),
        ({"input": np.zeros((16,), np.float32)}, "got [16]"),
        ({"input": np.zeros((0, 16), np.float32)}, "batch size >= 1"),
    ],
    ids=["wrong-name", "wrong-dtype", "wrong-width", "no-batch-dim", "empty-batch"],
)
def test_invalid_feeds_are_refused(
    runtime_factory: Factory, model_dir: ModelDir, feeds: dict[str, np.ndarray], message: str
) -> None:
    runtime = runtime_factory(NEURONCORE_GROUP_SIZES="1")
    predictor = runtime.load_model(model_dir("mlp", 1))
    with pytest.raises(InvalidInputError) as info:
        predictor(feeds)
    assert message in str(info.value)


def test_models_sharing_a_group_context_switch(
    runtime_factory: Factory, model_dir: ModelDir
) -> None:
    runtime = runtime_factory(NEURONCORE_GROUP_SIZES="1", NEURON_SIM_CORE_MEMORY_MB="0")
    first = runtime.load_model(model_dir("mlp", 1), name="a")
    second = runtime.load_model(model_dir("mlp", 1, seed=1), name="b")
    assert first.group == second.group == 0
    x = np.ones((1, 16), np.float32)
    out_a = first({"input": x})["output"]
    assert runtime.stats().groups[0].switches == 0  # "a" was made resident at load time
    out_b = second({"input": x})["output"]
    again = first({"input": x})["output"]
    group = runtime.stats().groups[0]
    assert group.switches == 2
    assert group.switch_seconds > 0
    assert group.resident_model == "a"
    np.testing.assert_array_equal(out_a, again)
    assert not np.array_equal(out_a, out_b)  # different seeds, different weights


def test_a_failed_swap_fails_that_models_requests_only(
    runtime_factory: Factory, model_dir: ModelDir, tmp_path: Path
) -> None:
    runtime = runtime_factory(NEURONCORE_GROUP_SIZES="1", NEURON_SIM_CORE_MEMORY_MB="0")
    doomed = tmp_path / "doomed"
    shutil.copytree(model_dir("mlp", 1), doomed)
    good = runtime.load_model(model_dir("mlp", 1))
    bad = runtime.load_model(doomed)  # verified now, swapped in on its first request
    (doomed / "weights.bin").unlink()
    x = np.ones((1, 16), np.float32)
    for _ in range(2):  # the second call tries the swap again and fails the same way
        with pytest.raises(ModelLoadError, match=r"weights\.bin"):
            bad({"input": x})
        assert good({"input": x})["output"].shape == (1, 5)


def test_models_that_fit_in_core_memory_do_not_switch(
    runtime_factory: Factory, model_dir: ModelDir
) -> None:
    runtime = runtime_factory(NEURONCORE_GROUP_SIZES="1")  # 8 MiB holds both tiny models
    first = runtime.load_model(model_dir("mlp", 1))
    second = runtime.load_model(model_dir("mlp", 1))
    x = np.ones((1, 16), np.float32)
    for _ in range(3):
        first({"input": x})
        second({"input": x})
    assert runtime.stats().groups[0].switches == 0


def _interleaved_switches(runtime: NeuronRuntime, path: Path) -> tuple[int, int]:
    predictors = [runtime.load_model(path), runtime.load_model(path)]
    x = np.ones((4, 16), np.float32)
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda i: predictors[i % 2]({"input": x}), range(96)))
    assert len(results) == 96
    group = runtime.stats().groups[0]
    return group.switches, group.requests


def test_switch_aware_scheduler_switches_less_than_fifo(
    runtime_factory: Factory, model_dir: ModelDir
) -> None:
    env = {"NEURONCORE_GROUP_SIZES": "1", "NEURON_SIM_CORE_MEMORY_MB": "0"}
    aware = runtime_factory(NEURON_RT_VISIBLE_CORES="0", NEURON_SIM_SCHEDULER="switch-aware",
                            NEURON_SIM_MAX_STREAK="8", **env)  # fmt: skip
    fifo = runtime_factory(NEURON_RT_VISIBLE_CORES="1", NEURON_SIM_SCHEDULER="fifo", **env)
    aware_switches, aware_requests = _interleaved_switches(aware, model_dir("mlp", 1))
    fifo_switches, fifo_requests = _interleaved_switches(fifo, model_dir("mlp", 1))
    assert aware_requests == fifo_requests == 96
    assert aware_switches < fifo_switches


def test_each_core_is_its_own_single_threaded_worker_process(
    runtime_factory: Factory, model_dir: ModelDir
) -> None:
    runtime = runtime_factory(NEURONCORE_GROUP_SIZES="2,1")
    runtime.load_model(model_dir("mlp", 2))
    runtime.load_model(model_dir("mlp", 1))
    pids = runtime.worker_pids()
    assert len(set(pids)) == 3 and os.getpid() not in pids
    for pid in pids:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert b"OPENBLAS_NUM_THREADS=1" in environ
        assert b"OMP_NUM_THREADS=1" in environ


def test_close_stops_workers_and_releases_cores(
    runtime_factory: Factory, model_dir: ModelDir, node_env: dict[str, str]
) -> None:
    runtime = runtime_factory(NEURONCORE_GROUP_SIZES="2,2")
    predictor = runtime.load_model(model_dir("mlp", 2))
    pids = runtime.worker_pids()
    assert len(pids) == 2  # group 1 was never used: no workers started for it
    runtime.close()
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
    with pytest.raises(RuntimeClosedError):
        predictor({"input": np.ones((1, 16), np.float32)})
    with pytest.raises(RuntimeClosedError):
        runtime.load_model(model_dir("mlp", 2))
    with NeuronRuntime.from_env({**node_env, "NEURONCORE_GROUP_SIZES": "4"}):
        pass


def _until_served(predictor: Predictor, x: np.ndarray, limit_s: float = 30.0) -> np.ndarray:
    """Call until a call succeeds; calls in the pipeline when a worker died fail first."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            return predictor({"input": x})["output"]
        except WorkerLostError:
            if time.monotonic() > deadline:
                raise


def _exited(pids: list[int]) -> bool:
    """True when none of the processes exists any more (reaped, not left as zombies)."""
    return not any(Path(f"/proc/{pid}").exists() for pid in pids)


@pytest.mark.parametrize("victim_stage", [0, 1], ids=["first-stage", "last-stage"])
def test_a_killed_worker_is_replaced_and_its_models_reloaded(
    runtime_factory: Factory, model_dir: ModelDir, victim_stage: int
) -> None:
    runtime = runtime_factory(NEURONCORE_GROUP_SIZES="2,1")
    pipelined = runtime.load_model(model_dir("mlp", 2))  # group 0: two stages on cores 0 and 1
    other = runtime.load_model(model_dir("mlp", 1))  # group 1
    beside = runtime.load_model(model_dir("mlp", 1, seed=3))  # group 0 again, resident too
    x = np.random.default_rng(1).standard_normal((3, 16), dtype=np.float32)
    before = {p.name: p({"input": x})["output"] for p in (pipelined, other, beside)}
    old = runtime.group_worker_pids(0)
    untouched = runtime.group_worker_pids(1)

    os.kill(old[victim_stage], signal.SIGKILL)

    assert np.array_equal(_until_served(pipelined, x), before[pipelined.name])
    assert np.array_equal(_until_served(beside, x), before[beside.name])
    new = runtime.group_worker_pids(0)
    assert len(new) == 2 and not set(new) & set(old)
    assert _exited(old)  # the survivor of the old pair was stopped, and both were reaped
    assert runtime.group_worker_pids(1) == untouched
    assert np.array_equal(other({"input": x})["output"], before[other.name])
    stats = runtime.stats().groups
    assert (stats[0].restarts, stats[1].restarts) == (1, 0)
    assert stats[0].switches == 0  # reloading the resident models is not a context switch
    assert runtime.broken_groups() == {}
    assert runtime.load_model(model_dir("mlp", 1)).group == 1  # loading still works


def test_requests_around_a_worker_death_all_end(
    runtime_factory: Factory, model_dir: ModelDir
) -> None:
    runtime = runtime_factory(NEURONCORE_GROUP_SIZES="1")
    predictor = runtime.load_model(model_dir("mlp", 1))
    x = np.ones((64, 16), np.float32)
    expected = predictor({"input": x})["output"]
    futures = [predictor.submit({"input": x}) for _ in range(200)]
    os.kill(runtime.group_worker_pids(0)[0], signal.SIGKILL)
    futures += [predictor.submit({"input": x}) for _ in range(50)]
    served = lost = 0
    for future in futures:
        try:
            output = future.result(timeout=60)
        except WorkerLostError as exc:
            assert "exit code -9" in str(exc) and "retry" in str(exc)
            lost += 1
        else:
            assert np.array_equal(output["output"], expected)
            served += 1
    assert served + lost == len(futures)
    assert served >= 50  # at least everything submitted after the death
    assert np.array_equal(_until_served(predictor, x), expected)


def test_a_group_whose_workers_keep_dying_gives_up(
    runtime_factory: Factory, model_dir: ModelDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(neuron_runtime.group, "RESTART_LIMIT", 2)
    runtime = runtime_factory(NEURONCORE_GROUP_SIZES="1,1")
    victim = runtime.load_model(model_dir("mlp", 1))
    survivor = runtime.load_model(model_dir("mlp", 1))
    x = np.ones((1, 16), np.float32)
    for death in range(3):
        pids = runtime.group_worker_pids(0)
        os.kill(pids[0], signal.SIGKILL)
        if death < 2:
            _until_served(victim, x)
            assert runtime.group_worker_pids(0) != pids
    with pytest.raises(RuntimeClosedError, match="died 3 times within 60 s") as info:
        for _ in range(1000):  # until the third death has been noticed
            _until_served(victim, x)
            time.sleep(0.01)
    assert "stopped restarting them" in str(info.value)
    assert list(runtime.broken_groups()) == [0]
    assert "died 3 times" in runtime.broken_groups()[0]
    assert runtime.group_worker_pids(0) == []
    assert survivor({"input": x})["output"].shape == (1, 5)
    with pytest.raises(RuntimeClosedError, match="stopped restarting"):
        runtime.load_model(model_dir("mlp", 1))  # the third load goes to the broken group 0
    assert runtime.predictors == [victim, survivor]


def test_workers_exit_when_their_process_is_killed(
    node_env: dict[str, str], model_dir: ModelDir
) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        from neuron_runtime import NeuronRuntime
        runtime = NeuronRuntime.from_env()
        runtime.load_model({str(model_dir("mlp", 2))!r})
        print(*runtime.worker_pids(), flush=True)
        time.sleep(600)
        """
    )
    env = {**os.environ, **node_env, "NEURONCORE_GROUP_SIZES": "2"}
    with subprocess.Popen(
        [sys.executable, "-P", "-c", script], env=env, stdout=subprocess.PIPE, text=True
    ) as parent:
        assert parent.stdout is not None
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 30  # liveness wait, not a performance check
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
