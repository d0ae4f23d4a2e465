"""Damaged state and state storage through the real CLI: a state file that is valid JSON of the
wrong shape, one damaged state among several, a read-only state directory, a damaged S3 lock
object. Each gives a clear error naming the file; commands over many states go on with the others."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from e2e_util import hello  # noqa: F401  (the seed workspace fixture)
from test_backend import BUCKET, KEY, _no_lock_left, team  # noqa: F401  (the S3 team fixture)

from reconciler.errors import ReconcilerError
from reconciler.store.state import load

pytestmark = pytest.mark.e2e

GOOD = {
    "format_version": 1,
    "lineage": "l",
    "serial": 1,
    "environment": "dev",
    "infrastructure": "a",
    "region": "us-east-1",
    "functions": {"fn": {"service": "svc", "version": "1", "aliases": {}}},
    "artifacts": {},
    "history": [
        {
            "id": "r1",
            "function": "fn",
            "operation": "apply",
            "status": "succeeded",
            "started_at": "2026-01-01T00:00:00Z",
        }
    ],
}
DAMAGE = [
    ("functions", []),
    ("history", None),
    ("functions", {"fn": "x"}),
    ("serial", True),
    ("artifacts", {"k": 1}),
    ("history", [1]),
    ("functions", {"fn": {"aliases": []}}),
    ("history", [{"id": "r1", "previous": "no"}]),
]


def write_state(root, env: str, infra: str, **changes) -> None:
    p = root / env / f"{infra}.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({**GOOD, "environment": env, "infrastructure": infra, **changes}))


@pytest.mark.parametrize("key,value", DAMAGE)
def test_a_state_of_the_wrong_shape_is_a_clear_error(tmp_path, key, value):
    write_state(tmp_path, "dev", "a", **{key: value})
    with pytest.raises(ReconcilerError) as err:
        load(tmp_path, "dev", "a")
    assert ("state file is damaged" in str(err.value) or "no lineage/serial" in str(err.value)) and str(
        err.value
    ).startswith(str(tmp_path / "dev" / "a.json"))


@pytest.mark.parametrize("command", [["state", "list"], ["history"], ["state", "show", "fn"], ["plan"], ["drift"]])
def test_every_command_names_the_damaged_state(hello, command):
    write_state(hello.state_dir, "aws", "awslambda", functions=[])
    r = hello.cli(*command, code=1)
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    assert re.search(
        r"^error: .*awslambda\.json: state file is damaged: functions must be a mapping, got list", r.stderr, re.M
    ), r.stderr


def test_history_and_drift_report_a_damaged_state_and_go_on(hello):
    write_state(hello.state_dir, "aws", "a", history=None)
    write_state(hello.state_dir, "aws", "b")
    r = hello.cli("history", code=1)
    assert "aws/b" in r.stdout and "aws/a" not in r.stdout
    assert [line for line in r.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {hello.state_dir / 'aws' / 'a.json'}: state file is damaged: history must be a list, got null "
        "(restore it from its .backup or with `reconciler state push`)"
    ]
    r = hello.cli("drift", "--format", "json", code=1)
    assert json.loads(r.stdout)["summary"]["checked"] == 1  # the readable state's function
    assert "a.json: state file is damaged" in r.stderr


def test_a_read_only_state_directory_is_a_clear_error_before_any_change(hello):
    (hello.state_dir / "aws").mkdir(parents=True)
    subprocess.run(["chattr", "+i", str(hello.state_dir / "aws")], check=True)
    try:
        r = hello.cli("apply", "--auto-approve", code=1)
    finally:
        subprocess.run(["chattr", "-i", str(hello.state_dir / "aws")], check=True)
    err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "cannot take the lock" in err[0] and "state directory must be writable" in err[0], r.stderr
    assert "Traceback" not in r.stderr
    assert hello.lam().list_functions()["Functions"] == []


def test_retry_count_that_is_no_number_fails_validate(hello):
    pipe = hello.ws / ".harness" / "pipeline.yaml"
    text = pipe.read_text()
    assert "failureStrategies:" in text
    text = text.replace(
        "              action:\n                type: StageRollback",
        "              action:\n                type: Retry\n                spec:\n"
        "                  retryCount: two\n                  retryIntervals: [1s]",
        1,
    )
    assert "retryCount: two" in text
    pipe.write_text(text)
    r = hello.cli("validate", code=1)
    assert re.fullmatch(
        r"error: \.harness/pipeline\.yaml:\d+: retryCount must be a whole number from 0 to 100, got 'two'\n", r.stderr
    ), r.stderr


def test_a_damaged_s3_lock_object_can_be_force_unlocked(team):
    team.s3().put_object(Bucket=BUCKET, Key=KEY + ".lock", Body=b"\x00garbage{")
    r = team.cli("apply", "--auto-approve", "-e", "staging", code=1)
    m = re.search(r"state is locked \(id=(damaged-[0-9a-f]+)", r.stderr)
    assert m, r.stderr
    r = team.cli("force-unlock", m.group(1))
    assert f"Lock {m.group(1)} on s3://{BUCKET}/{KEY} removed." in r.stdout
    _no_lock_left(team)
