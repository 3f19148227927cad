"""Shared fixtures: a real local Ray, a real S3-compatible server (moto) on loopback, a rendered tiny PadChest-Synth,
and the fault-free training runs several tests compare with.

Everything the fixtures start they stop themselves, by handle or pid; nothing here runs ``ray stop``. The shared
training runs are session-scoped fixtures: pytest builds one the first time a test asks for it, whichever test that
is, and hands the same value to every later test, so no test depends on another having run first.
"""

from __future__ import annotations

import compileall
import os
import secrets
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from xdist.scheduler import LoadGroupScheduling  # pytest-xdist: a test dependency (pyproject.toml)

from trcgl_dev.faults import record_figures
from trcgl_dev.faults.ray_worker_kill import REFERENCE_EPOCHS, ReferenceRun, reference_run
from trcgl_dev.faults.storage_outage import OUTAGE_CASES, OutageResult, s3_outage_matrix
from trcgl_dev.s3 import FAKE_CREDENTIALS

# Test-only credentials for the loopback S3 server, from the environment as in production (never from config).
# Set before Ray starts (and before anything imports ray) so its workers inherit them.
for _key, _value in FAKE_CREDENTIALS.items():
    os.environ[_key] = _value  # real credentials, if any, are never sent to the loopback server
os.environ["RAY_DISABLE_USAGE_STATS"] = "1"
# Ray Train's fixed costs per run, which the suite's ~40 classifier runs pay on 2 cores: no preemption watcher (an
# extra actor process per worker group, watching for spot-node notices no test sends) and worker polling every 1 s
# instead of 2 s (a finished run is seen sooner). Ray's processes inherit these from the test process.
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "1")
# Ray's log monitor globs its session's log folder for new files on every pass, ten a second, while there are fewer
# than this many files; at 0 it globs every 0.5 s (LOG_NAME_UPDATE_INTERVAL_S in ray/_private/log_monitor.py).
# Worker lines still reach their drivers, found at most half a second later (BENCHMARKS.md, "Where the suite's time
# goes").
os.environ.setdefault("RAY_LOG_MONITOR_MANY_FILES_THRESHOLD", "0")
# One lung atlas for the whole run: every process that renders PadChest-Synth (render tasks, job drivers, the token
# head's workers) would otherwise build it from the package's mask zip, about 14 s each
# (trcgl.data.synth.atlas.load_lung_atlas); the tests of the cache itself set their own path.
os.environ.setdefault("TRCGL_LUNG_ATLAS_CACHE", os.path.join(tempfile.mkdtemp(prefix="trcgl-atlas-"), "atlas.npz"))
# The project's bytecode, written once per change: with $PYTHONDONTWRITEBYTECODE set (as on the 2-core development
# machine) Python never caches it, so every Ray worker and job process the tests start would compile the modules it
# imports again (BENCHMARKS.md, "Where one tiny training run's time goes"). compileall writes __pycache__
# (git-ignored) whatever that setting says and skips the files already up to date; Python reads them either way.
for _package in ("trcgl", "jobs", "trcgl_dev"):
    compileall.compile_dir(Path(__file__).resolve().parent.parent / _package, quiet=1)
os.environ.pop("RAY_ADDRESS", None)
os.environ.pop("AWS_ENDPOINT_URL", None)
# A token file of this test run's own (0600), so tests never touch ~/.ray/auth_token.
if "RAY_AUTH_TOKEN_PATH" not in os.environ:
    _token_path = os.path.join(tempfile.mkdtemp(prefix="trcgl-ray-auth-"), "auth_token")
    with open(os.open(_token_path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as _fh:
        _fh.write(secrets.token_hex(32))
    os.environ["RAY_AUTH_TOKEN_PATH"] = _token_path


OFFLINE_BLOCKER = Path(__file__).resolve().parent / "_offline"  # its sitecustomize.py blocks outbound network
OFFLINE_FLAGS = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def offline_additions(log: Path) -> dict[str, str]:
    """What a process's environment needs to run offline (tests/test_offline.py): the blocker first on
    ``PYTHONPATH``, the hub libraries in their offline mode, the blocker's events logged to ``log``."""
    path = os.pathsep.join([str(OFFLINE_BLOCKER), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {"PYTHONPATH": path, **OFFLINE_FLAGS, "TRCGL_OFFLINE_LOG": str(log), "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A real local Ray with 2 CPUs for the whole session."""
    import ray

    from trcgl.ray_runtime import local_dashboard

    if not ray.is_initialized():
        # address="local": a new instance, never the last cluster a `ray start` on this host wrote down
        ray.init(address="local", num_cpus=2, log_to_driver=False, **local_dashboard())
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on a free loopback port; yields its endpoint URL; stopped by pid at the end."""
    from trcgl_dev.s3 import moto_server

    with moto_server() as url:
        yield url


@pytest.fixture()
def s3_bucket(s3_endpoint: str) -> str:
    """A fresh, empty bucket on the moto server; returns its name."""
    import boto3

    # imported here, not at the top: trcgl.ray_runtime imports ray, which must not load before the set-up above
    from trcgl.ray_runtime import free_port

    name = f"trcgl-test-{free_port()}"  # a number no other bucket of this server has now
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


def tiny_overrides(root: str | Path, *extra: str) -> list[str]:
    return [f"storage.root={root}", *extra]


@pytest.fixture(scope="session")
def tiny_synth(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny PadChest-Synth rendered once per session (real Ray Data job); returns its report and config."""
    from trcgl.config import load_config
    from trcgl.data.ray_synth import run_synthesize

    root = tmp_path_factory.mktemp("synth-root")
    cfg = load_config("tiny", tiny_overrides(root))
    report = run_synthesize(cfg)
    return {"root": str(root), "report": report, "cfg": cfg}


@pytest.fixture(scope="session")
def tiny_prepared(tiny_synth: dict) -> tuple[str, str]:
    """The tiny PadChest-Synth prepared once per session; returns (storage root, dataset name)."""
    from trcgl.data.ray_prepare import run_prepare

    report = run_prepare(tiny_synth["cfg"])
    return tiny_synth["root"], report["dataset"]


@pytest.fixture(scope="session")
def tiny_diffusion(tiny_prepared: tuple[str, str]) -> dict[str, Any]:
    """A tiny diffusion model trained once per session, for the tests that need a trained one: the fault-free
    diffusion reference of the train-worker kill (its configuration,
    :func:`trcgl_dev.faults.ray_worker_kill.fault_overrides`), also the generator of the generation kill, the
    generate and fidelity test and the autoscaling tests.

    Returns:
        root, dataset, result (``run_train_diffusion``'s) and model (its URI, for ``generate.model``).
    """
    root, dataset = tiny_prepared
    result = reference_run(Path(root), dataset, "diffusion", REFERENCE_EPOCHS).result
    return {"root": root, "dataset": dataset, "result": result, "model": result["model"]}


@pytest.fixture(scope="session")
def classifier_reference(tiny_prepared: tuple[str, str]) -> ReferenceRun:
    """A fault-free classifier run with the train-worker kill's configuration
    (:func:`trcgl_dev.faults.ray_worker_kill.fault_overrides`), trained once per session when a test first asks.

    The train-worker kill compares its faulted classifier with it, and the classifier driver kill on two nodes
    (tests/test_autoscaling.py) its resumed run. The train-worker kill asks for it (through a function it calls)
    only after its faulted run, so that the run, begun beside the faulted run's checkpoints, also shows that another
    run name starts at epoch 0; when the run was trained earlier for another test, the scenario trains a run of its
    own for that check, so neither test's checks depend on the order the tests run in.
    """
    root, dataset = tiny_prepared
    return reference_run(Path(root), dataset, "classifier", REFERENCE_EPOCHS)


# The whole tiny pipeline as the end-to-end job: one epoch per stage but a final run of two (so the final stage
# trains rather than reusing the trial: tests/test_pipeline_rerun.py reruns this run), synthesis by editing real
# negatives inside their regions as the demo does (tiny itself samples), a one-trial sweep over lr and the GCN switch,
# and channels-last (a GPU code path that exists on CPU) inside real jobs. torch.compile (tens of seconds per
# training process) runs in tests/test_train.py's six-epoch run, whose learning, resume and evaluate checks cover it.
# One Train worker per run (the job's four Ray Train runs, diffusion, baseline, trial and final, and the reruns'
# four): a second worker is one more process importing torch, Ray Train, torch_geometric and timm, about a quarter of
# a tiny run's CPU (BENCHMARKS.md, "Where one tiny training run's time goes"). Training across two workers is what
# tests/test_train.py, the worker kill and the sweep driver kill (tests/faults) and the classifier driver kill on two
# nodes (tests/test_autoscaling.py) check.
PIPELINE_JOB_SET = [
    "sweep.num_samples=1", "train.epochs=1", "pipeline.final_epochs=2", "train.bootstrap=10", "diffusion.epochs=1",
    "train.num_workers=1",
    "generate.mode=edit", "generate.region=true", "generate.fidelity_threshold=0.0",
    "sweep.space={train.lr: {type: loguniform, low: 0.001, high: 0.004}, "
    "model.gcn: {type: choice, values: [true, false]}}",
    "train.channels_last=true",
]  # fmt: skip


def run_pipeline_on_token_head(s3_endpoint: str, tmp: Path) -> dict[str, Any]:
    """The tiny pipeline submitted as a Ray job to a token-auth head whose environment holds this run's (random)
    fake AWS secret and blocks outbound network, with storage on the loopback S3 server: the security scenario
    (:func:`trcgl_dev.faults.security.security`) around the end-to-end job, so one head and one job serve the
    token and secret-leak checks (tests/faults), the offline check (tests/test_offline.py), the end-to-end read-back
    (tests/test_pipeline_jobs.py) and the reruns of the same config (tests/test_pipeline_rerun.py).

    Returns:
        root (the s3:// storage root), endpoint, security (the scenario's result, the job's among it), tmp (a
        scratch folder) and offline_log (the network blocker's events from the head's processes).
    """
    import boto3

    from trcgl.ray_runtime import free_port
    from trcgl_dev.faults.security import security

    bucket = f"trcgl-test-{free_port()}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    root = f"s3://{bucket}/trcgl"
    entry = [
        "python", "-m", "jobs.pipeline", "--config", "tiny", "--set", f"storage.root={root}",
        f"storage.endpoint_url={s3_endpoint}", *PIPELINE_JOB_SET,
    ]  # fmt: skip
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]  # random per test run (above): the job's own credentials
    offline_log = tmp / "offline.jsonl"
    result = security(
        s3_endpoint, bucket, tmp / "security", secret=secret, entrypoint=entry, timeout_s=1200,
        head_env=offline_additions(offline_log),
    )  # fmt: skip
    return {"root": root, "endpoint": s3_endpoint, "security": result, "tmp": tmp, "offline_log": offline_log}


def run_s3_outages(s3_endpoint: str, tmp: Path) -> dict[tuple[str, float], OutageResult]:
    """Every outage case of :data:`~trcgl_dev.faults.storage_outage.OUTAGE_CASES`, at once, each through its own
    loopback proxy in front of the session's S3 server, with the project's StorageConfig defaults (s3fs client).

    Returns:
        (op, outage seconds) -> the case's result.
    """
    import boto3

    from trcgl.ray_runtime import free_port

    bucket = f"trcgl-faults-{free_port()}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    results = s3_outage_matrix(s3_endpoint, bucket, OUTAGE_CASES, tmp)
    return {(r.op, r.outage_s): r for r in results}


# Session fixtures whose work starts in a thread when the session does (early_work), by fixture name: the work, and
# the name of the scratch folder it gets.
EARLY_WORK: dict[str, tuple[Callable[[str, Path], Any], str]] = {
    "pipeline_on_token_head": (run_pipeline_on_token_head, "pipeline-job"),
    "s3_outages": (run_s3_outages, "outage"),
}
_EARLY: dict[str, Future] = {}  # fixture name -> its work, started by early_work


@pytest.fixture(scope="session", autouse=True)
def early_work(request: pytest.FixtureRequest) -> Iterator[None]:
    """Starts the work of each :data:`EARLY_WORK` fixture that a collected test needs, in threads, at session start.

    Each takes long with a core idle for much of it: the end-to-end pipeline job on a Ray head of its own (a single
    driver between stages, the head starting, polls) and the S3 outage matrix (about 35 s, mostly waiting its
    outages out). Started first, they run beside the tests before their first user, and the fixture waits for the
    result there. Under pytest-xdist in :func:`two_lanes`, the worker of the lane holding their users starts them;
    under other xdist runs each fixture does its work when first asked, as without this. The session's end waits for
    work still running (the pipeline job's head is stopped by its scenario).
    """
    items = request.session.items
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:  # in two lanes, the work of this worker's lane's users; under other xdist runs, none
        own = LANES.get(worker) if two_lanes(request.config) else None
        lane = lanes_of(items) if own else {}
        items = [i for i in items if own and lane[i.nodeid] == own]
    wanted = {n for item in items for n in fixtures_used(item) if n in EARLY_WORK}
    if not wanted:
        yield
        return
    endpoint = request.getfixturevalue("s3_endpoint")
    factory = request.getfixturevalue("tmp_path_factory")
    with ThreadPoolExecutor(len(wanted), thread_name_prefix="early") as pool:
        for name in sorted(wanted):
            work, folder = EARLY_WORK[name]
            _EARLY[name] = pool.submit(work, endpoint, factory.mktemp(folder))
        yield
        _EARLY.clear()


def early_or_now(name: str, s3_endpoint: str, factory: pytest.TempPathFactory) -> Any:
    """The result of :data:`EARLY_WORK` ``name``: the work :func:`early_work` started, else done here."""
    early = _EARLY.get(name)
    if early is not None:
        return early.result()
    work, folder = EARLY_WORK[name]
    return work(s3_endpoint, factory.mktemp(folder))


@pytest.fixture(scope="session")
def pipeline_on_token_head(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """:func:`run_pipeline_on_token_head`'s result (started at session start by :func:`early_work`)."""
    return early_or_now("pipeline_on_token_head", s3_endpoint, tmp_path_factory)


@pytest.fixture(scope="session")
def s3_outages(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, float], OutageResult]:
    """:func:`run_s3_outages`'s result (started at session start by :func:`early_work`); the figures are recorded
    (:func:`~trcgl_dev.faults.record_figures`)."""
    results = early_or_now("s3_outages", s3_endpoint, tmp_path_factory)
    record_figures("s3 outages", list(results.values()))
    return results


# Session fixtures that cost minutes to build. Under pytest-xdist (``-n N --dist loadgroup``, README "Run the tests")
# every worker builds the session fixtures its tests use, so the tests sharing one of these must all run on one
# worker; see pytest_collection_modifyitems.
SHARED_FIXTURES = ("pipeline_on_token_head", "tiny_diffusion", "classifier_reference")


def xdist_groups(items: list[tuple[str, list[str]]]) -> dict[str, str]:
    """The xdist group of each test: its file (module fixtures are built once per worker that runs the file), merged
    with every other file that shares one of :data:`SHARED_FIXTURES` with it, transitively.

    Args:
        items: (node id, fixture names) of each collected test.

    Returns:
        node id -> group name (the group's first file in sorted order, so the names do not depend on collection order).
    """
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        while parent.setdefault(key, key) != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for nodeid, fixtures in items:
        file = nodeid.split("::")[0]
        for name in SHARED_FIXTURES:
            if name in fixtures:
                a, b = find(file), find(f"fixture:{name}")
                parent[max(a, b)] = min(a, b)  # "fixture:..." sorts after "tests/...": a file names the group
    names: dict[str, str] = {}
    for key in sorted(parent):
        if not key.startswith("fixture:"):
            names.setdefault(find(key), key)
    return {nodeid: names.get(find(nodeid.split("::")[0]), nodeid.split("::")[0]) for nodeid, _ in items}


def fixtures_used(item: pytest.Item) -> list[str]:
    """The fixtures ``item`` uses: those it names, and those its ``shares`` marker names (asked for at run time with
    ``request.getfixturevalue``, which collection cannot see)."""
    return [*getattr(item, "fixturenames", []), *(n for mark in item.iter_markers("shares") for n in mark.args)]


# The session fixtures built from the tiny rendered dataset, minutes of work together: in two lanes
# (:func:`two_lanes`) every file that uses one runs in the first lane, so each is built once; a file marked
# ``lane("other")`` runs in the other lane, which then renders and prepares the tiny dataset again (13-20 CPU-seconds
# on a local Ray with the lung atlas cached, BENCHMARKS.md "Where the suite's time goes") but never trains the two
# shared runs (:data:`TINY_RUNS`).
TINY_FIXTURES = ("tiny_synth", "tiny_prepared", "tiny_diffusion", "classifier_reference")
TINY_RUNS = ("tiny_diffusion", "classifier_reference")
LANES = {"gw0": "tiny", "gw1": "other"}  # xdist worker -> the lane it runs


def two_lanes(config: pytest.Config) -> bool:
    """Whether this run is ``-n 2 --dist loadgroup`` (what ``.ci/run`` runs), which :class:`LaneScheduling` runs as
    two lanes, one per worker (:func:`lanes`): ``tiny`` (the files using a :data:`TINY_FIXTURES` fixture) and
    ``other`` (every other file: the pipeline job on the token head with its users, the files that build no session
    fixture of minutes, and the files pinned there); a file marked ``lane("tiny")`` moves the other way, to even
    out the lanes' ends. Each lane keeps the suite's order.

    Why: on 2 cores one pytest process leaves about a fifth of the cores idle, most of it after its first minutes
    (single processes starting, importing, or waiting on each other), and a second worker taking any group rebuilds
    the session fixtures that cost minutes; split this way neither shared tiny run nor the pipeline job is built
    twice and each lane fills the other's idle (BENCHMARKS.md, "Test suite").
    """
    worker_input = getattr(config, "workerinput", None)
    if worker_input is not None:  # a worker: xdist resets its dist options, the controller sends the answer
        return bool(worker_input.get("trcgl_two_lanes"))
    return config.getoption("numprocesses", None) == 2 and config.getoption("dist", None) == "loadgroup"


# The niceness of the ``other`` lane's worker and of everything it starts (its Ray, the token head, jobs): the
# ``tiny`` lane, the longer, keeps the cores when both want them, and the other lane takes what it leaves idle.
OTHER_LANE_NICE = 5


def pytest_configure(config: pytest.Config) -> None:
    """In :func:`two_lanes`, lowers the ``other`` lane's worker's priority by :data:`OTHER_LANE_NICE` before it
    starts anything."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker and two_lanes(config) and LANES.get(worker) == "other":
        os.nice(OTHER_LANE_NICE)


@pytest.hookimpl(optionalhook=True)  # xdist's hooks: unknown under -p no:xdist
def pytest_configure_node(node: Any) -> None:
    """(xdist controller) Tells each worker whether the run is in :func:`two_lanes`."""
    node.workerinput["trcgl_two_lanes"] = two_lanes(node.config)


def lanes(items: list[tuple[str, list[str]]], pinned: dict[str, str] | None = None) -> dict[str, str]:
    """The lane of each test in :func:`two_lanes`: ``tiny`` for every test of a file in which one test uses a
    :data:`TINY_FIXTURES` fixture, else ``other`` (whole files: module fixtures are built once per worker that runs
    the file); a file in ``pinned`` runs in the lane named there.

    Why pin: the tiny lane is the longer; its files that use the tiny dataset but none of :data:`TINY_RUNS` can run
    in the other lane for the price of a second render and prepare (BENCHMARKS.md, "Test suite").

    Args:
        items: (node id, fixture names) of each collected test.
        pinned: file -> lane, from the files' ``lane`` markers.

    Returns:
        node id -> ``tiny`` or ``other``.

    Raises:
        ValueError: a marker names an unknown lane, or a file pinned to ``other`` uses one of :data:`TINY_RUNS`
            (which would then be trained twice).
    """
    pinned = pinned or {}
    files = {nodeid.split("::")[0] for nodeid, _ in items}
    tiny = {nodeid.split("::")[0] for nodeid, fixtures in items if set(fixtures) & set(TINY_FIXTURES)}
    runs = {nodeid.split("::")[0] for nodeid, fixtures in items if set(fixtures) & set(TINY_RUNS)}
    unknown = {f: name for f, name in pinned.items() if name not in LANES.values()}
    if unknown:
        raise ValueError(f"lane markers name unknown lanes {unknown}; the lanes are {sorted(LANES.values())}")
    wrong = sorted(f for f in files if pinned.get(f, "tiny") != "tiny" and f in runs)
    if wrong:
        raise ValueError(
            f"{wrong} use one of {list(TINY_RUNS)} but are marked for another lane, which would train it again"
        )
    lane = {f: pinned.get(f, "tiny" if f in tiny else "other") for f in files}
    return {nodeid: lane[nodeid.split("::")[0]] for nodeid, _ in items}


def lanes_of(items: list[pytest.Item]) -> dict[str, str]:
    """:func:`lanes` of pytest items, pinned by their ``lane`` markers."""
    pinned = {i.nodeid.split("::")[0]: m.args[0] for i in items for m in i.iter_markers("lane")}
    return lanes([(item.nodeid, fixtures_used(item)) for item in items], pinned)


def ungrouped(ids: list[str]) -> list[str]:
    """The node ids, as an xdist worker reports them under ``--dist loadgroup``, that lack the ``@group`` suffix the
    ``loadgroup`` scheduler reads a test's group from (by its rule: an ``@`` after the last ``]``). Every test this
    conftest collects is marked with a group (:func:`pytest_collection_modifyitems`), so any id without one means the
    marks did not reach the scheduler.

    That happens with pytest 9.2 and pytest-xdist 3.8: the worker still appends the suffix, but to a field pytest no
    longer reads the id from (https://github.com/pytest-dev/pytest-xdist/issues/1386). Nothing fails: the tests are
    spread over the workers as if unmarked, every worker builds the session fixtures costing minutes, and a file's
    tests run out of their order.
    """
    return [nodeid for nodeid in ids if nodeid.rfind("@") <= nodeid.rfind("]")]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    """(xdist controller, ``--dist loadgroup``) Stops the run, saying why, when a worker's tests came back without
    their groups (:func:`ungrouped`)."""
    lost = ungrouped(ids) if node.config.getoption("dist", None) == "loadgroup" else []
    if lost:
        import xdist

        pytest.exit(
            f"--dist loadgroup would not group {len(lost)} of {len(ids)} tests (first: {lost[0]}): pytest "
            f"{pytest.__version__} with pytest-xdist {xdist.__version__} drops the group from the test ids "
            "(https://github.com/pytest-dev/pytest-xdist/issues/1386). Install the pytest that the test extra pins: "
            "python -m pip install -e '.[test]'",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )


@pytest.hookimpl(tryfirst=True)  # before xdist's worker hook, which reads the marks into the node ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Marks each test with its xdist group, its lane in :func:`two_lanes`, else its :func:`xdist_groups` group
    (``--dist loadgroup`` keeps a group on one worker), and runs the modules that use an :data:`EARLY_WORK` fixture
    last (:func:`early_last`)."""
    items[:] = early_last(items)
    if two_lanes(config):
        groups = lanes_of(items)
    else:
        groups = xdist_groups([(item.nodeid, fixtures_used(item)) for item in items])
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(groups[item.nodeid]))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """In :func:`two_lanes`, :class:`LaneScheduling`; else xdist's own."""
    return LaneScheduling(config, log) if two_lanes(config) else None


class LaneScheduling(LoadGroupScheduling):
    """xdist's ``loadgroup`` with each lane (an xdist group) sent to its own worker, :data:`LANES`.

    ``loadgroup`` alone hands the first group to whichever worker starts first; here worker ``gw0`` always runs the
    ``tiny`` lane and ``gw1`` the ``other`` one, so a worker knows at session start which lane it runs
    (:func:`early_work` starts the other lane's early work there). A run that collected one lane only runs it on
    whichever worker xdist keeps (its early work, if any, is then done when first asked).
    """

    def _assign_work_unit(self, node: Any) -> None:
        lane = LANES.get(node.gateway.id)
        if lane in self.workqueue:
            self.workqueue.move_to_end(lane, last=False)  # the base class pops the first unit
        super()._assign_work_unit(node)


def early_last(items: list[pytest.Item]) -> list[pytest.Item]:
    """``items`` with every module that has a user of an :data:`EARLY_WORK` fixture moved to the end, each in its
    order.

    The early work runs beside the tests before its first user; placed first (alphabetically, as the fault tests'
    folder is) that user waited a minute for the pipeline job with a core idle. Whole modules move so that a module's
    fixtures are still built once.
    """
    late = {item.path for item in items if set(fixtures_used(item)) & EARLY_WORK.keys()}
    return [i for i in items if i.path not in late] + [i for i in items if i.path in late]


@pytest.fixture()
def record(request: pytest.FixtureRequest) -> Callable[[Any], Any]:
    """``record(result)``: the fault suite keeps a scenario's result under the test's id (in the file named by
    ``$TRCGL_FAULT_FIGURES`` when set; see :func:`trcgl_dev.faults.record_figures`) and gets it back unchanged."""
    return lambda figures: record_figures(request.node.nodeid, figures)
