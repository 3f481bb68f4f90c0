"""Names Kubernetes knows Neuron nodes by: their extended resources and their taint.

AWS's Neuron device plugin and its EKS nodes use these names, and so does every part of this
project: the device plugin advertises the resources, the DRA driver's DeviceClass maps the core
resource onto its blocks, the operator asks for it and tolerates the taint, and the local cluster
gives its simulated nodes the same capacity and taint.  Renaming one breaks scheduling between
them, so each name is written here once.
"""

from __future__ import annotations

# One per NeuronCore; what NeuronWorkload pods ask for.
CORE_RESOURCE = "aws.amazon.com/neuroncore"
# One per Neuron device (an Inferentia or Trainium chip, several cores).
DEVICE_RESOURCE = "aws.amazon.com/neuron"
# EKS taints Neuron nodes ``aws.amazon.com/neuron:NoSchedule`` so that only pods which tolerate it
# land there.
NEURON_TAINT_KEY = "aws.amazon.com/neuron"
NEURON_TAINT_EFFECT = "NoSchedule"
