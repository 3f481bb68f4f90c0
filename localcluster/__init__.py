"""A real local Kubernetes control plane, built from Go modules, with simulated Neuron nodes."""
