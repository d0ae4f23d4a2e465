"""Shared helpers below every stage of the data flow, with no AWS calls and no knowledge of
the workspace's entities: YAML and JSON with line numbers (`yamlsrc`), the workspace's
`reconciler.yaml` file (`settings`), the secrets policy — references, seals, masking and
scrubbing of known values (`secrets`) — and counters and progress (`stats`).

May import: `reconciler.errors`, `reconciler.model` and the standard library / ruamel.yaml.
"""
