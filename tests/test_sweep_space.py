"""The sweep's search space, trial configs, leaderboard and plots (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest

from trcgl.config import ConfigError, check_space, load_config
from trcgl.sweep import leaderboard as lb
from trcgl.sweep.space import trial_config


def test_default_space_covers_the_mission_and_is_valid():
    cfg = load_config("demo")
    space = load_config(None).sweep.space
    check_space(space)
    for key in (
        "train.aug_ratio_tail",
        "train.aug_ratio_medium",
        "synthetic_set",
        "model.gcn",
        "model.gcn_tau",
        "model.gcn_p",
        "model.gcn_layers",
        "model.gcn_hidden",
        "model.class_attention",
        "model.se",
        "loss.name",
        "train.lr",
        "train.weight_decay",
    ):
        assert key in space, key
    assert 0.0 in space["train.aug_ratio_tail"]["values"]  # "no synthetic data" is a searched value
    assert set(cfg.sweep.space) < set(space)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("sweep.space={model.gcn_tauu: {type: uniform, low: 0.1, high: 0.5}}", "gcn_tauu"),
        ("sweep.space={nosuch.key: {type: choice, values: [1]}}", "nosuch"),
        ("sweep.space={model.gcn: {type: choice, values: [1, 2]}}", "model.gcn"),
        ("sweep.space={train.lr: {type: uniform, low: 0.01, high: 0.001}}", "low < high"),
        ("sweep.space={train.lr: {type: loguniform, low: 0, high: 0.1}}", "low > 0"),
        ("sweep.space={train.lr: {type: normal, low: 0, high: 0.1}}", "type one of"),
        ("sweep.space={synthetic_set: {type: choice, values: [synthetic, elsewhere]}}", "synthetic_set"),
        ("sweep.space={model: {type: choice, values: [1]}}", "section"),
        ("sweep.space={train.epochs: {type: int, low: 1.5, high: 4}}", "integer bounds"),
    ],
)
def test_bad_space_fails_naming_the_key(override, needle):
    with pytest.raises(ConfigError) as err:
        load_config("tiny", [override])
    assert needle in str(err.value)
    assert "sweep.space" in str(err.value)


def test_preset_space_replaces_the_default_instead_of_merging():
    cfg = load_config("tiny", ["sweep.space={train.lr: {type: loguniform, low: 0.001, high: 0.01}}"])
    assert list(cfg.sweep.space) == ["train.lr"]
    # config sections still merge key by key
    assert load_config("tiny", ["model.gcn_tau=0.3"]).model.backbone == "resnet10t"


def test_trial_config_is_typed_overrides_with_its_own_run():
    base = load_config("tiny")
    cfg = trial_config(
        base,
        {"model.gcn": np.bool_(False), "train.lr": np.float64(0.003), "synthetic_set": "synthetic_filtered"},
        "s/sweep/trials/abcd1234",
        "s",
    )
    assert cfg.model.gcn is False and isinstance(cfg.model.gcn, bool)
    assert cfg.train.lr == pytest.approx(0.003)
    assert cfg.train.run == "s/sweep/trials/abcd1234"
    assert cfg.train.synthetic == ["runs/s/synthetic_filtered"]
    assert base.model.gcn is True and base.train.run == "tiny"  # the base is untouched
    with pytest.raises(ConfigError, match="model.gcn_layers"):
        trial_config(base, {"model.gcn_layers": "two"}, "s/x", "s")


def _records():
    def hist(vals, tail):
        return [
            {"epoch": i, "val_mAP": v, "val_mAUC": 0.6, "val_head_mAP": 0.5, "val_medium_mAP": 0.2, "val_tail_mAP": t}
            for i, (v, t) in enumerate(zip(vals, tail, strict=True))
        ]

    return [
        {
            "trial_id": "a",
            "params": {"train.lr": 0.001, "model.gcn": True, "train.aug_ratio_tail": 0.0},
            "history": hist([0.2, 0.3, 0.25], [0.1, 0.2, 0.3]),
            "test": {"mAP": 0.28, "tail_mAP": 0.15},
            "stopped_early": False,
            "error": None,
            "wall_seconds": 10.0,
            "checkpoint": "x/a",
        },
        {
            "trial_id": "b",
            "params": {"train.lr": 0.002, "model.gcn": False, "train.aug_ratio_tail": 1.0},
            "history": hist([0.35], [0.4]),
            "test": None,
            "stopped_early": True,
            "error": None,
            "wall_seconds": 4.0,
            "checkpoint": "x/b",
        },
        {
            "trial_id": "c",
            "params": {"train.lr": 0.003, "model.gcn": True, "train.aug_ratio_tail": 2.0},
            "history": hist([0.1, 0.12, 0.11], [0.0, 0.05, 0.02]),
            "test": {"mAP": 0.1, "tail_mAP": 0.03},
            "stopped_early": False,
            "error": None,
            "wall_seconds": 9.0,
            "checkpoint": "x/c",
        },
        {
            "trial_id": "d",
            "params": {"train.lr": 0.004, "model.gcn": False, "train.aug_ratio_tail": 0.0},
            "history": [],
            "test": None,
            "stopped_early": False,
            "error": "RuntimeError: boom",
            "wall_seconds": 1.0,
            "checkpoint": None,
        },
    ]


def test_leaderboard_ranks_by_best_val_epoch_and_keeps_every_trial():
    board = lb.leaderboard_frame(_records())
    assert list(board["trial_id"]) == ["b", "a", "c", "d"]  # d has no val metric: last
    a = board.set_index("trial_id").loc["a"]
    assert a["val_mAP"] == pytest.approx(0.3) and a["best_epoch"] == 1 and a["val_tail_mAP"] == pytest.approx(0.2)
    assert a["test_mAP"] == pytest.approx(0.28) and a["epochs"] == 3
    b = board.set_index("trial_id").loc["b"]
    assert b["stopped_early"] and np.isnan(b["test_mAP"])
    assert board.set_index("trial_id").loc["d", "error"] == "RuntimeError: boom"
    assert {"param.train.lr", "param.model.gcn", "param.train.aug_ratio_tail"} <= set(board.columns)


def test_importances_and_plots_are_real_pngs():
    board = lb.leaderboard_frame(_records())
    space = {
        "train.lr": {"type": "loguniform", "low": 0.0005, "high": 0.005},
        "model.gcn": {"type": "choice", "values": [True, False]},
        "train.aug_ratio_tail": {"type": "choice", "values": [0.0, 1.0, 2.0]},
    }
    imp = lb.param_importances(board, space)
    assert set(imp) <= set(space) and imp
    assert sum(imp.values()) == pytest.approx(1.0)
    for png in (
        lb.optimisation_history(board, ["a", "b", "c", "d"]),
        lb.importances_plot(imp),
        lb.tail_vs_ratio(board),
    ):
        assert png is not None and png[:8] == b"\x89PNG\r\n\x1a\n"
    assert lb.importances_plot({}) is None
    assert lb.tail_vs_ratio(board.drop(columns=["param.train.aug_ratio_tail"])) is None


def test_tune_trial_actors_get_no_credentials_in_their_runtime_env(monkeypatch):
    # Ray Tune copies AWS_* from the driver into each trial actor's runtime_env, which Ray's runtime env agent logs
    # in plain text: the sweep and the study turn that off (the security scenario found the leak in a real job)
    import inspect

    from ray.tune.execution import class_cache

    from trcgl.ray_runtime import TUNE_CREDENTIAL_VARS, keep_credentials_out_of_tune

    assert all(name in inspect.getsource(class_cache) for name in TUNE_CREDENTIAL_VARS)  # Ray still copies them
    # Tune's own list (an earlier sweep in this process may have trimmed the module's copy already)
    monkeypatch.setattr(
        class_cache, "ENV_VARS_TO_PROPAGATE", set(class_cache.ENV_VARS_TO_PROPAGATE) | TUNE_CREDENTIAL_VARS
    )
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake-secret-for-this-test")

    def trial_env() -> dict:
        trainable = type("Trainable", (), {})  # a class of its own each time: the cache keys on the class
        return class_cache._ActorClassCache().get(trainable)._default_options["runtime_env"]["env_vars"]

    assert trial_env()["AWS_SECRET_ACCESS_KEY"] == "fake-secret-for-this-test"  # what Tune does by itself
    keep_credentials_out_of_tune()
    assert "AWS_SECRET_ACCESS_KEY" not in trial_env()
