"""The ablation study: row configs and checks (no Ray), and the job on the tiny preset, killed and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trcgl import records
from trcgl.config import ConfigError, apply_overrides, check_generator_size, load_config
from trcgl.storage import Storage, run_dir
from trcgl.study.rows import (
    check_ablation,
    generate_configs,
    needs_generation,
    row_config,
    row_slug,
    study_ratios,
    synthetic_folder,
)
from trcgl_dev.faults.driver_kill import job_env

# In a two-lane run (tests/conftest.py, two_lanes) this file runs in the other lane: it uses the tiny dataset but
# neither shared tiny run, and the tiny lane is the longer.
pytestmark = pytest.mark.lane("other")

REPO = Path(__file__).resolve().parents[1]


def test_default_rows_build_distinct_valid_configs() -> None:
    cfg = load_config("demo")
    check_ablation(cfg)
    rows = cfg.ablation.rows
    configs = {name: row_config(cfg, name, 0, (1.5, 0.5)) for name in rows}
    assert len({c.train.run for c in configs.values()}) == len(rows)  # a folder per row
    parts = {
        n: (c.model.se, c.model.class_attention, c.model.gcn, c.model.csra, c.loss.name) for n, c in configs.items()
    }
    assert parts["backbone + BCE"] == (False, False, False, False, "bce")
    assert parts["TRCGL-Net (full)"] == (True, True, True, False, "bce")
    assert parts["CSRA"][3] and parts["ML-GCN"][2] and parts["LDAM-DRW"][4] == "ldam_drw"
    full, dup = configs["TRCGL-Net (full)"], configs["full, duplication instead of synthesis"]
    assert full.train.synthetic == ["runs/demo/synthetic"] and full.train.extra_source == "synthetic"
    assert dup.train.synthetic == [] and dup.train.extra_source == "real"
    assert (dup.train.aug_ratio_tail, dup.train.aug_ratio_medium) == (1.5, 0.5)  # same extra rows as synthesis
    base = configs["backbone + BCE"]
    assert (base.train.aug_ratio_tail, base.train.aug_ratio_medium, base.train.synthetic) == (0.0, 0.0, [])
    assert configs["full, fidelity-filtered synthesis"].train.synthetic == ["runs/demo/synthetic_filtered"]
    # everything but the row's own keys is the run's: same data, split, backbone, size, epochs
    for c in configs.values():
        assert (c.data, c.model.backbone, c.train.epochs, c.train.seed) == (cfg.data, "resnet10t", 5, 0)
    assert needs_generation(cfg) == ["synthetic", "synthetic_filtered"]
    assert needs_generation(load_config("tiny")) == []


def test_bad_studies_fail_naming_the_row() -> None:
    cfg = load_config("tiny")
    bad_key = apply_overrides(
        cfg, {"ablation.rows": {"a": {"model.sse": True}, "b": {}}, "ablation.baseline": "a"}, "test"
    )
    with pytest.raises(ConfigError, match=r"model\.sse.*ablation\.rows\.a"):
        check_ablation(bad_key)
    same_folder = apply_overrides(cfg, {"ablation.rows": {"A b": {}, "a-b": {}}, "ablation.baseline": "A b"}, "test")
    with pytest.raises(ConfigError, match="share the folder name 'a_b'"):
        check_ablation(same_folder)
    with pytest.raises(ConfigError, match=r"ablation\.baseline.*'nope'"):
        apply_overrides(cfg, {"ablation.baseline": "nope"}, "test")
    with pytest.raises(ConfigError, match=r"ablation\.rows\.x\.extra.*'synth'"):
        apply_overrides(cfg, {"ablation.rows": {"x": {"extra": "synth"}}, "ablation.baseline": "x"}, "test")
    filtered = apply_overrides(
        cfg, {"ablation.rows": {"f": {"extra": "synthetic_filtered"}}, "ablation.baseline": "f"}, "test"
    )
    with pytest.raises(ConfigError, match=r"ablation\.rows\.f\.extra.*fidelity_threshold"):
        check_ablation(filtered)
    assert row_slug("+ SE + CA + GCN (full - diffusion)") == "se_ca_gcn_full_diffusion"
    bad_value = apply_overrides(cfg, {"ablation.rows": {"m": {"model.pool": "maxx"}}, "ablation.baseline": "m"}, "t")
    with pytest.raises(ConfigError, match=r"model\.pool.*'maxx'"):
        check_ablation(bad_value)
    rows = {"a": {}, "b": {}}
    with pytest.raises(ConfigError, match=r"ablation\.comparisons\.b.*reference 'c'"):
        apply_overrides(cfg, {"ablation.rows": rows, "ablation.baseline": "a", "ablation.comparisons": {"b": "c"}}, "t")
    # unset, the default pairs are kept where both rows exist; set, they are taken as given
    assert (
        apply_overrides(cfg, {"ablation.rows": rows, "ablation.baseline": "a"}, "t").ablation.comparison_pairs() == {}
    )
    assert load_config("padchest").ablation.comparison_pairs()["ASL + SE"] == "ASL"


def test_mode_rows_draw_a_folder_of_their_own() -> None:
    rows = {"b": {"extra": "none"}, "s": {"extra": "synthetic_sample"}, "e": {"extra": "synthetic_edit"}}
    cfg = apply_overrides(load_config("tiny", ["train.run=r"]), {"ablation.rows": rows, "ablation.baseline": "b"}, "t")
    check_ablation(cfg)
    assert needs_generation(cfg) == ["synthetic_edit", "synthetic_sample"]
    for name, mode in (("s", "sample"), ("e", "edit")):
        row = row_config(cfg, name, 1, (1.0, 0.0))
        assert row.train.synthetic == [f"runs/r/modes/{mode}/synthetic"] == [synthetic_folder("r", f"synthetic_{mode}")]
        assert row.train.extra_source == "synthetic" and records.extra_folders(row) == row.train.synthetic
        assert (row.train.aug_ratio_tail, row.train.seed) == (1.0, 1)
    assert synthetic_folder("r", "synthetic") == "runs/r/synthetic" and synthetic_folder("r", "real") is None


def test_mode_generation_forces_the_mode_and_pins_model_and_reference() -> None:
    rows = {"b": {"extra": "none"}, "s": {"extra": "synthetic"}, "e": {"extra": "synthetic_edit"}}
    cfg = apply_overrides(
        load_config("tiny", ["train.run=r", "generate.mode=sample", "generate.per_class_max=7"]),
        {"ablation.rows": rows, "ablation.baseline": "b"},
        "t",
    )
    gens = generate_configs(cfg, "s3://b/runs/r/diffusion/model", "s3://b/runs/r/ablation/rows/b/seed0/classifier/best")
    assert list(gens) == ["runs/r/synthetic", "runs/r/modes/edit/synthetic"]
    assert gens["runs/r/synthetic"] is cfg  # the run's own folder, with the run's own mode
    edit = gens["runs/r/modes/edit/synthetic"]
    assert run_dir(edit.train.run, "synthetic") == "runs/r/modes/edit/synthetic"  # where run_generate writes
    assert edit.generate.mode == "edit" and edit.generate.model == "s3://b/runs/r/diffusion/model"
    assert edit.generate.reference_checkpoint == "s3://b/runs/r/ablation/rows/b/seed0/classifier/best"
    forced = ("mode", "model", "reference_checkpoint")
    assert {k: v for k, v in vars(edit.generate).items() if k not in forced} == {
        k: v for k, v in vars(cfg.generate).items() if k not in forced
    }
    assert (edit.data, edit.diffusion, edit.train.dataset) == (cfg.data, cfg.diffusion, cfg.train.dataset)


def test_mode_rows_refused_naming_the_row() -> None:
    cfg = load_config("tiny")
    with pytest.raises(ConfigError, match=r"ablation\.rows\.x\.extra.*synthetic_mix"):
        apply_overrides(cfg, {"ablation.rows": {"x": {"extra": "synthetic_mix"}}, "ablation.baseline": "x"}, "test")
    own_mode = apply_overrides(
        cfg, {"ablation.rows": {"x": {"generate.mode": "edit", "extra": "synthetic"}}, "ablation.baseline": "x"}, "t"
    )
    with pytest.raises(ConfigError, match=r"ablation\.rows\.x\.generate\.mode.*synthetic_edit"):
        check_ablation(own_mode)


def test_synthesis_preset_is_the_small_study() -> None:
    cfg = load_config("synthesis")
    check_ablation(cfg)
    check_generator_size(cfg)
    ab = cfg.ablation
    extras = {name: row["extra"] for name, row in ab.rows.items()}
    assert extras == {
        "baseline": "none",
        "duplication": "real",
        "oracle": "oracle",
        "diffusion sampling": "synthetic_sample",
        "diffusion editing": "synthetic_edit",
    }
    assert (ab.baseline, ab.seeds, ab.aug_ratio_tail, ab.ratios_from_sweep) == ("baseline", [0, 1, 2], 1.0, False)
    assert cfg.train.run == "synthesis" and cfg.data == load_config("ablation").data
    assert needs_generation(cfg) == ["synthetic_edit", "synthetic_sample"]
    configs = [row_config(cfg, n, s, (1.0, 0.0)) for n in ab.rows for s in ab.seeds]
    assert all((c.model, c.loss) == (cfg.model, cfg.loss) for c in configs)  # every row and seed: the same model


def test_ratios_come_from_the_sweep_only_when_it_drew_synthetic_data(tmp_path: Path) -> None:
    cfg = load_config("tiny", [f"storage.root={tmp_path}", "train.run=r", "ablation.aug_ratio_tail=0.7"])
    storage = Storage(str(tmp_path))
    assert study_ratios(cfg, storage)[:2] == (0.7, 0.0)
    storage.write_json("runs/r/sweep/sweep_report.json", {"best_params": {"train.aug_ratio_tail": 2.0}})
    assert study_ratios(cfg, storage)[:2] == (0.7, 0.0)  # not published yet: not a finished sweep
    storage.publish("runs/r/sweep", {"stage": "sweep"})
    tail, medium, source = study_ratios(cfg, storage)
    assert (tail, medium) == (2.0, 0.0) and "sweep" in source
    storage.write_json("runs/r/sweep/sweep_report.json", {"best_params": {"train.aug_ratio_tail": 0.0}})
    assert study_ratios(cfg, storage)[:2] == (0.7, 0.0)


COMPARISON = "ablation.comparisons={+ re-sampling + GCN: backbone + BCE}"


@pytest.mark.slow
def test_tiny_study_table_and_resume_after_kill(tiny_prepared: tuple[str, str], tmp_path: Path) -> None:
    root, _ = tiny_prepared
    # the study is one more driver on the session's Ray (job_env), as under `ray job submit`: killing it leaves the
    # cluster up and Ray ends the dead driver's trials, which the rerun must not trip over. One Train worker per row:
    # what is checked here is the study's table and its resume, not training across workers (tests/test_train.py)
    cmd = [
        sys.executable, "-m", "jobs.ablation", "--config", "tiny", "--set", f"storage.root={root}", "train.run=abl",
        "train.epochs=1", "train.num_workers=1", "ablation.aug_ratio_tail=2.0", COMPARISON,
    ]  # fmt: skip
    rows_dir = Path(root) / "runs" / "abl" / "ablation" / "rows"
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(cmd, cwd=REPO, env=job_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 300
    try:  # kill the whole study once its first row has finished
        while not list(rows_dir.glob("*/seed0/classifier/summary.json")):
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.time() < deadline, "first row never finished"
            time.sleep(1)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    done = {p: p.stat().st_mtime for p in rows_dir.glob("*/seed0/classifier/summary.json")}
    assert not (Path(root) / "runs" / "abl" / "ablation" / "table.parquet").exists()

    second = subprocess.run(cmd, cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    for path, mtime in done.items():  # finished rows were not trained again
        assert path.stat().st_mtime == mtime, path
    out = Path(root) / "runs" / "abl" / "ablation"
    table = pd.read_parquet(out / "table.parquet")
    assert list(table["name"]) == ["backbone + BCE", "+ re-sampling + GCN"]
    for m in ("mAP", "mAUC", "tail_mAP"):
        assert table[m].between(0, 1).all(), table[[m]]
        assert (table[f"{m}_lo"] <= table[f"{m}_hi"]).all() and table[f"{m}_lo"].notna().all()
    base = table.set_index("name").loc["backbone + BCE"]
    assert (base["d_mAP"], base["d_mAP_lo"], base["d_mAP_hi"]) == (0.0, 0.0, 0.0)
    others = table[table["name"] != "backbone + BCE"]
    assert others["d_mAP_lo"].notna().all() and (others["d_mAP_lo"] <= others["d_mAP_hi"]).all()
    resampled = table.set_index("name").loc["+ re-sampling + GCN"]
    assert resampled["extra"] == "real" and resampled["extra_rows"] > 0 and base["extra_rows"] == 0
    md = (out / "table.md").read_text()
    assert all(f"| {name} |" in md for name in table["name"]) and "bootstrap" in md
    for png in ("heatmap.png", "tail_map.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "_manifest.json").read_text())["rows"] == 2
    # the comparison section: here the pair is the baseline one, so it repeats the main table's difference
    compared = pd.read_parquet(out / "comparisons.parquet").set_index("name").loc["+ re-sampling + GCN"]
    assert compared["reference"] == "backbone + BCE"
    assert compared["d_tail_mAP"] == pytest.approx(table.set_index("name").loc["+ re-sampling + GCN", "d_tail_mAP"])
    assert "## Each part against the row it is added to" in md and "| + re-sampling + GCN | backbone + BCE |" in md
    # each row trained exactly once: one classifier run folder per row and seed
    assert sorted(p.parts[-4] for p in rows_dir.glob("*/seed0/classifier/summary.json")) == sorted(
        ["backbone_bce", "re_sampling_gcn"]
    )
    # the re-sampled copies are real train rows repeated, seen in the run's mix
    mix = json.loads((rows_dir / "re_sampling_gcn" / "seed0" / "classifier" / "summary.json").read_text())["train_rows"]
    assert mix["resampled"] == resampled["extra_rows"] and mix["synthetic"] == 0
    from trcgl.pipeline.html import Table
    from trcgl.pipeline.report import ablation_section

    section = ablation_section(Storage(root), "abl")  # what the run's report shows
    shown = [b for b in section.blocks if isinstance(b, Table)][0].frame
    assert list(shown["name"]) == list(table["name"]) and "tail_mAP" in shown
    # the same study again finds it finished for this grid and reads it back (in-process: no new Ray needed)
    from trcgl.study.ray_ablation import run_ablation

    again = run_ablation(load_config("tiny", cmd[cmd.index("--set") + 1 :]))
    assert again.get("skipped") is True and again["rows"] == list(table["name"])
    # changed table settings write the table again from the finished rows, training nothing
    table_md = (out / "table.md").stat().st_mtime
    run_ablation(load_config("tiny", [*cmd[cmd.index("--set") + 1 : -1], "ablation.comparisons={}"]))
    assert (out / "table.md").stat().st_mtime > table_md and "Each part against" not in (out / "table.md").read_text()
    for path, mtime in done.items():
        assert path.stat().st_mtime == mtime, path
    assert sorted(p.parts[-4] for p in rows_dir.glob("*/seed0/classifier/summary.json")) == sorted(
        ["backbone_bce", "re_sampling_gcn"]
    )
    assert np.isfinite(table["mAP"]).all()
