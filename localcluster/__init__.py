"""A real local Kubernetes control plane, built from Go modules, with simulated Neuron nodes.

Public surface: :class:`LocalCluster` (``up``/``attach``/``down`` plus the helpers tests use),
:func:`ensure_binaries`, and the CLI ``neuron-localcluster up|down|status|build|demo``.
"""

from neuron_localcluster.binaries import Binaries, BinaryError, ensure_binaries
from neuron_localcluster.cluster import ClusterError, LocalCluster, stop_cluster

__all__ = [
    "Binaries",
    "BinaryError",
    "ClusterError",
    "LocalCluster",
    "ensure_binaries",
    "stop_cluster",
]
