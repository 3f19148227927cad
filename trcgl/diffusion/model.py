"""TextToXray: the text-guided conditional diffusion model, composed from independent diffusers/transformers parts.

The parts know nothing of each other; :class:`TextToXray` is the one place that composes them:

* a tokenizer and a text encoder (:mod:`trcgl.diffusion.text`): prompts → hidden states (B, L, D);
* a ``diffusers.UNet2DConditionModel`` that predicts the noise (epsilon) and cross-attends to those hidden states;
* a ``DDPMScheduler`` holding the training noise schedule; the samplers (DDIM, DPM-Solver++) are made from its config;
* for ``source="pretrained"`` only, a frozen ``AutoencoderKL``: the UNet then works on VAE latents.

Two sources, one interface:

* ``scratch`` (offline default): pixel space (1 channel, images scaled to [-1, 1]), a small CLIP text transformer
  over an offline word-level tokenizer (or, when ``cfg.text_encoder`` names a folder, a pretrained transformers
  encoder + tokenizer from there), both trained jointly. Padding tokens are masked in the text encoder and in the
  UNet's cross-attention.
* ``pretrained``: a Stable-Diffusion-family pipeline folder (as ``StableDiffusionPipeline.save_pretrained`` writes
  it: ``vae/ unet/ text_encoder/ tokenizer/ scheduler/``) fine-tuned in latent space. X-rays are repeated to 3
  channels for the VAE; decoded images are averaged back to 1 channel. SD conventions are kept: prompts padded to the
  tokenizer's ``model_max_length``, no padding mask.

Generation: :meth:`TextToXray.sample` draws images from noise; :meth:`TextToXray.edit` noises real images part of the
way and denoises them towards a prompt (SDEdit), optionally only inside a soft mask (:mod:`trcgl.diffusion.regions`).
Both make ``cfg.image_size`` images, which the generation jobs require to be ``data.image_size``.

Training: :meth:`TextToXray.training_loss` (epsilon MSE, classifier-free-guidance dropout to :data:`EMPTY_PROMPT`),
then :meth:`TextToXray.update_ema` after each optimiser step. The EMA shadow weights are buffers of the module (so
``state_dict`` carries them and ``parameters()`` does not): build the optimiser from
:meth:`TextToXray.trainable_parameters`.

Checkpoint layout (:meth:`TextToXray.save_pretrained`)::

    unet/               EMA weights (what sampling with use_ema=True uses)
    text_encoder/       EMA weights when the encoder is trained, else its (frozen) weights
    unet_raw/, text_encoder_raw/   raw weights (save_raw=True): training resumes from these exactly
    tokenizer/ scheduler/ (vae/ for the pretrained source)
    trcgl_diffusion.json    {"config": DiffusionConfig as a dict, "vocabulary": [...], "ema_updates": n, ...}; last
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    UNet2DConditionModel,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from trcgl.config import DiffusionConfig, StorageConfig, from_dict
from trcgl.diffusion.prompts import EMPTY_PROMPT
from trcgl.diffusion.text import (
    build_text_encoder,
    build_tokenizer,
    hidden_size,
    load_text_components,
    local_folder,
)
from trcgl.storage import filesystem_for

log = logging.getLogger(__name__)

CONFIG_FILE = "trcgl_diffusion.json"
FORMAT_VERSION = 1
SOURCES = ("scratch", "pretrained")
SAMPLERS = ("ddim", "dpmsolver++")
EMA_WARMUP = True  # code default until DiffusionConfig has an ``ema_warmup`` field (read from cfg when it does)


# ---------------------------------------------------------------------------------------------------- components


def build_unet(cfg: DiffusionConfig, cross_attention_dim: int, encoder_hid_dim: int | None = None) -> nn.Module:
    """A pixel-space UNet (1 channel in / out) conditioned by cross-attention on text hidden states.

    The first ``cfg.plain_levels`` levels (full resolution first) have plain ResNet blocks (self-attention over S²
    positions costs S⁴: the CPU's bottleneck at full resolution); every lower level and the mid block cross-attend
    to the text. ``cfg.attention_head_dim`` is the width of one head
    (diffusers' own ``attention_head_dim`` argument counts heads; we convert).

    Args:
        cfg: ``image_size``, ``unet_channels``, ``plain_levels``, ``layers_per_block``, ``attention_head_dim``.
        cross_attention_dim: width the cross-attention keys / values are projected from.
        encoder_hid_dim: the text encoder's width when it differs from ``cross_attention_dim`` (a linear projection
            inside the UNet maps it); None when equal.

    Returns:
        ``UNet2DConditionModel``: (B, 1, S, S), (B,), (B, L, D) → sample (B, 1, S, S).
    """
    channels = tuple(cfg.unet_channels)
    levels = len(channels)
    if cfg.image_size % 2 ** (levels - 1):
        raise ValueError(f"diffusion.image_size {cfg.image_size} must be divisible by 2**{levels - 1} (unet_channels)")
    plain = min(cfg.plain_levels, levels - 1)  # at least one level cross-attends (one level: that one)
    down = ["DownBlock2D"] * plain + ["CrossAttnDownBlock2D"] * (levels - plain)
    up = ["CrossAttnUpBlock2D"] * (levels - plain) + ["UpBlock2D"] * plain
    heads = tuple(max(1, c // cfg.attention_head_dim) for c in channels)
    return UNet2DConditionModel(
        sample_size=cfg.image_size,
        in_channels=1,
        out_channels=1,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        block_out_channels=channels,
        layers_per_block=cfg.layers_per_block,
        norm_num_groups=math.gcd(32, *channels),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=heads,  # diffusers reads this as the number of heads per block
        encoder_hid_dim=encoder_hid_dim,
        encoder_hid_dim_type="text_proj" if encoder_hid_dim is not None else None,
    )


def build_noise_scheduler(cfg: DiffusionConfig) -> DDPMScheduler:
    """The DDPM training schedule for pixel space: linear betas, epsilon prediction, x0 clipped to [-1, 1]."""
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule="linear",
        prediction_type="epsilon",
        clip_sample=True,
    )


def make_sampler(noise_scheduler: SchedulerMixin, name: str) -> SchedulerMixin:
    """A fresh sampler sharing the training schedule's configuration.

    Args:
        noise_scheduler: the training scheduler (its config: betas, prediction type, spacing, clipping).
        name: ``"ddim"`` (deterministic, eta 0) or ``"dpmsolver++"`` (multistep, deterministic).
    """
    if name == "ddim":
        return DDIMScheduler.from_config(noise_scheduler.config)
    if name == "dpmsolver++":
        return DPMSolverMultistepScheduler.from_config(noise_scheduler.config, algorithm_type="dpmsolver++")
    raise ValueError(f"unknown diffusion.sampler {name!r}; known: {list(SAMPLERS)}")


class EmaWeights(nn.Module):
    """Exponential-moving-average shadows of named parameters, held as buffers (moved and saved with the model)."""

    def __init__(self, params: dict[str, Tensor]) -> None:
        super().__init__()
        self.names = list(params)
        for name, tensor in params.items():
            self.register_buffer(self._key(name), tensor.detach().clone())
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "__")

    def shadows(self) -> dict[str, Tensor]:
        """Parameter name → its shadow tensor."""
        return {name: getattr(self, self._key(name)) for name in self.names}


def _cpu_float(array: np.ndarray | Tensor) -> Tensor:
    """An array or tensor as a float32 CPU tensor."""
    if isinstance(array, Tensor):
        return array.detach().to("cpu", torch.float32)
    return torch.as_tensor(np.asarray(array, dtype=np.float32))


def _tensor_bytes(tensor: Tensor) -> bytes:
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


# ---------------------------------------------------------------------------------------------------- the model


class TextToXray(nn.Module):
    """Text-guided conditional diffusion for chest X-rays (module docstring: sources, training, layout).

    Build with :meth:`build` or :meth:`from_pretrained`; the constructor only composes ready components.
    """

    def __init__(
        self,
        cfg: DiffusionConfig,
        vocabulary: Sequence[str],
        unet: nn.Module,
        text_encoder: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        noise_scheduler: SchedulerMixin,
        vae: AutoencoderKL | None = None,
    ) -> None:
        super().__init__()
        if cfg.source not in SOURCES:
            raise ValueError(f"unknown diffusion.source {cfg.source!r}; known: {list(SOURCES)}")
        if cfg.source == "pretrained" and vae is None:
            raise ValueError("diffusion.source 'pretrained' needs a VAE")
        if not 0.0 <= cfg.cond_dropout <= 1.0:
            raise ValueError(f"diffusion.cond_dropout must be in [0, 1], got {cfg.cond_dropout}")
        make_sampler(noise_scheduler, cfg.sampler)  # fail early on an unknown sampler
        self.cfg = cfg
        self.vocabulary = list(vocabulary)
        self.unet = unet
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.noise_scheduler = noise_scheduler
        self.vae = vae
        self.latent = vae is not None
        self.mask_padding = cfg.source == "scratch"
        limit = getattr(tokenizer, "model_max_length", None) or 0
        self.max_tokens = limit if cfg.source == "pretrained" and 0 < limit <= 4096 else cfg.max_prompt_tokens
        self.ema_warmup = bool(getattr(cfg, "ema_warmup", EMA_WARMUP))
        if vae is not None:
            vae.requires_grad_(False)
            vae.eval()
        if cfg.freeze_text_encoder:
            text_encoder.requires_grad_(False)
        self.ema = EmaWeights({n: p for n, p in self.named_parameters() if p.requires_grad})
        self._generator = torch.Generator().manual_seed(cfg.seed)  # training noise when no generator is passed

    # ------------------------------------------------------------------------------------------------ construction

    @classmethod
    def build(cls, cfg: DiffusionConfig, vocabulary: Sequence[str], storage: StorageConfig | None = None) -> TextToXray:
        """A new model from the config; random initialisation is seeded by ``cfg.seed`` (global RNG untouched).

        Args:
            cfg: the diffusion section.
            vocabulary: tokenizer words (:func:`~trcgl.diffusion.prompts.prompt_vocabulary`); used by the offline
                tokenizer of the scratch source, kept in the checkpoint for the others.
            storage: endpoint settings when ``cfg.pretrained`` / ``cfg.text_encoder`` is an s3:// URI.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            if cfg.source == "pretrained":
                return cls._build_pretrained(cfg, vocabulary, storage)
            if cfg.source != "scratch":
                raise ValueError(f"unknown diffusion.source {cfg.source!r}; known: {list(SOURCES)}")
            if cfg.text_encoder:
                with local_folder(cfg.text_encoder, storage) as path:
                    text_encoder, tokenizer = load_text_components(path)
                cross_dim, hid_dim = hidden_size(text_encoder), None
            else:
                tokenizer = build_tokenizer(vocabulary, cfg.max_prompt_tokens)
                text_encoder = build_text_encoder(cfg, tokenizer)
                cross_dim = cfg.cross_attention_dim
                hid_dim = cfg.text_hidden if cfg.text_hidden != cfg.cross_attention_dim else None
            unet = build_unet(cfg, cross_dim, hid_dim)
            model = cls(cfg, vocabulary, unet, text_encoder, tokenizer, build_noise_scheduler(cfg))
        log.info("built scratch diffusion model: %s", model.describe())
        return model

    @classmethod
    def _build_pretrained(
        cls, cfg: DiffusionConfig, vocabulary: Sequence[str], storage: StorageConfig | None
    ) -> TextToXray:
        if not cfg.pretrained:
            raise ValueError("diffusion.source 'pretrained' needs diffusion.pretrained (a pipeline folder or s3://)")
        with local_folder(cfg.pretrained, storage) as path:
            vae = AutoencoderKL.from_pretrained(path, subfolder="vae", local_files_only=True)
            unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", local_files_only=True)
            text_encoder, tokenizer = load_text_components(path, "text_encoder")
            noise_scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler", local_files_only=True)
        model = cls(cfg, vocabulary, unet, text_encoder, tokenizer, noise_scheduler, vae)
        if cfg.image_size % model.vae_scale_factor:
            raise ValueError(f"diffusion.image_size {cfg.image_size} must be divisible by {model.vae_scale_factor}")
        log.info("loaded pretrained pipeline %s: %s", cfg.pretrained, model.describe())
        return model

    @classmethod
    def from_pretrained(cls, folder: str, storage: StorageConfig | None = None) -> TextToXray:
        """Loads a checkpoint written by :meth:`save_pretrained` (local folder, or s3:// copied to a temp dir).

        Raw weights come from ``unet_raw/`` / ``text_encoder_raw/`` when present (else the EMA ones); the EMA
        shadows from ``unet/`` / ``text_encoder/``. Returned in eval mode.
        """
        with local_folder(folder, storage) as path, torch.random.fork_rng(devices=[]):
            with open(os.path.join(path, CONFIG_FILE)) as fh:
                meta = json.load(fh)
            cfg = from_dict({"diffusion": meta["config"]}, f"file {folder}/{CONFIG_FILE}").diffusion
            has_raw = os.path.isdir(os.path.join(path, "unet_raw"))
            unet = UNet2DConditionModel.from_pretrained(
                path, subfolder="unet_raw" if has_raw else "unet", local_files_only=True
            )
            text_raw = os.path.isdir(os.path.join(path, "text_encoder_raw"))
            text_encoder, tokenizer = load_text_components(path, "text_encoder_raw" if text_raw else "text_encoder")
            noise_scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler", local_files_only=True)
            vae = None
            if os.path.isdir(os.path.join(path, "vae")):
                vae = AutoencoderKL.from_pretrained(path, subfolder="vae", local_files_only=True)
            model = cls(cfg, meta["vocabulary"], unet, text_encoder, tokenizer, noise_scheduler, vae)
            ema_sources = {"unet": "unet" if has_raw else None, "text_encoder": "text_encoder" if text_raw else None}
            model._load_ema(path, ema_sources)
            model.ema.updates.fill_(int(meta.get("ema_updates", 0)))
        log.info("loaded diffusion checkpoint %s (%s)", folder, model.describe())
        return model.eval()

    def _load_ema(self, path: str, sources: dict[str, str | None]) -> None:
        """Fills the EMA shadows from the EMA subfolders (only where raw weights were loaded instead)."""
        shadows = self.ema.shadows()
        for part, subfolder in sources.items():
            if subfolder is None:
                continue
            if part == "unet":
                state = UNet2DConditionModel.from_pretrained(path, subfolder=subfolder, local_files_only=True)
            else:
                state, _ = load_text_components(path, subfolder)
            with torch.no_grad():
                for name, tensor in state.state_dict().items():
                    key = f"{part}.{name}"
                    if key in shadows:
                        shadows[key].copy_(tensor)

    # ------------------------------------------------------------------------------------------------ properties

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent pixel (1 in pixel space)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimiser updates: the UNet, and the text encoder unless frozen (never the VAE)."""
        return [p for p in self.parameters() if p.requires_grad]

    def describe(self) -> str:
        n_unet = sum(p.numel() for p in self.unet.parameters())
        n_text = sum(p.numel() for p in self.text_encoder.parameters())
        frozen = " (frozen)" if self.cfg.freeze_text_encoder else ""
        return (
            f"source={self.cfg.source} size={self.cfg.image_size} unet={n_unet / 1e6:.2f}M "
            f"text={type(self.text_encoder).__name__} {n_text / 1e6:.2f}M{frozen} tokens={self.max_tokens}"
        )

    def train(self, mode: bool = True) -> TextToXray:
        """As ``nn.Module.train``; the frozen VAE always stays in eval mode."""
        super().train(mode)
        if self.vae is not None:
            self.vae.eval()
        return self

    # ------------------------------------------------------------------------------------------------ text

    def _drop_conditions(self, prompts: Sequence[str], generator: torch.Generator) -> list[str]:
        """Classifier-free-guidance dropout: each prompt becomes :data:`EMPTY_PROMPT` with prob ``cond_dropout``."""
        drop = torch.rand(len(prompts), generator=generator, device=generator.device) < self.cfg.cond_dropout
        return [EMPTY_PROMPT if d else p for p, d in zip(prompts, drop.tolist(), strict=True)]

    def _encode_text(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor | None]:
        """Prompts → text hidden states (B, L, D) and the padding mask (B, L) (None where not masked).

        Gradients flow into the text encoder (when grad is enabled and the encoder is not frozen).
        """
        tokens = self.tokenizer(
            list(prompts), padding="max_length", max_length=self.max_tokens, truncation=True, return_tensors="pt"
        )
        ids = tokens["input_ids"].to(self.device)  # (B, L)
        mask = tokens["attention_mask"].to(self.device) if self.mask_padding else None  # (B, L)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.cfg.freeze_text_encoder):
            hidden = self.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, D)
        return hidden, mask

    # ------------------------------------------------------------------------------------------------ images

    def _prepare_images(self, images: Tensor) -> Tensor:
        """(B, 1, S', S') or (B, S', S') in [0, 1] → (B, 1, S, S) at the diffusion resolution."""
        if images.ndim == 3:
            images = images[:, None]  # (B, 1, S', S')
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"images must be (B, 1, S, S) in [0, 1], got shape {tuple(images.shape)}")
        size = self.cfg.image_size
        images = images.to(self.device, torch.float32)
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return images

    def _to_model_space(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """(B, 1, S, S) in [0, 1] → what the UNet denoises: pixels in [-1, 1] or scaled VAE latents (B, 4, s, s)."""
        x = images * 2.0 - 1.0
        if not self.latent:
            return x
        with torch.no_grad():
            posterior = self.vae.encode(x.repeat(1, 3, 1, 1)).latent_dist  # (B, 3, S, S) in
            latents = posterior.sample(generator=generator)  # (B, 4, s, s)
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return (latents - shift) * self.vae.config.scaling_factor

    def _to_images(self, x: Tensor) -> Tensor:
        """Model space → (B, S, S) in [0, 1]."""
        if self.latent:
            shift = getattr(self.vae.config, "shift_factor", None) or 0.0
            x = self.vae.decode(x / self.vae.config.scaling_factor + shift).sample  # (B, 3, S, S)
            x = x.mean(dim=1, keepdim=True)  # (B, 1, S, S)
        return ((x[:, 0] + 1.0) / 2.0).clamp(0.0, 1.0)  # (B, S, S)

    # ------------------------------------------------------------------------------------------------ training

    def training_loss(
        self,
        images: Tensor,
        prompts: Sequence[str],
        generator: torch.Generator | None = None,
        weights: Tensor | None = None,
    ) -> Tensor:
        """Denoising loss of one batch (epsilon MSE, or v MSE for a v-prediction pretrained UNet).

        Args:
            images: (B, 1, S, S) float in [0, 1]; resized to ``cfg.image_size`` when S differs.
            prompts: B prompts; each is replaced by :data:`EMPTY_PROMPT` with probability ``cfg.cond_dropout``.
            generator: source of the dropout draws, timesteps and noise; None: the model's own generator, seeded
                by ``cfg.seed`` at construction (not checkpointed: pass one for resumable determinism).
            weights: optional (B,) per-sample loss weights (e.g. ``cfg.group_weights`` of each row's group).

        Returns:
            Scalar loss; backpropagates into the UNet and (unless frozen) the text encoder, never the VAE.
        """
        if len(prompts) != images.shape[0]:
            raise ValueError(f"{len(prompts)} prompts for {images.shape[0]} images")
        gen = generator if generator is not None else self._generator
        x0 = self._to_model_space(self._prepare_images(images), gen)  # (B, C, s, s)
        noise = torch.randn(x0.shape, generator=gen, device=gen.device).to(x0.device)  # (B, C, s, s)
        steps = self.noise_scheduler.config.num_train_timesteps
        t = torch.randint(0, steps, (x0.shape[0],), generator=gen, device=gen.device).to(x0.device)  # (B,)
        noisy = self.noise_scheduler.add_noise(x0, noise, t)
        hidden, mask = self._encode_text(self._drop_conditions(prompts, gen))
        pred = self.unet(noisy, t, encoder_hidden_states=hidden, encoder_attention_mask=mask).sample
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(x0, noise, t)
        else:
            target = noise
        per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))  # (B,)
        if weights is None:
            return per_sample.mean()
        weights = weights.to(per_sample)
        return (per_sample * weights).sum() / weights.sum().clamp_min(1e-12)

    @torch.no_grad()
    def update_ema(self) -> None:
        """shadow ← d·shadow + (1 − d)·weight for every trainable weight, d = ``cfg.ema_decay``.

        With warm-up (code default, :data:`EMA_WARMUP`), d = min(ema_decay, (1 + n) / (10 + n)) after n updates, so
        a short run's EMA is not dominated by the random initialisation.
        """
        n = int(self.ema.updates)
        decay = self.cfg.ema_decay
        if self.ema_warmup:
            decay = min(decay, (1 + n) / (10 + n))
        params = dict(self.named_parameters())
        for name, shadow in self.ema.shadows().items():
            shadow.lerp_(params[name].detach().to(shadow.dtype), 1.0 - decay)
        self.ema.updates += 1

    @contextmanager
    def ema_applied(self) -> Iterator[None]:
        """Temporarily puts the EMA shadows into the trainable weights (restored on exit, even on error)."""
        params = dict(self.named_parameters())
        shadows = self.ema.shadows()
        backup = {name: params[name].detach().clone() for name in shadows}
        with torch.no_grad():
            for name, shadow in shadows.items():
                params[name].copy_(shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                for name, saved in backup.items():
                    params[name].copy_(saved)

    # ------------------------------------------------------------------------------------------------ sampling

    def _initial_noise(self, seeds: Sequence[int]) -> Tensor:
        """(B, C, s, s): image i's noise from its own CPU generator seeded with seeds[i] (device independent)."""
        size = self.cfg.image_size // self.vae_scale_factor
        shape = (1, self.unet.config.in_channels, size, size)
        draws = [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        return torch.cat(draws).to(self.device)  # (B, C, s, s)

    @torch.no_grad()
    def sample(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        steps: int | None = None,
        guidance_scale: float | None = None,
        use_ema: bool = True,
    ) -> np.ndarray:
        """Generates one image per prompt.

        The samplers are deterministic (DDIM with eta 0, DPM-Solver++ multistep), so an image's noise and path depend
        only on its prompt, its seed and the weights. The batch it is in changes only floating-point rounding (batched
        matrix products round differently with the batch size): about one step of the stored 16 bits on the CPU.

        Args:
            prompts: B prompts.
            seeds: B seeds; image i starts from noise drawn by ``torch.Generator().manual_seed(seeds[i])``.
            steps: sampler steps; None: ``cfg.sample_steps``.
            guidance_scale: classifier-free guidance g (uncond + g·(cond − uncond)); None: ``cfg.guidance_scale``;
                1 skips the unconditional pass.
            use_ema: sample with the EMA weights (else the raw ones).

        Returns:
            (B, S, S) float32 in [0, 1].
        """
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        if not prompts:
            size = self.cfg.image_size
            return np.zeros((0, size, size), dtype=np.float32)
        steps = steps or self.cfg.sample_steps
        scale = self.cfg.guidance_scale if guidance_scale is None else float(guidance_scale)
        with self._inference(use_ema):
            images = self._denoise(list(prompts), seeds, steps, scale)
        return images.float().cpu().numpy().astype(np.float32)

    @contextmanager
    def _inference(self, use_ema: bool) -> Iterator[None]:
        """Eval mode (and the EMA weights when ``use_ema``) for the block; the previous mode after it."""
        was_training = self.training
        self.eval()
        try:
            with self.ema_applied() if use_ema else nullcontext():
                yield
        finally:
            self.train(was_training)

    def _denoise(self, prompts: list[str], seeds: Sequence[int], steps: int, scale: float) -> Tensor:
        """The sampling loop; returns (B, S, S) in [0, 1]."""
        sampler = make_sampler(self.noise_scheduler, self.cfg.sampler)
        sampler.set_timesteps(steps, device=self.device)
        x = self._initial_noise(seeds) * sampler.init_noise_sigma  # (B, C, s, s)
        text = self._guidance_text(prompts, scale)
        for t in sampler.timesteps:
            x = self._guided_step(sampler, x, t, text, scale)
        return self._to_images(x)

    def _guidance_text(self, prompts: list[str], scale: float) -> tuple[Tensor, Tensor | None]:
        """Text states for :meth:`_guided_step`: the empty prompt's then the prompts' when guided (``scale != 1``)."""
        return self._encode_text([EMPTY_PROMPT] * len(prompts) + prompts if scale != 1.0 else prompts)

    def _guided_step(
        self, sampler: SchedulerMixin, x: Tensor, t: Tensor, text: tuple[Tensor, Tensor | None], scale: float
    ) -> Tensor:
        """One sampler step with classifier-free guidance: (B, C, s, s) at ``t`` → (B, C, s, s) at the next step."""
        guided = scale != 1.0
        hidden, mask = text
        inp = torch.cat([x, x]) if guided else x  # (2B or B, C, s, s)
        inp = sampler.scale_model_input(inp, t)
        eps = self.unet(inp, t, encoder_hidden_states=hidden, encoder_attention_mask=mask).sample
        if guided:
            eps_uncond, eps_cond = eps.chunk(2)  # (B, C, s, s) each
            eps = eps_uncond + scale * (eps_cond - eps_uncond)
        return sampler.step(eps, t, x).prev_sample

    @torch.no_grad()
    def edit(
        self,
        images: np.ndarray | Tensor,
        prompts: Sequence[str],
        seeds: Sequence[int],
        strength: float,
        masks: np.ndarray | Tensor | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        use_ema: bool = True,
    ) -> np.ndarray:
        """Edits real images towards their prompts (SDEdit, https://arxiv.org/abs/2108.01073), optionally in a region.

        Each image is mapped to model space (pixels in [-1, 1], or the VAE posterior's mean: no draw, so the start is
        deterministic), noised to the sampler timestep that ``strength`` reaches with noise drawn as :meth:`sample`
        draws it for the same seed, and denoised from there by the same sampler with classifier-free guidance. With
        masks, after every step the model state outside the mask is replaced by the original noised to the current
        timestep (RePaint-style blending, https://arxiv.org/abs/2201.09865; at the latent resolution for a latent
        model), and the result is composited in pixel space, ``m * edited + (1 - m) * image``: where ``m == 0`` the
        output is the input, bit for bit. Deterministic for fixed seeds; the batch changes only float rounding, as
        for :meth:`sample`.

        Args:
            images: (B, S, S) float in [0, 1], S = ``cfg.image_size``.
            prompts: B prompts (:data:`EMPTY_PROMPT` gives the generator's own path without a condition).
            seeds: B seeds; image i's noise is ``torch.randn`` from ``torch.Generator().manual_seed(seeds[i])``.
            strength: in (0, 1]: the share of the ``steps`` timesteps run (at least one); 1 starts from the schedule's
                noisiest timestep.
            masks: (B, S, S) in [0, 1] (1: may change), or None to edit the whole image.
            steps: sampler steps of the full schedule; None: ``cfg.sample_steps``.
            guidance_scale: as for :meth:`sample`.
            use_ema: edit with the EMA weights (else the raw ones).

        Returns:
            (B, S, S) float32 in [0, 1].

        Raises:
            ValueError: on mismatched lengths or shapes, or a strength outside (0, 1].
        """
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        size = self.cfg.image_size
        if not prompts:
            return np.zeros((0, size, size), dtype=np.float32)
        originals = _cpu_float(images)  # (B, S, S)
        if originals.shape != (len(prompts), size, size):
            raise ValueError(f"images must be ({len(prompts)}, {size}, {size}), got {tuple(originals.shape)}")
        weights = None
        if masks is not None:
            weights = _cpu_float(masks).clamp(0.0, 1.0)  # (B, S, S)
            if weights.shape != originals.shape:
                raise ValueError(f"masks must match images {tuple(originals.shape)}, got {tuple(weights.shape)}")
        steps = steps or self.cfg.sample_steps
        scale = self.cfg.guidance_scale if guidance_scale is None else float(guidance_scale)
        with self._inference(use_ema):
            edited = self._denoise_from(originals, list(prompts), seeds, strength, weights, steps, scale)
        edited = edited.float().cpu()  # (B, S, S)
        if weights is not None:
            edited = weights * edited + (1.0 - weights) * originals  # exact input where the mask is 0
        return edited.numpy().astype(np.float32)

    def _denoise_from(
        self,
        originals: Tensor,
        prompts: list[str],
        seeds: Sequence[int],
        strength: float,
        masks: Tensor | None,
        steps: int,
        scale: float,
    ) -> Tensor:
        """The editing loop (:meth:`edit`); originals and masks (B, S, S) on the CPU; returns (B, S, S) in [0, 1]."""
        sampler = make_sampler(self.noise_scheduler, self.cfg.sampler)
        sampler.set_timesteps(steps, device=self.device)
        start = steps - min(steps, max(1, int(round(strength * steps))))
        timesteps = sampler.timesteps[start * sampler.order :]
        if hasattr(sampler, "set_begin_index"):
            sampler.set_begin_index(start * sampler.order)  # multistep samplers count steps from here
        x0 = self._encode_mean(originals[:, None].to(self.device))  # (B, C, s, s)
        noise = self._initial_noise(seeds).to(x0.dtype)  # (B, C, s, s)
        x = self.noise_scheduler.add_noise(x0, noise, timesteps[:1].repeat(len(prompts)))  # (B, C, s, s)
        keep = None
        if masks is not None:
            keep = F.interpolate(masks[:, None].to(self.device), size=x0.shape[-2:], mode="area")  # (B, 1, s, s)
        text = self._guidance_text(prompts, scale)
        for i, t in enumerate(timesteps):
            x = self._guided_step(sampler, x, t, text, scale)
            if keep is not None:  # outside the mask: the original at the noise level x now has
                if i + 1 < len(timesteps):
                    known = self.noise_scheduler.add_noise(x0, noise, timesteps[i + 1 : i + 2].repeat(len(prompts)))
                else:
                    known = x0
                x = keep * x + (1.0 - keep) * known
        return self._to_images(x)

    def _encode_mean(self, images: Tensor) -> Tensor:
        """(B, 1, S, S) in [0, 1] → model space like :meth:`_to_model_space`, with the VAE posterior's mean."""
        x = images * 2.0 - 1.0
        if not self.latent:
            return x
        latents = self.vae.encode(x.repeat(1, 3, 1, 1)).latent_dist.mean  # (B, 4, s, s)
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return (latents - shift) * self.vae.config.scaling_factor

    # ------------------------------------------------------------------------------------------------ checkpoints

    def _metadata(self) -> dict:
        return {"config": dataclasses.asdict(self.cfg), "vocabulary": self.vocabulary}

    def save_pretrained(self, folder: str, save_raw: bool = True, storage: StorageConfig | None = None) -> None:
        """Writes the checkpoint (layout in the module docstring); ``trcgl_diffusion.json`` is written last.

        Args:
            folder: local folder, or s3:// (written to a temp dir, then copied up).
            save_raw: also write the raw weights (``unet_raw/``, ``text_encoder_raw/``) so training can resume.
            storage: endpoint settings for s3://.
        """
        if "://" in folder and not folder.startswith("file://"):
            import pyarrow.fs as pafs

            tmp = tempfile.mkdtemp(prefix="trcgl-diffusion-")
            try:
                self.save_pretrained(tmp, save_raw=save_raw)
                fs, path = filesystem_for(folder, storage or StorageConfig())
                pafs.copy_files(tmp, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            return
        folder = folder.removeprefix("file://")
        os.makedirs(folder, exist_ok=True)
        text_trained = not self.cfg.freeze_text_encoder
        checkpoint = self.checkpoint_id()
        with self.ema_applied():
            self.unet.save_pretrained(os.path.join(folder, "unet"))
            self.text_encoder.save_pretrained(os.path.join(folder, "text_encoder"))
        if save_raw:
            self.unet.save_pretrained(os.path.join(folder, "unet_raw"))
            if text_trained:
                self.text_encoder.save_pretrained(os.path.join(folder, "text_encoder_raw"))
        self.tokenizer.save_pretrained(os.path.join(folder, "tokenizer"))
        self.noise_scheduler.save_pretrained(os.path.join(folder, "scheduler"))
        if self.vae is not None:
            self.vae.save_pretrained(os.path.join(folder, "vae"))
        meta = {
            "format_version": FORMAT_VERSION,
            **self._metadata(),
            "ema_updates": int(self.ema.updates),
            "checkpoint_id": checkpoint,
        }
        tmp_json = os.path.join(folder, f".{CONFIG_FILE}.tmp")
        with open(tmp_json, "w") as fh:
            json.dump(meta, fh, indent=2)
        os.replace(tmp_json, os.path.join(folder, CONFIG_FILE))
        log.info("saved diffusion checkpoint %s to %s", checkpoint, folder)

    def checkpoint_id(self) -> str:
        """A short stable hash (12 hex digits) of the config, the vocabulary and the weights :meth:`save_pretrained`
        writes as the model (EMA shadows for the trained weights, the rest as they are): the same before a save and
        after :meth:`from_pretrained`, and it changes with every EMA update."""
        shadows = self.ema.shadows()
        digest = hashlib.sha256(json.dumps(self._metadata(), sort_keys=True).encode())
        for part in ("unet", "text_encoder", "vae"):
            module = getattr(self, part)
            if module is None:
                continue
            for name, tensor in sorted(module.state_dict().items()):
                tensor = shadows.get(f"{part}.{name}", tensor)
                digest.update(f"{part}.{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
                digest.update(_tensor_bytes(tensor))
        return digest.hexdigest()[:12]
