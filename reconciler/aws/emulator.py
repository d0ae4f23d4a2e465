"""The embedded AWS emulator of `reconciler demo`: moto's server on 127.0.0.1 and boto3
clients for its emulated account. moto is an optional dependency (`reconciler[demo]`);
without it, starting the emulator says how to install it."""

from __future__ import annotations

import os
from typing import Any

import boto3

from reconciler.errors import ReconcilerError

INSTALL_HINT = "pip install 'reconciler[demo]'"


def start() -> tuple[Any, str]:
    """Start moto's server on a free loopback port: (server, endpoint URL). Stop it with server.stop()."""
    os.environ.setdefault("MOTO_LAMBDA_STUB_ECR", "false")
    import logging

    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        raise ReconcilerError(
            "the demo runs on the moto emulator, which is not installed", hint=f"install it with: {INSTALL_HINT}"
        ) from None
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def client(service: str, endpoint: str, region: str):
    """A boto3 client of the emulated account, as a user's own scripts would make one."""
    return boto3.client(
        service, region_name=region, endpoint_url=endpoint, aws_access_key_id="demo", aws_secret_access_key="demo"
    )
