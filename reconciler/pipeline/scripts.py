"""Running a step's bash script on this machine: a ShellScript step's (and the script of a
ShellScriptProvision step): expressions resolved, the deployment facts exported as
RECONCILER_* variables, `environmentVariables` exported, secret references filled in from
the store (and scrubbed from every output), the connector's credentials when the step asks
for them, and `outputVariables` read back from the script's shell variables."""

from __future__ import annotations

import json
import os

from reconciler.pipeline.conditions import text_of
from reconciler.pipeline.model import StepDef, StepFailed
from reconciler.pipeline.stage import RunView, StageRun
from reconciler.util import secrets as sec
from reconciler.workspace.shell import base_environment, run_script

OUTPUT_TAIL = 16000  # characters of a script's output kept for the summary


def run_shell(
    run: RunView, sr: StageRun, step: StepDef, timeout: float, extra_env: dict | None = None
) -> tuple[dict, str]:
    """A ShellScript step (and the script of a ShellScriptProvision step, with `extra_env`):
    its output variables and the tail of its output."""
    spec = step.body.get("spec") or {}
    sp = (*step.path, "spec")
    script, env = sr.script(step)
    env.update(base_environment())
    env.update(sr.facts())
    env.update(extra_env or {})
    if spec.get("includeInfraSelectors") is True:  # the step asks for the infrastructure connector's credentials
        env.update(_credentials(run, sr))
    for i, v in enumerate(spec.get("environmentVariables") or []):
        value = sr.resolve(v.get("value"), (*sp, "environmentVariables", i, "value"), step)
        env[v["name"]] = text_of(value)
    outs = [(v["name"], str(v.get("value") or v["name"])) for v in spec.get("outputVariables") or []]
    script, env = _with_secrets(run, sr, step, str(script), env)
    result = run_script(script, env, run.settings.workspace, timeout, outs, run.log, run.masker.mask)
    if result.timed_out:
        raise StepFailed(
            f"timed out after {timeout:g}s; the script's processes were killed",
            "Timeout",
            result.outputs,
            result.output[-OUTPUT_TAIL:],
        )
    if result.exit_code != 0:
        raise StepFailed(
            f"the script exited {result.exit_code}", "Unknown", result.outputs, result.output[-OUTPUT_TAIL:]
        )
    missing = [n for n, var in outs if n not in result.outputs]
    for n in missing:
        run.log(f"   warning: output variable '{n}': the script did not set ${dict(outs)[n]}")
        result.outputs[n] = ""
    return result.outputs, result.output[-OUTPUT_TAIL:]


def _with_secrets(run: RunView, sr: StageRun, step: StepDef, script: str, env: dict) -> tuple[str, dict]:
    """The script and its environment with secret references replaced by their values,
    read from the store now (with the stage's infrastructure's connector and region);
    every line of output that holds one is scrubbed before it is shown or kept."""
    from reconciler.aws.secrets import read_values as read_secret_values

    ids = sec.references(script) + sec.references(env)
    if not ids:
        return script, env
    s = sr.spec
    conn = json.dumps(s.connector, sort_keys=True) if s.connector else None
    where = f"ShellScript step {step.identifier} ({run.pipe.file}:{run.pipe.line(*step.path)})"
    values = read_secret_values(run.aws, {(s.region, sid, conn): [where] for sid in ids})
    run.masker.add(*values.values())
    return sec.fill(script, s.region, values), sec.fill(env, s.region, values)


def _credentials(run: RunView, sr: StageRun) -> dict[str, str]:
    """The AWS credentials of the stage target's connector (or the runner's default chain)
    as environment variables; their values are masked in every step's output from now on."""
    spec = sr.spec
    creds = run.aws.credentials(spec.region, spec.connector)
    sec.remember_credentials(creds)
    env = {"AWS_REGION": spec.region, "AWS_DEFAULT_REGION": spec.region, **creds}
    env.update({k: v for k, v in os.environ.items() if k.startswith("AWS_ENDPOINT_URL") or k == "AWS_CA_BUNDLE"})
    return env
