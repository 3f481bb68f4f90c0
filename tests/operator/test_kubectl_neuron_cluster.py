"""``kubectl neuron`` against the local cluster: the core map matches the cores the emulated node's
processes really got, ``why`` explains Pending pods in words, ``plan`` reads a live NeuronWorkload,
and access denied is one clear line."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from neuron_cores import parse_core_list
from neuron_localcluster.node_files import ALLOCATIONS_FILE

from .conftest import apply, install_crd, kubectl_json

pytestmark = [pytest.mark.cluster]

REPO = Path(__file__).resolve().parents[2]
NS = "kubectl-neuron"
INSTANCE = "node.kubernetes.io/instance-type"
TOLERATE = [{"key": "aws.amazon.com/neuron", "operator": "Exists", "effect": "NoSchedule"}]


def neuron_pod(
    name: str,
    cores: int,
    selector: dict[str, str],
    *,
    groups: str | None = None,
    tolerations: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    limits = {"aws.amazon.com/neuroncore": str(cores)}
    meta: dict[str, Any] = {"name": name, "namespace": NS}
    if groups:
        meta["annotations"] = {"neurongroups.dev/group-sizes": groups}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "nodeSelector": selector,
            "tolerations": TOLERATE if tolerations is None else tolerations,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": "local",
                    "command": ["sleep", "600"],
                    "resources": {"requests": limits, "limits": limits},
                }
            ],
        },
    }


@pytest.fixture(scope="module")
def cluster(local_cluster: Any) -> Iterator[Any]:
    install_crd(local_cluster)
    local_cluster.kubectl("delete", "namespace", NS, "--ignore-not-found", "--wait=true")
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}
    assert apply(local_cluster, namespace).returncode == 0
    yield local_cluster
    local_cluster.kubectl("delete", "namespace", NS, "--wait=false", check=False)


def plugin(
    cluster: Any, *args: str, kubeconfig: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "neuron_operator.kubectl_neuron",
         "--kubeconfig", str(kubeconfig or cluster.kubeconfig), *args],
        capture_output=True, text=True, timeout=60, env={"PYTHONSAFEPATH": "1"}, check=False,
    )  # fmt: skip


def test_cores_match_the_processes_visible_cores(cluster: Any) -> None:
    node = cluster.emulated_node
    on_node = {"kubernetes.io/hostname": node}
    for pod in (
        neuron_pod("holder-a", 3, on_node, groups="1,2"),
        neuron_pod("holder-b", 2, on_node),
    ):
        assert apply(cluster, pod).returncode == 0

    def running() -> bool:
        pods = kubectl_json(cluster, "get", "pods", "-n", NS)["items"]
        names = {p["metadata"]["name"] for p in pods if p["status"].get("phase") == "Running"}
        return {"holder-a", "holder-b"} <= names

    cluster.wait_for(running, 120, "holder pods to run on the emulated node")
    allocations = json.loads((cluster.layout.node_dir(node) / ALLOCATIONS_FILE).read_text())
    real = {
        f"{e['namespace']}/{e['name']}": sorted(
            parse_core_list(e["envs"]["NEURON_RT_VISIBLE_CORES"])
        )
        for e in allocations.values()
        # pods of other tests may share the node: a whole-device pod, or one holding no Neuron
        # resource, holds no NeuronCore and is on no core map
        if "NEURON_RT_VISIBLE_CORES" in e["envs"]
    }

    def reported() -> dict[str, Any] | None:
        result = plugin(cluster, "cores", node, "-o", "json")
        assert result.returncode == 0, result.stderr
        (view,) = json.loads(result.stdout)["nodes"]
        held: dict[str, list[int]] = {}
        for core in view["cores"]:
            if core["pod"]:
                held.setdefault(core["pod"], []).append(core["core"])
        return view if held == real else None

    view = cluster.wait_for(reported, 30, "the core map to match allocations.json")
    assert view["allocationsReported"] is True
    groups = [c["group"] for c in view["cores"] if c["pod"] == f"{NS}/holder-a"]
    assert groups == [0, 1, 1]
    text = plugin(cluster, "cores", node).stdout
    assert f"{NS}/holder-a" in text and "NEURONWORKLOAD" in text


def test_kwok_nodes_say_placement_is_not_reported(cluster: Any) -> None:
    kwok = cluster.kwok_nodes[0]
    pod = neuron_pod("on-kwok", 4, {"kubernetes.io/hostname": kwok})
    assert apply(cluster, pod).returncode == 0

    def bound() -> bool:
        found = kubectl_json(cluster, "get", "pod", "on-kwok", "-n", NS)
        return bool(found["spec"].get("nodeName"))

    cluster.wait_for(bound, 60, "the kwok pod to be scheduled")
    text = plugin(cluster, "cores", kwok).stdout
    assert "is not reported for this node" in text
    assert f"{NS}/on-kwok holds 4 NeuronCores, placement not reported" in text


WHY: list[tuple[str, dict[str, str], int, list[dict[str, Any]] | None, str]] = [
    ("no-node-of-type", {INSTANCE: "inf2.xlarge"}, 1, None, "no node of type inf2.xlarge"),
    ("not-enough", {INSTANCE: "inf1.6xlarge"}, 17, None, "not enough cores: "),
    ("taint", {INSTANCE: "inf1.6xlarge"}, 1, [], "aws.amazon.com/neuron:NoSchedule, which"),
]


@pytest.mark.parametrize(
    ("selector", "cores", "tolerations", "expected"), [w[1:] for w in WHY], ids=[w[0] for w in WHY]
)
def test_why_explains_a_pending_pod(
    cluster: Any,
    selector: dict[str, str],
    cores: int,
    tolerations: list[dict[str, Any]] | None,
    expected: str,
) -> None:
    kind = selector[INSTANCE].replace(".", "-")
    name = f"pending-{cores}-{kind}-{'tolerates' if tolerations is None else 'not'}"
    pod = neuron_pod(name, cores, selector, tolerations=tolerations)
    assert apply(cluster, pod).returncode == 0

    def unschedulable() -> bool:
        found = kubectl_json(cluster, "get", "pod", name, "-n", NS)
        return any(
            c.get("type") == "PodScheduled" and c.get("reason") == "Unschedulable"
            for c in found["status"].get("conditions") or []
        )

    cluster.wait_for(unschedulable, 60, f"{name} to be reported Unschedulable")
    result = plugin(cluster, "why", name, "-n", NS)
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout, result.stdout
    assert "scheduler: 0/" in result.stdout


def test_plan_of_a_live_workload_and_of_a_file(cluster: Any) -> None:
    sample = REPO / "deploy/samples/04-four-models-shared.yaml"
    document = yaml.safe_load(sample.read_text())
    document["metadata"]["namespace"] = NS
    assert apply(cluster, document).returncode == 0
    live = plugin(cluster, "plan", document["metadata"]["name"], "-n", NS)
    assert live.returncode == 0, live.stderr
    assert "NEURONCORE_GROUP_SIZES=2,4,6,4" in live.stdout
    assert live.stdout.splitlines()[0].startswith(f"{NS}/")
    from_file = plugin(cluster, "plan", str(sample))
    assert "NEURONCORE_GROUP_SIZES=2,4,6,4" in from_file.stdout
    no_operator = plugin(cluster, "why", document["metadata"]["name"], "-n", NS)
    assert no_operator.returncode == 0, no_operator.stderr
    assert "has no pods: the operator has not created any" in no_operator.stdout
    missing = plugin(cluster, "why", "nothing-here", "-n", NS)
    assert missing.returncode == 1
    assert (
        "no pod or NeuronWorkload named nothing-here in namespace kubectl-neuron" in missing.stderr
    )


def test_access_denied_is_one_clear_line(cluster: Any) -> None:
    account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "nobody", "namespace": NS},
    }
    assert apply(cluster, account).returncode == 0
    kubeconfig = cluster.impersonating_kubeconfig(NS, "nobody")
    result = plugin(cluster, "cores", kubeconfig=kubeconfig)
    assert result.returncode == 1
    assert result.stderr.startswith("error: access denied: cannot list nodes")
    assert "Traceback" not in result.stderr


def test_device_plugin_places_a_block_on_scattered_cores_and_the_plugin_says_so(
    cluster: Any,
) -> None:
    """Measured: with the device plugin a pod wanting 8 cores on a node with 8 free cores but no
    free run of 8 is not Unschedulable: the scheduler counts cores, the plugin hands out the
    scattered ones.  `kubectl neuron` flags the group that is not a run."""
    node = cluster.emulated_node
    on_node = {"kubernetes.io/hostname": node}
    cluster.kubectl("delete", "pods", "--all", "-n", NS, "--wait=true", "--timeout=60s")

    def record() -> dict[str, Any]:
        result = plugin(cluster, "cores", node, "-o", "json")
        assert result.returncode == 0, result.stderr
        view: dict[str, Any] = json.loads(result.stdout)["nodes"][0]
        return view

    def holders(view: dict[str, Any]) -> dict[int, str]:
        return {c["core"]: c["pod"] for c in view["cores"] if c["pod"]}

    cluster.wait_for(lambda: not holders(record()), 60, "the emulated node's cores to be free")
    for index in range(16):
        assert apply(cluster, neuron_pod(f"one-{index}", 1, on_node)).returncode == 0

    def all_held() -> dict[int, str] | None:
        held = holders(record())
        return held if len(held) == 16 else None

    full = cluster.wait_for(all_held, 180, "16 one-core pods to hold every core")
    even = [full[core].split("/")[1] for core in range(0, 16, 2)]
    cluster.kubectl("delete", "pods", *even, "-n", NS, "--wait=true", "--timeout=60s")
    cluster.wait_for(lambda: len(holders(record())) == 8, 60, "the even cores to be free")
    assert apply(cluster, neuron_pod("block", 8, on_node, groups="8")).returncode == 0
    view = cluster.wait_for(
        lambda: v if f"{NS}/block" in holders(v := record()).values() else None,
        120,
        "the 8-core pod to get cores",
    )
    block = sorted(core for core, held in holders(view).items() if held == f"{NS}/block")
    assert block == list(range(0, 16, 2))  # scattered: what the device plugin could give
    assert view["nonContiguousGroups"] == [{"pod": f"{NS}/block", "cores": "0,2,4,6,8,10,12,14"}]
    why = plugin(cluster, "why", "block", "-n", NS)
    assert f"no contiguous run: {NS}/block got cores 0,2,4,6,8,10,12,14" in why.stdout
    cluster.kubectl("delete", "pods", "--all", "-n", NS, "--wait=false")


def test_kubectl_finds_the_plugin_on_path(cluster: Any) -> None:
    """`kubectl neuron` is kubectl's plugin mechanism finding `kubectl-neuron` on PATH."""
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "kubectl-neuron").exists()
    result = subprocess.run(
        [str(cluster.kubectl_path), "neuron", "cores", "--kubeconfig", str(cluster.kubeconfig)],
        capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHONSAFEPATH": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"{cluster.emulated_node} (inf1.6xlarge, 16 NeuronCores" in result.stdout
