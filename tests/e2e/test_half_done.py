"""End-to-end: deployments that end half done, and what reconciler may delete.

- a rollback that fails (an injected fault, or a second SIGTERM while rolling back) is
  shown by the next `plan`, finished by the next `apply` or undone by `rollback`, and
  `drift` does not call it a change made outside reconciler;
- a function created by someone else between the plan's read and CreateFunction is never
  deleted; a CreateFunction whose answer was lost and whose retry got "already exists"
  is this apply's own create;
- a state that cannot be written mid-apply (immutable files, or an S3 writer that ignored
  the lock) does not stop the rollback, and the error says so;
- a version reconciler published but never recorded (SIGTERM while PublishVersion was
  answered) is not "published outside reconciler", and `refresh` clears what it accepts;
- ownership includes the infrastructure: two infrastructures of one environment that
  render the same function name do not take it from each other.

The CLI runs in a subprocess through the FaultProxy; what Lambda holds is read with boto3
straight from moto.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time

import pytest
from e2e_util import check
from test_failures import FN, NO_RETRY, SHA1, SHA2, ZIP2, Deploy, check_state

pytestmark = pytest.mark.e2e


@pytest.fixture
def d(aws, workspace, tmp_path, run_cli, fault_proxy) -> Deploy:
    return Deploy(aws, workspace, tmp_path, run_cli, fault_proxy)


def cli(d: Deploy, *args, proxy: bool = True) -> subprocess.CompletedProcess:
    env = {"AWS_ENDPOINT_URL": d.proxy.endpoint} if proxy else None
    return d.run_cli(*args, "-w", d.ws, "--state-dir", d.state_dir, "-e", "staging", cwd=d.ws, env_extra=env)


def popen_apply(d: Deploy, *extra) -> subprocess.Popen:
    return d.run_cli.popen(
        "apply",
        "--auto-approve",
        "-w",
        d.ws,
        "--state-dir",
        d.state_dir,
        "-e",
        "staging",
        *extra,
        cwd=d.ws,
        env_extra={"AWS_ENDPOINT_URL": d.proxy.endpoint},
    )


def assert_half_done_is_shown(d: Deploy, *extra) -> None:
    """plan shows the half-done deployment and plans to finish it; drift does not call it a
    change made outside reconciler."""
    r = cli(d, "plan", "--detailed-exitcode", *extra, proxy=False)
    check(r, 2)
    assert "this plan finishes it" in r.stdout or "this plan converges it" in r.stdout, r.stdout
    assert "Changed outside reconciler" not in r.stdout, r.stdout
    r = cli(d, "drift", proxy=False)
    check(r, 2)
    assert "outside reconciler" not in r.stdout, r.stdout
    assert "unfinished" in r.stdout and "`reconciler apply` finishes it" in r.stdout, r.stdout
    summary = json.loads(check(cli(d, "drift", "--format", "json", proxy=False), 2).stdout)["summary"]
    assert (summary["drifted"], summary["unfinished"]) == (0, 1), summary


# ---------------------------------------------------------------- item 1: a failed rollback


def fail_publish_and_rollback(d: Deploy) -> subprocess.CompletedProcess:
    """v1 → v2: PublishVersion fails, then the rollback's own UpdateFunctionCode fails."""
    d.deploy_v1()
    d.proxy.add_rule("PublishVersion", "fail", times=1, **NO_RETRY)
    d.proxy.add_rule("UpdateFunctionCode", "fail", nth=2, times=None, **NO_RETRY)
    r = d.apply(*d.to_v2())
    assert r.returncode == 1, r.stderr
    assert "ROLLBACK FAILED" in r.stderr and "Traceback" not in r.stderr
    assert "run apply again to finish the change" in r.stderr
    # half done: the rollback put the configuration back (it goes first), then failed on
    # the code: $LATEST holds the new code, the alias the old version
    conf = d.config()
    assert (conf["CodeSha256"], conf["MemorySize"]) == (SHA2, 128)
    assert d.aws.aliases(FN) == {"live": "1"} and d.aws.versions(FN) == ["1"]
    assert d.last()["status"] == "rollback_failed"
    d.proxy.clear(rules=True)
    return r


def test_failed_rollback_is_shown_and_finished_by_the_next_apply(d):
    fail_publish_and_rollback(d)
    failed_id = d.last()["id"]
    assert_half_done_is_shown(d, "--var", "memorySize=256")
    r = d.apply("--var", "memorySize=256")
    assert r.returncode == 0, r.stderr
    assert "whose rollback failed" in r.stderr, r.stderr
    d.assert_v2_released()
    state = d.state()
    closed = next(h for h in state["history"] if h["id"] == failed_id)
    assert closed["status"] == "rollback_failed" and closed["converged_by"] == state["history"][-1]["id"]
    # the finishing apply keeps the failed one's rollback data: what ran before it
    assert (state["history"][-1]["previous"]["version"], state["history"][-1]["previous"]["code_sha256"]) == ("1", SHA1)
    check(cli(d, "plan", "--detailed-exitcode", "--var", "memorySize=256", proxy=False), 0)
    check(cli(d, "drift", proxy=False), 0)


def test_failed_rollback_is_undone_by_rollback(d):
    fail_publish_and_rollback(d)
    r = cli(d, "rollback", "--auto-approve", proxy=False)
    check(r, 0)
    d.assert_back_to_v1()
    state = d.state()
    assert state["history"][-1]["operation"] == "rollback" and state["history"][-1]["status"] == "succeeded"
    assert state["functions"][FN]["version"] == "1" and state["functions"][FN]["code_sha256"] == SHA1
    check(cli(d, "drift", proxy=False), 0)


def test_two_sigterms_while_rolling_back_are_finished_by_the_next_apply(d):
    """A CI cancel: SIGTERM once the configuration was updated (the apply rolls back), and
    again when the rollback has read the function: the rollback is cut short."""
    d.deploy_v1()
    extra = d.to_v2()
    holder: dict = {}
    first = threading.Event()

    def term_once():
        holder["p"].send_signal(signal.SIGTERM)
        first.set()

    d.proxy.after("UpdateFunctionConfiguration", 1, term_once)
    second = d.proxy.after(
        lambda e: e["operation"] == "GetFunction" and first.is_set(), 1, lambda: holder["p"].send_signal(signal.SIGTERM)
    )
    holder["p"] = p = popen_apply(d, *extra)
    _, err = p.communicate(timeout=120)
    assert first.is_set() and second.fired, err
    assert p.returncode == 130, (p.returncode, err)
    assert "Traceback" not in err
    status = d.last()["status"]
    assert status in ("rollback_failed", "rolling_back"), d.last()
    d.proxy.clear(rules=True)
    assert_half_done_is_shown(d, *extra)
    r = d.apply(*extra)
    assert r.returncode == 0, r.stderr
    d.assert_v2_released()
    check(cli(d, "drift", proxy=False), 0)


# ---------------------------------------------------------------- item 2: what a rollback deletes


def test_function_created_by_someone_else_before_create_is_not_deleted(d):
    """Another team creates the function between the plan's read and CreateFunction: the
    apply fails without changing it, and never deletes it."""
    theirs = {"team": "other"}

    def create_theirs_first(entry) -> bool:
        if entry["operation"] == "CreateFunction" and not create_theirs_first.done:
            create_theirs_first.done = True
            d.lam.create_function(
                FunctionName=FN,
                Runtime="python3.12",
                Handler="handler.handler",
                Code={"ZipFile": ZIP2},
                Role=f"arn:aws:iam::{d.aws.account}:role/greeter-lambda-role",
                Tags=theirs,
            )
        return False  # no fault: CreateFunction goes on to moto, which has the function now

    create_theirs_first.done = False
    d.proxy.add_rule(create_theirs_first, "fail")
    r = d.apply()
    assert r.returncode == 1, r.stderr
    assert f"function {FN} was created in Lambda by someone else since this plan read it" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert d.proxy.count("DeleteFunction") == 0
    assert FN in d.functions()
    assert d.code() == SHA2
    assert d.lam.list_tags(Resource=d.config()["FunctionArn"])["Tags"] == theirs
    state = d.state()
    assert FN not in state["functions"]
    assert state["history"][-1]["status"] == "failed"


def test_lost_create_answer_then_already_exists_is_this_applys_create(d):
    """CreateFunction reaches Lambda but its answer is lost; botocore's retry gets
    ResourceConflictException: the function carries this apply's ownership tags and code,
    so the create happened: the apply goes on instead of deleting it."""
    cut = d.proxy.add_rule("CreateFunction", "cut", times=1)
    r = d.apply()
    assert r.returncode == 0, r.stderr
    assert cut.fired == 1 and d.proxy.count("CreateFunction") == 2, d.proxy.operations()
    assert "it was created by this apply" in r.stderr, r.stderr
    assert d.proxy.count("DeleteFunction") == 0
    assert d.code() == SHA1 and d.aws.versions(FN) == ["1"] and d.aws.aliases(FN) == {"live": "1"}
    state = d.state()
    assert state["history"][-1]["status"] == "succeeded"
    assert state["functions"][FN]["version"] == "1"
    check(cli(d, "plan", "--detailed-exitcode", proxy=False), 0)


# ---------------------------------------------------------------- item 3: the state fails mid-apply


def _chattr(flag: str, *paths) -> bool:
    r = subprocess.run(["chattr", flag, *map(str, paths)], capture_output=True, text=True, check=False)
    return r.returncode == 0


def test_unwritable_state_after_create_rolls_back(d):
    """The state becomes unwritable (immutable) as CreateFunction is sent: writing the
    step fails with PermissionError; the apply still rolls back (deletes the function it
    created) and says that the state could not record it."""
    probe = d.state_dir / "probe"
    probe.parent.mkdir(parents=True)
    probe.write_text("")
    if not _chattr("+i", probe):
        pytest.skip("chattr +i is not available here")
    _chattr("-i", probe)
    probe.unlink()
    env_dir = d.state_path.parent
    frozen: list = []

    def freeze_before_create(entry) -> bool:
        # when CreateFunction reaches the proxy (the apply's in-flight record is written),
        # before it is forwarded: every later state write of the apply fails
        if entry["operation"] == "CreateFunction" and not frozen:
            frozen.extend(sorted(env_dir.iterdir()) + [env_dir])
            assert _chattr("+i", *frozen)
        return False  # no fault: CreateFunction goes on to moto

    d.proxy.add_rule(freeze_before_create, "fail")
    try:
        r = d.apply()
    finally:
        if frozen:
            _chattr("-i", *frozen)
    assert frozen and d.proxy.count("CreateFunction") == 1
    assert r.returncode == 1, r.stderr
    assert "PermissionError" in r.stderr and "rolled back to what ran before" in r.stderr, r.stderr
    assert "the state could not record this" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert d.proxy.count("DeleteFunction") == 1 and FN not in d.functions()
    # the state still says the apply started: the next plan converges it
    d.proxy.clear(rules=True)
    r = cli(d, "plan", "--detailed-exitcode", proxy=False)
    check(r, 2)
    assert "was interrupted" in r.stdout, r.stdout
    r = d.apply()
    assert r.returncode == 0, r.stderr
    assert d.code() == SHA1 and d.aws.aliases(FN) == {"live": "1"}
    check_state(d.state_path)


# ---------------------------------------------------------------- item 4: versions reconciler published


def test_version_published_while_sigterm_is_reconcilers_not_drift(d):
    """SIGTERM while PublishVersion is answered: Lambda published the version, the apply
    rolled back without knowing it. The version carries the apply's record id: drift does
    not report it as published outside reconciler."""
    d.deploy_v1()
    extra = d.to_v2()
    hang = d.proxy.add_rule("PublishVersion", "hang", times=1, forward=True, hang_seconds=20)
    p = popen_apply(d, *extra)
    deadline = time.monotonic() + 60
    while not any(e["operation"] == "PublishVersion" and e["forwarded"] for e in d.proxy.entries()):
        assert time.monotonic() < deadline and p.poll() is None
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert hang.fired == 1 and p.returncode == 130, (p.returncode, err)
    assert "rolled back" in err, err
    assert d.aws.versions(FN) == ["1", "2"]
    rolled = d.last()
    assert rolled["status"] == "rolled_back" and rolled.get("version") is None
    assert (
        d.lam.get_function_configuration(FunctionName=FN, Qualifier="2")["Description"] == f"reconciler {rolled['id']}"
    )
    d.proxy.clear(rules=True)
    r = cli(d, "drift", proxy=False)
    check(r, 0)
    assert "published outside reconciler" not in r.stdout


def test_refresh_clears_the_versions_it_accepts(d):
    """A version published by hand is drift; `refresh` accepts it, and drift is clean after."""
    d.deploy_v1()
    d.lam.update_function_configuration(FunctionName=FN, Timeout=11)
    time.sleep(0.2)
    assert d.lam.publish_version(FunctionName=FN, Description="by hand")["Version"] == "2"
    r = cli(d, "drift", proxy=False)
    check(r, 2)
    assert "version 2 published outside reconciler" in r.stdout, r.stdout
    check(cli(d, "refresh", "--auto-approve", proxy=False), 0)
    r = cli(d, "drift", proxy=False)
    check(r, 0)


# ---------------------------------------------------------------- item 9: ownership includes the infrastructure


def test_two_infrastructures_do_not_take_a_function_from_each_other(d):
    """Two infrastructures of one environment render the same function name (validate
    refuses the workspace as a whole): applying each one alone must not take the function
    from the other."""
    harness = d.ws / ".harness"
    text = (harness / "infrastructure-staging.yaml").read_text()
    (harness / "infrastructure-staging-b.yaml").write_text(
        text.replace("identifier: staging_use1", "identifier: staging_use1b").replace(
            "name: staging-us-east-1", "name: staging-b"
        )
    )
    r = cli(d, "apply", "--auto-approve", "-i", "staging_use1", proxy=False)
    check(r, 0)
    tags = d.lam.list_tags(Resource=d.config()["FunctionArn"])["Tags"]
    assert tags["reconciler:infrastructure"] == "staging_use1"
    before = d.config()
    d.proxy.clear()
    r = cli(d, "apply", "--auto-approve", "-i", "staging_use1b")
    check(r, 1)
    assert "it is managed by infrastructure 'staging_use1'" in r.stderr, r.stderr
    assert d.proxy.mutating_requests() == []
    assert d.config()["Environment"] == before["Environment"]
    assert not (d.state_dir / "staging" / "staging_use1b.json").exists()


def test_function_deployed_before_the_infrastructure_tag_is_kept_by_its_state(d):
    """A function deployed before reconciler tagged the infrastructure (no
    reconciler:infrastructure tag): the infrastructure whose state records it adopts it and
    adds the tag; another infrastructure is refused, and told how to adopt it if it is its."""
    d.deploy_v1()
    arn = d.config()["FunctionArn"]
    d.lam.untag_resource(Resource=arn, TagKeys=["reconciler:infrastructure"])
    state = json.loads(d.state_path.read_text())
    state["functions"][FN]["tags"].pop("reconciler:infrastructure", None)
    d.state_path.write_text(json.dumps(state))
    # another infrastructure rendering the same name: refused
    harness = d.ws / ".harness"
    text = (harness / "infrastructure-staging.yaml").read_text()
    (harness / "infrastructure-staging-b.yaml").write_text(
        text.replace("identifier: staging_use1", "identifier: staging_use1b").replace(
            "name: staging-us-east-1", "name: staging-b"
        )
    )
    r = cli(d, "plan", "-i", "staging_use1b", proxy=False)
    check(r, 1)
    assert "without a reconciler:infrastructure tag" in r.stderr and f"reconciler import {FN}" in r.stderr, r.stderr
    # its own infrastructure: the tag is added, nothing else changes
    r = cli(d, "plan", "--detailed-exitcode", "-i", "staging_use1", proxy=False)
    check(r, 2)
    assert "Tags.reconciler:infrastructure" in r.stdout, r.stdout
    check(cli(d, "apply", "--auto-approve", "-i", "staging_use1", proxy=False), 0)
    assert d.lam.list_tags(Resource=arn)["Tags"]["reconciler:infrastructure"] == "staging_use1"
    assert d.aws.versions(FN) == ["1"]


def test_restore_never_deletes_a_function_without_this_functions_ownership_tags(aws):
    """The rollback of a create deletes only a function carrying the ownership tags of the
    function being deployed: not one made by another tool or for another infrastructure."""
    from reconciler.engine.apply import restore
    from reconciler.aws.client import Aws

    aws.create_role("greeter-lambda-role")
    lam = aws.client("lambda")
    mine = {
        "reconciler:service": "greeter",
        "reconciler:environment": "staging",
        "reconciler:infrastructure": "staging_use1",
    }
    role = f"arn:aws:iam::{aws.account}:role/greeter-lambda-role"
    for name, tags in (
        ("theirs", {"team": "other"}),
        ("other-infra", {**mine, "reconciler:infrastructure": "staging_use1b"}),
        ("mine", mine),
    ):
        lam.create_function(
            FunctionName=name,
            Runtime="python3.12",
            Handler="handler.handler",
            Role=role,
            Tags=tags,
            Code={"ZipFile": ZIP2},
        )
    said: list[str] = []
    for name in ("theirs", "other-infra", "mine", "never-created"):
        restore(Aws(), name, "us-east-1", None, {"exists": False}, said.append, owner={"team": "x", **mine})
    names = {f["FunctionName"] for f in lam.list_functions()["Functions"]}
    assert {"theirs", "other-infra"} <= names and "mine" not in names, said
    assert sum("not deleted" in m for m in said) == 2 and any("nothing to delete" in m for m in said), said
