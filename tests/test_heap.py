"""igcli's own processes keep freed memory for reuse; a program importing igcli does not."""

from __future__ import annotations

import platform
import subprocess
import sys

import numpy as np
import pytest

from igcli.paths import StraightPath


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_the_thresholds_are_raised_under_glibc():
    assert _python("from igcli.heap import keep_freed_memory; print(keep_freed_memory())") == "True"


def test_a_program_importing_igcli_keeps_its_allocator():
    code = "import sys, igcli.session, igcli.run; print('igcli.heap' in sys.modules)"
    assert _python(code) == "False"


def test_straight_path_points_are_the_formula_bit_for_bit():
    rng = np.random.default_rng(0)
    x, b = rng.normal(size=(3, 5, 4)), rng.normal(size=(3, 5, 4))
    alphas = rng.uniform(size=7)
    expected = b[None] + alphas.reshape(-1, 1, 1, 1) * (x - b)[None]
    assert np.array_equal(StraightPath().points(x, b, alphas), expected)
