"""Provisioner outputs: the values of `<+provisioner.NAME>` (Harness's "Map Dynamically
Provisioned Infrastructure"), e.g. an infrastructure definition's `region:
<+provisioner.region_name>`.

Where they come from, first match wins:
1. `--provisioner-outputs FILE`: the JSON of `terraform output -json` ({name: {value: ...}})
   or a flat map ({name: value}), JSON or YAML;
2. the outputs of the stage's `environment.provisioner` steps (reconciler.provisioners), in
   `reconciler run` once they have run; before that (and in `plan --pipeline`) an output
   they would give stands as `(provisioner.NAME)`;
3. the infrastructure's `spec.provisioner`:
   - `{type: CloudFormation, stackName: X, region: Y}`: the stack's Outputs (DescribeStacks);
   - `{type: Script, script: "..."}`: a bash script whose stdout is JSON in either shape.

Rendering is shared by validate, plan, apply and run. `validate` makes no AWS call and runs
nothing: it only checks the shape of a provisioner, and an output it would read stands for
itself as `(provisioner.NAME)`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reconciler.errors import ConfigError, ReconcilerError, did_you_mean
from reconciler.workspace.schema import DEFERRED

PROVISIONER_TYPES = ("CloudFormation", "Script")
SCRIPT_TIMEOUT = 300.0

# the process-wide defaults of Options.provisioner; the CLI sets them for one command
_DEFAULTS: dict = {"outputs": None, "source": None, "live": True}
# (kind, key) → outputs, read once per process
_CACHE: dict[tuple, dict] = {}


def defaults() -> dict:
    return dict(_DEFAULTS)


def configure(outputs: dict | None = None, source: str | None = None, live: bool = True) -> dict:
    """Set the defaults for the Options made from now on; returns the previous ones."""
    before = dict(_DEFAULTS)
    _DEFAULTS.update(outputs=outputs, source=source, live=live)
    return before


def restore_defaults(before: dict) -> None:
    _DEFAULTS.clear()
    _DEFAULTS.update(before)


def parse_outputs(data: Any, where: str) -> dict:
    """Flat {name: value} from `terraform output -json` ({name: {value, type, sensitive}}) or a flat map."""
    if not isinstance(data, dict):
        raise ConfigError(
            "provisioner outputs must be a JSON object: {name: value} or terraform's {name: {value: ...}}", where
        )
    tf = bool(data) and all(isinstance(v, dict) and "value" in v for v in data.values())
    return {str(k): (v["value"] if tf else v) for k, v in data.items()}


def load_outputs_file(path: Path) -> dict:
    from reconciler.util.yamlsrc import load_data_file

    if not path.is_file():
        raise ConfigError(f"--provisioner-outputs file '{path}' not found")
    doc = load_data_file(path, str(path))
    return parse_outputs(doc.data, str(path))


def check_shape(infra) -> list[ConfigError]:
    """The infrastructure's spec.provisioner, checked without running or calling anything."""
    spec = infra.body.get("spec") or {}
    prov = spec.get("provisioner")
    if prov is None:
        return []
    path = ("spec", "provisioner")
    if not isinstance(prov, dict):
        return [infra.error(path, "spec.provisioner must be a mapping {type: CloudFormation|Script, ...}")]
    ptype = prov.get("type")
    if ptype not in PROVISIONER_TYPES:
        return [
            infra.error(
                (*path, "type"),
                f"provisioner type '{ptype}' is not supported; use one of {', '.join(PROVISIONER_TYPES)}",
                did_you_mean(str(ptype), PROVISIONER_TYPES),
            )
        ]
    need = {"CloudFormation": ("stackName",), "Script": ("script",)}[ptype]
    errs = []
    for key in need:
        value = prov.get(key)
        if not isinstance(value, str) or not value.strip():
            errs.append(infra.error(path, f"a {ptype} provisioner needs spec.provisioner.{key} (a string)"))
    if ptype == "CloudFormation" and prov.get("region") is not None and not isinstance(prov.get("region"), str):
        errs.append(infra.error((*path, "region"), "spec.provisioner.region must be a string"))
    return errs


def resolver(ws, infra, settings: dict | None) -> Callable[[str], Any]:
    """`<+provisioner.NAME>` for one infrastructure: a function NAME → value that raises
    KeyError(message, hint) when the output is missing (expr turns it into file:line)."""
    settings = settings or {}
    tried: list[str] = []

    def lookup(name: str) -> Any:
        name = name.strip()
        tried.clear()
        file_outputs = settings.get("outputs")
        if file_outputs is not None:
            if name in file_outputs:
                return file_outputs[name]
            tried.append(
                f"--provisioner-outputs {settings.get('source') or 'FILE'} (has: {', '.join(sorted(file_outputs)) or 'nothing'})"
            )
        stage = settings.get("stage")
        if stage is not None:  # the stage's environment.provisioner steps (reconciler.provisioners)
            known = stage.get("outputs")
            if known is not None and name in known:
                return known[name]
            if stage.get("pending"):
                stage.setdefault("used", []).append(name)
                return f"{DEFERRED}{name})"  # known once the steps have run
            tried.append(
                f"{stage.get('where') or 'the outputs of the stage provisioner steps'} (has: {', '.join(sorted(known or {})) or 'nothing'})"
            )
        prov = (infra.body.get("spec") or {}).get("provisioner")
        if prov is not None:
            errs = check_shape(infra)
            if errs:
                raise errs[0]
            if not settings.get("live", True):
                return f"{DEFERRED}{name})"  # validate: no AWS call, no script
            outputs, where = _provisioner_outputs(ws, infra, prov)
            if name in outputs:
                return outputs[name]
            tried.append(f"{where} (has: {', '.join(sorted(outputs)) or 'nothing'})")
        staged = stage_provisioner_of(ws, infra)
        if staged and not tried:
            if not settings.get("live", True):
                return f"{DEFERRED}{name})"  # validate: the stage's provisioner steps give it when run
            raise KeyError(
                f"provisioner output '{name}' comes from the provisioner steps of stage '{staged[1]}' of pipeline "
                f"'{staged[0]}', which only `reconciler run` runs",
                f"run the pipeline (reconciler run {staged[0]}), see it with plan --pipeline {staged[0]}, "
                "or pass --provisioner-outputs FILE",
            )
        if not tried:
            raise KeyError(
                f"provisioner output '{name}' has no source: infrastructure '{infra.identifier}' has no spec.provisioner "
                "and no --provisioner-outputs FILE was given",
                "pass --provisioner-outputs FILE (terraform output -json)",
            )
        raise KeyError(f"provisioner output '{name}' not found; looked in {'; '.join(tried)}", None)

    return lookup


def stage_provisioner_of(ws, infra) -> tuple[str, str] | None:
    """(pipeline, stage) of the first Deploy stage deploying to `infra` with environment.provisioner steps."""
    from reconciler.workspace.load import pipeline_stages

    for pipe in ws.pipelines.values():
        for _, stage in pipeline_stages(pipe):
            env = (stage.get("spec") or {}).get("environment") if isinstance(stage.get("spec"), dict) else None
            if (
                not isinstance(env, dict)
                or not isinstance(env.get("provisioner"), dict)
                or env.get("environmentRef") != infra.body.get("environmentRef")
            ):
                continue
            refs = (
                [r.get("identifier") for r in env.get("infrastructureDefinitions") or [] if isinstance(r, dict)]
                if isinstance(env.get("infrastructureDefinitions"), list)
                else []
            )
            if infra.identifier in refs or str(env.get("deployToAll")).lower() == "true":
                return pipe.identifier, str(stage.get("identifier"))
    return None


def _provisioner_outputs(ws, infra, prov: dict) -> tuple[dict, str]:
    ptype = prov["type"]
    if ptype == "CloudFormation":
        region = prov.get("region") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if not region:
            raise infra.error(
                ("spec", "provisioner"), "a CloudFormation provisioner needs spec.provisioner.region (or AWS_REGION)"
            )
        stack = prov["stackName"]
        where = f"CloudFormation stack '{stack}' outputs in {region}"
        key: tuple = ("cfn", stack, region, (infra.body.get("spec") or {}).get("connectorRef"))
        if key not in _CACHE:
            _CACHE[key] = _stack_outputs(ws, infra, stack, region)
        return _CACHE[key], where
    script = prov["script"]
    where = f"the JSON printed by the provisioner script of infrastructure '{infra.identifier}' ({infra.file}:{infra.line('spec', 'provisioner')})"
    key = ("script", script, str(ws.root))
    if key not in _CACHE:
        _CACHE[key] = _script_outputs(ws, infra, script, float(prov.get("timeoutSeconds") or SCRIPT_TIMEOUT))
    return _CACHE[key], where


def _stack_outputs(ws, infra, stack: str, region: str) -> dict:
    from reconciler.aws.client import Aws, call
    from reconciler.workspace.connectors import aws_connector

    connector = aws_connector(ws, (infra.body.get("spec") or {}).get("connectorRef"))
    cfn = Aws().client("cloudformation", region, connector)
    got = call(
        f"reading the outputs of CloudFormation stack '{stack}' ({region}) for infrastructure '{infra.identifier}'",
        cfn.describe_stacks,
        StackName=stack,
    )
    stacks = got.get("Stacks") or []
    if not stacks:
        raise ReconcilerError(
            f"CloudFormation stack '{stack}' not found in {region}", infra.file, infra.line("spec", "provisioner")
        )
    return {o["OutputKey"]: o.get("OutputValue") for o in stacks[0].get("Outputs") or []}


def _script_outputs(ws, infra, script: str, timeout: float) -> dict:
    """A Script provisioner's outputs: the JSON it prints. It runs with the runner's whole
    environment (it typically calls terraform or the AWS CLI with the runner's credentials),
    and like a step's script it ends with its shell: whatever it started is killed then or on
    its timeout (reconciler.shell.run_script)."""
    from reconciler.workspace.shell import run_script

    line = infra.line("spec", "provisioner", "script")
    try:
        got = run_script(script, dict(os.environ), ws.root, timeout, [], separate_stderr=True)
    except OSError as exc:
        raise ConfigError(f"cannot run the provisioner script with bash: {exc}", infra.file, line) from None
    if got.timed_out:
        raise ConfigError(f"the provisioner script timed out after {timeout:g}s", infra.file, line)
    if got.exit_code != 0:
        tail = (got.errors or got.output).strip().splitlines()[-1:] or ["no output"]
        raise ConfigError(f"the provisioner script exited {got.exit_code}: {tail[0][:200]}", infra.file, line)
    try:
        data = json.loads(got.output)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"the provisioner script must print a JSON object on stdout: {exc.msg}", infra.file, line
        ) from None
    return parse_outputs(data, f"{infra.file}:{line}")
