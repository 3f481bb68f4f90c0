"""The emulated PodResources ``List`` answer: pods in first-seen order, containers grouped."""

from __future__ import annotations

from neuron_device_plugin.podresources import devices_in
from neuron_localcluster.pod_resources_server import ContainerHolding, listing_response

CORE = "aws.amazon.com/neuroncore"
DEVICE = "aws.amazon.com/neuron"


def test_listing_groups_holdings_by_pod_and_container() -> None:
    holdings = [
        ContainerHolding("ns", "b", "main", CORE, ("neuroncore-0002",)),
        ContainerHolding("ns", "a", "main", CORE, ("neuroncore-0000", "neuroncore-0001")),
        ContainerHolding("ns", "b", "main", DEVICE, ("neuron-0001",)),
        ContainerHolding("ns", "b", "side", CORE, ("neuroncore-0003",)),
    ]
    response = listing_response(holdings)
    shape = [
        (pod.name, [(c.name, [d.resource_name for d in c.devices]) for c in pod.containers])
        for pod in response.pod_resources
    ]
    assert shape == [
        ("b", [("main", [CORE, DEVICE]), ("side", [CORE])]),
        ("a", [("main", [CORE])]),
    ]
    assert devices_in(response) == [
        (CORE, ["neuroncore-0002"]),
        (DEVICE, ["neuron-0001"]),
        (CORE, ["neuroncore-0003"]),
        (CORE, ["neuroncore-0000", "neuroncore-0001"]),
    ]


def test_no_holdings_is_an_empty_listing() -> None:
    assert list(listing_response([]).pod_resources) == []
