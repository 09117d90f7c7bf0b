"""Gradient graphs: a reverse-mode transform from ONNX model to ONNX model, standard ops only.

`driver.build_gradient_model` is the entry point; per-op rules live in `rules_math` (elementwise,
activations, softmax, reductions), `rules_shape` (layout and indexing) and `rules_nn`
(convolution, pooling, normalisation, matrix products).
"""

from igcli.autodiff.driver import GRAD, SEED, build_gradient_model
from igcli.autodiff.shapes import blocking_ops, build_gradient_model_probing

__all__ = ["GRAD", "SEED", "blocking_ops", "build_gradient_model", "build_gradient_model_probing"]
