"""The command line: flags and their env vars, clear failures, and a real process under SIGTERM."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from neuron_device_plugin.cli import build_parser, pod_resources_socket
from neuron_device_plugin.plugin import socket_name
from neuron_localcluster.kubelet_emulator import KubeletEmulator


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.dest != "help"]


def test_every_flag_has_its_own_env_var_in_help() -> None:
    parser = build_parser(environ={})
    env_vars = []
    for action in _options(parser):
        assert action.help is not None
        assert "[env NEURON_DP_" in action.help, action.option_strings
        env_vars.append(action.help.split("[env ", 1)[1].split(",")[0])
    assert len(env_vars) == len(set(env_vars))
    help_text = parser.format_help()
    for action in _options(parser):
        assert action.option_strings[0] in help_text


@pytest.mark.parametrize(
    ("environ", "argv", "dest", "expected"),
    [
        ({}, [], "backend", "sysfs"),
        ({"NEURON_DP_BACKEND": "simulated"}, [], "backend", "simulated"),
        ({"NEURON_DP_BACKEND": "simulated"}, ["--backend", "sysfs"], "backend", "sysfs"),
        ({"NEURON_DP_METRICS_PORT": "0"}, [], "metrics_port", 0),
        ({"NEURON_DP_LOG_LEVEL": "INFO"}, [], "log_level", "info"),
        ({}, ["--log-format", "JSON"], "log_format", "json"),
        ({"NEURON_DP_DEVICES": "12"}, [], "devices", 12),
        ({}, [], "device_plugin_dir", "/var/lib/kubelet/device-plugins"),
        ({}, [], "resources", "both"),
        ({"NEURON_DP_RESOURCES": "neuroncore"}, [], "resources", "neuroncore"),
        ({}, ["--resources", "neuron"], "resources", "neuron"),
        ({}, [], "pod_resources_socket", "/var/lib/kubelet/pod-resources/kubelet.sock"),
        ({"NEURON_DP_POD_RESOURCES_SOCKET": "none"}, [], "pod_resources_socket", "none"),
    ],
    ids=[
        "default",
        "env",
        "flag-wins",
        "int-env",
        "level-any-case",
        "format-any-case",
        "devices-env",
        "kubelet-default-dir",
        "resources-default-both",
        "resources-env",
        "resources-flag",
        "pod-resources-kubelet-default",
        "pod-resources-env",
    ],
)
def test_flags_and_env_vars(
    environ: dict[str, str], argv: list[str], dest: str, expected: object
) -> None:
    assert getattr(build_parser(environ=environ).parse_args(argv), dest) == expected


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"NEURON_DP_METRICS_PORT": "ninety"}, "NEURON_DP_METRICS_PORT='ninety'"),
        ({"NEURON_DP_BACKEND": "gpu"}, "choose one of: sysfs, simulated"),
        ({"NEURON_DP_METRICS_PORT": "70000"}, "NEURON_DP_METRICS_PORT='70000'"),
        ({"NEURON_DP_RESOURCES": "all"}, "choose one of: both, neuroncore, neuron"),
    ],
    ids=["not-an-int", "not-a-choice", "port-out-of-range", "resources-not-a-choice"],
)
def test_bad_env_values_name_the_variable(
    environ: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as err:
        build_parser(environ=environ).parse_args([])
    assert err.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("value", ["70000", "-1"], ids=["too-high", "negative"])
def test_a_port_out_of_range_is_a_usage_error(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as err:
        build_parser(environ={}).parse_args(["--metrics-port", value])
    assert err.value.code == 2
    assert f"argument --metrics-port: invalid port value: '{value}'" in capsys.readouterr().err


def test_a_busy_metrics_port_fails_clearly_and_removes_the_sockets(sock_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        result = _run_cli(
            "--device-plugin-dir", str(sock_dir),
            "--backend", "simulated", "--instance-type", "inf1.xlarge",
            "--metrics-address", "127.0.0.1", "--metrics-port", port,
        )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(sock_dir.iterdir()) == []


def _run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "neuron_device_plugin.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONSAFEPATH": "1", **(env or {})},
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--backend", "sysfs", "--sysfs-root", "{dir}/none"], 1, "{dir}/none is not a directory"),
        (["--backend", "simulated"], 2, "needs --instance-type"),
        (["--backend", "simulated", "--instance-type", "p4d.24xlarge"], 2, "'p4d.24xlarge'"),
        (
            [
                "--backend",
                "simulated",
                "--instance-type",
                "inf1.xlarge",
                "--core-resource-name",
                "x",
            ],
            2,
            "--core-resource-name 'x' is not an extended resource name",
        ),
        (
            [
                "--backend",
                "simulated",
                "--instance-type",
                "inf1.xlarge",
                "--device-plugin-dir",
                "{dir}/missing",
            ],
            1,
            "device-plugin directory {dir}/missing does not exist",
        ),
    ],
    ids=["sysfs-finds-nothing", "simulated-no-size", "unknown-type", "bad-resource", "no-dir"],
)
def test_cli_failures_explain_themselves(
    sock_dir: Path, args: list[str], code: int, message: str
) -> None:
    result = _run_cli(
        "--device-plugin-dir",
        str(sock_dir),
        *[a.format(dir=sock_dir) for a in args],
        "--metrics-port",
        "0",
    )
    assert result.returncode == code, result.stderr
    assert message.format(dir=sock_dir) in result.stderr


def test_process_registers_then_stops_on_sigterm_removing_its_sockets(sock_dir: Path) -> None:
    with KubeletEmulator(sock_dir) as kubelet:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "neuron_device_plugin.cli",
                "--metrics-port",
                "0",
                "--log-format",
                "json",
            ],
            env={
                **os.environ,
                "PYTHONSAFEPATH": "1",
                "NEURON_DP_BACKEND": "simulated",
                "NEURON_DP_INSTANCE_TYPE": "inf2.48xlarge",
                "NEURON_DP_DEVICE_PLUGIN_DIR": str(sock_dir),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            cores = kubelet.wait_for_registration("aws.amazon.com/neuroncore", timeout=30)
            assert len(cores.devices()) == 24
            devices = kubelet.wait_for_registration("aws.amazon.com/neuron", timeout=5)
            assert len(devices.devices()) == 12
            assert cores.allocate(["neuroncore-0022", "neuroncore-0023"]).envs == {
                "NEURON_RT_VISIBLE_CORES": "22-23"
            }
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=15)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert process.returncode == 0, stderr
    assert '"message": "received SIGTERM; shutting down"' in stderr
    for resource in ("aws.amazon.com/neuroncore", "aws.amazon.com/neuron"):
        assert not (sock_dir / socket_name(resource)).exists()


@pytest.mark.parametrize(
    ("value", "expected"),
    [("none", None), ("NONE", None), ("", None), ("/run/pr.sock", Path("/run/pr.sock"))],
    ids=["none", "none-any-case", "empty", "path"],
)
def test_pod_resources_socket_value(value: str, expected: Path | None) -> None:
    assert pod_resources_socket(value) == expected


@pytest.mark.parametrize(
    ("mode", "offered", "not_offered"),
    [
        ("neuroncore", "aws.amazon.com/neuroncore", "aws.amazon.com/neuron"),
        ("neuron", "aws.amazon.com/neuron", "aws.amazon.com/neuroncore"),
    ],
    ids=["cores-only", "devices-only"],
)
def test_one_resource_per_node_by_configuration(
    sock_dir: Path, mode: str, offered: str, not_offered: str
) -> None:
    with KubeletEmulator(sock_dir) as kubelet:
        process = subprocess.Popen(
            [sys.executable, "-m", "neuron_device_plugin.cli", "--metrics-port", "0"],
            env={
                **os.environ,
                "PYTHONSAFEPATH": "1",
                "NEURON_DP_BACKEND": "simulated",
                "NEURON_DP_INSTANCE_TYPE": "inf1.6xlarge",
                "NEURON_DP_DEVICE_PLUGIN_DIR": str(sock_dir),
                "NEURON_DP_RESOURCES": mode,
            },
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            kubelet.wait_for_registration(offered, timeout=30)
            assert set(kubelet.registrations) == {offered}
            assert not (sock_dir / socket_name(not_offered)).exists()
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=15)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert process.returncode == 0, stderr


def test_the_docs_list_every_flag_and_env_var() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "device-plugin.md").read_text()
    for action in _options(build_parser(environ={})):
        assert action.help is not None
        env_var = action.help.split("[env ", 1)[1].split(",")[0]
        assert f"| `{action.option_strings[0]}` | `{env_var}` |" in docs, action.option_strings


def test_process_stays_up_when_refused_saying_why_once(sock_dir: Path) -> None:
    log_path = sock_dir / "plugin.log"
    with (
        KubeletEmulator(sock_dir, refuse="this node takes no Neuron plugins"),
        log_path.open("w") as log_file,
    ):
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "neuron_device_plugin.cli",
                "--backend",
                "simulated",
                "--instance-type",
                "inf1.xlarge",
                "--device-plugin-dir",
                str(sock_dir),
                "--metrics-port",
                "0",
            ],
            env={**os.environ, "PYTHONSAFEPATH": "1"},
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
        try:
            deadline = time.monotonic() + 30
            while log_path.read_text().count("this node takes no Neuron plugins") < 2:
                assert process.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.05)
            # Retries back off from 0.2 s: a second later several more have been refused.
            time.sleep(1.0)
            assert process.poll() is None, "a refused registration must not end the plugin"
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=15)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    stderr = log_path.read_text()
    assert process.returncode == 0, stderr
    for resource in ("aws.amazon.com/neuroncore", "aws.amazon.com/neuron"):
        said = [
            line
            for line in stderr.splitlines()
            if f"Register of {resource} " in line and "this node takes no Neuron plugins" in line
        ]
        assert len(said) == 1, stderr
        assert "UNKNOWN: this node takes no Neuron plugins" in said[0]
    assert "Traceback" not in stderr
    assert not any(p.is_socket() for p in sock_dir.iterdir())
