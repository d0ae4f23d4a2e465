"""`reconciler run PIPELINE`: Harness pipelines on top of the engine.

`model` (stage and step definitions, results, StepFailed, RunSettings: data only),
`conditions` (durations, `when.condition`), `inputs` (input sets and their overlay),
`checks` (the pipeline checked without running anything), `runner` (stages, steps,
failure strategies, rollback) and `provisioners` (a stage's provisioner steps, one module
per kind behind `provisioners.base.StepType`).

May import: `reconciler.engine` and everything below it; never `reconciler.cli`.
"""
