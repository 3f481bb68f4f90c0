"""Pod network naming and commands (pure), and the namespace itself where root and ``ip`` are."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from neuron_localcluster import podnet


def test_names_fit_interface_limits_and_differ_per_workdir(tmp_path: Path) -> None:
    a = podnet.names_for(tmp_path / "a")
    b = podnet.names_for(tmp_path / "b")
    assert a != b
    assert all(len(name) <= 15 for name in (*a, *b))
    assert podnet.names_for(tmp_path / "a") == a


@pytest.mark.parametrize(
    ("index", "ok"),
    [(1, True), (254, True), (0, False), (255, False)],
    ids=["first", "last", "zero", "past-end"],
)
def test_subnet_of(index: int, ok: bool) -> None:
    if ok:
        net = podnet.subnet_of(index)
        assert net.subnet_of(ipaddress.IPv4Network("198.18.0.0/16"))
        assert not net.network_address.is_loopback
    else:
        with pytest.raises(ValueError, match="outside"):
            podnet.subnet_of(index)


def test_setup_commands_make_a_veth_into_the_namespace() -> None:
    cmds = podnet.setup_commands("ng-x", "ngvx", ipaddress.IPv4Network("198.18.7.0/24"))
    assert cmds[0] == ["ip", "netns", "add", "ng-x"]
    assert ["ip", "addr", "add", "198.18.7.1/24", "dev", "ngvx"] in cmds
    assert any("veth" in c and "netns" in c for c in cmds)
    assert podnet.teardown_commands("ng-x", "ngvx")[-1] == ["ip", "netns", "del", "ng-x"]


def test_loopback_mode_needs_no_privilege(tmp_path: Path) -> None:
    net = podnet.PodNetwork(tmp_path, mode="loopback")
    net.setup()
    assert net.mode == "loopback"
    ip = net.take()
    assert ipaddress.ip_address(ip).is_loopback
    assert net.wrap(["serve"]) == ["serve"]


def test_bad_mode_is_named(tmp_path: Path) -> None:
    with pytest.raises(podnet.PodNetworkError, match="'bridge'"):
        podnet.PodNetwork(tmp_path, mode="bridge")


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="a network namespace needs root and ip"
)
def test_a_stopping_pod_leaves_the_other_pods_addresses(tmp_path: Path) -> None:
    """The first pod's address is the subnet's primary on eth0; giving it back must not take
    the addresses of pods started after it (the kernel's default deletes secondaries)."""
    net = podnet.PodNetwork(tmp_path, mode="netns")
    net.setup()
    try:
        first, second, third = net.take(), net.take(), net.take()
        net.give_back(first)
        shown = subprocess.run(
            ["ip", "-n", net.netns, "-4", "addr", "show", "dev", "eth0"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert f" {first}/" not in shown
        assert f" {second}/" in shown and f" {third}/" in shown, shown
    finally:
        net.teardown()
