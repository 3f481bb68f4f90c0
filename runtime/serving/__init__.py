"""Serving models over the Open Inference Protocol (KServe v2), REST and gRPC.

Layers, from the wire in: ``rest_codec`` / ``grpc_codec`` and ``tensors`` (pure decoding and
validation), ``http_frontend`` / ``grpc_frontend`` (thin protocol adapters), ``service`` (models,
readiness, routing over copies), ``router`` (least-loaded group choice), ``batching`` (handing
requests to a group, merging those that wait), ``model_config`` and ``statistics`` (Triton's
configuration and statistics extensions), ``metrics``, and ``server`` (assembly and the SIGTERM
life cycle).  Both front ends sit on ``service`` and import nothing of each other.
``runtime_binding`` is the one place that touches ``neuron_runtime.NeuronRuntime``: it builds a
server for a runtime (``server_for_runtime``), above ``server``, which knows no runtime.
"""

from neuron_cores.models import ModelEntry
from neuron_runtime.serving.config import ConfigError, ServeConfig
from neuron_runtime.serving.server import InferenceServer, create_server, run_until_signalled
from neuron_runtime.serving.service import RuntimeHooks

__all__ = [
    "ConfigError",
    "InferenceServer",
    "ModelEntry",
    "RuntimeHooks",
    "ServeConfig",
    "create_server",
    "run_until_signalled",
]
