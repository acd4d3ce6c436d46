"""Shared fixtures: embedded models are built once per session into a temporary cache."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def models_cache(tmp_path_factory):
    """Point `ASSET_PIPELINE_MODELS` at a session tmp dir: tests never touch the user's cache."""
    root = tmp_path_factory.mktemp("models")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ASSET_PIPELINE_MODELS", str(root))
        yield root
