"""The Lambda model's `pattern` constraints are Java regular expressions; newer botocore
models use Unicode classes (`\\p{L}`) that Python's `re` cannot compile. Checking a value
against such a pattern must never fail the check itself."""

from __future__ import annotations

import sys

import pytest

from reconciler.workspace import schema

TAG_KEY = r"([\p{L}\p{Z}\p{N}_.:/=+\-@]*)"


@pytest.fixture(autouse=True)
def _fresh_cache():
    schema._compiled.cache_clear()
    yield
    schema._compiled.cache_clear()


def test_plain_pattern_is_checked():
    assert schema._compiled(r"[a-zA-Z]([a-zA-Z0-9_])+").fullmatch("LOG_LEVEL")
    assert not schema._compiled(r"[a-zA-Z]([a-zA-Z0-9_])+").fullmatch("Hello World")


def test_unicode_class_pattern_without_regex_module_is_left_to_lambda(monkeypatch):
    monkeypatch.setitem(sys.modules, "regex", None)  # import regex -> ImportError
    assert schema._compiled(TAG_KEY).fullmatch("reconciler:service")


def test_unicode_class_pattern_with_regex_module_is_checked():
    pytest.importorskip("regex")
    assert schema._compiled(TAG_KEY).fullmatch("team-é")
    assert not schema._compiled(TAG_KEY).fullmatch("bad#key")
