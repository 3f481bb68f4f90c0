"""Group-aware inference runtime: NeuronCore Groups simulated on CPU workers."""
