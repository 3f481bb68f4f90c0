"""Where an emulated node keeps its sockets and files.

Why apart from the agent: the cluster (which starts and cleans up node agents), the demo and the
tests find the same sockets and files the agent makes; they read the names here without
importing the agent.  Sockets live in short folders under the temp folder (a unix socket path must
stay under 108 bytes), named by a digest of the node's work folder so nodes do not collide.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

# In the node's work folder: which devices and Neuron envs each running pod holds.
ALLOCATIONS_FILE = "allocations.json"
# In the node's work folder: the simulated backend's health file (cores marked unhealthy).
UNHEALTHY_CORES_FILE = "unhealthy-cores"


def plugin_dir_for(workdir: Path) -> Path:
    """A short folder for the plugin sockets: a unix socket path must stay under 108 bytes."""
    return Path(tempfile.gettempdir()) / f"ng-dp-{_digest(workdir)}"


def pod_resources_socket_for(workdir: Path) -> Path:
    """The PodResources socket, in its own folder as on a real node (a kubelet restart cleans the
    device-plugin folder, not this one)."""
    return Path(tempfile.gettempdir()) / f"ng-pr-{_digest(workdir)}" / "kubelet.sock"


def dra_dir_for(workdir: Path) -> Path:
    """The short folder of the DRA driver's sockets: ``plugins/<driver>/`` and
    ``plugins_registry/`` as under /var/lib/kubelet on a real node."""
    return Path(tempfile.gettempdir()) / f"ng-dra-{_digest(workdir)}"


def _digest(workdir: Path) -> str:
    return hashlib.sha1(str(workdir.resolve()).encode()).hexdigest()[:12]
