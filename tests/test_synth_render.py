"""PadChest-Synth renderer: determinism, output format, every finding visible and in the right place."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trcgl.data.synth import CLASS_NAMES, FINDING_RENDERERS, make_contact_sheet, parse_localizations, render_image
from trcgl.data.synth import findings as findings_module
from trcgl.data.synth.atlas import ATLAS_CACHE_ENV, load_lung_atlas, save_lung_atlas

REPO = Path(__file__).resolve().parents[1]
SIZE = 128  # small renders keep the whole file fast; geometry is resolution independent


def render(
    image_id: str = "img-0", classes=("normal",), localizations=(), projection="PA", bits=12, size=SIZE, seed=3
) -> np.ndarray:
    return render_image(
        image_id=image_id,
        classes=list(classes),
        localizations=list(localizations),
        projection=projection,
        bits_stored=bits,
        size=size,
        dataset_seed=seed,
    )


def diff(a: np.ndarray, b: np.ndarray, bits: int = 12) -> np.ndarray:
    """Signed difference as a fraction of the full range."""
    return (a.astype(np.float64) - b.astype(np.float64)) / (2**bits - 1)


# ---------------------------------------------------------------------------------------------- determinism


def test_same_arguments_give_byte_identical_images():
    kwargs = dict(
        image_id="20536686640136348236148679891455886468_k6ga29.png",
        classes=("nodule", "cardiomegaly"),
        localizations=("loc left",),
    )
    assert render(**kwargs).tobytes() == render(**kwargs).tobytes()


def test_other_image_id_or_seed_gives_another_image():
    base = render("a")
    assert np.abs(diff(render("b"), base)).mean() > 0.01
    assert np.abs(diff(render("a", seed=4), base)).mean() > 0.01


def test_identical_in_a_fresh_process_with_another_hash_seed(tmp_path):
    """No Python hash() or global state: a new interpreter (different PYTHONHASHSEED) renders the same bytes.

    The child reads this process's atlas through the on-disk cache (saves a second multi-second build).
    """
    cache = tmp_path / "atlas.npz"
    save_lung_atlas(load_lung_atlas(), cache)
    code = (
        "import hashlib; from trcgl.data.synth import render_image; "
        "img = render_image(image_id='proc-check', classes=['pleural effusion', 'support devices'], "
        "localizations=['loc right'], projection='AP', bits_stored=12, size=64, dataset_seed=11); "
        "print(hashlib.sha256(img.tobytes()).hexdigest())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO), ATLAS_CACHE_ENV: str(cache)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    here = render("proc-check", ("pleural effusion", "support devices"), ("loc right",), "AP", 12, 64, 11)
    assert out.stdout.strip() == hashlib.sha256(here.tobytes()).hexdigest()


def test_processes_started_together_on_a_cold_cache_build_the_atlas_once(tmp_path):
    """Three processes ask for the atlas at once with an empty cache path: one builds it (the build logs one line),
    the others wait for its lock and read the file it wrote; all three get the same masks."""
    cache = tmp_path / "atlas.npz"
    code = (
        "import hashlib, logging; logging.basicConfig(level=logging.INFO); "
        "from trcgl.data.synth.atlas import load_lung_atlas; a = load_lung_atlas(); "
        "print('masks', hashlib.sha256(a.masks.tobytes()).hexdigest())"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), ATLAS_CACHE_ENV: str(cache)}
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for _ in range(3)]  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-2000:] for _, err in outs]
    builds = sum(err.count("lung atlas: ") for _, err in outs)
    assert builds == 1, [err[-500:] for _, err in outs]
    assert len({out.strip() for out, _ in outs}) == 1 and outs[0][0].startswith("masks ")
    assert cache.is_file()


# ---------------------------------------------------------------------------------------------- output format


@pytest.mark.parametrize("bits", [10, 12])
@pytest.mark.parametrize("projection", ["PA", "L"])
def test_dtype_shape_and_range(bits, projection):
    img = render("range", ("pleural effusion",), projection=projection, bits=bits, size=96)
    top = 2**bits - 1
    assert img.dtype == np.uint16 and img.shape == (96, 96)
    assert int(img.max()) <= top
    assert int(img.max()) - int(img.min()) >= 0.5 * top  # uses a good part of the range, like a real film
    if bits == 12:
        assert int(img.max()) > 1023  # really 12-bit, not a 10-bit image in a 12-bit container


def test_exposure_varies_between_images():
    maxima = {int(render(f"exp-{i}").max()) for i in range(6)}
    assert len(maxima) > 3


def test_lateral_is_clearly_different_from_frontal():
    frontal, lateral = render("view", projection="PA"), render("view", projection="L")
    assert np.abs(diff(lateral, frontal)).mean() > 0.05

    # Frontal films are roughly left-right symmetric (spine in the middle); laterals are not (spine at the back).
    def asymmetry(img):
        return np.abs(diff(img, img[:, ::-1])).mean()

    assert asymmetry(lateral) > 1.5 * asymmetry(frontal)


def test_other_projections_render_as_frontal_like():
    for projection in ("COSTAL", "AP_horizontal", "UNK", "EXCLUDE"):
        img = render("proj", projection=projection)
        assert img.shape == (SIZE, SIZE)


# ---------------------------------------------------------------------------------------------- validation


def test_unknown_class_raises_naming_it_and_the_image():
    with pytest.raises(ValueError, match=r"'pneumonia'.*'img-x'"):
        render("img-x", ("pneumonia",))


@pytest.mark.parametrize("bits", [8, 16, 11])
def test_bad_bits_stored_raises_naming_it(bits):
    with pytest.raises(ValueError, match=rf"{bits}.*'img-y'"):
        render("img-y", bits=bits)


def test_registries_cover_exactly_the_30_classes_and_are_documented():
    assert len(CLASS_NAMES) == 30 and CLASS_NAMES[0] == "normal"
    assert set(FINDING_RENDERERS) == set(CLASS_NAMES)
    doc = findings_module.__doc__
    for name in CLASS_NAMES:
        assert f"\n{name} " in doc, f"{name!r} missing from the findings table"


def test_parse_localizations():
    left = parse_localizations(["loc left", "loc basal", "loc costophrenic angle"])
    assert left.sides == ("left",) and left.levels == ("basal",)
    both = parse_localizations([" Loc Basal Bilateral "])
    assert set(both.sides) == {"right", "left"} and both.levels == ("basal",)
    upper = parse_localizations(["loc right upper lobe", "loc hilar"])
    assert upper.sides == ("right",) and upper.levels == ("upper",) and upper.has("hilar")
    assert parse_localizations([]).sides == ()


def test_empty_and_normal_classes_are_the_same_image():
    assert render("n", ()).tobytes() == render("n", ("normal",)).tobytes()


# ---------------------------------------------------------------------------------------------- findings

# Both renders of a pair share the anatomy, film-noise and exposure streams, so pixels a finding does not touch
# are bit-identical and any difference is the finding. Thresholds: the smallest findings (a 0.8 cm nodule, a
# thin catheter, a calcified dot) cover a few dozen pixels of a 128 px image with >= 5 % contrast, i.e. a mean
# absolute difference of a few 1e-5 of the range and a peak difference of several percent; a finding that was
# silently not drawn, or drawn with invisible contrast, gives 0 / < 1 LSB and fails.
MIN_MEAN_ABS_DIFF = 1e-5
MIN_PEAK_DIFF = 0.03
VISIBILITY_CASES = [("vis-a", "PA"), ("vis-b", "AP"), ("vis-c", "L")]


@pytest.mark.parametrize("name", CLASS_NAMES[1:])
def test_every_finding_changes_the_image(name):
    for image_id, projection in VISIBILITY_CASES:
        d = np.abs(diff(render(image_id, (name,), projection=projection), render(image_id, projection=projection)))
        assert d.mean() > MIN_MEAN_ABS_DIFF, f"{name} on {projection}: mean |diff| {d.mean():.2e}"
        assert d.max() > MIN_PEAK_DIFF, f"{name} on {projection}: peak |diff| {d.max():.3f}"


def test_all_findings_compose_and_stay_finite():
    """Every finding on every view, alone and all together, without NaN/inf or divide warnings."""
    with np.errstate(invalid="raise", divide="raise"):
        for projection in ("PA", "AP", "L"):
            img = render("all", CLASS_NAMES, ("loc bilateral", "loc basal"), projection=projection, size=96)
            assert img.shape == (96, 96)
            for i, name in enumerate(CLASS_NAMES):
                render(f"one-{i}", (name,), ("loc right", "loc apical"), projection=projection, size=64)


def test_left_effusion_is_on_the_image_right_base():
    """Radiological convention: the patient's left is on the image's right."""
    for i in range(3):
        d = np.abs(diff(render(f"eff-{i}", ("pleural effusion",), ("loc left",)), render(f"eff-{i}")))
        lower = d[int(0.55 * SIZE) :]
        image_right, image_left = lower[:, SIZE // 2 :].mean(), lower[:, : SIZE // 2].mean()
        assert image_right > 5 * image_left + 1e-4, (image_right, image_left)


def test_right_effusion_is_on_the_image_left_base():
    d = np.abs(diff(render("eff-r", ("pleural effusion",), ("loc right",)), render("eff-r")))
    lower = d[int(0.55 * SIZE) :]
    assert lower[:, : SIZE // 2].mean() > 5 * lower[:, SIZE // 2 :].mean() + 1e-4


def test_cardiomegaly_changes_the_central_region():
    for i in range(3):
        d = np.abs(diff(render(f"cm-{i}", ("cardiomegaly",)), render(f"cm-{i}")))
        rows = slice(int(0.4 * SIZE), int(0.9 * SIZE))
        central = d[rows, int(0.3 * SIZE) : int(0.75 * SIZE)].mean()
        periphery = np.concatenate([d[:, : int(0.12 * SIZE)], d[:, int(0.88 * SIZE) :]], axis=1).mean()
        apices = d[: int(0.3 * SIZE)].mean()
        assert central > 0.01 and central > 20 * max(periphery, apices, 1e-6)


def test_cardiomegaly_widens_the_heart_ratio():
    from trcgl.data.synth.anatomy import View, sample_anatomy
    from trcgl.data.synth.findings import effect_cardiomegaly, parse_localizations
    from trcgl.data.synth.render import rng_stream

    for i in range(5):
        anatomy = sample_anatomy(rng_stream(0, f"ctr-{i}", "anatomy"), View.FRONTAL, False)
        assert 0.35 < anatomy.ctr < 0.52
        effect_cardiomegaly(anatomy, rng_stream(0, f"ctr-{i}", "x"), parse_localizations([]))
        assert anatomy.ctr > 0.55


def test_right_pneumothorax_darkens_the_image_left_apex():
    for i in range(3):
        d = diff(render(f"ptx-{i}", ("pneumothorax",), ("loc right",)), render(f"ptx-{i}"))
        apex = d[int(0.08 * SIZE) : int(0.35 * SIZE), int(0.08 * SIZE) : int(0.45 * SIZE)]
        other_apex = d[int(0.08 * SIZE) : int(0.35 * SIZE), int(0.55 * SIZE) : int(0.92 * SIZE)]
        assert apex.mean() < -0.005, apex.mean()  # darker: pleural air without lung markings
        assert np.abs(other_apex).mean() < 1e-4


def test_hemidiaphragm_elevation_raises_the_named_side():
    """Elevating the left dome turns lung (dark) into abdomen (bright) at the image-right base.

    The heart sits on the domes and may move with them, so only the lateral thirds are compared.
    """
    for i in range(3):
        d = diff(render(f"dome-{i}", ("hemidiaphragm elevation",), ("loc left",)), render(f"dome-{i}"))
        lower = d[int(0.5 * SIZE) :]
        image_right, image_left = lower[:, int(0.67 * SIZE) :], lower[:, : int(0.33 * SIZE)]
        assert image_right.mean() > 0.005
        assert np.abs(image_left).mean() < 0.1 * image_right.mean()


def test_devices_are_bright():
    for name in ("sternotomy", "support devices", "central venous catheter", "calcified densities"):
        d = diff(render("dev", (name,)), render("dev"))
        assert d.max() > 0.05 and d.max() > 5 * -min(d.min(), 0.0) - 1e-9, name


def test_nodule_is_smaller_than_mass():
    def area(name):
        return np.mean(
            [(np.abs(diff(render(f"size-{i}", (name,)), render(f"size-{i}"))) > 0.02).sum() for i in range(6)]
        )

    assert area("mass") > 3 * area("nodule")


# ---------------------------------------------------------------------------------------------- contact sheet


def test_atlas_cache_round_trip(tmp_path, monkeypatch):
    from trcgl.data.synth.atlas import _read_lung_atlas

    atlas = load_lung_atlas()
    assert len(atlas) > 200 and atlas.masks.shape[1:] == (2, 128, 128) and atlas.masks.dtype == np.uint8
    path = tmp_path / "atlas.npz"
    save_lung_atlas(atlas, path)
    again = _read_lung_atlas(path)
    assert again is not None and np.array_equal(again.masks, atlas.masks) and again.names == atlas.names
    path.write_bytes(b"not an npz")
    assert _read_lung_atlas(path) is None  # a broken cache is rebuilt, not trusted


def test_contact_sheet_writes_a_png(tmp_path):
    groups = [
        (name, [render(f"s{i}", (name,), bits=bits) for i, bits in enumerate((12, 10))], [render("s0"), render("s1")])
        for name in ("nodule", "pneumothorax", "cardiomegaly")
    ]
    buffer = io.BytesIO()
    make_contact_sheet(groups, buffer)
    buffer.seek(0)
    sheet = Image.open(buffer)
    assert sheet.format == "PNG" and sheet.mode == "L"
    width, height = sheet.size
    assert 2 * 100 < width < 2000 and 3 * 2 * 100 < height < 3000  # 2 columns, 3 classes x 2 rows
    pixels = np.asarray(sheet)
    assert pixels.std() > 20  # images were actually drawn and windowed, not left black

    path = tmp_path / "sheet.png"
    make_contact_sheet(groups[:1], path)
    assert Image.open(path).size[1] < height


def test_contact_sheet_rejects_bad_input():
    with pytest.raises(ValueError):
        make_contact_sheet([], io.BytesIO())
    with pytest.raises(ValueError, match="2-D"):
        make_contact_sheet([("nodule", [np.zeros((4, 4, 3), np.uint16)], [])], io.BytesIO())
