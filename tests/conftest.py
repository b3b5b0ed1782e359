"""Shared fixtures: the reference data folder beside the checkout, skipped when absent."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; tests that need it skip on a user's clone."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance (2 CPUs) shared by every Ray test of the session; start-up takes seconds."""
    ray = pytest.importorskip("ray")
    from nas.executors import init_ray

    owned = not ray.is_initialized()
    if owned:
        init_ray(None, 2)
    yield ray
    if owned:
        ray.shutdown()
