"""One module per pipeline step type, each implementing `step_base.StepType` and named in
`step_types.STEP_TYPES`. These modules never import each other (an import-linter contract
in pyproject.toml); what they share lives in `step_base`, `stage`, `scripts` and `restore`."""
