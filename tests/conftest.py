"""Shared test fixtures: the bundled captures in tests/data and the developer corpus (../shared/pcaps)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
REPO = HERE.parent
#: The developer corpus with tshark truth; FLOWLOG_CORPUS overrides where it is.
CORPUS = Path(os.environ.get("FLOWLOG_CORPUS", REPO.parent / "shared" / "pcaps"))


@pytest.fixture
def data() -> Path:
    return DATA


@pytest.fixture
def corpus() -> Path:
    if not (CORPUS / "truth").is_dir():
        pytest.skip(f"developer corpus not found at {CORPUS} (set FLOWLOG_CORPUS to its pcaps/ folder)")
    return CORPUS
