"""Writing a node's pool of ResourceSlices through the API server, and nothing else.

The pool's content comes from :mod:`neuron_dra_driver.layout`; this module only reconciles the
API server's slices with it:

* the first publication lists what is already there (a restarted driver), continues the pool's
  generation from the highest one found plus one, replaces the slices it keeps, creates missing
  ones and deletes slices that are no longer part of the pool;
* later publications happen only when the set of unhealthy cores changes; every slice of the pool
  is rewritten with the next generation (the API requires one generation across a pool);
* :meth:`Publisher.cleanup` deletes every slice of this driver on this node (``--cleanup``).

The API surface is the small :class:`SliceApi` protocol, so the logic is tested against an
in-memory fake and, in the cluster tests, against the real API server through :class:`KubeSliceApi`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from neuron_dra_driver.layout import DRIVER_NAME, DRIVER_VERSION, NodeShape, pool_slices

log = logging.getLogger(__name__)

CONFLICT_RETRIES = 3


class PublishError(RuntimeError):
    """The API server refused a write; the message names the slice and its reason."""


class ConflictError(PublishError):
    """A slice changed between listing and writing (HTTP 409); listing again fixes it."""


@dataclass(frozen=True)
class ExistingSlice:
    name: str
    resource_version: str
    generation: int


class SliceApi(Protocol):
    """The writes a publisher needs, for one driver's slices on one node."""

    def list_slices(self, node: str) -> list[ExistingSlice]: ...

    def create_slice(self, body: Mapping[str, Any]) -> None: ...

    def replace_slice(self, name: str, body: Mapping[str, Any]) -> None: ...

    def delete_slice(self, name: str) -> None: ...


class Publisher:
    """Keeps one node's pool on the API server equal to the layout for its current health."""

    def __init__(
        self,
        api: SliceApi,
        node: str,
        shape: NodeShape,
        *,
        owner: Mapping[str, str] | None = None,
        driver_version: str = DRIVER_VERSION,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.api = api
        self.node = node
        self.shape = shape
        self.owner = owner
        self.driver_version = driver_version
        self.generation: int | None = None
        self._published: frozenset[int] | None = None
        self._since: dict[int, str] = {}  # core -> when it was first published unhealthy
        self.clock = clock

    @property
    def published_unhealthy(self) -> frozenset[int] | None:
        """The unhealthy cores of the last successful publication; None before the first."""
        return self._published

    def publish(self, unhealthy: Collection[int]) -> bool:
        """Publish the pool for ``unhealthy`` cores if it differs from the last; True if written.

        A failed publication is retried in full on the next call (nothing is assumed written).
        """
        wanted = frozenset(unhealthy)
        if wanted == self._published:
            return False
        now = self.clock().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        since = {core: self._since.get(core, now) for core in wanted}
        for attempt in range(1, CONFLICT_RETRIES + 1):
            self._published = None  # until this write completes, nothing is known to be there
            try:
                self._write(since)
            except ConflictError as err:
                log.warning("slice conflict on attempt %d, listing again: %s", attempt, err)
                continue
            self._published = wanted
            self._since = since
            return True
        raise PublishError(
            f"slices of node {self.node} kept changing under the driver ({CONFLICT_RETRIES} "
            "conflicts in a row); is a second driver publishing for the same node?"
        )

    def invalidate(self) -> None:
        """Forget the last publication, so the next :meth:`publish` rewrites the pool."""
        self._published = None

    def _write(self, unhealthy: Mapping[int, str]) -> None:
        existing = {s.name: s for s in self.api.list_slices(self.node)}
        floor = max((s.generation for s in existing.values()), default=-1)
        generation = max(floor, -1 if self.generation is None else self.generation) + 1
        slices = pool_slices(
            self.node,
            self.shape,
            generation=generation,
            unhealthy=unhealthy,
            driver_version=self.driver_version,
            owner=self.owner,
        )
        for body in slices:
            name = body["metadata"]["name"]
            found = existing.pop(name, None)
            if found is None:
                self.api.create_slice(body)
            else:
                meta = {**body["metadata"], "resourceVersion": found.resource_version}
                self.api.replace_slice(name, {**body, "metadata": meta})
        for stale in existing:
            self.api.delete_slice(stale)
        self.generation = generation
        log.info(
            "published %d slices for node %s, generation %d, unhealthy cores %s",
            len(slices),
            self.node,
            generation,
            sorted(unhealthy) or "none",
        )

    def cleanup(self) -> int:
        """Delete every slice of this driver on this node; returns how many were deleted."""
        self._published = None
        return delete_pool(self.api, self.node)


def delete_pool(api: SliceApi, node: str) -> int:
    """Delete every slice of this driver on ``node``; returns how many were deleted."""
    names = [s.name for s in api.list_slices(node)]
    for name in names:
        api.delete_slice(name)
    log.info("deleted %d slices of node %s", len(names), node)
    return len(names)


def _reason(error: Any) -> str:
    body: Any = getattr(error, "body", None)
    try:
        return str(json.loads(body)["message"])
    except (TypeError, ValueError, KeyError):
        return f"{getattr(error, 'status', '?')} {getattr(error, 'reason', error)}"


class KubeSliceApi:
    """:class:`SliceApi` over the kubernetes client's ``ResourceV1Api`` (resource.k8s.io/v1).

    Responses are not turned into model objects (``_preload_content=False``): a 64-core pool is
    1.4 MB of JSON, and the driver needs only names, versions and generations back.
    """

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client  # noqa: PLC0415 (a slow import)

        self._api = client.ResourceV1Api(api_client)
        self._exception: type[Exception] = client.ApiException

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            response = fn(*args, _preload_content=False, **kwargs)
        except self._exception as err:
            status = getattr(err, "status", None)
            message = f"{what}: the API server answered {_reason(err)}"
            if status == 409:
                raise ConflictError(message) from None
            if status == 404 and what.startswith("delete"):
                return None
            raise PublishError(message) from None
        data: bytes = response.data
        return json.loads(data) if data else None

    def list_slices(self, node: str) -> list[ExistingSlice]:
        selector = f"spec.driver={DRIVER_NAME},spec.nodeName={node}"
        found = self._call(
            f"list ResourceSlices of node {node}",
            self._api.list_resource_slice,
            field_selector=selector,
        )
        return [
            ExistingSlice(
                item["metadata"]["name"],
                item["metadata"]["resourceVersion"],
                int(item["spec"]["pool"]["generation"]),
            )
            for item in found["items"]
        ]

    def create_slice(self, body: Mapping[str, Any]) -> None:
        name = body["metadata"]["name"]
        self._call(f"create ResourceSlice {name}", self._api.create_resource_slice, body=body)

    def replace_slice(self, name: str, body: Mapping[str, Any]) -> None:
        self._call(
            f"replace ResourceSlice {name}", self._api.replace_resource_slice, name, body=body
        )

    def delete_slice(self, name: str) -> None:
        self._call(f"delete ResourceSlice {name}", self._api.delete_resource_slice, name)
