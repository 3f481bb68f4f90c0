"""``--allocation`` of ``neuron-localcluster up|demo`` (the node agent's: test_node_agent.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from neuron_localcluster import cli
from neuron_localcluster.cluster import ClusterError, LocalCluster

DRA_ENV = {"NEURON_GROUPS_ALLOCATION": "dra"}


@pytest.mark.parametrize(
    ("environ", "argv", "expected"),
    [
        ({}, ["up"], "device-plugin"),
        ({}, ["up", "--allocation", "dra"], "dra"),
        ({}, ["demo", "--allocation", "DRA"], "dra"),
        (DRA_ENV, ["up"], "dra"),
        (DRA_ENV, ["up", "--allocation", "device-plugin"], "device-plugin"),
    ],
    ids=["default", "flag", "demo-any-case", "env", "flag-wins"],
)
def test_allocation_flag_and_env(
    monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], argv: list[str], expected: str
) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert cli.build_parser().parse_args(argv).allocation == expected


def test_a_bad_allocation_names_the_accepted_ones(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.build_parser().parse_args(["up", "--allocation", "kubelet"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "'kubelet' is not an allocation path; use one of device-plugin, dra" in err


def test_up_refuses_a_bad_allocation_before_starting_anything(tmp_path: Path) -> None:
    with pytest.raises(ClusterError, match="allocation 'both' is not one of device-plugin, dra"):
        LocalCluster.up(tmp_path / "state", allocation="both")
    assert not (tmp_path / "state").exists()
