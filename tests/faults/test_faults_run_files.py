"""The kill scenarios' "each train row once per epoch" check on hand-made epoch totals (no Ray, no training)."""

from __future__ import annotations

import pytest

from trcgl.train.ray_common import id_checksum
from trcgl_dev.faults.run_files import (
    epoch_fed_each_row_once,
    epochs_saw_each_row_once,
    is_sum_of_distinct,
    rows_trained,
)

pytestmark = pytest.mark.faults

IDS = [f"img-{i:04d}" for i in range(11)]  # 11 rows over 2 workers: the equal split leaves out 1 per epoch


def _totals(fed: list[str]) -> tuple[int, int]:
    """(train_images, train_id_checksum) of an epoch that fed ``fed``, as EpochRows sums them over the workers."""
    return len(fed), id_checksum(fed)


def test_every_row_once_less_the_split_remainder_passes() -> None:
    for left_out in IDS:  # whichever row the equal split leaves out
        assert epoch_fed_each_row_once(*_totals([i for i in IDS if i != left_out]), IDS, workers=2)
    assert epoch_fed_each_row_once(*_totals(IDS[:10]), IDS[:10], workers=2)  # no remainder: every row, once
    # 3 workers leave out 2 rows (11 % 3): any 2 distinct ones
    assert epoch_fed_each_row_once(*_totals(IDS[1:5] + IDS[6:]), IDS, workers=3)


def test_one_row_twice_and_two_rows_missing_fails() -> None:
    fed = IDS[:9] + [IDS[0]]  # rows 9 and 10 missing, row 0 twice: 10 rows, the count the split leaves
    assert len(fed) == len(IDS) - len(IDS) % 2
    assert not epoch_fed_each_row_once(*_totals(fed), IDS, workers=2)
    # without a remainder: one row twice in place of another
    assert not epoch_fed_each_row_once(*_totals(IDS[:9] + [IDS[0]]), IDS[:10], workers=2)


def test_right_count_of_the_wrong_ids_fails() -> None:
    fed = IDS[:9] + ["not-a-train-id"]  # 10 rows, as the split leaves, but one is no train row
    assert not epoch_fed_each_row_once(*_totals(fed), IDS, workers=2)
    # the right ids' checksum with another count fails too
    images, checksum = _totals(IDS[:10])
    assert not epoch_fed_each_row_once(images + 1, checksum, IDS, workers=2)
    assert not epoch_fed_each_row_once(images, checksum, IDS, workers=3)  # 3 workers must leave out 2 rows


def test_history_check_needs_every_epoch_right_and_one_at_least() -> None:
    good = dict(zip(("train_images", "train_id_checksum"), _totals(IDS[1:]), strict=True))
    bad = dict(zip(("train_images", "train_id_checksum"), _totals(IDS[:9] + [IDS[0]]), strict=True))
    assert epochs_saw_each_row_once([{"epoch": 0, **good}, {"epoch": 1, **good}], IDS, workers=2)
    assert not epochs_saw_each_row_once([{"epoch": 0, **good}, {"epoch": 1, **bad}], IDS, workers=2)
    assert not epochs_saw_each_row_once([{"epoch": 0}], IDS, workers=2)  # no figures: nothing checkable
    assert not epochs_saw_each_row_once([], IDS, workers=2)
    assert rows_trained([{"epoch": 0, **good}, {"epoch": 1, **good}]) == 2 * (len(IDS) - 1)


def test_sum_of_distinct_entries() -> None:
    values = [5, 7, 11, 7]
    assert is_sum_of_distinct(0, values, 0) and not is_sum_of_distinct(5, values, 0)
    assert is_sum_of_distinct(11, values, 1) and not is_sum_of_distinct(6, values, 1)
    assert is_sum_of_distinct(14, values, 2)  # 7 + 7: a value repeated at two positions
    assert not is_sum_of_distinct(10, values, 2)  # 5 + 5 would take one entry twice
    assert is_sum_of_distinct(23, values, 3) and not is_sum_of_distinct(30, values, 3)
    assert not is_sum_of_distinct(30, values, 5)  # more entries than there are
