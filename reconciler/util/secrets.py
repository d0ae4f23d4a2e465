"""Secrets: references to a secret store, keyed fingerprints ("seals") of sensitive values,
the masking policy of every output, and the scrubbing of known values from text.

- A reference `<+secrets.getValue("id")>` (Harness's `org.` / `account.` prefixes
  accepted, `id#key` selects a key of a JSON secret), or a `type: Secret` variable whose
  value names a secret, renders to a placeholder `⟦secret:id⟧`: a rendered function, a
  saved plan and the state hold the reference, never the value. The value is read from
  the store (Secrets Manager by default, or SSM Parameter Store SecureString) when a
  plan or an apply needs it, and lives in memory only.
- A seal is `sealed:hmac-sha256:<key id>:<hex>`: HMAC-SHA256 of a value keyed by the
  state's fingerprint key, which is kept beside the state, not in it (state/README.md
  says why). The state keeps seals instead of sensitive values; plans compare seals of
  secret values, so a change is seen and never printed.
- The masking policy: a value is sensitive when it comes from a secret, or when its
  variable's name contains one of `sensitive_names` (any case), or always with
  `mask_all`. `reconciler.yaml`:

      secrets:
        store: secretsmanager    # or ssm
        prefix: "prod/"          # prepended to every secret id
        mask_all: false
        sensitive_names: [PASSWORD, SECRET, TOKEN, KEY, CREDENTIAL, PRIVATE]
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from reconciler.errors import ReconcilerError

STORES = ("secretsmanager", "ssm")
DEFAULT_SENSITIVE = ("PASSWORD", "SECRET", "TOKEN", "KEY", "CREDENTIAL", "PRIVATE")
KEYS = ("store", "prefix", "mask_all", "sensitive_names")
MASK = "(sensitive)"
CHANGED = "(sensitive, changed)"
SEAL_PREFIX = "sealed:hmac-sha256:"
# a reference as rendered: the expression itself cannot stay (expressions resolve until
# none is left), so it becomes this marker, which no user text contains by accident
PLACEHOLDER = re.compile("\u27e6secret:([^\u27e6\u27e7]+)\u27e7")
REFERENCE = re.compile(r"""^secrets\.getValue\(\s*(['"])(?P<id>[^'"]+)\1\s*\)$""")
MIN_SCRUB = 4  # shorter values are not scrubbed from text (a one-letter value would eat every word)


def placeholder(secret_id: str) -> str:
    return f"\u27e6secret:{secret_id}\u27e7"


def reference_id(expr: str) -> str | None:
    """The secret id of a `secrets.getValue("id")` expression body (None: not one)."""
    m = REFERENCE.match(expr.strip())
    if not m:
        return None
    sid = m.group("id").strip()
    for prefix in ("account.", "org."):
        sid = sid.removeprefix(prefix)
    return sid


def expression(secret_id: str) -> str:
    return f'<+secrets.getValue("{secret_id}")>'


def references(value: Any) -> list[str]:
    """The secret ids a rendered value refers to."""
    if isinstance(value, str):
        return PLACEHOLDER.findall(value)
    if isinstance(value, dict):
        return [r for v in value.values() for r in references(v)]
    if isinstance(value, list):
        return [r for v in value for r in references(v)]
    return []


def shown(value: str) -> str:
    """A rendered value with its placeholders written back as expressions (for messages)."""
    return PLACEHOLDER.sub(lambda m: expression(m.group(1)), value)


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True)
class SecretsConfig:
    store: str = "secretsmanager"
    prefix: str = ""
    mask_all: bool = False
    sensitive_names: tuple[str, ...] = DEFAULT_SENSITIVE

    def sensitive(self, name: str) -> bool:
        """Is a variable of this name masked (values from secrets always are)?"""
        if self.mask_all:
            return True
        upper = str(name).upper()
        return any(n in upper for n in self.sensitive_names)

    def store_name(self, secret_id: str) -> tuple[str, str | None]:
        """(name in the store, JSON key or None) of a secret id."""
        sid, _, key = secret_id.partition("#")
        return self.prefix + sid, key or None


_config = SecretsConfig()


def config() -> SecretsConfig:
    return _config


def use(cfg: SecretsConfig) -> SecretsConfig:
    global _config
    previous, _config = _config, cfg
    return previous


def read_config(doc) -> SecretsConfig:
    """The `secrets` section of reconciler.yaml (a yamlsrc.Doc, or None)."""
    from reconciler.errors import did_you_mean

    section = doc.data.get("secrets") if doc is not None and isinstance(doc.data, dict) else None
    if section is None:
        return SecretsConfig()
    if not isinstance(section, dict):
        raise doc.error(("secrets",), "'secrets' must be a mapping (store, prefix, mask_all, sensitive_names)")
    values: dict[str, Any] = {}
    for k, v in section.items():
        if k not in KEYS:
            raise doc.error(("secrets", k), f"unknown secrets key '{k}'", did_you_mean(str(k), KEYS))
        if v is None:
            continue
        if k == "store":
            if v not in STORES:
                raise doc.error(
                    ("secrets", k),
                    f"secrets.store must be one of {', '.join(STORES)}, not '{v}'",
                    did_you_mean(str(v), STORES),
                )
            values[k] = v
        elif k == "prefix":
            values[k] = str(v)
        elif k == "mask_all":
            if not isinstance(v, bool):
                raise doc.error(("secrets", k), "secrets.mask_all must be true or false")
            values[k] = v
        else:
            if isinstance(v, str):
                v = [v]
            if not isinstance(v, list) or not all(isinstance(x, str) and x.strip() for x in v):
                raise doc.error(
                    ("secrets", k), "secrets.sensitive_names must be a list of name parts (e.g. [PASSWORD, TOKEN])"
                )
            values[k] = tuple(x.strip().upper() for x in v)
    return SecretsConfig(**values)


# ---------------------------------------------------------------- seals


class Sealer:
    """HMAC-SHA256 of values under one state's fingerprint key."""

    def __init__(self, key: bytes):
        self.key = key
        self.kid = hashlib.sha256(b"reconciler fingerprint key id\0" + key).hexdigest()[:8]

    def seal(self, value: Any) -> str:
        if is_sealed(value):
            return value
        mac = hmac.new(self.key, str(value).encode("utf-8"), hashlib.sha256).hexdigest()
        return f"{SEAL_PREFIX}{self.kid}:{mac}"

    def can_check(self, seal: str) -> bool:
        return is_sealed(seal) and seal[len(SEAL_PREFIX) :].split(":", 1)[0] == self.kid


class Seals(Protocol):
    """What sealing a document needs: a Sealer, or one whose key is made on first use."""

    def seal(self, value: Any) -> str: ...


def is_sealed(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(SEAL_PREFIX)


_by_kid: dict[str, Sealer] = {}
_by_kid_lock = threading.Lock()


def register(sealer: Sealer) -> None:
    """Make a loaded sealer known to sealer_by_kid."""
    with _by_kid_lock:
        _by_kid[sealer.kid] = sealer


def sealer_by_kid(seal: Any) -> Sealer | None:
    """The sealer (loaded in this process) a seal was made with."""
    if not is_sealed(seal):
        return None
    return _by_kid.get(seal[len(SEAL_PREFIX) :].split(":", 1)[0])


def env_vars(config: dict | None) -> dict:
    env = (config or {}).get("Environment") or {}
    v = env.get("Variables") if isinstance(env, dict) else None
    return v if isinstance(v, dict) else {}


def seal_config(config: dict | None, keys: Iterable[str] | None, sealer: Seals | None) -> dict | None:
    """A copy of a configuration whose environment values of `keys` (None: every sensitive
    one by the policy, and every one equal to a known secret) are sealed."""
    variables = env_vars(config)
    if config is None or not variables or sealer is None:
        return config
    pick = set(keys) if keys is not None else {k for k, v in variables.items() if config_sensitive(k, v)}
    if not any(k in variables and not is_sealed(variables[k]) for k in pick):
        return config
    new_vars = {k: (sealer.seal(v) if k in pick and v is not None else v) for k, v in variables.items()}
    return {**config, "Environment": {**config["Environment"], "Variables": new_vars}}


def config_sensitive(name: str, value: Any) -> bool:
    return _config.sensitive(name) or (isinstance(value, str) and value in _known_secrets) or bool(references(value))


def seal_entry(entry: dict | None, sealer: Seals | None) -> dict | None:
    """A state function entry with its sensitive environment values sealed (its own
    `secrets` keys, and the policy's), and the values of its other places that use a
    secret (`secret_fields`: configuration fields, tags, alias descriptions)."""
    if not isinstance(entry, dict) or sealer is None:
        return entry
    conf = entry.get("configuration")
    keys = {k for k in env_vars(conf) if config_sensitive(k, env_vars(conf)[k])} | set(entry.get("secrets") or {})
    sealed = seal_config(conf, keys, sealer)
    out = entry if sealed is conf else {**entry, "configuration": sealed}
    return seal_places(out, entry.get("secret_fields") or (), sealer)


def seal_record(record: dict, sealer: Seals | None) -> dict:
    """A history record with its `previous` snapshot's sensitive values sealed."""
    prev = record.get("previous") if isinstance(record, dict) else None
    if not isinstance(prev, dict) or sealer is None:
        return record
    conf = prev.get("configuration")
    keys = {k for k, v in env_vars(conf).items() if config_sensitive(k, v)} | set(prev.get("secrets") or {})
    sealed = seal_config(conf, keys, sealer)
    out = record if sealed is conf else {**record, "previous": {**prev, "configuration": sealed}}
    if prev.get("secret_fields"):
        out = {**out, "previous": seal_places(out["previous"], prev["secret_fields"], sealer)}
    if out.get("error"):
        out = {**out, "error": scrub(str(out["error"]), errors=True)}
    return out


# ---------------------------------------------------------------- places outside the environment

# A secret may also stand in a function's other configuration fields (Description, Layers...),
# a tag's value or an alias's description. Each such place has a path: the field's name,
# `Tags.KEY`, or `Aliases.NAME.Description`. The whole value of the place is sealed.
TAG_PREFIX = "Tags."
ALIAS_PREFIX = "Aliases."


def field_text(value: Any) -> str:
    """The text a place's value is sealed as: a string as it is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))


def seal_value(sealer: Any, value: Any) -> Any:
    """The seal of a place's whole value (None stays None, a seal stays as it is)."""
    if value is None or is_sealed(value):
        return value
    return sealer.seal(field_text(value))


def shown_tree(value: Any) -> Any:
    """A rendered value with every placeholder written back as its expression."""
    if isinstance(value, str):
        return shown(value)
    if isinstance(value, dict):
        return {k: shown_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shown_tree(v) for v in value]
    return value


def alias_place(name: str) -> str:
    return f"{ALIAS_PREFIX}{name}.Description"


def secret_places(config: dict | None, tags: dict | None, aliases: Iterable[dict] = ()) -> dict[str, Any]:
    """path → the value as written (references as expressions) of every place outside the
    environment whose value uses a secret."""
    out: dict[str, Any] = {}
    for k, v in (config or {}).items():
        if k != "Environment" and references(v):
            out[str(k)] = shown_tree(v)
    for k, v in (tags or {}).items():
        if references(v):
            out[TAG_PREFIX + str(k)] = shown_tree(v)
    for a in aliases:
        if references(a.get("Description")):
            out[alias_place(str(a.get("Name")))] = shown_tree(a["Description"])
    return out


def seal_places(snap: dict, paths: Iterable[str], sealer: Any) -> dict:
    """A copy of a state entry or a rollback snapshot (`configuration`, `tags`, `aliases`)
    with the values of these places sealed."""
    if sealer is None:
        return snap
    return _map_places(snap, paths, lambda v: seal_value(sealer, v))


def _map_places(snap: dict, paths: Iterable[str], change: Any) -> dict:
    paths = list(paths)
    if not paths or not isinstance(snap, dict):
        return snap
    conf = dict(snap.get("configuration") or {})
    tags = dict(snap.get("tags") or {})
    aliases = {k: dict(v) if isinstance(v, dict) else v for k, v in (snap.get("aliases") or {}).items()}
    for p in paths:
        if p.startswith(TAG_PREFIX):
            key = p[len(TAG_PREFIX) :]
            if key in tags:
                tags[key] = change(tags[key])
        elif p.startswith(ALIAS_PREFIX):
            name = p[len(ALIAS_PREFIX) :].rsplit(".", 1)[0]
            if isinstance(aliases.get(name), dict) and aliases[name].get("description"):
                aliases[name]["description"] = change(aliases[name]["description"])
        elif p in conf:
            conf[p] = change(conf[p]) if conf[p] is not None else None
    out = {**snap}
    if "configuration" in snap:
        out["configuration"] = conf
    if "tags" in snap:
        out["tags"] = tags
    if "aliases" in snap:
        out["aliases"] = aliases
    return out


def mask_places(entry: dict) -> dict:
    """A state entry as shown (`state show`): the value of each place that uses a secret
    (kept sealed) as (sensitive)."""
    return _map_places(entry, entry.get("secret_fields") or (), lambda v: MASK)


# ---------------------------------------------------------------- reading the store


class SecretError(ReconcilerError):
    """A secret could not be read: missing, denied, not the JSON it should be."""


def fill(value: Any, region: str, values: dict[tuple[str, str], str]) -> Any:
    """A rendered value with its placeholders replaced by the secrets' values (memory only)."""
    if isinstance(value, str):
        return PLACEHOLDER.sub(lambda m: values[(region, m.group(1))], value) if "\u27e6" in value else value
    if isinstance(value, dict):
        return {k: fill(v, region, values) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, region, values) for v in value]
    return value


def wanted_by(specs: Iterable) -> dict[tuple[str, str, Any], list[str]]:
    """(region, secret id, connector as JSON) → the places that use it, for FunctionSpecs:
    environment values, other configuration fields, tags and alias descriptions."""
    out: dict[tuple[str, str, Any], list[str]] = {}
    for s in specs:
        conn = json.dumps(s.connector, sort_keys=True) if s.connector else None
        places = [(f"Environment.Variables.{k}", v) for k, v in env_vars(s.config).items()]
        places += [(str(k), v) for k, v in s.config.items() if k != "Environment"]
        places += [(TAG_PREFIX + str(k), v) for k, v in (s.tags or {}).items()]
        places += [(alias_place(str(a.get("Name"))), a.get("Description")) for a in s.aliases or ()]
        for where, v in places:
            for sid in references(v):
                out.setdefault((s.region, sid, conn), []).append(f"{where} of function {s.name} ({s.source})")
    return out


def uses_secrets(spec: Any) -> bool:
    """Does a FunctionSpec refer to a secret anywhere (its state then needs a fingerprint key)?"""
    return bool(references(spec.config) or references(spec.tags) or references(list(spec.aliases or ())))


def outside_value(value: Any, secret_type: bool = False) -> Any:
    """A value given from outside the workspace (--var, an input set): data, never read for
    expressions, except that a value that is exactly one secret reference
    (`<+secrets.getValue("id")>`), or any value of a `type: Secret` variable (which names
    a secret, as in Harness), refers to that secret."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("<+") and text.endswith(">") and text.count("<+") == 1:
        sid = reference_id(text[2:-1])
        if sid:
            return placeholder(sid)
    if secret_type and text and "<+" not in text:
        return placeholder(reference_id(expression(text)[2:-1]) or text)
    return value


# ---------------------------------------------------------------- scrubbing


_known_secrets: set[str] = set()  # values of secrets and of sensitive variables
_known_env: set[str] = set()  # every environment value seen: scrubbed from AWS's error text
_scrub_rx: re.Pattern | None = None
_scrub_all_rx: re.Pattern | None = None
_known_lock = threading.Lock()


def remember(value: Any, secret: bool = False) -> None:
    """Know a value so that it is scrubbed: a secret's (from every output) or an
    environment value's (from AWS's error messages)."""
    global _scrub_rx, _scrub_all_rx
    if not isinstance(value, str) or is_sealed(value) or len(value) < MIN_SCRUB:
        return
    with _known_lock:
        target = _known_secrets if secret else _known_env
        if value in target:
            return
        target.add(value)
        _scrub_rx = _scrub_all_rx = None


# the secret parts of AWS credentials, as the SDKs read them from the environment (an access
# key ID names a key; it is not secret, and stays readable)
CREDENTIAL_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


def remember_credentials(environ: dict | None = None) -> None:
    """Know the secret credential values of an environment (default: the runner's) as secrets:
    scrubbed from every output, a script's included."""
    env = os.environ if environ is None else environ
    for k in CREDENTIAL_VARIABLES:
        remember(env.get(k), secret=True)


class Masker:
    """The scrubbing of one run's output as an object (Runner.masker): add() makes values
    secrets, scrubbed from every output from then on; mask() scrubs a text."""

    def add(self, *values: Any) -> None:
        for v in values:
            remember(v, secret=True)

    def mask(self, text: str) -> str:
        return scrub(text)


_show_sensitive = False  # --show-values: values sensitive by their name may be printed


def remember_env(config: dict | None) -> None:
    """Know every environment value of a configuration; the sensitive ones as secrets
    (unless --show-values asked to see them; a secret's own value is always one)."""
    for k, v in env_vars(config).items():
        if isinstance(v, str) and not PLACEHOLDER.search(v):
            remember(v, secret=_config.sensitive(k) and not _show_sensitive)
            remember(v)


def _pattern(values: Iterable[str]) -> re.Pattern | None:
    vals = sorted(values, key=len, reverse=True)
    return re.compile("|".join(re.escape(v) for v in vals)) if vals else None


def scrub(text: str, errors: bool = False) -> str:
    """`text` with every known secret value (and, for AWS error text, every known
    environment value) replaced by (sensitive)."""
    global _scrub_rx, _scrub_all_rx
    if not text or not (_known_secrets or (errors and _known_env)):
        return text
    with _known_lock:
        if _scrub_rx is None:
            _scrub_rx = _pattern(_known_secrets)
        if _scrub_all_rx is None:
            _scrub_all_rx = _pattern(_known_secrets | _known_env)
        rx = _scrub_all_rx if errors else _scrub_rx
    return rx.sub(MASK, text) if rx is not None else text


class ScrubbingStream(io.TextIOBase):
    """stdout / stderr through scrub(): whatever prints a known secret value, it does not
    reach the terminal, the CI log or a redirected file. Lines are scrubbed whole."""

    def __init__(self, inner):
        self.inner = inner
        self._buf = ""
        self._lock = threading.Lock()

    def write(self, s: str) -> int:
        with self._lock:
            self._buf += s
            if "\n" in self._buf:
                # scrub before splitting: a secret with newlines in it (a PEM key) printed
                # in one write is replaced whole, not cut at its own line ends
                head, nl, self._buf = scrub(self._buf).rpartition("\n")
                if nl:
                    self.inner.write(head + nl)
        return len(s)

    def flush(self) -> None:
        with self._lock:
            if self._buf:
                self.inner.write(scrub(self._buf))
                self._buf = ""
        self.inner.flush()

    def isatty(self) -> bool:
        return self.inner.isatty()

    def fileno(self) -> int:
        return self.inner.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]  # typeshed has an attribute; io's is a read-only property
        return getattr(self.inner, "encoding", "utf-8")

    def writable(self) -> bool:
        return True


def guard_output(show_sensitive: bool = False) -> None:
    """Route this process's stdout and stderr through scrub() (once). `show_sensitive`
    (--show-values): values that are sensitive only by their variable's name are not
    scrubbed; a secret's value always is."""
    import sys

    global _show_sensitive
    _show_sensitive = show_sensitive
    if not isinstance(sys.stdout, ScrubbingStream):
        sys.stdout = ScrubbingStream(sys.stdout)
    if not isinstance(sys.stderr, ScrubbingStream):
        sys.stderr = ScrubbingStream(sys.stderr)


def hidden_value(name: str, value: Any, show_values: bool) -> bool:
    """Is this environment value masked? A secret's (sealed) always; a sensitive one (its
    name, or mask_all in reconciler.yaml) unless --show-values."""
    if is_sealed(value) or (isinstance(value, str) and references(value)):
        return True
    return not show_values and config().sensitive(name)


def mask_vars(variables: dict, show_values: bool) -> dict:
    return {k: (MASK if hidden_value(k, v, show_values) else v) for k, v in variables.items()}


def configure(workspace: Path | str = ".") -> SecretsConfig:
    """Read the `secrets` section of the workspace's reconciler.yaml and make it current."""
    from reconciler.util.settings import config_document

    cfg = read_config(config_document(workspace))
    use(cfg)
    return cfg


__all__ = [
    "Sealer",
    "SecretError",
    "SecretsConfig",
    "config",
    "configure",
    "fill",
    "is_sealed",
    "placeholder",
    "reference_id",
    "references",
    "remember",
    "scrub",
]
