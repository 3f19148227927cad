"""``python -m jobs.benchmark faults``: every fault scenario of ``tests/faults/`` once, one line of figures each.

The scenarios run real components on this machine: a local Ray (started here, 2 CPUs; the driver-kill scenarios
start their jobs as further drivers on it), a moto S3 server on a free loopback port behind a TCP proxy that is cut,
a token-auth Ray head, real PNG files. The tiny PadChest-Synth is rendered and prepared once under ``--workdir``.
Scenarios, by the name ``--only`` takes:

  train-worker-kill       a Ray Train worker killed mid-epoch (classifier, diffusion)
  classifier-driver-kill  the classifier job's driver killed, the same command rerun
  generation-kill         generation killed after K of N images, rerun twice
  sweep-driver-kill       the sweep's driver killed, the same command rerun
  corrupt-inputs          corrupt images and malformed metadata rows in prepare
  storage-outage          S3 unreachable for 2 s / 8 s during a read, a write and a folder upload (files, then the
                          manifest) through trcgl.storage, and for 30 s during a write
  security                token auth and a credential scan; token auth on every ``ray start`` of cluster/*.yaml
  bad-config              bad configuration at the real entry points

Each line starts with "ok" when the scenario passed the checks its test in ``tests/faults/`` makes, else with
"FAILED (the checks that failed)"; the command exits with status 1 when any line says FAILED.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trcgl_dev.faults.ray_worker_kill import (
    REFERENCE_EPOCHS,
    ReferenceRun,
    WorkerKillResult,
    reference_run,
    train_worker_kill,
)

if TYPE_CHECKING:
    from trcgl_dev.faults.storage_outage import OutageResult

log = logging.getLogger(__name__)


SCENARIOS = (
    "train-worker-kill",
    "classifier-driver-kill",
    "generation-kill",
    "sweep-driver-kill",
    "corrupt-inputs",
    "storage-outage",
    "security",
    "bad-config",
)


def _bucket(endpoint: str, name: str) -> str:
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


def _line(label: str, text: str) -> str:
    return f"faults  {label:<30} {text}"


def prepare_tiny(root: Path) -> str:
    """Renders and prepares the tiny PadChest-Synth under ``root`` (each step skips work already done); returns the
    dataset's name."""
    from trcgl.config import load_config
    from trcgl.data.ray_prepare import run_prepare
    from trcgl.data.ray_synth import run_synthesize

    cfg = load_config("tiny", [f"storage.root={root}"])
    run_synthesize(cfg)
    return run_prepare(cfg)["dataset"]


def _verdict(checks: dict[str, bool]) -> str:
    """ "ok" when every check holds, else "FAILED (names of the checks that did not)"."""
    failed = [name for name, held in checks.items() if not held]
    return "ok" if not failed else f"FAILED ({', '.join(failed)})"


def _worker_checks(f: WorkerKillResult) -> dict[str, bool]:
    """The checks of ``tests/faults/test_faults_worker_kill.py``."""
    checks = {
        "completed": f.completed and f.error is None,
        "new worker group": f.recovery_s is not None,
        "resumed from a registered checkpoint": f.resumed_from_registered,
        "epochs once": f.epochs_unique,
        "rows once per epoch": f.each_row_once,
        "reference epochs": f.epochs_no_fault == list(range(REFERENCE_EPOCHS)),
        "rows trained as without the fault": f.rows_trained == f.rows_trained_no_fault > 0,
    }
    if f.stage == "classifier":  # the diffusion loss barely moves between epochs: a figure only
        checks["last loss as without the fault"] = (
            f.final is not None
            and f.final_no_fault is not None
            and abs(f.final - f.final_no_fault) <= 0.35 * f.final_no_fault
        )
        fresh = f.other_run_start_epoch == 0 and f.other_run_epochs == list(range(REFERENCE_EPOCHS))
        checks["other run name starts fresh"] = bool(f.other_run) and fresh
    return checks


def _outage_checks(o: OutageResult) -> dict[str, bool]:
    """The checks of ``tests/faults/test_faults_storage_security_config.py`` for one outage: a short one
    (:data:`~trcgl_dev.faults.storage_outage.SHORT_OUTAGES`) survived in about its own length, the long one failed
    loudly in time."""
    from trcgl_dev.faults.storage_outage import SHORT_OUTAGES  # here: the module imports s3fs, which --help needs not

    if o.outage_s in SHORT_OUTAGES:
        return {
            "survived": o.survived and o.error is None,
            "nothing partial published": not o.partial_published,
            "took about the outage": o.outage_s - 0.5 <= o.seconds < o.outage_s + 20,
            "a later stage sees it complete": o.op != "folder" or o.later_stage_sees == "complete",
        }
    return {
        "failed": not o.survived,
        "loud, naming the endpoint": o.loud and o.error_names_endpoint,
        "nothing partial published": not o.partial_published and o.later_stage_sees in (None, "unfinished"),
        "within 60 s": o.seconds < 60,
    }


def _fmt_worker(f: WorkerKillResult) -> str:
    mauc = (f"; test mAUC {f.test_mauc:.3f} vs {f.test_mauc_no_fault:.3f}"
            if f.test_mauc is not None else "")  # fmt: skip
    loss = ("last epoch's loss n/a" if f.final is None or f.final_no_fault is None
            else f"last epoch's loss {f.final:.3f} vs {f.final_no_fault:.3f}")  # fmt: skip
    return (
        f"{'completed' if f.completed else 'did not complete: ' + str(f.error)}; recovery {f.recovery_s} s; "
        f"resumed at epoch {f.resumed_from} (last registered checkpoint: epoch {f.killed_after_epoch}, "
        f"latest reported: {f.reported_before_kill} epoch(s) -> resumed from the latest: "
        f"{f.resumed_from_latest}); epochs once: {f.epochs_unique}; rows once per epoch: {f.each_row_once}; "
        f"rows trained {f.rows_trained} vs {f.rows_trained_no_fault}; {loss} without the fault{mauc}"
        + (f"; another run name starts at epoch {f.other_run_start_epoch}" if f.other_run else "")
    )


def run_scenarios(workdir: Path, only: set[str]) -> int:
    """Runs the chosen scenarios (names of :data:`SCENARIOS`), printing one line of figures each.

    Returns:
        The number of printed lines whose verdict says FAILED (0: every scenario passed its checks).
    """
    import ray

    from trcgl.ray_runtime import local_dashboard

    failed: list[str] = []  # labels of the lines that said FAILED

    def say(label: str, checks: dict[str, bool], text: str) -> None:
        verdict = _verdict(checks)
        if verdict != "ok":
            failed.append(label)
        print(_line(label, f"{verdict}; {text}"), flush=True)

    root = workdir / "root"
    t0 = time.perf_counter()
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, log_to_driver=False, **local_dashboard())
    dataset = prepare_tiny(root)
    log.info("tiny dataset %s ready in %.0f s", dataset, time.perf_counter() - t0)

    # one fault-free diffusion model: the train-worker kill's diffusion reference and the generation kill's generator
    # (as in the test suite)
    diffusion = (
        reference_run(root, dataset, "diffusion", REFERENCE_EPOCHS)
        if only & {"train-worker-kill", "generation-kill"}
        else None
    )

    @functools.cache
    def classifier_reference() -> ReferenceRun:
        """The train-worker kill's fault-free classifier reference, trained on first use (as the test suite's
        ``classifier_reference`` fixture): the train-worker kill asks for it after its faulted run, so it is also
        that scenario's run under another name."""
        return reference_run(root, dataset, "classifier", REFERENCE_EPOCHS)

    if "train-worker-kill" in only:
        for stage in ("classifier", "diffusion"):
            ref = classifier_reference if stage == "classifier" else (diffusion.result if diffusion else None)
            w = train_worker_kill(root, dataset, stage, REFERENCE_EPOCHS, reference=ref)
            say(f"train-worker kill {stage}", _worker_checks(w), _fmt_worker(w))
    if "classifier-driver-kill" in only:  # on this Ray's single node (the suite runs it on two fake GPU nodes)
        from trcgl_dev.faults.driver_kill import classifier_driver_kill

        folder = _mk(workdir / "classifier-driver-kill")
        c = classifier_driver_kill(root, dataset, folder, epochs=REFERENCE_EPOCHS)
        say("classifier driver kill",
            {"rerun succeeded": c.rerun_rc == 0,
             "resumed at or after the checkpoint": c.resumed_at_or_after_checkpoint,
             "epochs once": c.epochs == REFERENCE_EPOCHS and c.epochs_unique,
             "rows once per epoch": c.each_row_once},
            f"killed at {c.killed_at_s} s (registered checkpoint: epoch {c.last_registered}, reported "
            f"{c.reported}); rerun rc {c.rerun_rc} resumed at epoch {c.resumed_from} (at/after the "
            f"checkpoint: {c.resumed_at_or_after_checkpoint}); epochs once: {c.epochs_unique}; rows once: "
            f"{c.each_row_once}")  # fmt: skip
    if "generation-kill" in only:
        from trcgl_dev.faults.generation_kill import generation_kill

        model = diffusion.result["model"] if diffusion else None
        g = generation_kill(root, dataset, _mk(workdir / "generation-kill"), model=model)
        say("generation kill",
            {"reruns succeeded": g.reruns_rc == [0, 0],
             "killed part-way": 0 < g.killed_after_images < g.planned,
             "exactly the planned images": g.images == g.planned and g.duplicates == 0 and g.missing == 0,
             "byte-identical to uninterrupted": g.identical_to_uninterrupted,
             "batches split differently": g.split_differently,
             "other actors and batches close": g.close_actors_batch,
             "second rerun wrote nothing": g.second_rerun_wrote == 0},
            f"killed after {g.killed_after_images} of {g.planned} images; after 2 reruns (rc "
            f"{g.reruns_rc}): {g.images} images, {g.duplicates} duplicates, {g.missing} missing; "
            f"byte-identical to an uninterrupted run: {g.identical_to_uninterrupted}; 1 vs 2 actors and "
            f"sampling calls {g.sampling_calls[0]} vs {g.sampling_calls[1]}: largest pixel difference "
            f"{g.max_step_difference} uint16 steps (byte-identical: {g.identical_actors_batch}); second rerun "
            f"rewrote {g.second_rerun_wrote} parts")  # fmt: skip
    if "sweep-driver-kill" in only:
        from trcgl_dev.faults.driver_kill import sweep_driver_kill

        s = sweep_driver_kill(root, _mk(workdir / "sweep-driver-kill"))
        say("sweep driver kill",
            {"rerun succeeded": s.rerun_rc == 0,
             "ASHA stopped a trial and the next one got the CPUs": s.stopped_before_kill >= 1
             and s.new_workers_at_kill == 2 and s.stopped_early == [False, True, False],
             "experiment restored": s.resumed and s.finished_before_kill >= 1,
             "finished and stopped trials kept, not retrained": s.retrained == 0 and bool(s.finished_kept),
             "each trial once": s.trials == s.unique_trials == 3,
             "no config sampled twice": s.configs_sampled_twice == 0},
            f"killed at {s.killed_at_s} s with {s.finished_before_kill} trial(s) finished and "
            f"{s.stopped_before_kill} stopped by ASHA, {s.new_workers_at_kill} new Train workers up; rerun rc "
            f"{s.rerun_rc} restored the experiment: {s.resumed}; "
            f"leaderboard {s.trials} trials ({s.unique_trials} unique), epochs {s.epochs}, stopped early "
            f"{s.stopped_early}, retrained {s.retrained}, configs sampled twice {s.configs_sampled_twice}")  # fmt: skip
    if "corrupt-inputs" in only:
        from trcgl_dev.faults.bad_inputs import corrupt_inputs

        b = corrupt_inputs(_mk(workdir / "corrupt-inputs"))
        say("corrupt inputs",
            {"job succeeded": b.job_succeeded,
             "every good row kept": b.good_lost == 0 and b.kept == b.good,
             "every bad input reported with its reason": b.bad_unreported == 0 and b.wrong_reason == [],
             "no bad image kept": b.bad_kept == [],
             "no duplicates": b.duplicates == 0},
            f"job ok: {b.job_succeeded}{'' if b.error is None else ' (' + b.error[:200] + ')'}; good rows "
            f"{b.kept}/{b.good} kept ({b.good_lost} lost); bad inputs {b.bad_reported}/{b.bad_planted} reported "
            f"with their reason ({len(b.wrong_reason)} wrong reasons); duplicates {b.duplicates}; "
            f"{b.seconds} s")  # fmt: skip
    if only & {"storage-outage", "security", "bad-config"}:
        from trcgl_dev.s3 import moto_server

        with moto_server() as endpoint:
            if "storage-outage" in only:
                from trcgl_dev.faults.storage_outage import OUTAGE_CASES, s3_outage_matrix

                outages = s3_outage_matrix(
                    endpoint, _bucket(endpoint, "faults-s3"), OUTAGE_CASES, _mk(workdir / "storage-outage")
                )
                for o in outages:
                    outcome = "survived" if o.survived else "failed loudly" if o.error else "FAILED SILENTLY"
                    named = f" (error names the endpoint: {o.error_names_endpoint})" if o.error else ""
                    say(f"s3 outage {o.outage_s:.0f} s {o.op}", _outage_checks(o),
                        f"{outcome}{named} after {o.seconds:.1f} s; partial output published: "
                        f"{o.partial_published}")  # fmt: skip
            if "security" in only:
                from trcgl_dev.faults.cluster_files import cluster_start_commands_without_token
                from trcgl_dev.faults.security import security

                sec = security(endpoint, _bucket(endpoint, "faults-sec"), _mk(workdir / "security"))
                unguarded = cluster_start_commands_without_token()
                auth = sec.token_auth
                say("security",
                    {"HTTP 401/403/200": (auth.http_no_token, auth.http_wrong_token, auth.http_with_token)
                     == (401, 403, 200),
                     "submits refused, saying why": all(
                         r.refused and r.says_why for r in (auth.submit_no_token, auth.submit_wrong_token)),
                     "no job created": auth.jobs_created == 0,
                     "job succeeded": sec.job.succeeded and bool(sec.job.saved_configs),
                     "secret in the node's environment": sec.secret_in_node_env is True,
                     "control found": sec.control_found,
                     "secret found nowhere": sec.secret_found_in == [],
                     "every ray start with token auth": unguarded.ray_start_commands >= 2
                     and unguarded.without_token == []},
                    f"token auth: {_short(auth)}; job with the secret in the nodes' environment: "
                    f"{_short(sec.job)}; scanned {sec.scanned_files} files, secret found in "
                    f"{len(sec.secret_found_in)} (control found: {sec.control_found}); cluster start commands "
                    f"without token auth: {_short(unguarded)}")  # fmt: skip
            if "bad-config" in only:
                from trcgl_dev.faults.bad_config import bad_configs

                storage_cases = ("missing bucket", "unwritable local root")  # must fail in the storage probe
                for c in bad_configs(endpoint):
                    say(f"bad config {c.case}"[:30],
                        {"raised": c.error_type is not None,
                         "names the problem": c.names_problem,
                         "in time": c.seconds < (120 if "job CLI" in c.case else 10),
                         "a StorageError": c.case not in storage_cases or c.error_type == "StorageError"},
                        f"{c.error_type} in {c.seconds:.2f} s, names the problem: {c.names_problem}: "
                        f"{c.message[:110]}")  # fmt: skip
    return len(failed)


def _short(value: Any, limit: int = 160) -> str:
    """A result's fields, logs left out, shortened to ``limit`` characters."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    text = str({k: v for k, v in value.items() if not str(k).endswith("log")} if isinstance(value, dict) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _mk(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def run(argv: list[str] | None = None) -> int:
    """The benchmark's entry (its own options).

    Returns:
        The number of lines that said FAILED (0: every scenario passed its checks).
    """
    p = argparse.ArgumentParser(prog="python -m jobs.benchmark faults", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--workdir", default=None, help="scratch folder (default: a new temp folder, removed after)")
    p.add_argument("--only", nargs="+", choices=SCENARIOS, default=list(SCENARIOS), metavar="SCENARIO",
                   help="scenarios to run, by name (default: all)")  # fmt: skip
    args = p.parse_args(argv)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="trcgl-faults-"))
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    from trcgl_dev.s3 import fake_credentials

    try:
        with fake_credentials():  # before Ray starts: its workers talk to the loopback S3 server too
            failed = run_scenarios(workdir, set(args.only))
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"faults  all scenarios in {time.perf_counter() - t0:.0f} s; lines that failed: {failed}", flush=True)
    return failed
