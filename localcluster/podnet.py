"""Pod addresses for the emulated node: a private network namespace, or loopback as a fallback.

Why not just 127.0.0.N: the apiserver accepts a loopback ``status.podIP``, but EndpointSlice
validation refuses loopback addresses (``may not be in the loopback range``), so the real
EndpointSlice controller could never publish such a pod behind its Service.  When the agent may
manage network namespaces (root with ``ip``, as on the development machines and CI), each emulated
node gets its own namespace joined to the host by a veth pair, with pods on 198.18.K.N (RFC 2544's
benchmarking range: not loopback, not routed anywhere, not private LAN space).  Pod processes run
inside that namespace (``ip netns exec``) and bind their own address; the host reaches them over
the veth, and the EndpointSlice controller publishes them like any pod IP.  Without that
privilege the agent falls back to 127.0.0.N: pods still serve and are probed, but Services get no
endpoints (a warning says so).

``NEURON_GROUPS_POD_NETWORK``: ``auto`` (default: netns when possible), ``netns`` or ``loopback``.
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from neuron_localcluster.pods import LoopbackPool

log = logging.getLogger(__name__)

MODE_ENV = "NEURON_GROUPS_POD_NETWORK"
MODES = ("auto", "netns", "loopback")
POD_RANGE = ipaddress.ip_network("198.18.0.0/16")
FIRST_HOST, LAST_HOST = 10, 250
LOCK_FILE = Path(tempfile.gettempdir()) / "neuron-groups-podnet.lock"


class PodNetworkError(RuntimeError):
    """The network namespace could not be set up; the message says what to do."""


def names_for(workdir: Path) -> tuple[str, str]:
    """(namespace name, host-side veth name) for a node's workdir; interface names <= 15 bytes."""
    digest = hashlib.sha1(str(workdir.resolve()).encode()).hexdigest()
    return f"ng-{digest[:12]}", f"ngv{digest[:12]}"


def subnet_of(index: int) -> ipaddress.IPv4Network:
    if not 1 <= index <= 254:
        raise ValueError(f"subnet index {index} is outside 1-254")
    return ipaddress.IPv4Network(f"198.18.{index}.0/24")


def setup_commands(netns: str, veth: str, subnet: ipaddress.IPv4Network) -> list[list[str]]:
    """The ``ip`` commands that create the namespace, the veth pair and the host's address."""
    gateway = f"{subnet.network_address + 1}/{subnet.prefixlen}"
    return [
        ["ip", "netns", "add", netns],
        ["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns],
        ["ip", "addr", "add", gateway, "dev", veth],
        ["ip", "link", "set", veth, "up"],
        ["ip", "-n", netns, "link", "set", "lo", "up"],
        ["ip", "-n", netns, "link", "set", "eth0", "up"],
        # Every pod's address sits on this one eth0, in one subnet: the first is the subnet's
        # primary, the later ones its secondaries, and by default the kernel deletes the
        # secondaries with the primary.  A pod stopping would take the addresses of the pods
        # started after it while it ran (their servers keep running, unreachable; never Ready).
        # With promotion a secondary becomes the primary instead, as each pod keeps its own
        # address on a real node.
        [
            "ip", "netns", "exec", netns, "sh", "-c",
            "echo 1 > /proc/sys/net/ipv4/conf/eth0/promote_secondaries",
        ],
    ]  # fmt: skip


def teardown_commands(netns: str, veth: str) -> list[list[str]]:
    return [["ip", "link", "del", veth], ["ip", "netns", "del", netns]]


def _ip(cmd: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise PodNetworkError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip() or proc.returncode}")
    return proc


def used_subnets() -> set[int]:
    """Third octets of 198.18.K.0/24 subnets already on this host's interfaces."""
    out = _ip(["ip", "-4", "-o", "addr", "show"], check=False).stdout
    used = set()
    for token in out.split():
        if token.startswith("198.18."):
            used.add(int(token.split(".")[2]))
    return used


class PodNetwork:
    """Hands out pod addresses and wraps pod commands so they run where the address lives."""

    def __init__(self, workdir: Path, mode: str | None = None) -> None:
        chosen = (mode or os.environ.get(MODE_ENV) or "auto").strip()
        if chosen not in MODES:
            raise PodNetworkError(
                f"{MODE_ENV}={chosen!r} is not valid: accepted values are {', '.join(MODES)}"
            )
        self.requested = chosen
        self.workdir = workdir
        self.netns, self.veth = names_for(workdir)
        self.subnet: ipaddress.IPv4Network | None = None
        self.pool = LoopbackPool()

    @property
    def mode(self) -> str:
        return "netns" if self.subnet is not None else "loopback"

    def setup(self) -> None:
        if self.requested == "loopback":
            return
        if os.geteuid() != 0 or shutil.which("ip") is None:
            self._fallback("not root or no `ip` command")
            return
        self.teardown()  # a namespace left by a killed agent with the same workdir
        # Agents of clusters starting side by side must not pick the same subnet.
        with LOCK_FILE.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            free = [k for k in range(1, 255) if k not in used_subnets()]
            if not free:
                self._fallback("no free 198.18.K.0/24 subnet")
                return
            subnet = subnet_of(free[0])
            try:
                for cmd in setup_commands(self.netns, self.veth, subnet):
                    _ip(cmd)
            except PodNetworkError as exc:
                self.teardown()
                self._fallback(str(exc))
                return
        self.subnet = subnet
        prefix = f"198.18.{int(subnet.network_address.packed[2])}."
        self.pool = LoopbackPool(FIRST_HOST, LAST_HOST, prefix=prefix)
        (self.workdir / "netns").write_text(f"{self.netns} {self.veth} {subnet}\n")
        log.info("pod network: namespace %s, subnet %s via %s", self.netns, subnet, self.veth)

    def _fallback(self, why: str) -> None:
        if self.requested == "netns":
            raise PodNetworkError(
                f"cannot set up the pod network namespace ({why}); run as root with iproute2 "
                f"installed, or set {MODE_ENV}=loopback"
            )
        log.warning(
            "pod network: %s; pods get 127.0.0.N addresses, which EndpointSlices cannot hold, "
            "so Services on the emulated node will have no endpoints",
            why,
        )

    def take(self) -> str:
        ip = self.pool.take()
        if self.subnet is not None:
            self._address("add", ip, check=True)
        return ip

    def give_back(self, ip: str) -> None:
        if self.subnet is not None:
            self._address("del", ip, check=False)
        self.pool.give_back(ip)

    def _address(self, verb: str, ip: str, *, check: bool) -> None:
        """Add or delete a pod's address on the namespace's eth0."""
        assert self.subnet is not None
        cidr = f"{ip}/{self.subnet.prefixlen}"
        _ip(["ip", "-n", self.netns, "addr", verb, cidr, "dev", "eth0"], check=check)

    def wrap(self, argv: list[str]) -> list[str]:
        if self.subnet is None:
            return argv
        return ["ip", "netns", "exec", self.netns, *argv]

    def teardown(self) -> None:
        if self.requested == "loopback" or shutil.which("ip") is None:
            return
        for cmd in teardown_commands(self.netns, self.veth):
            _ip(cmd, check=False)
        (self.workdir / "netns").unlink(missing_ok=True)


def teardown_recorded(node_dirs: Sequence[Path]) -> None:
    """Remove namespaces recorded by agents that did not get to clean up (``cluster-down``)."""
    for workdir in node_dirs:
        record = workdir / "netns"
        if not record.exists() or shutil.which("ip") is None:
            continue
        netns, veth, _subnet = record.read_text().split()
        for cmd in teardown_commands(netns, veth):
            _ip(cmd, check=False)
        record.unlink(missing_ok=True)
        log.info("removed leftover pod network namespace %s", netns)
