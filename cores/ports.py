"""The serving ports: where ``neuron-runtime serve`` listens by default, and what the operator's
pods, Services and probes name.

The runtime's flags can move them, but a pod the operator builds relies on the defaults (it
declares the container ports and probes without passing a flag), so both read them here.
"""

from __future__ import annotations

# Open Inference Protocol over REST, plus /metrics and the health endpoints.
HTTP_PORT = 8000
# Open Inference Protocol over gRPC (inference.GRPCInferenceService).
GRPC_PORT = 8001
