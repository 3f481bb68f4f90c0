"""The kubelet emulator's own rules: which Register requests a real kubelet refuses.

Its behaviour against a running plugin (dial inside Register, sockets cleaned at start, crash
and restart) is exercised by the device plugin's tests, which use it as their kubelet.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from neuron_device_plugin.api import deviceplugin_pb2 as pb
from neuron_device_plugin.api.services import API_VERSION
from neuron_localcluster.kubelet_emulator import KubeletEmulator

CORE = "aws.amazon.com/neuroncore"


@pytest.mark.parametrize(
    ("asked", "refuse", "problem"),
    [
        ((API_VERSION, "neuron.sock", CORE), None, None),
        (("v1alpha", "neuron.sock", CORE), None, "is not supported"),
        ((API_VERSION, "", CORE), None, "must be a socket file name"),
        ((API_VERSION, "sub/neuron.sock", CORE), None, "socket file name"),
        ((API_VERSION, "neuron.sock", "neuroncore"), None, "not an extended resource name"),
        ((API_VERSION, "neuron.sock", CORE), "no plugins here", "no plugins here"),
    ],
    ids=["accepted", "old-version", "no-endpoint", "endpoint-path", "bare-resource", "refusing"],
)
def test_check_registration(
    tmp_path: Path, asked: tuple[str, str, str], refuse: str | None, problem: str | None
) -> None:
    version, endpoint, resource = asked
    kubelet = KubeletEmulator(tmp_path, refuse=refuse)
    request = pb.RegisterRequest(version=version, endpoint=endpoint, resource_name=resource)
    found = kubelet.check_registration(request)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found
