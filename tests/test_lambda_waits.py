"""aws.Lambda's waits and conflict handling, against botocore's Stubber: the answers
Lambda gives (Pending, InProgress, Failed, ResourceConflictException) that moto never
does. What each call sent is checked by the Stubber's expected parameters."""

from __future__ import annotations

import pytest
from botocore.stub import ANY, Stubber

from reconciler.aws.client import Aws, Lambda
from reconciler.errors import AwsError

FN = "greeter"


@pytest.fixture
def lam(monkeypatch):
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setattr(Lambda, "POLL_FIRST", 0.01)
    lam = Lambda(Aws(), "us-east-1")
    with Stubber(lam.c) as stub:
        lam.stub = stub
        yield lam
        stub.assert_no_pending_responses()


def conf(**kw) -> dict:
    return {"FunctionName": FN, "Version": "$LATEST", "CodeSha256": "c1", **kw}


def polled(stub, qualifier=None, **kw) -> None:
    params = {"FunctionName": FN, **({"Qualifier": qualifier} if qualifier else {})}
    stub.add_response("get_function", {"Configuration": conf(**kw)}, params)


def test_create_waits_for_active_and_answers_with_the_active_revision(lam):
    lam.stub.add_response(
        "create_function", conf(State="Pending", RevisionId="r-create"), {"FunctionName": FN, "Role": ANY, "Code": ANY}
    )
    polled(lam.stub, State="Pending", RevisionId="r-create")
    polled(lam.stub, State="Active", RevisionId="r-active", LastUpdateStatus="Successful")
    out = lam.create_function(
        {"FunctionName": FN, "Role": "arn:aws:iam::123456789012:role/r", "Code": {"ZipFile": b"x"}}
    )
    assert out["RevisionId"] == "r-active" and out["State"] == "Active"


def test_update_in_progress_is_waited_for_and_the_next_change_carries_the_polled_revision(lam):
    lam.stub.add_response(
        "update_function_code",
        conf(LastUpdateStatus="InProgress", RevisionId="r2"),
        {"FunctionName": FN, "S3Bucket": "bkt", "S3Key": "k", "RevisionId": "r1"},
    )
    polled(lam.stub, State="Active", LastUpdateStatus="InProgress", RevisionId="r2")
    polled(lam.stub, State="Active", LastUpdateStatus="Successful", RevisionId="r3")
    out = lam.update_code(FN, {"S3Bucket": "bkt", "S3Key": "k"}, None, "r1")
    assert out["RevisionId"] == "r3"
    lam.stub.add_response(
        "publish_version",
        conf(Version="4", State="Pending", RevisionId="v4"),
        {"FunctionName": FN, "Description": "", "CodeSha256": "c1", "RevisionId": "r3"},
    )
    polled(lam.stub, qualifier="4", Version="4", State="Active", RevisionId="v4b")
    assert lam.publish_version(FN, "c1", out["RevisionId"])["RevisionId"] == "v4b"


def test_a_failed_update_raises_with_lambdas_reason(lam):
    lam.stub.add_response(
        "update_function_configuration",
        conf(LastUpdateStatus="InProgress", RevisionId="r2"),
        {"FunctionName": FN, "MemorySize": 256, "RevisionId": "r1"},
    )
    polled(
        lam.stub,
        State="Active",
        LastUpdateStatus="Failed",
        LastUpdateStatusReasonCode="SubnetOutOfIPAddresses",
        LastUpdateStatusReason="no free IP address in subnet-1",
    )
    with pytest.raises(
        AwsError, match="Lambda reports the update Failed: SubnetOutOfIPAddresses: no free IP address in subnet-1"
    ):
        lam.update_configuration(FN, {"MemorySize": 256}, "r1")


def test_a_failed_create_raises_with_lambdas_reason(lam):
    lam.stub.add_response(
        "create_function", conf(State="Pending", RevisionId="r1"), {"FunctionName": FN, "Role": ANY, "Code": ANY}
    )
    polled(lam.stub, State="Failed", StateReasonCode="InvalidRuntime", StateReason="runtime is not supported")
    with pytest.raises(AwsError, match="Lambda reports the function Failed: InvalidRuntime: runtime is not supported"):
        lam.create_function({"FunctionName": FN, "Role": "arn:aws:iam::123456789012:role/r", "Code": {"ZipFile": b"x"}})


def test_an_update_in_progress_is_waited_out_then_the_same_request_is_sent_again(lam):
    sent = {"FunctionName": FN, "Description": "", "CodeSha256": "c1", "RevisionId": "r3"}
    lam.stub.add_client_error(
        "publish_version",
        "ResourceConflictException",
        "An update is in progress for resource",
        409,
        expected_params=sent,
    )
    polled(lam.stub, State="Active", LastUpdateStatus="InProgress", RevisionId="r3")
    polled(lam.stub, State="Active", LastUpdateStatus="Successful", RevisionId="r3")
    lam.stub.add_response("publish_version", conf(Version="2", State="Active", RevisionId="v2"), sent)
    assert lam.publish_version(FN, "c1", "r3")["Version"] == "2"


def test_a_conflict_that_outlasts_the_bound_fails(lam, monkeypatch):
    monkeypatch.setattr(Lambda, "CONFLICT_WAIT", 0.0)
    lam.stub.add_client_error("update_alias", "ResourceConflictException", "An update is in progress", 409)
    with pytest.raises(AwsError, match="ResourceConflictException"):
        lam.put_alias(FN, {"Name": "live"}, "2", exists=True, revision_id="a1")


def test_a_precondition_failure_is_not_retried(lam):
    lam.stub.add_client_error(
        "update_function_code", "PreconditionFailedException", "The Revision Id provided does not match", 412
    )
    with pytest.raises(AwsError) as err:
        lam.update_code(FN, {"S3Bucket": "bkt", "S3Key": "k"}, None, "old")
    assert err.value.code == "PreconditionFailedException"


def test_a_change_that_lands_as_the_update_finishes_is_refused(lam):
    """The poll that ends the wait shows a Timeout the update did not set: someone changed
    the function between the update finishing and the poll."""
    lam.stub.add_response(
        "update_function_configuration",
        conf(LastUpdateStatus="InProgress", RevisionId="r2", Timeout=10),
        {"FunctionName": FN, "Timeout": 10, "RevisionId": "r1"},
    )
    polled(lam.stub, State="Active", LastUpdateStatus="Successful", RevisionId="r4", Timeout=11)
    with pytest.raises(AwsError, match="Timeout changed meanwhile") as err:
        lam.update_configuration(FN, {"Timeout": 10}, "r1")
    assert err.value.code == "ChangedWhileUpdating"


def test_lambdas_failure_reason_is_scrubbed_of_environment_values(lam):
    """Lambda's reason for a Failed update is AWS's text, like an error's: an environment
    value it echoes is masked as in any AWS error."""
    from reconciler.util.secrets import remember

    value = "db-password-7f3a91c2e4"
    remember(value)
    lam.stub.add_response(
        "update_function_configuration",
        conf(LastUpdateStatus="InProgress", RevisionId="r2"),
        {"FunctionName": FN, "MemorySize": 256, "RevisionId": "r1"},
    )
    polled(
        lam.stub,
        State="Active",
        LastUpdateStatus="Failed",
        LastUpdateStatusReasonCode="InvalidParameterValue",
        LastUpdateStatusReason=f"cannot apply DB_PASSWORD={value}",
    )
    with pytest.raises(AwsError, match="Lambda reports the update Failed: InvalidParameterValue") as err:
        lam.update_configuration(FN, {"MemorySize": 256}, "r1")
    assert value not in str(err.value)
