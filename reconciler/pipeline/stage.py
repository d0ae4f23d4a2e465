"""One stage for one target while it runs (`StageRun`): its scope for expressions, its
ShellScript steps' scripts, the deployment facts exported to scripts, and what its deploys
changed; and `RunView`, the pipeline run as a stage run and a step type see it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from reconciler.model import FunctionSpec, Target
from reconciler.pipeline.model import RunSettings, StageDef, StageResult, StepDef, StepResult
from reconciler.store import state as st
from reconciler.workspace.expr import Scope, is_runtime_input, resolve_expr, resolve_string
from reconciler.workspace.render import Options, variable_input
from reconciler.workspace.shell import prepare_script

if TYPE_CHECKING:
    from reconciler.util.secrets import Masker
    from reconciler.workspace.load import Entity, Workspace


class RunView(Protocol):
    """The pipeline run as a step type sees it (reconciler.pipeline.runner.Runner)."""

    settings: RunSettings
    pipe: Entity
    ws: Workspace
    masker: Masker
    log: Callable[[str], None]
    steps: list[StepResult]  # every step result so far, in order
    warnings: list[str]
    pipeline_fixed: dict[str, Any]  # <+pipeline.*> values
    outputs_fixed: dict[str, Any]  # the output variables of the steps that ran
    provisioning: dict[tuple, dict]  # (stage identifier, target) → what its provisioner steps did

    @property
    def aws(self) -> Any: ...

    def record_skip(self, sr: StageRun, step: StepDef, reason: str) -> None: ...


class StageRun:
    """One stage for one target: its steps, its scope and what its deploys changed."""

    def __init__(
        self, runner: RunView, stage: StageDef, target: Target, opts: Options, spec: FunctionSpec, scope: Scope
    ):
        self.runner, self.stage, self.target, self.opts, self.spec, self.base_scope = (
            runner,
            stage,
            target,
            opts,
            spec,
            scope,
        )
        self.failed = False
        self.deployed: list[str] = []  # apply history record ids, in order
        self.outputs: dict[str, dict] = {}  # step identifier → outputs
        self.result = StageResult(stage.identifier, stage.name, target)

    # ------------------------------------------------------------ expressions
    def scope(self, step: StepDef | None) -> Scope:
        r = self.runner
        fixed = dict(self.base_scope.fixed)
        fixed.update(r.pipeline_fixed)
        fixed.update(
            {
                "stage.name": self.stage.name,
                "stage.identifier": self.stage.identifier,
                "stage.description": self.stage.body.get("description", ""),
            }
        )
        for v in self.stage.body.get("variables") or []:
            if isinstance(v, dict) and "name" in v:
                fixed[f"stage.variables.{v['name']}"] = variable_input(v, r.settings.variables)
        art = self.spec.artifact or {}
        fixed.update(
            {
                f"artifact.{k}": v
                for k, v in {
                    "identifier": art.get("id"),
                    "type": artifact_kind(art),
                    "bucketName": art.get("bucket"),
                    "filePath": art.get("key"),
                    "region": art.get("region"),
                    "imagePath": art.get("repository"),
                    "tag": art.get("tag"),
                    "digest": art.get("digest"),
                }.items()
                if v is not None
            }
        )
        if step is not None:
            fixed.update({"step.name": step.name, "step.identifier": step.identifier, "step.type": step.type})
        fixed.update(r.outputs_fixed)
        own = f"pipeline.stages.{self.stage.identifier}.spec.execution.steps."
        for k, v in r.outputs_fixed.items():  # this stage's own steps, relative forms
            if k.startswith(own):
                fixed["execution.steps." + k[len(own) :]] = v
                fixed["steps." + k[len(own) :]] = v
        b = self.base_scope
        return Scope(
            fixed=fixed,
            service_variables=b.service_variables,
            env_variables=b.env_variables,
            resolve_variable=b.resolve_variable,
            provisioner=b.provisioner,
            in_pipeline=True,
        )

    def resolve(self, value: Any, path: tuple, step: StepDef | None = None) -> Any:
        if not isinstance(value, str) or "<+" not in value:
            return value
        pipe = self.runner.pipe
        return resolve_string(value, self.scope(step), lambda: (pipe.file, pipe.line(*path)))

    def script(self, step: StepDef) -> tuple[str, dict[str, str]]:
        """A ShellScript step's script with its expressions as environment variable references, and their values."""
        path = (*step.path, "spec", "source", "spec", "script")
        text = (((step.body.get("spec") or {}).get("source") or {}).get("spec") or {}).get("script") or ""
        pipe = self.runner.pipe

        def where():
            return pipe.file, pipe.line(*path)

        scope = self.scope(step)
        return prepare_script(str(text), lambda e: resolve_expr(e, scope, where), where)

    def facts(self) -> dict:
        """The deployment facts exported to scripts: from the state, as recorded now."""
        s = self.spec
        state = st.load(self.runner.settings.state_dir, s.environment, s.infrastructure)
        rec = state.functions.get(s.name) or {}
        aliases = [a["Name"] for a in s.aliases] or sorted(rec.get("aliases") or {})
        arn = rec.get("arn") or ""
        version = rec.get("version") or ""
        return {
            "RECONCILER_FUNCTION_NAME": s.name,
            "RECONCILER_FUNCTION_ARN": arn,
            "RECONCILER_VERSION": version,
            "RECONCILER_VERSION_ARN": f"{arn}:{version}" if arn and version else "",
            "RECONCILER_ALIAS": aliases[0] if aliases else "",
            "RECONCILER_ALIASES": ",".join(aliases),
            "RECONCILER_REGION": s.region,
            "RECONCILER_SERVICE": s.service,
            "RECONCILER_ENVIRONMENT": s.environment,
            "RECONCILER_INFRASTRUCTURE": s.infrastructure,
            "RECONCILER_PIPELINE": self.runner.pipe.identifier,
            "RECONCILER_STAGE": self.stage.identifier,
        }


def stage_options(s: RunSettings, stage: StageDef, t: Target) -> Options:
    """The Options that render one target of a stage: the stage's variables and artifact, --var winning."""
    variables = {}
    si = ((stage.body.get("spec") or {}).get("service") or {}).get("serviceInputs") or {}
    sd_spec = ((si.get("serviceDefinition") or {}).get("spec") or {}) if isinstance(si, dict) else {}
    env_inputs = (((stage.body.get("spec") or {}).get("environment") or {}).get("environmentInputs") or {}).get(
        "variables"
    ) or []
    for v in list(env_inputs) + list(sd_spec.get("variables") or []):
        if isinstance(v, dict) and "name" in v and not is_runtime_input(v.get("value")) and v.get("value") is not None:
            variables[str(v["name"])] = v["value"]
    variables.update(s.variables)  # --var wins over the input set
    artifact = s.artifact
    ref = ((sd_spec.get("artifacts") or {}).get("primary") or {}).get("primaryArtifactRef")
    if artifact is None and isinstance(ref, str) and ref and "<+" not in ref:
        artifact = ref
    kw = {"provisioner": s.provisioner} if s.provisioner is not None else {}
    return Options(
        services=[t.service],
        environments=[t.environment],
        infrastructures=[t.infrastructure],
        variables=variables,
        artifact=artifact,
        only=[t],
        **kw,
    )


def artifact_kind(art: dict) -> str | None:
    """The artifact's type as Harness names it (<+artifact.type>): AmazonS3, Ecr."""
    kind = art.get("type")
    return {"S3": "AmazonS3", "ECR": "Ecr"}.get(str(kind), kind)
