"""The command line (typer): the app and its commands, the options they share, the one
place that maps errors to exit codes, and the views that render plans and state as text,
JSON and Markdown. The only package that imports typer.

May import: every other package of reconciler.
"""
