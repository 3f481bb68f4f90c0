"""Kubelet device plugin advertising NeuronCores and Neuron devices."""
