"""The corrupt inputs scenario: corrupt images and malformed metadata rows beside good ones in a real prepare run
(needs a running Ray). Every bad input must be reported with its reason and no good row may be lost with it."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from trcgl.config import load_config
from trcgl.storage import Storage
from trcgl_dev.faults import Figures
from trcgl_dev.faults.inputs import BAD_IMAGE_REASONS, BAD_ROW_REASONS, make_padchest_like

log = logging.getLogger(__name__)


@dataclass
class CorruptInputsResult(Figures):
    """What :func:`corrupt_inputs` measured.

    Attributes:
        job_succeeded: the prepare job returned a report naming its dataset, and the dataset could be read back.
        error: the job's (or the read-back's) exception, type and message, when it did not succeed; else None.
        good: good rows planted.
        kept: distinct image ids in the prepared dataset.
        good_lost: good rows missing from the dataset.
        bad_planted: bad images and malformed metadata rows planted.
        bad_reported: those the prepare report lists under their reason.
        bad_unreported: ``bad_planted - bad_reported``.
        wrong_reason: bad images reported under another reason than planted.
        bad_kept: bad images that made it into the dataset.
        duplicates: rows written more than once.
        seconds: the prepare job's wall time.
    """

    job_succeeded: bool
    error: str | None
    good: int
    kept: int
    good_lost: int
    bad_planted: int
    bad_reported: int
    bad_unreported: int
    wrong_reason: list[str]
    bad_kept: list[str]
    duplicates: int
    seconds: float


def corrupt_inputs(workdir: Path) -> CorruptInputsResult:
    """Prepares a PadChest-format folder holding every kind of bad input next to good ones (the real prepare job on
    the current Ray), and compares what the job kept and reported with what was planted.

    Args:
        workdir: an empty folder for the source files and the storage root.
    """
    from trcgl.data.dataset import read_dataset
    from trcgl.data.ray_prepare import run_prepare

    source, root = workdir / "src", workdir / "root"
    ids = make_padchest_like(source)
    cfg = load_config(
        "tiny",
        [
            f"storage.root={root}",
            "data.source=padchest",
            f"data.metadata={source}/meta.csv",
            f"data.images={source}/images",
            "data.shard_rows=6",
            "data.image_size=24",
            "data.split.val_fraction=0.2",
            "data.split.test_fraction=0.2",
        ],
    )
    t0 = time.perf_counter()
    error: str | None = None
    report: dict = {}
    kept: list[str] = []
    try:
        report = run_prepare(cfg)
    except Exception as exc:  # a figure: a failed job then keeps no rows and reports no bad input
        error = f"{type(exc).__name__}: {exc}"[:500]
    seconds = time.perf_counter() - t0
    if error is None:
        try:
            kept = read_dataset(Storage(str(root)), report["dataset"])["image_id"].to_pylist()
        except Exception as exc:  # a report naming no readable dataset is no success either
            error = f"{type(exc).__name__}: {exc}"[:500]
    by_image = {r["image_id"]: r["reason"] for r in report.get("rejected_image_list", [])}
    by_row = dict(report.get("dropped_metadata_by_reason", {}))
    planted = len(BAD_IMAGE_REASONS) + sum(BAD_ROW_REASONS.values())
    reported_images = sum(1 for iid in BAD_IMAGE_REASONS if iid in by_image)
    reported_rows = sum(min(by_row.get(reason, 0), n) for reason, n in BAD_ROW_REASONS.items())
    wrong = [iid for iid, reason in BAD_IMAGE_REASONS.items() if by_image.get(iid) not in (None, reason)]
    figures = CorruptInputsResult(
        job_succeeded=error is None,
        error=error,
        good=len(ids["good"]),
        kept=len(set(kept)),
        good_lost=len(set(ids["good"]) - set(kept)),
        bad_planted=planted,
        bad_reported=reported_images + reported_rows,
        bad_unreported=planted - reported_images - reported_rows,
        wrong_reason=wrong,
        bad_kept=sorted(set(kept) & set(ids["bad_images"])),
        duplicates=len(kept) - len(set(kept)),
        seconds=round(seconds, 1),
    )
    log.info("corrupt inputs: %s", figures)
    return figures
