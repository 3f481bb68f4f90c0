"""Issue 13, section 4: bad input at the edges of the device plugin, over the real socket.

Every refusal comes back with its precise status code and a message that fits the status trailer,
however large the request (an unbounded message reaches the client as RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

import grpc
import pytest

from neuron_device_plugin.api import deviceplugin_pb2 as pb
from neuron_device_plugin.api.services import DevicePluginStub
from neuron_device_plugin.ids import MAX_ERROR_MESSAGE
from neuron_device_plugin.plugin import socket_name

from .conftest import RunningNode

CORES = "aws.amazon.com/neuroncore"
DEVICES = "aws.amazon.com/neuron"


def core(i: int) -> str:
    return f"neuroncore-{i:04d}"


def _refusal(node: RunningNode, resource: str, call: str, request: object) -> grpc.Call:
    node.kubelet.wait_for_registration(resource)
    with grpc.insecure_channel(f"unix://{node.plugin_dir / socket_name(resource)}") as channel:
        method = getattr(DevicePluginStub(channel), call)
        with pytest.raises(grpc.RpcError) as info:
            method(request, timeout=10)
    assert isinstance(info.value, grpc.Call)
    return info.value


def _allocate(*containers: list[str]) -> pb.AllocateRequest:
    return pb.AllocateRequest(
        container_requests=[pb.ContainerAllocateRequest(devices_ids=ids) for ids in containers]
    )


def _preferred(available: list[str], must: list[str], size: int) -> pb.PreferredAllocationRequest:
    return pb.PreferredAllocationRequest(
        container_requests=[
            pb.ContainerPreferredAllocationRequest(
                available_deviceIDs=available, must_include_deviceIDs=must, allocation_size=size
            )
        ]
    )


@pytest.mark.parametrize(
    ("call", "request_", "named"),
    [
        ("allocate", _allocate([core(1), core(1)]), "'neuroncore-0001'"),
        ("allocate", _allocate([core(1)] * 10_000), "'neuroncore-0001'"),
        ("allocate", _allocate([core(i) for i in range(10_000)]), "and 9,979 more"),
        ("allocate", _allocate(["x" * 1_000_000]), "(1,000,002 characters)"),
        ("allocate", _allocate([core(2)], [core(2)]), "listed for more than one"),
        ("get_preferred_allocation", _preferred([core(1), core(1)], [], 1), "'neuroncore-0001'"),
        ("get_preferred_allocation", _preferred([core(1)], [core(1), core(1)], 1), "once"),
        (
            "get_preferred_allocation",
            _preferred([core(i) for i in range(10_000)], [], 4),
            "and 9,979 more",
        ),
        ("get_preferred_allocation", _preferred([core(1)], [], 10_000), "allocation size 10000"),
        ("get_preferred_allocation", _preferred([core(1)], [core(2)], 1), "must also be available"),
    ],
    ids=[
        "allocate-issue-13-pair",
        "allocate-ten-thousand-copies",
        "allocate-ten-thousand-ids",
        "allocate-one-megabyte-id",
        "allocate-id-in-two-containers",
        "preferred-repeated-available",
        "preferred-repeated-must-include",
        "preferred-ten-thousand-available",
        "preferred-oversize",
        "preferred-must-include-not-available",
    ],
)
def test_bad_requests_are_invalid_argument_with_a_bounded_message(
    node: RunningNode, call: str, request_: object, named: str
) -> None:
    err = _refusal(node, CORES, call, request_)
    details = err.details() or ""
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, (err.code(), details[:200])
    assert named in details
    assert len(details) <= MAX_ERROR_MESSAGE


def test_a_refused_request_allocates_nothing(node: RunningNode) -> None:
    cores = node.kubelet.wait_for_registration(CORES)
    err = _refusal(node, CORES, "allocate", _allocate([core(4), core(4)]))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert cores.allocate([core(4)]).envs == {"NEURON_RT_VISIBLE_CORES": "4"}
