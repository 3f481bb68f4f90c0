"""The command line: every flag with its env var, clear refusals, and the polling loop."""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from neuron_device_plugin.simulated_backend import SimulatedBackend
from neuron_dra_driver.cli import Driver, build_parser, main, make_driver, make_kubelet_server
from neuron_dra_driver.layout import DRIVER_NAME, NodeShape
from neuron_dra_driver.publisher import Publisher, PublishError

from .test_kubelet_plugin import FakeReader
from .test_publisher import FakeSliceApi


def _flags(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.dest != "help"]


def test_every_flag_has_its_own_env_var_in_help() -> None:
    parser = build_parser(environ={})
    env_vars = []
    for action in _flags(parser):
        assert action.help is not None
        assert "[env NEURON_DRA_" in action.help, action.option_strings
        env_vars.append(action.help.split("[env ", 1)[1].split(",")[0])
    assert len(env_vars) == len(set(env_vars)) == len(_flags(parser))
    help_text = parser.format_help()
    for action in _flags(parser):
        assert action.option_strings[0] in help_text


@pytest.mark.parametrize(
    ("environ", "argv", "dest", "expected"),
    [
        ({"NEURON_DRA_NODE_NAME": "kwok-0"}, [], "node_name", "kwok-0"),
        ({"NEURON_DRA_NODE_NAME": "kwok-0"}, ["--node-name", "n"], "node_name", "n"),
        ({"NEURON_DRA_POLL_SECONDS": "0.5"}, [], "poll_seconds", 0.5),
        ({"NEURON_DRA_ONCE": "true"}, [], "once", True),
        ({"NEURON_DRA_CLEANUP": "0"}, [], "cleanup", False),
        ({}, ["--cleanup"], "cleanup", True),
        ({"NEURON_DRA_BACKEND": "simulated"}, [], "backend", "simulated"),
        ({"NEURON_DRA_DEVICES": "4"}, [], "devices", 4),
    ],
    ids=[
        "env",
        "flag-wins",
        "float-env",
        "switch-env",
        "switch-env-false",
        "switch",
        "choice",
        "int",
    ],
)
def test_flags_and_env_vars(
    environ: dict[str, str], argv: list[str], dest: str, expected: object
) -> None:
    assert getattr(build_parser(environ=environ).parse_args(argv), dest) == expected


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"NEURON_DRA_POLL_SECONDS": "0"}, "NEURON_DRA_POLL_SECONDS='0' is not valid"),
        ({"NEURON_DRA_ONCE": "maybe"}, "NEURON_DRA_ONCE='maybe' is not valid for --once"),
        ({"NEURON_DRA_BACKEND": "pci"}, "choose one of: sysfs, simulated"),
    ],
    ids=["zero-poll", "bad-switch", "bad-choice"],
)
def test_bad_env_values_name_the_variable(
    environ: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as err:
        build_parser(environ=environ).parse_args([])
    assert err.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "--node-name (env NEURON_DRA_NODE_NAME) is required"),
        (["--node-name", "n", "--once", "--cleanup"], "--once and --cleanup exclude each other"),
    ],
    ids=["no-node", "once-and-cleanup"],
)
def test_usage_errors_exit_2_with_the_reason(
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NEURON_DRA_NODE_NAME", raising=False)
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_make_driver_takes_the_instance_type_from_the_node_label() -> None:
    args = build_parser(environ={}).parse_args(
        [
            "--node-name",
            "kwok-0",
            "--backend",
            "simulated",
            "--devices",
            "2",
            "--cores-per-device",
            "2",
        ]
    )
    node = {"uid": "u-1", "labels": {"node.kubernetes.io/instance-type": "inf2.xlarge"}}
    driver = make_driver(args, FakeSliceApi(), node)
    assert driver.publisher.shape == NodeShape("inf2.xlarge", 2, 2)
    assert driver.publisher.owner == {"name": "kwok-0", "uid": "u-1"}


class _FlakyApi(FakeSliceApi):
    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def create_slice(self, body: Mapping[str, Any]) -> None:
        if self.failures:
            self.failures -= 1
            raise PublishError("create: the API server answered 503")
        super().create_slice(body)


def test_run_retries_a_failed_publication_and_stops_when_asked() -> None:
    backend = SimulatedBackend(4, 4)
    api = _FlakyApi(failures=2)
    driver = Driver(backend, backend.discover(), Publisher(api, "kwok-0", NodeShape("x", 4, 4)))
    stop = threading.Event()
    worker = threading.Thread(target=driver.run, args=(stop, 0.01))
    worker.start()
    for _ in range(500):
        if len(api.pool("kwok-0")) == 4:
            break
        stop.wait(0.01)
    stop.set()
    worker.join(timeout=5)
    assert not worker.is_alive()
    assert len(api.pool("kwok-0")) == 4


def test_the_docs_list_every_flag_and_env_var() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "dra.md").read_text()
    for action in _flags(build_parser(environ={})):
        assert action.help is not None
        env_var = action.help.split("[env ", 1)[1].split(",")[0]
        assert f"| `{action.option_strings[0]}` | `{env_var}` |" in docs, action.option_strings


def test_the_kubelet_plugin_flags_build_a_server_on_the_given_folders(tmp_path: Path) -> None:
    short = Path(tempfile.mkdtemp(prefix="dra-", dir="/tmp"))  # unix socket paths stay short
    try:
        node = ["--node-name", "kwok-0", "--backend", "simulated", "--instance-type", "inf1.xlarge"]
        folders = ["--plugin-dir", str(short / "p"), "--registry-dir", str(short / "r")]
        cdi = ["--cdi-dir", str(tmp_path / "cdi")]
        args = build_parser(environ={}).parse_args([*node, "--kubelet-plugin", *folders, *cdi])
        assert args.kubelet_plugin is True
        driver = make_driver(args, FakeSliceApi(), {"uid": "u", "labels": {}})
        server = make_kubelet_server(args, driver, FakeReader())
        server.start()
        try:
            assert server.plugin_socket == short / "p" / "dra.sock"
            assert server.registry_socket == short / "r" / f"{DRIVER_NAME}-reg.sock"
            assert server.registry_socket.exists()
            assert server.plugin.checkpoint.path == short / "p" / "checkpoint.json"
            assert server.plugin.cdi_dir == tmp_path / "cdi"
            assert server.plugin.shape == NodeShape("inf1.xlarge", 1, 4)
        finally:
            server.stop()
    finally:
        shutil.rmtree(short, ignore_errors=True)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--dev-root=/host/dev", "--host-dev-root=/dev"], Path("/dev")),
        (["--dev-root=/host/dev"], Path("/host/dev")),
    ],
    ids=["in-a-pod", "on-the-host"],
)
def test_host_dev_root_is_where_cdi_device_paths_point(argv: list[str], expected: Path) -> None:
    from neuron_device_plugin.sysfs_backend import SysfsBackend
    from neuron_dra_driver.cli import build_backend

    backend = build_backend(build_parser(environ={}).parse_args(["--node-name=n", *argv]))
    assert isinstance(backend, SysfsBackend)
    assert backend.host_dev_root == expected
