"""Fixtures of the compliance tests: one ledger written by the real gateway (scenario.py)."""

from __future__ import annotations

import asyncio

import pytest
from compliance_scenario import Built, scenario


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return asyncio.run(scenario(tmp_path_factory.mktemp("compliance")))
