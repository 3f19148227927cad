"""The security scenario: a token-auth Ray head refuses calls without its token, and a real job run with a fake AWS
secret in the nodes' environment leaves that secret nowhere a reader of the run can reach.

:func:`security` starts a token-auth head (:func:`trcgl_dev.ray_head.token_head`) with the secret in its
environment, as an instance's environment would hold it; checks that calls without the token or with a wrong one are
refused (:func:`token_auth_refusal`); runs one real job on it (:func:`run_job`: by default the tiny prepare job; the
test suite runs the whole tiny pipeline there, which its end-to-end test then reads back) and scans everything the
job left (saved configs, job logs, the Jobs API, Ray's session logs) for the secret (:func:`scan_for_secrets`).
Processes started here are stopped by pid and process group; nothing runs ``ray stop``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets as pysecrets
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trcgl_dev.faults import Figures
from trcgl_dev.ray_head import TokenHead, http_get, ray_cli, token_head

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
CLUSTER_DIR = REPO / "cluster"
_REFUSAL_WORDS = ("401", "403", "unauthorized", "token")  # what a refusal's message says when it says why


@dataclass
class SubmitRefusal(Figures):
    """How ``ray job submit`` fared against the token head with the wrong credentials.

    Attributes:
        refused: the CLI failed.
        says_why: its output names 401, 403, unauthorized or token.
        returncode: its exit code.
        message: its last output line (shortened).
    """

    refused: bool
    says_why: bool
    returncode: int
    message: str


@dataclass
class TokenAuthResult(Figures):
    """What :func:`token_auth_refusal` measured.

    Attributes:
        http_no_token: status of ``GET /api/jobs/`` without a token (401 expected).
        http_wrong_token: the same with a wrong token (403 expected).
        http_with_token: the same with the head's token (200 expected).
        submit_no_token: ``ray job submit`` from a client that knows no token.
        submit_wrong_token: ``ray job submit`` with token auth on and a wrong token.
        jobs_created: jobs the head lists afterwards (0: none slipped in).
        seconds: wall time of the checks.
    """

    http_no_token: int
    http_wrong_token: int
    http_with_token: int
    submit_no_token: SubmitRefusal
    submit_wrong_token: SubmitRefusal
    jobs_created: int
    seconds: float


@dataclass
class JobResult(Figures):
    """What :func:`run_job` left and measured.

    Attributes:
        entrypoint: the job's command (``python -m jobs.X ...``).
        succeeded: ``ray job submit`` exited 0.
        seconds: wall time of the submission, waiting for the head's job agent included.
        job_id: the submission id.
        objects: objects the job wrote (all downloaded into the evidence folder).
        saved_configs: keys of the config.yaml files among them.
        log_tail: the end of the submit output (the job's log as ``ray job submit`` streams it).
        output_file: the whole submit output, in the evidence folder.
    """

    entrypoint: list[str]
    succeeded: bool
    seconds: float
    job_id: str
    objects: int
    saved_configs: list[str]
    log_tail: str
    output_file: str


@dataclass
class SecurityResult(Figures):
    """What :func:`security` measured.

    Attributes:
        token_auth: the refusal checks (:func:`token_auth_refusal`).
        job: the job run with the secret in the node's environment (:func:`run_job`).
        secret_in_node_env: a process of the head's group held the secret in its environment, so the job had it
            (None: no ``/proc`` to look in).
        scanned_files: files scanned.
        secret_found_in: the scanned files holding the secret (Ray's temp dir shown as ``<ray temp dir>``); must be
            empty.
        control_found: the scan found the secret in a control file written to hold it, so an empty
            ``secret_found_in`` means the scan works.
        seconds: wall time of the whole scenario.
    """

    token_auth: TokenAuthResult
    job: JobResult
    secret_in_node_env: bool | None
    scanned_files: int
    secret_found_in: list[str]
    control_found: bool
    seconds: float


def scan_for_secrets(paths: Iterable[Path], secrets: Sequence[str]) -> list[str]:
    """Every regular file under ``paths`` (files or folders, walked without following links) holding a secret.

    Args:
        paths: files and folders to scan; missing ones are skipped.
        secrets: literal strings to look for (bytes-wise, as UTF-8).

    Returns:
        Sorted paths (as strings) of the files that contain at least one of ``secrets``.
    """
    needles = [s.encode() for s in secrets if s]
    if not needles:
        return []
    found: set[str] = set()
    for root in paths:
        root = Path(root)
        if root.is_symlink() or not root.exists():
            continue
        files = [root] if root.is_file() else [Path(d) / f for d, _, names in os.walk(root) for f in names]
        for path in files:
            try:
                if path.is_symlink() or not path.is_file():  # sockets, fifos, links
                    continue
                data = path.read_bytes()
            except OSError:
                continue
            if any(n in data for n in needles):
                found.add(str(path))
    return sorted(found)


def _group_environ_holds(pgid: int, secret: str) -> bool | None:
    """Whether a live process of process group ``pgid`` has ``secret`` in its environment (None: no /proc)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) == pgid and secret.encode() in (entry / "environ").read_bytes():
                return True
        except OSError:
            continue
    return False


def _submit(
    head: TokenHead, env: dict[str, str], entrypoint: list[str], extra: Sequence[str] = (), timeout_s: float = 600
) -> subprocess.CompletedProcess[str]:
    cmd = [*ray_cli(), "job", "submit", "--address", head.address, *extra, "--", *entrypoint]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)


def _jobs(head: TokenHead) -> list[dict[str, Any]]:
    status, body = http_get(f"{head.address}/api/jobs/", head.token())
    if status != 200:
        raise RuntimeError(f"GET /api/jobs/ with the token gave {status}: {body[:300]}")
    return json.loads(body)


def token_auth_refusal(head: TokenHead) -> TokenAuthResult:
    """Calls the head's Jobs API without its token and with a wrong one, over HTTP and with ``ray job submit``, and
    counts the jobs the head lists afterwards."""
    started = time.monotonic()
    url = f"{head.address}/api/jobs/"
    http = (http_get(url)[0], http_get(url, "0" * 64)[0], http_get(url, head.token())[0])
    unaware = {k: v for k, v in head.env.items() if not k.startswith("RAY_AUTH")}  # a client that knows no token
    wrong = {**unaware, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": pysecrets.token_hex(32)}
    refusals = []
    for env in (unaware, wrong):
        done = _submit(head, env, ["python", "-c", "print('should never run')"], ["--no-wait"], timeout_s=120)
        text = (done.stdout + done.stderr).strip()
        refusals.append(
            SubmitRefusal(
                refused=done.returncode != 0,
                says_why=any(w in text.lower() for w in _REFUSAL_WORDS),
                returncode=done.returncode,
                message=text.splitlines()[-1][:300] if text else "",
            )
        )
    figures = TokenAuthResult(
        http_no_token=http[0],
        http_wrong_token=http[1],
        http_with_token=http[2],
        submit_no_token=refusals[0],
        submit_wrong_token=refusals[1],
        jobs_created=len(_jobs(head)),
        seconds=round(time.monotonic() - started, 3),
    )
    log.info("token auth refusal: %s", figures)
    return figures


def prepare_entrypoint(root: str, endpoint_url: str, overrides: Sequence[str] = ()) -> list[str]:
    """``python -m jobs.prepare --config tiny`` with storage at ``root`` on ``endpoint_url`` (the default job)."""
    return [
        "python", "-m", "jobs.prepare", "--config", "tiny", "--set", f"storage.root={root}",
        f"storage.endpoint_url={endpoint_url}", *overrides,
    ]  # fmt: skip


def run_job(
    head: TokenHead, entrypoint: Sequence[str], endpoint_url: str, bucket: str, evidence: Path, timeout_s: float = 900
) -> JobResult:
    """Submits ``entrypoint`` (a job writing to ``s3://bucket/...``) to the head with the cluster README's runtime
    env (``--runtime-env cluster/runtime_env.yaml``; ``--working-dir .`` names the same folder as its ``working_dir``
    and only makes the test independent of how the CLI resolves a relative path), and saves what a reader of the run
    can reach into
    ``evidence``: the job's logs, ``GET /api/jobs/``, and every object in the bucket.
    """
    import boto3

    evidence.mkdir(parents=True, exist_ok=True)
    entry = list(entrypoint)
    job_id = f"faults-{entry[2].split('.')[-1] if len(entry) > 2 else 'job'}-{uuid.uuid4().hex[:8]}"
    extra = ["--submission-id", job_id, "--working-dir", ".", "--runtime-env", "cluster/runtime_env.yaml"]
    started = time.monotonic()
    for _ in range(15):  # the head's job agent starts a little after its dashboard answers
        done = _submit(head, head.env, entry, extra, timeout_s)
        if "No available agent to submit job" not in done.stdout + done.stderr:
            break
        time.sleep(2)
    seconds = time.monotonic() - started
    (evidence / "submit-output.log").write_text(done.stdout + done.stderr)
    logs = subprocess.run(
        [*ray_cli(), "job", "logs", "--address", head.address, job_id],
        env=head.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    (evidence / "job-logs.log").write_text(logs.stdout + logs.stderr)
    (evidence / "api-jobs.json").write_text(json.dumps(_jobs(head), indent=2))
    s3 = boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1")
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for o in page.get("Contents", [])
    ]
    for key in keys:
        dest = evidence / "s3" / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, key, str(dest))
    figures = JobResult(
        entrypoint=entry,
        succeeded=done.returncode == 0,
        seconds=round(seconds, 3),
        job_id=job_id,
        objects=len(keys),
        saved_configs=sorted(k for k in keys if k.endswith("config.yaml")),
        log_tail=(done.stdout + done.stderr)[-4000:],
        output_file=str(evidence / "submit-output.log"),
    )
    log.info("%s on the token head: succeeded %s, %d objects", job_id, figures.succeeded, figures.objects)
    return figures


def security(
    endpoint_url: str,
    bucket: str,
    workdir: Path,
    secret: str | None = None,
    job_overrides: Sequence[str] = (),
    entrypoint: Sequence[str] | None = None,
    timeout_s: float = 900,
    head_env: Mapping[str, str] | None = None,
) -> SecurityResult:
    """Token refusal, then a real job run with a fake AWS secret in the nodes' environment, then a scan of everything
    the run left for that secret.

    The head is started with ``AWS_SECRET_ACCESS_KEY=<secret>`` (as an instance's environment would hold it) and the
    job gets it only from there, never from the runtime_env. Scanned: the repo's ``cluster/*.yaml`` and presets, the
    job's logs, ``GET /api/jobs/`` (runtime_env env vars are readable there), every object the job wrote (its saved
    config.yaml files included), the head's own log, its HOME and Ray's whole temp dir (session logs of the head and
    the job's workers). A control file holding the secret must be found, so an empty result means something.

    Args:
        endpoint_url: the S3-compatible endpoint the job writes to.
        bucket: an existing, empty bucket on it.
        workdir: scratch for the head and the evidence.
        secret: the fake secret; default: a fresh random one.
        job_overrides: more ``--set`` overrides for the default prepare job (e.g. a smaller ``synth.rows``).
        entrypoint: the job to run instead of the tiny prepare job (writing to ``bucket`` on ``endpoint_url``).
        timeout_s: how long the job may take.
        head_env: more environment for the head and so for the job's driver and workers (e.g. tests/test_offline.py's
            network blocker).
    """
    started = time.monotonic()
    workdir = Path(workdir)
    secret = secret or f"trcgl-fake-secret-{pysecrets.token_hex(16)}"
    evidence = workdir / "evidence"
    with token_head(workdir, {**(head_env or {}), "AWS_SECRET_ACCESS_KEY": secret}, keep_temp_dir=True) as head:
        try:
            refusal = token_auth_refusal(head)
            entry = entrypoint or prepare_entrypoint(f"s3://{bucket}/trcgl", endpoint_url, job_overrides)
            job = run_job(head, entry, endpoint_url, bucket, evidence, timeout_s)
            in_node_env = _group_environ_holds(head.pid, secret)  # the job did have it, from the node
        except BaseException:
            shutil.rmtree(head.temp_dir, ignore_errors=True)
            raise
    try:
        control = workdir / "control.txt"
        control.write_text(f"aws_secret_access_key = {secret}\n")
        targets = [
            *sorted(CLUSTER_DIR.glob("*.yaml")), *sorted((REPO / "jobs" / "configs").glob("*.yaml")),
            evidence, head.log_path, *([head.home] if head.home else []), head.temp_dir,
        ]  # fmt: skip
        scanned = sum(
            1 if t.is_file() else sum(len(files) for _, _, files in os.walk(t)) for t in targets if t.exists()
        )
        found = scan_for_secrets(targets, [secret])
        control_found = scan_for_secrets([control], [secret]) == [str(control)]
    finally:
        shutil.rmtree(head.temp_dir, ignore_errors=True)
    figures = SecurityResult(
        token_auth=refusal,
        job=job,
        secret_in_node_env=in_node_env,
        scanned_files=scanned,
        secret_found_in=[p.replace(str(head.temp_dir), "<ray temp dir>") for p in found],
        control_found=control_found,
        seconds=round(time.monotonic() - started, 3),
    )
    log.info(
        "security scenario: %d files scanned, secret found in %s, control found %s",
        figures.scanned_files, figures.secret_found_in, figures.control_found,
    )  # fmt: skip
    return figures
