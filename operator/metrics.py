"""Prometheus metrics of the operator (served by ``neuron-operator run --metrics-port``).

Counters rather than logs answer the questions an on-call engineer asks: is the operator
reconciling, is it failing, how many pods is it churning, and which replica leads.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter(
    "neuron_operator_reconciles_total",
    "Reconciles of NeuronWorkloads, by result (ok, invalid, refused, retry, error).",
    ["result"],
)
RECONCILE_SECONDS = Histogram(
    "neuron_operator_reconcile_duration_seconds",
    "Time one reconcile of one NeuronWorkload takes, API calls included.",
)
PODS_CREATED = Counter("neuron_operator_pods_created_total", "Pods created by the operator.")
PODS_DELETED = Counter("neuron_operator_pods_deleted_total", "Pods deleted by the operator.")
LEADER = Gauge(
    "neuron_operator_leader", "1 while this replica holds the leader Lease and acts, else 0."
)
UNSCHEDULABLE_PODS = Gauge(
    "neuron_operator_unschedulable_pods",
    "Pods of a NeuronWorkload the scheduler could not place, at the last reconcile.",
    ["namespace", "workload"],
)
REFUSALS = Counter(
    "neuron_operator_refusals_total",
    "Writes of child objects refused (by the API server, or by the operator before sending), "
    "by reason (Forbidden, QuotaExceeded, PodTooLarge, InvalidSpec, NotOwned, APIUnavailable...).",
    ["reason"],
)
RECONCILE_REQUESTS = Counter(
    "neuron_operator_reconcile_requests_total",
    "Requests for a reconcile (watch events, resync, retries), by what became of them: queued, "
    "or coalesced into one already waiting.",
    ["result"],
)
RECONCILE_QUEUE = Gauge(
    "neuron_operator_reconcile_queue_depth",
    "NeuronWorkloads waiting for a reconcile (each counted once, however many requests).",
)
