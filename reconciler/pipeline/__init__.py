"""`reconciler run PIPELINE` and `plan --pipeline`: Harness pipelines on top of the engine.

Data: `model` (stage and step definitions, results, StepFailed, RunSettings). Reading the
pipeline: `conditions` (durations, `when.condition`), `inputs` (input sets, their overlay,
unresolved runtime inputs), `checks` (the pipeline checked without running anything).
Running it: `runner` (stages, steps, rollback), `strategies` (failure strategies), `stage`
(one stage for one target: its scope and facts), `plan` (`plan --pipeline`). Step types:
`step_base` (the `StepType` protocol: check, run), `step_types` (the `STEP_TYPES`
registry the checks and the runner use), `steps/<type>.py` (one module per step type),
`shift` (traffic shifts and approvals, behind `steps/traffic_shift.py` and
`steps/approval.py`), `provisioners/` (the provisioner kinds, one module each), with
`scripts` (running a step's bash script) and `restore` (a stage's rollback of its deploys)
shared by them.

May import: `reconciler.engine` and everything below it; never `reconciler.cli`.
"""
