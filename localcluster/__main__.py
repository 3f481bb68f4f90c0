"""``python -m neuron_localcluster``: the same as the ``neuron-localcluster`` console script."""

from neuron_localcluster.cli import main

raise SystemExit(main())
