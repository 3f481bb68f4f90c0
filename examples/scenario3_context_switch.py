"""Seed scenario 3: sixteen processes, each context switching between 2 models in one group.

Each process sets ``NEURONCORE_GROUP_SIZES=1`` and loads the model twice: the first load fills
the process's only group, the second goes into the same group again (the seed's load-order
rule), and the runtime switches between them.  Core memory is set to hold one model at a time
(``NEURON_SIM_CORE_MEMORY_MB=0``, as ResNet-50's weights would on an Inferentia core), so every
change of model swaps weights in; the switch-aware scheduler serves queued requests of the
resident model first, so there are far fewer switches than requests.

The launcher is scenario 2's, run with two models and 100 images per process.

    python examples/scenario3_context_switch.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    launcher = Path(__file__).with_name("scenario2_many_processes.py")
    arguments = ["--models-per-process", "2", "--images", "100", "--threads", "8", *sys.argv[1:]]
    os.execv(sys.executable, [sys.executable, "-P", str(launcher), *arguments])
