"""``python -m jobs.benchmark gpu``: the GPU code paths' throughput, and achieved TFLOP/s against the card's peak.

Measured in-process on one device (no Ray: this is about the kernels, not the scheduling):

- diffusion sampling images/s of the configured ``TextToXray`` at fp32 and bf16 autocast, for several batch sizes;
- classifier training-step images/s of TRCGL-Net with mixed precision off/on and ``torch.compile`` off/on
  (channels-last and pinned, non-blocking host-to-device copies on CUDA, as the training job does).

FLOPs of one step come from ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions), so achieved
TFLOP/s = FLOPs x steps / time; the peak is the card's dense bf16 figure from its datasheet (None when the card is
not in :data:`PEAK_BF16_TFLOPS`). Without CUDA the same script runs as a dry run on CPU at small sizes (CI runs it
that way); its figures say only that the paths work.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils.flop_counter import FlopCounterMode

from trcgl.config import load_config
from trcgl.diffusion.model import TextToXray
from trcgl.diffusion.prompts import prompt_vocabulary
from trcgl.models import build_model

log = logging.getLogger(__name__)

# dense bf16 tensor-core TFLOP/s from the vendors' datasheets (no sparsity), matched by substring of the device name
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
    "T4": 65.0,
}


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a card by name, or None when unknown (longest matching key wins)."""
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if key in device_name:
            return PEAK_BF16_TFLOPS[key]
    return None


@dataclass
class GpuBenchResult:
    device: str
    dry_run: bool
    peak: float | None
    rows: list[dict] = field(default_factory=list)

    def lines(self) -> list[str]:
        mode = "dry run on CPU (figures only show the paths work)" if self.dry_run else "CUDA"
        out = [f"gpu  device: {self.device} ({mode}); dense bf16 peak: {self.peak or 'unknown'} TFLOP/s"]
        for r in self.rows:
            frac = f", {100 * r['tflops'] / self.peak:.1f} % of peak" if self.peak and r["tflops"] else ""
            out.append(f"gpu  {r['what']:<58} {r['images_s']:9.1f} images/s  {r['tflops']:7.3f} TFLOP/s{frac}")
        by = {r["what"]: r["images_s"] for r in self.rows}
        for what, value in by.items():
            fp32 = by.get(what.replace("bf16", "fp32")) if what.startswith("sampling bf16") else None
            if fp32:
                out.append(f"gpu  ratio sampling bf16/fp32 at batch {what.rsplit(' ', 1)[-1]}: {value / fp32:.2f}")
        ref = by.get("train fp32, eager")
        for what, value in by.items():
            if ref and what.startswith("train") and what != "train fp32, eager":
                out.append(f"gpu  ratio ({what}) / (train fp32, eager): {value / ref:.2f}")
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], None], device: torch.device, warmup: int, steps: int) -> float:
    """Seconds for ``steps`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return time.perf_counter() - t0


def _flops(fn: Callable[[], None]) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def sampling_rows(preset: str, device: torch.device, batches: list[int], steps: int, repeats: int) -> list[dict]:
    """Diffusion sampling images/s and TFLOP/s at fp32 and bf16 for each batch size."""
    cfg = load_config(preset)
    vocab = prompt_vocabulary(["pleural effusion", "cardiomegaly", "pneumothorax"], ["left", "right", "basal"])
    model = TextToXray.build(cfg.diffusion, vocab).to(device)
    rows = []
    for batch in batches:
        prompts = ["chest x-ray, PA view: pneumothorax; loc left"] * batch
        seeds = list(range(batch))
        for dtype_name, autocast in (("fp32", False), ("bf16", True)):

            def run(prompts: list[str] = prompts, seeds: list[int] = seeds, autocast: bool = autocast) -> None:
                ctx = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
                with ctx:
                    model.sample(prompts, seeds, steps=steps)

            seconds = _timed(run, device, warmup=1, steps=repeats)
            flops = _flops(run)
            rows.append(
                {
                    "what": f"sampling {dtype_name} batch {batch}",
                    "images_s": batch * repeats / seconds,
                    "tflops": flops * repeats / seconds / 1e12,
                }
            )
    return rows


def training_rows(
    preset: str, device: torch.device, size: int, batch: int, steps: int, compile_modes: list[bool]
) -> list[dict]:
    """Classifier training-step images/s and TFLOP/s with AMP (bf16) off/on and torch.compile off/on."""
    cfg = load_config(preset)
    k = 30
    cooc = torch.eye(k).numpy() + 0.1
    gen = torch.Generator().manual_seed(0)
    host_x = torch.rand(batch, 1, size, size, generator=gen)
    host_y = (torch.rand(batch, k, generator=gen) < 0.1).float()
    if device.type == "cuda":
        host_x, host_y = host_x.pin_memory(), host_y.pin_memory()
    loss_fn = torch.nn.BCEWithLogitsLoss()
    rows = []
    for compiled in compile_modes:
        for amp in (False, True):
            torch.manual_seed(0)
            model = build_model(cfg.model, k, cooc).to(device)
            if device.type == "cuda":
                model = model.to(memory_format=torch.channels_last)
            step_model: torch.nn.Module = torch.compile(model) if compiled else model
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

            def step(step_model: torch.nn.Module = step_model, opt=opt, amp: bool = amp) -> None:
                x = host_x.to(device, non_blocking=True)
                y = host_y.to(device, non_blocking=True)
                if device.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    loss = loss_fn(step_model(x).float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            seconds = _timed(step, device, warmup=3 if compiled else 2, steps=steps)
            flops = _flops(lambda m=model, a=amp: _forward_backward(m, host_x, host_y, device, a, loss_fn))
            rows.append(
                {
                    "what": f"train {'bf16 AMP' if amp else 'fp32'}, {'compiled' if compiled else 'eager'}",
                    "images_s": batch * steps / seconds,
                    "tflops": flops * steps / seconds / 1e12,
                }
            )
    return rows


def _forward_backward(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, amp: bool, loss_fn: torch.nn.Module
) -> None:
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        loss = loss_fn(model(x.to(device)).float(), y.to(device))
    loss.backward()
    model.zero_grad(set_to_none=True)


def run(
    preset: str = "demo",
    dry_run: bool | None = None,
    batches: list[int] | None = None,
    steps: int = 20,
    train_size: int | None = None,
    train_batch: int = 64,
    train_steps: int = 20,
    compile_on_cpu: bool = False,
) -> GpuBenchResult:
    """Measures every row on CUDA when present (else a small CPU dry run).

    Args:
        preset: config preset whose diffusion and classifier architectures are measured.
        dry_run: force the CPU dry run (None: dry run exactly when CUDA is absent).
        batches: sampling batch sizes (default 8, 32, 128 on CUDA; 2 on CPU).
        steps: sampler steps per image.
        train_size, train_batch, train_steps: classifier image side, batch and timed steps.
        compile_on_cpu: also time torch.compile in the dry run (slow to compile on 2 cores).
    """
    cuda = torch.cuda.is_available() and not dry_run
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        name = torch.cuda.get_device_name(device)
        batches = batches or [8, 32, 128]
        size = train_size or 224
        compile_modes = [False, True]
        repeats = 3
    else:
        name = "cpu"
        batches = batches or [2]
        steps, size, train_batch, train_steps = (
            min(steps, 3),
            train_size or 64,
            min(train_batch, 8),
            min(train_steps, 3),
        )
        compile_modes = [False, True] if compile_on_cpu else [False]
        repeats = 1
    result = GpuBenchResult(device=name, dry_run=not cuda, peak=peak_tflops(name) if cuda else None)
    result.rows += sampling_rows(preset, device, batches, steps, repeats)
    result.rows += training_rows(preset, device, size, train_batch, train_steps, compile_modes)
    return result
