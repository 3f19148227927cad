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
