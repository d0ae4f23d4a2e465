"""The command line (typer), the only package that imports typer. `app` creates the app and
its `state` group and registers the commands; `commands/` holds one module per command or
command group, each a plain function with its options declared as parameters; `options` defines
every shared option once; `output` is what commands share at their edge (stdout/stderr, the
confirmation prompt, the one place that maps errors to exit codes); `context` turns options into
the engine's Context and the pipeline runner's settings; `views` renders plans and drift reports
as text, JSON and Markdown; `demo` is the story of `reconciler demo`.

Imports point one way inside it: `app` > `commands` > `context` > `output` > `options`; a
command module never imports another command. May import: every other package of reconciler.
"""
