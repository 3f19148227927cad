"""Device-side choices shared by the training and sampling loops: mixed precision, memory format, host copies."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def amp_enabled(wanted: bool, device: torch.device) -> bool:
    """Whether bf16 autocast runs: asked for, on CUDA, and the card supports bf16 (CPU autocast is not used: on
    most CPUs bf16 matmuls are slower than fp32)."""
    return bool(wanted and device.type == "cuda" and torch.cuda.is_bf16_supported())


def inference_device(wanted: str = "auto") -> torch.device:
    """The device a scoring process runs on: "auto" is CUDA when this process sees a usable GPU, else the CPU.

    "cuda" on a node whose GPU torch cannot use (a fake GPU of the local autoscaling cluster, a CPU-only torch build)
    falls back to the CPU and says so, as training does (``trcgl.train.ray_common.train_device``).

    Args:
        wanted: "auto", "cpu" or "cuda".
    """
    if wanted not in ("auto", "cpu", "cuda"):
        raise ValueError(f"unknown device {wanted!r}; known: auto, cpu, cuda")
    if wanted == "cuda" and not torch.cuda.is_available():
        log.warning("a GPU was asked for but CUDA is not available in this process: scoring on the CPU")
    cuda = wanted != "cpu" and torch.cuda.is_available()
    return torch.device("cuda" if cuda else "cpu")


def to_device(
    x: torch.Tensor, device: torch.device, pin_memory: bool = True, channels_last: bool = False
) -> torch.Tensor:
    """Moves a host batch to ``device``: pinned and non-blocking on CUDA when asked, NHWC when asked.

    Args:
        x: (B, C, H, W) or any tensor on the host.
        device: the training device.
        pin_memory: page-lock the host copy first (CUDA only; a no-op elsewhere).
        channels_last: return 4-D tensors in ``torch.channels_last`` memory format.
    """
    cuda = device.type == "cuda"
    if cuda and pin_memory and not x.is_pinned():
        x = x.pin_memory()
    x = x.to(device, non_blocking=cuda and pin_memory)
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def prepare_for_speed(
    model: torch.nn.Module, channels_last: bool, compile_model: bool, backend: str = "inductor"
) -> torch.nn.Module:
    """The module to call in training steps: ``model`` in NHWC when asked, compiled when asked.

    The returned module shares parameters with ``model``; save ``model`` (a compiled wrapper renames its state-dict
    keys with an ``_orig_mod.`` prefix).
    """
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return torch.compile(model, backend=backend) if compile_model else model


def dist_backend(use_gpu: bool, wanted: str = "auto") -> str:
    """The torch.distributed backend for Ray Train: ``wanted``, or for "auto" NCCL when GPUs are used and this
    process's torch can use CUDA and has NCCL, gloo otherwise (gloo also carries CUDA tensors, only slower).

    "auto" with GPUs is a question about the Train workers' processes, so Ray Train asks it there
    (:func:`trcgl.train.ray_common.torch_config`): a GPU Ray declares but torch cannot use (a fake GPU of the local
    autoscaling cluster, a broken driver) trains on the CPU (``train_device``), where NCCL cannot run.
    """
    if wanted != "auto":
        return wanted
    import torch.distributed as dist

    nccl = dist.is_available() and dist.is_nccl_available()
    return "nccl" if use_gpu and nccl and torch.cuda.is_available() else "gloo"
