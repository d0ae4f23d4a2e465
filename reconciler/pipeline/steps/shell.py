"""`ShellScript`: `spec.source.spec.script` (Inline) with bash on this machine, expressions
resolved, deployment facts exported as RECONCILER_* variables, `environmentVariables`
exported and `outputVariables` read back from the script's shell variables
(reconciler.pipeline.scripts runs it)."""

from __future__ import annotations

from reconciler.errors import ConfigError
from reconciler.pipeline.model import SHELL_VAR, StepDef
from reconciler.pipeline.scripts import run_shell
from reconciler.pipeline.step_base import EXECUTION_PHASES, ErrorAt, StepContext, StepOutput


class ShellScript:
    phases = EXECUTION_PHASES

    def check(self, step: StepDef, spec: dict, err: ErrorAt) -> list[ConfigError]:
        sid = step.identifier
        errs: list[ConfigError] = []
        shell = spec.get("shell", "Bash")
        if shell not in ("Bash", "Sh"):
            errs.append(err(("shell",), f"step '{sid}': shell '{shell}' is not supported; use Bash"))
        src = spec.get("source") or {}
        if not isinstance(src, dict) or src.get("type", "Inline") != "Inline":
            errs.append(
                err(("source", "type"), f"step '{sid}': only Inline scripts are supported (source.type: Inline)")
            )
        elif not isinstance((src.get("spec") or {}).get("script"), str):
            errs.append(err(("source",), f"step '{sid}' has no source.spec.script"))
        target = spec.get("executionTarget") or {}
        if isinstance(target, dict) and target.get("host"):
            errs.append(
                err(
                    ("executionTarget",),
                    f"step '{sid}': scripts run on this machine; executionTarget.host is not supported",
                )
            )
        for key in ("environmentVariables", "outputVariables"):
            errs += _check_variables(sid, key, spec.get(key) or [], err)
        return errs

    def run(self, ctx: StepContext) -> StepOutput:
        outputs, output = run_shell(ctx.run, ctx.sr, ctx.step, ctx.timeout)
        return StepOutput(outputs, output)


def _check_variables(sid: str, key: str, items: object, err: ErrorAt) -> list[ConfigError]:
    """environmentVariables or outputVariables: {name, type, value} with shell variable names."""
    if not isinstance(items, list):
        return [err((key,), f"step '{sid}': {key} must be a list of {{name, type, value}}")]
    errs: list[ConfigError] = []
    for i, v in enumerate(items):
        if not isinstance(v, dict) or not isinstance(v.get("name"), str) or not SHELL_VAR.fullmatch(v["name"]):
            errs.append(err((key, i), f"step '{sid}': each of {key} needs a 'name' that is a shell variable name"))
        elif (
            key == "outputVariables"
            and v.get("value") not in (None, "")
            and not SHELL_VAR.fullmatch(str(v.get("value")))
        ):
            errs.append(
                err(
                    (key, i, "value"),
                    f"output variable '{v['name']}': value names the script's shell variable to read, "
                    f"and '{v.get('value')}' is not a shell variable name",
                )
            )
    return errs
