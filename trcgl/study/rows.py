"""The ablation and peer study without Ray: row configs, the study's checks and its table, pictures and report.

A study of run ``R`` (``train.run``) trains every row of ``ablation.rows`` once per seed of ``ablation.seeds`` as the
classifier run ``R/ablation/rows/{slug}/seed{seed}`` (a deterministic name: a rerun finds finished rows and resumes
unfinished ones from their checkpoints). Each row is the run's config with the row's overrides; its ``extra``
pseudo-key says where extra tail/medium rows come from (see :class:`trcgl.config.AblationConfig`). Every row is
scored on the same test images; :mod:`trcgl.study.table` turns the scores into the table.

Generated folders rows draw from (:func:`synthetic_folder`): ``synthetic`` / ``synthetic_filtered`` rows the run's
own ``runs/R/synthetic{,_filtered}/`` (made with the run's ``generate.mode``); ``synthetic_sample`` /
``synthetic_edit`` rows ``runs/R/modes/{mode}/synthetic/``, made by the sub-run ``R/modes/{mode}``
(:func:`mode_generate_config`: the run's generate config with the mode forced and the study's diffusion model and
reference pinned, so nothing is looked up in the sub-run's own folders). :func:`generate_configs` lists every
generation the study's rows need.

Outputs under ``{root}/runs/R/ablation/``: ``table.parquet``, ``table.md``, ``heatmap.png`` (per-class AP, classes by
train frequency), ``tail_map.png`` (tail mAP per row with intervals), ``label_graph.png`` (the GCN rows' label graph
at ``model.gcn_tau``), ``ablation_report.json`` and, last, ``_manifest.json``. The Ray side (the grid on Ray Tune) is
:mod:`trcgl.study.ray_ablation`.
"""

from __future__ import annotations

import io
import logging
import posixpath
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from trcgl.config import (
    ABLATION_EXTRAS,
    MODE_EXTRAS,
    Config,
    ConfigError,
    apply_overrides,
    config_hash,
    filters_fidelity,
)
from trcgl.data.dataset import DatasetInfo
from trcgl.data.label_graph import edges_at, read_graph, tau_table, with_tau
from trcgl.plotting import label_graph_plot
from trcgl.storage import FIDELITY, REALISM, Storage, run_dir, slugify
from trcgl.study import table as at

log = logging.getLogger(__name__)

STAGE = "ablation"
SYNTHETIC_EXTRAS = ("synthetic", "synthetic_filtered")  # the run's own generated folders (its generate.mode)
# every extra whose rows draw generated images: the run's own folders, and one folder per forced generate.mode
GENERATED_EXTRAS = (*SYNTHETIC_EXTRAS, *MODE_EXTRAS)
ORACLE = "oracle"  # the extra of rows drawing the run's oracle/ folder (trcgl.data.synth.oracle)


def row_slug(name: str) -> str:
    """A path-safe name of a row: lower case, runs of other characters than [a-z0-9] as one ``_``.

    >>> row_slug("+ SE + CA + GCN (full - diffusion)")
    'se_ca_gcn_full_diffusion'
    """
    return slugify(name, "_") or "row"


def row_run(run: str, name: str, seed: int) -> str:
    """The classifier run of one row and seed (deterministic: a rerun finds it)."""
    return f"{run}/{STAGE}/rows/{row_slug(name)}/seed{seed}"


def row_extra(row: dict[str, Any]) -> str:
    """Where the row's extra rows come from: one of :data:`trcgl.config.ABLATION_EXTRAS` (none when the row does
    not say)."""
    return str(row.get("extra", "none"))


def mode_run(run: str, mode: str) -> str:
    """The sub-run that generates the study's images of one forced ``generate.mode`` (deterministic: a rerun finds
    it)."""
    return f"{run}/modes/{mode}"


def synthetic_folder(run: str, extra: str) -> str | None:
    """The generated folder (relative to the root) that rows with ``extra`` draw from; None for none, real, oracle.

    >>> synthetic_folder("r", "synthetic_edit")
    'runs/r/modes/edit/synthetic'
    """
    if extra in SYNTHETIC_EXTRAS:
        return run_dir(run, extra)
    if extra in MODE_EXTRAS:
        return run_dir(mode_run(run, MODE_EXTRAS[extra]), "synthetic")
    return None


def study_ratios(cfg: Config, storage: Storage) -> tuple[float, float, str]:
    """The per-group ratios of extra rows for rows with ``extra`` other than none, and where they came from.

    With ``ablation.ratios_from_sweep`` and a finished sweep of the run whose best trial drew synthetic data
    (``train.aug_ratio_tail`` or ``train.aug_ratio_medium`` > 0), that trial's ratios (chosen on val: no test
    split in model selection); otherwise ``ablation.aug_ratio_tail`` / ``ablation.aug_ratio_medium``.

    Returns:
        (tail ratio, medium ratio, a sentence saying where they came from).
    """
    ab = cfg.ablation
    report_rel = posixpath.join(run_dir(cfg.train.run, "sweep"), "sweep_report.json")
    if ab.ratios_from_sweep and storage.manifest(run_dir(cfg.train.run, "sweep")) is not None:
        best = storage.read_json(report_rel).get("best_params", {})
        tail = float(best.get("train.aug_ratio_tail", cfg.train.aug_ratio_tail))
        medium = float(best.get("train.aug_ratio_medium", cfg.train.aug_ratio_medium))
        if tail > 0 or medium > 0:
            return tail, medium, f"the sweep's best trial ({storage.uri(report_rel)})"
        source = "ablation.aug_ratio_* (the sweep's best trial used no synthetic data)"
    elif ab.ratios_from_sweep:
        source = "ablation.aug_ratio_* (the run has no finished sweep)"
    else:
        source = "ablation.aug_ratio_*"
    return ab.aug_ratio_tail, ab.aug_ratio_medium, source


def row_config(base: Config, name: str, seed: int, ratios: tuple[float, float]) -> Config:
    """The typed config of one row and seed: ``base`` (the study's config) with the row's overrides.

    Args:
        base: the study's config (dataset pinned); its ``train.run`` is the study's run.
        name: a key of ``base.ablation.rows``.
        seed: the row's ``train.seed``.
        ratios: (tail, medium) ratios for rows whose ``extra`` is not none.

    Raises:
        ConfigError: the row's ``extra`` is unknown, or an override of the row is not a config key or has the wrong
            type (the message names ``ablation.rows.<name>``).
    """
    row = base.ablation.rows[name]
    run = base.train.run
    extra = row_extra(row)
    if extra not in ABLATION_EXTRAS:
        raise ConfigError(
            f"config key 'ablation.rows.{name}.extra' must be one of {list(ABLATION_EXTRAS)}, got {extra!r}"
        )
    folder = synthetic_folder(run, extra)
    values: dict[str, Any] = {k: v for k, v in row.items() if k != "extra"}
    tail, medium = ratios if extra != "none" else (0.0, 0.0)
    values.update(
        {
            "train.run": row_run(run, name, seed),
            "train.seed": seed,
            "train.aug_ratio_tail": tail,
            "train.aug_ratio_medium": medium,
            "train.extra_source": extra if extra in ("real", ORACLE) else "synthetic",
            "train.synthetic": [folder] if folder is not None else [],
            "train.oracle": run_dir(run, ORACLE) if extra == ORACLE else None,
        }
    )
    return apply_overrides(base, values, f"ablation.rows.{name}")


def needs_generation(cfg: Config) -> list[str]:
    """The generated extras some row draws from (of :data:`GENERATED_EXTRAS`), sorted."""
    return sorted({row_extra(r) for r in cfg.ablation.rows.values()} & set(GENERATED_EXTRAS))


def mode_generate_config(cfg: Config, mode: str, model: str, reference: str | None) -> Config:
    """The generate config of the study's images of one forced mode: the run's, as the sub-run :func:`mode_run`.

    Args:
        cfg: the study's config.
        mode: the forced ``generate.mode`` (sample or edit).
        model: the study run's diffusion model (:func:`trcgl.diffusion.ray_generate.model_location` of ``cfg``),
            pinned as ``generate.model``: the sub-run has no model of its own.
        reference: the study's fidelity reference checkpoint, pinned as ``generate.reference_checkpoint`` (None:
            fidelity not scored).
    """
    values = {
        "train.run": mode_run(cfg.train.run, mode),
        "generate.mode": mode,
        "generate.model": model,
        "generate.reference_checkpoint": reference,
    }
    return apply_overrides(cfg, values, f"ablation generate.mode={mode}")


def generate_configs(cfg: Config, model: str, reference: str | None) -> dict[str, Config]:
    """Every generation the study's rows need, as {folder it writes: its generate config}, in a stable order.

    The run's own ``synthetic/`` (which also writes ``synthetic_filtered/``) is made from ``cfg`` itself when a
    ``synthetic`` or ``synthetic_filtered`` row draws it; each ``synthetic_<mode>`` extra gets
    :func:`mode_generate_config`. (A ``synthetic`` row and the ``synthetic_<mode>`` row of the run's own mode draw
    identical images from two folders.)

    Args:
        cfg: the study's config.
        model: the study run's diffusion model URI.
        reference: the study's fidelity reference checkpoint URI, or None.
    """
    needs = needs_generation(cfg)
    out: dict[str, Config] = {}
    if set(needs) & set(SYNTHETIC_EXTRAS):
        out[run_dir(cfg.train.run, "synthetic")] = cfg
    for extra in needs:
        if extra in MODE_EXTRAS:
            out[str(synthetic_folder(cfg.train.run, extra))] = mode_generate_config(
                cfg, MODE_EXTRAS[extra], model, reference
            )
    return out


def needs_oracle(cfg: Config) -> bool:
    """Whether some row draws the run's oracle rows (``oracle/``, rendered by the oracle stage)."""
    return any(row_extra(r) == ORACLE for r in cfg.ablation.rows.values())


def check_ablation(cfg: Config) -> None:
    """Checks the study before any work: row names give distinct folders, every row builds a valid config and leaves
    generation to the study, the synthetic folders rows draw from can be made.

    Raises:
        ConfigError: naming the row (``ablation.rows.<name>``) or key at fault.
    """
    slugs: dict[str, str] = {}
    for name, row in cfg.ablation.rows.items():
        shared = sorted(k for k in row if k.startswith(("generate.", "diffusion.")))
        if shared:
            raise ConfigError(
                f"config key 'ablation.rows.{name}.{shared[0]}': rows share the study's diffusion model and generated "
                "images, so a row cannot change generate.* or diffusion.*; set them for the whole study, or pick a "
                f"generation mode per row with extra: {' / '.join(MODE_EXTRAS)}"
            )
        slug = row_slug(name)
        if slug in slugs:
            raise ConfigError(
                f"config keys 'ablation.rows.{slugs[slug]}' and 'ablation.rows.{name}' share the folder name {slug!r}: "
                "rename one"
            )
        slugs[slug] = name
        for seed in cfg.ablation.seeds:
            row_config(cfg, name, seed, (cfg.ablation.aug_ratio_tail, cfg.ablation.aug_ratio_medium))
    if "synthetic_filtered" in needs_generation(cfg) and not filters_fidelity(cfg):
        users = [n for n, r in cfg.ablation.rows.items() if row_extra(r) == "synthetic_filtered"]
        raise ConfigError(
            f"config key 'ablation.rows.{users[0]}.extra' is synthetic_filtered but generate.fidelity_threshold and "
            "generate.fidelity_keep_fraction are null, so nothing makes that folder: set one or change the row"
        )


def grid_hash(cfg: Config, ratios: tuple[float, float]) -> str:
    """Identity of a study's grid (rows, seeds, ratios): a changed grid starts a new Tune experiment (finished rows
    are still found by their run folders)."""
    return config_hash({"rows": cfg.ablation.rows, "seeds": cfg.ablation.seeds, "ratios": list(ratios)})[:8]


def table_hash(cfg: Config) -> str:
    """Identity of what the table is computed with besides the grid (baseline, comparisons, resamples): a study whose
    grid is finished but whose table settings changed writes its table again without training anything."""
    ab = cfg.ablation
    return config_hash({"baseline": ab.baseline, "comparisons": ab.comparison_pairs(), "bootstrap": ab.bootstrap})[:8]


def _classifier(run: str) -> str:
    return run_dir(run, "classifier")


def row_finished(storage: Storage, run: str) -> bool:
    """Whether a row's classifier run wrote its summary (trained and tested)."""
    return storage.exists(posixpath.join(_classifier(run), "summary.json"))


def load_row(storage: Storage, cfg: Config, name: str, seed: int, info: DatasetInfo) -> dict[str, Any]:
    """One row and seed as :func:`trcgl.study.table.ablation_table` takes it: test scores sorted by image id.

    Raises:
        FileNotFoundError: the row has no test predictions (not finished); the message names the run.
    """
    run = row_run(cfg.train.run, name, seed)
    rel = posixpath.join(_classifier(run), "predictions.parquet")
    if not storage.exists(rel):
        raise FileNotFoundError(f"ablation row {name!r} seed {seed}: no test predictions at {storage.uri(rel)}")
    table = pq.read_table(io.BytesIO(storage.read_bytes(rel))).sort_by("image_id")
    k = info.num_classes
    summary = storage.read_json(posixpath.join(_classifier(run), "summary.json"))
    return {
        "name": name,
        "seed": seed,
        "image_ids": np.asarray(table["image_id"].to_pylist()),
        "scores": np.asarray(table["scores"].to_pylist(), dtype=np.float64).reshape(-1, k),  # (N, K)
        "labels": np.asarray(table["labels"].to_pylist(), dtype=np.float64).reshape(-1, k),  # (N, K)
        "classes": list(info.classes),
        "groups": list(info.groups),
        "summary": summary,
        "run": run,
    }


def _extra_rows(summary: dict[str, Any]) -> int:
    mix = summary.get("train_rows", {})
    return int(mix.get("synthetic", 0)) + int(mix.get("resampled", 0)) + int(mix.get(ORACLE, 0))


# fidelity columns the study's table.md shows per generated folder (_fidelity.parquet has them all)
QUALITY_COLUMNS = (
    "class",
    "visible_pixels",
    "visible",
    "synthetic",
    "auroc_real",
    "auroc_synthetic",
    "auroc_control",
    "auroc_synthetic_vs_control",
    "mean_margin",
)


def _markdown_frame(frame: pd.DataFrame) -> str:
    """A plain Markdown table, floats to 3 decimals."""
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in frame.itertuples(index=False)]
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells]) + "\n"


def generated_quality(cfg: Config, storage: Storage) -> tuple[dict[str, dict[str, Any]], str]:
    """Realism and fidelity with controls of each generated folder the study's rows draw, as ``generate`` wrote them
    (``_realism.json``, ``_fidelity.parquet``), so the study's table can be read beside what its generator made.

    Returns:
        ({extra: {"folder", "realism"}} for folders with a realism record, a Markdown section ("" when none)).
    """
    found: dict[str, dict[str, Any]] = {}
    parts: list[str] = []
    for extra in needs_generation(cfg):
        folder = str(synthetic_folder(cfg.train.run, extra))  # every generated extra has a folder
        realism_rel, fidelity_rel = storage.sidecar_rel(folder, REALISM), storage.sidecar_rel(folder, FIDELITY)
        if not storage.exists(realism_rel):
            continue  # synthetic_filtered: derived from synthetic/, whose record is listed under its own extra
        realism = storage.read_json(realism_rel)
        found[extra] = {"folder": folder, "realism": realism}
        parts.append(
            f"### `{extra}` (`{folder}`)\n\nRealism: two-sample AUROC {realism.get('auroc', float('nan')):.3f} "
            "(0.5 = indistinguishable from real images of the same classes), Laplacian-std ratio "
            f"{realism.get('laplacian_std_ratio', float('nan')):.3f} (1 = as sharp), "
            f"{realism.get('n_synthetic')} synthetic vs {realism.get('n_real')} real images.\n"
        )
        if storage.exists(fidelity_rel):
            fidelity = pq.read_table(storage.pyarrow_fs.open_input_file(storage.path(fidelity_rel))).to_pandas()
            parts.append("\n" + _markdown_frame(fidelity[[c for c in QUALITY_COLUMNS if c in fidelity.columns]]))
    if not parts:
        return found, ""
    intro = (
        "\n## Generated rows: realism and fidelity with controls\n\nPer tail class, scored by the study's reference "
        "classifier on val: `auroc_real` real positives vs real negatives (the ceiling), `auroc_synthetic` synthetic "
        "positives vs real negatives, `auroc_control` the same images' empty-prompt controls vs real negatives, "
        "`auroc_synthetic_vs_control` synthetic vs their own controls (0.5: the prompt drew nothing the reference "
        "sees); `visible_pixels`: pixels the renderer's finding changes at this size.\n\n"
    )
    return found, intro + "\n".join(parts)


def label_graph_markdown(cfg: Config, storage: Storage, info: DatasetInfo) -> str:
    """The study's label-graph section of ``table.md``: the picture ``label_graph.png`` (drawn at the study's
    ``model.gcn_tau``) and the edges and connected tail classes per tau, with every tau a row sets."""
    taus = {cfg.model.gcn_tau} | {float(r["model.gcn_tau"]) for r in cfg.ablation.rows.values() if "model.gcn_tau" in r}
    summary = read_graph(storage, info.name)
    for tau in sorted(taus):
        summary = with_tau(summary, info.cooccurrence, info.classes, info.groups, tau)
    isolated = next(t["tail_isolated"] for t in summary["by_tau"] if np.isclose(t["tau"], cfg.model.gcn_tau))
    return (
        f"\n## Label graph\n\nThe GCN rows' graph from train co-occurrence: an edge i -> j when P(j|i) >= tau (node i "
        f"aggregates j). At the study's model.gcn_tau = {cfg.model.gcn_tau:g}, tail classes without a neighbour: "
        f"{', '.join(isolated) or 'none'}.\n\n![label graph](label_graph.png)\n\n" + _markdown_frame(tau_table(summary))
    )


def write_outputs(
    cfg: Config, storage: Storage, info: DatasetInfo, ratios: tuple[float, float, str], seconds: float
) -> dict[str, Any]:
    """Table (Parquet and Markdown), heat map, tail plot, label graph and report of a finished study; the manifest
    last.

    Returns:
        The study's report (also ``ablation_report.json``).

    Raises:
        RuntimeError: the baseline row has no finished seed (nothing to compare against).
    """
    ab = cfg.ablation
    out = run_dir(cfg.train.run, STAGE)
    rows, missing = [], []
    for name in ab.rows:
        for seed in ab.seeds:
            try:
                rows.append(load_row(storage, cfg, name, seed, info))
            except FileNotFoundError as exc:
                missing.append(str(exc))
    if missing:
        log.warning("ablation %s: %d row(s) without results: %s", cfg.train.run, len(missing), "; ".join(missing))
    if not any(r["name"] == ab.baseline for r in rows):
        raise RuntimeError(f"ablation {cfg.train.run!r}: the baseline row {ab.baseline!r} has no results")
    frame = at.ablation_table(rows, ab.baseline, bootstrap=ab.bootstrap, seed=0)
    by_name: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_name.setdefault(r["name"], []).append(r)
    frame["extra"] = [row_extra(ab.rows[n]) for n in frame["name"]]
    frame["extra_rows"] = [int(np.mean([_extra_rows(r["summary"]) for r in by_name[n]])) for n in frame["name"]]
    seconds_of = {n: sum(float(r["summary"].get("train_seconds", 0.0)) for r in group) for n, group in by_name.items()}
    frame["train_seconds"] = [seconds_of[n] for n in frame["name"]]
    frame["runs"] = [[r["run"] for r in by_name[n]] for n in frame["name"]]
    storage.write_parquet(posixpath.join(out, "table.parquet"), pa.Table.from_pandas(frame, preserve_index=False))
    tail, medium, source = ratios
    first = rows[0]
    positives = (np.asarray(first["labels"]) == 1).sum(axis=0)  # (K,) (a label may be UNKNOWN)
    tail_pos = [int(p) for p, g in zip(positives, first["groups"], strict=True) if g == "tail"]
    interval = (
        f"{len(ab.seeds)} seeds per row: mean ± seed std, 95 % interval of the seed mean over {ab.bootstrap} "
        "bootstrap resamples of the test images"
        if len(ab.seeds) > 1
        else f"1 seed per row: 95 % bootstrap intervals over {ab.bootstrap} resamples of the test images"
    )
    header = [
        f"# Ablation and peers: run `{cfg.train.run}`, dataset `{info.name}`",
        "",
        f"Test split: {len(first['image_ids'])} images; tail classes' test positives {sorted(tail_pos)}. "
        f"Backbone {cfg.model.backbone}, {cfg.data.image_size} px, {cfg.train.epochs} epoch(s), seeds {ab.seeds}; "
        f"{interval}. d_mAP / d_tail_mAP: difference to `{ab.baseline}` with a paired bootstrap interval. "
        f"Extra rows at tail ratio {tail:g}, medium ratio {medium:g}, from {source}.",
        "",
    ]
    markdown = "\n".join(header) + "\n" + at.table_markdown(frame)
    pairs = ab.comparison_pairs()
    compared = at.comparison_table(rows, pairs, bootstrap=ab.bootstrap, seed=0)
    if not compared.empty:
        storage.write_parquet(
            posixpath.join(out, "comparisons.parquet"), pa.Table.from_pandas(compared, preserve_index=False)
        )
        markdown += (
            "\n## Each part against the row it is added to\n\n"
            "The same statistics as above, each row against the row named beside it instead of the baseline "
            "(`ablation.comparisons`).\n\n" + at.comparison_markdown(compared)
        )
    if missing:
        markdown += "\nRows without results: " + "; ".join(missing) + "\n"
    generated, quality = generated_quality(cfg, storage)
    markdown += quality
    markdown += label_graph_markdown(cfg, storage, info)
    storage.write_text(posixpath.join(out, "table.md"), markdown)
    storage.write_bytes(posixpath.join(out, "heatmap.png"), at.per_class_heatmap(rows, list(info.train_counts)))
    storage.write_bytes(posixpath.join(out, "tail_map.png"), at.tail_map_plot(frame))
    tau = cfg.model.gcn_tau
    graph = label_graph_plot(info.classes, info.groups, edges_at(info.cooccurrence, tau), tau, info.name)
    storage.write_bytes(posixpath.join(out, "label_graph.png"), graph)
    report = {
        "run": cfg.train.run,
        "dataset": info.name,
        "rows": list(frame["name"]),
        "seeds": list(ab.seeds),
        "baseline": ab.baseline,
        "comparisons": pairs,
        "ratios": {"tail": tail, "medium": medium, "source": source},
        "missing": missing,
        "test_images": len(first["image_ids"]),
        "tail_test_positives": tail_pos,
        "seconds": round(seconds, 1),
        "output": storage.uri(out),
        "generated": generated,
    }
    storage.write_json(posixpath.join(out, "ablation_report.json"), report)
    meta = {
        "stage": STAGE,
        "rows": len(frame),
        "missing": len(missing),
        "grid": grid_hash(cfg, (tail, medium)),
        "table": table_hash(cfg),
    }
    storage.publish(out, meta)
    log.info("ablation %s: table of %d rows at %s", cfg.train.run, len(frame), storage.uri(out, "table.md"))
    return report
