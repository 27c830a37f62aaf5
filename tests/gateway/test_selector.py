"""The one reading of label selectors that policies, roles and halts share."""

from __future__ import annotations

import re

import pytest

from gateway.selector import label_value, parse_selector, selector_matches


def test_parse_and_match():
    sel = parse_selector(" env=Prod , criticality=critical")
    assert sel == (("env", "prod"), ("criticality", "critical"))
    assert selector_matches(sel, {"environment": "PROD", "criticality": "critical"})
    assert not selector_matches(sel, {"env": "prod"})
    assert label_value({"environment": " Staging "}, "env") == "staging"
    assert label_value({}, "env") is None


@pytest.mark.parametrize("text", ["prod", "env=", "=prod", "env=prod,"])
def test_malformed(text: str):
    with pytest.raises(ValueError, match="is not key=value"):
        parse_selector(text)


def test_allowed_pattern():
    strict = re.compile(r"[a-z]+")
    assert parse_selector("env=prod", allowed=strict) == (("env", "prod"),)
    with pytest.raises(ValueError, match="'env=pr od'"):
        parse_selector("env=pr od", allowed=strict)


def test_halts_on_the_same_scope_are_equal_however_spelled():
    from gateway.decision import Halt

    a = Halt(selector=parse_selector("environment=PROD,tier=web"))
    b = Halt(selector=parse_selector("tier=web,env=prod"))
    assert a == b
    assert a.describe() == "env=prod,tier=web"
    assert Halt.from_json(a.to_json()) == b
