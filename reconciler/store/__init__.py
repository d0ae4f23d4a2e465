"""Where reconciler keeps what it deployed: the state document and its journal (`state`),
the local and S3 backends with their locks (`backend`), and each state's sealing key
(`seals`). Knows nothing of the workspace's YAML entities or of Lambda.

May import: `reconciler.aws`, `reconciler.util`, `reconciler.model`, `reconciler.errors`;
never `reconciler.workspace`, `reconciler.engine`, `reconciler.pipeline` or `reconciler.cli`.
"""
