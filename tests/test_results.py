"""Reading results back without Ray: a real layout written with Storage to a local root and to moto S3."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from jobs import results as cli
from trcgl import results
from trcgl.config import StorageConfig
from trcgl.storage import Storage

CI_KEYS = ("mAP", "mAUC", "head_mAP", "medium_mAP", "tail_mAP", "head_mAUC", "medium_mAUC", "tail_mAUC")


def classifier_summary(run: str, base: float) -> dict:
    """A classifier summary.json with the schema train_classifier writes; values exact at 3 decimals."""
    test = {k: round(base + 0.01 * i, 3) for i, k in enumerate(CI_KEYS)}
    test["ci"] = {k: [round(v - 0.021, 3), round(v + 0.021, 3)] for k, v in test.items()}
    return {
        "run": run,
        "dataset": "padchest-synth-test",
        "train_rows": {"real": 1306, "synthetic": 200, "per_class": {}},
        "epochs_run": 8,
        "best_val_mAP": round(base + 0.05, 3),
        "test": test,
        "best_checkpoint": f"/x/runs/{run}/classifier/best",
        "outputs": f"/x/runs/{run}/classifier",
        "train_seconds": 430.7,
    }


def pipeline_summary(final: dict, baseline: dict) -> dict:
    rows = []
    for name, summ in (("best", final), ("baseline", baseline)):
        t = summ["test"]
        keep = ("mAP", "mAUC", "head_mAP", "medium_mAP", "tail_mAP")
        rows.append({"name": name, "run": summ["run"], **{k: t[k] for k in keep}, "ci": {k: t["ci"][k] for k in keep}})
    return {
        "run": "demo",
        "dataset": "padchest-synth-test",
        "stages": {
            "diffusion": {"seconds": 120.5, "skipped": False},
            "sweep": {"seconds": 900.0, "skipped": False, "trials": 12},
            "final": {"seconds": 431.0, "skipped": False},
            "baseline": {"seconds": 0.0, "skipped": True},
        },
        "rows": rows,
        "report": "/x/runs/demo/report/report.html",
    }


def leaderboard_frame(n: int = 12) -> pd.DataFrame:
    # val_mAP deliberately not in trial order: t00 has the lowest score, t07 the highest.
    vals = [0.20, 0.31, 0.25, 0.42, 0.22, 0.38, 0.29, 0.47, 0.33, 0.27, 0.21, 0.36][:n]
    return pd.DataFrame(
        {
            "trial_id": [f"t{i:02d}" for i in range(n)],
            "param.lr": [1e-3 * (i + 1) for i in range(n)],
            "param.loss": ["asl" if i % 2 else "bce" for i in range(n)],
            "val_mAP": vals,
            "test_mAP": [v - 0.05 for v in vals],
            "tail_mAP": [v - 0.15 for v in vals],
            "medium_mAP": [v - 0.1 for v in vals],
            "head_mAP": [v + 0.1 for v in vals],
            "mAUC": [v + 0.4 for v in vals],
            "epochs": [8] * n,
            "stopped_early": [i % 3 == 0 for i in range(n)],
            "wall_seconds": [60.0 + i for i in range(n)],
            "checkpoint": [f"/x/runs/demo/sweep/trials/t{i:02d}/best" for i in range(n)],
        }
    )


PNG = bytes(range(256)) * 8 + b"\x89PNG\r\n\x1a\n\x00\xff"  # binary, not valid UTF-8
HTML = b"<html><body><h1>TRCGL-Net demo</h1><img src='figures/pr.png'></body></html>\n"


def write_layout(storage: Storage) -> dict:
    """Writes runs demo (pipeline + sweep + report), demo/final, demo/baseline, two trials, gen-only and noise."""
    final = classifier_summary("demo/final", 0.412)
    baseline = classifier_summary("demo/baseline", 0.301)
    trial = classifier_summary("demo/sweep/trials/t07", 0.5)
    pipe = pipeline_summary(final, baseline)
    board = leaderboard_frame()
    for run in ("demo", "demo/final", "demo/baseline", "demo/sweep/trials/t07", "demo/sweep/trials/t00", "gen-only"):
        storage.write_text(f"runs/{run}/config.yaml", f"train:\n  run: {run}\n")
    storage.write_json("runs/demo/summary.json", pipe)
    storage.write_parquet("runs/demo/sweep/leaderboard.parquet", pa.Table.from_pandas(board, preserve_index=False))
    storage.write_text("runs/demo/sweep/best_config.yaml", "train:\n  lr: 0.008\n")
    storage.write_bytes("runs/demo/report/report.html", HTML)
    storage.write_bytes("runs/demo/report/figures/pr.png", PNG)
    storage.write_json("runs/demo/final/classifier/summary.json", final)
    per_class = pd.DataFrame({"label": ["effusion", "pneumothorax"], "AP": [0.5, 0.25], "AUROC": [0.8, 0.7]})
    storage.write_parquet("runs/demo/final/classifier/per_class.parquet", pa.Table.from_pandas(per_class))
    # A config.yaml inside a stage folder belongs to the stage, not to a nested run.
    storage.write_text("runs/demo/final/classifier/best/config.yaml", "x: 1\n")
    storage.write_json("runs/demo/baseline/classifier/summary.json", baseline)
    storage.write_json("runs/demo/sweep/trials/t07/classifier/summary.json", trial)
    storage.write_bytes("runs/gen-only/diffusion/model/unet/config.json", b"{}")
    storage.write_bytes("runs/gen-only/synthetic/part-00000.parquet", b"not read")
    # Not runs: a summary without config.yaml, and a dataset's config.yaml.
    storage.write_json("runs/orphan/classifier/summary.json", classifier_summary("orphan", 0.1))
    storage.write_text("datasets/ds/config.yaml", "data: {}\n")
    return {"final": final, "baseline": baseline, "trial": trial, "pipeline": pipe, "board": board}


@pytest.fixture(params=["local", "s3"])
def layout(request, tmp_path) -> dict:
    """The layout on a local root or on moto S3; returns storage, root URI, CLI endpoint args and what was written."""
    if request.param == "local":
        storage = Storage(str(tmp_path / "root"))
        extra: list[str] = []
    else:
        endpoint = request.getfixturevalue("s3_endpoint")
        bucket = request.getfixturevalue("s3_bucket")
        storage = Storage(f"s3://{bucket}/proj", StorageConfig(endpoint_url=endpoint))
        extra = ["--endpoint-url", endpoint]
    written = write_layout(storage)
    return {"storage": storage, "root": storage.root, "cli": extra, **written}


# ---------------------------------------------------------------------------------------------------- library


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("./runs", ("./runs", None)),
        ("s3://b/p", ("s3://b/p", None)),
        ("s3://b/p/", ("s3://b/p/", None)),
        ("s3://b/p/runs/", ("s3://b/p", None)),
        ("s3://b/p/runs/demo", ("s3://b/p", "demo")),
        ("s3://b/p/runs/demo/", ("s3://b/p", "demo")),
        ("s3://b/p/runs/demo/final", ("s3://b/p", "demo/final")),
        ("s3://b/p/runs/demo/sweep/trials/abc123", ("s3://b/p", "demo/sweep/trials/abc123")),
        ("s3://b/runs/demo", ("s3://b", "demo")),
        ("s3://runs/demo", ("s3://runs/demo", None)),  # a bucket named "runs" is not a runs segment
        ("s3://b/data/runs/x/runs/demo", ("s3://b/data/runs/x", "demo")),  # the last /runs/ wins
        ("/tmp/demo/runs/runs/demo", ("/tmp/demo/runs", "demo")),
        ("runs/demo", (".", "demo")),
        ("./runs/demo", (".", "demo")),
        ("/runs/demo", ("/", "demo")),
        ("file:///tmp/x/runs/demo", ("file:///tmp/x", "demo")),
    ],
)
def test_split_run_uri(uri, expected):
    assert results.split_run_uri(uri) == expected


def test_resolve_uri_handles_the_runs_folder_and_roots_containing_runs(tmp_path):
    root = tmp_path / "data" / "runs"  # a root whose own path ends in /runs
    Storage(str(root)).write_text("runs/demo/config.yaml", "x: 1\n")
    storage, run = results.resolve_uri(str(root))
    assert (storage.root, run) == (str(root), None)
    storage, run = results.resolve_uri(str(root / "runs" / "demo"))
    assert (storage.root, run) == (str(root), "demo")
    storage, run = results.resolve_uri(str(root / "runs"))  # the runs folder itself
    assert (storage.root, run) == (str(root), None)
    nested = tmp_path / "x" / "runs" / "exp1"  # /runs/ in the root's path, no run called exp1
    Storage(str(nested)).write_text("runs/a/config.yaml", "x: 1\n")
    storage, run = results.resolve_uri(str(nested))
    assert (storage.root, run) == (str(nested), None)


def test_list_runs_finds_exactly_the_runs_written(layout):
    storage = layout["storage"]
    table = results.list_runs(storage)
    assert list(table["run"]) == ["demo", "demo/baseline", "demo/final", "gen-only"]
    assert table.attrs["hidden_trials"] == 2
    by_run = table.set_index("run")
    assert by_run.loc["demo", "kind"] == "pipeline"
    assert by_run.loc["demo/final", "kind"] == "classifier"
    assert by_run.loc["gen-only", "kind"] == "diffusion-only"
    assert by_run.loc["gen-only", "stages"] == "diffusion,synthetic"
    assert by_run.loc["demo", "stages"] == "sweep,report"
    assert bool(by_run.loc["demo", "has_report"]) is True
    assert not by_run.drop(index="demo")["has_report"].any()
    final = layout["final"]["test"]
    assert by_run.loc["demo/final", "mAP"] == final["mAP"]
    assert by_run.loc["demo/final", "mAUC"] == final["mAUC"]
    assert by_run.loc["demo/final", "tail_mAP"] == final["tail_mAP"]
    # The pipeline's headline numbers are its "best" row, i.e. demo/final's.
    assert by_run.loc["demo", "mAP"] == final["mAP"]
    assert by_run.loc["demo", "dataset"] == "padchest-synth-test"
    assert pd.isna(by_run.loc["gen-only", "mAP"])
    assert not table["trial"].any()

    everything = results.list_runs(storage, include_trials=True)
    assert list(everything["run"]) == [
        "demo",
        "demo/baseline",
        "demo/final",
        "demo/sweep/trials/t00",
        "demo/sweep/trials/t07",
        "gen-only",
    ]
    trials = everything.set_index("run")["trial"]
    assert trials.to_dict() == {r: "/sweep/trials/" in r for r in everything["run"]}
    assert everything.set_index("run").loc["demo/sweep/trials/t00", "kind"] == "empty"
    assert everything.set_index("run").loc["demo/sweep/trials/t07", "mAP"] == layout["trial"]["test"]["mAP"]


def test_run_summary_returns_what_was_written(layout):
    storage = layout["storage"]
    assert results.run_summary(storage, "demo") == layout["pipeline"]
    assert results.run_summary(storage, "demo/final") == layout["final"]
    assert results.run_summary(storage, "/demo/baseline/") == layout["baseline"]
    with pytest.raises(results.RunNotFoundError) as err:
        results.run_summary(storage, "demo/nope")
    msg = str(err.value)
    assert storage.uri("runs", "demo/nope") in msg
    assert "demo/final" in msg and "gen-only" in msg and "t07" not in msg
    with pytest.raises(FileNotFoundError, match="no summary yet") as err:
        results.run_summary(storage, "gen-only")
    assert not isinstance(err.value, results.RunNotFoundError)
    with pytest.raises(ValueError):
        results.run_summary(storage, "../datasets")


def test_leaderboard_and_per_class(layout):
    storage = layout["storage"]
    board = results.leaderboard(storage, "demo")
    written = layout["board"]
    assert len(board) == len(written)
    assert list(board["val_mAP"]) == sorted(written["val_mAP"], reverse=True)
    assert board.iloc[0]["trial_id"] == "t07"
    assert board.iloc[-1]["trial_id"] == "t00"
    expected = written.sort_values("val_mAP", ascending=False).reset_index(drop=True)
    pd.testing.assert_frame_equal(board, expected, check_dtype=False)
    assert results.leaderboard(storage, "demo/final") is None
    pc = results.per_class(storage, "demo/final")
    assert list(pc["label"]) == ["effusion", "pneumothorax"] and list(pc["AP"]) == [0.5, 0.25]


def test_compare_puts_runs_side_by_side_with_intervals(layout):
    storage = layout["storage"]
    table = results.compare(storage, ["demo/final", "demo/baseline", "demo"])
    assert list(table.columns) == ["demo/final", "demo/baseline", "demo"]
    assert list(table.index) == list(CI_KEYS)
    assert table.loc["mAP", "demo/final"] == "0.412 [0.391, 0.433]"
    assert table.loc["tail_mAP", "demo/baseline"] == "0.341 [0.320, 0.362]"
    assert table.loc["mAP", "demo"] == "0.412 [0.391, 0.433]"  # the pipeline's best row
    assert table.loc["tail_mAUC", "demo"] == "-"  # pipeline rows carry no group AUCs
    with pytest.raises(results.RunNotFoundError, match="missing-run"):
        results.compare(storage, ["demo/final", "missing-run"])


def test_download_report_copies_byte_identical_files(layout, tmp_path):
    storage = layout["storage"]
    dest = tmp_path / "report-copy"
    paths = results.download_report(storage, "demo", dest)
    assert paths == sorted([str(dest / "figures" / "pr.png"), str(dest / "report.html")])
    assert (dest / "report.html").read_bytes() == HTML
    assert (dest / "figures" / "pr.png").read_bytes() == PNG
    assert sorted(p.name for p in dest.rglob("*")) == ["figures", "pr.png", "report.html"]  # no temp files left
    with pytest.raises(FileNotFoundError, match="no report"):
        results.download_report(storage, "demo/final", tmp_path / "none")
    with pytest.raises(results.RunNotFoundError):
        results.download_report(storage, "nope", tmp_path / "none")
    assert not (tmp_path / "none").exists()


# ---------------------------------------------------------------------------------------------------- CLI


def test_cli_lists_runs(layout, capsys):
    assert cli.main([layout["root"], *layout["cli"]]) == 0
    out = capsys.readouterr().out
    for run in ("demo", "demo/baseline", "demo/final", "gen-only"):
        assert run in out
    assert "t07" not in out and "orphan" not in out
    assert "0.4120" in out  # demo/final's test mAP
    assert "2 sweep trials hidden" in out

    assert cli.main([layout["root"], *layout["cli"], "--all"]) == 0
    out = capsys.readouterr().out
    assert "demo/sweep/trials/t07" in out and "demo/sweep/trials/t00" in out

    assert cli.main([layout["root"], *layout["cli"], "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["runs"]
    assert [r["run"] for r in rows] == ["demo", "demo/baseline", "demo/final", "gen-only"]
    assert rows[2]["mAP"] == layout["final"]["test"]["mAP"] and rows[3]["mAP"] is None


def test_cli_shows_a_classifier_run(layout, capsys):
    assert cli.main([layout["root"] + "/runs/demo/final", *layout["cli"]]) == 0
    out = capsys.readouterr().out
    assert "demo/final" in out and "kind:    classifier" in out
    map_line = next(line for line in out.splitlines() if line.split()[:1] == ["mAP"])
    assert map_line.split() == ["mAP", "0.412", "[0.391,", "0.433]"]
    assert "leaderboard" not in out


def test_cli_shows_a_pipeline_run_with_its_leaderboard(layout, capsys):
    assert cli.main([layout["root"], *layout["cli"], "--run", "demo"]) == 0
    out = capsys.readouterr().out
    assert "kind:    pipeline" in out
    assert "0.412 [0.391, 0.433]" in out and "0.301 [0.280, 0.322]" in out
    assert "top 10 of 12 trials by val_mAP" in out
    board_text = out[out.index("sweep leaderboard") :]
    order = [line.split()[1] for line in board_text.splitlines()[2:] if line.strip()]
    expected = list(layout["board"].sort_values("val_mAP", ascending=False)["trial_id"][:10])
    assert order == expected
    assert "t00" not in board_text and "t10" not in board_text  # the two lowest val_mAP
    assert "/best" not in board_text  # checkpoint column hidden in tables


def test_cli_compare_and_download(layout, capsys, tmp_path):
    uri = layout["root"] + "/runs/demo/final"
    assert cli.main([uri, *layout["cli"], "--compare", "demo/baseline"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "demo/final" in line)
    assert header.split() == ["demo/final", "demo/baseline"]
    assert "0.412 [0.391, 0.433]" in out and "0.301 [0.280, 0.322]" in out

    dest = tmp_path / "dl"
    assert cli.main([layout["root"] + "/runs/demo", *layout["cli"], "--download", str(dest)]) == 0
    assert "copied 2 report files" in capsys.readouterr().out
    assert (dest / "figures" / "pr.png").read_bytes() == PNG


def test_cli_missing_run_and_empty_root_exit_2(layout, capsys, tmp_path):
    assert cli.main([layout["root"], *layout["cli"], "--run", "demo/final", "no-such-run"]) == 2
    captured = capsys.readouterr()
    assert "no-such-run" in captured.err and "demo/final" in captured.err
    assert captured.out == ""  # nothing printed before the check
    assert cli.main([layout["root"] + "/runs/typo", *layout["cli"]]) == 2
    assert "'typo'" in capsys.readouterr().err
    assert cli.main([layout["root"], *layout["cli"], "--compare", "demo", "nope"]) == 2
    assert "'nope'" in capsys.readouterr().err

    empty = tmp_path / "empty"
    os.makedirs(empty)
    assert cli.main([str(empty)]) == 2
    assert "no runs under" in capsys.readouterr().err
    assert cli.main([str(empty), "--download", str(tmp_path / "d")]) == 2


def test_cli_help_documents_usage(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "python -m jobs.results s3://bucket/trcgl/runs/demo" in out and "--compare" in out


def test_results_module_does_not_import_ray():
    source = Path(results.__file__).read_text() + Path(cli.__file__).read_text()
    assert "import ray" not in source
