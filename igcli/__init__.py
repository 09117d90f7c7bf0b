"""igcli: Integrated Gradients for any ONNX model, from the command line or from Python.

    import igcli
    session = igcli.Session("model.onnx")
    attribution = session.attribute("cat.png", steps=64)

The public names below are stable; they are imported on first use, so that `igcli --help`
does not pay for ONNX Runtime.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = [
    "Attribution",
    "AttributionSettings",
    "IgcliError",
    "IgcliWarning",
    "Session",
    "__version__",
]

_EXPORTS = {
    "Attribution": "igcli.attribution",
    "AttributionSettings": "igcli.session",
    "IgcliError": "igcli.errors",
    "IgcliWarning": "igcli.errors",
    "Session": "igcli.session",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'igcli' has no attribute {name!r}")
