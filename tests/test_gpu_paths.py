"""The GPU code paths (mixed precision, torch.compile, channels-last, pinned non-blocking copies), exercised on CPU
where they exist there; the CUDA-only parts skip with the reason."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trcgl.config import load_config
from trcgl.models import build_model
from trcgl.train.devices import amp_enabled, prepare_for_speed, to_device

CUDA = torch.cuda.is_available()
CPU = torch.device("cpu")


def _model(seed: int = 0) -> torch.nn.Module:
    cfg = load_config("tiny")
    torch.manual_seed(seed)
    cooc = np.eye(30) + 0.05
    return build_model(cfg.model, 30, cooc).eval()


def test_amp_is_off_on_cpu_and_when_not_asked():
    assert amp_enabled(True, CPU) is False
    assert amp_enabled(False, CPU) is False
    if CUDA:
        assert amp_enabled(False, torch.device("cuda")) is False


def test_to_device_on_cpu_keeps_values_and_applies_channels_last():
    x = torch.rand(2, 1, 8, 8)
    y = to_device(x, CPU, pin_memory=True, channels_last=True)
    assert torch.equal(y, x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    labels = torch.ones(2, 3)
    assert to_device(labels, CPU, pin_memory=True, channels_last=True).shape == (2, 3)  # 2-D stays as it is


def test_channels_last_and_compiled_models_match_eager_and_train():
    x = torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    eager = _model()
    expected = eager(x)
    fast_base = _model()
    fast = prepare_for_speed(fast_base, channels_last=True, compile_model=True, backend="aot_eager")
    assert fast is not fast_base  # a compiled wrapper sharing the parameters
    got = fast(to_device(x, CPU, channels_last=True))
    assert got.shape == (3, 30)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # a training step through the compiled module updates the plain module's weights (what checkpoints save)
    fast_base.train()
    before = next(fast_base.parameters()).detach().clone()
    opt = torch.optim.SGD(fast_base.parameters(), lr=0.1)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(fast(x), torch.zeros(3, 30))
    loss.backward()
    opt.step()
    assert not torch.equal(before, next(fast_base.parameters()).detach())
    assert not any(k.startswith("_orig_mod.") for k in fast_base.state_dict())


def test_bf16_autocast_runs_the_model_on_cpu():
    """The autocast region the training loop enters on CUDA also compiles on CPU (where the loop keeps it off)."""
    x = torch.rand(2, 1, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _model()(x)
    assert out.shape == (2, 30) and torch.isfinite(out.float()).all()


@pytest.mark.skipif(not CUDA, reason="pinned memory and non-blocking copies need a CUDA device")
def test_pinned_non_blocking_copy_on_cuda():
    x = torch.rand(4, 1, 16, 16)
    y = to_device(x, torch.device("cuda"), pin_memory=True, channels_last=True)
    assert y.is_cuda and torch.equal(y.cpu(), x)


def test_gpu_benchmark_dry_run_prints_every_path(capsys):
    from jobs import benchmark

    assert benchmark.main(["gpu", "--dry-run", "--preset", "tiny", "--train-batch", "4"]) == 0
    out = capsys.readouterr().out
    assert "dry run on CPU" in out
    for what in ("sampling fp32 batch 2", "sampling bf16 batch 2", "train fp32, eager", "train bf16 AMP, eager"):
        assert what in out, out
    assert "ratio sampling bf16/fp32 at batch 2" in out
    for line in out.splitlines():
        if "images/s" in line:
            assert float(line.split("images/s")[0].split()[-1]) > 0, line


def test_peak_lookup_prefers_the_longest_name():
    from trcgl_dev.benchmarks.gpu_bench import peak_tflops

    assert peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops("NVIDIA A10G") == 70.0
    assert peak_tflops("Quadro Something") is None


def test_auto_backend_is_nccl_only_where_this_torch_can_use_cuda():
    """``train.dist_backend=auto`` for GPU workers, as each worker answers it: a GPU Ray declares but torch cannot use
    (a fake GPU of the local autoscaling cluster; this machine, whose torch build has NCCL but no CUDA device) trains on
    the CPU, so the process group must be gloo there; named backends are kept."""
    from trcgl.train.devices import dist_backend

    nccl = torch.distributed.is_available() and torch.distributed.is_nccl_available()
    assert dist_backend(True, "auto") == ("nccl" if CUDA and nccl else "gloo")
    assert dist_backend(False, "auto") == "gloo"
    assert dist_backend(False, "nccl") == "nccl" and dist_backend(True, "gloo") == "gloo"
