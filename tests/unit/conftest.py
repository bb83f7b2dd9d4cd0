"""Fixtures shared by the unit tests."""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from tests.fakes import sail as fake_sail_module


@pytest.fixture
def fake_sail(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The fake ``sophon.sail`` installed for one test (reference/sail.md section 9)."""
    fake = fake_sail_module.install(monkeypatch)
    yield fake
    # Contract breaches the real SAIL would not report, even where the code under test
    # wrapped them (a second thread in an Engine, a wrong tensor shape, ...).
    assert fake.VIOLATIONS == []
