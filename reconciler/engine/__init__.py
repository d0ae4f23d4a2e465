"""The reconciler itself: what a run is given and the workspace loaded and rendered
(`context`), refresh what is live (`refresh`, `live`) and the code to deploy (`artifacts`),
plan the difference (`planner`: make_plan, around `diff`, the pure planner: no I/O), apply it
with snapshots and restore (`apply`), roll back (`rollback`), report drift (`drift`) and
adopt existing functions (`adopt`); shift an alias's traffic gradually (`rollout`: pure
rules, schedules and the driver loop; `traffic`: their plan and apply with Lambda and
CloudWatch).

May import: `reconciler.workspace`, `reconciler.store`, `reconciler.aws`, `reconciler.util`,
`reconciler.model`, `reconciler.errors`; never `reconciler.pipeline` or `reconciler.cli`.
"""
