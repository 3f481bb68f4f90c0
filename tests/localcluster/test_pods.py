"""What the emulated kubelet makes of a pod: requests, command, env, probes and status."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from neuron_localcluster import pods


@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        ({"limits": {"aws.amazon.com/neuroncore": "2"}}, {"aws.amazon.com/neuroncore": 2}),
        ({"requests": {"aws.amazon.com/neuron": 1}}, {"aws.amazon.com/neuron": 1}),
        ({"limits": {"cpu": "1", "aws.amazon.com/neuroncore": "0"}}, {}),
        ({}, {}),
    ],
    ids=["core-limit", "device-request", "zero-and-cpu-ignored", "none"],
)
def test_neuron_requests(resources: dict[str, Any], expected: dict[str, int]) -> None:
    assert pods.neuron_requests({"name": "c", "resources": resources}) == expected


def test_fractional_neuron_request_is_refused() -> None:
    with pytest.raises(pods.PodSpecError, match="whole numbers"):
        pods.neuron_requests(
            {"name": "c", "resources": {"limits": {"aws.amazon.com/neuron": "0.5"}}}
        )


def _exe(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_resolve_command_prefers_the_venv(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    tool = _exe(venv, "neuron-runtime")
    _exe(tmp_path / "other", "neuron-runtime")
    container = {"name": "c", "command": ["neuron-runtime"], "args": ["serve", 3]}
    argv = pods.resolve_command(container, [venv], str(tmp_path / "other"))
    assert argv == [str(tool), "serve", "3"]


@pytest.mark.parametrize(
    ("container", "match"),
    [({"name": "c"}, "has no command"), ({"name": "c", "command": ["nope-xyz"]}, "not in")],
    ids=["no-command", "unknown-program"],
)
def test_resolve_command_errors(tmp_path: Path, container: dict[str, Any], match: str) -> None:
    with pytest.raises(pods.PodSpecError, match=match):
        pods.resolve_command(container, [tmp_path], str(tmp_path))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("mlp=/models/mlp", "mlp=/host/models/mlp"),
        ("a=/models/a,b=/data/b,c=/models", "a=/host/models/a,b=/data/b,c=/host/models"),
        ("/models2/x", "/models2/x"),
        ("plain", "plain"),
    ],
    ids=["one-pair", "several", "prefix-is-not-a-mount", "no-path"],
)
def test_translate_path(value: str, expected: str) -> None:
    assert pods.translate_path(value, [("/models", "/host/models")]) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a=/models/a,b=/data/b", "a=/host/models/a,b=/data/b"),
        (" a = /models/a ,", "a=/host/models/a"),
        (";a=/models/a,v2;b=/models/b", ";a=/host/models/a,v2;b=/host/models/b"),
        # One path that holds ',k=/models/y': only its start is a mount.
        (";a=/models/x,k=/models/y", ";a=/host/models/x,k=/models/y"),
        ("not a pair", "not a pair"),
    ],
    ids=["plain", "plain-spaces", "separated", "comma-then-mount-in-one-path", "refused-as-is"],
)
def test_translate_models_rewrites_each_models_path(value: str, expected: str) -> None:
    assert pods.translate_models(value, [("/models", "/host/models")]) == expected


def test_container_env_merges_pod_env_allocation_and_address(tmp_path: Path) -> None:
    pod = {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"app": "x"}},
        "spec": {"volumes": [{"name": "m", "hostPath": {"path": "/srv/models"}}]},
    }
    container = {
        "name": "c",
        "env": [
            {"name": "NEURON_MODELS", "value": "mlp=/models/mlp"},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "NEURON_RT_VISIBLE_CORES", "value": "overridden-by-allocate"},
        ],
        "volumeMounts": [{"name": "m", "mountPath": "/models"}],
    }
    mounts = pods.mount_map(container, pods.volume_paths(pod, tmp_path))
    env = pods.container_env(
        pod,
        container,
        allocated={"NEURON_RT_VISIBLE_CORES": "4-5"},
        pod_ip="198.18.1.10",
        node="n1",
        base={"PATH": "/bin"},
        mounts=mounts,
    )
    assert env == {
        "PATH": "/bin",
        "NEURON_MODELS": "mlp=/srv/models/mlp",
        "POD": "p",
        "APP": "x",
        "NEURON_RT_VISIBLE_CORES": "4-5",
        "NEURON_SERVE_HOST": "198.18.1.10",
    }


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            [{"name": "PORT", "value": "8000"}, {"name": "URL", "value": "http://x:$(PORT)/"}],
            {"PORT": "8000", "URL": "http://x:8000/"},
        ),
        (
            [{"name": "URL", "value": "http://x:$(PORT)/"}, {"name": "PORT", "value": "8000"}],
            {"URL": "http://x:$(PORT)/", "PORT": "8000"},
        ),
        ([{"name": "LITERAL", "value": "$$(PORT)"}], {"LITERAL": "$(PORT)"}),
        (
            [
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "ID", "value": "$(POD)-1"},
            ],
            {"POD": "p", "ID": "p-1"},
        ),
        (
            [{"name": "DIR", "value": "/models"}, {"name": "M", "value": "m=$(DIR)/m"}],
            {"DIR": "/srv/models", "M": "m=/srv/models/m"},
        ),
        ([{"name": "H", "value": "$(HOME)"}], {"H": "$(HOME)"}),
    ],
    ids=[
        "earlier-entry",
        "later-entry-stays",
        "escaped",
        "field-ref",
        "mount-path-rewritten-after-expansion",
        "base-env-is-not-the-containers",
    ],
)
def test_container_env_expands_references_to_earlier_entries(
    env: list[dict[str, Any]], expected: dict[str, str]
) -> None:
    pod = {"metadata": {"name": "p"}}
    container = {"name": "c", "env": env}
    got = pods.container_env(
        pod,
        container,
        allocated={},
        pod_ip="198.18.1.10",
        node="n1",
        base={"HOME": "/home/pod"},
        mounts=[("/models", "/srv/models")],
    )
    assert {k: v for k, v in got.items() if k in expected} == expected


def test_resolve_command_expands_command_and_args(tmp_path: Path) -> None:
    tool = _exe(tmp_path, "serve")
    container = {
        "name": "c",
        "command": ["$(TOOL)"],
        "args": ["--port=$(PORT)", "$$(PORT)", "$(UNSET)"],
    }
    argv = pods.resolve_command(container, [tmp_path], None, {"TOOL": "serve", "PORT": "8000"})
    assert argv == [str(tool), "--port=8000", "$(PORT)", "$(UNSET)"]


def test_unsupported_value_from_is_named() -> None:
    container = {"name": "c", "env": [{"name": "S", "valueFrom": {"secretKeyRef": {}}}]}
    with pytest.raises(pods.PodSpecError, match="'S'"):
        pods.container_env({}, container, allocated={}, pod_ip="1", node="n", base={})


@pytest.mark.parametrize(
    ("container", "expected"),
    [
        ({}, pods.ReadinessCheck(None)),
        (
            {"readinessProbe": {"httpGet": {"path": "/r", "port": 8000}, "periodSeconds": 2}},
            pods.ReadinessCheck(8000, "/r", 2.0),
        ),
        (
            {
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"port": "http"}},
            },
            pods.ReadinessCheck(8080, "/", 1.0),
        ),
    ],
    ids=["no-probe", "numeric-port", "named-port"],
)
def test_readiness_check(container: dict[str, Any], expected: pods.ReadinessCheck) -> None:
    assert pods.readiness_check({"name": "c", **container}) == expected


@pytest.mark.parametrize(
    ("ready", "flag"), [(True, "True"), (False, "False")], ids=["ready", "not-ready"]
)
def test_pod_status_conditions_follow_readiness(ready: bool, flag: str) -> None:
    status = pods.pod_status(
        phase="Running", pod_ip="198.18.1.10", ready=ready, started_at="t", containers=[]
    )
    conds = {c["type"]: c["status"] for c in status["conditions"]}
    assert conds == {
        "PodScheduled": "True",
        "Initialized": "True",
        "ContainersReady": flag,
        "Ready": flag,
    }
    assert status["podIPs"] == [{"ip": "198.18.1.10"}]


def test_container_status_states() -> None:
    c = {"name": "c", "image": "i"}
    running = pods.container_status(c, running_since="t0", ready=True, restarts=0, pid=7)
    assert running["state"] == {"running": {"startedAt": "t0"}}
    assert running["containerID"] == "local://7"
    crashed = pods.container_status(
        c, running_since=None, ready=False, restarts=2, pid=None, waiting_reason="CrashLoopBackOff"
    )
    assert crashed["state"] == {"waiting": {"reason": "CrashLoopBackOff"}}
    done = pods.container_status(
        c, running_since=None, ready=False, restarts=0, pid=None, exit_code=3
    )
    assert done["state"]["terminated"]["exitCode"] == 3
    assert done["state"]["terminated"]["reason"] == "Error"


def test_loopback_pool_hands_out_distinct_addresses_and_reuses_last() -> None:
    pool = pods.LoopbackPool(first=10, last=12)
    got = [pool.take(), pool.take()]
    assert got == ["127.0.0.10", "127.0.0.11"]
    pool.give_back("127.0.0.10")
    assert pool.take() == "127.0.0.12"
    assert pool.take() == "127.0.0.10"
    with pytest.raises(pods.PodSpecError, match="no loopback address"):
        pool.take()


@pytest.mark.parametrize(
    ("policy", "code", "restart"),
    [
        ("Always", 0, True),
        ("Always", 1, True),
        ("OnFailure", 0, False),
        ("OnFailure", 2, True),
        ("Never", 0, False),
        ("Never", 3, False),
    ],
    ids=["always-ok", "always-fail", "onfailure-ok", "onfailure-fail", "never-ok", "never-fail"],
)
def test_should_restart(policy: str, code: int, restart: bool) -> None:
    assert pods.should_restart(policy, code) is restart
