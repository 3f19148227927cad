"""The pipeline's run report: ``{root}/runs/{run}/report/report.html`` (self-contained, pictures inline) and its
pictures beside it, from what the stages wrote (no Ray)."""

from __future__ import annotations

import logging
import posixpath
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import yaml

from trcgl.config import Config, dump_yaml
from trcgl.data.dataset import load_dataset_info
from trcgl.data.label_graph import edges_at, read_graph, tau_table, with_tau
from trcgl.metrics import TABLE_METRICS
from trcgl.pipeline.html import Code, Image, Images, Section, Table, Text, render, versions
from trcgl.plotting import label_graph_plot
from trcgl.storage import GRIDS, Storage, run_dir
from trcgl.train.report import long_tail_plot

log = logging.getLogger(__name__)


def summary_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows × metrics, each cell ``value [lo, hi]`` (95 % bootstrap interval on the test split)."""
    out = []
    for row in rows:
        cells: dict[str, Any] = {"model": row["name"], "run": row["run"]}
        for m in TABLE_METRICS:
            value, ci = row.get(m), (row.get("ci") or {}).get(m)
            if value is None:
                cells[m] = "-"
            elif ci:
                cells[m] = f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
            else:
                cells[m] = f"{value:.3f}"
        cells["synthetic rows"] = row.get("synthetic_rows", 0)
        cells["extra rows"] = row.get("extra_rows", cells["synthetic rows"])
        out.append(cells)
    return pd.DataFrame(out)


def _read_png(storage: Storage, rel: str) -> bytes | None:
    return storage.read_bytes(rel) if storage.exists(rel) else None


def _per_class(storage: Storage, run: str) -> pd.DataFrame | None:
    rel = posixpath.join(run_dir(run, "classifier"), "per_class.parquet")
    if not storage.exists(rel):
        return None
    return pq.read_table(storage.pyarrow_fs.open_input_file(storage.path(rel))).to_pandas()


def _controls_text(cfg: Config) -> list[Text]:
    """How to read the control rows (``pipeline.controls``), when there are any."""
    if not cfg.pipeline.controls:
        return []
    return [
        Text(
            "The 'baseline + ...' rows retrain the baseline with extra tail rows, "
            f"{cfg.generate.aug_ratio_tail:g} per real tail positive (medium {cfg.generate.aug_ratio_medium:g}), "
            "from one source each: duplicated real rows, the diffusion model's images, and the oracle (the same "
            "generation plan rendered by PadChest-Synth's own renderer: a perfect generator). Synthetic rows below "
            "duplication with the oracle above it say the generator is short; the oracle at or below duplication "
            "says extra rows of this kind cannot help at this size. One seed each: read the differences against "
            "the intervals."
        )
    ]


def build_sections(
    cfg: Config, storage: Storage, summary: dict[str, Any], sweep: dict[str, Any] | None
) -> tuple[list[Section], dict[str, bytes]]:
    """The report's sections and the pictures to write beside it ({file name: PNG bytes})."""
    run = cfg.train.run
    pictures: dict[str, bytes] = {}
    sections = [
        Section(
            "Summary",
            [
                Text(
                    f"Test-split metrics of the best configuration and of the baseline ({cfg.pipeline.baseline}), "
                    f"trained the same way on {summary['dataset']}. Intervals are 95 % bootstrap intervals; model "
                    "selection used the validation split only."
                ),
                Table(summary_table(summary["rows"])),
                *_controls_text(cfg),
                Table(
                    pd.DataFrame(
                        [
                            {"stage": k, "seconds": v["seconds"], "skipped": v["skipped"]}
                            for k, v in summary["stages"].items()
                        ]
                    ),
                    caption="Stages",
                    float_format="{:.1f}",
                ),
            ],
        )
    ]
    best_run = summary["best_run"]
    table = _per_class(storage, best_run)
    if table is not None:
        pictures["per_class_ap.png"] = long_tail_plot(table, f"per-class test AP, classes by train frequency ({run})")
        shown = [c for c in ("class", "group", "train_count", "test_positives", "ap", "auroc") if c in table]
        sections.append(
            Section(
                "Long tail: per-class AP",
                [Image(pictures["per_class_ap.png"], "best configuration, test split"), Table(table[shown])],
            )
        )
    graph, graph_png = label_graph_section(cfg, storage, summary["dataset"], best_run)
    sections.append(graph)
    pictures["label_graph.png"] = graph_png
    syn = summary.get("synthetic")
    if syn:
        sections.append(synthetic_section(storage, run, syn))
    attention = _read_png(storage, posixpath.join(run_dir(best_run, "classifier"), "report", "attention_maps.png"))
    if attention is not None:
        sections.append(Section("Class-aware attention maps", [Image(attention, "best configuration, test images")]))
    if sweep is not None:
        blocks = [
            Text(
                f"{sweep['trials']} trials; best {sweep['best_trial']} ({sweep['metric']} "
                f"{sweep['best_value']:.4f}); best values: {sweep['best_params']}"
            )
        ]
        board_rel = posixpath.join(run_dir(run, "sweep"), "leaderboard.parquet")
        if storage.exists(board_rel):
            board = pq.read_table(storage.pyarrow_fs.open_input_file(storage.path(board_rel))).to_pandas()
            blocks.append(Table(board.drop(columns=["checkpoint", "error"], errors="ignore"), caption="Leaderboard"))
        plots = []
        for name in sweep.get("plots", []):
            png = _read_png(storage, posixpath.join(run_dir(run, "sweep"), "plots", f"{name}.png"))
            if png is not None:
                plots.append(Image(png, name.replace("_", " ")))
        if plots:
            blocks.append(Images(plots))
        sections.append(Section("Sweep", blocks))
    ablation = ablation_section(storage, run)
    if ablation is not None:
        sections.append(ablation)
    ver = versions()
    sections.append(
        Section(
            "Config and versions",
            [Code(dump_yaml(cfg)), Table(pd.DataFrame([{"package": k, "version": str(v)} for k, v in ver.items()]))],
        )
    )
    return sections, pictures


def label_graph_section(cfg: Config, storage: Storage, dataset: str, best_run: str) -> tuple[Section, bytes]:
    """The label graph of the train co-occurrence at the best configuration's ``model.gcn_tau`` (its
    ``config.yaml``; the pipeline config's when the run has none) and the edges and connected tail classes per tau.

    Returns:
        (the section, the graph's PNG).
    """
    best_yaml = posixpath.join(run_dir(best_run), "config.yaml")
    model = yaml.safe_load(storage.read_bytes(best_yaml))["model"] if storage.exists(best_yaml) else None
    tau = float(model["gcn_tau"]) if model else cfg.model.gcn_tau
    gcn = bool(model["gcn"]) if model else cfg.model.gcn
    info = load_dataset_info(storage, dataset)
    summary = with_tau(read_graph(storage, dataset), info.cooccurrence, info.classes, info.groups, tau)
    png = label_graph_plot(info.classes, info.groups, edges_at(info.cooccurrence, tau), tau, dataset)
    text = Text(
        "The GCN's label graph from train co-occurrence: an arrow i → j when P(j|i) = C[i, j] / C[i, i] >= tau; node "
        "i aggregates the nodes it points at, so a class with no arrow out (hollow; crossed out for tail classes) "
        f"borrows nothing. Drawn at the best configuration's tau = {tau:g}"
        + ("" if gcn else " (the best configuration does not use the GCN)")
        + "."
    )
    blocks = [text, Image(png, f"label graph at tau = {tau:g}"), Table(tau_table(summary), caption="Edges per tau")]
    return Section("Label graph", blocks), png


FIDELITY_SHOWN = (
    "class",
    "visible_pixels",
    "visible",
    "synthetic",
    "controls",
    "real_positives",
    "auroc_real",
    "auroc_synthetic",
    "auroc_control",
    "auroc_synthetic_vs_control",
    "mean_margin",
)


def realism_table(realism: dict[str, Any]) -> pd.DataFrame:
    """The realism two-sample test as a one-row table."""
    return pd.DataFrame(
        [
            {
                "two-sample AUROC (0.5 = indistinguishable)": realism.get("auroc"),
                "Laplacian std ratio (1 = as sharp)": realism.get("laplacian_std_ratio"),
                "synthetic images": realism.get("n_synthetic"),
                f"real {realism.get('real_split', 'train')} images": realism.get("n_real"),
            }
        ]
    )


def synthetic_section(storage: Storage, run: str, syn: dict[str, Any]) -> Section:
    """Synthetic tail images: sample grids against real positives, realism, fidelity with its controls and, for a
    filtered run, the images the fidelity filter kept against those it dropped.

    Args:
        storage: the storage root.
        run: ``train.run``.
        syn: the generate stage's report (``images``, ``realism``, ``fidelity``, ``filtered``).
    """
    grids_dir = storage.sidecar_rel(run_dir(run, "synthetic"), GRIDS)  # "grids" in a folder of the old layout
    blocks: list[Any] = [Text(f"{syn.get('images')} synthetic tail-class images; top row synthetic, bottom real.")]
    if syn.get("realism"):
        blocks += [
            Text(
                "Realism: a logistic regression on pooled pixels, the radial power spectrum and the Laplacian's "
                "standard deviation learns to tell synthetic from real train images of the same classes; its "
                "cross-validated AUROC is 0.5 when it cannot. The Laplacian ratio is below 1 for blurrier images."
            ),
            Table(realism_table(syn["realism"]), caption="Realism (two-sample test)"),
        ]
    if syn.get("fidelity"):
        fidelity = pd.DataFrame(syn["fidelity"])
        blocks += [
            Text(
                "Fidelity: the reference's AUROC for each class against real val negatives, of real val positives "
                "(auroc_real, the ceiling), of the synthetic images (auroc_synthetic) and of each synthetic image's "
                "matched control, the same generator input with the empty prompt (auroc_control: the generator's "
                "texture alone). A good generator gives auroc_synthetic near auroc_real and auroc_control near 0.5. "
                "mean_margin: the mean score of a synthetic image minus its own control's. visible: the finding "
                "changes enough pixels at this size for any generator to carry it."
            ),
            Table(
                fidelity[[c for c in FIDELITY_SHOWN if c in fidelity.columns]],
                caption="Fidelity with controls (reference: the baseline; real images: val split)",
            ),
        ]
    images = []
    for rel in sorted(storage.list_files(grids_dir)):
        if rel.endswith(".png") and posixpath.dirname(rel) == grids_dir:  # the per-class grids, not filtered/
            images.append(Image(storage.read_bytes(rel), posixpath.basename(rel)[:-4].replace("-", " ")))
    if images:
        blocks.append(Images(images))
    filtered = syn.get("filtered")
    if filtered:
        by = {"margin": "its score's margin over its own control", "score": "the reference's raw score"}
        blocks.append(
            Text(
                f"Fidelity filter: kept {filtered.get('kept')} of {filtered.get('of')} images, ranked by "
                f"{by.get(filtered.get('ranked_by'), 'the reference score')}; kept (top row) against dropped (bottom)."
            )
        )
        kept = [
            Image(png, f"kept vs dropped: {posixpath.basename(rel)[:-4].replace('-', ' ')}")
            for rel in filtered.get("grids", [])
            if (png := _read_png(storage, rel)) is not None
        ]
        if kept:
            blocks.append(Images(kept))
    return Section("Synthetic tail images vs real", blocks)


def ablation_section(storage: Storage, run: str) -> Section | None:
    """The run's ablation study (``jobs.ablation``) when it has been published: its table and pictures."""
    out = run_dir(run, "ablation")
    if storage.manifest(out) is None:
        return None
    frame = pq.read_table(storage.pyarrow_fs.open_input_file(storage.path(out, "table.parquet"))).to_pandas()
    shown = ["name", "seeds", "interval", "extra", "extra_rows", *TABLE_METRICS, "d_mAP", "d_tail_mAP"]
    header = storage.read_bytes(posixpath.join(out, "table.md")).decode().split("\n|", 1)[0].lstrip("# ").strip()
    blocks: list[Any] = [Text(header), Table(frame[[c for c in shown if c in frame.columns]], caption="Ablation")]
    pictures = [
        Image(png, caption)
        for name, caption in (
            ("tail_map.png", "tail mAP per row"),
            ("heatmap.png", "per-class test AP"),
            ("label_graph.png", "label graph at the study's tau"),
        )
        if (png := _read_png(storage, posixpath.join(out, name))) is not None
    ]
    if pictures:
        blocks.append(Images(pictures))
    report_rel = posixpath.join(out, "ablation_report.json")
    generated = storage.read_json(report_rel).get("generated", {}) if storage.exists(report_rel) else {}
    for extra, entry in generated.items():  # the study's own generated folders (table.md has their fidelity)
        blocks.append(Table(realism_table(entry["realism"]), caption=f"realism of {extra} ({entry['folder']})"))
    return Section("Ablation and peers", blocks)


def write_report(cfg: Config, storage: Storage, summary: dict[str, Any], sweep: dict[str, Any] | None) -> dict:
    """Writes ``report/report.html`` and its pictures; returns ``{"uri": report URI}``."""
    sections, pictures = build_sections(cfg, storage, summary, sweep)
    out = posixpath.join(run_dir(cfg.train.run), "report")
    for name, png in pictures.items():
        storage.write_bytes(posixpath.join(out, name), png)
    html = render(f"trcgl run {cfg.train.run}", sections, subtitle=f"dataset {summary['dataset']}")
    storage.write_text(posixpath.join(out, "report.html"), html)
    storage.publish(out, {"stage": "report"})
    return {"uri": storage.uri(out, "report.html")}
