"""Reading what is live: one function (`refresh_function`: GetFunction + its aliases), many
at the API floor (`refresh_all`: ListFunctions pages and the Tagging API per region, then the
aliases), and the early read of the functions the state files record while the workspace
loads (`early_refresh`). Read calls only; `parallel_map` runs per-function reads on threads."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from reconciler.engine.context import Context
from reconciler.model import FunctionSpec
from reconciler.store import state as st
from reconciler.util.stats import NO_PROGRESS

# Below this many selected functions in a region, one GetFunction each is cheaper than
# listing every function of the region (and its tags).
BULK_MIN = 10


def refresh_function(aws, region: str, connector: dict | None, name: str) -> dict:
    """One function as it is now: GetFunction (configuration, code, tags) and its aliases."""
    from reconciler.aws.client import Lambda
    from reconciler.engine.live import snapshot

    lam = Lambda(aws, region, connector)
    got = lam.get_function(name)
    aliases = lam.list_aliases(name) if got is not None else {}
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
    from reconciler.engine.live import alias_view

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


_UNKNOWN = object()


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
    from reconciler.aws.client import Lambda, lambda_tag_pages
    from reconciler.engine.live import snapshot

    n = len(wants)
    confs: list = [_UNKNOWN] * n  # a FunctionConfiguration, None (absent) or _UNKNOWN
    tags: list[dict | None] = [None] * n  # None: not known (GetFunction or ListTags)
    versions: list[list[dict] | None] = [None] * n
    groups: dict[tuple, list[int]] = {}
    for i, w in enumerate(wants):
        groups.setdefault((w.region, (w.connector or {}).get("role_arn")), []).append(i)
    tag_jobs: list[tuple[str, dict | None, list[int]]] = []

    def read_tags(region: str, connector: dict | None, idx: list[int]) -> None:
        """The tags of the functions found in a region, in bulk (the Tagging API)."""
        arns: dict[str, list[int]] = {}
        for i in idx:
            if confs[i] is not _UNKNOWN and confs[i] is not None:
                arns.setdefault(confs[i]["FunctionArn"], []).append(i)
        if not arns:
            return
        got: dict[str, dict] = {}
        read = 0
        exhausted = True
        for page in lambda_tag_pages(aws, region, connector):
            read += 1
            for r in page.get("ResourceTagMappingList") or []:
                if r.get("ResourceARN") in arns:
                    got[r["ResourceARN"]] = {t["Key"]: t["Value"] for t in r.get("Tags") or []}
            missing = len(arns) - len(got)
            if missing == 0 or read >= len(arns):
                exhausted = missing == 0
                break
        for arn, ii in arns.items():
            for i in ii:
                if arn in got:
                    tags[i] = got[arn]
                elif exhausted:
                    tags[i] = {}  # a function without tags is not listed

    eager: dict[int, Future] = {}
    early_pool = None
    if eager_aliases:
        bulk = [i for idx in groups.values() if len(idx) >= BULK_MIN for i in idx]
        if bulk:
            early_pool = ThreadPoolExecutor(
                max_workers=max(1, min(parallelism, len(bulk))), thread_name_prefix="aliases"
            )
            for i in bulk:
                eager[i] = early_pool.submit(read_aliases, aws, wants[i])
            early_pool.shutdown(wait=False)

    for (region, _role), idx in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        if len(idx) < BULK_MIN:
            continue
        connector = wants[idx[0]].connector
        lam = Lambda(aws, region, connector)
        by_name: dict[str, list[int]] = {}
        for i in idx:
            by_name.setdefault(wants[i].name, []).append(i)
        found: dict[str, dict] = {}
        found_versions: dict[str, list[dict]] = {}
        read = 0
        exhausted = True
        for page in lam.function_pages(all_versions=with_versions):
            read += 1
            for f in page.get("Functions") or []:
                name = f.get("FunctionName")
                if name not in by_name:
                    continue
                version = f.get("Version", "$LATEST")
                if version == "$LATEST":
                    arn = f.get("FunctionArn") or ""
                    if arn.endswith(":$LATEST"):
                        f = {**f, "FunctionArn": arn[: -len(":$LATEST")]}
                    found[name] = f
                else:
                    found_versions.setdefault(name, []).append(f)
            missing = len(by_name) - len(found)
            if missing == 0 and not with_versions:
                exhausted = False  # not needed: everything was found
                break
            if not with_versions and read >= len(by_name):
                exhausted = False  # listing has cost as much as reading each one: read the rest one by one
                break
        for name, ii in by_name.items():
            for i in ii:
                if name in found:
                    confs[i] = found[name]
                    if with_versions:
                        versions[i] = found_versions.get(name, [])
                elif exhausted:
                    confs[i] = None
                    if with_versions:
                        versions[i] = []

        tag_jobs.append((region, connector, idx))

    done = 0
    lock = threading.Lock()

    def one(i: int):
        """A function's aliases (its configuration is listed), or the whole function."""
        nonlocal done
        w = wants[i]
        conf = confs[i]
        if conf is _UNKNOWN:
            got = refresh_function(aws, w.region, w.connector, w.name)
        elif conf is None:
            got = None
        elif i in eager:
            got = eager[i].result() or {}  # read while listing (None: it was not there yet)
        else:
            got = read_aliases(aws, w, missing_ok=False)
        with lock:
            done += 1
            progress("refresh", done, n, w.name)
        return got

    if n == 0:
        return [], []
    # the tag pages are read alongside the per-function reads, not before them
    with ThreadPoolExecutor(max_workers=max(1, len(tag_jobs)), thread_name_prefix="tags") as tex:
        tag_reads = [tex.submit(read_tags, *job) for job in tag_jobs]
        got = parallel_map(one, list(range(n)), parallelism)
        for f in tag_reads:
            f.result()
    # functions the tag pages did not cover: ListTags each
    untagged = [i for i in range(n) if confs[i] is not _UNKNOWN and confs[i] is not None and tags[i] is None]
    for i, t in zip(
        untagged,
        parallel_map(
            lambda i: Lambda(aws, wants[i].region, wants[i].connector).list_tags(confs[i]["FunctionArn"]),
            untagged,
            parallelism,
        ),
        strict=False,
    ):
        tags[i] = t
    snaps = []
    for i in range(n):
        if confs[i] is _UNKNOWN:
            snaps.append(got[i])
        elif confs[i] is None:
            snaps.append({"exists": False})
        else:
            snaps.append(snapshot({"Configuration": confs[i], "Tags": tags[i]}, got[i]))
    return snaps, versions


def parallel_map(fn: Callable, items: list, parallelism: int) -> list:
    """fn over items on up to `parallelism` threads; results in the order of items."""
    if len(items) <= 1 or parallelism <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=min(parallelism, len(items))) as ex:
        return list(ex.map(fn, items))


def _want_key(w: Want) -> tuple:
    return (w.region, (w.connector or {}).get("role_arn"), w.name)


class _EarlyRefresh:
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
    from reconciler.engine.live import alias_view

    return {
        **snap,
        "aliases": {n: alias_view(a) for n, a in sorted(aliases.items())},
        "alias_revisions": {n: a.get("RevisionId") for n, a in aliases.items() if a.get("RevisionId")},
    }


def early_refresh(ctx: Context, aws) -> _EarlyRefresh | None:
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
    return _EarlyRefresh(ctx, aws, states, wants)
