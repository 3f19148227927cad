"""The text-guided diffusion module with real tiny components (diffusers UNet, transformers text encoder, VAE).

Everything is built offline in the test: the word-level tokenizer from the prompt vocabulary, and for the pretrained
source a tiny random Stable-Diffusion pipeline saved with ``StableDiffusionPipeline.save_pretrained``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

import numpy as np
import pytest
import torch

from trcgl.config import DiffusionConfig, StorageConfig
from trcgl.data.labelsets import load_file
from trcgl.data.padchest import clean_metadata, read_metadata
from trcgl.diffusion import EMPTY_PROMPT, TextToXray, build_prompt, prompt_vocabulary
from trcgl.diffusion.prompts import split_words
from trcgl.diffusion.text import build_text_encoder, build_tokenizer

CLASSES = ("pleural effusion", "cardiomegaly", "nodule")
LOCS = ("loc left", "loc basal", "loc right")
VOCAB = prompt_vocabulary(CLASSES, LOCS)
P1 = build_prompt(["pleural effusion"], ["loc left"], "PA")
P2 = build_prompt(["cardiomegaly", "nodule"], [], "AP")


def tiny_cfg(**changes: object) -> DiffusionConfig:
    base = DiffusionConfig(
        image_size=16,
        unet_channels=[8, 16],
        layers_per_block=1,
        cross_attention_dim=16,
        attention_head_dim=8,
        text_hidden=16,
        text_layers=1,
        text_heads=2,
        max_prompt_tokens=24,
        sample_steps=2,
        guidance_scale=2.0,
    )
    return dataclasses.replace(base, **changes)


def images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def train_step(model: TextToXray, seed: int = 0) -> None:
    """One real optimiser step plus an EMA update, so raw and EMA weights differ."""
    opt = torch.optim.SGD(model.trainable_parameters(), lr=0.1)
    loss = model.training_loss(images(2), [P1, P2], torch.Generator().manual_seed(seed))
    loss.backward()
    opt.step()
    opt.zero_grad()
    model.update_ema()


# ---------------------------------------------------------------------------------------------------- prompts


def test_prompt_template():
    assert (
        build_prompt(["Pleural Effusion", "cardiomegaly"], ["loc left", " Loc  Basal"], "PA")
        == "chest x-ray, PA view: pleural effusion; cardiomegaly; loc left, loc basal"
    )
    assert build_prompt([], ["loc left"], "PA") == "chest x-ray, PA view: no finding"
    assert build_prompt(["nodule"], [], "AP_horizontal") == "chest x-ray, AP horizontal view: nodule"
    assert EMPTY_PROMPT == ""


def test_prompts_on_real_padchest_rows():
    raw = read_metadata()
    kept, _ = clean_metadata(raw.head(400), ["PA", "AP", "AP_horizontal"])
    labelset = load_file("cxr-lt-30")
    rows = list(kept.itertuples())
    assert len(rows) > 100
    vocab = set(prompt_vocabulary(labelset.classes, sorted({loc for r in rows for loc in r.localizations})))
    template = re.compile(r"^chest x-ray, (PA|AP|AP horizontal) view: (no finding|[a-z ;,]+)$")
    for r in rows:
        classes = labelset.classes_of(r.raw_labels)
        prompt = build_prompt(classes, r.localizations, r.projection)
        assert template.match(prompt), prompt
        body = prompt.split(" view: ", 1)[1]
        if classes:
            assert body.split("; ")[: len(classes)] == list(classes)
            if r.localizations:
                assert body.split("; ")[-1].split(", ")[0] == r.localizations[0]
        else:
            assert body == "no finding"
        assert set(split_words(prompt)) <= vocab, prompt
    # the tokenizer built from that vocabulary knows every word of every prompt
    tokenizer = build_tokenizer(sorted(vocab), 512)
    prompt = build_prompt(labelset.classes_of(rows[5].raw_labels), rows[5].localizations, rows[5].projection)
    ids = tokenizer(prompt)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert len(ids) == len(split_words(prompt)) + 2


# ---------------------------------------------------------------------------------------------------- training


def test_training_step_backpropagates_into_unet_and_text_encoder():
    model = TextToXray.build(tiny_cfg(text_hidden=12), VOCAB)  # 12 → 16: projection inside the UNet
    model.train()
    loss = model.training_loss(images(3, size=24), [P1, P2, P1], torch.Generator().manual_seed(0))  # resized
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.unet.conv_in.weight.grad.abs().sum() > 0
    assert model.text_encoder.get_input_embeddings().weight.grad.abs().sum() > 0
    text_params = {id(p) for p in model.text_encoder.parameters()}
    assert any(id(p) in text_params for p in model.trainable_parameters())


def test_frozen_text_encoder_gets_no_gradient():
    model = TextToXray.build(tiny_cfg(freeze_text_encoder=True), VOCAB)
    model.training_loss(images(2), [P1, P2], torch.Generator().manual_seed(0)).backward()
    assert model.unet.conv_in.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.text_encoder.parameters())
    text_params = {id(p) for p in model.text_encoder.parameters()}
    assert not any(id(p) in text_params for p in model.trainable_parameters())


def test_training_loss_is_deterministic_for_a_generator_and_takes_weights():
    model = TextToXray.build(tiny_cfg(), VOCAB)
    a = model.training_loss(images(2), [P1, P2], torch.Generator().manual_seed(3))
    b = model.training_loss(images(2), [P1, P2], torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    w = model.training_loss(images(2), [P1, P2], torch.Generator().manual_seed(3), weights=torch.tensor([1.0, 1.0]))
    assert torch.allclose(a, w)


def test_cond_dropout_seam():
    prompts = [P1, P2] * 8
    gen = torch.Generator().manual_seed(0)
    assert TextToXray.build(tiny_cfg(cond_dropout=1.0), VOCAB)._drop_conditions(prompts, gen) == [EMPTY_PROMPT] * 16
    assert TextToXray.build(tiny_cfg(cond_dropout=0.0), VOCAB)._drop_conditions(prompts, gen) == prompts
    half = TextToXray.build(tiny_cfg(cond_dropout=0.5), VOCAB)
    dropped = half._drop_conditions(prompts, torch.Generator().manual_seed(1))
    assert dropped == half._drop_conditions(prompts, torch.Generator().manual_seed(1))
    assert 0 < dropped.count(EMPTY_PROMPT) < 16


def test_build_is_seeded_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a, b = TextToXray.build(tiny_cfg(), VOCAB), TextToXray.build(tiny_cfg(), VOCAB)
    assert torch.equal(torch.get_rng_state(), state)
    assert a.checkpoint_id() == b.checkpoint_id()
    assert a.checkpoint_id() != TextToXray.build(tiny_cfg(seed=1), VOCAB).checkpoint_id()


# ---------------------------------------------------------------------------------------------------- EMA


def test_ema_decay_zero_copies_and_decay_one_freezes():
    model = TextToXray.build(tiny_cfg(ema_decay=0.0), VOCAB)
    train_step(model)  # raw weights moved, then EMA with decay 0
    params = dict(model.named_parameters())
    assert all(torch.equal(shadow, params[name]) for name, shadow in model.ema.shadows().items())

    frozen = TextToXray.build(tiny_cfg(ema_decay=1.0), VOCAB)
    frozen.ema_warmup = False  # warm-up would lower the decay of the first updates
    before = {name: shadow.clone() for name, shadow in frozen.ema.shadows().items()}
    train_step(frozen)
    assert all(torch.equal(shadow, before[name]) for name, shadow in frozen.ema.shadows().items())
    assert not torch.equal(frozen.unet.conv_in.weight, before["unet.conv_in.weight"])
    assert int(frozen.ema.updates) == 1


def test_ema_is_kept_out_of_parameters_but_in_state_dict():
    model = TextToXray.build(tiny_cfg(), VOCAB)
    assert not any(name.startswith("ema.") for name, _ in model.named_parameters())
    assert any(key.startswith("ema.") for key in model.state_dict())


# ---------------------------------------------------------------------------------------------------- sampling


@pytest.fixture(scope="module")
def trained() -> TextToXray:
    model = TextToXray.build(tiny_cfg(ema_decay=0.5), VOCAB)
    train_step(model)
    return model


def test_sample_shape_range_determinism_and_seeds(trained):
    out = trained.sample([P1, P2], seeds=[1, 2])
    assert out.shape == (2, 16, 16) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0 and np.isfinite(out).all()
    assert np.array_equal(out, trained.sample([P1, P2], seeds=[1, 2]))
    assert not np.allclose(out[0], trained.sample([P1], seeds=[3])[0])


def test_sample_is_batch_invariant(trained):
    pair = trained.sample([P1, P2], seeds=[11, 12], steps=3)
    alone = trained.sample([P1], seeds=[11], steps=3)
    assert np.abs(pair[0] - alone[0]).max() < 1e-5


def test_sample_uses_ema_or_raw_weights(trained):
    ema = trained.sample([P1], seeds=[0])
    raw = trained.sample([P1], seeds=[0], use_ema=False)
    assert not np.array_equal(ema, raw)
    assert np.array_equal(ema, trained.sample([P1], seeds=[0]))  # raw weights restored after EMA sampling


@pytest.mark.parametrize("sampler", ["ddim", "dpmsolver++"])
def test_both_samplers_run(sampler):
    model = TextToXray.build(tiny_cfg(sampler=sampler), VOCAB)
    out = model.sample([P1, P2], seeds=[0, 1], steps=3, guidance_scale=1.0)
    assert out.shape == (2, 16, 16) and np.isfinite(out).all() and 0.0 <= out.min() <= out.max() <= 1.0


def test_unknown_sampler_and_source_are_named():
    with pytest.raises(ValueError, match="'euler'"):
        TextToXray.build(tiny_cfg(sampler="euler"), VOCAB)
    with pytest.raises(ValueError, match="'hub'"):
        TextToXray.build(tiny_cfg(source="hub"), VOCAB)


# ---------------------------------------------------------------------------------------------------- checkpoints


def test_save_and_load_give_identical_samples(trained, tmp_path):
    folder = tmp_path / "ckpt"
    trained.save_pretrained(str(folder))
    for sub in ("unet/config.json", "text_encoder/config.json", "tokenizer", "scheduler/scheduler_config.json"):
        assert (folder / sub).exists(), sub
    assert (folder / "unet_raw").is_dir() and not (folder / "vae").exists()
    meta = json.loads((folder / "trcgl_diffusion.json").read_text())
    assert meta["vocabulary"] == VOCAB and meta["config"]["unet_channels"] == [8, 16]
    assert meta["checkpoint_id"] == trained.checkpoint_id()

    loaded = TextToXray.from_pretrained(str(folder))
    assert loaded.checkpoint_id() == trained.checkpoint_id()
    assert int(loaded.ema.updates) == int(trained.ema.updates)
    for use_ema in (True, False):
        a = trained.sample([P1, P2], seeds=[5, 6], use_ema=use_ema)
        b = loaded.sample([P1, P2], seeds=[5, 6], use_ema=use_ema)
        assert np.array_equal(a, b), use_ema


def test_without_raw_weights_the_ema_weights_load_as_the_model(trained, tmp_path):
    trained.save_pretrained(str(tmp_path), save_raw=False)
    assert not (tmp_path / "unet_raw").exists()
    loaded = TextToXray.from_pretrained(str(tmp_path))
    assert np.array_equal(loaded.sample([P1], seeds=[5], use_ema=False), trained.sample([P1], seeds=[5]))


def test_pretrained_text_encoder_from_a_local_folder(tmp_path):
    tokenizer = build_tokenizer(VOCAB, 24)
    encoder = build_text_encoder(tiny_cfg(text_hidden=20), tokenizer)
    encoder.save_pretrained(str(tmp_path / "enc"))
    tokenizer.save_pretrained(str(tmp_path / "enc"))
    model = TextToXray.build(tiny_cfg(text_encoder=str(tmp_path / "enc")), VOCAB)
    assert model.unet.config.cross_attention_dim == 20  # follows the encoder
    model.training_loss(images(2), [P1, P2]).backward()
    assert model.text_encoder.get_input_embeddings().weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------- pretrained


def write_tiny_sd_pipeline(folder: str) -> None:
    """A tiny random Stable-Diffusion pipeline (VAE, UNet, CLIP text encoder, CLIP BPE tokenizer) on disk."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tok_dir = os.path.join(folder, "_tok")
    os.makedirs(tok_dir)
    chars = "abcdefghijklmnopqrstuvwxyz-,:;"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    with open(os.path.join(tok_dir, "vocab.json"), "w") as fh:
        json.dump(vocab, fh)
    with open(os.path.join(tok_dir, "merges.txt"), "w") as fh:
        fh.write("#version: 0.2\n")
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir, model_max_length=24)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(8, 16),
            latent_channels=4,
            norm_num_groups=8,
            sample_size=32,
        )
        unet = UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(8, 16),
            layers_per_block=1,
            norm_num_groups=8,
            cross_attention_dim=16,
            attention_head_dim=2,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(vocab),
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                max_position_embeddings=24,
                bos_token_id=0,
                eos_token_id=1,
                pad_token_id=1,
            )
        )
    scheduler = PNDMScheduler(beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)


def test_tiny_pretrained_pipeline_trains_in_latent_space_and_samples(tmp_path):
    write_tiny_sd_pipeline(str(tmp_path / "sd"))
    cfg = tiny_cfg(source="pretrained", pretrained=str(tmp_path / "sd"), image_size=32)
    model = TextToXray.build(cfg, VOCAB)
    model.train()
    assert model.vae is not None and model.vae_scale_factor == 2 and not model.vae.training
    loss = model.training_loss(images(2, size=32), [P1, P2], torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    loss.backward()
    assert model.unet.conv_in.weight.grad.abs().sum() > 0
    assert model.text_encoder.get_input_embeddings().weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in model.vae.parameters())
    out = model.sample([P1, P2], seeds=[0, 1], steps=2)
    assert out.shape == (2, 32, 32) and out.dtype == np.float32 and 0.0 <= out.min() <= out.max() <= 1.0

    model.save_pretrained(str(tmp_path / "ckpt"), save_raw=False)
    assert (tmp_path / "ckpt" / "vae" / "config.json").exists()
    loaded = TextToXray.from_pretrained(str(tmp_path / "ckpt"))
    assert np.array_equal(loaded.sample([P1], seeds=[0], steps=2), model.sample([P1], seeds=[0], steps=2))


@pytest.mark.slow
def test_checkpoint_round_trip_through_s3(trained, s3_endpoint, s3_bucket):
    storage = StorageConfig(endpoint_url=s3_endpoint)
    uri = f"s3://{s3_bucket}/runs/r/diffusion/ckpt"
    trained.save_pretrained(uri, storage=storage)
    loaded = TextToXray.from_pretrained(uri, storage=storage)
    assert loaded.checkpoint_id() == trained.checkpoint_id()
    assert np.array_equal(loaded.sample([P1], seeds=[2]), trained.sample([P1], seeds=[2]))


@pytest.mark.parametrize(
    ("plain", "attending"), [(1, [False, True, True]), (2, [False, False, True]), (5, [False, False, True])]
)
def test_plain_levels_take_attention_off_the_highest_resolutions(plain: int, attending: list[bool]) -> None:
    from trcgl.diffusion.model import build_unet

    cfg = DiffusionConfig(image_size=16, unet_channels=[8, 8, 16], attention_head_dim=4, plain_levels=plain)
    unet = build_unet(cfg, cross_attention_dim=8)
    assert [hasattr(b, "attentions") for b in unet.down_blocks] == attending  # at least the lowest level attends
    assert [hasattr(b, "attentions") for b in unet.up_blocks] == attending[::-1]
    out = unet(torch.zeros(1, 1, 16, 16), torch.tensor([3]), encoder_hidden_states=torch.zeros(1, 4, 8)).sample
    assert out.shape == (1, 1, 16, 16)


def test_a_tables_views_are_words_of_the_vocabulary():
    # a table without view columns has projection UNK; CheXpert-like views map to whatever the user names them
    padchest = set(prompt_vocabulary(["edema"], []))
    vocab = set(prompt_vocabulary(["edema"], [], ["UNK", "Frontal_AP"]))
    assert vocab - padchest == {"unk", "frontal"}  # "ap" is already PadChest's
    tokenizer = build_tokenizer(sorted(vocab), 64)
    for view in ("UNK", "Frontal_AP"):
        assert tokenizer.unk_token_id not in tokenizer(build_prompt(["edema"], [], view))["input_ids"], view
