"""No gradient rule without a finite-difference check."""

import importlib
import pkgutil

import tests.autodiff as pkg
from igcli.autodiff.registry import RULES


def test_every_rule_has_a_case():
    checked = set()
    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name.startswith("test_rules"):
            module = importlib.import_module(f"tests.autodiff.{mod.name}")
            checked.update(case.op for case in getattr(module, "CASES", []))
            checked.update(getattr(module, "GRAPH_CHECKED_OPS", ()))
    missing = sorted(set(RULES) - checked)
    assert not missing, f"rules without a gradient check: {missing}"
