"""What a plan, an import or a pipeline run is given: the workspace, the state directory, the
render options and the hooks for messages, progress and timings (`Context`); and the first
step of the data flow, loading and rendering the workspace (`load_and_render`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.util.stats import NO_PROGRESS, Stats
from reconciler.workspace.load import Workspace, load_workspace
from reconciler.workspace.render import Options, Rendered, render


@dataclass
class Context:
    workspace: Path
    state_dir: Path
    options: Options
    log: Callable[[str], None] = lambda msg: None
    warnings: list[str] = field(default_factory=list)
    parallelism: int = 10
    progress: Callable[[str, int, int, str], None] = NO_PROGRESS
    stats: Stats = field(default_factory=Stats)
    rollout_rules: list = field(default_factory=list)  # reconciler.engine.rollout.Rule, from reconciler.yaml


def load_and_render(ctx: Context) -> tuple[Workspace, Rendered]:
    with ctx.stats.phase("load/render"):
        ws = load_workspace(ctx.workspace, ctx.state_dir)
        rendered = render(ws, ctx.options)
    ctx.warnings.extend(rendered.warnings)
    return ws, rendered
