"""The label graph as data: which classes the GCN connects at each threshold τ, from train co-occurrence alone.

The GCN's graph (:func:`trcgl.models.gcn.build_adjacency`) starts from the conditional probabilities
P(j|i) = C[i, j] / C[i, i] of the train co-occurrence counts C and keeps a directed edge i → j off the diagonal when
P(j|i) >= τ. Row i of the adjacency is what node i aggregates, so class i "has a neighbour" when it has an out-edge.
A tail class without one keeps only its own node: the GCN gives it nothing to borrow. :func:`graph_summary` says,
per τ, how many edges there are and which classes (tail classes first) have a neighbour; ``prepare`` stores it in
``_labels.json`` under ``"graph"`` and :func:`read_graph` reads it back (computing it for datasets prepared before).

P(j|i) is recomputed here rather than imported from the model (a data module does not load torch): the same three
lines as ``build_adjacency``'s binarisation.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from trcgl.storage import LABELS, Storage, dataset_dir

log = logging.getLogger(__name__)

TAUS = (0.1, 0.2, 0.3, 0.4, 0.5)  # the thresholds _labels.json summarises


def conditional_probabilities(cooccurrence: np.ndarray) -> np.ndarray:
    """P(j|i) = C[i, j] / C[i, i]; row i is 0 where class i has no train positive.

    Args:
        cooccurrence: (K, K) train co-occurrence counts, diagonal = per-class positive counts.

    Returns:
        (K, K) float64, row i = P(· | i).
    """
    counts = np.asarray(cooccurrence, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"co-occurrence matrix must be square (K, K), got shape {counts.shape}")
    diag = np.diag(counts)  # (K,)
    return np.divide(counts, diag[:, None], out=np.zeros_like(counts), where=diag[:, None] > 0)  # (K, K)


def edges_at(cooccurrence: np.ndarray, tau: float) -> list[tuple[int, int, float]]:
    """The directed edges i → j (i != j) with P(j|i) >= tau, ordered by i then j.

    Args:
        cooccurrence: (K, K) train co-occurrence counts.
        tau: the threshold (config key ``model.gcn_tau``), in [0, 1].

    Returns:
        [(i, j, P(j|i))]: node i aggregates node j.
    """
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"label-graph threshold tau must be in [0, 1], got {tau}")
    cond = conditional_probabilities(cooccurrence)  # (K, K)
    keep = (cond >= tau) & ~np.eye(len(cond), dtype=bool)  # (K, K)
    return [(int(i), int(j), float(cond[i, j])) for i, j in zip(*np.nonzero(keep), strict=True)]


def graph_summary(
    cooccurrence: np.ndarray, classes: Sequence[str], groups: Sequence[str], taus: Sequence[float] = TAUS
) -> dict[str, Any]:
    """Per threshold: the edges and which classes, and which tail classes, have at least one neighbour.

    Args:
        cooccurrence: (K, K) train co-occurrence counts.
        classes: K class names; groups: K of ``head`` / ``medium`` / ``tail``.
        taus: thresholds to summarise.

    Returns:
        ``{"rule": str, "by_tau": [{"tau", "edges", "edge_list": [[class_i, class_j, P(j|i)]], "connected",
        "isolated": [names], "tail", "tail_connected", "tail_isolated": [names]}]}``, JSON-ready; a class is
        connected when it has an out-edge (something to aggregate).
    """
    k = len(classes)
    if np.shape(cooccurrence) != (k, k) or len(groups) != k:
        raise ValueError(f"co-occurrence {np.shape(cooccurrence)}, {k} classes and {len(groups)} groups do not match")
    tail = [c for c, g in zip(classes, groups, strict=True) if g == "tail"]
    by_tau = []
    for tau in taus:
        edges = edges_at(cooccurrence, tau)
        sources = {i for i, _, _ in edges}
        isolated = [c for i, c in enumerate(classes) if i not in sources]
        tail_isolated = [c for c in isolated if c in tail]
        by_tau.append(
            {
                "tau": float(tau),
                "edges": len(edges),
                "edge_list": [[classes[i], classes[j], round(p, 4)] for i, j, p in edges],
                "connected": k - len(isolated),
                "isolated": isolated,
                "tail": len(tail),
                "tail_connected": len(tail) - len(tail_isolated),
                "tail_isolated": tail_isolated,
            }
        )
    rule = "edge i -> j when P(j|i) = C[i,j] / C[i,i] >= tau (i != j); connected: has an out-edge (train counts)"
    return {"rule": rule, "by_tau": by_tau}


def with_tau(
    summary: dict[str, Any], cooccurrence: np.ndarray, classes: Sequence[str], groups: Sequence[str], tau: float
) -> dict[str, Any]:
    """The summary with a row for ``tau`` (a run's ``model.gcn_tau``, e.g. a swept one) when it has none, ordered
    by tau."""
    if any(np.isclose(t["tau"], tau) for t in summary["by_tau"]):
        return summary
    extra = graph_summary(cooccurrence, classes, groups, taus=(tau,))["by_tau"]
    return {**summary, "by_tau": sorted(summary["by_tau"] + extra, key=lambda t: t["tau"])}


def tau_table(summary: dict[str, Any]) -> pd.DataFrame:
    """The summary as a small table: tau, edges, tail classes connected, classes connected."""
    return pd.DataFrame(
        [
            {
                "tau": t["tau"],
                "edges": t["edges"],
                "tail classes connected": f"{t['tail_connected']} / {t['tail']}",
                "classes connected": f"{t['connected']} / {t['connected'] + len(t['isolated'])}",
            }
            for t in summary["by_tau"]
        ]
    )


def read_graph(storage: Storage, dataset: str) -> dict[str, Any]:
    """A published dataset's graph summary: ``_labels.json``'s ``"graph"``, or, for a dataset prepared before the
    labels carried it, computed from ``_cooccurrence.parquet`` (the same counts it would have been made from)."""
    labels = storage.read_json(storage.sidecar_rel(dataset_dir(dataset), LABELS))
    if "graph" in labels:
        return labels["graph"]
    log.info("dataset %s: its labels sidecar has no graph summary (older dataset); computing it", dataset)
    # lazy: trcgl.data.dataset imports prepare, which imports this module
    from trcgl.data.dataset import load_dataset_info

    info = load_dataset_info(storage, dataset)
    return graph_summary(info.cooccurrence, info.classes, info.groups)
