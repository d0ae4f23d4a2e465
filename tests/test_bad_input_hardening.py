"""Hostile and careless input through the real CLI (see test_bad_input.py): identifiers that
would leave the state directory, odd files, resource limits. Each is one error line naming
the file (and line), exit 1, no traceback, no AWS request."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from test_bad_input import ENVIRONMENT, FDEF, INFRA, fdef_text, make_ws, one_error, validate, ws  # noqa: F401  (fixtures)

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
    r = run_cli(
        "state", "pull", "-w", str(ws), "--state-dir", str(tmp_path / "state"), "-e", "..", "-i", "x", cwd=tmp_path
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    from reconciler.store.local import LocalBackend
    from reconciler.errors import ReconcilerError

    for env, infra in [("../../../tmp", "x"), ("a/b", "c"), ("dev", "../x"), ("dev", "")]:
        with pytest.raises(ReconcilerError):
            LocalBackend().state_path(Path("/s"), env, infra)
    assert LocalBackend().state_path(Path("/s"), "dev", "use_1$") == Path("/s/dev/use_1$.json")


# ------------------------------------------------------------------ resource limits (item 11)


def test_aliases_count_at_their_expanded_size(validate, ws):
    """20,000 environment keys aliasing one 50 KB string: under the value budget, but a GB expanded."""
    big = "x" * 50_000
    keys = "".join(f"    K{i}: *big\n" for i in range(20_000))
    make_ws(
        ws,
        **{
            ".harness__service.yaml": None,
            ".harness__svc.yaml": "service:\n  name: svc\n  identifier: svc\n"
            f"  big: &big {big}\n  environment:\n{keys}",
        },
    )
    t0 = time.monotonic()
    one_error(validate(ws), ".harness/svc.yaml:", "document expands to more than")
    assert time.monotonic() - t0 < 20


def test_a_huge_list_is_refused_before_it_is_parsed_whole(validate, ws):
    items = "".join(f"    - {i}\n" for i in range(1_000_000))  # about 10 MB
    make_ws(ws, **{".harness__big.yaml": "service:\n  name: big\n  identifier: big\n  list:\n" + items})
    t0 = time.monotonic()
    one_error(validate(ws), ".harness/big.yaml", "larger than")
    assert time.monotonic() - t0 < 20


def test_a_list_over_the_value_budget_fails_fast(validate, ws):
    items = "".join(f"    - {i}\n" for i in range(150_000))
    make_ws(ws, **{".harness__big.yaml": "service:\n  name: big\n  identifier: big\n  list:\n" + items})
    t0 = time.monotonic()
    one_error(validate(ws), ".harness/big.yaml:", "more than 100000 values")
    assert time.monotonic() - t0 < 20


def test_an_entity_file_that_is_a_fifo_is_an_error_not_a_hang(validate, ws):
    make_ws(ws)
    os.mkfifo(ws / ".harness" / "pipe.yaml")
    t0 = time.monotonic()
    one_error(validate(ws), ".harness/pipe.yaml", "FIFO")
    assert time.monotonic() - t0 < 20


def test_an_entity_file_that_links_to_dev_zero_is_an_error(validate, ws):
    make_ws(ws)
    (ws / ".harness" / "zero.yaml").symlink_to("/dev/zero")
    one_error(validate(ws), ".harness/zero.yaml", "device")


def test_a_manifest_that_is_a_fifo_is_an_error(validate, ws):
    make_ws(ws, **{"fn.json": None})
    os.mkfifo(ws / "fn.json")
    one_error(validate(ws), "fn.json", "FIFO")


# ------------------------------------------------------------------ wrong results (item 13)


def test_a_utf16_entity_file_is_read(validate, ws):
    make_ws(ws, **{".harness__infra.yaml": None})
    (ws / ".harness" / "infra.yaml").write_bytes(INFRA.encode("utf-16"))  # with a byte order mark
    r = validate(ws)
    assert r.returncode == 0, r.stderr


def test_a_utf16_entity_file_without_a_byte_order_mark_is_an_error(validate, ws):
    make_ws(ws, **{".harness__infra.yaml": None})
    (ws / ".harness" / "infra.yaml").write_bytes(INFRA.encode("utf-16-le"))
    one_error(validate(ws), ".harness/infra.yaml", "UTF-16")


def test_a_manifest_path_that_is_a_directory_says_so(validate, ws):
    make_ws(ws, **{"fn.json": None})
    (ws / "fn.json").mkdir()
    one_error(validate(ws), ".harness/service.yaml:16:", "is a directory")


@pytest.mark.parametrize("number", ["1e400", "-1.5e999"])
def test_a_number_out_of_range_says_so(validate, ws, number):
    make_ws(ws, **{"fn.json": fdef_text(FDEF[:4] + [("memorySize", "__N__")]).replace('"__N__"', number)})
    one_error(validate(ws), "fn.json:6:", "number out of range")


def test_environment_variables_over_lambdas_4_kb_fail_validate(validate, ws):
    make_ws(ws, fdef=FDEF[:4] + [("environment", {"variables": {f"K{i}": "v" * 100 for i in range(40)}})])
    one_error(validate(ws), "fn.json:6:", "environment variables", "4096")
    make_ws(ws, fdef=FDEF[:4] + [("environment", {"variables": {f"K{i}": "v" * 90 for i in range(40)}})])
    assert validate(ws).returncode == 0
