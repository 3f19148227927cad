"""Storage roots on the local filesystem and on a real S3-compatible server (moto on loopback)."""

import pyarrow as pa
import pytest

from trcgl.config import ConfigError, StorageConfig
from trcgl.errors import StorageError
from trcgl.storage import Storage, dataset_dir, parse_uri


def test_parse_uri():
    assert parse_uri("s3://bucket/a/b/").path == "bucket/a/b"
    assert parse_uri("s3://bucket").uri == "s3://bucket"
    assert parse_uri("./runs").scheme == "file" and parse_uri("./runs").path.startswith("/")
    with pytest.raises(ConfigError, match="gs://x"):
        parse_uri("gs://x/y")
    with pytest.raises(ConfigError, match="no bucket"):
        parse_uri("s3:///prefix")


def _exercise(storage: Storage) -> None:
    storage.check_writable()
    d = dataset_dir("ds")
    assert storage.manifest(d) is None
    storage.write_json(f"{d}/labels.json", {"classes": ["a"]})
    storage.write_parquet(f"{d}/part-00000.parquet", pa.table({"x": [1, 2, 3]}))
    storage.write_bytes(f"{d}/sub/blob.bin", b"\x00" * 10)
    with pytest.raises(FileNotFoundError):
        list(storage.iter_manifest_files(d))  # nothing is trusted before the manifest
    manifest = storage.publish(d, {"stage": "test", "config_hash": "abc"})
    assert set(manifest["files"]) == {"labels.json", "part-00000.parquet", "sub/blob.bin"}
    assert manifest["files"]["sub/blob.bin"] == 10
    assert storage.manifest(d)["config_hash"] == "abc"
    assert list(storage.iter_manifest_files(d, ".parquet")) == [f"{d}/part-00000.parquet"]
    assert storage.read_json(f"{d}/labels.json") == {"classes": ["a"]}
    assert storage.list_files(d) == [
        f"{d}/_manifest.json",
        f"{d}/labels.json",
        f"{d}/part-00000.parquet",
        f"{d}/sub/blob.bin",
    ]
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(f"{d}/nope.json")
    storage.write_bytes(f"{d}/labels.json", b"{}")  # overwrite is whole
    assert storage.read_json(f"{d}/labels.json") == {}


def test_local_root(tmp_path):
    storage = Storage(str(tmp_path / "root"))
    _exercise(storage)
    leftovers = [p for p in (tmp_path / "root").rglob("*") if ".tmp-" in p.name]
    assert leftovers == []


@pytest.mark.parametrize("client", ["s3fs", "pyarrow"])
def test_s3_root(s3_endpoint, s3_bucket, client):
    storage = Storage(f"s3://{s3_bucket}/prefix", StorageConfig(endpoint_url=s3_endpoint, s3_client=client))
    _exercise(storage)
    assert storage.fsspec_fs.exists(f"{s3_bucket}/prefix/datasets/ds/labels.json")


def test_unwritable_roots_fail_with_the_root_named(tmp_path, s3_endpoint):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="not writable"):
        Storage(str(blocker / "sub")).check_writable()
    cfg = StorageConfig(endpoint_url=s3_endpoint, retries=1)
    with pytest.raises(StorageError, match=r"s3://no-such-bucket-xyz.*not writable.*127\.0\.0\.1"):
        Storage("s3://no-such-bucket-xyz/p", cfg).check_writable()


def test_storage_pickles_without_its_filesystem(s3_endpoint, s3_bucket):
    import pickle

    storage = Storage(f"s3://{s3_bucket}/p", StorageConfig(endpoint_url=s3_endpoint))
    storage.write_bytes("x", b"1")
    clone = pickle.loads(pickle.dumps(storage))
    assert clone.read_bytes("x") == b"1" and clone.root == storage.root
