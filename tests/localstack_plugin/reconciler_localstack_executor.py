"""A LocalStack Lambda runtime executor for a control-plane emulator without Docker.

LocalStack's default executor prepares every function version with Docker; without
Docker each one ends `Failed`. This one prepares versions without running anything, so
functions go `Pending → Active` and updates `InProgress → Successful` as in Lambda.
Invoke cannot work with it (it raises). A version whose environment has the variable
RECONCILER_TEST_PREPARATION_FAILS fails to prepare (a fault the tests inject from the
emulator's side). Selected with
`LAMBDA_RUNTIME_EXECUTOR=prepare-only`; installed into LocalStack's own environment.
"""

from __future__ import annotations

from localstack.services.lambda_.invocation.plugins import RuntimeExecutorPlugin
from localstack.services.lambda_.invocation.runtime_executor import (
    LambdaRuntimeException,
    RuntimeExecutor,
)

NO_RUNTIME = "this LocalStack runs no Lambda code (runtime executor 'prepare-only')"
# a function version whose environment has this variable fails its preparation, as a
# version Lambda cannot prepare does: the function goes Failed (create) or its update does
FAIL_VARIABLE = "RECONCILER_TEST_PREPARATION_FAILS"


class PrepareOnlyExecutor(RuntimeExecutor):
    def start(self, env_vars: dict[str, str]) -> None:
        raise LambdaRuntimeException(NO_RUNTIME)

    def stop(self) -> None:
        pass

    def get_address(self) -> str:
        return "127.0.0.1"

    def get_endpoint_from_executor(self) -> str:
        return "127.0.0.1"

    def get_runtime_endpoint(self) -> str:
        return ""

    def invoke(self, payload: dict[str, str]):
        raise LambdaRuntimeException(NO_RUNTIME)

    def get_logs(self) -> str:
        return ""

    @classmethod
    def prepare_version(cls, function_version) -> None:
        variables = function_version.config.environment or {}
        if FAIL_VARIABLE in variables:
            raise LambdaRuntimeException(f"cannot prepare this version: {variables[FAIL_VARIABLE]}")

    @classmethod
    def cleanup_version(cls, function_version) -> None:
        pass


class PrepareOnlyExecutorPlugin(RuntimeExecutorPlugin):
    name = "prepare-only"

    def load(self, *args, **kwargs):
        return PrepareOnlyExecutor
