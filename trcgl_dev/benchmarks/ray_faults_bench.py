"""``python -m jobs.benchmark faults``: every fault scenario of ``tests/faults/`` once, one line of figures each.

The scenarios run real components on this machine: a local Ray (started here, 2 CPUs; the driver-kill scenarios
start their jobs as further drivers on it), a moto S3 server on a free loopback port behind a
TCP proxy that is cut, a token-auth Ray head, real PNG files. The tiny PadChest-Synth is rendered and prepared once
under ``--workdir``. Scenarios (numbers as in the issue):

1. a Ray Train worker killed mid-epoch (classifier, diffusion);  2. the classifier job's driver killed, rerun;
3. generation killed after K of N images, rerun twice;  4. the sweep's driver killed, rerun;
5. corrupt images and malformed metadata rows in prepare;  6. S3 unreachable for 2 s / 8 s during a read, a write
and a checkpoint upload, and for 30 s during a write;  7. token auth and a credential scan;  8. bad configuration.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCENARIOS = (1, 2, 3, 4, 5, 6, 7, 8)


def _bucket(endpoint: str, name: str) -> str:
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


def _line(number: int, name: str, text: str) -> str:
    return f"faults  {number} {name:<22} {text}"


def prepare_tiny(root: Path) -> str:
    """Renders and prepares the tiny PadChest-Synth under ``root`` (each step skips work already done); returns the
    dataset's name."""
    from trcgl.config import load_config
    from trcgl.data.ray_prepare import run_prepare
    from trcgl.data.ray_synth import run_synthesize

    cfg = load_config("tiny", [f"storage.root={root}"])
    run_synthesize(cfg)
    return run_prepare(cfg)["dataset"]


def _fmt_worker(f: dict[str, Any]) -> str:
    mauc = (f"; test mAUC {f['test_mAUC']:.3f} vs {f['test_mAUC_no_fault']:.3f}"
            if f.get("test_mAUC") is not None else "")  # fmt: skip
    return (
        f"{'completed' if f['completed'] else 'FAILED ' + str(f['error'])}; recovery {f['recovery_s']} s; "
        f"resumed at epoch {f['resumed_from']} (last registered checkpoint: epoch {f['killed_after_epoch']}, "
        f"latest reported: {f['reported_before_kill']} epoch(s) -> resumed from the latest: "
        f"{f['resumed_from_latest']}); epochs once: {f['epochs_unique']}; rows once per epoch: {f['rows_ok']}; "
        f"last epoch's loss {f['final']:.3f} vs {f['final_no_fault']:.3f} without the fault{mauc}"
    )


def run_scenarios(workdir: Path, only: set[int]) -> list[str]:
    """Runs the chosen scenarios; returns the printed lines."""
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
    from trcgl_dev.faults.ray_worker_kill import REFERENCE_EPOCHS, reference_run

    # one fault-free diffusion model: scenario 1's reference and scenario 3's generator (as in the test suite)
    diffusion = reference_run(root, dataset, "diffusion", REFERENCE_EPOCHS) if only & {1, 3} else None
    classifier_reference = None
    if 2 in only:  # before 1: its fresh run under another name is scenario 1's classifier reference
        from trcgl_dev.faults.kills import classifier_driver_kill

        f = (
            classifier_driver_kill(root, dataset, workdir / "s2", epochs=REFERENCE_EPOCHS)
            if _mk(workdir / "s2")
            else {}
        )
        classifier_reference = f.pop("fresh_result")
        say(_line(2, "classifier driver kill",
                  f"killed at {f['killed_at_s']} s (registered checkpoint: epoch {f['last_registered']}, reported "
                  f"{f['reported']}); rerun rc {f['rerun_rc']} resumed at epoch {f['resumed_from']} (at/after the "
                  f"checkpoint: {f['resumed_at_or_after_checkpoint']}); epochs once: {f['epochs_unique']}; rows once: "
                  f"{f['rows_ok']}; another run name starts at epoch {f['fresh_start_epoch']}"))  # fmt: skip
    if 1 in only:
        from trcgl_dev.faults.ray_worker_kill import train_worker_kill

        for stage, ref in (("classifier", classifier_reference), ("diffusion", diffusion)):
            f = train_worker_kill(root, dataset, stage, REFERENCE_EPOCHS, reference=ref)
            say(_line(1, f"train worker kill/{stage[:4]}", _fmt_worker(f)))
    if 3 in only:
        from trcgl_dev.faults.generation_kill import generation_kill

        model = diffusion["model"] if diffusion else None
        f = generation_kill(root, dataset, workdir / "s3", model=model) if _mk(workdir / "s3") else {}
        say(_line(3, "generation kill",
                  f"killed after {f['killed_after_images']} of {f['planned']} images; after 2 reruns (rc "
                  f"{f['reruns_rc']}): {f['images']} images, {f['duplicates']} duplicates, {f['missing']} missing; "
                  f"byte-identical to an uninterrupted run: {f['identical_to_uninterrupted']}; 1 vs 2 actors and "
                  f"batch 4 vs 16 identical: {f['identical_actors_batch']}; second rerun rewrote "
                  f"{f['second_rerun_wrote']} parts"))  # fmt: skip
    if 4 in only:
        from trcgl_dev.faults.kills import sweep_driver_kill

        f = sweep_driver_kill(root, workdir / "s4") if _mk(workdir / "s4") else {}
        say(_line(4, "sweep driver kill",
                  f"killed at {f['killed_at_s']} s with {f['finished_before_kill']} trial(s) finished; rerun rc "
                  f"{f['rerun_rc']} restored the experiment: {f['resumed']}; leaderboard {f.get('trials')} trials "
                  f"({f.get('unique_trials')} unique), finished trials retrained {f.get('retrained')}, configs "
                  f"sampled twice {f.get('configs_sampled_twice')}"))  # fmt: skip
    if 5 in only:
        from trcgl_dev.faults.bad_inputs import corrupt_inputs

        f = corrupt_inputs(workdir / "s5") if _mk(workdir / "s5") else {}
        say(_line(5, "corrupt inputs",
                  f"job ok: {f['ok']}; good rows {f['kept']}/{f['good']} kept ({f['good_lost']} lost); bad inputs "
                  f"{f['bad_reported']}/{f['bad_planted']} reported with their reason ({len(f['wrong_reason'])} "
                  f"wrong reasons); duplicates {f['duplicates']}; {f['seconds']} s"))  # fmt: skip
    if only & {6, 7, 8}:
        from trcgl_dev.faults.s3 import moto_server

        with moto_server() as endpoint:
            if 6 in only:
                from trcgl_dev.faults.scenarios import s3_outage_matrix

                cases = [(op, s) for s in (2.0, 8.0) for op in ("read", "write", "checkpoint")] + [("write", 30.0)]
                for f in s3_outage_matrix(endpoint, _bucket(endpoint, "faults-s3"), cases, workdir / "s6"):
                    outcome = "survived" if f["survived"] else "failed loudly" if f["error"] else "FAILED SILENTLY"
                    named = f" (error names the endpoint: {f['error_names_endpoint']})" if f["error"] else ""
                    say(_line(6, f"s3 outage {f['outage_s']:.0f} s {f['op']}",
                              f"{outcome}{named} after {f['seconds']:.1f} s; partial output published: "
                              f"{f['partial_published']}"))  # fmt: skip
            if 7 in only:
                from trcgl_dev.faults.scenarios import cluster_start_commands_without_token, security

                f = security(endpoint, _bucket(endpoint, "faults-sec"), workdir / "s7")
                auth = f["token_auth"]
                unguarded = cluster_start_commands_without_token()
                say(_line(7, "security",
                          f"token auth: {_short(auth)}; job with the secret in the nodes' environment: "
                          f"{_short(f['job'])}; scanned {f['scanned_files']} files, secret found in "
                          f"{len(f['secret_found_in'])} (control found: {f['control_found']}); cluster start commands "
                          f"without token auth: {_short(unguarded)}"))  # fmt: skip
            if 8 in only:
                from trcgl_dev.faults.scenarios import bad_configs

                cases = bad_configs(endpoint)
                for c in cases:
                    say(_line(8, f"bad config {c['case']}"[:30],
                              f"{c['error_type']} in {c['seconds']:.2f} s, names the problem: {c['names_problem']}: "
                              f"{str(c['message'])[:110]}"))  # fmt: skip
    return lines


def _short(value: Any, limit: int = 160) -> str:
    text = str({k: v for k, v in value.items() if not str(k).endswith("log")} if isinstance(value, dict) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _mk(folder: Path) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    return True


def run(argv: list[str] | None = None) -> int:
    """The benchmark's entry (its own options)."""
    p = argparse.ArgumentParser(prog="python -m jobs.benchmark faults", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--workdir", default=None, help="scratch folder (default: a new temp folder, removed after)")
    p.add_argument("--only", type=int, nargs="+", default=list(SCENARIOS), help="scenario numbers to run (1-8)")
    args = p.parse_args(argv)
    unknown = sorted(set(args.only) - set(SCENARIOS))
    if unknown:
        p.error(f"--only: unknown scenario numbers {unknown}; known: {list(SCENARIOS)}")
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="trcgl-faults-"))
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    from trcgl_dev.faults.s3 import fake_credentials

    try:
        with fake_credentials():  # before Ray starts: its workers talk to the loopback S3 server too
            run_scenarios(workdir, set(args.only))
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"faults  all scenarios in {time.perf_counter() - t0:.0f} s", flush=True)
    return 0
