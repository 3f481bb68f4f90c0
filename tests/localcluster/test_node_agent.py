"""The node agent as a whole: the allocation paths it accepts, and a DRA node's pods and cores."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from neuron_cores import ALLOCATIONS_ANNOTATION, parse_record
from neuron_localcluster.node_agent import NodeAgent
from neuron_localcluster.nodes import NodeSpec
from neuron_localcluster.pod_supervision import stop_pods


@pytest.mark.parametrize(
    ("allocation", "kubeconfig", "message"),
    [
        ("kubelet", Path("k"), "allocation 'kubelet' is not one of device-plugin, dra"),
        ("dra", None, "needs the kubeconfig the DRA driver uses"),
    ],
    ids=["unknown-path", "dra-without-kubeconfig"],
)
def test_the_node_agent_refuses_a_bad_allocation(
    tmp_path: Path, allocation: str, kubeconfig: Path | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        NodeAgent(
            api=k8s.ApiClient(),
            spec=NodeSpec("n", "inf1.6xlarge", emulated=True),
            workdir=tmp_path,
            allocation=allocation,
            kubeconfig=kubeconfig,
        )


def _dra_agent(tmp_path: Path) -> NodeAgent:
    """An emulated inf1.6xlarge node's agent in DRA mode (not started)."""
    return NodeAgent(
        api=k8s.ApiClient(),
        spec=NodeSpec("n", "inf1.6xlarge", emulated=True),
        workdir=tmp_path,
        allocation="dra",
        kubeconfig=tmp_path / "kubeconfig",
    )


def test_a_dra_node_offers_no_neuron_extended_resources(tmp_path: Path) -> None:
    agent = _dra_agent(tmp_path)
    assert agent._resource_counts() == ({}, {})


def _reporting_to_fake(agent: NodeAgent) -> _Core:
    core = _Core()
    agent.reporter.core = core  # type: ignore[assignment]
    return core


class _Core:
    def __init__(self) -> None:
        self.patches: list[tuple[str, str, dict[str, Any]]] = []
        self.node_patches: list[tuple[str, dict[str, Any]]] = []

    def patch_node(self, name: str, patch: dict[str, Any]) -> None:
        self.node_patches.append((name, patch))

    def patch_namespaced_pod_status(self, name: str, namespace: str, patch: dict[str, Any]) -> None:
        self.patches.append((name, namespace, patch))


def test_a_dra_node_publishes_its_allocation_record(tmp_path: Path) -> None:
    """No neuroncore capacity on a DRA node: the record's size comes from the instance type."""
    agent = _dra_agent(tmp_path)
    core = _reporting_to_fake(agent)
    agent._publish_allocations()
    ((node, patch),) = core.node_patches
    record = parse_record(patch["metadata"]["annotations"][ALLOCATIONS_ANNOTATION], node="n")
    assert (node, record.cores, dict(record.pods)) == ("n", 16, {})


def test_a_pod_whose_claims_are_not_ready_waits_with_the_reason(tmp_path: Path) -> None:
    agent = _dra_agent(tmp_path)
    core = _reporting_to_fake(agent)
    pod = {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
        "spec": {
            "containers": [{"name": "c", "command": ["true"]}],
            "resourceClaims": [{"name": "cores", "resourceClaimTemplateName": "six"}],
        },
        "status": {},
    }
    agent._admit(pod)
    agent._admit(pod)  # a retry with the same reason patches nothing more
    assert agent.running == {}
    (name, namespace, patch) = core.patches[0]
    assert (name, namespace) == ("p", "ns")
    status = patch["status"]
    assert status["phase"] == "Pending"
    assert "is not recorded in the pod's status.resourceClaimStatuses yet" in status["message"]
    waiting = status["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "ContainerCreating"
    assert len(core.patches) == 1


@pytest.mark.parametrize(
    ("status", "phase"),
    [
        ({}, "Failed"),
        (
            {
                "extendedResourceClaimStatus": {
                    "resourceClaimName": "p-ext",
                    "requestMappings": [
                        {
                            "containerName": "c",
                            "resourceName": "aws.amazon.com/neuroncore",
                            "requestName": "container-0-request-0",
                        }
                    ],
                }
            },
            "waits",
        ),
    ],
    ids=["bound-without-the-scheduler-fails", "with-the-schedulers-claim-prepares"],
)
def test_extended_resources_on_a_dra_node_need_the_schedulers_claim(
    tmp_path: Path, status: dict[str, Any], phase: str
) -> None:
    agent = _dra_agent(tmp_path)
    core = _reporting_to_fake(agent)
    agent.dra.read_claim = lambda namespace, name: None
    pod = {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u2"},
        "spec": {
            "hostNetwork": True,
            "containers": [
                {
                    "name": "c",
                    "command": ["true"],
                    "resources": {"limits": {"aws.amazon.com/neuroncore": "2"}},
                }
            ],
        },
        "status": status,
    }
    agent._admit(pod)
    (_, _, patch) = core.patches[-1]
    if phase == "Failed":
        assert patch["status"]["phase"] == "Failed"
        assert (
            "aws.amazon.com/neuroncore: 2, which node n offers only through DRA"
            in (patch["status"]["message"])
        )
    else:  # the claim is read first: here it does not exist yet, so the pod waits
        assert patch["status"]["phase"] == "Pending"
        assert "claim ns/p-ext does not exist" in patch["status"]["message"]
    stop_pods(list(agent.running.values()), grace=1.0, stopped=agent._release)


def test_python_m_runs_the_agent_without_importing_it_twice() -> None:
    """The cluster starts the agent with ``python -m``: the package must not have imported the
    module already (runpy warns, and the process would hold two copies of it)."""
    argv = ["-W", "error::RuntimeWarning", "-m", "neuron_localcluster.node_agent", "--help"]
    done = subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "RuntimeWarning" not in done.stderr
