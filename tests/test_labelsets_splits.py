"""Label-set rules, padchest-top-N, patient-level splits, groups and co-occurrence."""

import numpy as np
import pytest

from trcgl.config import ConfigError, GroupConfig, SplitConfig
from trcgl.data import labelsets, splits
from trcgl.data.padchest import clean_metadata, read_metadata


def test_cxr_lt_30_has_the_30_classes_each_with_rules():
    ls = labelsets.load_file("cxr-lt-30")
    assert len(ls.classes) == 30 and ls.classes[0] == "normal"
    assert all(ls.rules[c] for c in ls.classes)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (["pacemaker"], ("support devices",)),
        (
            ["nsg tube", "central venous catheter via jugular vein"],
            ("support devices", "central venous catheter"),
        ),
        (["callus rib fracture"], ("fracture",)),
        (["hiatal hernia"], ("hernia",)),
        (["pseudonodule"], ()),
        (["subcutaneous emphysema"], ("subcutaneous emphysema",)),
        (["hydropneumothorax"], ("hydropneumothorax",)),
        (["normal", "cardiomegaly"], ("cardiomegaly",)),
        (["normal"], ("normal",)),
        (["chronic changes"], ()),
    ],
)
def test_mapping_rules(raw, expected):
    assert labelsets.load_file("cxr-lt-30").classes_of(raw) == expected


def test_unknown_label_set_lists_known():
    with pytest.raises(ConfigError, match=r"unknown label set 'cxr-lt-99'.*cxr-lt-30"):
        labelsets.resolve("cxr-lt-99")


def test_top_n_from_train_counts():
    train = [("a", "b"), ("a",), ("a", "c"), ("b",), ("unchanged",)]
    ls = labelsets.resolve("padchest-top-2", train)
    assert ls.classes == ("a", "b")
    assert ls.encode([("b", "c")]).tolist() == [[0, 1]]
    with pytest.raises(ConfigError, match="no raw finding"):
        labelsets.resolve("padchest-top-50", train)


def test_patient_split_has_no_leakage_on_real_metadata():
    kept, _ = clean_metadata(read_metadata(), ["PA", "AP", "AP_horizontal", "L"])
    cfg = SplitConfig(val_fraction=0.1, test_fraction=0.2, seed=0)
    s = splits.assign_splits(kept["patient_id"].tolist(), cfg)
    per_patient = kept.assign(split=s).groupby("patient_id")["split"].nunique()
    assert per_patient.max() == 1
    assert abs((s == "test").mean() - 0.2) < 0.02 and abs((s == "val").mean() - 0.1) < 0.02
    again = splits.assign_splits(kept["patient_id"].tolist(), cfg)
    assert (again == s).all()
    other = splits.assign_splits(kept["patient_id"].tolist(), SplitConfig(seed=1))
    assert (other != s).mean() > 0.2


def test_groups_and_cooccurrence():
    y = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 1, 0]], dtype=np.uint8)
    c = splits.cooccurrence(y)
    assert (c == c.T).all() and c.diagonal().tolist() == [3, 3, 1] and c[0, 1] == 2
    assert splits.group_of(np.array([0.5, 0.05, 0.005]), GroupConfig()) == ["head", "medium", "tail"]
    summary = splits.label_summary(["a", "b", "c"], y, np.array(["train", "train", "val", "test"]), GroupConfig())
    assert summary["counts"]["train"] == {"a": 2, "b": 1, "c": 0}
    assert summary["images"] == {"train": 2, "val": 1, "test": 1}
