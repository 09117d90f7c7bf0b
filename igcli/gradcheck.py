"""`igcli gradcheck`: does the gradient graph agree with central finite differences?

Random directions v keep the cost at two forward calls each, whatever the input size: the
graph's grad . v is compared with (F(x + h v) - F(x - h v)) / 2h. The check point is the input
plus a little noise (`jitter`): real images have exact ties (a flat black background) where
max-pooling is not differentiable and no two-sided difference can match any gradient.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from igcli.errors import InputError
from igcli.explain import Explainer, ExplainOptions
from igcli.gradients import GraphGradients, pick
from igcli.inputs import load_samples


def random_sample(explainer: Explainer, rng: np.random.Generator) -> np.ndarray:
    """A plausible input when none is given: random pixels for images, N(0, 1) otherwise."""
    prep = explainer.prep
    if prep.is_image_model:
        h, w = prep.height or 32, prep.width or 32
        return prep.image_to_model(rng.uniform(0, 1, size=(h, w, prep.channels)))
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in explainer.input_spec.shape[1:]]
    return rng.standard_normal(shape).astype(prep.dtype)


def run_gradcheck(
    model: Path,
    input_file: Path | None,
    *,
    target: int | None = None,
    output: str | None = None,
    input_name: str | None = None,
    directions: int = 8,
    eps: float = 1e-3,
    tolerance: float = 1e-2,
    jitter: float = 1e-2,
    seed: int = 0,
) -> dict:
    options = ExplainOptions(output=output, input_name=input_name, gradients="graph")
    explainer = Explainer(model, options, warn=lambda msg: None)
    rng = np.random.default_rng(seed)
    if input_file is not None:
        samples = load_samples(input_file, explainer.prep, input_file.stem)
        x = samples[0].x
    else:
        x = random_sample(explainer, rng)
    scale = max(1.0, float(np.max(np.abs(x))))
    x = (x + jitter * scale * rng.uniform(-1, 1, size=x.shape)).astype(x.dtype)
    out, out_shape = explainer.output_size(x)
    explainer.graph_runner.output_shape = out_shape
    if target is None:
        target = int(np.argmax(out.reshape(-1)))
    elif not 0 <= target < int(np.prod(out_shape)):
        raise InputError(f"target {target} is out of range", model)
    source = GraphGradients(explainer.runner, explainer.graph_runner, target)
    _, grad = source.values_and_gradients(x[None])
    grad = grad[0]
    x64 = x.astype(np.float64)
    h = eps * scale
    vs = [rng.standard_normal(x.shape) for _ in range(directions)]
    vs = [v / np.max(np.abs(v)) for v in vs]
    points = np.stack([p for v in vs for p in (x64 + h * v, x64 - h * v)])
    f = pick(explainer.runner.run(points), target)
    fd = (f[0::2] - f[1::2]) / (2 * h)
    analytic = np.array([float(np.sum(grad * v)) for v in vs])
    # Directions whose derivative is near zero would make a relative error meaningless.
    floor = 0.1 * float(np.median(np.abs(analytic))) + 1e-12
    rel = np.abs(analytic - fd) / (np.maximum(np.abs(analytic), np.abs(fd)) + floor)
    worst = float(np.max(rel))
    return {
        "model": str(model),
        "input": str(input_file) if input_file else "random",
        "target": target,
        "step": h,
        "jitter": jitter * scale,
        "directions": [
            {"k": k, "graph": float(a), "fd": float(n), "rel_error": float(r)}
            for k, (a, n, r) in enumerate(zip(analytic, fd, rel, strict=True))
        ],
        "worst_rel_error": worst,
        "median_rel_error": float(np.median(rel)),
        "tolerance": tolerance,
        # The verdict is the median: in float32 a max-pooling or ReLU decision can flip between
        # the two evaluations of one direction and spoil that direction alone.
        "passed": float(np.median(rel)) <= tolerance,
    }
