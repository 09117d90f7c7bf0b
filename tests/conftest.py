import atexit
import os
import shutil
import tempfile

import pytest

# Gradient graphs built in tests must not land in (or come from) the user's cache, nor an
# earlier test run's (a fixed /tmp/igcli-test-cache outlived the run).
if "IGCLI_CACHE_DIR" not in os.environ:
    os.environ["IGCLI_CACHE_DIR"] = tempfile.mkdtemp(prefix="igcli-test-cache-")
    atexit.register(shutil.rmtree, os.environ["IGCLI_CACHE_DIR"], True)


@pytest.fixture(scope="module", autouse=True)
def _module_cache(tmp_path_factory):
    """A cache of each module's own for its module fixtures (they run before _isolated_cache):
    sharing one, a self-check stored by test_merge_reports' runs went into test_dask's
    reference run's records, which then differed from a fresh run's (records carry the
    check made at whichever input met the graph first)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IGCLI_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IGCLI_CACHE_DIR", str(tmp_path / "cache"))
