"""data.source=table: a ChestX-ray14-shaped and a CheXpert-shaped table, both written here over PadChest-Synth
images saved as their releases save them (8-bit PNG, 8-bit JPEG; data.accept_8bit), prepared on a real local Ray
(labels under each uncertain policy, patient splits, bad rows and images by reason), one tiny training run and a
predict run over a table; one table read from the loopback S3 server; config errors."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from trcgl.config import ConfigError, StorageConfig, load_config
from trcgl.data import labelsets
from trcgl.data import table as table_source
from trcgl.data.dataset import load_dataset_info, read_dataset
from trcgl.data.images import decode_xray, encode_png16
from trcgl.data.padchest import FRONTAL, clean_metadata, read_metadata
from trcgl.data.prepare import dataset_name, plan_prepare
from trcgl.data.ray_prepare import run_prepare
from trcgl.label_values import UNKNOWN
from trcgl.predict.sources import list_source
from trcgl.storage import Storage

pytestmark = pytest.mark.slow

# The runs here check what a table source feeds training and generation, not training across workers
# (tests/test_train.py): one Train worker each, one process fewer importing torch and Ray Train per run.
ONE_WORKER = "train.num_workers=1"

SIZE = 32
GOOD = 36  # frontal PadChest-Synth rows in each table
NIH_COLUMNS = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "View Position", "Localizations"]
CHEX_FINDINGS = ["No Finding", "Cardiomegaly", "Pleural Effusion", "Nodule", "Atelectasis"]
CHEX_COLUMNS = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEX_FINDINGS]
CHEX_ROOT = "CheXpert-v1.0-small/train"

NIH_BAD_ROWS = {
    "missing_path": 1,
    "missing_patient": 1,
    "labels_missing": 1,
    "labels_empty": 1,
    "projection_not_kept": 1,
    "duplicate_image_id": 1,
    "ragged_row": 1,
}
NIH_BAD_IMAGES = {"absent.png": "missing_file", "broken.png": "not_png", "colour.png": "not_gray"}
CHEX_BAD_ROWS = {"labels_unparseable": 2, "missing_patient": 1, "projection_not_kept": 1, "labels_missing": 1}
# the CheXpert rows with -1 and blank values, and the findings each has under uncertain=zeros / ones (blank: zeros)
CHEX_UNCERTAIN = {
    f"{CHEX_ROOT}/patient90001/study1/view1_frontal.jpg": (
        {"Cardiomegaly": "-1.0", "Pleural Effusion": "", "Nodule": "1.0", "No Finding": "", "Atelectasis": "0.0"},
        {"nodule"},
        {"cardiomegaly", "nodule"},
    ),
    f"{CHEX_ROOT}/patient90002/study1/view1_frontal.jpg": (
        {"Cardiomegaly": "", "Pleural Effusion": "-1", "Nodule": "0", "No Finding": "0.0", "Atelectasis": ""},
        set(),
        {"pleural effusion"},
    ),
}

# the same rows' findings left unknown (UNKNOWN) under uncertain=ignore, then with blank=ignore as well (the classes
# cxr-lt-30 maps: "No Finding" is not one)
CHEX_UNKNOWN = {
    f"{CHEX_ROOT}/patient90001/study1/view1_frontal.jpg": ({"cardiomegaly"}, {"cardiomegaly", "pleural effusion"}),
    f"{CHEX_ROOT}/patient90002/study1/view1_frontal.jpg": (
        {"pleural effusion"},
        {"pleural effusion", "cardiomegaly", "atelectasis"},
    ),
}


def _write_csv(path: Path, header: list[str], rows: list[list[str]], ragged: list[str] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
        if ragged:
            writer.writerow(ragged)


def eight_bit(png16: Path, fmt: str) -> bytes:
    """A 16-bit PadChest-Synth PNG as its 8-bit grayscale twin in ``fmt`` (PNG or JPEG), as ChestX-ray14 and CheXpert
    release theirs."""
    image, _ = decode_xray(png16.read_bytes())
    buf = io.BytesIO()
    Image.fromarray(np.round(image * 255.0).astype(np.uint8), "L").save(buf, format=fmt)
    return buf.getvalue()


def _nih(folder: Path, frontal: pd.DataFrame, files: dict[str, Path]) -> dict:
    """ChestX-ray14's Data_Entry layout: flat 8-bit PNGs, findings joined by "|", "No Finding" for none."""
    images = folder / "images"
    images.mkdir(parents=True)
    rows, findings = [], {}
    for r in frontal.itertuples():
        name = r.image_id
        (images / name).write_bytes(eight_bit(files[name], "PNG"))
        tokens = ["No Finding"] if set(r.raw_labels) == {"normal"} else [x.title() for x in r.raw_labels]
        view = "AP" if r.projection.startswith("AP") else "PA"
        locs = "|".join(r.localizations)
        rows.append([name, "|".join(tokens), "0", r.patient_id, view, locs])
        findings[name] = {t.lower() for t in tokens} - {"no finding"}
    src = files[frontal["image_id"].iat[0]]
    for name in ("messy.png", "nofinding.png", "lost1.png", "lost2.png", "lost3.png", "lost4.png"):
        (images / name).write_bytes(eight_bit(src, "PNG"))
    (images / "broken.png").write_bytes(b"GIF89a not an X-ray")
    Image.new("RGB", (16, 16), (200, 40, 40)).save(images / "colour.png")  # a photo, not gray saved as RGB
    rows += [
        ["messy.png", " cardiomegaly |EFFUSION||", "0", "h1", "PA", " Loc Left | loc basal "],
        ["nofinding.png", "No Finding", "1", "h2", "AP", ""],
        ["absent.png", "Nodule", "0", "h3", "PA", ""],  # no file
        ["broken.png", "Nodule", "0", "h4", "PA", ""],
        ["colour.png", "Nodule", "0", "h4", "PA", ""],
        ["", "Nodule", "0", "h5", "PA", ""],  # missing_path
        ["lost1.png", "Nodule", "0", "", "PA", ""],  # missing_patient
        ["lost2.png", "", "0", "h6", "PA", ""],  # labels_missing
        ["lost3.png", " | ", "0", "h7", "PA", ""],  # labels_empty
        ["lost4.png", "Nodule", "0", "h8", "LL", ""],  # projection_not_kept
        [frontal["image_id"].iat[1], "Nodule", "1", "h9", "PA", ""],  # duplicate_image_id
    ]
    findings.update({"messy.png": {"cardiomegaly", "effusion"}, "nofinding.png": set(), "broken.png": {"nodule"}})
    findings["colour.png"] = {"nodule"}
    findings["absent.png"] = {"nodule"}
    _write_csv(folder / "Data_Entry.csv", NIH_COLUMNS, rows, ragged=["ragged.png", "Nodule", "0", "h10", "PA", "", "x"])
    return {"csv": folder / "Data_Entry.csv", "images": images, "findings": findings}


def _chexpert(folder: Path, frontal: pd.DataFrame, lateral: pd.DataFrame, files: dict[str, Path]) -> dict:
    """CheXpert's train.csv layout: one column per finding (1.0 / 0.0 / -1.0 / blank), the patient in the path,
    8-bit JPEGs."""
    patients = {p: 10001 + i for i, p in enumerate(sorted(set(frontal["patient_id"]) | set(lateral["patient_id"])))}
    rows, findings, studies = [], {}, {}
    rng = np.random.default_rng(0)

    def add(r, view: str, ap_pa: str, values: dict[str, str] | None = None, path: str | None = None) -> str:
        if path is None:  # a patient's images are studies 1, 2, ...
            studies[r.patient_id] = studies.get(r.patient_id, 0) + 1
            n = studies[r.patient_id]
            path = f"{CHEX_ROOT}/patient{patients[r.patient_id]:05d}/study{n}/view1_{view.lower()}.jpg"
        if values is None:
            raw = set(r.raw_labels) | ({"no finding"} if set(r.raw_labels) == {"normal"} else set())
            values = {c: "1.0" if c.lower() in raw else ("0.0" if rng.random() < 0.5 else "") for c in CHEX_FINDINGS}
        target = folder / path
        if r is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(eight_bit(files[r.image_id], "JPEG"))
        sex, age = ("Female", "63") if len(rows) % 2 else ("Male", "48")
        rows.append([path, sex, age, view, ap_pa, *(values.get(c, "") for c in CHEX_FINDINGS)])
        return path

    for r in frontal.itertuples():
        path = add(r, "Frontal", "AP" if r.projection.startswith("AP") else "PA")
        findings[path] = {c.lower() for c in CHEX_FINDINGS if rows[-1][CHEX_COLUMNS.index(c)] == "1.0"}
    first = next(frontal.itertuples())
    for path, (values, _, _) in CHEX_UNCERTAIN.items():
        add(first, "Frontal", "PA", values, path)
    add(next(lateral.itertuples()), "Lateral", "")  # projection_not_kept
    add(first, "Frontal", "PA", {"Cardiomegaly": "2.0"}, f"{CHEX_ROOT}/patient90003/study1/view1_frontal.jpg")
    add(first, "Frontal", "PA", {"Cardiomegaly": "maybe"}, f"{CHEX_ROOT}/patient90004/study1/view1_frontal.jpg")
    add(first, "Frontal", "PA", {}, f"{CHEX_ROOT}/patient90005/study1/view1_frontal.jpg")  # every label blank
    add(first, "Frontal", "PA", {"Nodule": "1.0"}, f"{CHEX_ROOT}/anonymous/study1/view1_frontal.jpg")  # no patient
    missing = add(None, "Frontal", "AP", {"Nodule": "1.0"}, f"{CHEX_ROOT}/patient90006/study1/view1_frontal.jpg")
    findings[missing] = {"nodule"}
    _write_csv(folder / CHEX_ROOT / "train.csv", CHEX_COLUMNS, rows)
    return {"csv": folder / CHEX_ROOT / "train.csv", "root": folder, "findings": findings, "missing": missing}


def render_synth(rows: pd.DataFrame, folder: Path) -> dict[str, Path]:
    """PadChest-Synth images of real PadChest rows, rendered here as the source job renders them (64 px)."""
    from trcgl.data.synth.render import render_image

    cxr = labelsets.load_file("cxr-lt-30")
    folder.mkdir(parents=True)
    files = {}
    for r in rows.itertuples():
        pixels = render_image(
            image_id=r.image_id,
            classes=cxr.classes_of(r.raw_labels),
            localizations=list(r.localizations),
            projection=r.projection,
            bits_stored=r.bits_stored if r.bits_stored in (10, 12) else 12,
            size=64,
            dataset_seed=0,
        )
        files[r.image_id] = folder / r.image_id
        files[r.image_id].write_bytes(encode_png16(pixels))
    return files


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Both tables over the same PadChest-Synth images: real PadChest rows (the metadata torchxrayvision ships),
    sampled with a fixed seed, rendered once."""
    kept, _ = clean_metadata(read_metadata(), [*FRONTAL, "L"])
    rng = np.random.default_rng(0)
    frontal = kept[kept["projection"].isin(FRONTAL)]
    frontal = frontal.iloc[np.sort(rng.choice(len(frontal), GOOD, replace=False))]
    lateral = kept[kept["projection"] == "L"].head(1)
    base = tmp_path_factory.mktemp("tables")
    files = render_synth(pd.concat([frontal, lateral]), base / "synth")
    return {
        "base": base,
        "nih": _nih(base / "nih", frontal, files),
        "chexpert": _chexpert(base / "chexpert", frontal, lateral, files),
    }


def nih_overrides(root: Path, table: str, images: str, *extra: str) -> list[str]:
    return [
        f"storage.root={root}",
        "data.source=table",
        f"data.metadata={table}",
        f"data.images={images}",
        "data.label_set=top-2",
        f"data.image_size={SIZE}",
        "data.shard_rows=16",
        "data.split.val_fraction=0.2",
        "data.split.test_fraction=0.2",
        "data.table.path_column=Image Index",
        "data.table.patient_column=Patient ID",
        "data.table.view_columns=[View Position]",
        "data.table.labels_column=Finding Labels",
        "data.table.none_labels=[No Finding]",
        "data.table.localization_column=Localizations",
        "data.accept_8bit=true",
        *extra,
    ]


def chexpert_overrides(root: Path, table: str, images: str, *extra: str) -> list[str]:
    return [
        f"storage.root={root}",
        "data.source=table",
        f"data.metadata={table}",
        f"data.images={images}",
        f"data.image_size={SIZE}",
        "data.shard_rows=16",
        "data.table.path_column=Path",
        r"data.table.patient_pattern=/(patient\d+)/",
        "data.table.view_columns=[Frontal/Lateral, AP/PA]",
        "data.table.view_values={Frontal AP: AP, Frontal PA: PA, Lateral: L}",
        "data.table.label_columns=auto",
        "data.accept_8bit=true",
        *extra,
    ]


def _patient_disjoint(rows: list[dict]) -> bool:
    splits: dict[str, set[str]] = {}
    for r in rows:
        splits.setdefault(r["patient_id"], set()).add(r["split"])
    return all(len(s) == 1 for s in splits.values())


# ---------------------------------------------------------------------------------------------------- ChestX-ray14


@pytest.fixture(scope="module")
def nih_prepared(ray_local, tables: dict) -> dict:
    nih = tables["nih"]
    root = tables["base"] / "root"
    cfg = load_config("tiny", nih_overrides(root, str(nih["csv"]), str(nih["images"])))
    return {"cfg": cfg, "report": run_prepare(cfg), "storage": Storage(str(root))}


def test_chestxray14_table_prepares_with_data_derived_classes(nih_prepared, tables):
    report, storage, nih = nih_prepared["report"], nih_prepared["storage"], tables["nih"]
    assert report["dataset"].startswith("table-top-2-32px-")
    assert report["dropped_metadata_by_reason"] == NIH_BAD_ROWS
    assert report["table_label_columns"] == ["Finding Labels"]
    assert {r["image_id"]: r["reason"] for r in report["rejected_image_list"]} == NIH_BAD_IMAGES
    rows = read_dataset(storage, report["dataset"]).to_pylist()
    written = {r["image_id"] for r in rows}
    assert written == set(nih["findings"]) - set(NIH_BAD_IMAGES)  # every good row, once
    assert report["rows_written"] == GOOD + 2 and len(rows) == GOOD + 2
    assert {r["source"] for r in rows} == {"table"}
    assert _patient_disjoint(rows)
    # classes: every finding (normalised, "No Finding" dropped) with at least 2 train positives
    labels = {"classes": load_dataset_info(storage, report["dataset"]).classes}
    train_counts: dict[str, int] = {}
    for r in rows:
        for f in nih["findings"][r["image_id"]] if r["split"] == "train" else ():
            train_counts[f] = train_counts.get(f, 0) + 1
    # (PadChest's study-level tokens, "unchanged" and the like, are never classes of top-N)
    assert set(labels["classes"]) == {f for f, n in train_counts.items() if n >= 2} - labelsets.META_LABELS
    for r in rows:
        got = {c for c, v in zip(labels["classes"], r["labels"], strict=True) if v}
        assert got == nih["findings"][r["image_id"]] & set(labels["classes"]), r["image_id"]
    by_id = {r["image_id"]: r for r in rows}
    assert by_id["messy.png"]["localizations"] == ["loc left", "loc basal"]
    assert sum(by_id["nofinding.png"]["labels"]) == 0 and by_id["nofinding.png"]["projection"] == "AP"


def test_train_and_predict_on_the_chestxray14_table(nih_prepared, tables):
    from trcgl.predict.ray_predict import PredictOptions, run_predict, table_data
    from trcgl.storage import run_dir
    from trcgl.train.checkpoint import META_FILE
    from trcgl.train.ray_train import run_training

    storage, nih = nih_prepared["storage"], tables["nih"]
    extra = ["model.backbone=test_resnet", "model.output_stride=16", "train.epochs=1", "train.bootstrap=10",
             "train.run=nih", ONE_WORKER]  # fmt: skip
    cfg = load_config("tiny", nih_overrides(Path(storage.root), str(nih["csv"]), str(nih["images"]), *extra))
    summary = run_training(cfg)
    assert summary["epochs_run"] == 1
    checkpoint = storage.uri(run_dir("nih", "classifier"), "best")
    out = Path(storage.root) / "predict-nih"
    report = run_predict(cfg, PredictOptions(checkpoint, f"table:{nih['csv']}", out=str(out), actors=1))
    # every row with a path, a patient and a kept view is scored, labelled or not; the others are counted by reason
    listed = set(nih["findings"]) | {"lost2.png", "lost3.png"}
    assert report["images_listed"] == len(listed) and report["source_kind"] == "table"
    assert report["ignored_by_reason"] == {k: 1 for k in NIH_BAD_ROWS if not k.startswith("labels_")}
    assert report["bad_by_reason"] == {"missing_file": 1, "not_png": 1, "not_gray": 1}
    table = pd.read_parquet(out)
    assert set(table["image_id"]) == listed - set(NIH_BAD_IMAGES)
    assert set(table["uri"]) == {str(nih["images"] / i) for i in table["image_id"]}
    # a job config without a table mapping lists the table by the checkpoint's own mapping
    meta = storage.read_json(f"{run_dir('nih', 'classifier')}/best/{META_FILE}")
    mapping = table_data(load_config("tiny", [f"storage.root={storage.root}"]), meta)
    assert mapping.table == cfg.data.table
    again = list_source(f"table:{nih['csv']}", storage, "unused", mapping)
    assert set(again.items["image_id"]) == listed


def test_diffusion_trains_and_generates_on_the_chestxray14_table(nih_prepared, tables):
    """The synthesis stage on a table dataset: prompts from the table's own finding names, its views and its
    localization column, every word known to the model's tokenizer."""
    import pyarrow.parquet as pq

    from trcgl.diffusion.model import TextToXray
    from trcgl.diffusion.prompts import build_prompt
    from trcgl.diffusion.ray_diffusion import run_train_diffusion
    from trcgl.diffusion.ray_generate import run_generate
    from trcgl.storage import run_dir

    storage, nih = nih_prepared["storage"], tables["nih"]
    # top-2 on ~23 train rows leaves no tail class (< 1 %): the medium classes are the ones augmented here
    extra = ["train.run=nih-gen", "diffusion.epochs=1", f"diffusion.image_size={SIZE}", "generate.aug_ratio_medium=1.0",
             "generate.per_class_max=2", ONE_WORKER]  # fmt: skip
    cfg = load_config("tiny", nih_overrides(Path(storage.root), str(nih["csv"]), str(nih["images"]), *extra))
    trained = run_train_diffusion(cfg)
    assert np.isfinite(trained["last_loss"])
    report = run_generate(cfg)
    info = load_dataset_info(storage, nih_prepared["report"]["dataset"])
    medium = {c for c, g in zip(info.classes, info.groups, strict=True) if g == "medium"}
    assert report["images"] > 0 and set(report["per_class"]) <= medium
    parts = [f for f in storage.list_files(run_dir("nih-gen", "synthetic")) if "/part-" in f]
    rows = [r for f in parts for r in pq.read_table(storage.path(f)).to_pylist()]
    assert len(rows) == report["images"]
    donors = {r["image_id"]: r for r in read_dataset(storage, info.name).to_pylist()}
    tokenizer = TextToXray.from_pretrained(trained["model"]).tokenizer  # the trained model's own
    for r in rows:
        donor = donors[r["donor_id"]]
        assert r["labels"][info.classes.index(r["target_class"])] == 1 and donor["split"] == "train"
        classes = [c for c, v in zip(info.classes, r["labels"], strict=True) if v]
        # the template over the table's names: "chest x-ray, {view} view: {class}; ...[; {localizations}]"
        head = build_prompt(classes, [], donor["projection"])
        rest = r["prompt"][len(head) :]  # the localizations, when the donor has any
        assert r["prompt"].startswith(head) and (rest == "" or rest.startswith("; ")), r["prompt"]
        assert tokenizer.unk_token_id not in tokenizer(r["prompt"])["input_ids"], r["prompt"]


def test_a_table_on_s3_is_read_and_listed(tables, s3_endpoint, s3_bucket, tmp_path):
    nih = tables["nih"]
    s3 = Storage(f"s3://{s3_bucket}/nih", StorageConfig(endpoint_url=s3_endpoint))
    s3.write_bytes("Data_Entry.csv", nih["csv"].read_bytes())
    for p in sorted(nih["images"].iterdir())[:3]:
        s3.write_bytes(f"images/{p.name}", p.read_bytes())
    table, images = f"s3://{s3_bucket}/nih/Data_Entry.csv", f"s3://{s3_bucket}/nih/images"
    cfg = load_config("tiny", nih_overrides(tmp_path, table, images, f"storage.endpoint_url={s3_endpoint}"))
    plan = plan_prepare(cfg, table, images)  # reads the table from S3 and finds its first images there
    local = plan_prepare(load_config("tiny", nih_overrides(tmp_path, str(nih["csv"]), str(nih["images"]))),
                         str(nih["csv"]), str(nih["images"]))  # fmt: skip
    assert plan.rows["image_id"].tolist() == local.rows["image_id"].tolist()
    assert plan.meta_rejects["reason"].value_counts().to_dict() == NIH_BAD_ROWS
    listing = list_source(f"table:{table}", Storage(str(tmp_path), cfg.storage), "unused", cfg.data)
    assert listing.items["uri"].str.startswith(f"{images}/").all() and listing.kind == "table"


# ---------------------------------------------------------------------------------------------------- CheXpert


def test_chexpert_table_prepares_uncertain_and_blank_values_by_policy(ray_local, tables):
    chex = tables["chexpert"]
    root = tables["base"] / "root-chex"
    cfg = load_config("tiny", chexpert_overrides(root, str(chex["csv"]), str(chex["root"])))
    df = table_source.read_table(str(chex["csv"]), cfg.storage)
    assert table_source.check_columns(df, cfg.data.table, str(chex["csv"])) == CHEX_FINDINGS  # not Sex, not Age
    report = run_prepare(cfg)
    assert report["dropped_metadata_by_reason"] == CHEX_BAD_ROWS
    assert report["table_label_columns"] == CHEX_FINDINGS  # what auto picked, on record
    assert {r["image_id"]: r["reason"] for r in report["rejected_image_list"]} == {chex["missing"]: "missing_file"}
    storage = Storage(str(root))
    rows = read_dataset(storage, report["dataset"]).to_pylist()
    assert {r["image_id"] for r in rows} == set(chex["findings"]) - {chex["missing"]} | set(CHEX_UNCERTAIN)
    assert _patient_disjoint(rows) and len({r["patient_id"] for r in rows}) > 10
    assert {r["patient_id"] for r in rows if r["image_id"] in CHEX_UNCERTAIN} == {"patient90001", "patient90002"}
    # cxr-lt-30 maps the column names it knows ("no finding" is not its "normal")
    classes = load_dataset_info(storage, report["dataset"]).classes
    mapped = {"cardiomegaly", "pleural effusion", "nodule", "atelectasis"}
    by_id = {r["image_id"]: {c for c, v in zip(classes, r["labels"], strict=True) if v} for r in rows}
    for image_id, found in by_id.items():
        expected = CHEX_UNCERTAIN[image_id][1] if image_id in CHEX_UNCERTAIN else chex["findings"][image_id] & mapped
        assert found == expected, image_id
    # uncertain=ones: the -1 values become positives, the blank ones stay negative; another dataset name
    ones = load_config(
        "tiny", chexpert_overrides(root, str(chex["csv"]), str(chex["root"]), "data.table.uncertain=ones")
    )
    plan = plan_prepare(ones, str(chex["csv"]), str(chex["root"]))
    assert plan.name != report["dataset"]
    got = dict(zip(plan.rows["image_id"], plan.rows["labels"], strict=True))
    for image_id, (_, _, positives) in CHEX_UNCERTAIN.items():
        assert {c for c, v in zip(plan.label_set.classes, got[image_id], strict=True) if v} == positives
    # uncertain=ignore (U-Ignore): the -1 values become UNKNOWN, the positives stay; blank=ignore adds the blank ones
    policies = (["data.table.uncertain=ignore"], ["data.table.uncertain=ignore", "data.table.blank=ignore"])
    for which, extra in enumerate(policies):
        ignore = load_config("tiny", chexpert_overrides(root, str(chex["csv"]), str(chex["root"]), *extra))
        plan = plan_prepare(ignore, str(chex["csv"]), str(chex["root"]))
        got = dict(zip(plan.rows["image_id"], plan.rows["labels"], strict=True))
        classes = plan.label_set.classes
        for image_id, (_, positives, _) in CHEX_UNCERTAIN.items():
            unknown_classes = {c for c, v in zip(classes, got[image_id], strict=True) if v == UNKNOWN}
            assert unknown_classes == CHEX_UNKNOWN[image_id][which], image_id
            assert {c for c, v in zip(classes, got[image_id], strict=True) if v == 1} == positives
        unknown = sum(v == UNKNOWN for labels in got.values() for v in labels)
        if which == 0:  # only those two rows hold a -1
            assert unknown == sum(len(u[0]) for u in CHEX_UNKNOWN.values())
        else:  # the other rows' blank cells too
            assert unknown > 2 * sum(len(u[1]) for u in CHEX_UNKNOWN.values())


def test_training_on_the_chexpert_table_with_uncertain_and_blank_ignored(ray_local, tables):
    """U-Ignore end to end: the stored labels hold UNKNOWN where the table left a finding uncertain or blank, one
    training epoch and its evaluations finish, and the test evaluation counts each class's positives and negatives
    over the images whose label for it is known."""
    from trcgl.storage import run_dir
    from trcgl.train.ray_train import run_training

    chex = tables["chexpert"]
    root = tables["base"] / "root-chex-ignore"
    extra = ["data.table.uncertain=ignore", "data.table.blank=ignore", "model.backbone=test_resnet",
             "model.output_stride=16", "train.epochs=1", "train.bootstrap=10", "train.run=chex-ignore",
             ONE_WORKER]  # fmt: skip
    cfg = load_config("tiny", chexpert_overrides(root, str(chex["csv"]), str(chex["root"]), *extra))
    report = run_prepare(cfg)
    storage = Storage(str(root))
    rows = read_dataset(storage, report["dataset"]).to_pylist()
    labels = np.asarray([r["labels"] for r in rows])  # (N, K)
    split = np.asarray([r["split"] for r in rows])
    assert report["unknown_labels"] == (labels == UNKNOWN).sum() > 10
    for image_id, (_, unknown) in CHEX_UNKNOWN.items():
        got = next(r["labels"] for r in rows if r["image_id"] == image_id)
        classes = load_dataset_info(storage, report["dataset"]).classes
        assert {c for c, v in zip(classes, got, strict=True) if v == UNKNOWN} == unknown
    summary = run_training(cfg)
    assert summary["epochs_run"] == 1
    history = storage.read_json(f"{run_dir('chex-ignore', 'classifier')}/history.json")
    assert history[0]["val_mAUC"] is not None and np.isfinite(history[0]["train_loss"])
    per_class = pd.read_parquet(Path(root) / run_dir("chex-ignore", "classifier") / "per_class.parquet")
    test = labels[split == "test"]
    assert per_class["positives"].tolist() == (test == 1).sum(axis=0).tolist()
    assert per_class["negatives"].tolist() == (test == 0).sum(axis=0).tolist()
    assert ((test == UNKNOWN).sum(axis=0) > 0).any()  # some class lost images to U-Ignore on test


# ---------------------------------------------------------------------------------------------------- config


def test_a_given_split_column_is_used_and_checked(tmp_path):
    path = tmp_path / "t.csv"
    rows = [["a.png", "train", "1"], ["b.png", "Valid", "0"], ["c.png", "test", "1"], ["d.png", "holdout", "1"]]
    _write_csv(path, ["file", "fold", "Edema"], rows)
    cfg = load_config("tiny", [f"data.metadata={path}", "data.source=table", "data.table.path_column=file",
                               "data.table.split_column=fold", "data.table.label_columns=[Edema]"])  # fmt: skip
    kept, rejected = table_source.clean_table(table_source.read_table(str(path), cfg.storage), cfg.data, str(path))
    assert kept["split"].tolist() == ["train", "val", "test"] and kept["projection"].tolist() == ["UNK"] * 3
    assert kept["raw_labels"].tolist() == [("edema",), (), ("edema",)]
    assert rejected[["image_id", "reason"]].values.tolist() == [["d.png", "split_unknown"]]


def test_table_config_errors_name_the_key_and_value(tmp_path):
    path = tmp_path / "t.csv"
    _write_csv(path, ["Path", "Patient", "Edema"], [["a.png", "p1", "1"]])
    base = ["data.source=table", f"data.metadata={path}", "data.table.patient_column=Patient"]
    with pytest.raises(ConfigError, match="'data.table.uncertain' 'ignore' applies to label columns .*'Labels'"):
        load_config("tiny", [*base, "data.table.labels_column=Labels", "data.table.uncertain=ignore"])
    with pytest.raises(ConfigError, match="'data.table.blank' must be one of \\['zeros', 'ignore'\\], got 'ones'"):
        load_config("tiny", [*base, "data.table.label_columns=[Edema]", "data.table.blank=ones"])
    with pytest.raises(ConfigError, match="exactly one of config keys 'data.table.labels_column'"):
        load_config("tiny", base)
    with pytest.raises(ConfigError, match="needs a group"):
        load_config("tiny", ["data.source=table", "data.table.labels_column=L", "data.table.patient_pattern=p\\d+"])
    cfg = load_config("tiny", [*base, "data.table.label_columns=[Edema, Oedema]"])
    with pytest.raises(ConfigError, match=r"data.table.label_columns 'Oedema' is not a column of .*t.csv \(columns: "
                       r"\['Path', 'Patient', 'Edema'\]\)"):  # fmt: skip
        plan_prepare(cfg, str(path), str(tmp_path))
    # the table keys are part of the dataset's name
    other = load_config("tiny", [*base, "data.table.label_columns=[Edema]", "data.table.uncertain=ones"])
    same = load_config("tiny", [*base, "data.table.label_columns=[Edema]"])
    assert dataset_name(other, str(path), "i") != dataset_name(same, str(path), "i")
