"""The desired state, read from the workspace: Harness entities in YAML with line numbers
(`load`), `<+...>` expressions (`expr`), targets and fully rendered functions (`render`),
the botocore Lambda model as schema (`schema`), connectors (`connectors`), provisioner
outputs (`provision`) and the script runner shared by script steps and provisioners
(`shell`). Reads AWS only for provisioner outputs and never changes anything in it.

May import: `reconciler.aws`, `reconciler.util`, `reconciler.model`, `reconciler.errors`;
never `reconciler.store`, `reconciler.engine`, `reconciler.pipeline` or `reconciler.cli`.
"""
