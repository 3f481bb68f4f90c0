"""Operator reconciling NeuronWorkload resources into pods."""
