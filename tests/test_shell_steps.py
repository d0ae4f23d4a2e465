"""ShellScript steps against hostile values and misbehaving scripts, in-process (no AWS) plus one
run of the real CLI: expression values are never shell code, scripts get a minimal
environment with credentials masked, and nothing a step started outlives it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from reconciler.errors import ConfigError
from reconciler.pipeline.model import RunSettings
from reconciler.pipeline.runner import Runner
from reconciler.util.secrets import MASK
from reconciler.workspace.shell import base_environment, prepare_script, run_script

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
HOSTILE = ["$(touch x)", "`touch x`", '"; touch x; echo "', "'; touch x; echo '", "a\nb $HOME \\ <+pw> %s"]
PATH_ONLY = {"PATH": "/usr/bin:/bin"}


@pytest.fixture
def smoke_ws(tmp_path) -> Path:
    ws = tmp_path / "ws"
    shutil.copytree(SAMPLES / "pipeline-smoke", ws)
    return ws


def _script(ident: str, script: str, **spec) -> dict:
    return {
        "step": {
            "type": "ShellScript",
            "name": ident,
            "identifier": ident,
            "timeout": "20s",
            "spec": {"shell": "Bash", "source": {"type": "Inline", "spec": {"script": script}}, **spec},
        }
    }


def scripts_pipeline(ws: Path, *steps: dict, variables: tuple = ()) -> None:
    """The smoke pipeline with only these script steps (no deploy: no AWS) and extra runtime-input variables."""
    pipe = ws / ".harness" / "pipeline.yaml"
    data = YAML(typ="safe").load(pipe.read_text())
    data["pipeline"]["variables"] += [{"name": n, "type": "String", "value": "<+input>"} for n in variables]
    stage = data["pipeline"]["stages"][0]["stage"]
    stage["spec"]["execution"]["steps"] = list(steps)
    stage["spec"]["execution"]["rollbackSteps"] = []
    pipe.write_text(json.dumps(data, indent=2))


def run(ws: Path, tmp_path: Path, aws=None, **variables) -> Runner:
    def no_aws():
        if aws is None:
            pytest.fail("no AWS")
        return aws

    runner = Runner(RunSettings(ws, tmp_path / "state", "smokeDeploy", variables=variables), no_aws, lambda m: None)
    runner.run()
    return runner


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def pids_in(*files: Path) -> list[int]:
    return [int(w) for f in files if f.exists() for w in f.read_text().split()]


# ---------------------------------------------------------------- item 5: values are data


@pytest.mark.parametrize("value", HOSTILE)
def test_expression_values_never_run_as_shell_code(smoke_ws, tmp_path, value):
    """--var values and an earlier step's output reach the script intact wherever the
    expression stands (unquoted, in double or single quotes, in a here-document, in $(...)),
    and nothing in them runs."""
    v = "<+pipeline.variables.v>"
    first = _script(
        "first",
        "\n".join(
            [
                f"printf '%s' {v} > plain.txt",
                f'printf "%s" "{v}" > double.txt',
                f"printf '%s' '{v}' > single.txt",
                "# it's a comment with an apostrophe",
                f'echo "$(printf "%s" {v})" > subst.txt',
                "cat > heredoc.txt <<EOF",
                f"{v}",
                "EOF",
                f"out={v}",
            ]
        ),
        outputVariables=[{"name": "out", "type": "String", "value": "out"}],
    )
    second = _script("second", "printf '%s' \"<+execution.steps.first.output.outputVariables.out>\" > fromstep.txt")
    scripts_pipeline(smoke_ws, first, second, variables=("v",))
    runner = run(smoke_ws, tmp_path, v=value)
    assert runner.status == "Success", runner.summary_text()
    assert not (smoke_ws / "x").exists()
    for name in ("plain", "double", "single", "subst", "fromstep"):
        assert (smoke_ws / f"{name}.txt").read_text() == value + ("\n" if name == "subst" else ""), name
    assert (smoke_ws / "heredoc.txt").read_text() == value + "\n"


def test_expression_in_a_quoted_heredoc_is_refused_before_anything_runs(smoke_ws, tmp_path):
    scripts_pipeline(
        smoke_ws, _script("first", "touch ran\nbash <<'EOF'\necho <+pipeline.variables.v>\nEOF"), variables=("v",)
    )
    runner = Runner(
        RunSettings(smoke_ws, tmp_path / "state", "smokeDeploy", variables={"v": "x"}),
        lambda: pytest.fail("no AWS"),
        lambda m: None,
    )
    with pytest.raises(ConfigError) as err:
        runner.run()
    assert "quoted here-document" in str(err.value) and err.value.file.endswith("pipeline.yaml") and err.value.line
    assert not (smoke_ws / "ran").exists()


def test_references_follow_the_quoting_they_stand_in():
    got, values = prepare_script(
        "a <+x> \"b <+x>\" 'c <+y>' $'d' `e <+x>` # f's <+y>\n", lambda e: e.source, lambda: ("f", 1)
    )
    assert (
        got
        == 'a "${RECONCILER_EXPR_1}" "b ${RECONCILER_EXPR_1}" \'c \'"${RECONCILER_EXPR_2}"\'\' $\'d\' `e "${RECONCILER_EXPR_1}"` '
        '# f\'s "${RECONCILER_EXPR_2}"\n'
    )
    assert values == {"RECONCILER_EXPR_1": "<+x>", "RECONCILER_EXPR_2": "<+y>"}


# ---------------------------------------------------------------- item 6: environment and masking


def test_scripts_get_a_minimal_environment_and_credentials_are_masked(smoke_ws, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "runner-secret-key-value")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "runner-session-token-value")
    monkeypatch.setenv("SOME_RUNNER_SETTING", "runner-only")
    step = _script(
        "first",
        'env | sort > env.txt; echo "key: $LEAK"; leaked=$LEAK',
        environmentVariables=[{"name": "LEAK", "type": "String", "value": "<+pipeline.variables.v>"}],
        outputVariables=[{"name": "leaked", "type": "String", "value": "leaked"}],
    )
    scripts_pipeline(smoke_ws, step, variables=("v",))
    runner = run(smoke_ws, tmp_path, v="runner-secret-key-value")
    names = {line.split("=", 1)[0] for line in (smoke_ws / "env.txt").read_text().splitlines() if "=" in line}
    assert {"PATH", "HOME", "LEAK", "RECONCILER_FUNCTION_NAME"} <= names
    assert not names & {"AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "SOME_RUNNER_SETTING", "AWS_ACCESS_KEY_ID"}
    got = runner.summary()["steps"][0]
    assert got["output"] == f"key: {MASK}" and got["outputs"] == {"leaked": MASK}
    assert "runner-secret-key-value" not in json.dumps(runner.summary())


class FakeAws:
    def credentials(self, region, connector):
        return {
            "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
            "AWS_SECRET_ACCESS_KEY": "connector-secret-value",
            "AWS_SESSION_TOKEN": "connector-token",
        }


def test_a_step_asks_for_the_connector_credentials_with_include_infra_selectors(smoke_ws, tmp_path):
    asks = _script(
        "asks",
        'echo "$AWS_ACCESS_KEY_ID $AWS_SECRET_ACCESS_KEY $AWS_SESSION_TOKEN $AWS_REGION"',
        includeInfraSelectors=True,
    )
    plain = _script("plain", 'echo "[${AWS_SECRET_ACCESS_KEY:-none}]"')
    scripts_pipeline(smoke_ws, asks, plain)
    runner = run(smoke_ws, tmp_path, aws=FakeAws())
    got = {s["step"]: s["output"] for s in runner.summary()["steps"]}
    assert got == {"asks": f"AKIAEXAMPLE {MASK} {MASK} us-east-1", "plain": "[none]"}


# ---------------------------------------------------------------- item 7: hangs and orphans


def test_a_background_job_does_not_hold_the_step_and_is_killed(tmp_path):
    t0 = time.monotonic()
    got = run_script("sleep 1000 & echo $! > bg.pid; echo done", PATH_ONLY, tmp_path, 60, [])
    assert got.exit_code == 0 and got.output == "done"
    assert time.monotonic() - t0 < 10
    assert [p for p in pids_in(tmp_path / "bg.pid") if alive(p)] == []


def test_the_timeout_holds_for_setsid_children_and_everything_is_killed(tmp_path):
    script = (
        "setsid sleep 1000 & echo $! >> pids\n"
        "setsid bash -c 'sleep 1000 & echo $! >> pids; exec env -i /bin/sleep 1000' & echo $! >> pids\n"
        "(setsid env -i /bin/sleep 1000 & echo $! >> pids) \n"
        "sleep 1000"
    )
    t0 = time.monotonic()
    got = run_script(script, PATH_ONLY, tmp_path, 2, [])
    assert got.timed_out and time.monotonic() - t0 < 12
    pids = pids_in(tmp_path / "pids")
    assert len(pids) == 4 and [p for p in pids if alive(p)] == []


def test_a_successful_step_leaves_nothing_running(tmp_path):
    script = (
        "(setsid env -i /bin/sleep 1000 & echo $! >> pids); nohup sleep 1000 >/dev/null 2>&1 & echo $! >> pids; exit 0"
    )
    got = run_script(script, PATH_ONLY, tmp_path, 60, [])
    assert got.exit_code == 0
    pids = pids_in(tmp_path / "pids")
    assert len(pids) == 2 and [p for p in pids if alive(p)] == []


@pytest.mark.e2e
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_of_reconciler_run_kills_the_running_script(smoke_ws, tmp_path, sig):
    """The real CLI: SIGTERM (a cancelled CI job) or SIGINT while a script runs kills the script
    and everything it started, and the run exits 130."""
    script = (
        "echo $$ >> pids; setsid sleep 1000 & echo $! >> pids; sleep 1000 & echo $! >> pids; touch started; sleep 1000"
    )
    scripts_pipeline(smoke_ws, _script("first", script))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "reconciler",
            "run",
            "smokeDeploy",
            "-w",
            str(smoke_ws),
            "--state-dir",
            str(tmp_path / "s"),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (smoke_ws / "started").exists():
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    pids = pids_in(smoke_ws / "pids")
    assert len(pids) == 3
    time.sleep(0.5)
    assert [p for p in pids if alive(p)] == []


def test_a_provisioner_script_with_a_background_job_ends_with_its_shell(tmp_path):
    """A Script provisioner that leaves a job behind: its outputs are read when its shell
    ends, and the job is killed."""
    from reconciler.workspace.load import load_workspace
    from reconciler.workspace.provision import _script_outputs

    ws = tmp_path / "ws"
    shutil.copytree(SAMPLES / "pipeline-smoke", ws)
    workspace = load_workspace(ws)
    infra = next(iter(workspace.infrastructures.values()))
    t0 = time.monotonic()
    got = _script_outputs(
        workspace, infra, 'sleep 1000 & echo $! > bg.pid; echo \'{"region_name": "eu-west-1"}\'; echo note >&2', 60
    )
    assert got == {"region_name": "eu-west-1"} and time.monotonic() - t0 < 10
    assert [p for p in pids_in(ws / "bg.pid") if alive(p)] == []


def test_only_dollar_quotes_know_backslash_escapes():
    got, _ = prepare_script("$'d\\' <+x>' '\\' <+y>'\n", lambda e: e.source, lambda: ("f", 1))
    assert got == "$'d\\' '\"${RECONCILER_EXPR_1}\"$'' '\\' \"${RECONCILER_EXPR_2}\"'\n"


def test_an_expression_in_dollar_quotes_keeps_the_escapes_after_it(tmp_path):
    script, values = prepare_script("printf '%s' $'<+x>\\tb'\n", lambda e: "a'b", lambda: ("f", 1))
    result = run_script(script, {**base_environment(), **values}, tmp_path, 10, [])
    assert result.exit_code == 0 and result.output == "a'b\tb"
