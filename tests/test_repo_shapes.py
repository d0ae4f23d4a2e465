"""Issue 15, the in-process half: what real repositories hold beside their Harness Lambda
YAML, and the checks that must not wait for AWS. The end-to-end half (validate, plan,
apply, replan on moto_server) is tests/e2e/test_real_repos.py (this file: tests/test_repo_shapes.py)."""

from __future__ import annotations

import boto3
import pytest
from botocore.stub import Stubber

from reconciler import aws as awsmod
from reconciler.errors import AwsError


# ---------------------------------------------------------------- item 8: a 404 is not-found only when AWS says so


def _lambda(monkeypatch) -> tuple[awsmod.Lambda, Stubber]:
    for k, v in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    lam = awsmod.Lambda(awsmod.Aws(), "us-east-1")
    stub = Stubber(lam.c)
    stub.activate()
    return lam, stub


def test_a_404_without_an_aws_error_code_is_an_error_not_a_missing_function(monkeypatch):
    """A proxy or a wrong endpoint answering 404 (no ResourceNotFoundException) must not make a
    delete look done or a function look absent."""
    lam, stub = _lambda(monkeypatch)
    stub.add_client_error("delete_function", service_error_code="404", http_status_code=404, service_message="Not Found")
    stub.add_client_error("get_function", service_error_code="", http_status_code=404, service_message="<html>Not Found</html>")
    with pytest.raises(AwsError, match="deleting function f"):
        lam.delete_function("f")
    with pytest.raises(AwsError, match="reading function f"):
        lam.get_function("f")


def test_resource_not_found_is_still_missing(monkeypatch):
    lam, stub = _lambda(monkeypatch)
    stub.add_client_error("get_function", service_error_code="ResourceNotFoundException", http_status_code=404)
    assert lam.get_function("f") is None


def test_s3_head_of_a_missing_object_is_missing():
    """HeadObject has no body: S3's own 404 reaches botocore as the code '404'."""
    s3 = boto3.client("s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(s3) as stub:
        stub.add_client_error("head_object", service_error_code="404", http_status_code=404)
        assert awsmod.call("reading", s3.head_object, not_found_none=awsmod.S3_HEAD_NOT_FOUND, Bucket="b", Key="k") is None
