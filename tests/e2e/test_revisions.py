"""Lambda's real semantics, end to end: functions are Pending before Active, updates
InProgress before Successful, every change is guarded by a RevisionId, a change while
an update is in progress is refused (ResourceConflictException). moto models none of
this; LocalStack does (tests/harness/localstack.py), so the tests that need it run there.

The two-environments sample, staging target, every CLI call through the FaultProxy."""

from __future__ import annotations

import json

import pytest
from harness.faultproxy import is_mutating
from harness.localstack import on_both_emulators
from test_failures import FN, SHA1, SHA2, Deploy

pytestmark = pytest.mark.e2e

BY_HAND = "changed by hand"
# tests/localstack_plugin: a version whose environment has it cannot be prepared (Failed)
PREPARATION_FAILS = "RECONCILER_TEST_PREPARATION_FAILS"


def failing_preparation(d) -> None:
    """The function definition gains the variable that makes LocalStack fail the version."""
    d.edit = json.loads((d.ws / "lambda-definition.json").read_text())
    d.edit["environment"]["variables"][PREPARATION_FAILS] = "no room for it"
    (d.ws / "lambda-definition.json").write_text(json.dumps(d.edit))


@pytest.fixture
def d(aws, workspace, tmp_path, run_cli, fault_proxy):
    return Deploy(aws, workspace, tmp_path, run_cli, fault_proxy)


def settled(lam, name: str = FN) -> dict:
    """Wait (straight at the emulator) until the function is Active and not updating."""
    lam.get_waiter("function_active_v2").wait(FunctionName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 100})
    lam.get_waiter("function_updated_v2").wait(FunctionName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 100})
    return lam.get_function_configuration(FunctionName=name)


@on_both_emulators
def test_first_deploy_then_an_update(d):
    """Create → Active → publish → alias, then code and configuration → publish → alias."""
    r = d.apply()
    assert r.returncode == 0, r.stderr
    conf = settled(d.lam)
    assert (conf["State"], conf["CodeSha256"]) == ("Active", SHA1)
    assert d.aws.versions(FN) == ["1"]
    assert d.aws.aliases(FN) == {"live": "1"}
    assert d.last()["status"] == "succeeded"
    first = d.proxy.operations("lambda")
    assert first.count("CreateFunction") == 1 and first.count("PublishVersion") == 1
    if d.aws.emulator == "localstack":  # created Pending: polled until Active before the publish
        between = first[first.index("CreateFunction") + 1 : first.index("PublishVersion")]
        assert between and set(between) == {"GetFunction"}, first

    d.proxy.clear()
    r = d.apply(*d.to_v2())
    assert r.returncode == 0, r.stderr
    conf = settled(d.lam)
    assert (conf["CodeSha256"], conf["MemorySize"]) == (SHA2, 256)
    assert d.aws.versions(FN) == ["1", "2"]
    assert d.aws.aliases(FN) == {"live": "2"}
    v2 = d.lam.get_function_configuration(FunctionName=FN, Qualifier="2")
    assert (v2["CodeSha256"], v2["MemorySize"]) == (SHA2, 256)
    # every change went with the RevisionId Lambda gave the state this apply waited for
    if d.aws.emulator == "localstack":
        sent = [
            e
            for e in d.proxy.mutating_requests()
            if e["operation"] in ("UpdateFunctionCode", "UpdateFunctionConfiguration", "PublishVersion", "UpdateAlias")
        ]
        assert [e["operation"] for e in sent] == [
            "UpdateFunctionCode",
            "UpdateFunctionConfiguration",
            "PublishVersion",
            "UpdateAlias",
        ]
        assert all(b'"RevisionId"' in e["body"] for e in sent), [e["body"] for e in sent]
    # and a second apply has nothing to do
    d.proxy.clear()
    r = d.apply("--var", "memorySize=256")
    assert r.returncode == 0, r.stderr
    assert d.proxy.mutating_requests() == []


def hand_change(d, operation: str):
    """What a person does by hand right before the apply's `operation` reaches Lambda:
    a change to the alias before an alias call, else to the function's configuration."""
    lam = d.aws.client("lambda")  # straight at the emulator
    if operation == "UpdateAlias":
        return lambda: lam.update_alias(FunctionName=FN, Name="live", Description=BY_HAND)
    if operation == "CreateAlias":
        return lambda: lam.create_alias(FunctionName=FN, Name="live", FunctionVersion="$LATEST", Description=BY_HAND)
    return lambda: (settled(lam), lam.update_function_configuration(FunctionName=FN, Description=BY_HAND))


@pytest.mark.parametrize("emulator", ["localstack"], indirect=True)  # moto ignores RevisionId
@pytest.mark.parametrize("nth,operation", [(2, "PublishVersion"), (3, "CreateAlias")])
def test_hand_change_during_a_first_deploy_is_refused_and_rolled_back(d, nth, operation):
    d.proxy.before(is_mutating, nth, hand_change(d, operation))
    r = d.apply()
    assert r.returncode == 1, r.stdout + r.stderr
    assert [e["operation"] for e in d.proxy.mutating_requests()][nth - 1] == operation
    if operation == "PublishVersion":
        assert "changed in Lambda since this plan was made" in r.stderr, r.stderr
    else:
        assert "ResourceConflictException" in r.stderr, r.stderr
    assert "rolled back" in r.stderr
    # the function this apply created is gone again: nothing was published
    assert FN not in d.functions()
    assert d.last()["status"] == "rolled_back"
    assert FN not in d.state()["functions"]


@pytest.mark.parametrize("emulator", ["localstack"], indirect=True)  # moto ignores RevisionId
@pytest.mark.parametrize(
    "nth,operation", [(2, "UpdateFunctionConfiguration"), (3, "PublishVersion"), (4, "UpdateAlias")]
)
def test_hand_change_during_an_update_is_refused_and_rolled_back(d, nth, operation):
    d.deploy_v1()
    settled(d.lam)
    d.proxy.before(is_mutating, nth, hand_change(d, operation))
    r = d.apply(*d.to_v2())
    assert r.returncode == 1, r.stdout + r.stderr
    assert [e["operation"] for e in d.proxy.mutating_requests()][nth - 1] == operation
    assert "changed in Lambda since this plan was made" in r.stderr, r.stderr
    assert "rolled back" in r.stderr
    conf = settled(d.lam)
    assert (conf["CodeSha256"], conf["MemorySize"]) == (SHA1, 128)
    assert d.aws.aliases(FN) == {"live": "1"}
    # the hand change was never published: no version but 1 holds it or the new code
    if operation != "UpdateAlias":
        assert d.aws.versions(FN) == ["1"]
    for v in d.aws.versions(FN):
        got = d.lam.get_function_configuration(FunctionName=FN, Qualifier=v)
        assert got.get("Description") != BY_HAND
    assert d.last()["status"] == "rolled_back"
    assert "changed in Lambda since this plan was made" in d.last()["error"]
    assert d.state()["functions"][FN]["code_sha256"] == SHA1


@pytest.mark.parametrize("emulator", ["localstack"], indirect=True)  # moto's updates are over when it answers
def test_hand_change_as_an_update_finishes_is_refused_and_rolled_back(d):
    """A hand change made after the configuration update finished, before the apply's poll
    saw it finish (the poll waits at the proxy meanwhile): refused, never published."""
    d.deploy_v1()
    settled(d.lam)
    lam = d.aws.client("lambda")
    d.proxy.after(
        is_mutating,
        2,
        lambda: (settled(lam), lam.update_function_configuration(FunctionName=FN, Timeout=11), settled(lam)),
    )
    r = d.apply(*d.to_v2())
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Timeout changed meanwhile" in r.stderr and "changed in Lambda since this plan was made" in r.stderr, (
        r.stderr
    )
    assert "rolled back" in r.stderr
    conf = settled(d.lam)
    assert (conf["CodeSha256"], conf["MemorySize"], conf["Timeout"]) == (SHA1, 128, 10)
    assert d.aws.versions(FN) == ["1"] and d.aws.aliases(FN) == {"live": "1"}
    assert d.last()["status"] == "rolled_back"


def test_an_update_in_progress_is_waited_out(d):
    """Lambda answers ResourceConflictException while another update of the function is
    in progress: the apply waits until it is over and sends the same change again."""
    d.deploy_v1()
    conflict = {"status": 409, "error_type": "ResourceConflictException"}
    d.proxy.add_rule("UpdateFunctionConfiguration", "fail", times=1, **conflict)
    d.proxy.add_rule("PublishVersion", "fail", times=2, **conflict)
    r = d.apply(*d.to_v2())
    assert r.returncode == 0, r.stderr
    assert d.proxy.count("UpdateFunctionConfiguration") == 2 and d.proxy.count("PublishVersion") == 3
    conf = d.config()
    assert (conf["CodeSha256"], conf["MemorySize"]) == (SHA2, 256)
    assert d.aws.aliases(FN) == {"live": "2"}
    assert d.last()["status"] == "succeeded"


@pytest.mark.parametrize("emulator", ["localstack"], indirect=True)
def test_a_real_update_in_progress_is_waited_out(d):
    """On LocalStack: a hand update still InProgress when the apply's first change arrives
    (a conflict, waited out) with the RevisionId the plan read, which the hand update
    changed: refused as stale, nothing changed."""
    d.deploy_v1()
    settled(d.lam)
    lam = d.aws.client("lambda")
    d.proxy.before(is_mutating, 1, lambda: lam.update_function_configuration(FunctionName=FN, Timeout=11))
    r = d.apply(*d.to_v2())
    assert r.returncode == 1, r.stderr
    assert "changed in Lambda since this plan was made" in r.stderr
    assert settled(d.lam)["Timeout"] == 11  # the hand change stays: nothing of this apply ran
    assert d.aws.versions(FN) == ["1"] and d.aws.aliases(FN) == {"live": "1"}


@pytest.mark.parametrize("emulator", ["localstack"], indirect=True)  # moto has no Failed update
def test_an_update_lambda_cannot_finish_fails_and_is_rolled_back(d):
    d.deploy_v1()
    settled(d.lam)
    failing_preparation(d)
    r = d.apply(*d.to_v2())
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Lambda reports the update Failed" in r.stderr, r.stderr
    assert "rolled back" in r.stderr, r.stderr
    assert d.proxy.count("PublishVersion") == 0
    conf = settled(d.lam)
    assert (conf["CodeSha256"], conf["MemorySize"]) == (SHA1, 128)
    assert PREPARATION_FAILS not in conf["Environment"]["Variables"]
    assert d.aws.versions(FN) == ["1"] and d.aws.aliases(FN) == {"live": "1"}
    assert d.last()["status"] == "rolled_back"
