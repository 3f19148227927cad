"""Generation at the classifier's resolution and the editing mode, with tiny real components (diffusers UNet and VAE,
transformers text encoder): the size check, edit masks from localizations, ``TextToXray.edit`` in pixel and latent
space, the edit-mode plan and the generator class writing edited rows with their controls."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from test_diffusion import tiny_cfg as base_tiny_cfg

from trcgl.config import (
    ConfigError,
    DiffusionConfig,
    GenerateConfig,
    check_generator_size,
    load_config,
    to_dict,
)
from trcgl.data.dataset import DatasetInfo
from trcgl.data.images import decode_prepared, encode_prepared
from trcgl.diffusion import EMPTY_PROMPT, TextToXray, build_prompt, prompt_vocabulary
from trcgl.diffusion.model import build_noise_scheduler
from trcgl.diffusion.plan import Generator, make_plan, part_payloads, read_train_rows
from trcgl.diffusion.regions import region_mask
from trcgl.diffusion.text import build_text_encoder, build_tokenizer
from trcgl.storage import Storage

CLASSES = ["normal", "cardiomegaly", "mass", "pneumothorax"]
LOCS = ["loc left", "loc right", "loc apical", "loc basal"]
VOCAB = prompt_vocabulary(CLASSES, LOCS)
P1 = build_prompt(["mass"], ["loc left"], "PA")
P2 = build_prompt(["pneumothorax", "cardiomegaly"], ["loc apical"], "AP")
SIZE = 16


def tiny_cfg(**changes: object) -> DiffusionConfig:
    """tests/test_diffusion.py's tiny model at SIZE with four sampler steps (so strength picks among several)."""
    return base_tiny_cfg(**{"image_size": SIZE, "sample_steps": 4, **changes})


def latent_model() -> TextToXray:
    """A latent-space model composed from a tiny AutoencoderKL (2x down) and a 4-channel UNet."""
    cfg = tiny_cfg(source="pretrained", pretrained="unused")
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
            sample_size=SIZE,
        )
        unet = UNet2DConditionModel(
            sample_size=SIZE // 2,
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
        tokenizer = build_tokenizer(VOCAB, cfg.max_prompt_tokens)
        text_encoder = build_text_encoder(cfg, tokenizer)
    return TextToXray(cfg, VOCAB, unet, text_encoder, tokenizer, build_noise_scheduler(cfg), vae)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: these models are too small to gain from more, and on a busy 2-core runner spinning
    threads cost seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models() -> dict[str, TextToXray]:
    return {"scratch": TextToXray.build(tiny_cfg(), VOCAB), "latent": latent_model()}


def prepared_images(n: int, seed: int = 0) -> np.ndarray:
    """(n, S, S) float32 as the prepared dataset stores them (decoded from raw uint16)."""
    rng = np.random.default_rng(seed)
    return np.stack([decode_prepared(encode_prepared(rng.random((SIZE, SIZE), dtype=np.float32))) for _ in range(n)])


def as_uint16(images: np.ndarray) -> np.ndarray:
    """(n, S, S) stored pixels, as ``encode_prepared`` writes them."""
    return np.stack([np.frombuffer(encode_prepared(x), "<u2").reshape(SIZE, SIZE) for x in images])


# ---------------------------------------------------------------------------------------------------- resolution


def test_a_generator_size_other_than_the_data_size_is_refused_naming_both_keys():
    check_generator_size(load_config("tiny"))  # the presets match
    cfg = load_config("tiny", ["diffusion.image_size=32"])
    with pytest.raises(ConfigError, match=r"'diffusion.image_size' is 32 but 'data.image_size' is 64"):
        check_generator_size(cfg)
    from jobs.generate import main

    assert main(["--config", "tiny", "--set", "diffusion.image_size=32", "--check"]) == 2  # before any work


@pytest.mark.parametrize(
    ("override", "key"), [("generate.mode=inpaint", "generate.mode"), ("generate.strength=0", "generate.strength")]
)
def test_edit_settings_are_checked(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config("tiny", [override])


# ---------------------------------------------------------------------------------------------------- regions


@pytest.mark.parametrize(
    ("locs", "where"),
    [
        (["loc left"], "image right"),  # the patient's left is the image's right (radiological convention)
        (["loc right"], "image left"),
        (["loc apical"], "top"),
        (["loc upper lobe"], "top"),
        (["loc basal"], "bottom"),
        ([], "lung field"),
    ],
)
def test_region_masks_lie_where_the_localizations_say(locs, where):
    m = region_mask(locs, 64)
    assert m.shape == (64, 64) and m.dtype == np.float32 and 0.0 <= m.min() and m.max() <= 1.0
    left, right, top, bottom = m[:, :32].sum(), m[:, 32:].sum(), m[:32].sum(), m[32:].sum()
    if where == "image right":
        assert right > 10 * left and m[:, :20].max() == 0.0  # exactly 0 away from the feathered edge
    elif where == "image left":
        assert left > 10 * right and m[:, 44:].max() == 0.0
    elif where == "top":
        assert top > 10 * bottom and m[40:].max() == 0.0
    elif where == "bottom":
        assert bottom > 10 * top and m[:30].max() == 0.0
    else:
        assert left == pytest.approx(right) and m[32, 32] == 1.0 and m[:2].max() == 0.0
        assert m.sum() > region_mask(["loc left"], 64).sum()


# ---------------------------------------------------------------------------------------------------- editing


@pytest.mark.parametrize("source", ["scratch", "latent"])
def test_region_edit_keeps_pixels_outside_the_mask_byte_identical(models, source):
    model = models[source]
    images = prepared_images(2)
    masks = np.stack([region_mask(["loc left"], SIZE), region_mask(["loc apical"], SIZE)])  # (2, S, S)
    out = model.edit(images, [P1, P2], [1, 2], strength=0.6, masks=masks)
    assert out.shape == (2, SIZE, SIZE) and out.dtype == np.float32 and 0.0 <= out.min() <= out.max() <= 1.0
    stored, original = as_uint16(out), as_uint16(images)
    outside, inside = masks == 0.0, masks > 0.5
    assert outside.sum() > 50 and inside.sum() > 20
    assert np.array_equal(stored[outside], original[outside])
    assert np.mean(stored[inside] != original[inside]) > 0.9  # the region is redrawn


def test_edit_is_deterministic_and_batch_invariant(models):
    model = models["scratch"]
    images = prepared_images(2, seed=1)
    masks = np.stack([region_mask(["loc right"], SIZE), region_mask([], SIZE)])
    pair = model.edit(images, [P1, P2], [11, 12], strength=0.8, masks=masks)
    assert np.array_equal(pair, model.edit(images, [P1, P2], [11, 12], strength=0.8, masks=masks))
    alone = model.edit(images[1:], [P2], [12], strength=0.8, masks=masks[1:])
    assert np.abs(pair[1] - alone[0]).max() < 1e-5  # another batch: float rounding only
    other_seed = model.edit(images[1:], [P2], [13], strength=0.8, masks=masks[1:])
    assert np.abs(other_seed[0] - alone[0]).max() > 1e-3
    whole = model.edit(images[1:], [P2], [12], strength=1.0)  # no mask: every pixel may change
    assert np.mean(as_uint16(whole) != as_uint16(images[1:])) > 0.9


def test_edit_rejects_bad_arguments(models):
    model = models["scratch"]
    with pytest.raises(ValueError, match="strength"):
        model.edit(prepared_images(1), [P1], [0], strength=0.0)
    with pytest.raises(ValueError, match="images must be"):
        model.edit(np.zeros((1, SIZE * 2, SIZE * 2), np.float32), [P1], [0], strength=0.5)
    assert model.edit(np.zeros((0, SIZE, SIZE), np.float32), [], [], strength=0.5).shape == (0, SIZE, SIZE)


# ---------------------------------------------------------------------------------------------------- plan


def dataset(tmp_path) -> tuple[DatasetInfo, pd.DataFrame]:
    """Four classes (mass and pneumothorax tail) in a prepared-format part; the train rows as generation reads them."""
    labels = [
        [1, 0, 0, 0],
        [0, 1, 1, 0],
        [0, 0, 1, 0],
        [0, 0, 1, 1],
        [0, 0, 0, 1],
        [0, 1, 0, 0],
        [1, 0, 0, 0],
        [0, 0, 1, 0],
    ]
    n = len(labels)
    table = pa.table(
        {
            "image_id": [f"real-{i}" for i in range(n)],
            "image": [encode_prepared(x) for x in prepared_images(n, seed=2)],
            "labels": pa.array(labels, pa.list_(pa.uint8(), 4)),
            "split": ["train"] * (n - 1) + ["test"],  # the last row is not a train row: never a donor
            "localizations": [[], ["loc left"], ["loc right"], [], ["loc apical"], [], ["loc basal"], ["loc left"]],
            "projection": ["PA", "AP", "PA", "PA", "PA", "AP", "PA", "PA"],
        }
    )
    storage = Storage(str(tmp_path))
    part = storage.path("part-00000.parquet")
    pq.write_table(table, part)
    info = DatasetInfo(
        "ds", CLASSES, ["head", "medium", "tail", "tail"], np.array([50, 10, 3, 2]), np.eye(4), SIZE, [part], {}
    )
    return info, read_train_rows(storage, info)


def test_edit_plan_takes_negative_donors_adds_the_class_and_drops_normal(tmp_path):
    info, rows = dataset(tmp_path)
    cfg = GenerateConfig(mode="edit", aug_ratio_tail=2.0, per_class_max=5, rows_per_file=3, seed=1)
    plan = make_plan(info, rows, cfg)
    assert plan["target_class"].value_counts().to_dict() == {"mass": 5, "pneumothorax": 4}
    by_id = rows.set_index("image_id")
    for target, labels, donor, locs, prompt in zip(
        plan["target_class"], plan["labels"], plan["donor_id"], plan["localizations"], plan["prompt"], strict=True
    ):
        k = CLASSES.index(target)
        donor_labels = by_id.loc[donor, "labels"]
        assert donor_labels[k] == 0  # the donor is negative for the class it receives
        assert labels[k] == 1 and labels[0] == 0  # the class added, "normal" dropped
        assert [v for j, v in enumerate(labels) if j not in (0, k)] == [
            v for j, v in enumerate(donor_labels) if j not in (0, k)
        ]  # the donor's other findings kept
        positives_locs = [list(v) for v, lab in zip(rows["localizations"], rows["labels"], strict=True) if lab[k]]
        assert list(locs) in positives_locs  # the region comes from a real positive
        assert prompt == build_prompt(
            [c for c, v in zip(CLASSES, labels, strict=True) if v], list(locs), by_id.loc[donor, "projection"]
        )
    assert any(by_id.loc[d, "labels"][0] for d in plan["donor_id"])  # a "normal" donor was used and relabelled
    assert set(plan["donor_file"]) == set(rows["file"]) and "real-7" not in set(plan["donor_id"])  # train rows only
    pd.testing.assert_frame_equal(plan, make_plan(info, rows, cfg))  # deterministic
    sample = make_plan(info, rows, dataclasses.replace(cfg, mode="sample"))
    assert sample["seed"].tolist() == plan["seed"].tolist() and sample["donor_file"].isna().all()
    assert all(
        by_id.loc[d, "labels"][CLASSES.index(t)]
        for d, t in zip(sample["donor_id"], sample["target_class"], strict=True)
    )


def test_generator_edits_donors_and_writes_controls(tmp_path):
    info, rows = dataset(tmp_path)
    overrides = [f"storage.root={tmp_path}", f"data.image_size={SIZE}", f"diffusion.image_size={SIZE}"]
    cfg = load_config("tiny", [*overrides, "generate.mode=edit", "generate.batch_size=2"])
    model = TextToXray.build(dataclasses.replace(cfg.diffusion, **dataclasses.asdict(tiny_cfg())), VOCAB)
    model.save_pretrained(str(tmp_path / "model"), save_raw=False)
    plan = make_plan(info, rows, dataclasses.replace(cfg.generate, rows_per_file=3))
    gen = Generator(to_dict(cfg), str(tmp_path / "model"), "out", len(CLASSES))
    assert gen(pd.DataFrame({"payload": part_payloads(plan)[:1]}))["rows"].tolist() == [3]
    written = pq.read_table(tmp_path / "out" / "part-00000.parquet").to_pylist()
    donors = dict(zip(rows["image_id"], as_uint16(prepared_images(len(rows) + 1, seed=2))[:-1], strict=True))
    for r, locs in zip(written, plan["localizations"].head(3), strict=True):
        assert r["mode"] == "edit" and r["donor_id"] in donors
        image, control = (np.frombuffer(r[c], "<u2").reshape(SIZE, SIZE) for c in ("image", "control_image"))
        outside = region_mask(list(locs), SIZE) == 0.0
        assert np.array_equal(image[outside], donors[r["donor_id"]][outside])
        assert np.array_equal(control[outside], donors[r["donor_id"]][outside])
    first = plan.iloc[:2]  # the control is the same edit with the empty prompt (the first call of 2 rows)
    expected = gen.model.edit(
        np.stack([decode_prepared(donors[d].tobytes()) for d in first["donor_id"]]),
        [EMPTY_PROMPT] * 2,
        [int(s) for s in first["seed"]],
        cfg.generate.strength,
        np.stack([region_mask(list(v), SIZE) for v in first["localizations"]]),
    )
    assert [r["control_image"] for r in written[:2]] == [encode_prepared(x) for x in expected]

    other = load_config("tiny", [*overrides, "data.image_size=32", "diffusion.image_size=32"])
    with pytest.raises(ValueError, match=r"makes 16 px images but 'data.image_size' is 32"):
        Generator(to_dict(other), str(tmp_path / "model"), "out2", len(CLASSES))
