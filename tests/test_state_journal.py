"""Unit tests of the local state journal (`<state>.json.journal`): State.append records a
step as one line, every read replays it, a full write compacts it away, and appends are
conditional like writes. Also StateWriter (apply) on top of it, and the S3 fallback."""

from __future__ import annotations

import json
import os

import pytest

from reconciler.store import backend as be
from reconciler.store import state as st
from reconciler.engine.apply import StateWriter, close_interrupted
from test_state_unit import BUCKET, _s3, mocked  # noqa: F401  (mocked: the moto S3 fixture)

PAD = {"configuration": {"Description": "x" * 20_000}}  # keeps a test's journal below the compaction threshold


@pytest.fixture(autouse=True)
def _local_default():
    prev = be.use(None)
    yield
    be.use(prev)


def _new(tmp_path, pad: bool = True) -> st.State:
    s = st.load(tmp_path, "dev", "i")
    s.region = "us-east-1"
    s.functions["f"] = {"version": "1"}
    if pad:
        s.functions["pad"] = PAD
    s.write()
    return s


def _files(tmp_path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((tmp_path / "dev").iterdir())}


def _journal(tmp_path):
    return tmp_path / "dev" / "i.json.journal"


def test_append_is_one_line_and_load_replays_it(tmp_path):
    s = _new(tmp_path)
    file_before = (tmp_path / "dev" / "i.json").read_bytes()
    rec = {"id": "r1", "function": "f", "status": "in_progress", "steps": []}
    s.history.append(rec)
    s.functions["f"]["version"] = "2"
    s.append(["f"], [rec])
    assert s.serial == 2
    rec["steps"].append({"step": "code updated"})
    s.append(records=[rec])
    s.functions["g"] = {"version": "7"}
    s.region = "eu-west-1"
    s.append(["g"])
    del s.functions["f"]
    s.append(["f"])
    assert s.serial == 5
    assert (tmp_path / "dev" / "i.json").read_bytes() == file_before, "the state file is not rewritten"
    lines = _journal(tmp_path).read_bytes().split(b"\n")
    assert len(lines) == 5 and lines[-1] == b""
    first = json.loads(lines[0])
    assert (
        list(first)[:2] == ["lineage", "serial"]
        and first["serial"] == 2
        and first["functions"] == {"f": {"version": "2"}}
    )
    assert json.loads(lines[3])["functions"] == {"f": None}, "a removed entry is null"
    assert b" " not in lines[1].replace(b"code updated", b""), "compact separators"

    again = st.load(tmp_path, "dev", "i")
    assert (again.lineage, again.serial, again.ref) == (s.lineage, 5, {"lineage": s.lineage, "serial": 5})
    assert again.functions == s.functions and "f" not in again.functions and again.functions["g"] == {"version": "7"}
    assert again.history == [
        {"id": "r1", "function": "f", "status": "in_progress", "steps": [{"step": "code updated"}]}
    ]
    assert again.region == "eu-west-1"
    assert again.read_version[:2] == (s.lineage, 5)
    # views of the state see it too: pull's text, a file parsed with its journal, all states
    assert json.loads(st.stored_text(again.path)) == again.to_dict()
    assert st.parse_file(again.path)["serial"] == 5
    assert st.all_states(tmp_path)[0].serial == 5


def test_a_reader_can_keep_appending(tmp_path):
    _new(tmp_path).append(["f"])
    s = st.load(tmp_path, "dev", "i")
    s.functions["f"]["version"] = "3"
    s.append(["f"])
    assert st.load(tmp_path, "dev", "i").functions["f"]["version"] == "3" and st.load(tmp_path, "dev", "i").serial == 3


def test_append_conflicts_when_another_writer_appended(tmp_path):
    _new(tmp_path)
    mine, theirs = st.load(tmp_path, "dev", "i"), st.load(tmp_path, "dev", "i")
    theirs.functions["theirs"] = {}
    theirs.append(["theirs"])
    before = _files(tmp_path)
    mine.functions["mine"] = {}
    with pytest.raises(st.StateConflictError) as ei:
        mine.append(["mine"])
    assert "serial 1" in str(ei.value) and "serial 2" in str(ei.value) and "not overwritten" in str(ei.value)
    assert _files(tmp_path) == before, "nothing written"
    assert mine.serial == 1
    with pytest.raises(st.StateConflictError):
        mine.write()  # nor a full write over the journaled step
    assert _files(tmp_path) == before
    assert "theirs" in st.load(tmp_path, "dev", "i").functions


def test_append_conflicts_when_another_writer_rewrote_or_started_a_journal(tmp_path):
    s = _new(tmp_path)
    s.append(["f"])
    mine, theirs = st.load(tmp_path, "dev", "i"), st.load(tmp_path, "dev", "i")
    theirs.write()  # compacts: a new file, no journal
    before = _files(tmp_path)
    with pytest.raises(st.StateConflictError):
        mine.append(["f"])
    assert _files(tmp_path) == before

    # expected no journal, and one appeared
    fresh = st.load(tmp_path, "dev", "i")
    other = st.load(tmp_path, "dev", "i")
    other.append(["f"])
    with pytest.raises(st.StateConflictError):
        fresh.append(["f"])


def test_torn_last_line_is_ignored_and_cut_by_the_next_writer(tmp_path):
    s = _new(tmp_path)
    s.functions["f"]["version"] = "2"
    s.append(["f"])
    s.functions["f"]["version"] = "3"
    s.append(["f"])
    j = _journal(tmp_path)
    whole = j.read_bytes()
    j.write_bytes(whole[:-7])  # the process was killed mid-write of its last line
    s2 = st.load(tmp_path, "dev", "i")
    assert (s2.serial, s2.functions["f"]["version"]) == (2, "2")
    s2.functions["f"]["version"] = "4"
    s2.append(["f"])
    data = j.read_bytes()
    assert data.count(b"\n") == 2 and data.endswith(b"\n") and all(json.loads(x) for x in data.splitlines())
    s3 = st.load(tmp_path, "dev", "i")
    assert (s3.serial, s3.functions["f"]["version"]) == (3, "4")


def test_garbage_and_gaps_end_the_replay(tmp_path):
    s = _new(tmp_path)
    s.append(["f"])
    j = _journal(tmp_path)
    good = j.read_bytes()
    line = json.loads(good)
    gap = dict(line, serial=4, functions={"f": {"version": "gap"}})
    other = dict(line, lineage="another", serial=3, functions={"f": {"version": "other"}})
    for tail in (json.dumps(gap), json.dumps(other), "{not json", json.dumps(dict(line, serial=3, functions=[]))):
        j.write_bytes(good + tail.encode() + b"\n")
        s2 = st.load(tmp_path, "dev", "i")
        assert (s2.serial, s2.functions["f"]) == (2, {"version": "1"}), tail


def test_lines_at_or_below_the_file_serial_are_skipped_after_a_compaction_crash(tmp_path):
    s = _new(tmp_path)
    for v in "234":
        s.functions["f"]["version"] = v
        s.append(["f"])
    old = _journal(tmp_path).read_bytes()
    s.functions["f"]["version"] = "5"
    s.write()  # serial 5; the journal is removed...
    assert not _journal(tmp_path).exists()
    _journal(tmp_path).write_bytes(old)  # ...or not: killed between the rename and the unlink
    s2 = st.load(tmp_path, "dev", "i")
    assert (s2.serial, s2.functions["f"]["version"]) == (5, "5")
    s2.functions["f"]["version"] = "6"
    s2.append(["f"])
    assert _journal(tmp_path).read_bytes().count(b"\n") == 1, "the stale lines are cut before appending"
    s3 = st.load(tmp_path, "dev", "i")
    assert (s3.serial, s3.functions["f"]["version"]) == (6, "6")


def test_journal_is_compacted_when_larger_than_the_state_file(tmp_path):
    s = _new(tmp_path, pad=False)
    size = (tmp_path / "dev" / "i.json").stat().st_size
    n = 0
    while _journal(tmp_path).exists() or n == 0:
        s.functions["f"] = {"version": str(n), "blob": "y" * 200}
        s.append(["f"])
        n += 1
        assert n < 50
        if _journal(tmp_path).exists():
            assert _journal(tmp_path).stat().st_size <= size + 300
    on_disk = json.loads((tmp_path / "dev" / "i.json").read_text())
    assert on_disk["serial"] == s.serial and on_disk["functions"]["f"] == s.functions["f"]
    assert json.loads((tmp_path / "dev" / "i.json.backup").read_text())["serial"] == 1
    assert st.load(tmp_path, "dev", "i").serial == s.serial
    s.append(["f"])  # and it keeps going from the compacted file
    assert st.load(tmp_path, "dev", "i").serial == s.serial


def test_compact_writes_only_when_something_is_journaled(tmp_path):
    s = _new(tmp_path)
    s.compact()
    assert s.serial == 1 and not (tmp_path / "dev" / "i.json.backup").exists()
    s.append(["f"])
    s.compact()
    assert s.serial == 3 and not _journal(tmp_path).exists()
    assert json.loads((tmp_path / "dev" / "i.json").read_text())["serial"] == 3
    assert json.loads((tmp_path / "dev" / "i.json.backup").read_text())["serial"] == 1


def test_append_to_a_state_not_stored_yet_writes_it_whole(tmp_path):
    s = st.load(tmp_path, "dev", "i")
    s.functions["f"] = {}
    s.append(["f"])
    assert s.exists and s.serial == 1 and not _journal(tmp_path).exists()
    assert "f" in json.loads((tmp_path / "dev" / "i.json").read_text())["functions"]


def test_only_a_record_starting_in_flight_is_fsynced(tmp_path, monkeypatch):
    s = _new(tmp_path)
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real(fd))
    rec = {"id": "r", "status": "in_progress", "steps": []}
    s.history.append(rec)
    s.append(records=[rec])
    assert len(synced) >= 1
    n = len(synced)
    rec["steps"].append({"step": "x"})
    s.append(records=[rec])
    rec["status"] = "succeeded"
    s.append(["f"], [rec])
    assert len(synced) == n


def test_state_writer_appends_each_step_and_close_compacts(tmp_path):
    _new(tmp_path)
    path = st.state_path(tmp_path, "dev", "i")
    old = {"id": "old", "function": "f", "operation": "apply", "status": "in_progress", "steps": []}
    s = st.load(tmp_path, "dev", "i")
    s.history.append(old)
    s.write()
    with st.locked(path, "apply"):
        w = StateWriter(tmp_path, "dev", "i", shared=False)
        record = {"id": "new", "function": "f", "operation": "apply", "status": "in_progress", "steps": []}

        def begin(state):
            close_interrupted(state, "f", record)
            state.history.append(record)

        w.update(begin, records=[record], closing="f")

        def finish(state):
            state.functions["f"] = {"version": "2"}
            record["status"] = "succeeded"

        w.update(finish, functions=["f"], records=[record])
        file_serial = json.loads(path.read_text())["serial"]
        seen = st.load(tmp_path, "dev", "i")
        assert seen.serial == file_serial + 2, "two appended lines"
        assert {h["id"]: h["status"] for h in seen.history} == {"old": "interrupted", "new": "succeeded"}
        assert seen.functions["f"] == {"version": "2"}
        w.update(lambda state: state.functions.update(h={}))  # names nothing: written whole
        assert not _journal(tmp_path).exists() and "h" in json.loads(path.read_text())["functions"]
        w.update(finish, functions=["f"], records=[record])
        assert _journal(tmp_path).exists()
        w.close()
    assert not _journal(tmp_path).exists()
    doc = json.loads(path.read_text())
    assert doc["serial"] == w.state.serial and {h["id"]: h["status"] for h in doc["history"]} == {
        "old": "interrupted",
        "new": "succeeded",
    }


def test_shared_state_writer_appends_under_the_lock(tmp_path):
    _new(tmp_path)
    a = StateWriter(tmp_path, "dev", "i", shared=True)
    b = StateWriter(tmp_path, "dev", "i", shared=True)
    a.update(lambda s: s.functions.update(a={"v": 1}), functions=["a"])
    b.update(lambda s: s.functions.update(b={"v": 1}), functions=["b"])
    a.update(lambda s: s.functions.update(a={"v": 2}), functions=["a"])
    seen = st.load(tmp_path, "dev", "i")
    assert (seen.functions["a"], seen.functions["b"], seen.serial) == ({"v": 2}, {"v": 1}, 4)
    assert _journal(tmp_path).read_bytes().count(b"\n") == 3
    a.close()
    b.close()
    assert not _journal(tmp_path).exists() and json.loads((tmp_path / "dev" / "i.json").read_text())["serial"] == 5


# ---------------------------------------------------------------- S3: no journal, full writes


def test_s3_backend_append_falls_back_to_full_writes(mocked, tmp_path):
    _s3()
    s = st.load(tmp_path, "e", "i")
    s.functions["f"] = {"version": "1"}
    s.append(["f"])
    s.functions["f"]["version"] = "2"
    s.append(["f"])
    s.compact()
    key = "reconciler/e/i.json"
    doc = json.loads(mocked.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    assert doc["serial"] == 2 and doc["functions"]["f"]["version"] == "2"
    assert len(mocked.list_object_versions(Bucket=BUCKET, Prefix=key)["Versions"]) == 2, "one full write per append"
    assert [o["Key"] for o in mocked.list_objects_v2(Bucket=BUCKET)["Contents"]] == [key], "no journal object"
    assert st.stored_text(s.path) == mocked.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()
    other = st.load(tmp_path, "e", "i")
    other.append(["f"])
    with pytest.raises(st.StateConflictError):
        s.append(["f"])
    assert not list(tmp_path.rglob("*.journal"))


def test_cli_state_commands_see_journaled_steps(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from reconciler.cli.app import app

    monkeypatch.chdir(tmp_path)
    s = _new(tmp_path / "st")
    s.functions["f"]["version"] = "2"
    s.append(["f"])
    r = CliRunner().invoke(app, ["state", "pull", "--state-dir", "st", "-e", "dev", "-i", "i"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["serial"] == 2 and doc["functions"]["f"]["version"] == "2"
    r = CliRunner().invoke(app, ["state", "list", "--state-dir", "st"])
    assert r.exit_code == 0 and "dev/i" in r.output and " 2 " in r.output, r.output
