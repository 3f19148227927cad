"""trcgl.ray_parquet.read_parts: the rows pandas reads from the same files, built on Ray Data's first Parquet
datasource (no footer-reader actors, which the DataSourceV2 read starts), and Ray's own setting left as it was."""

from __future__ import annotations

import pandas as pd
import pytest
import ray

from trcgl.data.dataset import COLUMNS, load_dataset_info
from trcgl.ray_parquet import read_parts
from trcgl.storage import Storage

pytestmark = pytest.mark.slow


def _footer_readers() -> int:
    """FooterReader actors this Ray has ever had (the state API lists dead actors too)."""
    from trcgl_dev.ray_state import list_actors

    return len(list_actors(filters=[("class_name", "=", "FooterReader")], limit=10_000, raise_on_missing_output=False))


def test_read_parts_reads_every_row_without_footer_reader_actors(tiny_prepared: tuple[str, str]) -> None:
    root, dataset = tiny_prepared
    storage = Storage(root)
    info = load_dataset_info(storage, dataset)
    expected = pd.concat([pd.read_parquet(p, columns=["image_id", "split"]) for p in info.parts])
    ctx = ray.data.DataContext.get_current()
    setting = ctx.use_datasource_v2

    before = _footer_readers()
    ds = read_parts(info.parts, storage.pyarrow_fs, [*COLUMNS, "split"])
    assert ctx.use_datasource_v2 is setting, "read_parts leaves Ray's datasource setting as it found it"
    got = ds.filter(expr="split == 'val'").select_columns(["image_id"]).to_pandas()
    assert sorted(got["image_id"]) == sorted(expected.loc[expected["split"] == "val", "image_id"])
    assert set(ds.columns()) == {*COLUMNS, "split"}
    assert _footer_readers() == before, "the read started FooterReader actors (the DataSourceV2 pipeline)"

    # the control: the same read on DataSourceV2 does start them, so the count above can tell the two apart
    v2 = read_parts(info.parts, storage.pyarrow_fs, ["image_id"], v2=True).to_pandas()
    assert sorted(v2["image_id"]) == sorted(expected["image_id"])
    assert _footer_readers() > before
