import atexit
import os
import shutil
import tempfile

import pytest

# Gradient graphs built in tests must not land in (or come from) the user's cache, nor an
# earlier test run's: module fixtures (which run before _isolated_cache) shared a fixed
# /tmp/igcli-test-cache, and a self-check stored there by older code made a later run's
# records differ from a fresh run's.
if "IGCLI_CACHE_DIR" not in os.environ:
    os.environ["IGCLI_CACHE_DIR"] = tempfile.mkdtemp(prefix="igcli-test-cache-")
    atexit.register(shutil.rmtree, os.environ["IGCLI_CACHE_DIR"], True)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IGCLI_CACHE_DIR", str(tmp_path / "cache"))
