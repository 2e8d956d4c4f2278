"""Can the cluster ever hold what a stage asks for? Checked before Serve or Ray Train request anything.

A placement group or replica that no node can hold waits forever without an error (the most common
multi-node complaint in ANCHORS.md). We instead place the requested bundles on the nodes the cluster has
right now, greedily, and fail with the numbers when some do not fit. On an autoscaling cluster nodes
appear on demand, so the check is skipped there (``ray.autoscaling: true``) and the autoscaler decides.
"""

from __future__ import annotations


class ResourceError(RuntimeError):
    """The cluster can never hold a stage's request; the message has the numbers and what to change."""


def cluster_nodes(available: bool = False) -> list[dict[str, float]]:
    """Each live node's total resources, or (``available``) what is free on it right now."""
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    if available:
        try:  # no public per-node API in Ray 2.60; the aggregate ray.available_resources() hides placement
            from ray._private.state import available_resources_per_node

            free = available_resources_per_node()
            return [dict(free.get(n["NodeID"], {})) for n in alive]
        except Exception:  # noqa: BLE001 - fall back to totals rather than fail the check itself
            pass
    return [dict(n["Resources"]) for n in alive]


def place(bundles: list[dict[str, float]], nodes: list[dict[str, float]]) -> list[int]:
    """Indices of the bundles that do not fit when placed one by one, each on the first node with room."""
    free = [dict(n) for n in nodes]
    unplaced = []
    for i, bundle in enumerate(bundles):
        for node in free:
            if all(node.get(k, 0.0) >= v for k, v in bundle.items() if v > 0):
                for k, v in bundle.items():
                    node[k] = node.get(k, 0.0) - v
                break
        else:
            unplaced.append(i)
    return unplaced


def describe_nodes(nodes: list[dict[str, float]], keys: set[str]) -> str:
    keys = keys | {"CPU"}
    parts = []
    for i, node in enumerate(nodes):
        cells = ", ".join(f"{k} {node.get(k, 0):g}" for k in sorted(keys) if k in node or k in ("CPU", "GPU"))
        parts.append(f"node {i}: {cells}")
    return "; ".join(parts) or "no nodes"


def check_bundles(what: str, bundles: list[dict[str, float]], nodes: list[dict[str, float]], hint: str) -> None:
    missing = place(bundles, nodes)
    if missing:
        need = bundles[missing[0]]
        keys = {k for b in bundles for k in b}
        raise ResourceError(
            f"{what}: {len(missing)} of {len(bundles)} requested bundles (such as {need}) fit on no node of this "
            f"cluster ({describe_nodes(nodes, keys)}). {hint} On an autoscaling cluster set ray.autoscaling=true "
            "to leave this to the autoscaler.")


def wait_for(check, wait_s: float, log=print, poll_s: float = 5.0) -> None:
    """Run ``check(nodes)`` against the present nodes; while it raises and ``wait_s`` has not passed, wait for
    nodes that are still joining, then raise the last error with its numbers."""
    import time

    deadline = time.monotonic() + wait_s
    told = False
    while True:
        try:
            check(cluster_nodes())
            return
        except Exception:
            if time.monotonic() >= deadline:
                raise
            if not told:
                log(f"[pbt] waiting up to {wait_s:g} s for nodes to join (ray.resource_wait_s)")
                told = True
            time.sleep(poll_s)


def grow_sizing(cfg) -> dict[str, int]:
    """How the growers' actor pool should scale with the debater replicas (docs/clusters.md, "Sizing").

    The app keeps each replica busy with ``target_ongoing_requests`` in flight, so at full scale it takes
    sum(max_replicas x target_ongoing_requests) requests at once; each grower keeps up to ``max_in_flight``
    requests open, so saturating the app takes ceil(capacity / max_in_flight) growers."""
    import math

    capacity = sum(m.max_replicas * m.target_ongoing_requests for m in cfg.serve.models)
    offered = cfg.grow.max_growers * cfg.grow.max_in_flight
    return {"app_capacity": capacity, "growers_offer": offered,
            "growers_needed": max(1, math.ceil(capacity / cfg.grow.max_in_flight))}
