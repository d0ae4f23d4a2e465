"""One module per command or command group, each a plain typer function that reconciler.cli.app
registers: validate, plan, apply, rollback, history, drift, refresh, import_ (import),
force_unlock, run, demo, and state (the `state` subcommands: list, show, rm, pull, push).

A command module imports `reconciler.cli.options`, `output`, `context` and `views`, and the
engine, store, workspace and pipeline inside its functions (so `--help` stays fast); never
another command module.
"""
