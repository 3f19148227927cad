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
  storage-outage          S3 unreachable for 2 s / 8 s during a read, a write and a checkpoint upload, and for 30 s
                          during a write
  security                token auth and a credential scan; token auth on every ``ray start`` of cluster/*.yaml
  bad-config              bad configuration at the real entry points
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
from typing import Any

from trcgl_dev.faults.ray_worker_kill import (
    REFERENCE_EPOCHS,
    ReferenceRun,
    WorkerKillResult,
    reference_run,
    train_worker_kill,
)

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


def _fmt_worker(f: WorkerKillResult) -> str:
    mauc = (f"; test mAUC {f.test_mauc:.3f} vs {f.test_mauc_no_fault:.3f}"
            if f.test_mauc is not None else "")  # fmt: skip
    loss = ("last epoch's loss n/a" if f.final is None or f.final_no_fault is None
            else f"last epoch's loss {f.final:.3f} vs {f.final_no_fault:.3f}")  # fmt: skip
    return (
        f"{'completed' if f.completed else 'FAILED ' + str(f.error)}; recovery {f.recovery_s} s; "
        f"resumed at epoch {f.resumed_from} (last registered checkpoint: epoch {f.killed_after_epoch}, "
        f"latest reported: {f.reported_before_kill} epoch(s) -> resumed from the latest: "
        f"{f.resumed_from_latest}); epochs once: {f.epochs_unique}; rows once per epoch: {f.each_row_once}; "
        f"{loss} without the fault{mauc}"
    )


def run_scenarios(workdir: Path, only: set[str]) -> list[str]:
    """Runs the chosen scenarios (names of :data:`SCENARIOS`); returns the printed lines."""
    import ray

    from trcgl.ray_runtime import local_dashboard

    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    root = workdir / "root"
    t0 = time.perf_counter()
    if not ray.is_initialized():
        ray.init(num_cpus=2, log_to_driver=False, **local_dashboard())
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
        ``classifier_reference`` fixture): the classifier driver kill asks for it after its kill, as its fresh run."""
        return reference_run(root, dataset, "classifier", REFERENCE_EPOCHS)

    if "classifier-driver-kill" in only:  # first: its fresh run is then the train-worker kill's reference
        from trcgl_dev.faults.driver_kill import classifier_driver_kill

        folder = _mk(workdir / "classifier-driver-kill")
        c = classifier_driver_kill(root, dataset, folder, epochs=REFERENCE_EPOCHS, fresh=classifier_reference)
        say(_line("classifier driver kill",
                  f"killed at {c.killed_at_s} s (registered checkpoint: epoch {c.last_registered}, reported "
                  f"{c.reported}); rerun rc {c.rerun_rc} resumed at epoch {c.resumed_from} (at/after the "
                  f"checkpoint: {c.resumed_at_or_after_checkpoint}); epochs once: {c.epochs_unique}; rows once: "
                  f"{c.each_row_once}; another run name starts at epoch {c.fresh_start_epoch}"))  # fmt: skip
    if "train-worker-kill" in only:
        for stage in ("classifier", "diffusion"):
            ref = classifier_reference() if stage == "classifier" else diffusion
            w = train_worker_kill(root, dataset, stage, REFERENCE_EPOCHS, reference=ref.result if ref else None)
            say(_line(f"train-worker kill {stage}", _fmt_worker(w)))
    if "generation-kill" in only:
        from trcgl_dev.faults.generation_kill import generation_kill

        model = diffusion.result["model"] if diffusion else None
        g = generation_kill(root, dataset, _mk(workdir / "generation-kill"), model=model)
        say(_line("generation kill",
                  f"killed after {g.killed_after_images} of {g.planned} images; after 2 reruns (rc "
                  f"{g.reruns_rc}): {g.images} images, {g.duplicates} duplicates, {g.missing} missing; "
                  f"byte-identical to an uninterrupted run: {g.identical_to_uninterrupted}; 1 vs 2 actors and "
                  f"batch 4 vs 16 identical: {g.identical_actors_batch}; second rerun rewrote "
                  f"{g.second_rerun_wrote} parts"))  # fmt: skip
    if "sweep-driver-kill" in only:
        from trcgl_dev.faults.driver_kill import sweep_driver_kill

        s = sweep_driver_kill(root, _mk(workdir / "sweep-driver-kill"))
        say(_line("sweep driver kill",
                  f"killed at {s.killed_at_s} s with {s.finished_before_kill} trial(s) finished; rerun rc "
                  f"{s.rerun_rc} restored the experiment: {s.resumed}; leaderboard {s.trials} trials "
                  f"({s.unique_trials} unique), finished trials retrained {s.retrained}, configs "
                  f"sampled twice {s.configs_sampled_twice}"))  # fmt: skip
    if "corrupt-inputs" in only:
        from trcgl_dev.faults.bad_inputs import corrupt_inputs

        b = corrupt_inputs(_mk(workdir / "corrupt-inputs"))
        say(_line("corrupt inputs",
                  f"job ok: {b.job_succeeded}; good rows {b.kept}/{b.good} kept ({b.good_lost} lost); bad inputs "
                  f"{b.bad_reported}/{b.bad_planted} reported with their reason ({len(b.wrong_reason)} "
                  f"wrong reasons); duplicates {b.duplicates}; {b.seconds} s"))  # fmt: skip
    if only & {"storage-outage", "security", "bad-config"}:
        from trcgl_dev.s3 import moto_server

        with moto_server() as endpoint:
            if "storage-outage" in only:
                from trcgl_dev.faults.storage_outage import s3_outage_matrix

                cases = [(op, s) for s in (2.0, 8.0) for op in ("read", "write", "checkpoint")] + [("write", 30.0)]
                outages = s3_outage_matrix(
                    endpoint, _bucket(endpoint, "faults-s3"), cases, _mk(workdir / "storage-outage")
                )
                for o in outages:
                    outcome = "survived" if o.survived else "failed loudly" if o.error else "FAILED SILENTLY"
                    named = f" (error names the endpoint: {o.error_names_endpoint})" if o.error else ""
                    say(_line(f"s3 outage {o.outage_s:.0f} s {o.op}",
                              f"{outcome}{named} after {o.seconds:.1f} s; partial output published: "
                              f"{o.partial_published}"))  # fmt: skip
            if "security" in only:
                from trcgl_dev.faults.cluster_files import cluster_start_commands_without_token
                from trcgl_dev.faults.security import security

                sec = security(endpoint, _bucket(endpoint, "faults-sec"), _mk(workdir / "security"))
                unguarded = cluster_start_commands_without_token()
                say(_line("security",
                          f"token auth: {_short(sec.token_auth)}; job with the secret in the nodes' environment: "
                          f"{_short(sec.job)}; scanned {sec.scanned_files} files, secret found in "
                          f"{len(sec.secret_found_in)} (control found: {sec.control_found}); cluster start commands "
                          f"without token auth: {_short(unguarded)}"))  # fmt: skip
            if "bad-config" in only:
                from trcgl_dev.faults.bad_config import bad_configs

                for c in bad_configs(endpoint):
                    say(_line(f"bad config {c.case}"[:30],
                              f"{c.error_type} in {c.seconds:.2f} s, names the problem: {c.names_problem}: "
                              f"{c.message[:110]}"))  # fmt: skip
    return lines


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
    """The benchmark's entry (its own options)."""
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
            run_scenarios(workdir, set(args.only))
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"faults  all scenarios in {time.perf_counter() - t0:.0f} s", flush=True)
    return 0
