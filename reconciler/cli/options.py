"""The options that commands share, each defined once as an `Annotated[..., typer.Option(...)]`
alias (as pip's cmdoptions or terraform's arguments): a command declares `workspace: Workspace =
Path(".")` and gets the same flag, short name and help everywhere. An option that only one
command has is declared on that command.

Imports typer and nothing of reconciler, so every command module can import it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

# ------------------------------------------------------------------ what to read

Workspace = Annotated[
    Path, typer.Option("--workspace", "-w", help="Workspace directory holding the Harness YAML.", show_default=True)
]
StateDir = Annotated[
    Path | None, typer.Option("--state-dir", help="State directory [default: ./state, or RECONCILER_STATE_DIR].")
]
BackendConfig = Annotated[
    list[str] | None,
    typer.Option(
        "--backend-config",
        help="Override one backend setting: KEY=VALUE, keys type, bucket, key_prefix, region, lock, table (repeatable).",
    ),
]

# ------------------------------------------------------------------ which targets and functions

Services = Annotated[list[str] | None, typer.Option("--service", "-s", help="Only this service (repeatable).")]
Envs = Annotated[list[str] | None, typer.Option("--env", "-e", help="Only this environment (repeatable).")]
Infras = Annotated[
    list[str] | None, typer.Option("--infra", "-i", help="Only this infrastructure definition (repeatable).")
]
Functions = Annotated[list[str] | None, typer.Option("--function", "-f", help="Only this function (repeatable).")]

# ------------------------------------------------------------------ values for the workspace

Vars = Annotated[
    list[str] | None,
    typer.Option(
        "--var",
        help="Set a variable: NAME=VALUE (repeatable; highest precedence). artifact.FIELD=VALUE gives an artifact source's <+input> FIELD. A value is data, except exactly one <+secrets.getValue(\"ID\")>, and a type: Secret variable's value, which name a secret.",
    ),
]
Artifact = Annotated[
    str | None, typer.Option("--artifact", help="Artifact source identifier for a primaryArtifactRef of <+input>.")
]
ProvisionerOutputs = Annotated[
    Path | None,
    typer.Option(
        "--provisioner-outputs",
        help="Provisioner outputs for <+provisioner.NAME>: `terraform output -json` or a flat JSON map.",
    ),
]
Inputs = Annotated[
    Path | None, typer.Option("--inputs", help="A Harness input set (YAML) giving the pipeline's <+input> values.")
]
Pipeline = Annotated[
    str | None,
    typer.Option("--pipeline", help="Plan what this pipeline's stages would change (its targets and inputs only)."),
]

# ------------------------------------------------------------------ how to run

LockTimeout = Annotated[
    float, typer.Option("--lock-timeout", help="Seconds to wait for the state lock (default: fail at once).")
]
Parallelism = Annotated[
    int,
    typer.Option(
        "--parallelism", min=1, help="How many functions are read or changed at once (as Terraform's -parallelism)."
    ),
]

# ------------------------------------------------------------------ what to show

Format = Annotated[str, typer.Option("--format", help="Output format: text, json or markdown.")]
TextOrJson = Annotated[str, typer.Option("--format", help="text or json.")]
ShowValues = Annotated[
    bool,
    typer.Option(
        "--show-values",
        help="Show the values of sensitive environment variables (by name, or all with secrets.mask_all) instead of masking them; values from secrets are never shown.",
    ),
]
ShowStats = Annotated[
    bool,
    typer.Option(
        "--stats",
        help="Print API calls by operation, Lambda requests by quota class (throttles, time waiting for capacity, the floor they imply), wall time per phase and peak memory on stderr.",
    ),
]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log each step on stderr.")]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")]
NoColor = Annotated[bool, typer.Option("--no-color", help="No colours (also NO_COLOR).")]
