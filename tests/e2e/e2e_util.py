"""Helpers shared by the end-to-end tests: a sample workspace copied into tmp_path, the
AWS resources its README asks for, and the real CLI run against moto_server with a
state directory of its own."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import time
from pathlib import Path

import pytest


def check(result: subprocess.CompletedProcess, code: int = 0) -> subprocess.CompletedProcess:
    """Assert the exit code, showing what the CLI said when it is not the expected one."""
    assert result.returncode == code, (
        f"exit {result.returncode}, expected {code}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


class Project:
    """One sample workspace, its state directory and the AWS it deploys to."""

    def __init__(self, run_cli, aws, ws: Path, state_dir: Path, region: str):
        self.run_cli = run_cli
        self.aws = aws
        self.ws = ws
        self.state_dir = state_dir
        self.region = region

    # -- the CLI ---------------------------------------------------------
    def cli(self, *args, code: int | None = 0, env_extra=None, input=None) -> subprocess.CompletedProcess:
        r = self.run_cli(*args, "--state-dir", self.state_dir, cwd=self.ws, env_extra=env_extra, input=input)
        return check(r, code) if code is not None else r

    def cli_pty(self, *args, answer: str, timeout: float = 60) -> tuple[int, str, str]:
        """Run the CLI with a pseudo-terminal as stdin and type `answer` at its prompt."""
        master, slave = pty.openpty()
        try:
            proc = subprocess.Popen(
                self.run_cli.command(*args, "--state-dir", self.state_dir),
                cwd=self.ws,
                env=self.run_cli.env,
                stdin=slave,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            os.close(slave)
            slave = None
            os.write(master, (answer + "\n").encode())
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline:
                # drain the terminal (echo) so the child never blocks on it
                if select.select([master], [], [], 0.1)[0]:
                    try:
                        os.read(master, 4096)
                    except OSError:
                        break
            out, err = proc.communicate(timeout=max(1, deadline - time.monotonic()))
            return proc.returncode, out, err
        finally:
            if slave is not None:
                os.close(slave)
            os.close(master)

    # -- files -----------------------------------------------------------
    def state_file(self, env: str, infra: str) -> dict:
        return json.loads((self.state_dir / env / f"{infra}.json").read_text())

    def edit_json(self, rel: str, change) -> None:
        path = self.ws / rel
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data, indent=2))

    # -- Lambda ----------------------------------------------------------
    def config(self, name: str) -> dict:
        return self.aws.lambda_config(name, self.region)

    def versions(self, name: str) -> list:
        return self.aws.versions(name, self.region)

    def aliases(self, name: str) -> dict:
        return self.aws.aliases(name, self.region)

    def tags(self, name: str) -> dict:
        lam = self.aws.client("lambda", self.region)
        arn = lam.get_function_configuration(FunctionName=name)["FunctionArn"]
        return lam.list_tags(Resource=arn)["Tags"]

    def lam(self):
        return self.aws.client("lambda", self.region)


HELLO_REGION = "us-east-2"
HELLO_FN = "Hello_World"
HELLO_DEF = "serverless/aws-lambda/createFunction.json"
HELLO_STATE = ("aws", "awslambda")


class Hello(Project):
    """samples/hello-world with role hello-world-lambda-role and s3://mylambda/workloadNameValue."""

    bucket = "mylambda"

    def put(self, key: str, text: str) -> str:
        """Upload a zip holding handler.js = text under `key`; its base64 SHA-256."""
        return self.aws.put_zip(self.bucket, key, self.aws.make_zip({"handler.js": text}), region=self.region)

    def state(self) -> dict:
        return self.state_file(*HELLO_STATE)


@pytest.fixture
def hello(aws, run_cli, workspace, tmp_path) -> Hello:
    ws = workspace("hello-world")
    aws.create_role("hello-world-lambda-role")
    h = Hello(run_cli, aws, ws, tmp_path / "state", HELLO_REGION)
    h.sha1 = h.put("workloadNameValue", "module.exports.hello = async () => ({statusCode: 200, body: 'v1'});\n")
    return h
