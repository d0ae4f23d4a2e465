"""Where reconciler keeps what it deployed: the state document and its journal (`state`),
each state's sealing key (`seals`), and the backends that store and lock it: what every
backend provides (`base`), their configuration (`config`), the backend of this command and
the registry of backend types (`backend`), the local files backend with its journal
(`local`, on the private files and file lock of `files`), and the s3 backend (`s3`) with
its S3 and DynamoDB locks (`locks`). Knows nothing of the workspace's YAML entities or of
Lambda; no backend reads a configuration file (the command line hands it a BackendConfig).

May import: `reconciler.aws`, `reconciler.util`, `reconciler.model`, `reconciler.errors`;
never `reconciler.workspace`, `reconciler.engine`, `reconciler.pipeline` or `reconciler.cli`.
"""
