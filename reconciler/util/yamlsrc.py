"""Read YAML and JSON into plain Python data while remembering the line of every value.

ruamel.yaml's round-trip loader keeps line numbers on its containers; we copy the
data into plain dicts and lists (so nothing downstream depends on ruamel) and keep
the line of each value in a side table keyed by its path.
"""

from __future__ import annotations

import codecs
import json
import math
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.errors import ConfigError

# A document that expands to more values than this is refused (a YAML alias bomb).
MAX_NODES = 100_000
# ... or to more characters of scalars, aliases counted at their expanded size
MAX_EXPANDED_CHARS = 32 << 20
# a workspace file (entity, manifest, input set) larger than this is refused before it is parsed
MAX_FILE_BYTES = 8 << 20

PathT = tuple  # a path into a document: keys and list indices


@dataclass
class Doc:
    """One YAML/JSON document: plain data plus the 1-based line of each path."""

    file: str  # as shown to the user (relative to the workspace when possible)
    data: Any
    lines: dict[PathT, int] = field(default_factory=dict)

    def line(self, path: PathT = ()) -> int | None:
        """The line of `path`, or of its nearest ancestor that has one."""
        path = tuple(path)
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return None
            path = path[:-1]

    def error(self, path: PathT, message: str, hint: str | None = None) -> ConfigError:
        return ConfigError(message, self.file, self.line(path), hint)


def _yaml():
    from ruamel.yaml import YAML

    y = YAML(typ="rt", pure=True)
    y.allow_duplicate_keys = False
    return y


def _plain_scalar(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    # ruamel's ScalarBoolean is an int subclass; keep booleans booleans
    if type(value).__name__ == "ScalarBoolean":
        return bool(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)  # dates and timestamps stay as written


def _convert(node: Any, file: str, base_line: int) -> tuple[Any, dict[PathT, int]]:
    """Copy ruamel data into plain data with a path → line table, under a node budget."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    lines: dict[PathT, int] = {(): base_line}
    budget = [MAX_NODES]

    def spend(path: PathT) -> None:
        budget[0] -= 1
        if budget[0] < 0:
            raise ConfigError(
                f"document expands to more than {MAX_NODES} values (YAML aliases/anchors used as a bomb?)",
                file,
                lines.get(path) or base_line,
            )

    def walk(n: Any, path: PathT) -> Any:
        spend(path)
        if isinstance(n, CommentedMap):
            out = {}
            for k in n:
                try:
                    ln = n.lc.value(k)[0] + 1 if isinstance(n[k], (str, int, float, bool)) or n[k] is None else None
                    kl = n.lc.key(k)[0] + 1
                except (
                    AttributeError,
                    KeyError,
                    IndexError,
                    TypeError,
                ):  # pragma: no cover - ruamel always has lc on rt data
                    ln, kl = None, None
                key = _plain_scalar(k)
                sub = (*path, key)
                lines[sub] = ln or kl or lines.get(path, base_line)
                child = n[k]
                if isinstance(child, (CommentedMap, CommentedSeq)) and getattr(child, "lc", None) is not None:
                    # a nested block starts on the line of its key
                    lines[sub] = kl or lines[sub]
                out[key] = walk(child, sub)
            return out
        if isinstance(n, CommentedSeq):
            out_l: list[Any] = []
            for i, item in enumerate(n):
                sub = (*path, i)
                try:
                    lines[sub] = n.lc.item(i)[0] + 1
                except (AttributeError, KeyError, IndexError, TypeError):  # pragma: no cover
                    lines[sub] = lines.get(path, base_line)
                out_l.append(walk(item, sub))
            return out_l
        if type(n).__name__ == "ScalarFloat" and math.isinf(n):  # 1e400: a literal beyond a float (not .inf)
            raise ConfigError("number out of range", file, lines.get(path) or base_line)
        if isinstance(n, dict):  # pragma: no cover - defensive, plain maps from merges
            return {_plain_scalar(k): walk(v, (*path, _plain_scalar(k))) for k, v in n.items()}
        if isinstance(n, list):  # pragma: no cover
            return [walk(v, (*path, i)) for i, v in enumerate(n)]
        return _plain_scalar(n)

    data = walk(node, ())
    return data, lines


def _yaml_error(exc: Exception, file: str) -> ConfigError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark is not None else None
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    text = f"invalid YAML: {problem}"
    if context and "duplicate" in str(context) + str(problem):
        text = f"invalid YAML: duplicate key ({str(problem).strip()})"
    return ConfigError(" ".join(text.split()), file, line)


# ------------------------------------------------------------------ fast path
#
# ruamel's round-trip loader is pure Python (~9 ms for a 20-line service file); at fleet
# scale (a thousand services) it dominates a plan. libyaml (PyYAML's C parser, present
# with moto's dependencies) parses the same text, with marks, far faster: its events are
# turned into plain data directly (no node tree, no per-node Python resolver call). It is
# used only when its answer is certainly the one ruamel gives: plain scalars are resolved
# by the YAML 1.2 rules ruamel applies, and any scalar where YAML 1.1 (PyYAML) and 1.2
# disagree, any explicit tag, anchor, alias, merge key, duplicate key, error or oversized
# document sends the text to ruamel, which then produces the data or the error exactly as
# before.

_INT = re.compile(r"[-+]?(0|[1-9][0-9]*)\Z")
_FLOAT = re.compile(r"[-+]?([0-9]+\.[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?\Z")
_NULLS = ("", "~", "null", "Null", "NULL")
_TRUE = ("true", "True", "TRUE")
_FALSE = ("false", "False", "FALSE")
_T = "tag:yaml.org,2002:"


class _Fallback(Exception):
    """The fast path is not sure: use ruamel."""


_PLAIN_CACHE: dict[str, Any] = {}  # plain scalar text → its value (or _FALLBACK)
_FALLBACK = object()


def _fast_parser() -> Callable[[str], Any] | None:
    """libyaml's C parser (a class called with the text), None without libyaml."""
    try:
        from yaml._yaml import CParser
    except ImportError:  # pragma: no cover - moto brings PyYAML, with libyaml in its wheels
        return None
    return CParser


def _tag11(v: str) -> str:
    """The tag PyYAML's (YAML 1.1) resolver gives a plain scalar."""
    from yaml.resolver import Resolver

    table = Resolver.yaml_implicit_resolvers
    for tag, regexp in table.get(v[0] if v else "", []) + table.get(None, []):
        if regexp.match(v):
            return tag
    return _T + "str"


def _classify(v: str) -> Any:
    """A plain scalar's value by YAML 1.2's rules, or _FALLBACK where YAML 1.1 reads it
    otherwise (yes/no, 0o17, 1:30...) or the text needs ruamel (1e3, dates, .inf)."""
    if v == "":
        return _FALLBACK  # an empty value: ruamel places its line differently
    out: Any
    if v in _NULLS:
        want, out = "null", None
    elif v in _TRUE or v in _FALSE:
        want, out = "bool", v in _TRUE
    elif _INT.match(v):
        want, out = "int", int(v)
    elif _FLOAT.match(v):
        want, out = "float", float(v)
        if math.isinf(out):
            return _FALLBACK  # out of range: ruamel's path says so with its line
    elif v[:1] in "0123456789+-.":
        return _FALLBACK
    else:
        want, out = "str", v
    return out if _tag11(v) == _T + want else _FALLBACK


def _plain(ev) -> Any:
    """The value of a scalar event; _Fallback when the fast path is not sure."""
    if ev.tag is not None:
        raise _Fallback  # an explicit tag (!!str, !Ref...)
    v = ev.value
    if ev.style:  # quoted or block: a string
        return v
    out = _PLAIN_CACHE.get(v, _FALLBACK)
    if out is _FALLBACK:
        out = _classify(v)
        if out is _FALLBACK:
            raise _Fallback
        if len(_PLAIN_CACHE) < 50_000:
            _PLAIN_CACHE[v] = out
    return out


class _Lines:
    """The line tables of the documents of one text, made when first asked for: a plan
    that finds nothing wrong asks for the line of hardly any value, so a fleet's thousand
    service files are read without building a path → line table for each."""

    __slots__ = ("file", "tables", "text")

    def __init__(self, text: str, file: str) -> None:
        self.text: str | None = text  # until the tables are made
        self.file = file
        self.tables: list[dict[PathT, int]] | None = None

    def table(self, index: int) -> dict[PathT, int]:
        if self.tables is None:
            text = self.text or ""
            docs = _fast_docs(text, self.file, track=True) or _load_yaml_documents_rt(text, self.file)
            self.tables = [d.lines for d in docs]
            self.text = None
        return self.tables[index]


class _FastDoc(Doc):
    """A Doc of the fast path whose line table is made on first use."""

    def __init__(self, file: str, data: Any, base: int, source: _Lines, index: int) -> None:
        self.file, self.data = file, data
        self._base, self._source, self._index = base, source, index

    @property
    def lines(self) -> dict[PathT, int]:  # type: ignore[override]
        return self._source.table(self._index)

    def line(self, path: PathT = ()) -> int | None:
        return self._base if not path else super().line(path)


def _fast_docs(text: str, file: str, track: bool = False) -> list[Doc] | None:
    """libyaml's events turned into plain data, or None: ruamel decides. The line tables
    are made now with `track`, else when first asked for."""
    parser = _fast_parser()
    if parser is None:
        return None
    from yaml.error import YAMLError
    from yaml.events import (
        AliasEvent,
        DocumentEndEvent,
        DocumentStartEvent,
        MappingEndEvent,
        MappingStartEvent,
        ScalarEvent,
        SequenceEndEvent,
        SequenceStartEvent,
        StreamEndEvent,
        StreamStartEvent,
    )

    get = parser(text).get_event

    def node(ev: Any, path: PathT, lines: dict[PathT, int] | None, budget: list[int]) -> Any:
        budget[0] -= 1
        if budget[0] < 0:
            raise _TooBig(ev.start_mark.line + 1)
        cls = ev.__class__
        if cls is ScalarEvent:
            return _plain(ev)
        if cls is AliasEvent or ev.tag is not None or ev.anchor is not None:
            raise _Fallback  # aliases, explicit tags and anchors: ruamel
        if cls is MappingStartEvent:
            out: dict[Any, Any] = {}
            while True:
                k = get()
                if k.__class__ is not ScalarEvent:
                    if k.__class__ is MappingEndEvent:
                        return out
                    raise _Fallback  # a complex key or an alias
                if k.anchor is not None:
                    raise _Fallback
                key = _plain(k)
                if isinstance(key, float) or key in out or (key is not None and not isinstance(key, (str, int))):
                    raise _Fallback
                v = get()
                if lines is None:
                    out[key] = node(v, path, lines, budget)
                    continue
                sub = (*path, key)
                # (libyaml gives every event its marks; the stubs type an event's marks as optional)
                lines[sub] = (v.start_mark.line if v.__class__ is ScalarEvent else k.start_mark.line) + 1  # type: ignore[union-attr]
                out[key] = node(v, sub, lines, budget)
        if cls is SequenceStartEvent:
            out_l: list[Any] = []
            i = 0
            while True:
                item = get()
                if item.__class__ is SequenceEndEvent:
                    return out_l
                if lines is None:
                    out_l.append(node(item, path, lines, budget))
                    continue
                sub = (*path, i)
                lines[sub] = item.start_mark.line + 1
                out_l.append(node(item, sub, lines, budget))
                i += 1
        raise _Fallback  # pragma: no cover - no other event starts a node

    try:
        if get().__class__ is not StreamStartEvent:
            return None  # pragma: no cover
        docs: list[Doc] = []
        source = None if track else _Lines(text, file)
        while True:
            ev = get()
            if ev.__class__ is StreamEndEvent:
                return docs
            if ev.__class__ is not DocumentStartEvent:
                return None  # pragma: no cover
            root = get()
            if root.__class__ is ScalarEvent:
                if root.anchor is not None:
                    return None
                data = _plain(root)
                if data is not None:
                    docs.append(Doc(file=file, data=data, lines={(): 1}))
            elif source is not None:
                data = node(root, (), None, [MAX_NODES])
                docs.append(_FastDoc(file, data, root.start_mark.line + 1, source, len(docs)))
            else:
                lines: dict[PathT, int] = {(): root.start_mark.line + 1}
                data = node(root, (), lines, [MAX_NODES])
                docs.append(Doc(file=file, data=data, lines=lines))
            if get().__class__ is not DocumentEndEvent:
                return None  # pragma: no cover
    except _TooBig as exc:
        raise ConfigError(f"document expands to more than {MAX_NODES} values", file, exc.line) from None
    except (_Fallback, YAMLError, RecursionError, ValueError, TypeError):
        return None


class _TooBig(Exception):
    def __init__(self, line: int | None) -> None:
        self.line = line


def _measure(text: str, file: str) -> None:
    """Before ruamel builds anything: count the values and scalar characters of each document
    with libyaml's event stream, each alias at the size of what it repeats, and refuse a
    document over MAX_NODES values or MAX_EXPANDED_CHARS characters. A syntax error is left
    for ruamel to report."""
    parser = _fast_parser()
    if parser is None:
        return
    from yaml.error import YAMLError
    from yaml.events import (
        AliasEvent,
        CollectionEndEvent,
        CollectionStartEvent,
        DocumentStartEvent,
        MappingStartEvent,
        ScalarEvent,
    )

    get = parser(text).get_event
    try:
        anchors: dict[str, tuple[int, int]] = {}
        # each open collection: [anchor, nodes and chars at its start, is a mapping, next node is a key]
        open_: list[list] = []
        nodes = chars = 0
        while True:
            ev = get()
            if ev is None:
                return
            cls = ev.__class__
            if cls is DocumentStartEvent:
                nodes = chars = 0
                anchors.clear()
                continue
            is_key = False
            if (
                (cls is ScalarEvent or cls is AliasEvent or issubclass(cls, CollectionStartEvent))
                and open_
                and open_[-1][3]
            ):
                is_key = open_[-1][4]
                open_[-1][4] = not is_key
            if cls is ScalarEvent:
                nodes += 0 if is_key else 1  # values are counted as ruamel's conversion counts them
                chars += len(ev.value)
                if ev.anchor:
                    anchors[ev.anchor] = (1, len(ev.value))
            elif cls is AliasEvent:
                n, c = anchors.get(ev.anchor, (1, 0))
                nodes += n
                chars += c
            elif issubclass(cls, CollectionStartEvent):
                nodes += 1
                open_.append([ev.anchor, nodes - 1, chars, cls is MappingStartEvent, True])
            elif issubclass(cls, CollectionEndEvent) and open_:
                anchor, n0, c0, _, _ = open_.pop()
                if anchor:
                    anchors[anchor] = (nodes - n0, chars - c0)
            else:
                continue
            if nodes > MAX_NODES or chars > MAX_EXPANDED_CHARS:
                what = f"{MAX_NODES} values" if nodes > MAX_NODES else f"{MAX_EXPANDED_CHARS} characters"
                raise ConfigError(
                    f"document expands to more than {what} (YAML aliases/anchors used as a bomb?)",
                    file,
                    ev.start_mark.line + 1,
                )
    except (YAMLError, RecursionError, ValueError, TypeError):
        return


def load_yaml_documents(text: str, file: str) -> list[Doc]:
    """Every document of a YAML stream, each with its line table."""
    fast = _fast_docs(text, file)
    if fast is not None:
        return fast
    _measure(text, file)
    return _load_yaml_documents_rt(text, file)


def read_regular_file(path: Path, shown: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file (symlinks followed) of at most `limit` bytes. A FIFO, a device
    (a symlink to /dev/zero), a directory or a larger file is an error, found without reading it."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ConfigError("file not found", shown) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a file", shown) from None
    except OSError as exc:
        raise ConfigError(f"cannot read file: {exc.strerror or exc}", shown) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError("is a directory, not a file", shown)
        if not stat.S_ISREG(st.st_mode):
            kind = (
                "a FIFO"
                if stat.S_ISFIFO(st.st_mode)
                else "a device"
                if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "a socket"
            )
            raise ConfigError(f"is {kind}, not a regular file", shown)
        if st.st_size > limit:
            raise ConfigError(f"file is larger than {limit} bytes ({st.st_size})", shown)
        chunks, size = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise ConfigError(f"file is larger than {limit} bytes", shown)
        return b"".join(chunks)
    except OSError as exc:
        raise ConfigError(f"cannot read file: {exc.strerror or exc}", shown) from None
    finally:
        os.close(fd)


def _load_yaml_documents_rt(text: str, file: str) -> list[Doc]:
    from ruamel.yaml.error import YAMLError, YAMLFutureWarning  # noqa: F401

    y = _yaml()
    try:
        raw_docs = list(y.load_all(text))
    except YAMLError as exc:
        raise _yaml_error(exc, file) from None
    except RecursionError:
        raise ConfigError("invalid YAML: nested too deeply", file) from None
    docs = []
    for raw in raw_docs:
        if raw is None:
            continue
        base = 1
        lc = getattr(raw, "lc", None)
        if lc is not None and lc.line is not None:
            base = lc.line + 1
        data, lines = _convert(raw, file, base)
        docs.append(Doc(file=file, data=data, lines=lines))
    return docs


_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


def decode_text(raw: bytes, shown: str) -> str:
    """A file's text: UTF-8, or UTF-8/16/32 with a byte order mark. Anything else is an error
    (a UTF-16 file without a byte order mark says so)."""
    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            try:
                return raw[len(bom) :].decode(encoding)
            except UnicodeDecodeError as exc:
                raise ConfigError(f"not valid {encoding.upper()} text (byte {exc.start + len(bom)})", shown) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        if b"\x00" in raw[:64]:
            raise ConfigError(
                "not UTF-8 text (UTF-16 without a byte order mark?)", shown, hint="save it as UTF-8"
            ) from None
        raise ConfigError(f"not UTF-8 text (byte {exc.start})", shown, hint="save it as UTF-8") from None
    if "\0" in text:
        raise ConfigError(
            "not UTF-8 text: it holds NUL characters (UTF-16 without a byte order mark?)",
            shown,
            hint="save it as UTF-8",
        )
    return text


def load_data_file(path: Path, shown: str) -> Doc:
    """A manifest file (JSON or YAML) as a single document."""
    text = decode_text(read_regular_file(path, shown), shown)
    if path.suffix.lower() == ".json":
        # JSON is YAML: ruamel gives line numbers; json gives the better syntax message.
        try:
            docs = load_yaml_documents(text, shown)
        except ConfigError as yaml_exc:
            if not yaml_exc.message.startswith("invalid YAML"):
                raise  # read, but refused (a number out of range, a bomb): not a syntax question
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"invalid JSON: {exc.msg}", shown, exc.lineno) from None
            if "duplicate" in yaml_exc.message:
                yaml_exc.message = yaml_exc.message.replace("invalid YAML", "invalid JSON", 1)
                raise
            return Doc(file=shown, data=data, lines={(): 1})
    else:
        docs = load_yaml_documents(text, shown)
    if len(docs) != 1:
        raise ConfigError(f"expected exactly one document, found {len(docs)}", shown, 1)
    return docs[0]
