"""The pipeline's decisions that need no Ray: up-front checks, the baseline, and when the best trial is reused."""

from __future__ import annotations

import pytest

from trcgl.config import ConfigError, dump_yaml, load_config
from trcgl.pipeline.ray_pipeline import baseline_config, check_pipeline, control_config, final_config, row_of
from trcgl.pipeline.report import summary_table
from trcgl.storage import Storage


def test_filtered_set_without_threshold_fails_before_any_work():
    filtered = "sweep.space={synthetic_set: {type: choice, values: [synthetic, synthetic_filtered]}}"
    cfg = load_config("tiny", [filtered, "generate.fidelity_threshold=null"])
    assert "synthetic_filtered" in cfg.sweep.space["synthetic_set"]["values"]
    with pytest.raises(ConfigError, match="fidelity_threshold"):
        check_pipeline(cfg)
    check_pipeline(load_config("tiny", [filtered, "generate.fidelity_threshold=0.1"]))
    check_pipeline(load_config("tiny", [filtered, "sweep.enabled=false"]))  # no sweep: nothing draws from it


def test_synthetic_space_without_diffusion_fails():
    with pytest.raises(ConfigError, match="pipeline.diffusion"):
        check_pipeline(load_config("tiny", ["pipeline.diffusion=false", "generate.fidelity_threshold=0.1"]))


def test_bad_baseline_override_fails_naming_it():
    with pytest.raises(ConfigError, match="gcnn"):
        check_pipeline(
            load_config("tiny", ["generate.fidelity_threshold=0.1", "pipeline.baseline={model.gcnn: false}"])
        )


def test_baseline_is_the_config_without_synthetic_data_or_gcn():
    cfg = load_config("tiny", ["train.synthetic=[runs/tiny/synthetic]", "train.aug_ratio_tail=1.0"])
    base = baseline_config(cfg)
    assert base.train.run == "tiny/baseline"
    assert base.model.gcn is False and base.train.aug_ratio_tail == 0.0 and base.train.synthetic == []
    assert base.model.backbone == cfg.model.backbone and base.train.epochs == cfg.train.epochs


def test_controls_are_the_baseline_with_one_source_of_extra_rows_each():
    cfg = load_config("tiny", ["generate.aug_ratio_tail=1.5", "generate.fidelity_threshold=0.1"])
    base = baseline_config(cfg)
    runs = {}
    for extra in ("real", "synthetic", "oracle"):
        c = control_config(cfg, extra)
        runs[extra] = c.train.run
        assert c.train.extra_source == extra and c.train.aug_ratio_tail == 1.5
        assert c.model == base.model and c.loss == base.loss and c.train.epochs == base.train.epochs
    assert control_config(cfg, "synthetic").train.synthetic == ["runs/tiny/synthetic"]
    assert control_config(cfg, "oracle").train.oracle == "runs/tiny/oracle"
    assert control_config(cfg, "real").train.synthetic == [] and control_config(cfg, "real").train.oracle is None
    assert len(set(runs.values())) == 3 and all(r.startswith("tiny/controls/") for r in runs.values())


def test_bad_controls_fail_before_any_work_naming_the_key():
    threshold = "generate.fidelity_threshold=0.1"
    with pytest.raises(ConfigError, match=r"pipeline.controls.*\['copies'\]"):
        check_pipeline(load_config("tiny", [threshold, "pipeline.controls=[real, copies]"]))
    with pytest.raises(ConfigError, match="pipeline.diffusion"):
        check_pipeline(load_config("tiny", ["pipeline.diffusion=false", "sweep.enabled=false",
                                            "pipeline.controls=[synthetic]"]))  # fmt: skip
    with pytest.raises(ConfigError, match="data.source"):
        check_pipeline(load_config("tiny", [threshold, "data.source=padchest", "pipeline.controls=[oracle]"]))
    check_pipeline(load_config("tiny", [threshold, "pipeline.controls=[real, synthetic, oracle]"]))


def _write_best(tmp_path, epochs: int) -> Storage:
    storage = Storage(str(tmp_path))
    best = load_config("tiny", [f"train.epochs={epochs}", "train.run=tiny/sweep/trials/abcd1234", "model.gcn_tau=0.33"])
    storage.write_text("runs/tiny/sweep/best_config.yaml", dump_yaml(best))
    return storage


def test_best_trial_is_reused_only_when_it_ran_the_final_epochs_to_the_end(tmp_path):
    cfg = load_config("tiny", ["train.epochs=2"])
    storage = _write_best(tmp_path, epochs=2)
    report = {"best_run": "tiny/sweep/trials/abcd1234", "best_finished": True}
    final, reuse = final_config(cfg, storage, report)
    assert reuse == "tiny/sweep/trials/abcd1234"
    assert final.train.run == "tiny/final" and final.model.gcn_tau == pytest.approx(0.33)
    _, reuse = final_config(cfg, storage, {**report, "best_finished": False})  # stopped early: retrain
    assert reuse is None
    longer = load_config("tiny", ["train.epochs=2", "pipeline.final_epochs=4"])
    final, reuse = final_config(longer, storage, report)
    assert reuse is None and final.train.epochs == 4
    final, reuse = final_config(cfg, storage, None)  # sweep disabled: the config itself
    assert reuse is None and final.train.run == "tiny/final" and final.model.gcn_tau == cfg.model.gcn_tau


def test_summary_table_cells_carry_intervals():
    summary = {
        "run": "r/final",
        "train_rows": {"synthetic": 12},
        "test": {"mAP": 0.25, "mAUC": 0.7, "head_mAP": 0.5, "medium_mAP": 0.2, "tail_mAP": None,
                 "ci": {"mAP": [0.2, 0.3], "mAUC": [0.65, 0.75]}},
    }  # fmt: skip
    table = summary_table([row_of("best", summary)])
    assert table.loc[0, "mAP"] == "0.250 [0.200, 0.300]"
    assert table.loc[0, "head_mAP"] == "0.500"
    assert table.loc[0, "tail_mAP"] == "-"
    assert table.loc[0, "synthetic rows"] == 12
    oracle = {**summary, "train_rows": {"real": 90, "oracle": 7}}
    assert summary_table([row_of("baseline + oracle rows", oracle)]).loc[0, "extra rows"] == 7


def test_report_shows_realism_fidelity_with_controls_and_kept_vs_dropped(tmp_path):
    import numpy as np

    from trcgl.diffusion.fidelity import FIDELITY_COLUMNS, filter_grid, sample_grid
    from trcgl.pipeline.html import Images, Table, render
    from trcgl.pipeline.report import synthetic_section
    from trcgl.storage import run_dir

    storage = Storage(str(tmp_path))
    films = np.random.default_rng(0).random((6, 16, 16))
    grids = f"{run_dir('r', 'synthetic')}/grids"
    storage.write_bytes(f"{grids}/pneumothorax.png", sample_grid("pneumothorax", films[:3], films[3:]))
    storage.write_bytes(f"{grids}/filtered/pneumothorax.png", filter_grid("pneumothorax", films[:2], films[2:3]))
    fidelity_row = dict.fromkeys(FIDELITY_COLUMNS) | {"class": "pneumothorax", "auroc_real": 0.7, "visible": True}
    generated = {
        "images": 6,
        "realism": {"auroc": 0.93, "laplacian_std_ratio": 0.4, "n_synthetic": 6, "n_real": 6, "real_split": "train"},
        "fidelity": [fidelity_row],
        "filtered": {"kept": 2, "of": 3, "ranked_by": "margin", "grids": [f"{grids}/filtered/pneumothorax.png"]},
    }
    section = synthetic_section(storage, "r", generated)
    tables = {b.caption: b.frame for b in section.blocks if isinstance(b, Table)}
    assert list(tables) == [
        "Realism (two-sample test)",
        "Fidelity with controls (reference: the baseline; real images: val split)",
    ]
    assert tables["Realism (two-sample test)"].iloc[0, 0] == 0.93
    fidelity = tables["Fidelity with controls (reference: the baseline; real images: val split)"]
    assert {"auroc_real", "auroc_synthetic", "auroc_control", "auroc_synthetic_vs_control", "visible"} <= set(fidelity)
    pictures = [[i.caption for i in b.items] for b in section.blocks if isinstance(b, Images)]
    assert pictures == [["pneumothorax"], ["kept vs dropped: pneumothorax"]]  # the filtered grid shown once
    assert "kept 2 of 3 images, ranked by its score&#x27;s margin over its own control" in render("r", [section])
