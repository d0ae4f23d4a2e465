"""Local CPU cost of reconciler, without AWS: load/render of a generated fleet workspace
(the same service files as bench/fleet.py) and the start-up of the CLI.

    python bench/loadrender.py              # N = 1000
    python bench/loadrender.py --n 100 --rounds 5

Prints, best of the rounds: load and render in-process (the first, cold, render loads
botocore's Lambda model), the wall time of `reconciler validate` (imports, load, render,
pipeline checks) and of `reconciler --version`, and the import time of the modules
`plan` needs before its first API call.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

IN_PROCESS = r"""
import sys, time
from pathlib import Path
t = time.perf_counter()
from reconciler.workspace.load import load_workspace
from reconciler.workspace.render import Options, render
import reconciler.workspace.provision
imports = time.perf_counter() - t
rows = []
for _ in range(int(sys.argv[2])):
    a = time.perf_counter(); ws = load_workspace(Path(sys.argv[1])); b = time.perf_counter()
    render(ws, Options()); c = time.perf_counter()
    rows.append((b - a, c - b))
print(imports, rows[0][0], rows[0][1], min(r[0] for r in rows), min(r[1] for r in rows))
"""

PLAN_IMPORTS = r"""
import time
t = time.perf_counter()
import importlib.util
if importlib.util.find_spec('typer._adapters'):  # typer >= 0.29 validates options through it
    import typer._adapters
import reconciler.cli.app, reconciler.engine.planner, reconciler.aws.client, reconciler.engine.diff, reconciler.cli.views, reconciler.workspace.schema
reconciler.workspace.schema.lambda_model()
print(time.perf_counter() - t)
"""


def best(cmd: list[str], env: dict, rounds: int) -> float:
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        out.append(time.perf_counter() - t)
    return min(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    import fleet

    pp = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": str(REPO) + (os.pathsep + pp if pp else ""), "NO_COLOR": "1"}
    with tempfile.TemporaryDirectory(prefix="reconciler-loadrender-") as tmp:
        ws = Path(tmp) / "ws"
        fleet.workspace(ws, args.n)
        r = subprocess.run(
            [sys.executable, "-c", IN_PROCESS, str(ws), str(args.rounds)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        imports, load1, render1, load, render = map(float, r.stdout.split())
        validate = best([sys.executable, "-m", "reconciler", "validate", "-w", str(ws)], env, args.rounds)
    version = best([sys.executable, "-m", "reconciler", "--version"], env, args.rounds)
    plan_imports = min(
        float(
            subprocess.run(
                [sys.executable, "-c", PLAN_IMPORTS], env=env, check=True, capture_output=True, text=True
            ).stdout
        )
        for _ in range(args.rounds)
    )
    print(f"N={args.n}, {os.cpu_count()} cores, best of {args.rounds}")
    print(f"  load (cold / warm)           {load1:7.3f} / {load:.3f} s")
    print(f"  render (cold / warm)         {render1:7.3f} / {render:.3f} s")
    print(f"  reconciler validate          {validate:7.3f} s")
    print(f"  reconciler --version         {version:7.3f} s")
    print(f"  imports plan needs           {plan_imports:7.3f} s")
    print(f"  (load/render modules import  {imports:7.3f} s)")


if __name__ == "__main__":
    main()
