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
