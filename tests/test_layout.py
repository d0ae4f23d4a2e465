"""The package layout holds: imports point one way along the data flow (the import-linter
contracts of pyproject.toml: layers, typer only in the command line, boto3 only in the AWS
package and the state backends), no module of reconciler is part of an import circle, and no
function of the engine or the pipeline is longer than 60 lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent


def test_the_import_contracts_hold():
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from importlinter.cli import lint_imports_command; "
            "sys.argv = ['lint-imports', '--no-cache']; lint_imports_command()",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "broken" not in r.stdout.lower().replace("0 broken", ""), r.stdout[-4000:]


def _circles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in graph.modules:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                    break
                if child in on:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        m = stack.pop()
                        on.discard(m)
                        comp.append(m)
                        if m == node:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
    return found


# circles being taken apart: each entry goes when its package is split
KNOWN: list[list[str]] = []


def test_no_import_circles():
    graph = grimp.build_graph("reconciler", cache_dir=None)
    assert [c for c in _circles(graph) if c not in KNOWN] == []


def test_the_circle_finder_finds_a_circle(tmp_path, monkeypatch):
    pkg = tmp_path / "circ"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from circ import b\n")
    (pkg / "b.py").write_text("def f():\n    from circ import a\n")
    (pkg / "c.py").write_text("from circ import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _circles(grimp.build_graph("circ", cache_dir=None)) == [["circ.a", "circ.b"]]


def test_demo_without_the_emulator_says_how_to_install_it(tmp_path):
    code = (
        "import sys; sys.modules['moto'] = None; sys.modules['moto.server'] = None; "
        "sys.argv = ['reconciler', 'demo']; from reconciler.cli.app import main; main()"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)},
    )
    assert r.returncode == 1, r.stderr
    assert "pip install 'reconciler[demo]'" in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2, r.stderr


def _long_functions(root: Path, limit: int) -> list[str]:
    import ast

    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno is not None:
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{path}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_each_step_of_the_engine_and_the_pipeline_is_a_short_function():
    """No function of reconciler/engine or reconciler/pipeline is longer than 60 lines."""
    pkg = ROOT / "reconciler"
    assert _long_functions(pkg / "engine", 60) + _long_functions(pkg / "pipeline", 60) == []


def test_the_length_check_sees_a_long_function(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n" + "    x = 1\n" * 61 + "\n\ndef g():\n    return 1\n")
    assert [s.split(" ", 1)[1] for s in _long_functions(tmp_path, 60)] == ["f (62 lines)"]
