"""What every provisioner kind shares: the `Kind` protocol (check the step's spec without
running anything; run it), the context a provisioner step runs in (`ProvisionContext`),
what it gives (`Provisioned`), and reading a file of the workspace. The registry wraps each
kind in `provisioners.ProvisionerStep`, a `step_base.StepType` like every other step type."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from reconciler.errors import ConfigError
from reconciler.pipeline.model import StepDef
from reconciler.pipeline.stage import RunView, StageRun

MASK = "(sensitive)"


class Kind(Protocol):
    """One kind of provisioner step."""

    def check(self, spec: dict, err: Callable[[tuple, str], ConfigError]) -> list[ConfigError]:
        """Problems in the step's spec, found without running or calling anything. `err(path
        under spec, message)` makes an error naming the pipeline's file and line."""

    def run(self, ctx: ProvisionContext) -> Provisioned:
        """Run the step (its spec already resolved); raise StepFailed on failure."""


@dataclass
class Provisioned:
    """What one step gave: its outputs (the `<+provisioner.NAME>` values; none for a plan
    or a rollback), the names among them that are sensitive, the log text, and what the
    state history records about it (stack id, workspace, ...)."""

    outputs: dict = field(default_factory=dict)
    sensitive: set = field(default_factory=set)
    output: str = ""
    record: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)  # shown in the run summary besides the outputs


@dataclass
class ProvisionContext:
    runner: RunView
    sr: StageRun
    step: StepDef
    spec: dict  # the step's spec, expressions resolved
    timeout: float
    memory: dict  # this stage run's provisioning: provisionerIdentifier → what earlier steps did

    @property
    def log(self) -> Callable[[str], None]:
        return self.runner.log

    @property
    def workspace(self) -> Path:
        return Path(self.runner.settings.workspace)

    @property
    def aws(self):
        return self.runner.aws

    def error(self, path: tuple, message: str, hint: str | None = None) -> ConfigError:
        return self.runner.pipe.error((*self.step.path, "spec", *tuple(path)), message, hint)

    def connector(self, ref: Any) -> dict | None:
        from reconciler.workspace.connectors import aws_connector

        return aws_connector(self.runner.ws, ref)

    def workspace_file(self, rel: Any, path: tuple) -> Path:
        """A file of the workspace named by the step (relative to the workspace root)."""
        return workspace_file(self.workspace, rel, lambda m, h=None: self.error(path, m, h))

    def by_identifier(self) -> dict:
        return self.memory.setdefault("by_identifier", {})


def workspace_file(root: Path, rel: Any, err: Callable[..., ConfigError], folder: bool = False) -> Path:
    if not isinstance(rel, str) or not rel.strip():
        raise err("a file path of the workspace is needed here")
    real = root.resolve()
    candidate = (real / rel.strip().lstrip("/")).resolve()
    if candidate != real and real not in candidate.parents:
        raise err(f"path '{rel}' leaves the workspace", "provisioner files must live inside the workspace")
    if folder and not candidate.is_dir():
        raise err(f"folder '{rel}' not found in the workspace ({real})")
    if not folder and not candidate.is_file():
        raise err(f"file '{rel}' not found in the workspace ({real})")
    return candidate


def memory(runner: RunView, sr: StageRun) -> dict:
    """This stage run's provisioning, kept on the runner."""
    return runner.provisioning.setdefault(
        (sr.stage.identifier, sr.target), {"outputs": {}, "records": [], "ran": False}
    )


def resolve_tree(sr: StageRun, step: StepDef, node: Any, path: tuple) -> Any:
    if isinstance(node, dict):
        return {k: resolve_tree(sr, step, v, (*path, k)) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve_tree(sr, step, v, (*path, i)) for i, v in enumerate(node)]
    return sr.resolve(node, path, step)


def is_secret(name: str) -> bool:
    """An output whose name the project's masking policy calls sensitive (reconciler.secrets:
    `sensitive_names`, by default PASSWORD, SECRET, TOKEN, KEY, CREDENTIAL, PRIVATE; `mask_all`)."""
    from reconciler.util import secrets

    return secrets.config().sensitive(str(name))


def masked(outputs: dict, sensitive: set | frozenset = frozenset()) -> dict:
    return {k: (MASK if (k in sensitive or is_secret(k)) else v) for k, v in outputs.items()}
