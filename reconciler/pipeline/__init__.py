"""`reconciler run PIPELINE`: Harness pipelines on top of the engine — the pipeline model and
its checks, conditions, input sets, the runner with its failure strategies, and the step
types (`shift` for traffic shifts and approvals, `provisioners` for a stage's provisioner steps).

May import: `reconciler.engine` and everything below it; never `reconciler.cli`.
"""
