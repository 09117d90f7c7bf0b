"""Gradient graphs: a reverse-mode transform from ONNX model to ONNX model, standard ops only.

`build_gradient_graph` is the entry point: a graph valid for every input shape when the rules
allow, else one specialised to the run's sample shape (`specialize`). `driver` is the reverse
walk itself; per-op rules live in `rules_math` (elementwise, activations, softmax,
reductions), `rules_shape` (layout and indexing) and `rules_nn` (convolution, pooling,
normalisation, matrix products); `subgraphs` follows If/Loop/Scan bodies.
"""

from igcli.autodiff.driver import GRAD, SEED, build_gradient_model
from igcli.autodiff.shapes import (
    GradientGraph,
    blocking_ops,
    build_gradient_graph,
    build_gradient_model_probing,
)
from igcli.autodiff.specialize import feed_batch_axis, specialize

__all__ = [
    "GRAD",
    "SEED",
    "GradientGraph",
    "blocking_ops",
    "build_gradient_graph",
    "build_gradient_model",
    "build_gradient_model_probing",
    "feed_batch_axis",
    "specialize",
]
