"""Ray Data reads of the project's Parquet files: the parts of a prepared dataset and of generated folders.

Every such read goes through :func:`read_parts`, which builds it on Ray Data's first Parquet datasource ("V1")
rather than Ray 2.60's default, the DataSourceV2 pipeline. The project always knows the exact part files it reads (a
manifest names them), and for such a list V2 costs more than the read itself: each read starts a pool of
``FooterReader`` actors (up to 32, each a new Python process) to fetch the files' footers, then list and read tasks;
a dataset Ray Train streams every epoch pays that every epoch. V1 fetches many files' metadata in parallel tasks
(above Ray's own file-count threshold), which reuse Ray's pooled worker processes instead of starting actors.
``python -m jobs.benchmark read`` measures the two on the same data; BENCHMARKS.md "Parquet reads" has its figures.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow.fs
import ray.data


def read_parts(
    paths: Sequence[str], filesystem: pyarrow.fs.FileSystem | None, columns: Sequence[str], v2: bool = False
) -> ray.data.Dataset:
    """A lazy Ray Dataset of ``columns`` from the Parquet files ``paths``.

    Args:
        paths: the files (not folders), as ``filesystem`` names them.
        filesystem: pyarrow filesystem of the storage root (None: local paths).
        columns: the columns to read.
        v2: build the read on Ray's DataSourceV2 pipeline instead (Ray's default; the benchmark compares the two).

    Returns:
        The dataset; nothing is read until it is executed.
    """
    ctx = ray.data.DataContext.get_current()
    before = ctx.use_datasource_v2
    ctx.use_datasource_v2 = v2  # read_parquet picks its datasource from this flag when it is called, then not again
    try:
        # the column choice is pushed down into the read (Ray's optimizer; ``columns=`` is deprecated)
        return ray.data.read_parquet(list(paths), filesystem=filesystem).select_columns(list(columns))
    finally:
        ctx.use_datasource_v2 = before
