"""bench/fleet.py loaded as a module (bench/ is not a package), for the tests and bench/quota.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

FLEET_PY = Path(__file__).resolve().parents[2] / "bench" / "fleet.py"


def load_fleet() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_fleet", FLEET_PY)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
