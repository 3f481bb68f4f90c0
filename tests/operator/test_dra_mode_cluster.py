"""The operator's DRA mode on a ``--allocation dra`` local cluster (every node offers its cores
through the DRA driver only): one ResourceClaim per pod from the workload's ResourceClaimTemplate
per pod size, the scheduler picks a contiguous block, the emulated node's processes get
``NEURON_RT_VISIBLE_CORES`` from the claim's CDI env and serve inference through the Service.

The operator runs as ``neuron-operator run`` with the chart's ServiceAccount and RBAC (so the
rights on resourceclaimtemplates, resourceclaims and the DeviceClass are exercised).  Its own
cluster: the session's cluster runs the device-plugin path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from neuron_cores import is_contiguous, parse_core_list
from neuron_localcluster.demo import compile_models, with_models_volume
from neuron_localcluster.node_files import ALLOCATIONS_FILE
from neuron_operator import conditions as c
from neuron_operator.claims import claim_cores

from .conftest import Operators, apply, kubectl_json, operator_on_own_cluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "deploy/samples"
SEED = ("01-resnet50-shared.yaml", "02-resnet50-process.yaml", "03-two-models-context-switch.yaml")
NS = "nwl-dra"
OPERATOR_NS = "nwl-dra-operator"
KWOK_ONLY = {"neuron-groups.io/simulation": "kwok"}
TIMEOUT = 240.0


@pytest.fixture(scope="module")
def operators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operators]:
    models = tmp_path_factory.mktemp("models")
    compile_models(models)
    with operator_on_own_cluster(
        kwok_nodes="2xinf1.6xlarge",
        emulated_nodes="inf1.6xlarge",
        allocation="dra",
        identity="op-a",
        release="nwl-dra",
        operator_namespace=OPERATOR_NS,
        namespaces=[NS],
        log_dir=tmp_path_factory.mktemp("operator-logs"),
        extra_args=("--allowed-host-paths", str(models)),
    ) as handle:
        yield handle


def wait_for(operators: Operators, predicate: Callable[[], Any], what: str) -> Any:
    try:
        return operators.cluster.wait_for(predicate, TIMEOUT, what)
    except Exception as error:
        raise AssertionError(f"{error}\noperator logs:\n{operators.logs()}") from error


def workload(file_name: str, **spec: Any) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((SAMPLES / file_name).read_text())
    document["metadata"]["namespace"] = NS
    document["spec"].update(spec)
    return document


def get(cluster: Any, *args: str) -> Any:
    return kubectl_json(cluster, "get", *args, "-n", NS)


def ready(operators: Operators, name: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        body: dict[str, Any] = get(operators.cluster, "nwl", name)
        status = body.get("status") or {}
        found = c.find(status.get("conditions"), c.READY) or {}
        done = found.get("status") == c.TRUE and status.get("observedGeneration") == body[
            "metadata"
        ].get("generation")
        return body if done and found.get("reason") == c.REASON_ALL_READY else None

    result: dict[str, Any] = wait_for(operators, check, f"NeuronWorkload {name} to be Ready")
    return result


def _all_scheduled(pods: list[dict[str, Any]]) -> bool:
    """Every pod has a node, and there is one: before the operator has created the pod, an
    empty list is not "scheduled" (the one-core pods would then race it for the nodes)."""
    return bool(pods) and all(p["spec"].get("nodeName") for p in pods)


def live_pods(cluster: Any, name: str) -> list[dict[str, Any]]:
    found = get(cluster, "pods", "-l", f"app.kubernetes.io/instance={name}")["items"]
    return [p for p in found if not p["metadata"].get("deletionTimestamp")]


def claim_map(cluster: Any) -> dict[str, tuple[str, tuple[int, ...]]]:
    """pod -> (node, cores) from the ResourceClaims' allocations."""
    return {
        found.pod: (found.node, found.cores)
        for item in get(cluster, "resourceclaims")["items"]
        if (found := claim_cores(item)) is not None
    }


def check_blocks(cluster: Any, names: list[str]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Every pod of ``names`` holds one contiguous block of its planned size, no core twice."""
    claims = claim_map(cluster)
    taken: dict[tuple[str, int], str] = {}
    for name in names:
        body = get(cluster, "nwl", name)
        sizes = {p["pod"]: p["cores"] for p in body["status"]["plan"]}
        pods = live_pods(cluster, name)
        assert pods
        for pod in pods:
            spec = pod["spec"]
            assert "aws.amazon.com/neuroncore" not in json.dumps(spec)
            (ref,) = spec["resourceClaims"]
            cores = sizes[int(pod["metadata"]["labels"]["neurongroups.dev/pod-index"])]
            assert ref["resourceClaimTemplateName"] == f"{name}-cores-{cores}"
            node, held = claims[pod["metadata"]["name"]]
            assert node == spec["nodeName"]
            assert len(held) == cores and is_contiguous(held), (pod["metadata"]["name"], held)
            for core in held:
                assert (node, core) not in taken, f"core {core} of {node} held twice"
                taken[(node, core)] = pod["metadata"]["name"]
        allocated = {e["pod"]: (e["node"], e["cores"]) for e in body["status"]["allocatedCores"]}
        for pod in pods:
            node, held = claims[pod["metadata"]["name"]]
            text = str(held[0]) if len(held) == 1 else f"{held[0]}-{held[-1]}"
            assert allocated[pod["metadata"]["name"]] == (node, text)
    return claims


def infer(address: str, model: str) -> list[float]:
    base = f"http://{address}:8000/v2/models/{model}"
    with urllib.request.urlopen(base, timeout=10) as resp:
        tensor = json.loads(resp.read())["inputs"][0]
    shape = [1 if d < 0 else d for d in tensor["shape"]]
    count = 1
    for dim in shape:
        count *= dim
    request = {"inputs": [{**tensor, "shape": shape, "data": [0.5] * count}]}
    req = urllib.request.Request(
        f"{base}/infer",
        data=json.dumps(request).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        data: list[float] = json.loads(resp.read())["outputs"][0]["data"]
    return data


def test_the_seeds_scenarios_in_dra_mode(operators: Operators) -> None:
    cluster = operators.cluster
    models = Path(operators.extra_args[1])
    names = []
    for file_name in SEED:
        document = with_models_volume(workload(file_name, allocation="DRA"), models)
        assert apply(cluster, document).returncode == 0
        names.append(document["metadata"]["name"])
        if len(names) == 1:  # the whole-node block first, as the demo does
            wait_for(
                operators,
                lambda: _all_scheduled(live_pods(cluster, names[0])),
                "the 16-core block to be scheduled",
            )
    for name in names:
        body = ready(operators, name)
        assert body["status"]["allocation"] == "DRA"
        sizes = sorted({p["cores"] for p in body["status"]["plan"]})
        assert body["status"]["claimTemplates"] == [f"{name}-cores-{n}" for n in sizes]
    claims = check_blocks(cluster, names)
    # the processes' NEURON_RT_VISIBLE_CORES (the CDI env) are the claims' cores
    node = cluster.emulated_node
    records = json.loads((cluster.layout.node_dir(node) / ALLOCATIONS_FILE).read_text())
    on_node = {e["name"]: e for e in records.values() if e["namespace"] == NS}
    assert on_node
    for pod, entry in on_node.items():
        visible = parse_core_list(entry["envs"]["NEURON_RT_VISIBLE_CORES"])
        assert tuple(sorted(visible)) == claims[pod][1]
    # kubectl neuron cores shows the same cores, for the emulated node and the kwok nodes
    plugin = Path(sys.executable).parent / "kubectl-neuron"
    printed = subprocess.run(
        [str(plugin), "--kubeconfig", str(cluster.kubeconfig), "cores", "-A", "-o", "json"],
        capture_output=True, text=True, check=True, env={**os.environ, "PYTHONSAFEPATH": "1"},
    ).stdout  # fmt: skip
    shown: dict[str, set[tuple[str, int]]] = {}
    for view in json.loads(printed)["nodes"]:
        assert view["allocationsReported"], view["node"]
        for entry in view["cores"]:
            if entry["pod"] and entry["pod"].startswith(f"{NS}/"):
                shown.setdefault(entry["pod"][len(NS) + 1 :], set()).add(
                    (view["node"], entry["core"])
                )
    assert shown == {pod: {(n, core) for core in cores} for pod, (n, cores) in claims.items()}
    # inference through each Service: its endpoints on the emulated node answer
    answered = 0
    for name in names:
        slices = get(cluster, "endpointslices", "-l", f"kubernetes.io/service-name={name}")
        for endpoint in (e for s in slices["items"] for e in s.get("endpoints") or []):
            if endpoint.get("nodeName") != node or not endpoint["conditions"].get("ready"):
                continue
            pod = endpoint["targetRef"]["name"]
            model = on_node[pod]["envs"]["NEURON_MODELS"].split(",")[0].split("=")[0]
            assert len(infer(endpoint["addresses"][0], model)) == 10
            answered += 1
            break
    assert answered >= 1
    for name in names:
        cluster.kubectl("delete", "nwl", name, "-n", NS, "--wait=true")
    wait_for(
        operators,
        lambda: (
            not get(cluster, "resourceclaimtemplates")["items"]
            and not get(cluster, "pods")["items"]
        ),
        "the pods and claim templates to be garbage-collected",
    )


def test_scale_roll_unschedulable_and_gc_in_dra_mode(operators: Operators) -> None:
    cluster = operators.cluster
    name = "blocks"
    document = workload(
        "02-resnet50-process.yaml",
        allocation="DRA",
        nodeSelector=dict(KWOK_ONLY),
        models=[{"name": "m", "path": "/models/m", "cores": 4, "copies": 2}],
    )
    document["metadata"]["name"] = name
    assert apply(cluster, document).returncode == 0
    body = ready(operators, name)
    assert body["status"]["claimTemplates"] == [f"{name}-cores-4"]
    check_blocks(cluster, [name])
    # scale: two more pods, each with its own claim from the same template
    cluster.kubectl("scale", "nwl", name, "-n", NS, "--replicas=2")
    ready(operators, name)
    assert len(live_pods(cluster, name)) == 4
    check_blocks(cluster, [name])
    # roll to 6-core pods: a new template, the old one removed once the roll is over; four 6-core
    # blocks fill each kwok node with two (a third would not fit), leaving 4 free cores on each
    old_hash = body["status"]["templateHash"]
    document["spec"]["replicas"] = 2
    document["spec"]["models"] = [{"name": "m", "path": "/models/m", "cores": 6, "copies": 2}]
    assert apply(cluster, document).returncode == 0
    body = ready(operators, name)
    assert body["status"]["templateHash"] != old_hash
    pods = live_pods(cluster, name)
    assert len(pods) == 4
    assert {p["metadata"]["labels"]["neurongroups.dev/template-hash"] for p in pods} == {
        body["status"]["templateHash"]
    }
    wait_for(
        operators,
        lambda: (
            [t["metadata"]["name"] for t in get(cluster, "resourceclaimtemplates")["items"]]
            == [f"{name}-cores-6"]
        ),
        "the 4-core template to be removed after the roll",
    )
    claims = check_blocks(cluster, [name])
    assert sorted(len(cores) for _, cores in claims.values()) == [6, 6, 6, 6]
    assert len({node for node, _ in claims.values()}) == 2
    # a 16-core block: the kwok nodes have 4 free cores each, too few (free cores without a run:
    # test_unschedulable_dra_cluster.py)
    big = workload("01-resnet50-shared.yaml", allocation="DRA", nodeSelector=dict(KWOK_ONLY))
    big["metadata"]["name"] = "whole-node"
    assert apply(cluster, big).returncode == 0

    def unschedulable() -> dict[str, Any] | None:
        found = c.find(get(cluster, "nwl", "whole-node").get("status", {}).get("conditions"),
                       c.UNSCHEDULABLE)  # fmt: skip
        # the free cores are read at most every 10 s for all workloads: a read taken during the
        # roll above may speak first, and the next one corrects it
        settled = found and "has 4 free NeuronCores" in str(found.get("message"))
        return dict(found) if found and found.get("status") == c.TRUE and settled else None

    condition = wait_for(operators, unschedulable, "the 16-core block to be Unschedulable")
    assert condition["reason"] == c.REASON_INSUFFICIENT_CORES, condition
    assert "no node of type inf1.6xlarge has 16 free NeuronCores" in condition["message"]
    # GC: deleting the workloads removes their pods and templates (owner references)
    for each in (name, "whole-node"):
        cluster.kubectl("delete", "nwl", each, "-n", NS, "--wait=true")
    wait_for(
        operators,
        lambda: (
            not get(cluster, "resourceclaimtemplates")["items"]
            and not get(cluster, "pods")["items"]
        ),
        "the pods and claim templates to be garbage-collected",
    )


def test_a_second_operator_takes_over_in_dra_mode(operators: Operators) -> None:
    """HA: with the leader gone, the standby's reconciles make the templates and claims."""
    cluster = operators.cluster
    operators.start("op-b")
    operators.stop("op-a")
    try:
        document = workload(
            "02-resnet50-process.yaml",
            allocation="DRA",
            nodeSelector=dict(KWOK_ONLY),
            models=[{"name": "m", "path": "/models/m", "cores": 3, "copies": 2}],
        )
        document["metadata"]["name"] = "failover"
        assert apply(cluster, document).returncode == 0
        body = ready(operators, "failover")
        assert body["status"]["claimTemplates"] == ["failover-cores-3"]
        check_blocks(cluster, ["failover"])
        cluster.kubectl("delete", "nwl", "failover", "-n", NS, "--wait=true")
    finally:
        operators.start("op-a")
