"""Typed doorways into the kubernetes client for the few calls whose stubs are loose.

Why: the client accepts plain dicts as request bodies (our manifests are dicts, built by pure
functions), but its type hints ask for model objects; these helpers say so in one place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

__all__ = ["ApiException", "api_client_for", "body", "raw_json"]


def api_client_for(kubeconfig: Path) -> k8s.ApiClient:
    made = k8s_config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    return cast(k8s.ApiClient, made)


def body(manifest: dict[str, Any]) -> Any:
    """A dict manifest where the client's stubs expect a model object (it sends dicts as-is)."""
    return manifest


def raw_json(response: object) -> dict[str, Any]:
    """The JSON of a call made with ``_preload_content=False`` (camelCase keys, as on the wire)."""
    data = cast(Any, response).data
    return cast(dict[str, Any], json.loads(data))
