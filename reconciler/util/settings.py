"""reconciler.yaml at the workspace root: the settings file of the workspace, one YAML document
whose top-level keys are the sections of the parts that read it (`backend`, `secrets`, `rollout`). Each
part reads its own section; this module only finds and parses the file, with line numbers."""

from __future__ import annotations

from pathlib import Path

from reconciler.errors import ConfigError, did_you_mean
from reconciler.util.yamlsrc import load_yaml_documents

CONFIG_FILE = "reconciler.yaml"
SECTIONS = ("backend", "secrets", "rollout")


def config_document(workspace: Path | str = "."):
    """reconciler.yaml at the workspace root, parsed (a yamlsrc.Doc), or None without one."""
    path = Path(workspace) / CONFIG_FILE
    if not path.is_file():
        return None
    shown = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read file: {exc}", shown) from None
    docs = load_yaml_documents(text, shown)
    if len(docs) > 1:
        raise ConfigError(f"expected one document, found {len(docs)}", shown, 1)
    doc = docs[0] if docs else None
    if doc is None:
        return None
    if not isinstance(doc.data, dict):
        raise doc.error((), "expected a mapping with 'backend', 'secrets' and/or 'rollout' keys")
    for k in doc.data:
        if k not in SECTIONS:
            raise doc.error((k,), f"unknown key '{k}'", did_you_mean(str(k), SECTIONS))
    return doc
