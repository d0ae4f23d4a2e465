"""reconciler.util.secrets: seals, the masking policy of the views, scrubbing, the state's
fingerprint key and the sealing of the stored state."""

from __future__ import annotations

import io
import json
import os
from types import SimpleNamespace

import pytest

from reconciler.store import backend as be
from reconciler.store.config import read_config
from reconciler.util import secrets as sec
from reconciler.store import state as st
from reconciler.store import seals
from reconciler.model import Change, FunctionPlan, Plan
from reconciler.cli.views import render_json, render_markdown, render_text

SECRET = "hunter2-very-secret"


@pytest.fixture(autouse=True)
def _defaults():
    prev_b, prev_c = be.use(None), sec.use(sec.SecretsConfig())
    yield
    be.use(prev_b)
    sec.use(prev_c)


def test_seals_are_keyed_and_say_which_key():
    a, b = sec.Sealer(b"k1"), sec.Sealer(b"k2")
    assert a.seal(SECRET) == a.seal(SECRET) != b.seal(SECRET)
    assert a.seal(SECRET).startswith(sec.SEAL_PREFIX + a.kid + ":") and SECRET not in a.seal(SECRET)
    assert a.can_check(a.seal("x")) and not a.can_check(b.seal("x"))
    assert a.seal(a.seal("x")) == a.seal("x"), "a seal is not sealed again"


def test_reference_ids_drop_harness_scopes():
    assert sec.reference_id('secrets.getValue("account.db/pw")') == "db/pw"
    assert sec.reference_id("secrets.getValue('org.api#key')") == "api#key"
    assert sec.reference_id("secrets.getValue(x)") is None


def _plan(changes, drift=()):
    fp = FunctionPlan(
        name="f",
        service="s",
        environment="e",
        infrastructure="i",
        region="r",
        action="update",
        changes=list(changes),
        drift=list(drift),
    )
    return Plan(functions=[fp])


def test_views_show_plain_values_and_mask_sensitive_ones():
    seal = sec.Sealer(b"k")
    plan = _plan(
        [
            Change("config", "Environment.Variables.LOG_LEVEL", "info", "debug"),
            Change("config", "Environment.Variables.DB_PASSWORD", "old-" + SECRET, SECRET),
            Change("config", "Environment.Variables.DSN", seal.seal("a"), seal.seal("b")),
            Change("config", "Environment.Variables.NEW_TOKEN", None, SECRET, "create"),
        ],
        drift=[Change("config", "Environment.Variables.DSN", seal.seal("a"), seal.seal("c"))],
    )
    text = render_text(plan)
    assert 'Environment.Variables.LOG_LEVEL: "info" → "debug"' in text
    assert "Environment.Variables.DB_PASSWORD: (sensitive, changed)" in text
    assert "Environment.Variables.DSN: (sensitive, changed)" in text
    assert '+ Environment.Variables.NEW_TOKEN: "(sensitive)"' in text
    for out in (text, render_json(plan), render_markdown(plan)):
        assert SECRET not in out and "sealed:" not in out
    shown = render_text(plan, show_values=True)
    assert SECRET in shown and "sealed:" not in shown, "--show-values never shows a secret's seal or value"
    sec.use(sec.SecretsConfig(mask_all=True))
    assert '"info"' not in render_text(plan)


def test_whole_environment_changes_are_masked_per_variable():
    plan = _plan([Change("config", "Environment", None, {"Variables": {"A_KEY": SECRET, "REGION": "eu"}}, "create")])
    text = render_text(plan)
    assert SECRET not in text and '"REGION": "eu"' in text


def test_scrub_replaces_known_values_and_the_stream_scrubs_lines():
    sec.remember(SECRET, secret=True)
    sec.remember("plain-env-value")
    assert sec.scrub(f"x {SECRET} y") == "x (sensitive) y"
    assert sec.scrub("plain-env-value") == "plain-env-value"
    assert sec.scrub("AWS said plain-env-value", errors=True) == "AWS said (sensitive)"
    buf = io.StringIO()
    s = sec.ScrubbingStream(buf)
    s.write("half " + SECRET[:5])
    s.write(SECRET[5:] + " end\n")
    s.flush()
    assert buf.getvalue() == "half (sensitive) end\n"


def test_the_state_file_keeps_seals_and_references_never_values(tmp_path):
    s = st.load(tmp_path, "prod", "use1")
    sec.remember(SECRET, secret=True)
    s.functions["f"] = {
        "service": "svc",
        "configuration": {
            "Environment": {"Variables": {"DB_PASSWORD": "pw-by-name-1234", "DSN": SECRET, "LOG_LEVEL": "info"}}
        },
        "secrets": {"DSN": '<+secrets.getValue("dsn")>'},
    }
    s.history.append(
        {
            "id": "1",
            "function": "f",
            "status": "failed",
            "error": f"AWS echoed {SECRET}",
            "previous": {"exists": True, "configuration": {"Environment": {"Variables": {"DSN": SECRET}}}},
        }
    )
    s.write()
    s.functions["f"]["configuration"]["Environment"]["Variables"]["DSN"] = SECRET
    s.append(["f"])
    text = s.path.read_text() + s.path.with_name("use1.json.journal").read_text()
    assert SECRET not in text and "pw-by-name-1234" not in text and '"LOG_LEVEL": "info"' in text.replace('":"', '": "')
    key = s.path.with_name("use1.json.key")
    assert key.exists() and oct(key.stat().st_mode & 0o777) == "0o600" and key.read_bytes().strip() not in text.encode()
    again = st.load(tmp_path, "prod", "use1")
    v = again.functions["f"]["configuration"]["Environment"]["Variables"]
    assert sec.is_sealed(v["DSN"]) and sec.sealer_by_kid(v["DSN"]).seal(SECRET) == v["DSN"]
    assert json.loads(s.path.read_text())["history"][0]["error"] == "AWS echoed (sensitive)"


def test_s3_fingerprint_key_is_an_encrypted_object_beside_the_state(monkeypatch, tmp_path):
    for k in list(__import__("os").environ):
        if k.startswith("AWS_ENDPOINT_URL") or k in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
            monkeypatch.delenv(k, raising=False)
    for k, v in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    from moto import mock_aws

    with mock_aws():
        import boto3

        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="team-state")
        be.use(be.make(read_config(".", ["type=s3", "bucket=team-state"], environ={})))
        path = st.state_path(tmp_path, "prod", "use1")
        seals._sealers.pop(str(path), None)
        assert seals.sealer_for(path, create=False) is None
        made = seals.sealer_for(path)
        head = s3.head_object(Bucket="team-state", Key="reconciler/prod/use1.json.key")
        assert head["ServerSideEncryption"] == "AES256"
        seals._sealers.pop(str(path), None)
        assert seals.sealer_for(path, create=False).kid == made.kid, "read back, not made again"
        assert be.current().create_key(path, b"other") != b"other", "a key that exists is kept"
        assert be.current().targets(tmp_path) == [], "the key object is not a state"


def test_the_stream_scrubs_a_multi_line_secret_printed_whole():
    pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkq\n-----END PRIVATE KEY-----"
    sec.remember(pem, secret=True)
    buf = io.StringIO()
    s = sec.ScrubbingStream(buf)
    print(f"key: {pem}", file=s)
    s.flush()
    assert buf.getvalue() == "key: (sensitive)\n"


def test_a_value_from_outside_is_data_unless_it_is_one_secret_reference():
    assert sec.outside_value('<+secrets.getValue("account.db/pw")>') == sec.placeholder("db/pw")
    assert sec.outside_value(' <+secrets.getValue("db/pw")> ') == sec.placeholder("db/pw")
    for data in ('x <+secrets.getValue("db/pw")>', "<+serviceVariables.pw>", "plain", 'a<+secrets.getValue("x")><+y>'):
        assert sec.outside_value(data) == data
    assert sec.outside_value("org.db/pw", secret_type=True) == sec.placeholder("db/pw"), "a Secret variable names one"


def test_places_outside_the_environment_are_sealed_whole_in_the_stored_state():
    sealer = sec.Sealer(b"k")
    entry = {
        "configuration": {"Description": f"ticket {SECRET}", "Layers": [SECRET], "Timeout": 3},
        "tags": {"billing": SECRET, "team": "pay"},
        "aliases": {"live": {"version": "1", "description": SECRET, "weights": {}}},
        "secret_fields": {
            "Description": "...",
            "Layers": ["..."],
            "Tags.billing": "...",
            "Aliases.live.Description": "...",
        },
    }
    out = sec.seal_entry(entry, sealer)
    text = json.dumps(out)
    assert SECRET not in text and entry["tags"]["billing"] == SECRET, "a copy; the entry itself is left as it is"
    assert out["configuration"]["Description"] == sealer.seal(f"ticket {SECRET}")
    assert out["configuration"]["Layers"] == sealer.seal(json.dumps([SECRET], separators=(",", ":")))
    assert out["configuration"]["Timeout"] == 3 and out["tags"]["team"] == "pay"
    assert sec.seal_entry(out, sealer) == out, "sealing twice changes nothing"


# ---------------------------------------------------------------- the backup and the fingerprint key


def test_first_write_of_a_state_from_before_sealing_keeps_a_sealed_backup(tmp_path):
    """A state written before sealing existed holds a sensitive value in clear; its first
    write by this version seals the state, and the `.backup` of that version too."""
    clear = {"Environment": {"Variables": {"DB_PASSWORD": SECRET, "LOG_LEVEL": "info"}}}
    legacy = {
        "format_version": 1,
        "lineage": "l-1",
        "serial": 3,
        "environment": "prod",
        "infrastructure": "use1",
        "region": "us-east-1",
        "functions": {"f": {"service": "s", "configuration": clear}},
        "artifacts": {},
        "history": [{"id": "r1", "function": "f", "status": "succeeded", "previous": {"configuration": clear}}],
    }
    path = tmp_path / "prod" / "use1.json"
    path.parent.mkdir()
    path.write_text(json.dumps(legacy, indent=2))
    s = st.load(tmp_path, "prod", "use1")
    s.write()
    backup = path.with_name("use1.json.backup")
    assert SECRET not in path.read_text() and SECRET not in backup.read_text()
    kept = json.loads(backup.read_text())
    assert kept["serial"] == 3, "the backup is the version before the write"
    for conf in (kept["functions"]["f"]["configuration"], kept["history"][0]["previous"]["configuration"]):
        v = conf["Environment"]["Variables"]
        assert sec.is_sealed(v["DB_PASSWORD"]) and v["LOG_LEVEL"] == "info"
    assert oct(backup.stat().st_mode & 0o777) == "0o600"
    s.write()
    assert json.loads(backup.read_text())["serial"] == 4, "a sealed file is kept as it is"


def test_a_run_reading_the_local_key_while_another_creates_it_uses_the_stored_key(tmp_path, monkeypatch):
    """Run B reads the fingerprint key while run A is writing it: whatever B finds, both end
    with the key that is stored (never one that is not)."""
    b = be.current()
    path = st.state_path(tmp_path, "prod", "use1")
    path.parent.mkdir(parents=True)
    real_write = os.write
    seen: dict = {}

    def racing_write(fd, data):
        if "b" not in seen:
            seen["b"] = None
            seen["b"] = b.read_key(path) or b.create_key(path, b"key-of-b")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", racing_write)
    a = b.create_key(path, b"key-of-a")
    monkeypatch.undo()
    stored = b.read_key(path)
    assert stored in (b"key-of-a", b"key-of-b")
    assert a == stored and seen["b"] == stored


def _s3_team_state(monkeypatch):
    for k in list(os.environ):
        if k.startswith("AWS_ENDPOINT_URL") or k in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
            monkeypatch.delenv(k, raising=False)
    for k, v in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)


def test_an_s3_key_put_in_flight_elsewhere_is_waited_for_not_replaced_by_an_unstored_one(monkeypatch, tmp_path):
    """Run A's conditional put of the key object conflicts with run B's put still in flight
    (409) and A's first read finds nothing yet; B's put then lands. A uses B's key, which is
    the stored one."""
    _s3_team_state(monkeypatch)
    from moto import mock_aws

    with mock_aws():
        import boto3

        other = boto3.client("s3", region_name="us-east-1")
        other.create_bucket(Bucket="team-state")
        be.use(be.make(read_config(".", ["type=s3", "bucket=team-state"], environ={})))
        b = be.current()
        path = st.state_path(tmp_path, "prod", "use1")
        key_name = "reconciler/prod/use1.json.key"
        calls = {"put": 0, "get": 0}

        def put_in_flight(params, **_):  # params: the request about to be sent
            if params["url_path"].endswith("/" + key_name) and calls["put"] == 0:
                calls["put"] += 1
                err = {"Code": "ConditionalRequestConflict", "Message": "a conflicting operation is in progress"}
                return SimpleNamespace(status_code=409, headers={}), {"Error": err, "ResponseMetadata": {}}
            return None

        def get_before_it_lands(params, **_):
            if params["url_path"].endswith("/" + key_name) and calls["get"] == 0:
                calls["get"] += 1
                other.put_object(Bucket="team-state", Key=key_name, Body=b"key-of-b\n")  # B's put lands after
                err = {"Code": "NoSuchKey", "Message": "The specified key does not exist."}
                return SimpleNamespace(status_code=404, headers={}), {"Error": err, "ResponseMetadata": {}}
            return None

        b.s3.meta.events.register("before-call.s3.PutObject", put_in_flight)
        b.s3.meta.events.register("before-call.s3.GetObject", get_before_it_lands)
        got = b.create_key(path, b"key-of-a")
        stored = other.get_object(Bucket="team-state", Key=key_name)["Body"].read().strip()
        assert calls == {"put": 1, "get": 1}
        assert stored == b"key-of-b" and got == stored


def test_s3_backend_errors_are_scrubbed_of_secret_and_environment_values(monkeypatch, tmp_path):
    """AWS's error text can echo what a request held; the s3 backend's errors are scrubbed
    as every other AWS error is."""
    _s3_team_state(monkeypatch)
    from botocore.stub import Stubber
    from moto import mock_aws

    from reconciler.errors import AwsError

    sec.remember(SECRET, secret=True)
    sec.remember("env-value-echoed-9", secret=False)
    with mock_aws():
        be.use(be.make(read_config(".", ["type=s3", "bucket=team-state"], environ={})))
        b = be.current()
        path = st.state_path(tmp_path, "prod", "use1")
        with Stubber(b.s3) as stub:
            stub.add_client_error(
                "get_object", "AccessDenied", f"denied: {SECRET} and env-value-echoed-9", http_status_code=403
            )
            with pytest.raises(AwsError) as got:
                b.read(path)
    text = str(got.value)
    assert "cannot read the state s3://team-state/reconciler/prod/use1.json" in text and "AccessDenied" in text
    assert SECRET not in text and "env-value-echoed-9" not in text
