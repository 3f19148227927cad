"""End to end: the whole pipeline submitted as a Ray job to a token-auth head with storage on a loopback S3 server,
read back with jobs.results and opened in a real browser (the killed-and-resumed sweep is in tests/faults)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from _browser import browser_or_skip, inspect_page

from trcgl_dev.s3 import FAKE_CREDENTIALS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline_job(pipeline_on_token_head: dict) -> dict:
    """The end-to-end job (tests/conftest.py ``pipeline_on_token_head``: the tiny pipeline on a token-auth head, its
    storage on the loopback S3 server) with its submit output."""
    return {**pipeline_on_token_head, "job": pipeline_on_token_head["security"].job}


@pytest.fixture(scope="module")
def downloaded_report(pipeline_job: dict) -> Path:
    """The run's report folder as ``jobs.results --download`` writes it (once per module, whichever test asks
    first)."""
    from jobs import results

    dest = pipeline_job["tmp"] / "report"
    root, s3_endpoint = pipeline_job["root"], pipeline_job["endpoint"]
    assert results.main([f"{root}/runs/tiny", "--endpoint-url", s3_endpoint, "--download", str(dest)]) == 0
    return dest


def test_pipeline_job_on_a_token_head_writes_s3_and_reads_back(pipeline_job, downloaded_report):
    from jobs import results

    root, s3_endpoint = pipeline_job["root"], pipeline_job["endpoint"]
    job = pipeline_job["job"]  # submitted with the token; calls without it: tests/faults (the security scenario)
    assert job.succeeded, job.log_tail
    assert "report:" in Path(job.output_file).read_text()  # the summary table and report path reach the job log

    # jobs.results reads the run back from S3 without Ray
    assert results.main([root, "--endpoint-url", s3_endpoint, "--format", "json"]) == 0
    assert results.main([f"{root}/runs/tiny", "--endpoint-url", s3_endpoint]) == 0
    from trcgl.config import StorageConfig
    from trcgl.storage import Storage

    storage = Storage(root, StorageConfig(endpoint_url=s3_endpoint))
    summary = storage.read_json("runs/tiny/summary.json")
    assert [r["name"] for r in summary["rows"]] == ["best", "baseline"]
    assert list(summary["stages"]) == [
        "prepare", "train_diffusion", "baseline", "generate", "oracle", "controls", "sweep", "final", "report"
    ]  # fmt: skip
    assert summary["stages"]["controls"]["disabled"]  # the tiny preset has no pipeline.controls
    for row in summary["rows"]:
        assert 0.0 <= row["mAP"] <= 1.0 and row["ci"]["mAP"][0] <= row["ci"]["mAP"][1]
    assert summary["rows"][1]["synthetic_rows"] == 0
    board = pd.read_parquet(
        f"{root}/runs/tiny/sweep/leaderboard.parquet",
        storage_options={"client_kwargs": {"endpoint_url": s3_endpoint}},
    )
    assert len(board) == 1  # a 1-trial sweep keeps CI short; tests/faults kills and resumes a 2-trial sweep
    assert storage.manifest("runs/tiny/synthetic") is not None
    synthetic = pd.read_parquet(  # the whole folder: its sidecars stay out of the Parquet namespace
        f"{root}/runs/tiny/synthetic", storage_options={"client_kwargs": {"endpoint_url": s3_endpoint}}
    )
    # edited real negatives, each with its control (the same donor and seed with the empty prompt)
    assert (synthetic["mode"] == "edit").all() and synthetic["donor_id"].notna().all()
    assert synthetic["control_image"].map(len).eq(synthetic["image"].map(len)).all()
    assert storage.manifest("runs/tiny/synthetic_filtered") is not None
    # prepare and training on S3 (what the separate prepare-on-S3 and train-on-S3 tests checked before)
    datasets = [f for f in storage.list_files("datasets") if f.endswith("_manifest.json")]
    assert len(datasets) == 1
    assert {"_labels.json", "_cooccurrence.parquet", "_prepare_report.json"} <= set(
        storage.read_json(datasets[0])["files"]
    )
    config_text = storage.read_bytes(datasets[0].replace("_manifest.json", "_config.yaml")).decode()
    # credentials from the environment (this run's random fake secret) never reach saved configs
    assert FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in config_text
    baseline = storage.list_files("runs/tiny/baseline/classifier")
    assert "runs/tiny/baseline/classifier/best/model.pt" in baseline
    assert any(f.startswith("runs/tiny/baseline/classifier/checkpoint_") and f.endswith("model.pt") for f in baseline)

    assert (downloaded_report / "report.html").exists()  # jobs.results --download


def test_pipeline_report_opens_in_a_browser(pipeline_job, downloaded_report):
    """The report the pipeline job wrote, downloaded by jobs.results, in a real headless Chromium."""
    html = downloaded_report / "report.html"
    assert html.exists()
    binary = browser_or_skip()
    page, png = inspect_page(binary, html, pipeline_job["tmp"] / "profile")
    assert page["resources"] == []
    captions = [t["caption"] for t in page["tables"]]
    assert "Leaderboard" in captions and "Stages" in captions
    summary_table = page["tables"][0]
    assert [r[0] for r in summary_table["rows"]] == ["best", "baseline"]
    assert page["images"] and all(i["complete"] and i["naturalWidth"] > 0 for i in page["images"])
    shutil.copy(html, pipeline_job["tmp"] / "kept-report.html")
