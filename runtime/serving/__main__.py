"""``python -m neuron_runtime.serving``: the same as ``neuron-runtime serve``."""

import sys

from neuron_runtime.serving.cli import main

sys.exit(main())
