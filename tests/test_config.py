"""The typed config tree: presets, overrides, and errors that name the key."""

import importlib
import json

import pytest

from trcgl.config import PRESET_DIR, ConfigError, config_hash, from_dict, load_config, parse_override, to_dict


def test_presets_load_and_differ():
    tiny, demo = load_config("tiny"), load_config("demo")
    assert tiny.synth.size < demo.synth.size
    assert tiny.data.source == demo.data.source == "padchest-synth"


def test_override_sets_nested_value_with_type():
    cfg = load_config("tiny", ["data.image_size=48", "data.split.seed=7", "data.projections=[PA]"])
    assert cfg.data.image_size == 48 and cfg.data.split.seed == 7 and cfg.data.projections == ["PA"]


def test_float_written_without_dot_is_accepted():
    # YAML 1.1 reads 3e-4 as a string; a float field must still take it.
    cfg = load_config("tiny", ["data.groups.tail_max=5e-3"])
    assert cfg.data.groups.tail_max == pytest.approx(0.005)


def test_unknown_key_names_key_and_origin():
    with pytest.raises(ConfigError, match=r"'data.imag_size'.*override"):
        load_config("tiny", ["data.imag_size=3"])


def test_unknown_key_in_file_names_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  lable_set: cxr-lt-30\n")
    with pytest.raises(ConfigError, match=r"'data.lable_set'.*bad.yaml"):
        load_config(str(bad))


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match=r"'data.image_size'.*must be int.*'big'"):
        load_config("tiny", ["data.image_size=big"])
    with pytest.raises(ConfigError, match=r"'synth.rows'"):
        from_dict({"synth": {"rows": 1.5}})


def test_range_errors_name_key():
    with pytest.raises(ConfigError, match="data.source"):
        load_config("tiny", ["data.source=chexpert"])
    with pytest.raises(ConfigError, match="val_fraction"):
        load_config("tiny", ["data.split.val_fraction=0.6", "data.split.test_fraction=0.5"])
    with pytest.raises(ConfigError, match=r"'train.cache_mb'.*-1"):
        load_config("tiny", ["train.cache_mb=-1"])
    with pytest.raises(ConfigError, match=r"'generate.realism_max_images'.*-1"):
        load_config("tiny", ["generate.realism_max_images=-1"])
    with pytest.raises(ConfigError, match=r"'diffusion.plain_levels'"):
        load_config("tiny", ["diffusion.plain_levels=-1"])


def test_unknown_preset_lists_known():
    with pytest.raises(ConfigError, match=r"unknown config preset 'nope'.*tiny"):
        load_config("nope")


def test_malformed_override():
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("data.image_size")


def test_dict_round_trip_and_hash_stability():
    cfg = load_config("demo", ["synth.seed=3"])
    again = from_dict(to_dict(cfg))
    assert again == cfg
    assert config_hash(again.data) == config_hash(cfg.data)
    assert config_hash(load_config("demo", ["data.image_size=96"]).data) != config_hash(cfg.data)


def test_credentials_are_not_config_keys():
    with pytest.raises(ConfigError, match="storage.secret_key"):
        load_config("tiny", ["storage.secret_key=abc"])


def test_relative_local_paths_become_absolute_in_the_driver(tmp_path, monkeypatch):
    from trcgl.config import absolute_local_paths

    monkeypatch.chdir(tmp_path)
    cfg = load_config("tiny", ["storage.root=./runs", "data.images=s3://bucket/images", "generate.model=m/diffusion"])
    out = absolute_local_paths(cfg)
    assert out.storage.root == str(tmp_path / "runs")  # Ray Train workers run in another working directory
    assert out.generate.model == str(tmp_path / "m" / "diffusion")
    assert out.data.images == "s3://bucket/images" and out.model.label_embedding == "learned"
    assert absolute_local_paths(out) is out  # nothing left to change


PRESETS = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
JOBS_TAKING_A_PRESET = (
    "synthesize_padchest",
    "prepare",
    "train_classifier",
    "train_diffusion",
    "generate",
    "sweep",
    "pipeline",
    "ablation",
)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_is_valid_for_every_job(preset, capsys, caplog):
    """``--check`` runs a job's own checks on the preset as a user would pass it (no overrides, no Ray, no work)."""
    failed = {}
    for job in JOBS_TAKING_A_PRESET:
        main = importlib.import_module(f"jobs.{job}").main
        code = main(["--config", preset, "--check", "--log-level", "ERROR"])
        out = capsys.readouterr()
        if code != 0 or json.loads(out.out.strip().splitlines()[-1]) != {"config": preset, "valid": True}:
            failed[job] = (code, caplog.text[-500:])
    assert failed == {}, failed


def test_check_flag_runs_the_jobs_own_checks(caplog):
    """The pipeline's check (a sweep drawing from synthetic_filtered needs a fidelity filter) runs under --check."""
    from jobs.pipeline import main

    space = "sweep.space={synthetic_set: {type: choice, values: [synthetic_filtered]}}"
    assert main(["--config", "tiny", "--set", space, "--check"]) == 2
    assert "synthetic_filtered" in caplog.text
