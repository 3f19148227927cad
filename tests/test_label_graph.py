"""The label graph as data: edges and connected classes per tau on a hand-built co-occurrence matrix, agreement with
the GCN's adjacency, the picture, and the report sections reading a dataset prepared before labels.json had a graph."""

from __future__ import annotations

import io
import json
import posixpath

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image as PILImage

from trcgl.config import load_config
from trcgl.data import splits
from trcgl.data.dataset import load_dataset_info
from trcgl.data.label_graph import edges_at, graph_summary, read_graph, tau_table, with_tau
from trcgl.models.gcn import build_adjacency
from trcgl.pipeline.html import PNG_SIGNATURE, Image, Table, render
from trcgl.pipeline.report import label_graph_section
from trcgl.plotting import label_graph_plot
from trcgl.storage import Storage, dataset_dir
from trcgl.study.rows import label_graph_markdown

CLASSES = ["a", "b", "c", "d"]
GROUPS = ["head", "medium", "tail", "tail"]
# C[i, j] = images with both i and j; diagonal = positives. P(j|i) = C[i, j] / C[i, i]:
#   row a (/100): b 0.30, c 0.08      row b (/40): a 0.75, c 0.15
#   row c (/10):  a 0.80, b 0.60      row d (/5): nothing (d co-occurs with no class)
COUNTS = np.array(
    [
        [100, 30, 8, 0],
        [30, 40, 6, 0],
        [8, 6, 10, 0],
        [0, 0, 0, 5],
    ]
)
# tau -> (edges i -> j, tail classes isolated); an edge needs P(j|i) >= tau, so P = 0.30 is an edge at tau 0.3
EXPECTED = {
    0.1: ([("a", "b"), ("b", "a"), ("b", "c"), ("c", "a"), ("c", "b")], ["d"]),
    0.3: ([("a", "b"), ("b", "a"), ("c", "a"), ("c", "b")], ["d"]),
    0.7: ([("b", "a"), ("c", "a")], ["d"]),
    0.9: ([], ["c", "d"]),
}


@pytest.mark.parametrize("tau", sorted(EXPECTED))
def test_edges_and_connected_tail_classes_per_tau(tau: float) -> None:
    edges, tail_isolated = EXPECTED[tau]
    assert [(CLASSES[i], CLASSES[j]) for i, j, _ in edges_at(COUNTS, tau)] == edges
    (row,) = graph_summary(COUNTS, CLASSES, GROUPS, taus=(tau,))["by_tau"]
    assert row["edges"] == len(edges) and [(i, j) for i, j, _ in row["edge_list"]] == edges
    assert row["tail_isolated"] == tail_isolated and row["tail_connected"] == 2 - len(tail_isolated)
    connected = {i for i, _ in edges}
    assert row["connected"] == len(connected) and row["isolated"] == [c for c in CLASSES if c not in connected]


def test_edge_list_carries_p_j_given_i_and_the_summary_is_json_ready() -> None:
    summary = graph_summary(COUNTS, CLASSES, GROUPS, taus=(0.1,))
    assert summary["by_tau"][0]["edge_list"] == [
        ["a", "b", 0.3],
        ["b", "a", 0.75],
        ["b", "c", 0.15],
        ["c", "a", 0.8],
        ["c", "b", 0.6],
    ]
    assert json.loads(json.dumps(summary)) == summary


def test_edges_are_the_gcn_adjacencys_off_diagonal_entries() -> None:
    """The same graph the model builds (paper direction: row i = what node i aggregates)."""
    for tau in EXPECTED:
        adj = build_adjacency(COUNTS, tau, p=0.25).numpy()
        off = (adj > 0) & ~np.eye(len(CLASSES), dtype=bool)
        assert sorted(zip(*np.nonzero(off), strict=True)) == [(i, j) for i, j, _ in edges_at(COUNTS, tau)]


def test_bad_inputs_name_the_problem() -> None:
    with pytest.raises(ValueError, match="tau must be in"):
        edges_at(COUNTS, 1.5)
    with pytest.raises(ValueError, match="3 classes"):
        graph_summary(COUNTS, CLASSES[:3], GROUPS[:3])


def test_a_runs_tau_is_added_to_the_table_once() -> None:
    summary = graph_summary(COUNTS, CLASSES, GROUPS, taus=(0.1, 0.9))
    added = with_tau(summary, COUNTS, CLASSES, GROUPS, 0.3)
    assert [t["tau"] for t in added["by_tau"]] == [0.1, 0.3, 0.9]
    assert with_tau(added, COUNTS, CLASSES, GROUPS, 0.3) == added
    table = tau_table(added)
    assert table["edges"].tolist() == [5, 4, 0]
    assert table["tail classes connected"].tolist() == ["1 / 2", "1 / 2", "0 / 2"]
    assert table["classes connected"].tolist() == ["3 / 4", "3 / 4", "0 / 4"]


def _pixels(png: bytes) -> np.ndarray:
    assert png.startswith(PNG_SIGNATURE)
    return np.asarray(PILImage.open(io.BytesIO(png)).convert("RGB"))


def test_picture_is_a_png_that_draws_the_edges() -> None:
    with_edges = _pixels(label_graph_plot(CLASSES, GROUPS, edges_at(COUNTS, 0.1), 0.1, "toy"))
    without = _pixels(label_graph_plot(CLASSES, GROUPS, [], 0.1, "toy"))
    assert with_edges.shape[0] > 200 and with_edges.shape[1] > 200
    assert with_edges.shape != without.shape or (with_edges != without).any()
    # same edge count and sources (same title and node marks): only the arrows c -> a and c -> b differ
    to_a = _pixels(label_graph_plot(CLASSES, GROUPS, [(0, 1, 0.3), (2, 0, 0.8)], 0.3, "toy"))
    to_b = _pixels(label_graph_plot(CLASSES, GROUPS, [(0, 1, 0.3), (2, 1, 0.8)], 0.3, "toy"))
    assert to_a.shape == to_b.shape and (to_a != to_b).any()


def _publish_old_dataset(storage: Storage, name: str) -> None:
    """A published dataset as prepared before labels.json carried "graph": labels.json and cooccurrence.parquet."""
    base = dataset_dir(name)
    labels = {
        "classes": CLASSES,
        "groups": GROUPS,
        "counts": {"train": dict(zip(CLASSES, np.diag(COUNTS).tolist(), strict=True))},
        "images": {"train": 120, "val": 0, "test": 0},
        "image_size": 16,
    }
    storage.write_json(posixpath.join(base, "labels.json"), labels)
    frame = pa.Table.from_pandas(splits.cooccurrence_frame(CLASSES, COUNTS), preserve_index=False)
    storage.write_parquet(posixpath.join(base, "cooccurrence.parquet"), frame)
    storage.publish(base, {"stage": "prepare", "dataset": name})


def test_reports_draw_the_graph_of_a_dataset_prepared_before_labels_json_had_it(tmp_path) -> None:
    """read_graph computes the summary from cooccurrence.parquet; the run report's section and the study's table.md
    section show the picture and the tau table, with the run's tau added."""
    storage = Storage(str(tmp_path))
    _publish_old_dataset(storage, "old")
    assert read_graph(storage, "old") == graph_summary(COUNTS, CLASSES, GROUPS)
    cfg = load_config("tiny", [f"storage.root={tmp_path}", "model.gcn_tau=0.7"])
    section, png = label_graph_section(cfg, storage, "old", "no-such-run")  # no run config: the pipeline's tau
    assert _pixels(png).size > 0
    assert any(isinstance(b, Image) and b.png == png and "0.7" in b.caption for b in section.blocks)
    (table,) = [b.frame for b in section.blocks if isinstance(b, Table)]
    assert table["tau"].tolist() == [0.1, 0.2, 0.3, 0.4, 0.5, 0.7]
    assert table["edges"].tolist()[-1] == 2
    assert "Label graph" in render("r", [section])
    markdown = label_graph_markdown(cfg, storage, load_dataset_info(storage, "old"))
    assert "![label graph](label_graph.png)" in markdown and "without a neighbour: d." in markdown
    assert "| 0.700 | 2 | 1 / 2 | 2 / 4 |" in markdown
