"""The one shared definition of NeuronCore arithmetic, and the contract between the components.

The runtime, the device plugin and the operator all need to read ``NEURONCORE_GROUP_SIZES`` and
``NEURON_RT_VISIBLE_CORES``, to know how many cores an instance type has, and to reason about
contiguous runs of cores.  Writing that three times is how the three would drift apart (one
accepting ``16x1`` and another refusing it), so it lives here, free of I/O, and the three
components import it.  So does every other fact more than one component relies on: the resource
names and the taint (``resources``), the serving ports (``ports``), the ``NEURON_MODELS`` encoding
and the names of model copies (``models``), and the rule placing loaded models into groups
(``load_order``).
"""

from neuron_cores.allocations import (
    ALLOCATIONS_ANNOTATION,
    AllocationRecord,
    AllocationRecordError,
    format_record,
    parse_record,
)
from neuron_cores.flags import Flag, FlagError, add_flags, resolve
from neuron_cores.groups import (
    GROUP_SIZES_ENV,
    GroupSizesError,
    format_group_sizes,
    parse_group_sizes,
    split_into_groups,
)
from neuron_cores.instances import (
    INSTANCE_TYPES,
    InstanceType,
    UnknownInstanceTypeError,
    lookup_instance_type,
)
from neuron_cores.load_order import (
    LoadOrderError,
    can_load,
    load_group,
    load_order,
    loads_per_group,
)
from neuron_cores.logs import LOG_FORMATS, LOG_LEVELS
from neuron_cores.models import (
    MODELS_ENV,
    ModelEntry,
    ModelListError,
    copy_name,
    decode_models,
    encode_models,
    is_model_name,
    parse_model_pair,
)
from neuron_cores.numbers import MAX_NODE_CORES, is_ascii_digits, read_natural
from neuron_cores.ports import GRPC_PORT, HTTP_PORT
from neuron_cores.resources import (
    CORE_RESOURCE,
    DEVICE_RESOURCE,
    NEURON_TAINT_EFFECT,
    NEURON_TAINT_KEY,
)
from neuron_cores.visible import (
    VISIBLE_CORES_ENV,
    VISIBLE_DEVICES_ENV,
    CoreListError,
    contiguous_runs,
    format_core_list,
    is_contiguous,
    parse_core_list,
)

__all__ = [
    "ALLOCATIONS_ANNOTATION",
    "CORE_RESOURCE",
    "DEVICE_RESOURCE",
    "GROUP_SIZES_ENV",
    "GRPC_PORT",
    "HTTP_PORT",
    "INSTANCE_TYPES",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "MAX_NODE_CORES",
    "MODELS_ENV",
    "NEURON_TAINT_EFFECT",
    "NEURON_TAINT_KEY",
    "VISIBLE_CORES_ENV",
    "VISIBLE_DEVICES_ENV",
    "AllocationRecord",
    "AllocationRecordError",
    "CoreListError",
    "Flag",
    "FlagError",
    "GroupSizesError",
    "InstanceType",
    "LoadOrderError",
    "ModelEntry",
    "ModelListError",
    "UnknownInstanceTypeError",
    "add_flags",
    "can_load",
    "contiguous_runs",
    "copy_name",
    "decode_models",
    "encode_models",
    "format_core_list",
    "format_group_sizes",
    "format_record",
    "is_ascii_digits",
    "is_contiguous",
    "is_model_name",
    "load_group",
    "load_order",
    "loads_per_group",
    "lookup_instance_type",
    "parse_core_list",
    "parse_group_sizes",
    "parse_model_pair",
    "parse_record",
    "read_natural",
    "resolve",
    "split_into_groups",
]
