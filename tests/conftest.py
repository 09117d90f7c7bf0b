import os

import pytest

# Gradient graphs built in tests must not land in (or come from) the user's cache.
os.environ.setdefault("IGCLI_CACHE_DIR", "/tmp/igcli-test-cache")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IGCLI_CACHE_DIR", str(tmp_path / "cache"))
