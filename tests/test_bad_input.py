"""Bad input through the real CLI: exit 1, exactly one 'error: FILE:LINE: ...' line on stderr,
the closest valid name where there is one, no traceback, and no AWS request from `plan`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROLE = "arn:aws:iam::123456789012:role/r"

# line numbers below refer to these exact texts
SERVICE = """\
service:
  name: svc
  identifier: svc
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
                  files:
                    - /fn.json
      artifacts:
        primary:
          primaryArtifactRef: zip
          sources:
            - identifier: zip
              type: AmazonS3
              spec:
                bucketName: bkt
                filePath: app.zip
      variables:
        - name: memorySize
          type: Number
          value: 128
"""
MANIFEST_PATH_LINE = 16
ENVIRONMENT = """\
environment:
  name: dev
  identifier: dev
  type: PreProduction
"""
INFRA = """\
infrastructureDefinition:
  name: dev-use1
  identifier: use1
  environmentRef: dev
  type: AwsLambda
  spec:
    region: us-east-1
"""
FDEF = [
    ("functionName", "fn"),
    ("runtime", "python3.12"),
    ("handler", "app.handler"),
    ("role", ROLE),
    ("memorySize", "<+serviceVariables.memorySize>"),
]


def fdef_text(pairs) -> str:
    """One key per line: the key at index i is on line i + 2."""
    return "{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in pairs) + "\n}\n"


def make_ws(root: Path, fdef=None, **files) -> Path:
    """A valid workspace; `files` replaces or adds files (relative path with '/' given as '__')."""
    content = {
        ".harness/service.yaml": SERVICE,
        ".harness/env.yaml": ENVIRONMENT,
        ".harness/infra.yaml": INFRA,
        "fn.json": fdef_text(fdef if fdef is not None else FDEF),
    }
    content.update({k.replace("__", "/"): v for k, v in files.items()})
    root.mkdir(parents=True, exist_ok=True)
    for rel, text in content.items():
        if text is None:
            continue
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    return root


def one_error(r: subprocess.CompletedProcess, *fragments: str) -> str:
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    line = lines[0]
    assert line.startswith("error: "), line
    assert "internal error" not in line, line
    for f in fragments:
        assert f in line, (f, line)
    return line


@pytest.fixture
def validate(run_cli, tmp_path):
    def run(ws: Path, *extra):
        return run_cli("validate", "-w", str(ws), "--state-dir", str(tmp_path / "state"), *extra, cwd=tmp_path)

    return run


@pytest.fixture
def ws(tmp_path):
    return tmp_path / "ws"


def with_fdef(**changes):
    """FDEF with keys replaced (None removes) or appended."""
    out, seen = [], set()
    for k, v in FDEF:
        if k in changes:
            seen.add(k)
            if changes[k] is None:
                continue
            v = changes[k]
        out.append((k, v))
    out += [(k, v) for k, v in changes.items() if k not in seen and v is not None]
    return out


def test_baseline_workspace_is_valid(validate, ws):
    """The base workspace every other case breaks is valid (so each case has exactly one error)."""
    r = validate(make_ws(ws))
    assert r.returncode == 0, r.stderr
    assert "Valid: 1 function(s)." in r.stdout


# ------------------------------------------------------------------ syntax


def test_malformed_yaml(validate, ws):
    """An unclosed flow sequence in the environment YAML names the file and line, and causes no follow-on errors."""
    make_ws(ws, **{".harness__env.yaml": ENVIRONMENT.replace("type: PreProduction", "type: [PreProduction")})
    one_error(validate(ws), ".harness/env.yaml:", "invalid YAML")


def test_malformed_json_function_definition(validate, ws):
    """A stray comma in the function definition JSON names fn.json and its line."""
    make_ws(ws, **{"fn.json": '{\n  "functionName": "fn",\n  "role": "x",,\n  "runtime": "python3.12"\n}\n'})
    one_error(validate(ws), "fn.json:3:", "invalid JSON")


def test_duplicate_yaml_key(validate, ws):
    """A key given twice in one YAML mapping is an error at the second one."""
    make_ws(ws, **{".harness__env.yaml": ENVIRONMENT + "  name: again\n"})
    one_error(validate(ws), ".harness/env.yaml:5:", "duplicate key", "name")


def test_duplicate_json_key(validate, ws):
    """A key given twice in the function definition JSON is an error, not last-one-wins."""
    make_ws(ws, fdef=FDEF + [("handler", "other.handler")])
    one_error(validate(ws), "fn.json:7:", "invalid JSON: duplicate key", "handler")


def test_yaml_alias_bomb_fails_fast(validate, ws):
    """A billion-laughs alias bomb is refused quickly with a clear line."""
    lines = ['lol: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    prev = "a"
    for c in "bcdefghi":
        lines.append(f"{c}{c}: &{c} [" + ", ".join([f"*{prev}"] * 10) + "]")
        prev = c
    make_ws(ws, **{".harness__bomb.yaml": "service:\n" + "".join(f"  {x}\n" for x in lines)})
    t = time.monotonic()
    r = validate(ws)
    elapsed = time.monotonic() - t
    one_error(r, ".harness/bomb.yaml:", "more than", "values")
    assert elapsed < 5, elapsed


# ------------------------------------------------------------------ function definition fields


def test_unknown_field_suggests_closest(validate, ws):
    """A misspelt 'memorySiz' is unknown and the closest valid name is suggested."""
    make_ws(ws, fdef=with_fdef(memorySize=None, memorySiz=256))
    one_error(validate(ws), "fn.json:6:", "memorySiz", "did you mean 'MemorySize'?")


def test_unknown_nested_field_suggests_closest(validate, ws):
    """environment.variable (singular) is unknown inside Environment; 'Variables' is suggested."""
    make_ws(ws, fdef=with_fdef(environment={"variable": {"A": "b"}}))
    one_error(validate(ws), "fn.json:7:", "'variable'", "did you mean 'Variables'?")


def test_wrong_type_integer(validate, ws):
    """ "timeout": "abc" is not an integer."""
    make_ws(ws, fdef=with_fdef(timeout="abc"))
    one_error(validate(ws), "fn.json:7:", "Timeout", "integer", "abc")


def test_integer_beyond_maximum(validate, ws):
    """memorySize 99999 is above botocore's maximum."""
    make_ws(ws, fdef=with_fdef(memorySize=99999))
    one_error(validate(ws), "fn.json:6:", "MemorySize", "99999", "maximum")


def test_list_where_a_map_is_wanted(validate, ws):
    """environment given as a list instead of a mapping."""
    make_ws(ws, fdef=with_fdef(environment=["A=b"]))
    one_error(validate(ws), "fn.json:7:", "Environment", "mapping", "list")


def test_invalid_enum_value_suggests_closest(validate, ws):
    """The community sample's runtime 'python311' is not a Lambda runtime; 'python3.11' is suggested."""
    make_ws(ws, fdef=with_fdef(runtime="python311"))
    one_error(validate(ws), "fn.json:3:", "python311", "did you mean 'python3.11'?")


def test_missing_role(validate, ws):
    """A definition without role is refused (required by CreateFunction)."""
    make_ws(ws, fdef=with_fdef(role=None))
    one_error(validate(ws), "fn.json:1:", "'Role'")


def test_zip_function_without_runtime(validate, ws):
    """A Zip (S3) function definition without runtime is refused."""
    make_ws(ws, fdef=with_fdef(runtime=None))
    one_error(validate(ws), "fn.json:1:", "'Runtime'", "Zip")


def test_zip_function_without_handler(validate, ws):
    """A Zip (S3) function definition without handler is refused."""
    make_ws(ws, fdef=with_fdef(handler=None))
    one_error(validate(ws), "fn.json:1:", "'Handler'", "Zip")


def test_function_name_arn_in_wrong_region(validate, ws):
    """The seed's us-west-2 ARN deployed to a us-east-1 infrastructure."""
    make_ws(ws, fdef=with_fdef(functionName="arn:aws:lambda:us-west-2:123456789012:function:my-function"))
    one_error(validate(ws), "fn.json:2:", "us-west-2", "us-east-1")


# ------------------------------------------------------------------ expressions


def test_undefined_service_variable(validate, ws):
    """<+serviceVariables.nope> names no variable; the existing ones are offered."""
    make_ws(ws, fdef=with_fdef(description="<+serviceVariables.nope>"))
    one_error(validate(ws), "fn.json:7:", "serviceVariables.nope", "memorySize")


def test_misspelt_service_variable_suggests_closest(validate, ws):
    """<+serviceVariables.memorySiz> suggests memorySize."""
    make_ws(ws, fdef=with_fdef(memorySize="<+serviceVariables.memorySiz>"))
    one_error(validate(ws), "fn.json:6:", "memorySiz", "did you mean 'memorySize'?")


def test_unknown_expression(validate, ws):
    """<+env.nmae> is not an expression; env.name is suggested."""
    make_ws(ws, fdef=with_fdef(functionName="<+env.nmae>"))
    one_error(validate(ws), "fn.json:2:", "<+env.nmae>", "did you mean 'env.name'?")


def test_unknown_expression_in_service_yaml(validate, ws):
    """An unknown expression in the service YAML (artifact path) names the YAML file and line."""
    make_ws(ws, **{".harness__service.yaml": SERVICE.replace("filePath: app.zip", "filePath: <+servce.name>.zip")})
    one_error(validate(ws), ".harness/service.yaml:25:", "<+servce.name>", "did you mean 'service.name'?")


# ------------------------------------------------------------------ manifest files


def test_missing_manifest_file(validate, ws):
    """The Harness store names a file that does not exist."""
    make_ws(ws, **{".harness__service.yaml": SERVICE.replace("- /fn.json", "- /nothere.json")})
    one_error(validate(ws), f".harness/service.yaml:{MANIFEST_PATH_LINE}:", "nothere.json", "not found")


@pytest.mark.parametrize("path", ["../outside.json", "/defs/../../outside.json", "defs/../../../outside.json"])
def test_manifest_path_leaving_the_workspace(validate, ws, tmp_path, path):
    """A manifest path that escapes the workspace with '..' (even behind a leading '/') is refused, although the file exists."""
    (tmp_path / "outside.json").write_text(fdef_text(FDEF))
    make_ws(ws, **{".harness__service.yaml": SERVICE.replace("- /fn.json", f"- {path}")})
    (ws / "defs").mkdir()
    one_error(validate(ws), f".harness/service.yaml:{MANIFEST_PATH_LINE}:", "leaves the workspace")


def test_manifest_symlink_pointing_outside(validate, ws, tmp_path):
    """A manifest file inside the workspace that is a symlink to a file outside it is refused."""
    (tmp_path / "outside.json").write_text(fdef_text(FDEF))
    make_ws(ws, **{".harness__service.yaml": SERVICE.replace("- /fn.json", "- /link.json")})
    (ws / "link.json").symlink_to(tmp_path / "outside.json")
    one_error(validate(ws), f".harness/service.yaml:{MANIFEST_PATH_LINE}:", "leaves the workspace")


# ------------------------------------------------------------------ entities and references


def test_duplicate_service_identifier_names_both_places(validate, ws):
    """Two files defining service 'svc': the message names both files and lines."""
    make_ws(ws, **{".harness__service-copy.yaml": "# a copy\n" + SERVICE})
    line = one_error(validate(ws), "duplicate service identifier 'svc'")
    assert ".harness/service-copy.yaml:2" in line and ".harness/service.yaml:1" in line


def test_seed_pipeline_service_ref_lambda(validate, workspace):
    """The docs' original pipeline names serviceRef 'lambda', which is not defined; the message names it and the real service."""
    root = workspace("hello-world")
    p = root / ".harness/pipeline.yaml"
    text = p.read_text()
    lineno = text[: text.index("serviceRef: helloworld")].count("\n") + 1
    p.write_text(text.replace("serviceRef: helloworld", "serviceRef: lambda"))
    one_error(validate(root), f".harness/pipeline.yaml:{lineno}:", "'lambda'", "helloworld")


def test_infrastructure_with_undefined_environment(validate, ws):
    """An infrastructure definition's environmentRef names no environment; the closest is suggested."""
    make_ws(ws, **{".harness__infra.yaml": INFRA.replace("environmentRef: dev", "environmentRef: dve")})
    one_error(validate(ws), ".harness/infra.yaml:4:", "'dve'", "did you mean 'dev'?")


def test_override_with_unknown_type(validate, ws):
    """An overrides entity with a misspelt type suggests the right one."""
    make_ws(
        ws,
        **{
            ".harness__ov.yaml": "overrides:\n  identifier: o\n  environmentRef: dev\n  type: ENV_GLOBAL_OVERIDE\n"
            "  spec:\n    variables: []\n"
        },
    )
    one_error(validate(ws), ".harness/ov.yaml:4:", "did you mean 'ENV_GLOBAL_OVERRIDE'?")


def test_broken_yaml_that_is_no_harness_entity_is_ignored(validate, ws):
    """A Helm template and a broken CI workflow (neither valid YAML, no Harness top-level key) do not stop validate."""
    make_ws(
        ws,
        **{
            "chart__templates__svc.yaml": "{{- if .Values.enabled }}\nkind: Service\nspec:\n  service:\n    name: {{ .Release.Name }}\n{{- end }}\n",
            ".github__workflows__ci.yml": "on: [push\n",
        },
    )
    r = validate(ws)
    assert r.returncode == 0, r.stderr


def test_wrong_structural_type_in_service(validate, ws):
    """The manifest store given as a string instead of a mapping is a configuration error, not a crash."""
    make_ws(
        ws,
        **{
            ".harness__service.yaml": SERVICE.replace(
                "              store:\n                type: Harness\n",
                "              store: Harness\n              x:\n                type: Harness\n",
            )
        },
    )
    one_error(validate(ws), ".harness/service.yaml:12:", "store", "mapping")


# ------------------------------------------------------------------ command line


def test_var_without_equals(validate, ws):
    """--var needs NAME=VALUE."""
    one_error(validate(make_ws(ws), "--var", "memorySize"), "--var", "NAME=VALUE")


def test_unknown_service_selector(validate, ws):
    """-s naming no service lists what exists and suggests the closest."""
    one_error(validate(make_ws(ws), "-s", "svcc"), "no service 'svcc'", "did you mean 'svc'?")


def test_workspace_that_is_not_a_directory(validate, tmp_path):
    """-w naming a missing directory."""
    one_error(validate(tmp_path / "nope"), "not a directory")


# ------------------------------------------------------------------ plan makes no AWS call on bad input


@pytest.mark.parametrize("case", ["unknown-field", "undefined-variable", "outside-path", "bad-yaml"])
def test_plan_with_bad_input_sends_no_request(run_cli, fault_proxy, ws, tmp_path, case):
    """`plan` on a broken workspace fails with one error line before any AWS request reaches the endpoint."""
    if case == "unknown-field":
        make_ws(ws, fdef=with_fdef(memorySize=None, memorySiz=256))
        expect = ("fn.json:6:", "did you mean 'MemorySize'?")
    elif case == "undefined-variable":
        make_ws(ws, fdef=with_fdef(description="<+serviceVariables.nope>"))
        expect = ("fn.json:7:", "serviceVariables.nope")
    elif case == "outside-path":
        (tmp_path / "outside.json").write_text(fdef_text(FDEF))
        make_ws(ws, **{".harness__service.yaml": SERVICE.replace("- /fn.json", "- ../outside.json")})
        expect = (f".harness/service.yaml:{MANIFEST_PATH_LINE}:", "leaves the workspace")
    else:
        make_ws(ws, **{".harness__infra.yaml": INFRA + "  bad: [\n"})
        expect = (".harness/infra.yaml:", "invalid YAML")
    r = run_cli(
        "plan",
        "-w",
        str(ws),
        "--state-dir",
        str(tmp_path / "state"),
        cwd=tmp_path,
        env_extra={"AWS_ENDPOINT_URL": fault_proxy.endpoint},
    )
    one_error(r, *expect)
    assert fault_proxy.log == [], fault_proxy.operations()


# ------------------------------------------------------------------ fast start


@pytest.mark.parametrize("args", [["--help"], ["--version"]])
def test_help_and_version_do_not_import_aws_libraries(args):
    """`reconciler --help` / `--version` import neither boto3, botocore nor moto (they start fast)."""
    repo = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "reconciler", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, r.stderr
    assert "reconciler" in r.stdout
    imported = {
        m.group(1).strip() for m in re.finditer(r"^import time:\s*\d+\s*\|\s*\d+\s*\|\s*(\S.*)$", r.stderr, re.M)
    }
    assert imported, r.stderr[:500]  # the import log was produced
    heavy = sorted(m for m in imported if m.split(".")[0] in ("boto3", "botocore", "moto"))
    assert heavy == []


def test_service_without_artifact_or_code(tmp_path, run_cli):
    """A service with neither an artifact nor Code in its definition: one clear line, not a crash."""
    h = tmp_path / ".harness"
    h.mkdir()
    (h / "s.yaml").write_text(
        "service:\n  name: s\n  identifier: s\n  serviceDefinition:\n    type: AwsLambda\n    spec:\n      manifests:\n"
        "        - manifest: {identifier: d, type: AwsLambdaFunctionDefinition, spec: {store: {type: Harness, spec: {files: [/f.json]}}}}\n"
    )
    (h / "e.yaml").write_text(
        "environment:\n  name: e\n  identifier: e\n  type: PreProduction\n---\ninfrastructureDefinition:\n"
        "  name: i\n  identifier: i\n  environmentRef: e\n  spec:\n    region: us-east-1\n"
    )
    (tmp_path / "f.json").write_text(
        '{"functionName": "x", "role": "arn:aws:iam::123456789012:role/r", "runtime": "python3.12", "handler": "a.b"}'
    )
    r = run_cli("validate", "-w", str(tmp_path))
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: .harness/s.yaml:6:") and "no artifact" in lines[0]
    assert "Traceback" not in r.stderr
