"""The console of a job: -q / -v / --format on every job, the summary it prints at the end, and the Ray output each
verbosity lets through (trcgl/ray_console.py). No Ray is started: these are the pieces jobs/_cli.py puts together."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from ray.train.v2._internal.execution import context as train_context
from ray.tune.experiment import Trial

from jobs import _cli
from jobs.pipeline import summary_text
from trcgl import ray_console as console
from trcgl.storage import Storage, run_dir
from trcgl.sweep import ray_tune_console as tune_console

ROOT = Path(__file__).resolve().parent.parent
TRAIN_REPORTS = train_context.__file__  # the logger of Ray Train's line per report is named by its file


def pipeline_summary(root: Path) -> dict:
    """A pipeline summary as run_pipeline returns it, with the nested parts that make its JSON long."""
    ci = {"mAP": [0.21, 0.29], "mAUC": [0.70, 0.78], "tail_mAP": [0.10, 0.20]}
    rows = [
        {"name": name, "run": run, "mAP": 0.25, "mAUC": 0.74, "head_mAP": 0.5, "medium_mAP": 0.13,
         "tail_mAP": 0.15, "ci": ci, "synthetic_rows": n, "extra_rows": n}
        for name, run, n in (("best configuration", "demo/final", 120), ("baseline", "demo/baseline", 0))
    ]  # fmt: skip
    return {
        "run": "demo",
        "dataset": "padchest-synth-cxr-lt-30-64px-0000",
        "stages": {s: {"seconds": 12.0, "skipped": s == "prepare", "trials": 4} for s in ("prepare", "sweep")},
        "rows": rows,
        "best_run": "demo/sweep/trials/abc",
        "best_params": {f"param{i}": i / 10 for i in range(12)},
        "synthetic": {"images": 120, "output": str(root / "runs/demo/synthetic"), "realism": {"fid": 3.2}},
        "report": str(root / "runs/demo/report/report.html"),
        "seconds": 1800.0,
    }


def parse(*argv: str):
    return _cli.parser("a job", force_stages=()).parse_args(list(argv))


@pytest.fixture()
def restored_console(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """console.configure changes this process (environment, Ray's logger levels, Ray Data's context): undone after."""
    import ray.data

    for name in (console.ENV, "RAY_DATA_LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    levels = {name: logging.getLogger(name).level for name in (*console.RAY_LOGGERS, "ray", TRAIN_REPORTS)}
    context = ray.data.DataContext.get_current()
    bars = (context.enable_progress_bars, context.enable_operator_progress_bars)
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    context.enable_progress_bars, context.enable_operator_progress_bars = bars


def test_flags_choose_the_verbosity_and_our_log_level() -> None:
    assert (_cli.QUIET, _cli.NORMAL, _cli.VERBOSE) == console.LEVELS  # the copy in _cli matches
    assert parse().verbosity == "normal" and _cli.log_level(parse()) == "INFO"
    for flags, level in (
        (("-q",), "quiet"),
        (("--quiet",), "quiet"),
        (("-v",), "verbose"),
        (("--verbose",), "verbose"),
    ):
        assert parse(*flags).verbosity == level, flags
    assert _cli.log_level(parse("-q")) == "WARNING"
    assert _cli.log_level(parse("-q", "--log-level", "DEBUG")) == "DEBUG"  # an explicit level wins
    assert parse().format == "table" and parse("--format", "json").format == "json"
    with pytest.raises(SystemExit):
        parse("-q", "-v")  # one or the other


def test_the_summary_is_the_table_and_the_report_path_not_the_json(tmp_path: Path, capsys) -> None:
    """What the pipeline prints at the end by default and with -q: the table, the report's and the summary file's
    paths, no JSON; the whole summary is in summary.json."""
    storage = Storage(str(tmp_path))
    summary = pipeline_summary(tmp_path)
    storage.write_json(f"{run_dir('demo')}/summary.json", summary)  # as run_pipeline writes it
    saved = storage.uri(run_dir("demo"), "summary.json")
    for verbosity in ("normal", "quiet"):
        _cli.finish(summary, summary_text(summary, saved), verbosity)
        out = capsys.readouterr().out
        lines = out.strip().splitlines()
        assert lines[0].startswith("run demo on padchest-synth"), out
        assert any(line.split()[:2] == ["best", "configuration"] and "0.250 [0.210, 0.290]" in line for line in lines)
        assert f"report: {summary['report']}" in lines and f"summary: {saved}" in lines
        assert "{" not in out and '"best_params"' not in out  # no JSON
        assert len(lines) < 10, out
    assert json.loads(Path(saved).read_text()) == summary  # the details are in the file it names


def test_verbose_prints_the_whole_summary_after_the_table(capsys, tmp_path: Path) -> None:
    summary = pipeline_summary(tmp_path)
    _cli.finish(summary, summary_text(summary), "verbose")
    out = capsys.readouterr().out
    table, _, whole = out.partition("\nsummary (JSON):\n")
    assert f"report: {summary['report']}" in table
    assert json.loads(whole) == json.loads(json.dumps(summary))


def test_format_json_prints_the_summary_alone(capsys, tmp_path: Path) -> None:
    summary = pipeline_summary(tmp_path)
    _cli.finish(summary, summary_text(summary), "normal", fmt="json")
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(summary))


def test_brief_shows_plain_values_and_leaves_the_rest_to_the_file() -> None:
    """The default summary of a job (sweep-shaped here): one line per plain value, short dicts and lists inline,
    the rest named with the file that holds it."""
    report = {
        "run": "demo",
        "trials": 8,
        "best_value": 0.283333,
        "best_params": {"train.lr": 0.003, "model.gcn": True},
        "plots": ["history", "importances"],
        "importances": {f"k{i}": 0.1 for i in range(9)},
        "history": [{"epoch": 0}],
        "output": "s3://bucket/trcgl/runs/demo/sweep/",
    }
    text = _cli.brief(report, _cli.saved_in(report, "sweep_report.json"))
    lines = text.splitlines()
    assert lines[:5] == [
        "run:         demo",
        "trials:      8",
        "best_value:  0.2833",
        "best_params: train.lr=0.003, model.gcn=True",
        "plots:       history, importances",
    ]
    assert "details:     s3://bucket/trcgl/runs/demo/sweep/sweep_report.json" in lines
    assert lines[-1].startswith("(importances, history: in the details file")
    assert "k8" not in text and "epoch" not in text


def test_each_verbosity_sets_what_ray_prints(restored_console: None) -> None:
    import ray.data

    console.configure("quiet")
    assert os.environ[console.ENV] == "quiet" and os.environ["RAY_DATA_LOG_LEVEL"] == "WARNING"
    assert all(logging.getLogger(n).level == logging.WARNING for n in (*console.RAY_LOGGERS, "ray"))
    assert ray.data.DataContext.get_current().enable_progress_bars is False
    assert console.train_logging().log_level == "WARNING"
    console.quiet_train_reports()  # in a Train worker: Ray Train's line per report, outside ray.train
    assert logging.getLogger(TRAIN_REPORTS).level == logging.WARNING
    options = tune_console.tune_output("val_mAP", 39)
    assert options["verbose"] == 0 and isinstance(options["callbacks"][0], tune_console.TrialLines)

    console.configure("normal")
    assert ray.data.DataContext.get_current().enable_progress_bars is True  # one bar per dataset in a terminal
    assert ray.data.DataContext.get_current().enable_operator_progress_bars is False

    console.configure("verbose")
    assert console.train_logging().log_level == "INFO"
    # Tune's own output, as Ray prints it
    assert tune_console.tune_output("val_mAP") == {"verbose": None, "callbacks": []}
    with pytest.raises(ValueError, match="loud"):
        console.configure("loud")


def test_one_line_per_ended_trial(caplog) -> None:
    done = Trial("_row_trial", config={"row": "backbone + BCE", "seed": 0}, stub=True, trial_id="5a366_00000")
    done.set_status(Trial.TERMINATED)
    trial = Trial("_row_trial", config={"row": "ASL", "seed": 1}, stub=True, trial_id="5a366_00001")
    trial.update_last_result({"training_iteration": 5, "time_total_s": 135.5, "val_mAP": 0.315214})
    with caplog.at_level(logging.INFO, logger="trcgl.sweep.ray_tune_console"):
        tune_console.TrialLines("val_mAP", 39).on_trial_complete(7, [done, trial], trial)
    assert caplog.messages == [
        "trial 2/39 5a366_00001 ended after 5 iterations (136 s): row=ASL seed=1; val_mAP 0.3152"
    ]


def test_quiet_reaches_our_loggers_in_a_new_process() -> None:
    """A Ray worker of a -q job is a new Python process with the driver's environment: importing trcgl there drops
    our INFO lines (per epoch, per trial)."""
    probe = "import logging, trcgl; print(logging.getLogger('trcgl').level)"
    levels = {}
    for level in ("quiet", "normal"):
        env = {**os.environ, console.ENV: level}
        done = subprocess.run([sys.executable, "-c", probe], env=env, cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        levels[level] = int(done.stdout)
    assert levels == {"quiet": logging.WARNING, "normal": logging.NOTSET}  # NOTSET: the worker's own level (INFO)
