"""The DRA driver: NeuronCore blocks published as ResourceSlices for Dynamic Resource Allocation.

Every contiguous run of a node's NeuronCores is one device; per-core shared counters keep the
blocks a scheduler allocates disjoint.  ``layout`` is the pure part (which blocks, in which order,
within the API's limits), ``publisher`` writes them through the API server, ``cli`` runs it.
"""

from neuron_dra_driver.layout import DRIVER_NAME

__version__ = "0.1.0"

__all__ = ["DRIVER_NAME", "__version__"]
