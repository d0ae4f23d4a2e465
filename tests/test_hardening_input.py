"""Hostile and careless input, in-process, no AWS: expressions that grow or hold `<+` as data,
identifiers that would leave the state directory, resource limits of the YAML reader, state
files of the wrong shape, and odd files."""

from __future__ import annotations

import pytest
from test_load_render import basic, fdef, one

from reconciler.errors import ConfigError
from reconciler.workspace.expr import MAX_EXPANDED, Scope, resolve_string


def WHERE():
    return ("f.yaml", 3)


# ------------------------------------------------------------------ expressions (item 10)


def test_a_value_holding_expression_syntax_is_data():
    """A password with `<+` in it (from --var, a provisioner output, a step output) is substituted
    as it is and never read for expressions again."""
    scope = Scope(fixed={"pw": "a<+b>c<+", "other": "<+pw>"})
    assert resolve_string("<+pw>", scope, WHERE) == "a<+b>c<+"
    assert resolve_string("x=<+pw>;y=<+other>", scope, WHERE) == "x=a<+b>c<+;y=<+pw>"


def test_many_expressions_in_one_string_resolve():
    scope = Scope(fixed={"a": "1"})
    assert resolve_string("<+a>," * 500, scope, WHERE) == "1," * 500


def test_nested_expression_resolves_inner_first():
    scope = Scope(fixed={"stage.identifier": "s1", "pipeline.stages.s1.name": "Deploy"})
    assert resolve_string("<+pipeline.stages.<+stage.identifier>.name>!", scope, WHERE) == "Deploy!"


def test_a_doubling_chain_of_variables_stops_quickly_with_a_clear_error(tmp_path):
    """v1 = x*1000, v(n) = <+v(n-1)><+v(n-1)>: each variable resolves once, and the value is
    capped at MAX_EXPANDED characters with an error naming the file and line."""
    lines = ["- name: v0\n  type: String\n  value: " + "x" * 1000 + "\n"]
    for i in range(1, 40):
        lines.append(
            f"- name: v{i}\n  type: String\n  value: <+serviceVariables.v{i - 1}><+serviceVariables.v{i - 1}>\n"
        )
    root = basic(tmp_path, fdef(description="<+serviceVariables.v39>"), variables="".join(lines))
    with pytest.raises(ConfigError) as err:
        one(root)
    assert f"beyond {MAX_EXPANDED} characters" in str(err.value) and err.value.file and err.value.line
    assert "x" * 100 not in str(err.value)


def test_an_unclosed_expression_is_an_error_that_does_not_echo_the_value():
    secret = "<+" + "s3cr3t" * 50
    with pytest.raises(ConfigError) as err:
        resolve_string(secret, Scope(), WHERE)
    assert "is not closed" in str(err.value) and secret not in str(err.value) and len(str(err.value)) < 200


def test_a_var_value_holding_expression_syntax_reaches_the_function_as_it_is(tmp_path):
    """--var values are data: a password like `p<+w>d` is not resolved (it used to be refused)."""
    root = basic(
        tmp_path,
        fdef(environment={"variables": {"PW": "<+serviceVariables.pw>"}}),
        variables="- name: pw\n  type: String\n  value: default\n",
    )
    spec = one(root, variables={"pw": "p<+w>d<+"})
    assert spec.config["Environment"]["Variables"]["PW"] == "p<+w>d<+"


# ------------------------------------------------------------------ wrong results (item 13)


def test_a_non_ascii_literal_in_a_condition_matches():
    from reconciler.pipeline.conditions import evaluate_condition

    assert evaluate_condition('<+v> == "café ✓"', lambda e: "café ✓") is True
    assert evaluate_condition("<+v> == 'a\\'b\\\\c'", lambda e: "a'b\\c") is True
