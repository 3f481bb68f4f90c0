"""The kubelet's DRA plugin API v1 and plugin registration API v1: generated messages, typed glue.

``dra_pb2`` and ``pluginregistration_pb2`` are generated from the ``.proto`` files next to them
and committed (a test regenerates and compares).  The services are registered by hand in
:mod:`neuron_dra_driver.api.services`, typed, as the device plugin does for its API.
"""
