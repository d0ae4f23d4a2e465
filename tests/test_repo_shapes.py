"""Issue 15, the in-process half: what real repositories hold beside their Harness Lambda
YAML, and the checks that must not wait for AWS. The end-to-end half (validate, plan,
apply, replan on moto_server) is tests/e2e/test_real_repos.py (this file: tests/test_repo_shapes.py)."""

from __future__ import annotations

import boto3
import pytest
from botocore.stub import Stubber

from reconciler.aws import client as awsmod
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
    stub.add_client_error(
        "delete_function", service_error_code="404", http_status_code=404, service_message="Not Found"
    )
    stub.add_client_error(
        "get_function", service_error_code="", http_status_code=404, service_message="<html>Not Found</html>"
    )
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
        assert (
            awsmod.call("reading", s3.head_object, not_found_none=awsmod.S3_HEAD_NOT_FOUND, Bucket="b", Key="k") is None
        )


# ---------------------------------------------------------------- item 1: what a Harness entity is


@pytest.mark.parametrize(
    "data, kind, why",
    [
        ({"service": {"identifier": "s", "serviceDefinition": {}}}, "service", None),
        ({"overrides": {"type": "ENV_GLOBAL_OVERRIDE", "environmentRef": "e"}}, "overrides", None),
        (
            {"service": "hello", "provider": {"name": "aws"}, "functions": {}},
            None,
            "3 top-level keys (service, provider, functions)",
        ),
        ({"service": {"type": "LoadBalancer", "port": 80}}, None, "'service' has no identifier"),
        ({"service": "hello"}, None, "'service' is not a mapping"),
        ({"servce": {"identifier": "s"}}, None, "did you mean 'service'"),
        ({"inputSet": {"identifier": "i", "pipeline": {}}}, None, "an input set"),
        ({"on": {"push": {}}, "jobs": {}}, None, None),  # a CI workflow: no sign of an entity, not listed
        ({"replicaCount": 2}, None, None),
    ],
)
def test_entity_kind(data, kind, why):
    from reconciler.workspace.load import entity_kind
    from reconciler.util.yamlsrc import Doc

    got_kind, got_why = entity_kind(Doc("f.yaml", data))
    assert got_kind == kind
    assert (got_why is None) if why is None else (why in got_why)


# ---------------------------------------------------------------- item 6: loop forms


def _pipe(strategy):
    from reconciler.workspace.load import Entity
    from reconciler.util.yamlsrc import Doc

    stage = {
        "identifier": "deploy",
        "name": "Deploy",
        "type": "Deployment",
        "strategy": strategy,
        "variables": [{"name": "region", "type": "String", "value": "<+repeat.item>"}],
        "spec": {"environment": {"infrastructureDefinitions": [{"identifier": "infra_<+strategy.iteration>"}]}},
    }
    body = {"identifier": "p", "stages": [{"stage": stage}]}
    return Entity("pipeline", "p", "p", body, Doc("p.yaml", {"pipeline": body}, {(): 1}))


def test_repeat_items_times_and_parallelism_give_one_stage_per_iteration():
    from reconciler.workspace.load import LOOP, pipeline_stages

    got = [s for _, s in pipeline_stages(_pipe({"repeat": {"items": ["us-east-1", "eu-west-1"], "maxConcurrency": 1}}))]
    assert [(s["identifier"], s["name"]) for s in got] == [("deploy_0", "Deploy_0"), ("deploy_1", "Deploy_1")]
    assert [s["variables"][0]["value"] for s in got] == ["us-east-1", "eu-west-1"]
    assert [s["spec"]["environment"]["infrastructureDefinitions"][0]["identifier"] for s in got] == [
        "infra_0",
        "infra_1",
    ]
    assert got[1][LOOP] == {"repeat.item": "eu-west-1", "strategy.iteration": 1, "strategy.iterations": 2}
    assert len(pipeline_stages(_pipe({"repeat": {"times": 3}}))) == 3
    assert len(pipeline_stages(_pipe({"parallelism": 4}))) == 4


@pytest.mark.parametrize(
    "strategy, message",
    [
        ({"matrix": {"region": ["a", "b"]}}, "strategy.matrix is not supported"),
        ({"repeat": {"items": "<+input>"}}, "strategy.repeat needs items"),
        ({"parallelism": 0}, "strategy.parallelism must be a number from 1 to 100000"),
        ({"parallelism": 100_001}, "strategy.parallelism must be a number from 1 to 100000"),
        ({"repeat": {"times": 10**12}}, r"or times \(a number from 1 to 100000\)"),
        ({"foo": 1}, "strategy foo is not supported"),
    ],
)
def test_unsupported_loop_forms_say_so(strategy, message):
    from reconciler.errors import ConfigError
    from reconciler.workspace.load import pipeline_stages

    with pytest.raises(ConfigError, match=message):
        pipeline_stages(_pipe(strategy))


# ---------------------------------------------------------------- item 7: regions and model patterns


def test_region_names_follow_botocore_partitions():
    from reconciler.workspace.schema import region_problem

    for ok in (
        "us-east-1",
        "eu-central-2",
        "cn-north-1",
        "us-gov-west-1",
        "us-iso-east-1",
        "ap-southeast-7",
        "mx-central-1",
        "us-east-9",
        "(provisioner.region_name)",
    ):
        assert region_problem(ok) is None, ok
    for bad in ("AWS_REGION", "<REGION>", "your_aws_region", "us-east-1 ", "us-east-1\n", "useast1", "", 1):
        assert region_problem(bad), bad


def test_lambda_model_patterns_are_checked_with_the_shape_rules():
    from reconciler.workspace.schema import input_shape, normalise
    from reconciler.util.yamlsrc import Doc

    errors: list = []
    normalise(
        {
            "FunctionName": "Hello World",
            "Role": "<YOUR_AWS_ARN>",
            "Handler": "app.handler",
            "Environment": {"Variables": {"1BAD": "x", "GOOD": "y"}},
        },
        input_shape("CreateFunction"),
        Doc("fn.json", {}),
        (),
        errors,
    )
    text = "\n".join(str(e) for e in errors)
    assert "'FunctionName' is 'Hello World', which does not match" in text
    assert "'Role' is '<YOUR_AWS_ARN>'" in text
    assert "the name '1BAD' does not match" in text and "GOOD" not in text
    assert len(errors) == 3


def test_parallel_iterations_of_one_function_deploy_it_once_and_differing_ones_conflict(tmp_path):
    """strategy.parallelism: N copies of a stage that render the very same function are one
    function; copies that differ (<+strategy.iteration> in the definition) are a conflict that
    names both iterations."""
    import json
    import shutil
    from pathlib import Path

    from reconciler.errors import ConfigError
    from reconciler.workspace.load import load_workspace
    from reconciler.workspace.render import Options, render

    ws = tmp_path / "ws"
    shutil.copytree(Path(__file__).parent / "fixtures" / "loop-pipeline", ws)
    pipe = ws / ".harness" / "pipeline.yaml"
    text = pipe.read_text()
    start, end = (
        text.index("          repeat:\n"),
        text.index("            maxConcurrency: 1\n") + len("            maxConcurrency: 1\n"),
    )
    pipe.write_text(text[:start] + "          parallelism: 2\n" + text[end:])
    fn = ws / "lambda" / "function.json"
    d = json.loads(fn.read_text())
    d["description"] = "one"
    d["environment"]["variables"] = {"PIPELINE": "<+pipeline.identifier>"}
    fn.write_text(json.dumps(d))
    (ws / "lambda" / "alias.json").write_text('{"name": "live"}')
    # parallelism has no <+repeat.item>: the stage variable names the region itself
    pipe.write_text(pipe.read_text().replace("value: <+repeat.item>", "value: us-east-1"))
    got = render(load_workspace(ws), Options())
    assert [f.name for f in got.functions] == ["greeter-us-east-1"]
    d["environment"]["variables"]["ITERATION"] = "<+strategy.iteration>"
    fn.write_text(json.dumps(d))
    with pytest.raises(
        ConfigError, match=r"defined by two targets: greeter → prod/prod_lambda \(deploy_0\).*\(deploy_1\)"
    ):
        render(load_workspace(ws), Options())


def test_a_repeat_item_in_text_reads_as_an_expression_value_does():
    """`<+repeat.item>` inside a string: a YAML true is `true` (as every expression's value), not Python's `True`."""
    from reconciler.workspace.load import pipeline_stages

    pipe = _pipe({"repeat": {"items": [True, 2]}})
    pipe.body["stages"][0]["stage"]["description"] = "item=<+repeat.item>"
    got = [s for _, s in pipeline_stages(pipe)]
    assert [s["description"] for s in got] == ["item=true", "item=2"]
    assert got[0]["variables"][0]["value"] is True  # the whole value keeps its type
