import atexit
import errno
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


@pytest.fixture(params=["unnamed", "named"])
def write_route(request, monkeypatch):
    """Atomic writes both ways: through an unnamed file (O_TMPFILE, where Linux has it) and
    through a temporary name, as on a filesystem that refuses O_TMPFILE."""
    from igcli import outputs

    if request.param == "unnamed" and not outputs._UNNAMED:
        pytest.skip("no O_TMPFILE here")
    if request.param == "named" and outputs._UNNAMED:
        real_open = os.open

        def refusing(path, flags, *args, **kwargs):
            if flags & os.O_TMPFILE == os.O_TMPFILE:
                raise OSError(errno.EOPNOTSUPP, "Operation not supported")
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(outputs.os, "open", refusing)
    return request.param
