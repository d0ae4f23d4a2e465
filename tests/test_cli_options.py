"""The command line's shape: an option that several commands share is declared once (in
reconciler/cli/options.py) rather than copied into each command, and importing the app to
print --help loads neither the AWS SDK, rich nor the engine (the commands import them when
they run)."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = ROOT / "reconciler" / "cli"


def _declarations(root: Path = CLI) -> dict[tuple, list[str]]:
    """(kind, decls, help) of every typer.Option / typer.Argument call below root -> where."""
    found: dict[tuple, list[str]] = defaultdict(list)
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "typer"
                and node.func.attr in ("Option", "Argument")
            ):
                continue
            decls = tuple(a.value for a in node.args if isinstance(a, ast.Constant))
            help_ = next((ast.unparse(k.value) for k in node.keywords if k.arg == "help"), "")
            found[(node.func.attr, decls, help_)].append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def test_each_option_is_declared_once():
    found = _declarations()
    assert len(found) > 30, "the scan finds the options"
    assert {k: v for k, v in found.items() if len(v) > 1} == {}


def test_the_scan_finds_a_copied_option(tmp_path):
    (tmp_path / "a.py").write_text('import typer\nDebug = typer.Option("--debug", help="Show tracebacks.")\n')
    (tmp_path / "b.py").write_text('import typer\ndef f(d=typer.Option("--debug", help="Show tracebacks.")): ...\n')
    (tmp_path / "c.py").write_text('import typer\nDebug = typer.Option("--debug", help="Other words.")\n')
    copied = {k: v for k, v in _declarations(tmp_path).items() if len(v) > 1}
    assert copied == {("Option", ("--debug",), "'Show tracebacks.'"): ["a.py:2", "b.py:2"]}


def test_help_imports_no_sdk_and_no_engine():
    code = (
        "import sys, reconciler.cli.app; "
        "print(' '.join(m for m in ('boto3', 'botocore', 'rich', 'moto', 'reconciler.engine', 'reconciler.store', "
        "'reconciler.pipeline', 'reconciler.workspace') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert r.stdout.strip() == ""
