"""Self-checks for the test harness (moto_server subprocess + FaultProxy)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, HTTPClientError, ReadTimeoutError

from harness.faultproxy import classify, is_mutating, lambda_operation

pytestmark = pytest.mark.e2e

NO_RETRY = Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=5, read_timeout=10)
RETRY = Config(retries={"total_max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=10)


def _create_function(aws, lam, name="fn", files=None):
    role = aws.create_role()
    body = aws.make_zip(files or {"index.py": "def handler(e, c):\n    return 1\n"})
    sha = aws.put_zip("artifacts", f"{name}.zip", body)
    cfg = lam.create_function(
        FunctionName=name,
        Runtime="python3.12",
        Role=role,
        Handler="index.handler",
        Code={"S3Bucket": "artifacts", "S3Key": f"{name}.zip"},
        Timeout=3,
    )
    return cfg, sha


@pytest.fixture
def plam(aws, fault_proxy):
    """Lambda client through the proxy, retries disabled."""
    return aws.client("lambda", endpoint_url=fault_proxy.endpoint, config=NO_RETRY)


# ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "method,path,op",
    [
        ("POST", "/2015-03-31/functions", "CreateFunction"),
        ("GET", "/2015-03-31/functions/", "ListFunctions"),
        ("GET", "/2015-03-31/functions/fn", "GetFunction"),
        ("DELETE", "/2015-03-31/functions/fn", "DeleteFunction"),
        ("PUT", "/2015-03-31/functions/fn/code", "UpdateFunctionCode"),
        ("PUT", "/2015-03-31/functions/fn/configuration", "UpdateFunctionConfiguration"),
        ("GET", "/2015-03-31/functions/fn/configuration", "GetFunctionConfiguration"),
        ("POST", "/2015-03-31/functions/fn/versions", "PublishVersion"),
        ("GET", "/2015-03-31/functions/fn/versions", "ListVersionsByFunction"),
        ("POST", "/2015-03-31/functions/fn/aliases", "CreateAlias"),
        ("PUT", "/2015-03-31/functions/fn/aliases/live", "UpdateAlias"),
        ("GET", "/2015-03-31/functions/fn/aliases/live", "GetAlias"),
        ("DELETE", "/2015-03-31/functions/fn/aliases/live", "DeleteAlias"),
        ("POST", "/2017-03-31/tags/arn:aws:lambda:us-east-1:123456789012:function:fn", "TagResource"),
        ("DELETE", "/2017-03-31/tags/arn:aws:lambda:us-east-1:123456789012:function:fn", "UntagResource"),
        ("PUT", "/2017-10-31/functions/fn/concurrency", "PutFunctionConcurrency"),
    ],
)
def test_lambda_operation_names(method, path, op):
    assert lambda_operation(method, path)[0] == op


def test_classify_non_lambda_posts_are_not_mutating():
    auth = "AWS4-HMAC-SHA256 Credential=testing/20240101/us-east-1/{}/aws4_request, SignedHeaders=host, Signature=x"
    e = classify(
        "POST",
        "/",
        {"Authorization": auth.format("ecr"), "X-Amz-Target": "AmazonEC2ContainerRegistry_V20150921.DescribeImages"},
        b"{}",
    )
    assert (e["service"], e["operation"], e["mutating"]) == ("ecr", "DescribeImages", False)
    e = classify(
        "POST",
        "/",
        {"Authorization": auth.format("sts"), "Content-Type": "application/x-www-form-urlencoded"},
        b"Action=GetCallerIdentity&Version=2011-06-15",
    )
    assert (e["operation"], e["mutating"]) == ("GetCallerIdentity", False)
    e = classify("PUT", "/bucket/key.zip", {"Authorization": auth.format("s3")}, b"x")
    assert (e["operation"], e["mutating"]) == ("PutObject", False)
    e = classify("PUT", "/bucket/key.zip", {"Authorization": auth.format("s3")}, b"x", extra_mutating={"PutObject"})
    assert e["mutating"] is True


# ----------------------------------------------------------------------
def test_log_and_mutating_classification(aws, fault_proxy, plam):
    cfg, sha = _create_function(aws, plam)
    assert cfg["CodeSha256"] == sha  # put_zip's sha == Lambda's CodeSha256
    plam.get_function(FunctionName="fn")
    # reads sent as POST through the proxy must not count as mutating
    aws.client("sts", endpoint_url=fault_proxy.endpoint).get_caller_identity()
    aws.client("ecr", endpoint_url=fault_proxy.endpoint).describe_repositories()

    ops = fault_proxy.operations()
    assert ops == ["CreateFunction", "GetFunction", "GetCallerIdentity", "DescribeRepositories"]
    by_op = {e["operation"]: e for e in fault_proxy.log}
    assert by_op["CreateFunction"]["mutating"] is True
    assert by_op["CreateFunction"]["service"] == "lambda"
    assert by_op["CreateFunction"]["status"] == 201
    assert by_op["GetFunction"]["mutating"] is False
    assert by_op["GetFunction"]["function"] == "fn"
    assert [e["operation"] for e in fault_proxy.mutating_requests()] == ["CreateFunction"]
    fault_proxy.clear()
    assert fault_proxy.log == []


def test_throttle_without_and_with_retries(aws, fault_proxy, plam):
    _create_function(aws, aws.client("lambda"))
    rule = fault_proxy.add_rule("GetFunction", "throttle")
    with pytest.raises(ClientError) as ei:
        plam.get_function(FunctionName="fn")
    assert ei.value.response["Error"]["Code"] == "TooManyRequestsException"
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert rule.fired == 1

    fault_proxy.add_rule("GetFunction", "throttle")  # the next one, once
    rlam = aws.client("lambda", endpoint_url=fault_proxy.endpoint, config=RETRY)
    assert rlam.get_function(FunctionName="fn")["Configuration"]["FunctionName"] == "fn"
    assert [e["status"] for e in fault_proxy.log] == [429, 429, 200]
    assert [e["forwarded"] for e in fault_proxy.log] == [False, False, True]


def test_fail_gives_500(aws, fault_proxy, plam):
    _create_function(aws, aws.client("lambda"))
    fault_proxy.add_rule("GetFunction", "fail", nth=2)
    plam.get_function(FunctionName="fn")
    with pytest.raises(ClientError) as ei:
        plam.get_function(FunctionName="fn")
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert ei.value.response["Error"]["Code"] == "ServiceException"
    assert ei.value.response["Error"]["Message"] == "injected fault"
    plam.get_function(FunctionName="fn")  # times=1: only the 2nd
    assert [e["fault"] for e in fault_proxy.log] == [None, "fail", None]


def test_cut_applies_change_but_client_never_hears(aws, fault_proxy, plam):
    _create_function(aws, aws.client("lambda"))
    fault_proxy.add_rule("UpdateFunctionConfiguration", "cut")
    with pytest.raises(HTTPClientError):  # ConnectionClosedError
        plam.update_function_configuration(FunctionName="fn", Timeout=42)
    assert aws.lambda_config("fn")["Timeout"] == 42
    entry = fault_proxy.log[-1]
    assert (entry["fault"], entry["forwarded"], entry["status"]) == ("cut", True, None)
    assert fault_proxy.mutating_requests(forwarded_only=True) == [entry]


def test_hang_times_out(aws, fault_proxy):
    _create_function(aws, aws.client("lambda"))
    fault_proxy.add_rule("GetFunction", "hang", hang_seconds=3)
    lam = aws.client(
        "lambda", endpoint_url=fault_proxy.endpoint, config=Config(retries={"total_max_attempts": 1}, read_timeout=0.5)
    )
    t = time.monotonic()
    with pytest.raises(ReadTimeoutError):
        lam.get_function(FunctionName="fn")
    assert time.monotonic() - t < 2.5
    assert fault_proxy.log[-1]["forwarded"] is False


def test_after_fires_once_after_nth_response(aws, fault_proxy, plam):
    _create_function(aws, aws.client("lambda"))
    seen = []

    def cb():
        seen.append([(e["operation"], e["status"]) for e in fault_proxy.log])

    hook = fault_proxy.after("GetFunction", 2, cb)
    for _ in range(4):
        plam.get_function(FunctionName="fn")
    assert hook.event.wait(5)
    assert len(seen) == 1 and hook.fired and hook.error is None
    # when it ran, the 2nd GetFunction had been answered, the 3rd not sent
    assert seen[0] == [("GetFunction", 200), ("GetFunction", 200)]


def test_after_kill_stops_client_at_nth_mutation(aws, fault_proxy, run_cli):
    """The intended use: SIGKILL a client right after its Nth mutating call."""
    _create_function(aws, aws.client("lambda"))
    arn = aws.lambda_config("fn")["FunctionArn"]
    script = textwrap.dedent(f"""
        import boto3, sys
        lam = boto3.client("lambda", endpoint_url={fault_proxy.endpoint!r})
        for i in range(10):
            lam.tag_resource(Resource={arn!r}, Tags={{"k%d" % i: "v"}})
            print(i, flush=True)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", script], env=run_cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )

    def kill():
        proc.kill()
        proc.wait()

    hook = fault_proxy.after(is_mutating, 3, kill)
    try:
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    proc.stdout.close()
    proc.stderr.close()
    assert hook.fired and proc.returncode == -9
    assert len(fault_proxy.mutating_requests(forwarded_only=True)) == 3
    tags = aws.client("lambda").list_tags(Resource=arn)["Tags"]
    assert sorted(tags) == ["k0", "k1", "k2"]


# ----------------------------------------------------------------------
def test_push_image_digest_matches_ecr_and_lambda(aws):
    digest = aws.push_image("app", "v1")
    assert digest.startswith("sha256:")
    images = aws.client("ecr").describe_images(repositoryName="app", imageIds=[{"imageTag": "v1"}])["imageDetails"]
    assert images[0]["imageDigest"] == digest
    assert aws.push_image("app", "v2") != digest
    # MOTO_LAMBDA_STUB_ECR=false: an image function's CodeSha256 is the digest
    cfg = aws.client("lambda").create_function(
        FunctionName="img", Role=aws.create_role(), PackageType="Image", Code={"ImageUri": aws.image_uri("app", "v1")}
    )
    assert cfg["CodeSha256"] == digest.split(":", 1)[1]


def test_put_zip_sha_and_s3_checksum(aws):
    body = aws.make_zip({"a.py": "x = 1\n", "b/c.txt": "hi"})
    assert body == aws.make_zip({"b/c.txt": "hi", "a.py": "x = 1\n"})  # deterministic
    sha = aws.put_zip("bkt", "k.zip", body)
    head = aws.client("s3").head_object(Bucket="bkt", Key="k.zip", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == sha
    lam = aws.client("lambda")
    cfg = lam.create_function(
        FunctionName="z",
        Runtime="python3.12",
        Role=aws.create_role(),
        Handler="a.handler",
        Code={"S3Bucket": "bkt", "S3Key": "k.zip"},
    )
    assert cfg["CodeSha256"] == sha
    lam.publish_version(FunctionName="z")
    lam.create_alias(FunctionName="z", Name="live", FunctionVersion="1")
    assert aws.versions("z") == ["1"]
    assert aws.aliases("z") == {"live": "1"}


def test_aws_env_resets_and_isolates(aws_env, aws, moto_server):
    import os

    assert aws_env["AWS_ENDPOINT_URL"] == moto_server.endpoint
    assert os.environ["AWS_ENDPOINT_URL"] == moto_server.endpoint
    assert "AWS_PROFILE" not in aws_env and aws_env["NO_COLOR"] == "1"
    assert aws.client("lambda").list_functions()["Functions"] == []
    assert aws.client("sts").get_caller_identity()["Account"] == "123456789012"
