"""Refresh at the API floor, in process with botocore's Stubber: ListFunctions paging
(NextMarker), bulk tags, the GetFunction path for small regions, ECR repositories read
once; and the fast YAML path giving exactly what ruamel gives."""

from __future__ import annotations

import glob
from pathlib import Path

import pytest
from botocore.stub import Stubber

from reconciler.aws.client import Aws
from reconciler.engine.artifacts import resolve_artifact
from reconciler.engine.refresh import BULK_MIN, Want, refresh_all
from reconciler.engine.live import fingerprint, snapshot

REGION = "eu-west-1"
ACCOUNT = "123456789012"


@pytest.fixture
def aws(monkeypatch):
    for k in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    return Aws()


def _conf(name: str, sha: str = "c2hh") -> dict:
    return {
        "FunctionName": name,
        "FunctionArn": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}",
        "Runtime": "python3.12",
        "Role": f"arn:aws:iam::{ACCOUNT}:role/r",
        "Handler": "h.h",
        "CodeSize": 1,
        "Description": "",
        "Timeout": 3,
        "MemorySize": 128,
        "LastModified": "2024-01-01T00:00:00.000+0000",
        "CodeSha256": sha,
        "Version": "$LATEST",
        "PackageType": "Zip",
        "Architectures": ["x86_64"],
    }


def _alias(name: str, version: str = "1") -> dict:
    return {
        "AliasArn": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}:live",
        "Name": "live",
        "FunctionVersion": version,
        "Description": "",
    }


def test_list_functions_pages_are_followed_by_next_marker(aws):
    names = [f"fn{i:02d}" for i in range(BULK_MIN + 2)]  # enough for the bulk path
    lam = aws.client("lambda", REGION)
    tagging = aws.client("resourcegroupstaggingapi", REGION)
    with Stubber(lam) as sl, Stubber(tagging) as st:
        # two pages: the first ends with a NextMarker that the second request carries
        sl.add_response(
            "list_functions",
            {"Functions": [_conf(n) for n in names[:7]] + [_conf("not-selected")], "NextMarker": "m1"},
            {},
        )
        sl.add_response("list_functions", {"Functions": [_conf(n) for n in names[7:-1]]}, {"Marker": "m1"})
        # names[-1] is in no page: it does not exist, and nothing more is read for it
        for n in names[:-1]:
            sl.add_response("list_aliases", {"Aliases": [_alias(n)]}, {"FunctionName": n})
        st.add_response(
            "get_resources",
            {
                "ResourceTagMappingList": [
                    {"ResourceARN": _conf(n)["FunctionArn"], "Tags": [{"Key": "team", "Value": n}]} for n in names[:-2]
                ],
                "PaginationToken": "",
            },
            {"ResourceTypeFilters": ["lambda:function"]},
        )
        snaps, versions = refresh_all(aws, [Want(REGION, None, n) for n in names], parallelism=1)
        sl.assert_no_pending_responses()
        st.assert_no_pending_responses()
    assert [s["exists"] for s in snaps] == [True] * (len(names) - 1) + [False]
    assert snaps[0]["configuration"]["FunctionName"] == "fn00"
    assert snaps[8]["arn"].endswith(":function:fn08")
    assert snaps[0]["tags"] == {"team": "fn00"}
    assert snaps[-2]["tags"] == {}  # not in the tagging result: it has no tags
    assert snaps[3]["aliases"] == {"live": {"version": "1", "description": "", "weights": {}}}
    assert versions == [None] * len(names)
    # (the Stubber fails on any call not stubbed, and asserted both pages were asked for)


def test_listing_snapshot_matches_get_function_snapshot():
    """A saved plan made from ListFunctions is not stale against GetFunction (apply's check)."""
    conf = _conf("fn")
    from_get = snapshot(
        {
            "Configuration": {
                **conf,
                "State": "Active",
                "LastUpdateStatus": "Successful",
                "RuntimeVersionConfig": {"RuntimeVersionArn": "x"},
            },
            "Code": {"Location": "https://x"},
            "Tags": {"a": "b"},
        },
        {"live": _alias("fn")},
    )
    from_list = snapshot({"Configuration": conf, "Tags": {"a": "b"}}, {"live": _alias("fn")})
    assert fingerprint(from_get) == fingerprint(from_list)


def test_few_functions_are_read_with_get_function(aws):
    lam = aws.client("lambda", REGION)
    with Stubber(lam) as sl:
        sl.add_response("get_function", {"Configuration": _conf("a"), "Tags": {"k": "v"}}, {"FunctionName": "a"})
        sl.add_response("list_aliases", {"Aliases": []}, {"FunctionName": "a"})
        sl.add_client_error(
            "get_function", "ResourceNotFoundException", http_status_code=404, expected_params={"FunctionName": "b"}
        )
        snaps, _ = refresh_all(aws, [Want(REGION, None, "a"), Want(REGION, None, "b")], parallelism=1)
        sl.assert_no_pending_responses()
    assert snaps[0]["exists"] and snaps[0]["tags"] == {"k": "v"}
    assert snaps[1] == {"exists": False}


def test_drift_listing_reads_versions_in_bulk(aws):
    names = [f"fn{i:02d}" for i in range(BULK_MIN)]
    lam = aws.client("lambda", REGION)
    tagging = aws.client("resourcegroupstaggingapi", REGION)
    fns = []
    for n in names:
        fns += [{**_conf(n), "FunctionArn": _conf(n)["FunctionArn"] + ":$LATEST"}, {**_conf(n), "Version": "1"}]
    with Stubber(lam) as sl, Stubber(tagging) as st:
        sl.add_response("list_functions", {"Functions": fns}, {"FunctionVersion": "ALL"})
        for n in names:
            sl.add_response("list_aliases", {"Aliases": []}, {"FunctionName": n})
        st.add_response("get_resources", {"ResourceTagMappingList": []}, {"ResourceTypeFilters": ["lambda:function"]})
        snaps, versions = refresh_all(aws, [Want(REGION, None, n) for n in names], parallelism=1, with_versions=True)
    assert [len(v) for v in versions] == [1] * len(names)
    assert snaps[0]["arn"] == _conf("fn00")["FunctionArn"]  # unqualified


def test_an_ecr_repository_is_read_once_for_several_tags(aws):
    from reconciler.model import FunctionSpec

    ecr = aws.client("ecr", REGION)
    repo = {
        "repositories": [{"repositoryName": "app", "repositoryUri": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/app"}]
    }
    with Stubber(ecr) as se:
        se.add_response("describe_repositories", repo, {"repositoryNames": ["app"]})
        for tag, digest in (("v1", "sha256:" + "a" * 64), ("v2", "sha256:" + "b" * 64)):
            se.add_response(
                "describe_images",
                {"imageDetails": [{"imageDigest": digest, "imageTags": [tag]}]},
                {"repositoryName": "app", "imageIds": [{"imageTag": tag}]},
            )
        repos: dict = {}
        got = []
        for tag in ("v1", "v2"):
            spec = FunctionSpec.__new__(FunctionSpec)
            spec.artifact = {"type": "ECR", "region": REGION, "repository": "app", "tag": tag, "id": "img"}
            got.append(resolve_artifact(aws, spec, {}, repos))
        se.assert_no_pending_responses()
    assert [g["sha256"] for g in got] == ["a" * 64, "b" * 64]
    # one describe_repositories was stubbed: a second would have failed


# ------------------------------------------------------------------ the fast YAML path

REPO = Path(__file__).resolve().parent.parent
YAML_CASES = [
    "a: 1\nb: yes\n",
    "a: 012\n",
    "a: 1.5\nb: .5\nc: 1e3\n",
    "x:\n  - a: 1\n    b: |\n      hi\n      there\n  - 'q'\n",
    "a: 2024-01-01\n",
    "a: ~\nb:\nc: null\n",
    "k: {a: 1, b: [1,2]}\n",
    "--- \na: 1\n---\n---\nb: 2\n",
    "a: !!str 5\n",
    "a: &x {b: 1}\nc: *x\n",
    "a: \"x\"\nb: 'y'\n",
    "- 1\n- 2\n",
    "hello\n",
    "a: 0x1F\n",
    "a: True\n",
    "a: -3\nb: +4\n",
    "'1': a\n2: b\n",
    "a: !Ref x\n",
    "a: >\n  folded\n  text\nb: 1\n",
    '{"a": {"b": [1, "x"]},\n "c": 2.50}\n',
    "a: 1_000\n",
    "a: <+input>\nb: <+env.name>-x\n",
    "a: &a {x: 1}\nb:\n  <<: *a\n  y: 2\n",
    "on: push\n",
    "a: &x 1\nb: 2\n",
    "a: &x 1\nb: &x 2\n",
    "'<<': 1\n",
    "? [a]\n: 1\n",
    "a: [1, {b: c}, [d]]\n",
    "",
    "---\n...\n",
    "a: !!map {b: 1}\n",
    "a:\n  - - x\n    - y\n  - z: 1\n",
    "a: &x 1\nb: *x\n",
    "- &x 1\n- *x\n",
    "a: &x 1\n*x : 2\n",
]


def test_fast_yaml_answers_for_service_files(tmp_path, monkeypatch):
    """Service files like the samples' and the fleet benchmark's take the fast path."""
    from reconciler.util import yamlsrc

    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import fleet

    fleet.workspace(tmp_path, 2)
    files = [
        REPO / "samples" / "hello-world" / ".harness" / "service.yaml",
        tmp_path / ".harness" / "svc0001.yaml",
        tmp_path / "fn.json",
    ]
    for f in files:
        assert yamlsrc._fast_docs(f.read_text(), str(f)) is not None, f
    # the line table is made when first asked for, and is the one ruamel gives
    text = files[1].read_text()
    doc = yamlsrc._fast_docs(text, "f")[0]
    assert (
        doc.line(("service", "serviceDefinition", "spec", "artifacts", "primary", "sources", 0, "spec", "bucketName"))
        == 16
    )
    assert doc.lines == yamlsrc._load_yaml_documents_rt(text, "f")[0].lines


def _files() -> list[Path]:
    out = []
    for pat in ("**/*.yaml", "**/*.yml", "**/*.json"):
        out += [Path(p) for p in glob.glob(str(REPO / "samples" / pat), recursive=True, include_hidden=True)]
    return sorted(out)


@pytest.mark.parametrize("text", YAML_CASES + [p.read_text() for p in _files()])
def test_fast_yaml_gives_what_ruamel_gives(text):
    from reconciler.util import yamlsrc

    try:
        slow = [(d.data, d.lines) for d in yamlsrc._load_yaml_documents_rt(text, "f")]
    except Exception as exc:  # noqa: BLE001 - then the fast path must not answer
        slow = exc
    fast = yamlsrc._fast_docs(text, "f")
    if fast is None:
        return  # ruamel reads it
    assert not isinstance(slow, Exception), slow
    assert [(d.data, d.lines) for d in fast] == slow


def test_duplicate_keys_still_fail_through_ruamel():
    from reconciler.util import yamlsrc
    from reconciler.errors import ConfigError

    with pytest.raises(ConfigError, match="duplicate key"):
        yamlsrc.load_yaml_documents("a: 1\na: 2\n", "f.yaml")
