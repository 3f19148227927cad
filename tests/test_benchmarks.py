"""The benchmarks stay runnable (tiny sizes, no timing assertions: figures live in BENCHMARKS.md), and their
arithmetic is right (no Ray)."""

import pytest


@pytest.mark.slow
def test_train_benchmark_runs(ray_local, capsys):
    from jobs.benchmark import main

    assert (
        main(["train", "--backbone", "resnet10t", "--size", "32", "--batch", "4", "--steps", "2", "--threads", "1"])
        == 0
    )
    out = capsys.readouterr().out
    assert "ratio b/a" in out and "ratio c/b" in out
    assert "(c) full TRCGL-Net in Ray Train" in out


@pytest.mark.slow
def test_generate_benchmark_runs(ray_local, capsys):
    from jobs.benchmark import main

    assert main(["generate", "--images", "4", "--steps", "2", "--batch", "2", "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "ratio b/a with 1 actor" in out and "scaling 1 -> 2 actors" in out
    assert "new route / old route (a/c)" in out


@pytest.mark.slow
def test_predict_benchmark_runs(ray_local, capsys):
    from jobs.benchmark import main

    args = ["predict", "--images", "6", "--source-size", "48", "--preset", "tiny", "--batch", "4"]
    args += ["--rows-per-part", "3"]  # two parts: both actors of the second run score one
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "ratio b/a with 1 actor" in out and "ratio b/a with 2 actors" in out and "scaling 1 -> 2 actors" in out


@pytest.mark.parametrize("epochs", [[9.0, 3.0, 5.0], [4.0]])
def test_cache_benchmark_ratios(epochs):
    """The cache benchmark's arithmetic (its runs, four training jobs per stage, are left to the benchmark itself:
    minutes even at one epoch): held/streamed per order of the pair, then the mean of the orders' ratios."""
    from trcgl_dev.benchmarks.ray_cache_bench import ORDERS, CacheBenchResult, CacheRun

    assert sorted(o[0] for o in ORDERS) == ["held", "streamed"]  # each mode runs first once
    assert all(sorted(o) == ["held", "streamed"] for o in ORDERS)
    # streamed first: the held run after it is 2x faster; held first: 4x per epoch, 3x per run (an order effect)
    runs = [
        CacheRun("classifier", "streamed", [e * 2 for e in epochs], 80.0, first="streamed"),
        CacheRun("classifier", "held", epochs, 40.0, first="streamed"),
        CacheRun("classifier", "held", epochs, 30.0, first="held"),
        CacheRun("classifier", "streamed", [e * 4 for e in epochs], 90.0, first="held"),
    ]
    lines = CacheBenchResult({"train": 388, "val": 66}, runs).lines()
    assert lines[0].endswith("388 train / 66 val rows")
    steady = sum(epochs[1:] or epochs) / len(epochs[1:] or epochs)  # the first epoch warms up
    assert runs[1].steady == pytest.approx(steady) and runs[0].steady == pytest.approx(2 * steady)
    assert lines[1].startswith("cache  classifier streamed (streamed first): epochs ")
    assert lines[4].startswith("cache  classifier streamed (held first): epochs ")
    assert lines[-3:] == [
        "cache  classifier held/streamed, streamed first: epoch 0.50, run 0.50",
        "cache  classifier held/streamed, held first: epoch 0.25, run 0.33",
        # (0.5 + 0.25) / 2 and (0.5 + 1/3) / 2: the mean of the two orders' ratios
        "cache  classifier held/streamed, mean of 2 orders: epoch 0.38, run 0.42",
    ]
    # one order only (a partial result): its ratio, and no mean
    one = CacheBenchResult({"train": 388, "val": 66}, runs[:2]).lines()
    assert one[-1] == "cache  classifier held/streamed, streamed first: epoch 0.50, run 0.50"
    assert not any("mean of" in line for line in one)


def test_scale_benchmark_lines():
    """The scale benchmark's arithmetic (no Ray): time per row and memory above idle against the smallest size, the
    full set's targets, and the epoch ratio."""
    from trcgl_dev.benchmarks.ray_scale_bench import EpochRun, ScaleBenchResult, ScaleRun

    small = ScaleRun("2000", rows=2000, prepared=1800, render_s=40.0, prepare_s=10.0, peak_mb=1500.0, idle_mb=1000.0)
    # 10x the rows in 12x the time (1.2x per row), 1.5x the memory above idle
    big = ScaleRun("20000", rows=20000, prepared=18000, render_s=500.0, prepare_s=100.0, peak_mb=1750.0, idle_mb=1000.0)
    full = ScaleRun(
        "full", rows=160000, prepared=110000, render_s=3000.0, prepare_s=700.0, peak_mb=2000.0, idle_mb=1000.0
    )
    epochs = [EpochRun("full", "streamed", 88000, 800.0), EpochRun("2000", "held", 1400, 10.0)]
    lines = ScaleBenchResult([small, big, full], epochs).lines()
    assert lines[0] == (
        "scale  rows=2000: 2000 rendered in 40.0 s (50.0 images/s), 1800 prepared in 10.0 s (180.0 images/s), "
        "total 50.0 s; peak memory 1500 MB (500 MB above idle)"
    )
    assert lines[3] == (
        "scale  rows=20000 vs 2000: 10.0x rows, time per row 1.20x (1.0: linear), "
        "peak memory above idle 1.50x (1.0: flat)"
    )
    assert lines[5] == "scale  full set: 61.7 min (target <= 60), peak 2000 MB (target <= 4096): NOT met"
    assert lines[-1] == "scale  classifier epoch images/s streamed/held: 0.79x"  # 110 / 140 images/s


@pytest.mark.slow
def test_scale_benchmark_runs(ray_local, capsys, tmp_path):
    from jobs.benchmark import main

    args = ["scale", "--sizes", "120", "60", "--preset", "tiny", "--render-size", "64", "--size", "32"]
    assert main([*args, "--no-epoch", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("scale  rows=60: ") and out[1].startswith("scale  rows=120: ")  # smallest first
    assert out[2].startswith("scale  rows=120 vs 60: ") and "time per row" in out[2]
    assert (tmp_path / "rows-60" / "datasets").is_dir() and (tmp_path / "rows-120" / "datasets").is_dir()


def test_read_benchmark_lines():
    """The read benchmark's arithmetic (no Ray): the first read on a fresh Ray and the mean of the later reads per
    datasource, and V1/V2 of each."""
    from trcgl_dev.benchmarks.ray_read_bench import ReadBenchResult

    result = ReadBenchResult(rows=388, parts=5, first={"v1": 2.0, "v2": 5.0},
                             later={"v1": [0.5, 0.3, 0.4], "v2": [2.0, 1.0, 1.5]})  # fmt: skip
    lines = result.lines()
    assert lines[0] == "read  tiny PadChest-Synth train split: 388 rows from 5 Parquet files"
    assert lines[1] == "read  v1: first read on a fresh Ray 2.00 s; later reads 0.50 0.30 0.40 s (mean 0.40 s)"
    assert lines[2] == "read  v2: first read on a fresh Ray 5.00 s; later reads 2.00 1.00 1.50 s (mean 1.50 s)"
    assert lines[3:] == ["read  v1/v2 first read on a fresh Ray: 0.40", "read  v1/v2 later reads: 0.27"]
    # a partial result (V2 never ran): no ratio lines
    assert not any("v1/v2" in line for line in ReadBenchResult(388, 5, {"v1": 2.0}, {"v1": [0.5]}).lines())


def test_metadata_benchmark_lines():
    """The metadata benchmark's arithmetic (no run): each method's runs and mean, and ours/baseline per pair."""
    from trcgl_dev.benchmarks.metadata_bench import MetadataBenchResult

    seconds = {("read", "baseline"): [3.0, 3.4], ("read", "ours"): [1.0, 0.8],
               ("parse", "baseline"): [1.6, 1.4], ("parse", "ours"): [0.3, 0.3]}  # fmt: skip
    lines = MetadataBenchResult(rows=160861, texts=49040, seconds=seconds, select_seconds=3.9).lines()
    assert lines[0] == "metadata  PadChest CSV: 160861 rows, 49040 distinct list texts"
    assert lines[1:4] == [
        "metadata  read baseline: 3.00 3.40 s (mean 3.20 s)",
        "metadata  read ours: 1.00 0.80 s (mean 0.90 s)",
        "metadata  read ours/baseline: 0.28",
    ]
    assert lines[6] == "metadata  parse ours/baseline: 0.20"
    assert lines[7] == "metadata  select_subset (tiny preset, read and cleaning included): 3.90 s"
