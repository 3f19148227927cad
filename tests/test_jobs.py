"""Job entrypoints as users run them: a real subprocess with its own local Ray, S3 roots, config errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trcgl.storage import Storage

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def test_prepare_command_renders_and_prepares_in_its_own_ray(tmp_path):
    env = {**os.environ, "RAY_DISABLE_USAGE_STATS": "1"}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.prepare",
            "--config",
            "tiny",
            "--set",
            f"storage.root={tmp_path}",
            "synth.rows=120",  # the command and its own Ray are the point here, not the dataset's size
            "--log-level",
            "WARNING",
            "--format",
            "json",  # the whole summary on stdout, for this script
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)
    assert summary["rows_written"] > 0 and summary["rejected_images"] == 0
    storage = Storage(str(tmp_path))
    manifest = storage.manifest(f"datasets/{summary['dataset']}")
    assert manifest is not None and any(f.startswith("part-") for f in manifest["files"])
    assert any(
        f.startswith("sources/padchest-synth") and f.endswith("_manifest.json") for f in storage.list_files("sources")
    )


def test_config_error_exits_2_naming_the_key(caplog):
    from jobs.prepare import main

    assert main(["--config", "tiny", "--set", "data.imagesize=3"]) == 2
    assert "data.imagesize" in caplog.text
    assert main(["--config", "tiny", "--set", "data.label_set=nope"]) == 2
    assert "unknown label set 'nope'" in caplog.text
