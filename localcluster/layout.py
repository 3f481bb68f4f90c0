"""Pure descriptions of the local cluster: its folder layout, ports, kubeconfigs and command lines.

Why a module of pure functions: every flag the control plane runs with is decided here, as data,
so tests can check it without starting anything, and the one module that does I/O
(:mod:`neuron_localcluster.cluster`) stays a short sequence of "write this, start that".
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from neuron_localcluster.binaries import Binaries
from neuron_localcluster.pki import (
    ADMIN,
    CONTROLLER_MANAGER,
    ETCD_CLIENT,
    FRONT_PROXY,
    KARPENTER,
    KWOK,
    NODE_AGENT,
    SCHEDULER,
    Identity,
    Pki,
)

STATE_ENV = "NEURON_GROUPS_CLUSTER_DIR"
SERVICE_CIDR = "10.0.0.0/24"
KWOK_POD_CIDR = "10.244.0.0/16"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
CLUSTER_NAME = "neuron-groups-local"
# The label/annotation kwok selects nodes by; the emulated node does not carry it.
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_NODE_ANNOTATION_VALUE = "fake"
# How the nodes offer their NeuronCores (``--allocation``): the device plugin's extended
# resources, or DRA ResourceSlices only.
DEVICE_PLUGIN = "device-plugin"
DRA = "dra"
ALLOCATIONS = (DEVICE_PLUGIN, DRA)


@dataclass(frozen=True)
class Ports:
    """Loopback ports, picked free at start and recorded in the state file."""

    apiserver: int
    etcd_client: int
    etcd_peer: int
    controller_manager: int
    scheduler: int
    kwok: int
    # Karpenter's metrics and health listeners (it binds every address; these were free on
    # loopback).  0 in the state of a cluster recorded before they existed.
    karpenter_metrics: int = 0
    karpenter_health: int = 0


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports the kernel says are free on 127.0.0.1 right now."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def pick_ports() -> Ports:
    return Ports(*free_ports(8))


def default_state_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$NEURON_GROUPS_CLUSTER_DIR`` or ``<repo>/.cluster`` (the documented default)."""
    environ = os.environ if env is None else env
    override = environ.get(STATE_ENV)
    if override:
        return Path(override).expanduser().resolve()
    return Path(__file__).resolve().parents[1] / ".cluster"


@dataclass(frozen=True)
class Layout:
    """Every path under one cluster's state folder."""

    root: Path

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def pki(self) -> Pki:
        return Pki(self.root / "pki")

    @property
    def etcd_data(self) -> Path:
        return self.root / "etcd-data"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pids(self) -> Path:
        return self.root / "pids"

    @property
    def kwok_config(self) -> Path:
        return self.root / "kwok-stages.yaml"

    @property
    def scheduler_config(self) -> Path:
        return self.root / "scheduler.yaml"

    def component_kubeconfig(self, who: Identity) -> Path:
        return self.root / "kubeconfigs" / f"{who.file_stem}.kubeconfig"

    def node_dir(self, node: str) -> Path:
        return self.root / "nodes" / node


def kubeconfig(server: str, pki: Pki, who: Identity, *, ca: Path | None = None) -> dict[str, Any]:
    """A kubeconfig (as a dict) for ``who`` with its client certificate, by absolute paths."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": CLUSTER_NAME,
                "cluster": {"server": server, "certificate-authority": str(ca or pki.ca_cert)},
            }
        ],
        "users": [
            {
                "name": who.user,
                "user": {
                    "client-certificate": str(pki.client_cert(who)),
                    "client-key": str(pki.client_key(who)),
                },
            }
        ],
        "contexts": [
            {"name": CLUSTER_NAME, "context": {"cluster": CLUSTER_NAME, "user": who.user}}
        ],
        "current-context": CLUSTER_NAME,
    }


def token_kubeconfig(
    server: str, ca: Path, user: str, token: str, namespace: str
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": CLUSTER_NAME, "cluster": {"server": server, "certificate-authority": str(ca)}}
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [
            {
                "name": CLUSTER_NAME,
                "context": {"cluster": CLUSTER_NAME, "user": user, "namespace": namespace},
            }
        ],
        "current-context": CLUSTER_NAME,
    }


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False)


def etcd_url(ports: Ports) -> str:
    return f"https://127.0.0.1:{ports.etcd_client}"


def etcd_args(b: Binaries, lay: Layout, ports: Ports) -> list[str]:
    client = etcd_url(ports)
    keys = lay.pki
    peer = f"http://127.0.0.1:{ports.etcd_peer}"
    return [
        str(b.etcd),
        "--name=local",
        f"--data-dir={lay.etcd_data}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=local={peer}",
        # Clients (the apiserver) must present a certificate from the cluster's CA.
        f"--cert-file={keys.etcd_cert}",
        f"--key-file={keys.etcd_key}",
        f"--trusted-ca-file={keys.ca_cert}",
        "--client-cert-auth=true",
        "--initial-cluster-state=new",
        "--listen-metrics-urls=",
        "--log-level=warn",
        # A throwaway cluster: no fsync per write, small backend quota.
        "--unsafe-no-fsync=true",
        "--quota-backend-bytes=1073741824",
    ]


def apiserver_args(b: Binaries, lay: Layout, ports: Ports) -> list[str]:
    pki = lay.pki
    return [
        str(b.kube_apiserver),
        f"--etcd-servers={etcd_url(ports)}",
        f"--etcd-cafile={pki.ca_cert}",
        f"--etcd-certfile={pki.client_cert(ETCD_CLIENT)}",
        f"--etcd-keyfile={pki.client_key(ETCD_CLIENT)}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={ports.apiserver}",
        f"--cert-dir={lay.root / 'apiserver-certs'}",
        f"--tls-cert-file={pki.serving_cert}",
        f"--tls-private-key-file={pki.serving_key}",
        f"--client-ca-file={pki.ca_cert}",
        f"--service-account-issuer={SA_ISSUER}",
        f"--service-account-key-file={pki.sa_pub}",
        f"--service-account-signing-key-file={pki.sa_key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction,PodSecurity",
        "--allow-privileged=true",
        # Request-header authentication for the aggregation layer (without it every component
        # logs a missing client-CA bundle); the same CA signs the front-proxy client.
        f"--requestheader-client-ca-file={pki.ca_cert}",
        f"--requestheader-allowed-names={FRONT_PROXY.user}",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={pki.client_cert(FRONT_PROXY)}",
        f"--proxy-client-key-file={pki.client_key(FRONT_PROXY)}",
        # The reconciler would publish 127.0.0.1 as the `kubernetes` Service's endpoint, which
        # endpoint validation rejects (loopback); nothing in this cluster dials that Service.
        "--endpoint-reconciler-type=none",
        "--profiling=false",
        "--v=0",
    ]


def controller_manager_args(b: Binaries, lay: Layout, ports: Ports) -> list[str]:
    pki = lay.pki
    kcfg = lay.component_kubeconfig(CONTROLLER_MANAGER)
    return [
        str(b.kube_controller_manager),
        f"--kubeconfig={kcfg}",
        f"--authentication-kubeconfig={kcfg}",
        f"--authorization-kubeconfig={kcfg}",
        "--bind-address=127.0.0.1",
        f"--secure-port={ports.controller_manager}",
        f"--cert-dir={lay.root / 'controller-manager-certs'}",
        "--leader-elect=false",
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={pki.sa_key}",
        f"--root-ca-file={pki.ca_cert}",
        f"--cluster-signing-cert-file={pki.ca_cert}",
        f"--cluster-signing-key-file={pki.ca_key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--controllers=*",
        "--concurrent-gc-syncs=5",
        "--profiling=false",
        "--v=0",
    ]


def scheduler_args(b: Binaries, lay: Layout, ports: Ports) -> list[str]:
    kcfg = lay.component_kubeconfig(SCHEDULER)
    return [
        str(b.kube_scheduler),
        f"--kubeconfig={kcfg}",
        f"--authentication-kubeconfig={kcfg}",
        f"--authorization-kubeconfig={kcfg}",
        "--bind-address=127.0.0.1",
        f"--secure-port={ports.scheduler}",
        f"--cert-dir={lay.root / 'scheduler-certs'}",
        "--leader-elect=false",
        "--profiling=false",
        "--v=0",
    ]


def kwok_args(b: Binaries, lay: Layout, ports: Ports) -> list[str]:
    return [
        str(b.kwok),
        f"--kubeconfig={lay.component_kubeconfig(KWOK)}",
        f"--config={lay.kwok_config}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}={KWOK_NODE_ANNOTATION_VALUE}",
        f"--cidr={KWOK_POD_CIDR}",
        "--node-ip=127.0.0.1",
        f"--server-address=127.0.0.1:{ports.kwok}",
        "--node-lease-duration-seconds=40",
    ]


COMPONENT_ORDER = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
KUBECONFIG_IDENTITIES = (ADMIN, CONTROLLER_MANAGER, SCHEDULER, KWOK, NODE_AGENT, KARPENTER)


def ports_dict(ports: Ports) -> dict[str, int]:
    return asdict(ports)
