"""The neuron-localcluster command: help, bad input, and commands that need no cluster."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from neuron_localcluster import cli
from neuron_localcluster.cluster import ClusterError, LocalCluster, _wipe
from neuron_localcluster.layout import Ports


@pytest.mark.parametrize(
    "needle",
    [
        "NEURON_GROUPS_CLUSTER_DIR",
        "NEURON_GROUPS_KWOK_NODES",
        "NEURON_GROUPS_EMULATED_NODES",
        "KUBEBUILDER_ASSETS",
        "XDG_CACHE_HOME",
        "NEURON_GROUPS_POD_NETWORK",
        "--state-dir",
    ],
)
def test_help_documents_flags_and_env(capsys: pytest.CaptureFixture[str], needle: str) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    assert needle in capsys.readouterr().out


def test_up_help_documents_node_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["up", "--help"])
    out = capsys.readouterr().out
    assert "--kwok-nodes" in out and "--emulated-nodes" in out and "--recreate" in out


def test_down_without_a_cluster_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--state-dir", str(tmp_path), "down"]) == 0
    assert "nothing" in capsys.readouterr().out


def test_status_without_a_cluster_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--state-dir", str(tmp_path), "status"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["running"] is False
    assert "cluster-up" in report["reason"]


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--kwok-nodes", "0xinf1.6xlarge", "COUNTxINSTANCE_TYPE"),
        ("--emulated-nodes", "m5.large", "not a known Neuron instance type"),
    ],
    ids=["bad-count", "unknown-type"],
)
def test_bad_node_list_fails_before_starting_anything(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, flag: str, value: str, message: str
) -> None:
    assert cli.main(["--state-dir", str(tmp_path / "s"), "up", flag, value]) == 1
    assert message in caplog.text
    assert not (tmp_path / "s").exists()


def test_a_folder_that_is_not_a_cluster_is_never_wiped(tmp_path: Path) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    with pytest.raises(ClusterError, match="refusing to wipe"):
        _wipe(tmp_path)
    assert precious.read_text() == "keep me"


def test_attach_names_the_missing_state(tmp_path: Path) -> None:
    with pytest.raises(ClusterError, match="make cluster-up"):
        LocalCluster.attach(tmp_path)


def _cluster_with_fake_kubectl(tmp_path: Path, script: str) -> LocalCluster:
    fake = tmp_path / "kubectl"
    fake.write_text(f"#!/bin/sh\n{script}\n")
    fake.chmod(0o755)
    ports = Ports(1, 2, 3, 4, 5, 6)
    return LocalCluster(tmp_path, "https://127.0.0.1:1", ports, kubectl_path=fake)


def test_stalled_kubectl_is_killed_and_named(tmp_path: Path) -> None:
    cluster = _cluster_with_fake_kubectl(tmp_path, "exec sleep 30")
    with pytest.raises(ClusterError, match=r"kubectl get nodes did not finish in 1s"):
        cluster.kubectl("get", "nodes", timeout=1.0)


def test_kubectl_failure_carries_stderr(tmp_path: Path) -> None:
    cluster = _cluster_with_fake_kubectl(tmp_path, 'echo "no such thing" >&2; exit 4')
    with pytest.raises(ClusterError, match=r"exit 4.*no such thing"):
        cluster.kubectl("get", "thing")
    assert cluster.kubectl("get", "thing", check=False).returncode == 4


def test_wait_for_retries_cluster_errors_then_names_what_it_waited_for(tmp_path: Path) -> None:
    cluster = _cluster_with_fake_kubectl(tmp_path, "exit 0")
    calls: list[int] = []

    def flaky() -> str | None:
        calls.append(1)
        if len(calls) < 2:
            raise ClusterError("stalled")
        return "done" if len(calls) >= 3 else None

    assert cluster.wait_for(flaky, 10, "flaky thing") == "done"
    with pytest.raises(TimeoutError, match="never-true thing"):
        cluster.wait_for(lambda: None, 0.1, "never-true thing")


@pytest.mark.parametrize(
    ("environ", "argv", "level"),
    [
        ({}, [], "info"),
        ({"NEURON_GROUPS_LOG_LEVEL": "DEBUG"}, [], "debug"),
        ({}, ["--log-level", "WARNING"], "warning"),
    ],
    ids=["default", "env-any-case", "flag-any-case"],
)
def test_log_level_from_flag_or_env(
    monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], argv: list[str], level: str
) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert cli.build_parser().parse_args([*argv, "status"]).log_level == level


@pytest.mark.parametrize(
    ("environ", "argv"),
    [({"NEURON_GROUPS_LOG_LEVEL": "bogus"}, []), ({}, ["--log-level", "bogus"])],
    ids=["env", "flag"],
)
def test_a_bad_log_level_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    environ: dict[str, str],
    argv: list[str],
) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as caught:
        cli.build_parser().parse_args([*argv, "status"])
    assert caught.value.code == 2
    assert "choose one of: debug, info, warning, error" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("environ", "argv", "seconds"),
    [
        ({}, [], 900.0),
        ({"NEURON_GROUPS_DEMO_TIMEOUT": "60"}, [], 60.0),
        ({}, ["--ready-timeout", "30"], 30.0),
    ],
    ids=["default", "env", "flag"],
)
def test_demo_ready_timeout_from_flag_or_env(
    monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], argv: list[str], seconds: float
) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert cli.build_parser().parse_args(["demo", *argv]).ready_timeout == seconds


def test_a_bad_demo_timeout_is_a_usage_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NEURON_GROUPS_DEMO_TIMEOUT", "soon")
    assert cli.build_parser().parse_args(["status"]).command == "status"  # only demo reads it
    with pytest.raises(SystemExit) as caught:
        cli.build_parser().parse_args(["demo"])
    assert caught.value.code == 2
    assert "NEURON_GROUPS_DEMO_TIMEOUT='soon' is not valid for --ready-timeout" in (
        capsys.readouterr().err
    )
