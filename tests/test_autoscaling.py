"""GPU autoscaling on one machine: Ray's fake multi-node provider, trcgl's node types (cluster/local-autoscaling.yaml).

The cluster starts with no GPU node; ``jobs.generate`` asks for one GPU per actor with ``ray.autoscaling=true`` and
must make the autoscaler add GPU nodes, finish on them (fake GPUs: sampling falls back to the CPU, and says so) and
leave them to be removed after the idle timeout. The cluster is started and stopped by pid / process group, never
with ``ray stop``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from trcgl import ray_runtime
from trcgl.storage import GENERATE_PLAN
from trcgl_dev import local_cluster as rcl
from trcgl_dev.benchmarks.ray_autoscale_bench import RUN, generate_command

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
IDLE_TIMEOUT_MINUTES = 0.25  # the GPU nodes go 15 s after their last task (plus the autoscaler's period)
FALLBACK = "CUDA is not available on this node: sampling on the CPU"  # trcgl/diffusion/plan.py Generator
TRAIN_FALLBACK = "CUDA is not available on this node: training on the CPU"  # trcgl/train/ray_common.py train_device
# How far a run of the worker-kill reference config may end from the session's single-node run of it. No two runs of
# one config agree to float precision, on one node or two (a 2-rank all-reduce adds in one order wherever the ranks
# are). The bounds were set when the rows reached the ranks through Ray Data's split, which handed each rank other rows
# in another order every run; held rows are now one seeded permutation per epoch (trcgl.train.ray_common.WorkerRows),
# the same every run. Six runs on 2026-12-03 (three on one node, three on two nodes, two of them killed and resumed)
# ended at last-epoch loss 0.129-0.146 (13 % apart at most) and, on the 62-image val split, val mAP 0.165-0.226 and
# val mAUC 0.564-0.629 (0.061 and 0.065 apart at most); the bounds are about twice (loss) and one and a half times
# (val) the widest of those differences.
LOSS_SPREAD = 0.25  # relative
VAL_SPREAD = 0.1  # absolute, val mAP and val mAUC


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[rcl.LocalCluster]:
    """The autoscaling cluster (head only at start); stopped by process group and marker, then checked gone."""
    state = Path(tempfile.mkdtemp(prefix="trcgl-as-"))  # short: Ray's socket paths live under it
    cluster = rcl.up(state, idle_timeout_minutes=IDLE_TIMEOUT_MINUTES)
    try:
        yield cluster
    finally:
        rcl.down(state)
        left = rcl.leftover_processes(state)
        shutil.rmtree(state, ignore_errors=True)
        assert left == [], f"processes of the local cluster survived down(): {left}"


def test_missing_gpus_fail_fast_without_autoscaler(ray_local: None) -> None:
    from trcgl.ray_runtime import check_gpus

    with pytest.raises(ValueError, match=r"'generate.num_gpus' asks for 1 GPU.*0 GPUs.*ray.autoscaling is false"):
        check_gpus(1, False, "generate.num_gpus")


def test_generate_scales_gpu_nodes_from_zero_and_back(
    tiny_diffusion: dict, local_cluster: rcl.LocalCluster, tmp_path: Path
) -> None:
    root, dataset = tiny_diffusion["root"], tiny_diffusion["dataset"]
    config = ray_runtime.load_cluster_config(local_cluster.config)
    start = rcl.node_counts(local_cluster.dashboard_url, config, local_cluster.token())
    assert start == {"ray.head.default": 1, "gpu_worker": 0, "cpu_worker": 0}, start

    cmd = generate_command(
        Path(root), actors_max=2, extra=[f"train.dataset={dataset}", f"generate.model={tiny_diffusion['model']}"]
    )
    watch = rcl.run_watched(cmd, local_cluster, tmp_path / "generate.log", timeout_s=240, cwd=ROOT)
    tail = "\n".join(watch.log.splitlines()[-40:])
    assert watch.rc == 0, tail
    gpu_seen = [rcl.gpu_node_count(c, config) for _, c in watch.samples]
    assert gpu_seen and gpu_seen[0] == 0, gpu_seen[:5]  # from zero ...
    assert max(gpu_seen) >= 1, gpu_seen  # ... up (the pool's max is 2: logged, not required on 2 cores)
    print(f"GPU nodes seen while generating: max {max(gpu_seen)}, samples {gpu_seen}")
    assert FALLBACK in watch.log, tail  # fake GPUs: the generator says it samples on the CPU

    out = Path(root) / "runs" / RUN / "synthetic"
    plan = pq.read_table(out / GENERATE_PLAN).to_pandas()
    ids = [i for p in sorted(out.glob("part-*.parquet")) for i in pq.read_table(p, columns=["image_id"])["image_id"]]
    ids = [i.as_py() for i in ids]
    assert len(ids) == len(set(ids)) == len(plan), (len(ids), len(set(ids)), len(plan))
    assert set(ids) == set(plan["image_id"])

    idle_s = IDLE_TIMEOUT_MINUTES * 60
    gone_at, after = rcl.wait_for_gpu_nodes(local_cluster, 0, timeout_s=idle_s + 60)
    assert gone_at is not None, f"GPU nodes still alive {idle_s + 60:.0f} s after the job: {after[-1][1]}"
    print(f"GPU nodes gone {gone_at - watch.ended:.1f} s after the job (idle timeout {idle_s:.0f} s)")


def test_sweep_with_one_gpu_per_trial_scales_gpu_nodes(
    tiny_prepared: tuple[str, str], local_cluster: rcl.LocalCluster, tmp_path: Path
) -> None:
    """2 trials at once, each one Train worker holding 1 GPU: the autoscaler adds a GPU node per trial (the pool's
    max of 2), both trials finish on the fake GPUs (the workers fall back to the CPU and say so; the process group
    is gloo) and each is on the leaderboard once. (Scale-down is the generate test's check.)"""
    import sys

    root, dataset = tiny_prepared
    config = ray_runtime.load_cluster_config(local_cluster.config)
    # the generate test (same module) may have left GPU nodes that are still idling out
    rcl.wait_for_gpu_nodes(local_cluster, 0, timeout_s=IDLE_TIMEOUT_MINUTES * 60 + 60)
    cmd = [
        sys.executable, "-m", "jobs.sweep", "--config", "tiny", "--set", f"storage.root={root}",
        f"train.dataset={dataset}", "train.run=gpusweep", "ray.autoscaling=true", "train.use_gpu=true",
        "train.gpus_per_worker=1", "train.num_workers=1", "train.epochs=1", "train.bootstrap=10",
        # named here, so the named key is what this test covers; the DDP test below covers "auto" on fake GPUs
        "train.dist_backend=gloo",
        "sweep.num_samples=2", "sweep.max_concurrent_trials=2", "sweep.scheduler=fifo",
        "sweep.space={train.lr: {type: loguniform, low: 0.001, high: 0.004}}",
    ]  # fmt: skip
    watch = rcl.run_watched(cmd, local_cluster, tmp_path / "sweep.log", timeout_s=420, cwd=ROOT)
    tail = "\n".join(watch.log.splitlines()[-40:])
    assert watch.rc == 0, tail
    gpu_seen = [rcl.gpu_node_count(c, config) for _, c in watch.samples]
    assert gpu_seen and gpu_seen[0] == 0, gpu_seen[:5]
    # Both trials start together (2 samples, 2 slots; their drivers need 0.01 CPU each) and each one's Train worker
    # holds the single GPU of a gpu_worker for its whole run, so while both train two GPU nodes are up at once. A
    # GPU node also lives on for the idle timeout after its last task, so the 1 s poll cannot miss the pair.
    assert max(gpu_seen) == 2, gpu_seen
    print(f"GPU nodes seen during the sweep: max {max(gpu_seen)}, samples {gpu_seen}")
    assert TRAIN_FALLBACK in watch.log, tail

    board = pq.read_table(Path(root) / "runs" / "gpusweep" / "sweep" / "leaderboard.parquet").to_pandas()
    assert len(board) == 2 and board["trial_id"].is_unique, board
    assert board["test_mAP"].notna().all() and board["error"].isna().all(), board[["trial_id", "error"]]


def test_ddp_across_two_nodes_trains_checkpoints_and_resumes_like_one_node(
    tiny_prepared: tuple[str, str], classifier_reference, local_cluster: rcl.LocalCluster, tmp_path: Path, record
) -> None:
    """The classifier driver kill (:func:`~trcgl_dev.faults.driver_kill.classifier_driver_kill`, README "Fault
    scenarios") with the run's 2 Train workers on 2 fake GPU nodes (STRICT_SPREAD, 1 GPU each), one process group
    across them (``train.dist_backend=auto``: the workers have no CUDA, so gloo). Its first invocation is killed
    once a checkpoint is registered, and the same command run again resumes from it. The run must feed every train
    row once an epoch over both nodes and end where the session's single-node run of the same config
    (``classifier_reference``: 2 workers on the test's local Ray) ends, within the spread of such runs. (The
    train-worker kill checks that a run under another name ignores a faulted run's checkpoints.)"""
    import os

    from trcgl_dev.faults.driver_kill import classifier_driver_kill
    from trcgl_dev.faults.ray_worker_kill import REFERENCE_EPOCHS
    from trcgl_dev.faults.run_files import read_history, rows_trained

    root, dataset = tiny_prepared
    run = "ddp-two-nodes"
    # the reference's config (same data, seed, epochs, workers), placed one worker per GPU node; the driver alone is
    # killed (the cluster lives on, as under `ray job submit`) once Ray Train has registered a checkpoint
    placed = ["ray.autoscaling=true", "train.use_gpu=true", "train.gpus_per_worker=1", "train.num_workers=2",
              "train.placement_strategy=STRICT_SPREAD"]  # fmt: skip
    env = {**os.environ, **local_cluster.env(), "PYTHONUNBUFFERED": "1"}
    r = record(classifier_driver_kill(Path(root), dataset, tmp_path, REFERENCE_EPOCHS, run=run, extra=placed, env=env))
    assert r.last_registered < REFERENCE_EPOCHS - 1, f"the run ended before the kill: {r}"
    assert r.rerun_rc == 0, r.rerun_log

    # resumed: the rerun trained from after the registered checkpoint, not from scratch, and each epoch once
    assert r.resumed_at_or_after_checkpoint, r
    assert r.epochs == REFERENCE_EPOCHS and r.epochs_unique, r
    folder = Path(root) / "runs" / run / "classifier"
    history = read_history(folder)
    assert history[0]["start_epoch"] == 0, history  # epoch 0 kept from the killed invocation

    # placement: every epoch's 2 ranks on 2 distinct nodes, each a gpu_worker of the cluster, one gloo group
    config = ray_runtime.load_cluster_config(local_cluster.config)
    kinds = {n["node_id"]: rcl.node_type_of(n, config) for n in rcl.list_nodes(local_cluster.dashboard_url,
                                                                                 local_cluster.token())}  # fmt: skip
    for h in history:
        nodes = [w["node_id"] for w in sorted(h["workers"], key=lambda w: w["rank"])]
        assert [w["rank"] for w in sorted(h["workers"], key=lambda w: w["rank"])] == [0, 1], h["workers"]
        assert len(set(nodes)) == 2, h["workers"]
        assert {kinds.get(n) for n in nodes} == {"gpu_worker"}, (h["workers"], kinds)
        assert h["dist_backend"] == "gloo", h
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["placement"]["workers"] == history[-1]["workers"], summary["placement"]
    first = (tmp_path / "first.log").read_text(errors="replace")
    assert TRAIN_FALLBACK in first, first[-3000:]  # fake GPUs: the workers trained on the CPU

    # rows: every train row once an epoch over the two nodes (the totals are an all-reduce across them), and as many
    # rows over the run as the single-node run
    reference = read_history(Path(root) / "runs" / classifier_reference.run / "classifier")
    assert r.each_row_once, history
    assert rows_trained(history) == rows_trained(reference) > 0

    # results: where the single-node run ended, within the spread of runs of this config (LOSS_SPREAD, VAL_SPREAD)
    last, ref = history[-1], reference[-1]
    print(f"two nodes vs one: loss {last['train_loss']:.4f} vs {ref['train_loss']:.4f}, val mAP "
          f"{last['val_mAP']:.4f} vs {ref['val_mAP']:.4f}, val mAUC {last['val_mAUC']:.4f} vs {ref['val_mAUC']:.4f}, "
          f"test mAUC {summary['test']['mAUC']:.4f} vs {classifier_reference.result['test']['mAUC']:.4f}")  # fmt: skip
    assert abs(last["train_loss"] - ref["train_loss"]) <= LOSS_SPREAD * ref["train_loss"], (last, ref)
    assert abs(last["val_mAP"] - ref["val_mAP"]) <= VAL_SPREAD, (last, ref)
    assert abs(last["val_mAUC"] - ref["val_mAUC"]) <= VAL_SPREAD, (last, ref)


def test_gpu_request_no_node_type_can_hold_fails_fast(local_cluster: rcl.LocalCluster, monkeypatch) -> None:
    """4 GPUs per actor when the largest GPU node type has 1: waiting would be forever, so fail at once."""
    monkeypatch.setenv(ray_runtime.CONFIG_ENV, local_cluster.config)  # what LocalCluster.env() gives every job
    with pytest.raises(ValueError, match=r"'generate.num_gpus' asks for 4 GPU.*'gpu_worker', has 1 GPU") as err:
        ray_runtime.check_gpus_feasible(4, "generate.num_gpus")
    assert local_cluster.config in str(err.value)
    ray_runtime.check_gpus_feasible(1, "generate.num_gpus")  # fits a gpu_worker: the autoscaler will add one
    ray_runtime.check_gpus_feasible(0, "generate.num_gpus")
    monkeypatch.delenv(ray_runtime.CONFIG_ENV)
    cpu_only = {
        "head_node_type": "h",
        "available_node_types": {"h": {"resources": {"CPU": 0}}, "w": {"resources": {"CPU": 8}, "max_workers": 4}},
    }
    assert ray_runtime.largest_gpu_node_type(cpu_only) == (None, 0.0)


def test_local_cluster_config_passes_the_launchers_validation() -> None:
    """The resolved template passes the launcher's JSON-schema validation (prepare_config cannot run: the wheel lacks
    the fake provider's example.yaml that it merges defaults from)."""
    import copy

    from ray.autoscaler._private.util import validate_config

    config = rcl.resolve_config("127.0.0.1:6379")
    validate_config(copy.deepcopy(config))
    assert config["provider"]["type"] == "fake_multinode" and config["provider"]["gcs_address"] == "127.0.0.1:6379"
    types = ray_runtime.node_types(config)
    assert rcl.head_resources(config) == {"CPU": 0, "GPU": 0}, "the head runs no work"
    assert types["gpu_worker"]["min_workers"] == 0 and types["gpu_worker"]["max_workers"] == 2
    assert types["cpu_worker"]["resources"].get("GPU", 0) == 0
