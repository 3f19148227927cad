"""The suite's pytest-xdist groups and lanes (tests/conftest.py): a shared session fixture is built on one worker
only."""

from __future__ import annotations

import os

import conftest
import pytest
from conftest import (
    EARLY_WORK,
    LANES,
    SHARED_FIXTURES,
    TINY_FIXTURES,
    TINY_RUNS,
    fixtures_used,
    lanes,
    two_lanes,
    ungrouped,
    xdist_groups,
)


def test_groups_merge_files_that_share_a_fixture_transitively() -> None:
    items = [
        ("tests/b.py::t1", ["tiny_diffusion"]),
        ("tests/c.py::t2", ["tiny_diffusion", "classifier_reference"]),
        ("tests/d.py::t3", ["classifier_reference"]),  # shares nothing with b.py directly
        ("tests/b.py::t4", []),  # a test of a merged file that uses no shared fixture
        ("tests/a.py::t5", ["tmp_path"]),  # not a shared fixture: its own file's group
        ("tests/f.py::t6", ["pipeline_on_token_head"]),
        ("tests/e.py::t7", ["pipeline_on_token_head", "tmp_path"]),
    ]
    groups = xdist_groups(items)
    assert groups == {
        "tests/b.py::t1": "tests/b.py",
        "tests/c.py::t2": "tests/b.py",
        "tests/d.py::t3": "tests/b.py",
        "tests/b.py::t4": "tests/b.py",
        "tests/a.py::t5": "tests/a.py",
        "tests/f.py::t6": "tests/e.py",  # the group is named by its first file, whatever the order
        "tests/e.py::t7": "tests/e.py",
    }
    assert xdist_groups(items[::-1]) == groups


def test_every_collected_test_carries_its_group(request: pytest.FixtureRequest) -> None:
    """On this pytest run's own collection: each shared fixture's users and each file's tests are in one group, and
    every test is marked with it (what ``--dist loadgroup`` schedules by)."""
    items = request.session.items
    if len({i.nodeid.split("::")[0] for i in items}) < 10:
        pytest.skip("the groups are checked on the whole suite's collection; this run collected only a few files")
    marked = {item.nodeid.split("@")[0]: item.get_closest_marker("xdist_group").args[0] for item in items}
    by_fixture: dict[str, set[str]] = {name: set() for name in SHARED_FIXTURES}
    by_file: dict[str, set[str]] = {}
    for item in items:
        nodeid = item.nodeid.split("@")[0]
        by_file.setdefault(nodeid.split("::")[0], set()).add(marked[nodeid])
        for name in SHARED_FIXTURES:
            if name in fixtures_used(item):
                by_fixture[name].add(marked[nodeid])
    if not all(by_fixture.values()):
        pytest.skip(f"this run collected no user of {[n for n, g in by_fixture.items() if not g]} (-m 'not slow'?)")
    assert all(len(g) == 1 for g in by_fixture.values()), by_fixture
    assert {f: g for f, g in by_file.items() if len(g) != 1} == {}
    # the pipeline job's users span several files (else there is nothing to keep together)
    users = {i.nodeid.split("::")[0] for i in items if "pipeline_on_token_head" in i.fixturenames}
    assert len(users) >= 3, users
    # tests that ask for a shared fixture at run time (the worker kill) are counted above through their shares
    # marker, invisible in their fixture names
    dynamic = [i for i in items if i.get_closest_marker("shares")]
    assert dynamic and all(n not in i.fixturenames for i in dynamic for n in i.get_closest_marker("shares").args)


def test_modules_using_early_work_run_last_each_in_its_order(request: pytest.FixtureRequest) -> None:
    """On this run's own collection: the files with a user of an early-work fixture come after every other file,
    each file's tests still together and in their written order."""
    items = request.session.items
    files = [i.nodeid.split("::")[0] for i in items]
    late = {f for f, i in zip(files, items, strict=True) if set(fixtures_used(i)) & EARLY_WORK.keys()}
    if not late or len(set(files)) == len(late):
        pytest.skip("this run collected no user of an early-work fixture, or nothing else")
    first_late = min(n for n, f in enumerate(files) if f in late)
    assert all(f in late for f in files[first_late:]), "a file without early-work users runs after one with"
    runs = [f for n, f in enumerate(files) if n == 0 or files[n - 1] != f]  # consecutive stretches of a file
    assert len(runs) == len(set(runs)), "a file's tests were split apart"
    for f in late:  # each moved file keeps pytest's order of its tests (their line order)
        lines = [i.location[1] for i in items if i.nodeid.startswith(f + "::")]
        assert lines == sorted(lines), f


def test_lanes_keep_files_whole_and_every_tiny_fixture_user_in_the_tiny_lane() -> None:
    items = [
        ("tests/a.py::t1", ["tmp_path"]),
        ("tests/a.py::t2", ["tiny_prepared"]),  # one user puts its whole file in the tiny lane
        ("tests/b.py::t3", ["ray_local", "s3_endpoint"]),  # session fixtures of seconds: any lane builds its own
        ("tests/c.py::t4", ["pipeline_on_token_head"]),
        ("tests/d.py::t5", ["classifier_reference"]),
    ]
    assert lanes(items) == {
        "tests/a.py::t1": "tiny",
        "tests/a.py::t2": "tiny",
        "tests/b.py::t3": "other",
        "tests/c.py::t4": "other",
        "tests/d.py::t5": "tiny",
    }
    assert set(LANES.values()) == {"tiny", "other"}
    # a pinned file runs where its marker says; one that trains a shared tiny run cannot leave the tiny lane
    assert lanes(items, {"tests/a.py": "other"})["tests/a.py::t1"] == "other"
    with pytest.raises(ValueError, match="tests/d.py"):
        lanes(items, {"tests/d.py": "other"})
    with pytest.raises(ValueError, match="third"):
        lanes(items, {"tests/b.py": "third"})


def test_each_tiny_run_is_built_in_one_lane_and_the_early_work_in_the_other(request: pytest.FixtureRequest) -> None:
    """On this run's own collection, as :func:`~conftest.two_lanes` splits it: every user of a shared tiny run, and
    of any tiny fixture unless its file is pinned to a lane, in the tiny lane; every user of an early-work fixture in
    the other (whose worker then starts that work); files whole;
    and, when this run is in two lanes, this test runs on its lane's worker with that work started there."""
    items = request.session.items
    if len({i.nodeid.split("::")[0] for i in items}) < 10:
        pytest.skip("the lanes are checked on the whole suite's collection; this run collected only a few files")
    lane = conftest.lanes_of(items)
    by_file: dict[str, set[str]] = {}
    for item in items:
        by_file.setdefault(item.nodeid.split("::")[0], set()).add(lane[item.nodeid])
        used = set(fixtures_used(item))
        if used & set(TINY_RUNS) or (used & set(TINY_FIXTURES) and not item.get_closest_marker("lane")):
            assert lane[item.nodeid] == "tiny", item.nodeid
        if used & EARLY_WORK.keys():
            assert lane[item.nodeid] == "other", item.nodeid  # else the early work would start beside no user
    assert {f: g for f, g in by_file.items() if len(g) != 1} == {}
    if two_lanes(request.config) and set(lane.values()) == set(LANES.values()):  # one lane: any worker runs it
        # xdist scheduled this test by its lane: the group suffix it reads is on the id (else ungrouped() stops the
        # run first), and the test runs on that lane's worker
        assert request.node.nodeid.endswith("@" + lane[request.node.nodeid]), request.node.nodeid
        assert LANES[os.environ["PYTEST_XDIST_WORKER"]] == lane[request.node.nodeid]
        wanted = {n for i in items if lane[i.nodeid] == "other" for n in fixtures_used(i) if n in EARLY_WORK}
        assert set(conftest._EARLY) == wanted  # started here, and only here


def test_ids_without_their_group_are_found() -> None:
    """What stops a ``--dist loadgroup`` run whose groups did not reach xdist's scheduler (pytest 9.2 with
    pytest-xdist 3.8): ids without an ``@group`` after their last ``]``, by the scheduler's own rule."""
    ids = [
        "tests/a.py::t1@tiny",
        "tests/a.py::t2[x@y]@other",  # an @ inside the parameters, then the group
        "tests/b.py::t3",
        "tests/b.py::t4[x@y]",  # the only @ is a parameter's
    ]
    assert ungrouped(ids) == ["tests/b.py::t3", "tests/b.py::t4[x@y]"]
    assert ungrouped(ids[:2]) == []
