"""Unit tests: workspace loading and rendering to FunctionSpecs, in-process, no AWS."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest

from reconciler.errors import ConfigError, ErrorList, ReconcilerError
from reconciler.workspace.expr import Scope, resolve_string
from reconciler.workspace.load import load_workspace
from reconciler.workspace.render import Options, render, targets

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
ROLE = "arn:aws:iam::123456789012:role/r"


# ------------------------------------------------------------------ helpers


def write(root: Path, files: dict) -> Path:
    """Write `files` (relative path → YAML text, or a dict/list dumped as JSON) under root."""
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content if isinstance(content, str) else json.dumps(content, indent=2), encoding="utf-8")
    return root


def service_yaml(
    identifier="svc", name=None, variables="", sources=None, ref="zip", files=("/fn.json",), aliases=()
) -> str:
    sources = sources if sources is not None else {"zip": ("bkt", "app.zip")}
    src = "".join(
        f"""
            - identifier: {sid}
              type: AmazonS3
              spec:
                bucketName: {bucket}
                filePath: {key}"""
        for sid, (bucket, key) in sources.items()
    )
    alias_manifest = "".join(
        f"""
        - manifest:
            identifier: alias{i}
            type: AwsLambdaFunctionAliasDefinition
            spec:
              store:
                type: Harness
                spec:
                  files:
                    - {a}"""
        for i, a in enumerate(aliases)
    )
    files_yaml = "".join(f"\n                    - {f}" for f in files)
    text = f"""\
service:
  name: {name or identifier}
  identifier: {identifier}
  serviceDefinition:
    type: AwsLambda
    spec:
      manifests:
        - manifest:
            identifier: fd
            type: AwsLambdaFunctionDefinition
            spec:
              store:
                type: Harness
                spec:
                  files:{files_yaml}{alias_manifest}
      artifacts:
        primary:
          primaryArtifactRef: {ref}
          sources:{src}
"""
    if variables:
        text += "      variables:\n" + textwrap.indent(textwrap.dedent(variables).strip("\n"), " " * 8) + "\n"
    return text


def env_yaml(identifier="dev", name=None, type_="PreProduction", variables="") -> str:
    text = f"environment:\n  name: {name or identifier}\n  identifier: {identifier}\n  type: {type_}\n"
    if variables:
        text += "  variables:\n" + textwrap.indent(textwrap.dedent(variables).strip("\n"), "    ") + "\n"
    return text


def infra_yaml(identifier="use1", env="dev", region="us-east-1", name=None) -> str:
    return (
        f"infrastructureDefinition:\n  name: {name or identifier}\n  identifier: {identifier}\n  environmentRef: {env}\n"
        f"  deploymentType: AwsLambda\n  type: AwsLambda\n  spec:\n    connectorRef: awscp\n    region: {region}\n"
        f"  allowSimultaneousDeployments: false\n"
    )


def fdef(**extra) -> dict:
    d = {"functionName": "fn", "runtime": "python3.12", "handler": "app.handler", "role": ROLE}
    d.update(extra)
    return d


def basic(tmp_path: Path, fn: dict | None = None, **service_kw) -> Path:
    return write(
        tmp_path,
        {
            ".harness/service.yaml": service_yaml(**service_kw),
            ".harness/env.yaml": env_yaml(),
            ".harness/infra.yaml": infra_yaml(),
            "fn.json": fn if fn is not None else fdef(),
        },
    )


def render_ws(root: Path, **opts):
    return render(load_workspace(root), Options(**opts)).functions


def one(root: Path, **opts):
    fns = render_ws(root, **opts)
    assert len(fns) == 1, fns
    return fns[0]


# ------------------------------------------------------------------ keys and types


def test_keys_normalised_to_pascal_case_at_every_level(tmp_path):
    """A definition mixing camelCase, PascalCase and odd-case keys, nested several levels deep, renders with botocore's PascalCase names; env var and tag keys stay verbatim."""
    fn = {
        "functionName": "fn",
        "Runtime": "python3.12",
        "HANDLER": "app.handler",
        "role": ROLE,
        "memorySize": 256,
        "Timeout": 30,
        "environment": {"variables": {"camelKey": "a", "lower_key": "b", "UPPER": "c"}},
        "vpcConfig": {"subnetIds": ["subnet-1"], "SecurityGroupIds": ["sg-1"]},
        "ephemeralStorage": {"size": 1024},
        "tracingConfig": {"mode": "Active"},
        "loggingConfig": {"logFormat": "JSON", "applicationLogLevel": "INFO"},
        "deadLetterConfig": {"targetArn": "arn:aws:sqs:us-east-1:123456789012:dlq"},
        "tags": {"camelTag": "x", "Owner": "me"},
    }
    spec = one(basic(tmp_path, fn))
    assert spec.name == "fn"
    assert spec.package_type == "Zip"
    assert spec.config == {
        "Runtime": "python3.12",
        "Handler": "app.handler",
        "Role": ROLE,
        "MemorySize": 256,
        "Timeout": 30,
        "Environment": {"Variables": {"camelKey": "a", "lower_key": "b", "UPPER": "c"}},
        "VpcConfig": {"SubnetIds": ["subnet-1"], "SecurityGroupIds": ["sg-1"]},
        "EphemeralStorage": {"Size": 1024},
        "TracingConfig": {"Mode": "Active"},
        "LoggingConfig": {"LogFormat": "JSON", "ApplicationLogLevel": "INFO"},
        "DeadLetterConfig": {"TargetArn": "arn:aws:sqs:us-east-1:123456789012:dlq"},
    }
    assert spec.tags == {
        "camelTag": "x",
        "Owner": "me",
        "reconciler:service": "svc",
        "reconciler:environment": "dev",
        "reconciler:infrastructure": spec.infrastructure,
    }
    # the plan's copy of the spec is what dataclasses.asdict gives, and a copy
    from reconciler.engine.diff import spec_dict

    d = spec_dict(spec)
    assert d == spec.to_dict() and list(d) == list(spec.to_dict())
    assert (
        d["config"] is not spec.config
        and d["config"]["VpcConfig"]["SubnetIds"] is not spec.config["VpcConfig"]["SubnetIds"]
    )


def test_string_numbers_coerced_to_integers(tmp_path):
    """ "256" written literally and "30" coming from a String variable become integers for integer fields."""
    root = basic(
        tmp_path,
        fdef(memorySize="256", timeout="<+serviceVariables.t>", ephemeralStorage={"size": "1024"}),
        variables="- name: t\n  type: String\n  value: '30'\n",
    )
    spec = one(root)
    assert spec.config["MemorySize"] == 256
    assert spec.config["Timeout"] == 30
    assert spec.config["EphemeralStorage"] == {"Size": 1024}


def test_yaml_function_definition(tmp_path):
    """A function definition written as YAML (not JSON) with camelCase keys loads the same way."""
    root = basic(tmp_path, files=("/fn.yaml",))
    (root / "fn.json").unlink()
    write(
        root,
        {"fn.yaml": f"functionName: fn\nruntime: python3.12\nhandler: app.handler\nrole: {ROLE}\nmemorySize: 512\n"},
    )
    spec = one(root)
    assert spec.config["MemorySize"] == 512 and spec.config["Handler"] == "app.handler"


# ------------------------------------------------------------------ variables


LAYERS = [
    "service",
    "env",
    "ENV_GLOBAL_OVERRIDE",
    "ENV_SERVICE_OVERRIDE",
    "INFRA_GLOBAL_OVERRIDE",
    "INFRA_SERVICE_OVERRIDE",
    "cli",
]


def _override(ident, type_, value, service="svc", infra="use1") -> str:
    text = f"overrides:\n  identifier: {ident}\n  type: {type_}\n  environmentRef: dev\n"
    if "SERVICE" in type_:
        text += f"  serviceRef: {service}\n"
    if type_.startswith("INFRA"):
        text += f"  infraIdentifier: {infra}\n"
    return text + f"  spec:\n    variables:\n      - name: v\n        type: String\n        value: {value}\n"


@pytest.mark.parametrize("n", range(1, len(LAYERS) + 1), ids=lambda n: "up-to-" + LAYERS[n - 1])
def test_variable_precedence_each_layer_replaces_the_previous(tmp_path, n):
    """Variable `v` defined in the first n precedence layers (service → env → four override types → --var) takes the value of the highest one; overrides for another service or infrastructure never apply."""
    present = LAYERS[:n]
    files = {
        ".harness/service.yaml": service_yaml(
            variables="- name: v\n  type: String\n  value: service\n- name: keep\n  type: String\n  value: kept\n"
        ),
        ".harness/other.yaml": service_yaml(identifier="other", files=("/fn.json",)),
        ".harness/env.yaml": env_yaml(
            variables="- name: v\n  type: String\n  value: env\n" if "env" in present else ""
        ),
        ".harness/infra.yaml": infra_yaml(),
        ".harness/infra2.yaml": infra_yaml(identifier="use2"),
        "fn.json": fdef(description="<+serviceVariables.v>/<+serviceVariables.keep>"),
        # noise: overrides that must not apply to svc x dev/use1
        ".harness/ov-other-svc.yaml": _override("noise1", "INFRA_SERVICE_OVERRIDE", "wrong-service", service="other"),
        ".harness/ov-other-infra.yaml": _override("noise2", "INFRA_GLOBAL_OVERRIDE", "wrong-infra", infra="use2"),
    }
    for layer in present:
        if layer.endswith("OVERRIDE"):
            files[f".harness/ov-{layer}.yaml"] = _override(layer.lower(), layer, layer)
    write(tmp_path, files)
    variables = {"v": "cli"} if "cli" in present else {}
    spec = one(tmp_path, services=["svc"], infrastructures=["use1"], variables=variables)
    assert spec.config["Description"] == f"{present[-1]}/kept"


def test_env_variable_only_replaces_a_service_variable_of_the_same_name(tmp_path):
    """Environment variables are visible as <+env.variables.X>, and only replace serviceVariables of the same name."""
    write(
        tmp_path,
        {
            ".harness/service.yaml": service_yaml(variables="- name: a\n  type: String\n  value: svc-a\n"),
            ".harness/env.yaml": env_yaml(
                variables="- name: a\n  type: String\n  value: env-a\n- name: b\n  type: String\n  value: env-b\n"
            ),
            ".harness/infra.yaml": infra_yaml(),
            "fn.json": fdef(description="<+serviceVariables.a> <+env.variables.a> <+env.variables.b>"),
        },
    )
    assert one(tmp_path).config["Description"] == "env-a env-a env-b"
    (tmp_path / "fn.json").write_text(json.dumps(fdef(description="<+serviceVariables.b>")))
    with pytest.raises(ConfigError, match=r"serviceVariables\.b> names no variable"):
        render_ws(tmp_path)


# ------------------------------------------------------------------ expressions


def test_every_expression_of_the_spec(tmp_path):
    """Every expression SPEC §2 lists resolves, names and identifiers kept apart, embedded in one longer string."""
    exprs = [
        "service.name",
        "service.identifier",
        "env.name",
        "env.identifier",
        "env.type",
        "infra.name",
        "infra.identifier",
        "infra.region",
        "serviceVariables.sv",
        "env.variables.ev",
    ]
    write(
        tmp_path,
        {
            ".harness/service.yaml": service_yaml(
                identifier="svc_id", name="Svc Name", variables="- name: sv\n  type: String\n  value: S\n"
            ),
            ".harness/env.yaml": env_yaml(
                identifier="env_id",
                name="Env Name",
                type_="Production",
                variables="- name: ev\n  type: String\n  value: E\n",
            ),
            ".harness/infra.yaml": infra_yaml(
                identifier="infra_id", env="env_id", name="Infra Name", region="eu-west-1"
            ),
            "fn.json": fdef(description="|".join(f"<+{e}>" for e in exprs)),
        },
    )
    spec = one(tmp_path)
    assert spec.config["Description"] == "Svc Name|svc_id|Env Name|env_id|Production|Infra Name|infra_id|eu-west-1|S|E"
    assert spec.region == "eu-west-1"


def test_expressions_embedded_in_longer_strings_and_in_yaml(tmp_path):
    """Expressions inside longer strings resolve in the definition and in the service YAML (artifact path), a Number variable rendered as text."""
    root = basic(
        tmp_path,
        fdef(
            functionName="app-<+env.name>-<+serviceVariables.n>",
            environment={"variables": {"WHERE": "in <+infra.region>!", "NUM": "<+serviceVariables.n>"}},
        ),
        variables="- name: n\n  type: Number\n  value: 3\n",
        sources={"zip": ("bkt-<+env.identifier>", "builds/<+service.identifier>/<+serviceVariables.n>.zip")},
    )
    spec = one(root)
    assert spec.name == "app-dev-3"
    assert spec.config["Environment"]["Variables"] == {"WHERE": "in us-east-1!", "NUM": "3"}
    assert (spec.artifact["bucket"], spec.artifact["key"]) == ("bkt-dev", "builds/svc/3.zip")


def test_number_variable_keeps_its_type_as_a_whole_expression():
    """A string that is exactly one expression keeps the value's type; inside a longer string it becomes text."""
    scope = Scope(service_variables={"n": 512, "f": 1.5, "s": "x"})
    where = lambda: ("f.json", 1)  # noqa: E731
    assert resolve_string("<+serviceVariables.n>", scope, where) == 512
    assert resolve_string(" <+serviceVariables.n>", scope, where) == " 512"
    assert resolve_string("<+serviceVariables.f>", scope, where) == 1.5
    assert resolve_string("<+serviceVariables.s>-<+serviceVariables.n>", scope, where) == "x-512"


def test_number_variable_feeds_an_integer_field(tmp_path):
    """A Number variable used as the whole memorySize value renders as an int (and a numeric string Number variable too)."""
    root = basic(
        tmp_path,
        fdef(memorySize="<+serviceVariables.m>", timeout="<+serviceVariables.t>"),
        variables="- name: m\n  type: Number\n  value: 384\n- name: t\n  type: Number\n  value: '45'\n",
    )
    spec = one(root)
    assert spec.config["MemorySize"] == 384 and isinstance(spec.config["MemorySize"], int)
    assert spec.config["Timeout"] == 45


def test_variable_referring_to_other_expressions(tmp_path):
    """A variable whose value is itself an expression is resolved lazily, in the target's context."""
    root = basic(
        tmp_path,
        fdef(functionName="<+serviceVariables.fname>"),
        variables="- name: fname\n  type: String\n  value: <+service.identifier>-<+env.name>\n",
    )
    assert one(root).name == "svc-dev"


def test_manifest_path_with_expression(tmp_path):
    """A manifest store path holding an expression (one definition file per environment) is resolved before reading."""
    root = basic(tmp_path, files=("/defs/<+env.name>.json",))
    write(root, {"defs/dev.json": fdef(functionName="from-dev-file")})
    assert one(root).name == "from-dev-file"


def test_aliases_rendered(tmp_path):
    """Alias definition files are CreateAlias requests with keys in any case; the function name/version are not required."""
    root = basic(tmp_path, aliases=("/alias.json",))
    write(
        root,
        {
            "alias.json": {
                "name": "live",
                "description": "for <+env.name>",
                "routingConfig": {"additionalVersionWeights": {"1": 0.25}},
            }
        },
    )
    assert one(root).aliases == [
        {"Name": "live", "Description": "for dev", "RoutingConfig": {"AdditionalVersionWeights": {"1": 0.25}}}
    ]


# ------------------------------------------------------------------ FunctionName ARN


def test_function_name_arn_gives_name_and_account(tmp_path):
    """A FunctionName written as a function ARN in the infrastructure's region is reduced to the name; the account is kept for checking."""
    spec = one(basic(tmp_path, fdef(functionName="arn:aws:lambda:us-east-1:123456789012:function:my-fn")))
    assert spec.name == "my-fn"
    assert spec.account == "123456789012"
    assert "FunctionName" not in spec.config


def test_function_name_arn_in_another_region_is_an_error(tmp_path):
    """The seed's ARN example (us-west-2) deployed to a us-east-1 infrastructure is refused with file and line."""
    with pytest.raises(ConfigError) as exc:
        render_ws(basic(tmp_path, fdef(functionName="arn:aws:lambda:us-west-2:123456789012:function:my-function")))
    assert exc.value.file == "fn.json" and exc.value.line == 2
    assert "us-west-2" in str(exc.value) and "us-east-1" in str(exc.value)


# ------------------------------------------------------------------ artifacts and runtime inputs


def test_input_artifact_with_single_source(tmp_path):
    """primaryArtifactRef <+input> with one source uses that source."""
    spec = one(basic(tmp_path, ref="<+input>"))
    assert spec.artifact["type"] == "S3" and spec.artifact["id"] == "zip"
    assert (spec.artifact["bucket"], spec.artifact["key"], spec.artifact["region"]) == ("bkt", "app.zip", "us-east-1")


def test_input_artifact_with_several_sources_needs_artifact_option(tmp_path):
    """primaryArtifactRef <+input> with two sources needs --artifact, which picks one; an unknown --artifact is an error."""
    root = basic(tmp_path, ref="<+input>", sources={"a": ("bkt", "a.zip"), "b": ("bkt", "b.zip")})
    with pytest.raises(ConfigError, match="runtime input; choose one of a, b with --artifact"):
        render_ws(root)
    assert one(root, artifact="b").artifact["key"] == "b.zip"
    with pytest.raises(ConfigError, match="did you mean 'b'"):
        render_ws(root, artifact="bb")


def test_input_default_honoured(tmp_path):
    """`<+input>.default(x)` gives x: for a variable, in a definition value and for primaryArtifactRef; --var and --artifact still win."""
    root = basic(
        tmp_path,
        fdef(memorySize="<+serviceVariables.m>", description="<+input>.default(hello)"),
        ref="<+input>.default(b)",
        sources={"a": ("bkt", "a.zip"), "b": ("bkt", "b.zip")},
        variables="- name: m\n  type: Number\n  value: <+input>.default(384)\n",
    )
    spec = one(root)
    assert spec.config["MemorySize"] == 384
    assert spec.config["Description"] == "hello"
    assert spec.artifact["id"] == "b"
    spec = one(root, variables={"m": "1024"}, artifact="a")
    assert spec.config["MemorySize"] == 1024
    assert spec.artifact["id"] == "a"


def test_runtime_input_variable_without_value_is_an_error(tmp_path):
    """A variable that is a bare <+input> must be given with --var."""
    root = basic(
        tmp_path, fdef(memorySize="<+serviceVariables.m>"), variables="- name: m\n  type: Number\n  value: <+input>\n"
    )
    with pytest.raises(ConfigError, match="--var m=VALUE"):
        render_ws(root)
    assert one(root, variables={"m": "640"}).config["MemorySize"] == 640


def test_ecr_artifact_makes_an_image_function(tmp_path):
    """An Ecr source gives a PackageType Image function without runtime/handler."""
    write(
        tmp_path,
        {
            ".harness/service.yaml": service_yaml().replace(
                "type: AmazonS3\n              spec:\n                bucketName: bkt\n                filePath: app.zip",
                "type: Ecr\n              spec:\n                imagePath: repo\n                tag: v2\n                registryId: '210987654321'",
            ),
            ".harness/env.yaml": env_yaml(),
            ".harness/infra.yaml": infra_yaml(),
            "fn.json": {"functionName": "img", "role": ROLE},
        },
    )
    spec = one(tmp_path)
    assert spec.package_type == "Image"
    assert spec.artifact["type"] == "ECR"
    assert (spec.artifact["repository"], spec.artifact["tag"], spec.artifact["registry_id"]) == (
        "repo",
        "v2",
        "210987654321",
    )


# ------------------------------------------------------------------ targets


PIPELINE = """\
pipeline:
  name: p
  identifier: p
  stages:
    - stage:
        name: to dev
        identifier: dev
        type: Deployment
        spec:
          deploymentType: AwsLambda
          service:
            serviceRef: svc
          environment:
            environmentRef: dev
            deployToAll: false
            infrastructureDefinitions:
              - identifier: use1
    - parallel:
        - stage:
            name: to prod
            identifier: prod
            type: Deployment
            spec:
              deploymentType: AwsLambda
              service:
                serviceRef: svc
              environment:
                environmentRef: prod
                deployToAll: true
    - stage:
        name: build
        identifier: build
        type: CI
        spec: {}
"""


def _targets_ws(tmp_path: Path, pipeline: str | None) -> Path:
    files = {
        ".harness/service.yaml": service_yaml(),
        ".harness/other.yaml": service_yaml(identifier="other"),
        ".harness/env-dev.yaml": env_yaml(),
        ".harness/env-prod.yaml": env_yaml(identifier="prod", type_="Production"),
        ".harness/infra-dev1.yaml": infra_yaml(identifier="use1"),
        ".harness/infra-dev2.yaml": infra_yaml(identifier="use2", region="us-east-2"),
        ".harness/infra-prod1.yaml": infra_yaml(identifier="p1", env="prod"),
        ".harness/infra-prod2.yaml": infra_yaml(identifier="p2", env="prod", region="eu-west-1"),
        "fn.json": fdef(functionName="<+service.identifier>-<+infra.identifier>"),
    }
    if pipeline:
        files[".harness/pipeline.yaml"] = pipeline
    return write(tmp_path, files)


def _triples(ts):
    return sorted((t.service, t.environment, t.infrastructure) for t in ts)


def test_targets_from_pipelines(tmp_path):
    """With a pipeline, its Deploy stages (also inside parallel groups, deployToAll expanding to every infrastructure of the environment) are the targets; non-Deployment stages are ignored."""
    ws = load_workspace(_targets_ws(tmp_path, PIPELINE))
    assert _triples(targets(ws, Options())) == [("svc", "dev", "use1"), ("svc", "prod", "p1"), ("svc", "prod", "p2")]
    assert sorted(f.name for f in render(ws, Options()).functions) == ["svc-p1", "svc-p2", "svc-use1"]


def test_targets_without_pipelines_are_every_service_times_every_infrastructure(tmp_path):
    """Without pipelines, every service is deployed to every infrastructure definition."""
    ws = load_workspace(_targets_ws(tmp_path, None))
    assert len(targets(ws, Options())) == 8
    assert len(render(ws, Options()).functions) == 8


def test_selectors_narrow_the_targets(tmp_path):
    """-s, -e and -i narrow the targets (repeatable, combined with AND)."""
    ws = load_workspace(_targets_ws(tmp_path, None))
    assert _triples(targets(ws, Options(services=["other"], environments=["prod"]))) == [
        ("other", "prod", "p1"),
        ("other", "prod", "p2"),
    ]
    assert _triples(targets(ws, Options(infrastructures=["use2", "p2"], services=["svc"]))) == [
        ("svc", "dev", "use2"),
        ("svc", "prod", "p2"),
    ]
    assert [f.name for f in render(ws, Options(services=["svc"], infrastructures=["p1"])).functions] == ["svc-p1"]


def test_selection_matching_nothing_lists_the_targets(tmp_path):
    """Selectors that each exist but select no target together give an error listing every target."""
    ws = load_workspace(_targets_ws(tmp_path, PIPELINE))
    with pytest.raises(ConfigError) as exc:
        targets(ws, Options(services=["other"]))
    msg = str(exc.value)
    assert "matches no target" in msg
    for t in ("svc → dev/use1", "svc → prod/p1", "svc → prod/p2"):
        assert t in msg


def test_unknown_selector_is_an_error_naming_what_exists(tmp_path):
    """An -e naming no environment is an error that lists the environments and suggests the closest."""
    ws = load_workspace(_targets_ws(tmp_path, None))
    with pytest.raises(ConfigError, match=r"no environment 'prd'.*defined: dev, prod.*did you mean 'prod'"):
        targets(ws, Options(environments=["prd"]))


def test_runtime_input_stage_refs_chosen_by_selectors(tmp_path):
    """A stage whose environment and infrastructures are <+input> gets them from -e/-i; with a .default() it needs no selector."""
    pipe = PIPELINE.replace(
        "environmentRef: dev\n            deployToAll: false\n            infrastructureDefinitions:\n              - identifier: use1",
        "environmentRef: <+input>\n            deployToAll: false\n            infrastructureDefinitions: <+input>",
    )
    ws = load_workspace(_targets_ws(tmp_path, pipe.split("    - parallel:")[0]))
    with pytest.raises(ConfigError, match="runtime input"):
        targets(ws, Options())
    assert _triples(targets(ws, Options(environments=["prod"], infrastructures=["p2"]))) == [("svc", "prod", "p2")]
    with pytest.raises(ConfigError, match="infrastructure 'p2' of environment 'dev'"):
        targets(ws, Options(environments=["dev"], infrastructures=["p2"]))
    (tmp_path / ".harness/pipeline.yaml").write_text(
        pipe.split("    - parallel:")[0]
        .replace("environmentRef: <+input>", "environmentRef: <+input>.default(dev)")
        .replace(
            "infrastructureDefinitions: <+input>",
            "infrastructureDefinitions:\n              - identifier: <+input>.default(use2)",
        )
    )
    ws = load_workspace(tmp_path)
    assert _triples(targets(ws, Options())) == [("svc", "dev", "use2")]


def test_same_function_from_two_targets_is_an_error(tmp_path):
    """Two targets rendering the same function name in the same region are refused."""
    write(
        tmp_path,
        {
            ".harness/service.yaml": service_yaml(),
            ".harness/env.yaml": env_yaml(),
            ".harness/infra.yaml": infra_yaml(),
            ".harness/infra2.yaml": infra_yaml(identifier="use1b"),
            "fn.json": fdef(),
        },
    )
    with pytest.raises(ConfigError, match="defined by two targets"):
        render_ws(tmp_path)


# ------------------------------------------------------------------ loading


def test_discovery_skips_state_node_modules_and_dot_dirs(tmp_path):
    """YAML under state/, node_modules and dot-directories other than .harness is not read; non-Harness YAML (even a Helm template that is not valid YAML) is ignored."""
    root = basic(tmp_path)
    broken = "service: [unclosed\n"
    write(
        root,
        {
            "state/x.yaml": broken,
            "node_modules/x.yaml": broken,
            ".git/x.yaml": broken,
            ".github/workflows/ci.yml": "on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n",
            "cfn.yaml": "Resources:\n  B:\n    Type: AWS::S3::Bucket\n    Properties:\n      BucketName: !Ref Name\n",
            "helm/templates/x.yaml": "{{- if .Values.on }}\nbackend:\n  service:\n    name: {{ .Release.Name }}\n{{- end }}\n",
        },
    )
    ws = load_workspace(root, state_dir=root / "state")
    assert list(ws.services) == ["svc"]
    assert [f.name for f in render(ws, Options()).functions] == ["fn"]


def test_line_numbers_recorded_for_nested_values(tmp_path):
    """Errors in nested YAML and JSON values carry the line of the offending value."""
    root = basic(tmp_path, fdef(environment={"variable": {"A": "b"}}))
    (root / "fn.json").write_text(
        '{\n  "functionName": "fn",\n  "runtime": "python3.12",\n  "handler": "a.b",\n'
        f'  "role": "{ROLE}",\n  "environment": {{\n    "variable": {{"A": "b"}}\n  }}\n}}\n'
    )
    with pytest.raises(ConfigError) as exc:
        render_ws(root)
    assert (exc.value.file, exc.value.line) == ("fn.json", 7)
    assert "did you mean 'Variables'" in str(exc.value)


def test_several_errors_are_reported_together(tmp_path):
    """Two independent mistakes in one definition are both reported."""
    root = basic(tmp_path, fdef(memorySiz=1, timeout="abc"))
    with pytest.raises(ErrorList) as exc:
        render_ws(root)
    text = "\n".join(str(e) for e in exc.value.errors)
    assert "memorySiz" in text and "Timeout" in text


# ------------------------------------------------------------------ samples


def _sample(tmp_path: Path, name: str) -> Path:
    dst = tmp_path / name
    shutil.copytree(SAMPLES / name, dst)
    return dst


def test_sample_hello_world(tmp_path):
    """The Harness docs seed renders Hello_World in us-east-2 from s3://mylambda/workloadNameValue."""
    spec = one(_sample(tmp_path, "hello-world"))
    assert (spec.name, spec.region, spec.package_type) == ("Hello_World", "us-east-2", "Zip")
    assert (spec.service, spec.environment, spec.infrastructure) == ("helloworld", "aws", "awslambda")
    assert spec.artifact["type"] == "S3"
    assert (spec.artifact["bucket"], spec.artifact["key"], spec.artifact["region"]) == (
        "mylambda",
        "workloadNameValue",
        "us-east-2",
    )
    assert spec.config == {
        "Runtime": "nodejs14.x",
        "Handler": "handler.hello",
        "Role": "arn:aws:iam::123456789012:role/hello-world-lambda-role",
    }
    assert spec.aliases == [] and spec.connector is None


def test_sample_hello_world_with_the_seed_service_ref(tmp_path):
    """The docs' original pipeline (serviceRef: lambda) is refused with a hint naming the real service."""
    root = _sample(tmp_path, "hello-world")
    p = root / ".harness/pipeline.yaml"
    p.write_text(p.read_text().replace("serviceRef: helloworld", "serviceRef: lambda"))
    with pytest.raises(ConfigError) as exc:
        load_workspace(root)
    assert "'lambda'" in str(exc.value) and "helloworld" in str(exc.value)
    assert exc.value.file == ".harness/pipeline.yaml"


def test_sample_two_environments(tmp_path):
    """greeter renders in staging (128 MB, 10 s, DEBUG) and production (512 MB, 30 s, WARN) as the sample README says."""
    fns = {f.environment: f for f in render_ws(_sample(tmp_path, "two-environments"))}
    st, pr = fns["staging"], fns["production"]
    assert (st.name, pr.name) == ("greeter-staging", "greeter-production")
    assert (st.config["MemorySize"], st.config["Timeout"]) == (128, 10)
    assert (pr.config["MemorySize"], pr.config["Timeout"]) == (512, 30)
    assert st.config["Environment"]["Variables"] == {
        "LOG_LEVEL": "DEBUG",
        "GREETING": "Hello from staging",
        "API_BASE_URL": "https://api.staging.example.com",
        "DEPLOY_ENV": "staging",
        "DEPLOY_INFRA": "staging_use1",
        "DEPLOY_REGION": "us-east-1",
    }
    assert pr.config["Environment"]["Variables"] == {
        "LOG_LEVEL": "WARN",
        "GREETING": "Hello",
        "API_BASE_URL": "https://api.example.com",
        "DEPLOY_ENV": "production",
        "DEPLOY_INFRA": "production_use1",
        "DEPLOY_REGION": "us-east-1",
    }
    assert st.config["Description"] == "greeter in staging (PreProduction) on staging-us-east-1"
    assert pr.config["Description"] == "greeter in production (Production) on production-us-east-1"
    for f in (st, pr):
        assert f.region == "us-east-1"
        assert (f.config["Runtime"], f.config["Handler"]) == ("python3.12", "handler.handler")
        assert f.config["Role"] == "arn:aws:iam::123456789012:role/greeter-lambda-role"
        assert (f.artifact["bucket"], f.artifact["key"]) == ("reconciler-artifacts", "greeter/greeter-1.0.0.zip")
        assert [a["Name"] for a in f.aliases] == ["live"]
    owner = {"reconciler:service": "greeter"}
    assert st.tags == {
        "service": "greeter",
        "environment": "staging",
        "environment-type": "PreProduction",
        **owner,
        "reconciler:environment": "staging",
        "reconciler:infrastructure": "staging_use1",
    }
    assert pr.tags == {
        "service": "greeter",
        "environment": "production",
        "environment-type": "Production",
        **owner,
        "reconciler:environment": "production",
        "reconciler:infrastructure": "production_use1",
    }
    # --var beats every override
    assert {
        f.config["MemorySize"] for f in render_ws(tmp_path / "two-environments", variables={"memorySize": "256"})
    } == {256}


def test_sample_ecr_image(tmp_path):
    """hello-image renders as an Image function from ECR hello-image:v1 with the alias live."""
    spec = one(_sample(tmp_path, "ecr-image"))
    assert (spec.name, spec.package_type, spec.region) == ("hello-image", "Image", "us-east-1")
    assert spec.artifact["type"] == "ECR"
    assert (spec.artifact["repository"], spec.artifact["tag"], spec.artifact["region"]) == (
        "hello-image",
        "v1",
        "us-east-1",
    )
    assert spec.config["MemorySize"] == 512 and spec.config["Timeout"] == 15
    assert "Runtime" not in spec.config and "Handler" not in spec.config
    assert spec.config["Description"] == "hello-image deployed to aws-lambda-us-east-1 (us-east-1)"
    assert spec.config["Environment"]["Variables"] == {
        "SERVICE": "helloimage",
        "DEPLOY_ENV": "dev",
        "DEPLOY_REGION": "us-east-1",
    }
    assert spec.tags == {
        "service": "hello-image",
        "environment-type": "PreProduction",
        "reconciler:service": "helloimage",
        "reconciler:environment": "dev",
        "reconciler:infrastructure": spec.infrastructure,
    }
    assert [a["Name"] for a in spec.aliases] == ["live"]


def test_errors_are_reconciler_errors_not_crashes(tmp_path):
    """Wrong structural types in the Harness YAML are configuration errors with file and line, not Python exceptions."""
    root = basic(tmp_path)
    svc = root / ".harness/service.yaml"
    good = svc.read_text()
    for old, new in [
        ("          sources:", "          sources: 5\n          x:"),
        ("              store:\n", "              store: oops\n              stor:\n"),
        ("            - identifier: zip", "            - identifier: [zip]"),
    ]:
        svc.write_text(good.replace(old, new, 1))
        with pytest.raises(ReconcilerError) as exc:
            render_ws(root)
        assert exc.value.file == ".harness/service.yaml" and exc.value.line, str(exc.value)


def test_sample_secrets(tmp_path):
    """payments renders with references, not values: a Secret variable and a getValue with a JSON key selector."""
    from reconciler.util.settings import config_document
    from reconciler.util.secrets import read_config, references

    root = _sample(tmp_path, "secrets")
    spec = one(root)
    env = spec.config["Environment"]["Variables"]
    assert env["LOG_LEVEL"] == "info"
    assert references(env["DB_PASSWORD"]) == ["payments/db-password"], "account. is dropped"
    assert references(env["API_KEY"]) == ["payments/api#key"]
    assert references(env["DATABASE_URL"]) == ["payments/db-password"] and env["DATABASE_URL"].startswith(
        "postgres://payments:"
    )
    cfg = read_config(config_document(root))
    assert (cfg.store, cfg.prefix, cfg.mask_all) == ("secretsmanager", "prod/", False)
    assert cfg.store_name("payments/api#key") == ("prod/payments/api", "key")
    assert cfg.sensitive("db_password") and cfg.sensitive("ApiKey") and not cfg.sensitive("LOG_LEVEL")


def test_secret_references_are_checked(tmp_path):
    """A malformed reference, or a reference where a secret cannot be (a function's name), is an
    error with file and line; elsewhere in the definition it renders to a placeholder."""
    root = _sample(tmp_path, "secrets")
    d = root / "lambda-definition.json"
    good = d.read_text()
    d.write_text(good.replace('"LOG_LEVEL": "<+serviceVariables.log_level>"', '"LOG_LEVEL": "<+secrets.getValue(x)>"'))
    with pytest.raises(ConfigError, match="a secret reference is <\\+secrets.getValue"):
        one(root)
    d.write_text(good.replace('"handler": "handler.handle"', '"handler": "<+secrets.getValue(\\"h\\")>"'))
    assert one(root).config["Handler"] == "\u27e6secret:h\u27e7"
    d.write_text(good.replace('"functionName": "payments"', '"functionName": "<+secrets.getValue(\\"f\\")>"'))
    with pytest.raises(ConfigError, match="cannot be used in FunctionName: the name is part of") as exc:
        one(root)
    assert exc.value.file == "lambda-definition.json" and exc.value.line == 2
    (root / "reconciler.yaml").write_text("secrets:\n  store: vault\n")
    from reconciler.util.settings import config_document
    from reconciler.util.secrets import read_config

    with pytest.raises(ConfigError, match="reconciler.yaml:2: secrets.store must be one of secretsmanager, ssm"):
        read_config(config_document(root))
