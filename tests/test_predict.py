"""jobs.predict: a tiny checkpoint applied to real PNG and DICOM files and to a prepared split on a real local Ray;
the probabilities against an in-process forward pass, decisions at the stored thresholds, bad files reported, reruns
that write nothing and resumes that fill only the gap; the threshold rule on a hand-built val set."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from test_dicom import dicom, xray

from jobs.predict import main as predict_main
from trcgl.config import ConfigError, load_config
from trcgl.data.dataset import DatasetInfo
from trcgl.data.images import decode_prepared, decode_xray, encode_png16, encode_prepared, resize_square
from trcgl.data.prepare import parquet_schema
from trcgl.data.splits import cooccurrence_frame
from trcgl.models import build_model
from trcgl.predict.ray_predict import PredictOptions, run_predict
from trcgl.predict.scorer import class_columns
from trcgl.records import StaleStageError
from trcgl.storage import COOCCURRENCE, LABELS, Storage
from trcgl.train import checkpoint as ckpt
from trcgl.train.thresholds import FALLBACK, f1_optimal, threshold_record

CLASSES = ["normal", "pleural effusion", "nodule"]
SIZE = 32  # the checkpoint's image side (test_resnet: a 1 x 1 feature map; 2 x 2 below at output stride 16)
GOOD = ["a.png", "b.png", "sub/c.png", "sub/deep/d.png", "e.png", "f.dcm"]  # f: DICOM, MONOCHROME1


# ---------------------------------------------------------------------------------------------------- the rule


def test_f1_optimal_thresholds_on_a_hand_built_val_set():
    scores = np.array(
        [
            # class 0      class 1  class 2 (no positive)  class 3 (ties)
            [0.9, 0.8, 0.1, 0.7],
            [0.8, 0.8, 0.2, 0.7],
            [0.6, 0.3, 0.3, 0.4],
            [0.4, 0.3, 0.4, 0.4],
            [0.2, 0.1, 0.5, 0.1],
        ]
    )
    targets = np.array([[1, 1, 0, 1], [0, 0, 0, 0], [1, 1, 0, 1], [0, 1, 0, 0], [0, 0, 0, 0]])
    thresholds, f1, positives = f1_optimal(scores, targets)
    # F1 at threshold t = 2 TP / (images called positive + positives), images called positive: probability >= t
    # class 0 (positives at 0.9, 0.6): t=0.9 TP 1 of 1 called: 2/3; t=0.8 1 of 2: 2/4; t=0.6 2 of 3: 4/5;
    #   t=0.4 2 of 4: 4/6; t=0.2 2 of 5: 4/7 -> 0.6
    # class 1 (positives 0.8, 0.3, 0.3; a negative tied at 0.8): t=0.8 1 of 2: 2/5; t=0.3 3 of 4: 6/7;
    #   t=0.1 3 of 5: 6/8 -> 0.3
    # class 2: no val positive -> the fallback
    # class 3 (positives 0.7, 0.4, a negative tied with each): t=0.7 1 of 2: 2/4; t=0.4 2 of 4: 4/6; t=0.1: 4/7 -> 0.4
    np.testing.assert_allclose(thresholds, [0.6, 0.3, FALLBACK, 0.4])
    np.testing.assert_allclose(f1[[0, 1, 3]], [4 / 5, 6 / 7, 4 / 6])
    assert np.isnan(f1[2]) and positives.tolist() == [2, 3, 0, 2]
    # two thresholds with the same F1: positives at 0.9 and 0.6: t=0.9 1 of 1: 2/3; t=0.8 1 of 2: 2/4; t=0.7 1 of 3:
    # 2/5; t=0.6 2 of 4: 4/6 = 2/3; t=0.1 2 of 5: 4/7. 0.9 and 0.6 tie -> the lower, 0.6
    tied, tied_f1, _ = f1_optimal(np.array([[0.9], [0.8], [0.7], [0.6], [0.1]]), np.array([[1], [0], [0], [1], [0]]))
    assert tied.tolist() == [0.6] and tied_f1[0] == pytest.approx(2 / 3)


def test_threshold_record_says_the_rule():
    record = threshold_record(np.array([[0.2, 0.9]]), np.array([[0, 1]]), ["a", "b"], epoch=3)
    assert record["values"] == [FALLBACK, 0.9] and record["val_f1"] == [None, 1.0]
    assert record["rule"]["name"] == "f1-optimal per class on val" and record["source"] == {"epoch": 3}
    assert json.loads(json.dumps(record)) == record  # stored in meta.json as it is


# ---------------------------------------------------------------------------------------------------- fixtures


def model_config(root: Path):
    return load_config(
        "tiny",
        [
            f"storage.root={root}",
            "model.backbone=test_resnet",
            "model.gcn=false",
            "model.output_stride=16",
            f"data.image_size={SIZE}",
        ],
    )


def write_images(folder: Path) -> None:
    """Five 12-bit PNGs of several shapes, one MONOCHROME1 DICOM, a corrupt PNG, a truncated PNG, and files that
    are not listed (a text file, a hidden PNG, a sidecar-like name)."""
    for i, name in enumerate(GOOD[:-1]):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(encode_png16(xray(i, (40 + 8 * i, 36))))
    (folder / GOOD[-1]).write_bytes(dicom(4095 - xray(9, (36, 44)), photometric="MONOCHROME1"))
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (folder / "truncated.png").write_bytes(encode_png16(xray(7))[:200])
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(encode_png16(xray(8)))
    (folder / "_sidecar.png").write_bytes(encode_png16(xray(8)))


def in_process(checkpoint: Path, images: list[np.ndarray]) -> np.ndarray:
    """Probabilities (n, K) of (n, S, S) images: the checkpoint's model, one forward pass, in this process."""
    model, _ = ckpt.load_model(str(checkpoint))
    with torch.no_grad():
        return torch.sigmoid(model(torch.from_numpy(np.stack(images)[:, None]))).numpy()


def pixels(path: Path) -> np.ndarray:
    """What prepare would store for a file, read back (decode, resize, 16-bit round trip), written out here."""
    return decode_prepared(encode_prepared(resize_square(decode_xray(path.read_bytes())[0], SIZE)))


@pytest.fixture(scope="module")
def folder_case(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A checkpoint whose stored thresholds are each class's median probability over the good images (so some
    decisions are true and some false), and the image folder."""
    root = tmp_path_factory.mktemp("predict")
    images = root / "images"
    images.mkdir()
    write_images(images)
    cfg = model_config(root)
    k = len(CLASSES)
    info = DatasetInfo(
        "hand", CLASSES, ["head", "medium", "tail"], np.array([9, 4, 1]), np.eye(k, dtype=int), SIZE, [], {}
    )
    torch.manual_seed(0)
    model = build_model(cfg.model, k, info.cooccurrence)
    ckpt.write_local(root / "bare", ckpt.checkpoint_files(model, cfg, info, 0, {}))
    probs = in_process(root / "bare", [pixels(images / n) for n in GOOD])  # (6, K)
    val_targets = (probs >= np.median(probs, axis=0)).astype(int)  # the F1-optimal threshold is then the median
    thresholds = threshold_record(probs, val_targets, CLASSES, epoch=0)
    ckpt.write_local(root / "best", ckpt.checkpoint_files(model, cfg, info, 0, {}, thresholds=thresholds))
    return {"root": root, "images": images, "cfg": cfg, "checkpoint": root / "best", "thresholds": thresholds}


def files_under(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()
    }


# ---------------------------------------------------------------------------------------------------- the job


@pytest.mark.slow
def test_predict_folder_matches_an_in_process_forward_pass(ray_local, folder_case):
    c = folder_case
    out = c["root"] / "out-folder"
    opts = PredictOptions(str(c["checkpoint"]), str(c["images"]), out=str(out), rows_per_part=3, overlays=2)
    report = run_predict(c["cfg"], opts)
    table = pd.read_parquet(out)  # sidecars stay out of the Parquet namespace
    assert sorted(table["image_id"]) == sorted(GOOD) and table["image_id"].is_unique
    table = table.set_index("image_id").loc[GOOD]
    assert table["uri"].tolist() == [str(c["images"] / n) for n in GOOD]
    # probabilities: the same as the model's forward pass on the same images in this process
    probs_cols, pred_cols = class_columns(CLASSES)
    assert probs_cols[1] == "prob_pleural_effusion" and pred_cols[1] == "pred_pleural_effusion"
    expected = in_process(c["checkpoint"], [pixels(c["images"] / n) for n in GOOD])  # (6, K)
    np.testing.assert_allclose(table[probs_cols].to_numpy(), expected, atol=1e-5)
    # decisions: probability >= the thresholds stored with the checkpoint; some true, some false
    stored = np.asarray(c["thresholds"]["values"])
    decisions = table[pred_cols].to_numpy()
    np.testing.assert_array_equal(decisions, table[probs_cols].to_numpy() >= stored)
    assert 0 < decisions.sum() < decisions.size
    assert report["thresholds"]["values"] == c["thresholds"]["values"]
    assert report["thresholds"]["rule"]["name"] == "f1-optimal per class on val"
    for image_id, p, d in zip(GOOD, table[probs_cols].to_numpy(), decisions, strict=True):
        findings = table.loc[image_id, "findings"].tolist()
        assert findings == [CLASSES[k] for k in np.argsort(-p, kind="stable") if d[k]], image_id
    # bad files: skipped, counted and named with their reasons; other names not listed at all
    assert report["images_listed"] == 8 and report["images_scored"] == 6 and report["files_ignored"] == 3
    bad = {Path(b["uri"]).name: b["reason"] for b in report["bad"]}
    assert bad == {"corrupt.png": "not_png", "truncated.png": "unreadable"}
    assert report["bad_by_reason"] == {"not_png": 1, "unreadable": 1}
    assert json.loads((out / "_report.json").read_text()) == report
    # overlays: the two most probable classes of each image, RGB at the checkpoint's size
    for _, row in table.iterrows():
        assert len(row["overlays"]) == 2
        top = np.argsort(-row[probs_cols].to_numpy().astype(float), kind="stable")[:2]
        assert [p.rsplit("-", 1)[1] for p in row["overlays"]] == [f"{probs_cols[k][5:]}.png" for k in top]
        for rel in row["overlays"]:
            with Image.open(out / rel) as im:
                assert im.mode == "RGB" and im.size == (SIZE, SIZE)


@pytest.mark.slow
def test_rerun_writes_nothing_and_a_resume_fills_only_the_gap(ray_local, folder_case, capsys):
    c = folder_case
    out = c["root"] / "out-rerun"
    opts = PredictOptions(str(c["checkpoint"]), str(c["images"]), out=str(out), rows_per_part=2, actors=2)
    first = run_predict(c["cfg"], opts)
    assert first["parts"] == 4 and first["parts_skipped"] == 0
    before = files_under(out)
    again = run_predict(c["cfg"], opts)
    assert files_under(out) == before  # not one file written again
    assert again["rerun"] and {k: v for k, v in again.items() if k != "rerun"} == first
    # the command line, on the published folder: its summary, and again nothing written
    args = ["--checkpoint", str(c["checkpoint"]), "--images", str(c["images"]), "--out", str(out)]
    args += ["--rows-per-part", "2", "--config", "tiny", "--set", f"storage.root={c['root']}", "--format", "json"]
    assert predict_main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images_scored"] == 6 and summary["bad_images"] == 2 and summary["rerun"]
    assert summary["threshold_rule"] == "f1-optimal per class on val" and files_under(out) == before
    table = pd.read_parquet(out).sort_values("image_id").reset_index(drop=True)
    # a killed run: one part and the manifest missing; the rerun scores that part only
    (out / "part-00001.parquet").unlink()
    (out / "_manifest.json").unlink()
    resumed = run_predict(c["cfg"], opts)
    assert resumed["parts"] == 4 and resumed["parts_skipped"] == 3 and resumed["images_scored"] == 6
    for name, (mtime, data) in before.items():
        if name.startswith("part-") and name != "part-00001.parquet":
            assert files_under(out)[name] == (mtime, data)
    pd.testing.assert_frame_equal(pd.read_parquet(out).sort_values("image_id").reset_index(drop=True), table)
    # other options on the same folder: stop before any work, naming the key (--force clears it: records.claim)
    after = files_under(out)
    with pytest.raises(StaleStageError, match="predict.rows_per_part"):
        run_predict(c["cfg"], PredictOptions(**{**opts.__dict__, "rows_per_part": 3}))
    assert files_under(out) == after


def write_dataset(storage: Storage, name: str, images: np.ndarray, labels: np.ndarray, splits: list[str]) -> None:
    """A prepared dataset in prepare's own format: one part, _labels.json, _cooccurrence.parquet, the manifest."""
    n, k = labels.shape
    rows = {
        "image_id": [f"img-{i:03d}" for i in range(n)],
        "patient_id": [f"p{i}" for i in range(n)],
        "split": splits,
        "projection": ["PA"] * n,
        "source": ["hand"] * n,
        "labels": labels.tolist(),
        "localizations": [[] for _ in range(n)],
        "bits_stored": [12] * n,
        "image": [encode_prepared(x) for x in images],
    }
    base = f"datasets/{name}"
    storage.write_parquet(f"{base}/part-00000.parquet", pa.Table.from_pydict(rows, schema=parquet_schema(k)))
    train = labels[np.asarray(splits) == "train"]
    storage.write_json(
        f"{base}/{LABELS}",
        {
            "classes": CLASSES,
            "groups": ["head", "medium", "tail"],
            "counts": {"train": dict(zip(CLASSES, train.sum(0).tolist(), strict=True))},
            "image_size": SIZE,
            "images": {s: splits.count(s) for s in ("train", "val", "test")},
        },
    )
    co = pa.Table.from_pandas(cooccurrence_frame(CLASSES, train.T @ train), preserve_index=False)
    storage.write_parquet(f"{base}/{COOCCURRENCE}", co)
    storage.publish(base, {"stage": "prepare"})


@pytest.mark.slow
def test_checkpoint_without_thresholds_chooses_them_on_val_and_scores_a_prepared_split(ray_local, tmp_path):
    rng = np.random.default_rng(1)
    n = 14
    images = rng.random((n, SIZE, SIZE)).astype(np.float32)
    labels = (rng.random((n, len(CLASSES))) < 0.5).astype(np.uint8)
    splits = ["train"] * 4 + ["val"] * 6 + ["test"] * 4
    storage = Storage(str(tmp_path))
    write_dataset(storage, "hand", images, labels, splits)
    cfg = model_config(tmp_path)
    info = DatasetInfo(
        "hand", CLASSES, ["head", "medium", "tail"], np.array([2, 2, 2]), np.eye(3, dtype=int), SIZE, [], {}
    )
    torch.manual_seed(1)
    model = build_model(cfg.model, len(CLASSES), info.cooccurrence)
    ckpt.write_local(tmp_path / "old", ckpt.checkpoint_files(model, cfg, info, 0, {}))  # as before thresholds
    assert "thresholds" not in json.loads((tmp_path / "old" / "meta.json").read_text())
    report = run_predict(cfg, PredictOptions(str(tmp_path / "old"), "dataset:test", out="predict-test"))
    # the thresholds: the rule on this checkpoint's val probabilities, computed here by hand
    stored = [decode_prepared(encode_prepared(x)) for x in images]
    val = [i for i, s in enumerate(splits) if s == "val"]
    expected, _, _ = f1_optimal(in_process(tmp_path / "old", [stored[i] for i in val]), labels[val])
    np.testing.assert_allclose(report["thresholds"]["values"], expected, atol=1e-6)
    assert report["thresholds"]["source"] == {"dataset": "hand", "split": "val"}
    assert (
        json.loads((tmp_path / "predict-test" / "_thresholds.json").read_text())["values"]
        == report["thresholds"]["values"]
    )
    # the test split's prepared rows, scored as the checkpoint scores them here
    table = pd.read_parquet(tmp_path / "predict-test").sort_values("image_id")
    test = [i for i, s in enumerate(splits) if s == "test"]
    assert table["image_id"].tolist() == [f"img-{i:03d}" for i in test] and table["uri"].isna().all()
    probs_cols, pred_cols = class_columns(CLASSES)
    got = table[probs_cols].to_numpy()
    np.testing.assert_allclose(got, in_process(tmp_path / "old", [stored[i] for i in test]), atol=1e-5)
    np.testing.assert_array_equal(table[pred_cols].to_numpy(), got >= np.asarray(report["thresholds"]["values"]))
    assert report["source"] == "dataset:hand:test" and report["bad_images"] == 0


@pytest.mark.slow
def test_an_s3_folder_is_listed_and_scored(folder_case, s3_bucket, s3_endpoint):
    """The same files on S3 (the loopback server), listed and scored by the scorer the actors run, in process; its
    part written to S3, then skipped when asked again."""
    from trcgl.config import to_dict
    from trcgl.predict.scorer import PartScorer
    from trcgl.predict.sources import list_source, part_payloads

    c = folder_case
    cfg = load_config("tiny", [f"storage.root=s3://{s3_bucket}/root", f"storage.endpoint_url={s3_endpoint}"])
    storage = Storage(cfg.storage.root, cfg.storage)
    for name in ("a.png", "sub/c.png", "f.dcm", "corrupt.png", "notes.txt"):
        storage.write_bytes(f"incoming/{name}", (c["images"] / name).read_bytes())
    listing = list_source(f"s3://{s3_bucket}/root/incoming", storage, "ds")
    assert listing.items["image_id"].tolist() == ["a.png", "corrupt.png", "f.dcm", "sub/c.png"]
    assert listing.items["uri"].tolist()[0] == f"s3://{s3_bucket}/root/incoming/a.png" and listing.ignored == 1
    scorer = PartScorer(str(c["checkpoint"]), storage.root, "out", c["thresholds"]["values"], to_dict(cfg.storage))
    items = json.loads(part_payloads(listing.items, 10)[0])["items"]
    done = scorer.write_part(0, items)
    assert done["written"] == 3 and not done["skipped"]
    assert [(b["image_id"], b["reason"]) for b in done["bad"]] == [("corrupt.png", "not_png")]
    table = pq.read_table(io.BytesIO(storage.read_bytes("out/part-00000.parquet"))).to_pandas()
    probs_cols, _ = class_columns(CLASSES)
    expected = in_process(c["checkpoint"], [pixels(c["images"] / n) for n in ("a.png", "f.dcm", "sub/c.png")])
    np.testing.assert_allclose(table[probs_cols].to_numpy(), expected, atol=1e-5)
    assert scorer.write_part(0, items)["skipped"]


def test_sources_that_cannot_be_scored_say_why(tmp_path):
    from trcgl.predict.sources import list_source

    storage = Storage(str(tmp_path))
    with pytest.raises(ConfigError, match="a table needs its column mapping"):
        list_source("table:/data/images.csv", storage, "ds")  # no data section mapping a table
    with pytest.raises(ConfigError, match="dataset:SPLIT or dataset:NAME:SPLIT"):
        list_source("dataset:a:b:c", storage, "ds")
    with pytest.raises(FileNotFoundError, match="no folder or file"):
        list_source(str(tmp_path / "absent"), storage, "ds")
    with pytest.raises(FileNotFoundError, match="not prepared"):
        list_source("dataset:val", storage, "ds")
