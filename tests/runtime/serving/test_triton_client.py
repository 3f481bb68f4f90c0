"""Round trips with the official Triton client, the peer the issue names, over HTTP and gRPC.

tritonclient's HTTP client sends binary tensors and asks for binary outputs by default; its gRPC
client sends ``raw_input_contents``.  The gRPC client runs in a subprocess because its generated
messages and ours both define ``inference.*`` in the default descriptor pool.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

X = np.arange(12, dtype=np.float32).reshape(3, 4)
EXPECTED = X @ np.ones((4, 2), np.float32)


@pytest.fixture
def server(start_server: Any, fake_runtime: Any) -> Any:
    return start_server(fake_runtime)


@pytest.fixture
def http_client(server: Any) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.server.http_port}")
    yield client
    client.close()
    # The client's __del__ closes it again, touching its gevent hub, which fails on any other
    # thread (the garbage collector may run on the server's): make that second close a no-op.
    setattr(client, "close", lambda: None)  # noqa: B010


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_http_round_trip(http_client: httpclient.InferenceServerClient, binary: bool) -> None:
    client = http_client
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("mlp")
    assert client.get_server_metadata()["name"] == "neuron-runtime"
    metadata = client.get_model_metadata("mlp")
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    tensor = httpclient.InferInput("input", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X, binary_data=binary)
    outputs = [
        httpclient.InferRequestedOutput("output", binary_data=binary),
        httpclient.InferRequestedOutput("label", binary_data=binary),
    ]
    result = client.infer("mlp", [tensor], outputs=outputs, request_id="t1")
    np.testing.assert_array_equal(result.as_numpy("output"), EXPECTED)
    assert result.as_numpy("label").tolist() == [3, 3, 3]
    assert result.get_response()["id"] == "t1"
    # No outputs named: the client asks for every output in binary.
    everything = client.infer("mlp", [tensor])
    np.testing.assert_array_equal(everything.as_numpy("output"), EXPECTED)


def test_http_errors_reach_the_client(http_client: httpclient.InferenceServerClient) -> None:
    client = http_client
    wrong = httpclient.InferInput("input", [1, 3], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 3), np.float32))
    with pytest.raises(InferenceServerException, match=r"takes \[-1, 4\]"):
        client.infer("mlp", [wrong])
    with pytest.raises(InferenceServerException, match="unknown model 'ghost'"):
        client.get_model_metadata("ghost")
    assert not client.is_model_ready("ghost")


GRPC_CLIENT = """
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

client = grpcclient.InferenceServerClient(sys.argv[1])
x = np.arange(12, dtype=np.float32).reshape(3, 4)
out = {"live": client.is_server_live(), "ready": client.is_server_ready(),
       "model_ready": client.is_model_ready("mlp"),
       "server": client.get_server_metadata(as_json=True)["name"],
       "inputs": client.get_model_metadata("mlp", as_json=True)["inputs"]}
tensor = grpcclient.InferInput("input", [3, 4], "FP32")
tensor.set_data_from_numpy(x)
result = client.infer("mlp", [tensor], outputs=[grpcclient.InferRequestedOutput("output")])
out["output"] = result.as_numpy("output").tolist()
out["label_absent"] = result.as_numpy("label") is None
wrong = grpcclient.InferInput("input", [1, 3], "FP32")
wrong.set_data_from_numpy(np.zeros((1, 3), np.float32))
try:
    client.infer("mlp", [wrong])
except InferenceServerException as exc:
    out["error"] = [exc.status(), exc.message()]
try:
    client.infer("ghost", [tensor])
except InferenceServerException as exc:
    out["missing"] = exc.status()
client.close()
json.dump(out, sys.stdout)
"""


def test_grpc_round_trip(server: Any) -> None:
    result = subprocess.run(
        [sys.executable, "-c", GRPC_CLIENT, server.grpc_target],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["live"] and out["ready"] and out["model_ready"]
    assert out["server"] == "neuron-runtime"
    assert out["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "4"]}]
    assert out["output"] == EXPECTED.tolist()
    assert out["label_absent"]
    assert out["error"][0] == "StatusCode.INVALID_ARGUMENT"
    assert "takes [-1, 4]" in out["error"][1]
    assert out["missing"] == "StatusCode.NOT_FOUND"
