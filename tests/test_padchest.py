"""The PadChest loader on the real CSV shipped with torchxrayvision, and on hand-written malformed rows."""

import ast
import re
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from trcgl.data import labelsets
from trcgl.data.padchest import (
    _PLAIN_LIST,
    clean_metadata,
    default_metadata_path,
    literal_list,
    parse_list_cell,
    read_metadata,
)

FRONTAL = ["PA", "AP", "AP_horizontal"]


@pytest.fixture(scope="module")
def real():
    raw = read_metadata()
    kept, rejected = clean_metadata(raw, FRONTAL)
    return raw, kept, rejected


def test_row_counts_by_reason_match_direct_pandas_count(real):
    raw, kept, rejected = real
    direct = pd.read_csv(default_metadata_path(), low_memory=False, usecols=["ImageID", "Labels", "Projection"])
    assert len(raw) == len(direct) == 160861
    labels = direct["Labels"]
    missing = labels.isna()
    empty = labels.fillna("").str.replace(" ", "").isin(["[]", "['']"])
    has = lambda word: labels.fillna("").str.contains(rf"'\s*{word}\s*'", regex=True, flags=re.I)  # noqa: E731
    exclude = ~missing & ~empty & has("exclude")
    subopt = ~missing & ~empty & ~exclude & has("suboptimal study")
    usable = ~missing & ~empty & ~exclude & ~subopt
    proj = usable & ~direct["Projection"].isin(FRONTAL)
    by_reason = rejected["reason"].value_counts().to_dict()
    assert by_reason["labels_missing"] == missing.sum() == 103
    assert by_reason["labels_empty"] == empty.sum()
    assert by_reason["exclude"] == exclude.sum()
    assert by_reason["suboptimal_study"] == subopt.sum()
    assert by_reason["projection_not_kept"] == proj.sum()
    assert len(kept) == (usable & direct["Projection"].isin(FRONTAL)).sum()
    assert len(kept) + len(rejected) == len(raw)


def test_label_counts_match_direct_exact_token_count(real):
    _, kept, _ = real
    direct = pd.read_csv(default_metadata_path(), low_memory=False, usecols=["ImageID", "Labels"])
    direct = direct[direct["ImageID"].isin(set(kept["image_id"]))]
    for raw in ["cardiomegaly", "nodule", "pneumothorax", "emphysema"]:
        token = direct["Labels"].str.contains(rf"'\s*{raw}\s*'", regex=True, flags=re.I)  # exact item, any spacing
        ours = kept["raw_labels"].map(lambda r, raw=raw: raw in r)
        assert ours.sum() == token.sum(), raw
    # substring matching would mislabel: pseudonodule, subcutaneous emphysema, hydropneumothorax
    assert kept["raw_labels"].map(lambda r: "pseudonodule" in r and "nodule" not in r).sum() > 1000


def test_cxr_lt_30_mapping_on_real_rows(real):
    _, kept, _ = real
    ls = labelsets.load_file("cxr-lt-30")
    y = ls.encode(kept["raw_labels"].tolist())
    k = {c: i for i, c in enumerate(ls.classes)}
    assert y.shape == (len(kept), 30)
    assert (y.sum(axis=0) > 0).all(), "every class has positives in the real metadata"
    # normal never co-occurs with a finding after mapping
    assert (y[y[:, k["normal"]] == 1].sum(axis=1) == 1).all()
    # hydropneumothorax is a tail class and is not a pneumothorax by substring
    hydro = kept["raw_labels"].map(lambda r: "hydropneumothorax" in r and "pneumothorax" not in r).to_numpy()
    assert y[hydro, k["hydropneumothorax"]].all() and not y[hydro, k["pneumothorax"]].any()


@pytest.mark.parametrize(
    ("cell", "items", "reason"),
    [
        ("['Normal']", ("normal",), None),
        (
            "[' pleural  Effusion', 'cardiomegaly ', 'cardiomegaly']",
            ("pleural effusion", "cardiomegaly"),
            None,
        ),
        (np.nan, (), "labels_missing"),
        ("['']", (), "labels_empty"),
        ("[]", (), "labels_empty"),
        ("['pneumonia', 'nodule'", (), "labels_unparseable"),
        ("nodule", (), "labels_unparseable"),
        ("__import__('os').system('true')", (), "labels_unparseable"),
        ("[1, 2]", (), "labels_unparseable"),
    ],
)
def test_parse_list_cell(cell, items, reason):
    parsed = parse_list_cell(cell)
    assert parsed.items == items and parsed.reason == reason


def _outcome(parse: Callable[[str], object], text: str) -> object:
    """What ``parse(text)`` gives: its value, or the name of the error it raises."""
    try:
        return parse(text)
    except (ValueError, SyntaxError) as e:
        return type(e).__name__


def test_literal_list_is_literal_eval_on_every_real_cell_and_the_edge_cases(real):
    raw, _, _ = real
    cells = set(raw["Labels"].dropna().astype(str).str.strip()) | set(raw["Localizations"].dropna().str.strip())
    tricky = [
        "[]", "['a',]", "[ 'a' ,\t'b' ]", "['a'\n, 'b']", "[\f'a']", "['é']",  # the fast path's own forms
        "['a' 'b']", "['a\\\\b']", "['a\\nb']", '["a"]', "['it''s']", "('a',)",  # other literals
        "['a\nb']", "['a\x00b']", "[,]", "['a',,'b']", "['a'", "[\xa0'a']", "[\\xa0'a']",  # or none at all
    ]  # fmt: skip
    fast = 0
    for text in sorted(cells) + tricky:
        assert _outcome(literal_list, text) == _outcome(ast.literal_eval, text), text
        fast += bool(_PLAIN_LIST.fullmatch(text))
    # the fast path serves (nearly) every real cell, else it saves nothing
    assert fast >= 0.99 * len(cells) and len(cells) > 40_000, (fast, len(cells))


def test_malformed_rows_are_dropped_by_reason_and_good_rows_kept(tmp_path):
    header = "idx,ImageID,ImageDir,PatientID,Projection,Labels,Localizations,BitsStored_DICOM\n"
    rows = [
        "0,a.png,0,p1,PA,\"['normal']\",[],12",
        "1,b.png,0,p2,PA,,[],12",
        "2,c.png,0,p3,PA,\"['']\",[],12",
        "3,d.png,0,p4,PA,\"['nodule'\",[],12",
        '4,e.png,0,p5,PA,"nodule",[],12',
        "5,f.png,0,p6,WEIRD,\"['nodule']\",[],12",
        "6,a.png,0,p1,PA,\"['nodule']\",[],12",
        "7,g.png,0,p7,AP,\"['exclude']\",[],12",
        "8,h.png,1,p8,AP_horizontal,\"[' Cardiomegaly ', 'loc left']\",\"['loc left']\",10",
        "9,i.png,0,p9,PA,\"['normal']\",[],12,extra,fields",
    ]
    path = tmp_path / "meta.csv"
    path.write_text(header + "\n".join(rows) + "\n")
    raw = read_metadata(str(path))
    kept, rejected = clean_metadata(raw, FRONTAL)
    assert kept["image_id"].tolist() == ["a.png", "h.png"]
    reasons = dict(zip(rejected["image_id"], rejected["reason"], strict=True))
    assert reasons["b.png"] == "labels_missing"
    assert reasons["c.png"] == "labels_empty"
    assert reasons["d.png"] == reasons["e.png"] == "labels_unparseable"
    assert reasons["f.png"] == "projection_not_kept"
    assert reasons["g.png"] == "exclude"
    assert (rejected["reason"] == "duplicate_image_id").sum() == 1
    assert (rejected["reason"] == "ragged_row").sum() == 1
    h = kept.set_index("image_id").loc["h.png"]
    assert h["raw_labels"] == ("cardiomegaly", "loc left") and h["bits_stored"] == 10
    assert h["localizations"] == ("loc left",)
    assert rejected.loc[rejected["image_id"] == "d.png", "csv_row"].item() == 5


def test_missing_required_column_names_file_and_column(tmp_path):
    path = tmp_path / "meta.csv"
    path.write_text("ImageID,PatientID,Labels\na.png,p,['normal']\n")
    with pytest.raises(ValueError, match=r"meta.csv.*\['ImageDir', 'Projection'\]"):
        read_metadata(str(path))
