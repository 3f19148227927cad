"""The benchmarks stay runnable (tiny sizes, no timing assertions: figures live in README.md)."""

import pytest

pytestmark = pytest.mark.slow


def test_train_benchmark_runs(ray_local, capsys):
    from jobs.benchmark import main

    assert (
        main(["train", "--backbone", "resnet10t", "--size", "32", "--batch", "4", "--steps", "2", "--threads", "1"])
        == 0
    )
    out = capsys.readouterr().out
    assert "ratio b/a" in out and "ratio c/b" in out
    assert "(c) full TRCGL-Net in Ray Train" in out


def test_generate_benchmark_runs(ray_local, capsys):
    from jobs.benchmark import main

    assert main(["generate", "--images", "4", "--steps", "2", "--batch", "2", "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "ratio b/a with 1 actor" in out and "scaling 1 -> 2 actors" in out


@pytest.mark.parametrize("epochs", [[9.0, 3.0, 5.0], [4.0]])
def test_cache_benchmark_ratios(epochs):
    """The cache benchmark's arithmetic (its runs, two training jobs per stage, are left to the benchmark itself:
    about 70 s even at one epoch)."""
    from trcgl_dev.benchmarks.ray_cache_bench import CacheBenchResult, CacheRun

    streamed = CacheRun("classifier", "streamed", [e * 2 for e in epochs], 80.0)
    held = CacheRun("classifier", "held", epochs, 40.0)
    lines = CacheBenchResult({"train": 388, "val": 66}, [streamed, held]).lines()
    assert lines[0].endswith("388 train / 66 val rows")
    steady = sum(epochs[1:] or epochs) / len(epochs[1:] or epochs)  # the first epoch warms up
    assert held.steady == pytest.approx(steady) and streamed.steady == pytest.approx(2 * steady)
    assert lines[-1] == "cache  classifier held/streamed: epoch 0.50, run 0.50"
