"""Hostile and careless input through the real CLI (see test_bad_input.py): identifiers that
would leave the state directory, odd files, resource limits. Each is one error line naming
the file (and line), exit 1, no traceback, no AWS request."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_bad_input import ENVIRONMENT, INFRA, make_ws, one_error, validate, ws  # noqa: F401  (fixtures)

pytestmark = pytest.mark.e2e


# ------------------------------------------------------------------ identifiers (item 8)


@pytest.mark.parametrize("ident", ["../../../../tmp/x", "a/b", "1abc", "a-b", "x" * 129])
def test_environment_identifier_that_is_no_harness_identifier(validate, ws, ident):
    env = ENVIRONMENT.replace("identifier: dev", f"identifier: '{ident}'")
    infra = INFRA.replace("environmentRef: dev", f"environmentRef: '{ident}'")
    make_ws(ws, **{".harness__env.yaml": env, ".harness__infra.yaml": infra})
    one_error(validate(ws), ".harness/env.yaml:3:", "not a Harness identifier")


def test_infrastructure_identifier_with_a_slash(validate, ws):
    make_ws(ws, **{".harness__infra.yaml": INFRA.replace("identifier: use1", "identifier: a/b")})
    one_error(validate(ws), ".harness/infra.yaml:3:", "not a Harness identifier")


def test_a_state_path_never_leaves_the_state_directory(run_cli, ws, tmp_path):
    """state pull names its target itself: the identifier check is in the state path."""
    make_ws(ws)
    r = run_cli("state", "pull", "-w", str(ws), "--state-dir", str(tmp_path / "state"), "-e", "..", "-i", "x", cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    from reconciler.backend import LocalBackend
    from reconciler.errors import ReconcilerError

    for env, infra in [("../../../tmp", "x"), ("a/b", "c"), ("dev", "../x"), ("dev", "")]:
        with pytest.raises(ReconcilerError):
            LocalBackend().state_path(Path("/s"), env, infra)
    assert LocalBackend().state_path(Path("/s"), "dev", "use_1$") == Path("/s/dev/use_1$.json")
