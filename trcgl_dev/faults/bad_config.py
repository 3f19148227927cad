"""The bad configuration scenario: each bad setting goes to the real entry point that meets it first (config
loading, the job CLI, the storage writability probe, the GPU checks), and the error it gives before any work starts
is recorded: its type, whether it names the bad key or value, and how long it took to come.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from trcgl.config import StorageConfig, load_config
from trcgl.ray_runtime import check_gpus_feasible
from trcgl.storage import Storage
from trcgl_dev.faults import Figures
from trcgl_dev.ray_head import clean_env

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
CLUSTER_DIR = REPO / "cluster"
_MAX_ERROR_CHARS = 600


@dataclass
class BadConfigCase(Figures):
    """One bad setting and the error it met.

    Attributes:
        case: the case's name (e.g. "unknown key (override)").
        error_type: the exception's class name; None: nothing was raised.
        message: the exception's message (shortened).
        names_problem: an exception was raised and its message names every string the case expects (the bad key
            and/or value; for a job CLI case also its exit code, whether Ray started, the files left).
        not_named: the expected strings the message lacks.
        names_key: for a case about one config key, whether the message names it; None for other cases.
        seconds: time from the call to the error.
    """

    case: str
    error_type: str | None
    message: str
    names_problem: bool
    not_named: list[str]
    names_key: bool | None
    seconds: float


def _case(name: str, expect: Sequence[str], fn: Callable[[], object], key: str | None = None) -> BadConfigCase:
    """Runs ``fn`` and records the error it raised against ``expect`` and ``key``."""
    started = time.monotonic()
    error: BaseException | None = None
    try:
        fn()
    except Exception as exc:  # the figure is the point
        error = exc
    seconds = round(time.monotonic() - started, 3)
    message = "" if error is None else str(error)
    missing = [e for e in expect if e not in message]
    return BadConfigCase(
        case=name,
        error_type=None if error is None else type(error).__name__,
        message=message[:_MAX_ERROR_CHARS],
        names_problem=error is not None and not missing,
        not_named=missing,
        names_key=None if key is None else key in message,
        seconds=seconds,
    )


def _job_cli(module: str, overrides: Sequence[str], root: Path | None = None) -> None:
    """Runs ``python -m jobs.<module> --config tiny --set ...`` and raises its outcome as the case's error.

    The message says the exit code, whether Ray was started (the job log says so before any work), how many files
    the job left under ``root`` (when given) and the job's last output line (the error it printed). The job runs
    with :func:`~trcgl_dev.ray_head.clean_env`, so it starts its own local Ray rather than joining the caller's.
    """
    done = subprocess.run(
        [sys.executable, "-m", f"jobs.{module}", "--config", "tiny", "--set", *overrides],
        cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    text = (done.stdout + done.stderr).strip()
    started_ray = "starting a local Ray" in text or "connecting to Ray" in text
    left = "" if root is None else f"files left: {sum(len(f) for _, _, f in os.walk(root))}; "
    last = text.splitlines()[-1] if text else ""
    raise RuntimeError(f"exit code {done.returncode}; Ray started: {started_ray}; {left}{last}")


def bad_configs(endpoint_url: str | None = None) -> list[BadConfigCase]:
    """Feeds each bad setting to the real entry point that meets it first and records the error.

    Cases: an unknown key (override, YAML file, and the job CLI, which must exit with code 2 before Ray starts), a
    value of the wrong type, a label set that does not exist, a storage root that cannot be written (a local path
    under a file; a missing bucket on ``endpoint_url`` when given), GPUs the Ray cluster does not have (the sweep
    job on its own local, CPU-only Ray, asked for 64 GPUs per worker: it must stop before writing anything) and GPUs
    no autoscaler node type can hold.

    Returns:
        One result per case, in the order above.
    """
    scratch = Path(tempfile.mkdtemp(prefix="trcgl-badcfg-"))
    cases: list[BadConfigCase] = []
    try:
        bad_yaml = scratch / "typo.yaml"
        bad_yaml.write_text("train:\n  epochz: 3\n")
        blocker = scratch / "a-file"
        blocker.write_text("not a folder")
        unwritable = str(blocker / "runs")
        cases.append(
            _case("unknown key (override)", ["data.imag_size"], lambda: load_config("tiny", ["data.imag_size=64"]))
        )
        cases.append(
            _case("unknown key (YAML file)", ["train.epochz", "typo.yaml"], lambda: load_config(str(bad_yaml)))
        )
        cases.append(
            _case(
                "unknown key (job CLI)",
                ["exit code 2", "Ray started: False", "data.imag_size"],
                lambda: _job_cli("prepare", ["data.imag_size=64"]),
            )
        )
        cases.append(_case("wrong type", ["train.epochs", "many"], lambda: load_config("tiny", ["train.epochs=many"])))
        cases.append(
            _case(
                "unknown label set",
                ["cxr-lt-99"],
                lambda: load_config("tiny", ["data.label_set=cxr-lt-99"]),
                key="data.label_set",
            )
        )
        cases.append(_case("unwritable local root", [unwritable, "not writable"], Storage(unwritable).check_writable))
        if endpoint_url:
            missing = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/trcgl"
            where = urlparse(endpoint_url).netloc
            cases.append(
                _case(
                    "missing bucket",
                    [missing, "not writable", where],
                    Storage(missing, StorageConfig(endpoint_url=endpoint_url)).check_writable,
                )
            )
        gpu_root = scratch / "gpu-root"
        cases.append(
            _case(  # the sweep job checks GPUs right after the storage probe: on this CPU-only Ray it must stop there
                "GPUs the cluster lacks (job CLI)",
                ["exit code 2", "files left: 0", "train.gpus_per_worker", "64"],  # a configuration error
                lambda: _job_cli(
                    "sweep", [f"storage.root={gpu_root}", "train.use_gpu=true", "train.gpus_per_worker=64"], gpu_root
                ),
            )
        )
        template = CLUSTER_DIR / "local-autoscaling.yaml"
        cases.append(
            _case(
                "GPUs no autoscaler node type holds",
                ["generate.num_gpus", "4"],
                lambda: check_gpus_feasible(4.0, "generate.num_gpus", template),
            )
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for case in cases:
        log.info("bad config %s", case)
    return cases
