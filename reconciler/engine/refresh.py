"""Reading what is live: one function (`refresh_function`: GetFunction + its aliases), many
at the API floor (`refresh_all`: ListFunctions pages and the Tagging API per region, then the
aliases), and the early read of the functions the state files record while the workspace
loads (`early_refresh`). Read calls only; `parallel_map` runs per-function reads on threads."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from reconciler.engine.context import Context
from reconciler.engine.live import alias_fields, alias_view, snapshot
from reconciler.model import FunctionSpec
from reconciler.store import state as st
from reconciler.util.stats import NO_PROGRESS

# Below this many selected functions in a region, one GetFunction each is cheaper than
# listing every function of the region (and its tags).
BULK_MIN = 10


def refresh_function(aws, region: str, connector: dict | None, name: str) -> dict:
    """One function as it is now: GetFunction (configuration, code, tags) and its aliases."""
    from reconciler.aws.client import Lambda

    lam = Lambda(aws, region, connector)
    got = lam.get_function(name)
    aliases = (lam.list_aliases(name) or {}) if got is not None else {}
    return snapshot(got, aliases)


class Want(NamedTuple):
    """A function to refresh. `aliases`: the aliases the state records for it (name → view),
    when reading only the versions they point to is exact enough (see alias_check); else
    None: ListAliases."""

    region: str
    connector: dict | None
    name: str
    aliases: dict | None = None


def alias_check(spec: FunctionSpec | None, recorded: dict | None) -> dict | None:
    """The recorded aliases of a function whose plan needs only the versions they point to:
    every alias desired is recorded with the description and weights desired, and none has
    routing weights. Those versions are read with GetFunction(Qualifier=alias) (its own,
    larger quota) instead of ListAliases (the control plane's); description and weights are
    then taken as recorded (a hand change to those alone is reported by drift, which reads
    ListAliases). Anything else -- an alias not recorded, a change of description or weights,
    weighted routing (a canary) -- returns None: ListAliases, every fact exact."""
    rec = (recorded or {}).get("aliases") or {}
    if not rec or any(a.get("weights") for a in rec.values()):
        return None
    for a in spec.aliases if spec is not None else []:
        have, want = rec.get(a["Name"]), alias_view(a)
        if (
            have is None
            or have.get("description", "") != want["description"]
            or (have.get("weights") or {}) != want["weights"]
        ):
            return None
    return rec


def read_aliases(aws, w: Want, missing_ok: bool = True) -> dict[str, dict] | None:
    """The aliases of a function, in ListAliases' shape: with w.aliases, the version of each
    by GetFunction(Qualifier=alias), the rest as recorded; ListAliases when there is nothing
    to check that way, or when an alias is missing or points elsewhere than recorded (then
    every fact is read exactly)."""
    from reconciler.aws.client import Lambda

    lam = Lambda(aws, w.region, w.connector)
    if w.aliases:
        out = {}
        for name, rec in w.aliases.items():
            got = lam.get_function(w.name, name)
            version = ((got or {}).get("Configuration") or {}).get("Version")
            if version is None or str(version) != str(rec.get("version")):
                break
            out[name] = {
                "Name": name,
                "FunctionVersion": version,
                "Description": rec.get("description", ""),
                "RoutingConfig": {"AdditionalVersionWeights": rec.get("weights") or {}},
            }
        else:
            return out
    return lam.list_aliases(w.name, missing_ok=missing_ok)


_UNKNOWN = object()  # a function no listing covered: read it with GetFunction


@dataclass
class _Found:
    """What the listings found, per function asked for (in the order asked)."""

    confs: list  # a FunctionConfiguration, None (absent) or _UNKNOWN
    tags: list[dict | None]  # None: not known (GetFunction or ListTags)
    versions: list[list[dict] | None]  # None: not read (ask per function)

    @classmethod
    def nothing(cls, n: int) -> _Found:
        return cls([_UNKNOWN] * n, [None] * n, [None] * n)

    def listed(self, i: int) -> bool:
        return self.confs[i] is not _UNKNOWN and self.confs[i] is not None


class _TagJob(NamedTuple):
    region: str
    connector: dict | None
    idx: list[int]


def refresh_all(
    aws,
    wants: list[Want],
    parallelism: int = 10,
    progress: Callable[[str, int, int, str], None] = NO_PROGRESS,
    with_versions: bool = False,
    eager_aliases: bool = False,
) -> tuple[list[dict], list[list[dict] | None]]:
    """live.snapshot() of many functions at the API floor, in the order asked.

    Per region with at least BULK_MIN functions: configurations from ListFunctions pages
    (50 a page in AWS) and tags from the Resource Groups Tagging API, then one ListAliases
    per existing function. Listing stops as soon as every function asked for is found,
    and gives up (falling back to GetFunction / ListTags for the rest) once it has read
    as many pages as there are functions to find, so it never costs more than twice
    reading them one by one (a region with many functions not selected). Smaller regions: GetFunction + ListAliases per function.
    Per-function reads run on `parallelism` threads.

    With `with_versions`, the published versions of each function too (ListFunctions
    with FunctionVersion=ALL in bulk); a None entry means "not read" (ask per function).
    With `eager_aliases` (functions that very likely exist: the state records them), the
    aliases of the functions of a listed region are read alongside the listing, not after.
    """
    n = len(wants)
    found = _Found.nothing(n)
    groups: dict[tuple, list[int]] = {}
    for i, w in enumerate(wants):
        groups.setdefault((w.region, (w.connector or {}).get("role_arn")), []).append(i)
    eager = _start_alias_reads(aws, wants, groups, parallelism) if eager_aliases else {}
    tag_jobs: list[_TagJob] = []
    for (region, _role), idx in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        if len(idx) >= BULK_MIN:
            _list_region(aws, wants, idx, found, with_versions)
            tag_jobs.append(_TagJob(region, wants[idx[0]].connector, idx))
    if n == 0:
        return [], []
    got = _read_each(aws, wants, found, eager, tag_jobs, parallelism, progress)
    _list_tags_rest(aws, wants, found, parallelism)
    return [_snapshot(found, got, i) for i in range(n)], found.versions


def _start_alias_reads(aws, wants: list[Want], groups: dict[tuple, list[int]], parallelism: int) -> dict[int, Future]:
    """The aliases of the functions of each region to be listed, read from now on, on threads."""
    bulk = [i for idx in groups.values() if len(idx) >= BULK_MIN for i in idx]
    if not bulk:
        return {}
    pool = ThreadPoolExecutor(max_workers=max(1, min(parallelism, len(bulk))), thread_name_prefix="aliases")
    eager = {i: pool.submit(read_aliases, aws, wants[i]) for i in bulk}
    pool.shutdown(wait=False)
    return eager


def _list_region(aws, wants: list[Want], idx: list[int], found: _Found, with_versions: bool) -> None:
    """The configurations (and with_versions the versions) of one region's functions, from
    its ListFunctions pages; a function the pages do not cover stays _UNKNOWN."""
    from reconciler.aws.client import Lambda

    lam = Lambda(aws, wants[idx[0]].region, wants[idx[0]].connector)
    by_name: dict[str, list[int]] = {}
    for i in idx:
        by_name.setdefault(wants[i].name, []).append(i)
    confs, versions, exhausted = _function_pages(lam, set(by_name), with_versions)
    for name, ii in by_name.items():
        for i in ii:
            if name in confs:
                found.confs[i] = confs[name]
                if with_versions:
                    found.versions[i] = versions.get(name, [])
            elif exhausted:
                found.confs[i] = None
                if with_versions:
                    found.versions[i] = []


def _function_pages(lam, names: set[str], with_versions: bool) -> tuple[dict[str, dict], dict[str, list[dict]], bool]:
    """The $LATEST configuration and the published versions of the functions named, from
    ListFunctions pages; and whether every page was read (a function not found is absent).
    Without versions, listing stops once everything is found, or once it has cost as much
    as reading each function one by one (the rest is then read that way)."""
    found: dict[str, dict] = {}
    found_versions: dict[str, list[dict]] = {}
    for read, page in enumerate(lam.function_pages(all_versions=with_versions), start=1):
        for f in page.get("Functions") or []:
            name = f.get("FunctionName")
            if name not in names:
                continue
            if f.get("Version", "$LATEST") == "$LATEST":
                arn = f.get("FunctionArn") or ""
                if arn.endswith(":$LATEST"):
                    f = {**f, "FunctionArn": arn[: -len(":$LATEST")]}
                found[name] = f
            else:
                found_versions.setdefault(name, []).append(f)
        if not with_versions and (len(found) == len(names) or read >= len(names)):
            return found, found_versions, False
    return found, found_versions, True


def _read_tags(aws, job: _TagJob, found: _Found) -> None:
    """The tags of the functions found in a region, in bulk (the Tagging API)."""
    arns: dict[str, list[int]] = {}
    for i in job.idx:
        if found.listed(i):
            arns.setdefault(found.confs[i]["FunctionArn"], []).append(i)
    if not arns:
        return
    got, exhausted = _tag_pages(aws, job, set(arns))
    for arn, ii in arns.items():
        for i in ii:
            if arn in got:
                found.tags[i] = got[arn]
            elif exhausted:
                found.tags[i] = {}  # a function without tags is not listed


def _tag_pages(aws, job: _TagJob, arns: set[str]) -> tuple[dict[str, dict], bool]:
    """The tags of these functions from the Tagging API's pages, and whether every page was
    read; it stops once all are found or it has read as many pages as there are functions."""
    from reconciler.aws.client import lambda_tag_pages

    got: dict[str, dict] = {}
    for read, page in enumerate(lambda_tag_pages(aws, job.region, job.connector), start=1):
        for r in page.get("ResourceTagMappingList") or []:
            if r.get("ResourceARN") in arns:
                got[r["ResourceARN"]] = {t["Key"]: t["Value"] for t in r.get("Tags") or []}
        if len(got) == len(arns):
            return got, True
        if read >= len(arns):
            return got, False
    return got, True


class _Counter:
    """Progress of the per-function reads, from several threads."""

    def __init__(self, total: int, progress: Callable[[str, int, int, str], None]):
        self.total, self.progress, self.done = total, progress, 0
        self.lock = threading.Lock()

    def one_done(self, name: str) -> None:
        with self.lock:
            self.done += 1
            self.progress("refresh", self.done, self.total, name)


def _read_each(
    aws,
    wants: list[Want],
    found: _Found,
    eager: dict[int, Future],
    tag_jobs: list[_TagJob],
    parallelism: int,
    progress: Callable[[str, int, int, str], None],
) -> list[dict | None]:
    """Per function, on threads: its aliases (its configuration is listed), or the whole
    function (refresh_function); the tag pages of the listed regions are read alongside."""
    counter = _Counter(len(wants), progress)

    def one(i: int) -> dict | None:
        got = _read_one(aws, wants[i], found.confs[i], eager.get(i))
        counter.one_done(wants[i].name)
        return got

    with ThreadPoolExecutor(max_workers=max(1, len(tag_jobs)), thread_name_prefix="tags") as tex:
        tag_reads = [tex.submit(_read_tags, aws, job, found) for job in tag_jobs]
        got = parallel_map(one, list(range(len(wants))), parallelism)
        for f in tag_reads:
            f.result()
    return got


def _read_one(aws, w: Want, conf, eager: Future | None) -> dict | None:
    """A function's aliases (its configuration is listed), or the whole function."""
    if conf is _UNKNOWN:
        return refresh_function(aws, w.region, w.connector, w.name)
    if conf is None:
        return None
    if eager is not None:
        return eager.result() or {}  # read while listing (None: it was not there yet)
    return read_aliases(aws, w, missing_ok=False)


def _list_tags_rest(aws, wants: list[Want], found: _Found, parallelism: int) -> None:
    """ListTags of each listed function the tag pages did not cover."""
    from reconciler.aws.client import Lambda

    untagged = [i for i in range(len(wants)) if found.listed(i) and found.tags[i] is None]

    def tags_of(i: int) -> dict:
        return Lambda(aws, wants[i].region, wants[i].connector).list_tags(found.confs[i]["FunctionArn"])

    for i, t in zip(untagged, parallel_map(tags_of, untagged, parallelism), strict=False):
        found.tags[i] = t


def _snapshot(found: _Found, got: list[dict | None], i: int) -> dict:
    if found.confs[i] is _UNKNOWN:
        return got[i] or {}
    if found.confs[i] is None:
        return {"exists": False}
    return snapshot({"Configuration": found.confs[i], "Tags": found.tags[i]}, got[i] or {})


def parallel_map(fn: Callable, items: list, parallelism: int) -> list:
    """fn over items on up to `parallelism` threads; results in the order of items."""
    if len(items) <= 1 or parallelism <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=min(parallelism, len(items))) as ex:
        return list(ex.map(fn, items))


def _want_key(w: Want) -> tuple:
    return (w.region, (w.connector or {}).get("role_arn"), w.name)


class EarlyRefresh:
    """refresh_all() of the functions recorded in the local state files, on a thread, while
    the workspace loads; complete() returns the snapshots of the functions the plan wants,
    reading the ones the state did not know."""

    def __init__(self, ctx: Context, aws, states: dict[tuple[str, str], st.State], wants: list[Want]):
        self.ctx, self.aws, self.states, self.wants = ctx, aws, states, wants
        self.result: list[dict] | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="early-refresh", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.result, _ = refresh_all(
                self.aws, self.wants, self.ctx.parallelism, self.ctx.progress, eager_aliases=True
            )
        except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread by complete()
            self.error = exc

    def complete(self, wants: list[Want]) -> list[dict]:
        self.thread.join()
        if self.error is not None:  # read them the usual way: the error is reported if it matters
            return refresh_all(self.aws, wants, self.ctx.parallelism, self.ctx.progress)[0]
        got = {_want_key(w): snap for w, snap in zip(self.wants, self.result or [], strict=False)}
        checked = {_want_key(w) for w in self.wants if w.aliases}
        rest = [w for w in wants if _want_key(w) not in got]
        if rest:
            snaps, _ = refresh_all(self.aws, rest, self.ctx.parallelism, self.ctx.progress)
            got.update({_want_key(w): snap for w, snap in zip(rest, snaps, strict=False)})
        # read early by version only, but the plan needs every fact of their aliases (an
        # alias desired that is not recorded, a new description or weights): ListAliases
        full = [w for w in wants if w.aliases is None and _want_key(w) in checked and got[_want_key(w)].get("exists")]
        for w, aliases in zip(
            full, parallel_map(lambda w: read_aliases(self.aws, w), full, self.ctx.parallelism), strict=False
        ):
            got[_want_key(w)] = _with_aliases(got[_want_key(w)], aliases or {})
        return [got[_want_key(w)] for w in wants]


def _with_aliases(snap: dict, aliases: dict[str, dict]) -> dict:
    return {**snap, **alias_fields(aliases)}


def early_refresh(ctx: Context, aws) -> EarlyRefresh | None:
    """The early refresh of a plan of everything from local state files (None otherwise:
    a selection, remote state, nothing recorded, or a state that cannot be read)."""
    o = ctx.options
    if (
        o.services
        or o.environments
        or o.infrastructures
        or not isinstance(st.state_path(ctx.state_dir, "e", "i"), Path)
    ):
        return None
    try:
        states = {key: st.load(ctx.state_dir, *key) for key in st.targets(ctx.state_dir)}
    except Exception:  # noqa: BLE001 - an unreadable state is reported by the plan itself, later
        return None
    wants = [
        Want(rec.get("region") or s_.region, rec.get("connector"), name, alias_check(None, rec))
        for s_ in states.values()
        for name, rec in sorted(s_.functions.items())
        if rec.get("region") or s_.region
    ]
    if not wants:
        return None
    # the clients first, here: importing botocore and building a client is CPU work that,
    # on the refresh thread, would compete with the loading it is meant to overlap
    for region, connector in {
        (w.region, (w.connector or {}).get("role_arn")): (w.region, w.connector) for w in wants
    }.values():
        aws.client("lambda", region, connector)
    return EarlyRefresh(ctx, aws, states, wants)
