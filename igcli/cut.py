"""Attribution at an intermediate tensor: the model cut in two at that tensor.

IG needs a float space to walk a straight line in. Token ids are integers, and a question
like "which channels of this block matter" lives inside the graph, so igcli can integrate in
the space of any float tensor T of the graph (`--at T`). The model is cut at T:

- the part before it (`before`: the model's inputs -> T) gives T at the input and at the
  baseline, both made in input space (pad tokens, a black image) and passed through it, as an
  image baseline goes through the preprocessing;
- the part after it (`after`: T, plus whatever inputs it still reads -> the output) gets the
  gradient graph, with T as its input.

The after part reads the other model inputs (an attention mask, the token ids for their
shape, a skip connection from the image) at the input's values, as Captum's
LayerIntegratedGradients does: only T moves along the path. Completeness holds in T's space:
the attributions add up to G(T(x)) - G(T(b)), where G is the after part at the input's other
values (for an embedding lookup that is exactly F(x) - F(b)).

For integer inputs igcli finds the embedding lookups they feed (a Gather from a float table)
and cuts there by default; `inspect` lists those and other candidate tensors.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from igcli.autodiff.subgraphs import node_inputs, remove_dead_nodes
from igcli.errors import UsageError
from igcli.model import TensorSpec, float_tensors

# Ops that pass token ids on unchanged in value (a cast to int32, a reshape to [N*L]).
_ID_PASSING = {"Cast", "Identity", "Reshape", "Unsqueeze", "Squeeze", "Flatten"}
# Ops whose outputs make natural cut points (the output of a layer or block).
_BLOCK_OPS = {
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Relu", "LeakyRelu", "Gelu", "Sigmoid", "Tanh",
    "Softplus", "Elu", "Selu", "HardSigmoid", "HardSwish", "Mish", "MaxPool", "AveragePool",
    "GlobalAveragePool", "GlobalMaxPool", "BatchNormalization", "LayerNormalization",
    "InstanceNormalization", "Gather", "Attention", "MultiHeadAttention", "SkipLayerNormalization",
}  # fmt: skip
AGGREGATES = ("sum", "l2", "none")


@dataclass
class Cut:
    """A model cut at `tensor`: `before` computes it, `after` continues from it."""

    tensor: str
    spec: TensorSpec
    before: onnx.ModelProto  # outputs: [tensor]
    after: onnx.ModelProto  # inputs: `tensor` and `after_inputs`; outputs: [output]
    before_inputs: list[str]  # model inputs the before part reads
    after_inputs: list[str]  # model inputs the after part still reads (at the input's values)


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output if o}


def _reads(graph: onnx.GraphProto) -> set[str]:
    used = {o.name for o in graph.output}
    for node in graph.node:
        used.update(node_inputs(node))
    return used


def _downstream(graph: onnx.GraphProto, sources: set[str]) -> set[str]:
    """Every tensor computed (in graph order) from the values of any of `sources` (not from
    their shapes only: a position embedding sliced to the input's length does not count)."""
    reached = set(sources)
    for node in graph.node:
        if node.op_type in ("Shape", "Size"):
            continue
        if any(i in reached for i in node_inputs(node)):
            reached.update(o for o in node.output if o)
    return reached


def depends_on(model: onnx.ModelProto, output: str, input_name: str) -> bool:
    """Whether `output` is computed from the values of `input_name` (its shape aside). Passes
    over the nodes until nothing more is reached: ONNX Runtime runs graphs whose nodes are
    out of order, where one pass in file order would miss a path."""
    reached = {input_name}
    while True:
        more = _downstream(model.graph, reached)
        if output in more or more == reached:
            return output in more
        reached = more


def _upstream(graph: onnx.GraphProto, sinks: set[str]) -> set[str]:
    """Every tensor some of `sinks` is computed from (sinks included)."""
    needed = set(sinks)
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            needed.update(node_inputs(node))
    return needed


def _elem_type(model: onnx.ModelProto, name: str) -> TensorSpec | None:
    return float_tensors(model).get(name)


def make_cut(model: onnx.ModelProto, tensor: str, input_name: str, output_name: str) -> Cut:
    """Cut `model` (already exposing `output_name`) at `tensor`; UsageError when the tensor
    cannot carry the attribution (not in the graph, not float, not between input and output)."""
    graph = model.graph
    producers = _producers(graph)
    if tensor not in producers:
        if tensor in {i.name for i in graph.input}:
            raise UsageError(
                f"--at {tensor!r} is a model input, not a tensor inside the graph; choose the "
                "input to attribute with --input"
            )
        raise UsageError(
            f"--at {tensor!r} is not a tensor of the graph (see `igcli inspect` for candidates)"
        )
    if tensor == output_name:
        raise UsageError(f"--at {tensor!r} is the explained output itself")
    spec = _elem_type(model, tensor)
    if spec is None:
        raise UsageError(f"--at {tensor!r} is not a float tensor; IG needs a float space")
    if tensor not in _downstream(graph, {input_name}):
        raise UsageError(f"--at {tensor!r} does not depend on input {input_name!r}")
    if tensor not in _upstream(graph, {output_name}):
        raise UsageError(f"output {output_name!r} does not depend on --at {tensor!r}")

    before = copy.deepcopy(model)
    g = before.graph
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(tensor, _onnx_elem(spec), None))
    remove_dead_nodes(g)
    before_inputs = _keep_read_inputs(g)

    after = copy.deepcopy(model)
    g = after.graph
    for node in g.node:
        for k, o in enumerate(node.output):
            if o == tensor:
                node.output[k] = f"{tensor}/igcli_cut_away"
    out_vi = next(o for o in g.output if o.name == output_name)
    del g.output[:]
    g.output.append(out_vi)
    keep_vi = [vi for vi in g.value_info if vi.name != tensor]
    del g.value_info[:]
    g.value_info.extend(keep_vi)
    dims = list(spec.shape) if spec.shape else None
    g.input.append(helper.make_tensor_value_info(tensor, _onnx_elem(spec), dims))
    remove_dead_nodes(g)
    after_inputs = [n for n in _keep_read_inputs(g) if n != tensor]
    return Cut(tensor, spec, before, after, before_inputs, after_inputs)


def _onnx_elem(spec: TensorSpec) -> int:
    return helper.np_dtype_to_tensor_dtype(spec.dtype)


def _keep_read_inputs(graph: onnx.GraphProto) -> list[str]:
    """Drop graph inputs no node reads any more; the names of those kept."""
    used = _reads(graph)
    inits = {i.name for i in graph.initializer}
    keep = [vi for vi in graph.input if vi.name in used or vi.name in inits]
    del graph.input[:]
    graph.input.extend(keep)
    return [vi.name for vi in keep if vi.name not in inits]


def _table(graph: onnx.GraphProto, name: str) -> onnx.TensorProto | None:
    """The float initializer (or Constant) `name` stands for, through Identity nodes."""
    inits = {i.name: i for i in graph.initializer}
    producers = _producers(graph)
    for _ in range(8):
        if name in inits:
            t = inits[name]
            break
        node = producers.get(name)
        if node is None:
            return None
        if node.op_type == "Identity":
            name = node.input[0]
            continue
        if node.op_type == "Constant":
            t = next((a.t for a in node.attribute if a.name == "value"), None)
            break
        return None
    else:
        return None
    float_types = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)
    if t is None or t.data_type not in float_types or len(t.dims) != 2:
        return None
    return t


def embedding_lookups(model: onnx.ModelProto, input_name: str) -> list[str]:
    """Outputs of the Gathers that look `input_name`'s ids up in a float table (the word
    embeddings of a text model), in graph order."""
    graph = model.graph
    ids = {input_name}
    found = []
    for node in graph.node:
        if node.op_type in _ID_PASSING and node.input and node.input[0] in ids:
            ids.update(o for o in node.output if o)
        elif (
            node.op_type == "Gather"
            and len(node.input) == 2
            and node.input[1] in ids
            and _table(graph, node.input[0]) is not None
        ):
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            if axis == 0:
                found.append(node.output[0])
    return found


def candidate_tensors(
    model: onnx.ModelProto, input_name: str, output_name: str
) -> list[TensorSpec]:
    """Float tensors between the input and the output that make natural cut points: layer
    and block outputs, in graph order (what `inspect` lists for --at)."""
    graph = model.graph
    between = _downstream(graph, {input_name}) & _upstream(graph, {output_name})
    specs = float_tensors(model)
    source = next((vi for vi in graph.input if vi.name == input_name), None)
    dims = source.type.tensor_type.shape.dim if source is not None else []
    batch = (dims[0].dim_param or dims[0].dim_value or None) if len(dims) else None
    out = []
    for node in graph.node:
        if node.op_type not in _BLOCK_OPS:
            continue
        for o in node.output:
            usable = o and o in between and o in specs and o != output_name
            if usable and _batch_first(specs[o].shape, batch):
                out.append(specs[o])
    return out


def _batch_first(shape: list, batch: int | str | None) -> bool:
    """Whether a tensor's first axis may be the input's batch, by its inferred dims: not a
    product with it ('12*batch': the batch merged into it, as a GPT-2's Gemm input) nor
    another fixed size or the batch moved to a later axis (sequence first). Unknown dims
    pass (explain finds out from the rows)."""
    if not shape or batch is None:
        return True
    first = shape[0]
    if first == batch or first is None or (isinstance(first, int) and first <= 0):
        return True
    if isinstance(batch, str):
        if isinstance(first, str):  # another symbol: unknown, unless it holds the batch's
            return batch not in re.split(r"[^A-Za-z0-9_]+", first)
        return batch not in shape[1:]  # a fixed size first, the batch further on
    return False  # a fixed batch, and another fixed size first


def aggregate(attributions: np.ndarray, kind: str, image_model: bool, how: str) -> np.ndarray:
    """Attributions per input position, from attributions at a tensor: for token models one
    value per token (over the hidden axis), for image activations ([C, H, W]) one per spatial
    position (over channels), else over the last axis. `sum` keeps completeness (the values
    still add up to F(x) - F(b)); `l2` is the magnitude; `none` returns them as they are."""
    a = np.asarray(attributions, dtype=np.float64)
    if how not in AGGREGATES:
        raise UsageError(f"--aggregate {how!r}: choose {', '.join(AGGREGATES)}")
    if how == "none" or a.ndim <= 1:
        return a
    if kind == "tokens":
        axes = tuple(range(1, a.ndim))
    elif image_model and a.ndim == 3:
        axes = (0,)
    else:
        axes = (a.ndim - 1,)
    if how == "sum":
        return a.sum(axis=axes)
    return np.sqrt((a * a).sum(axis=axes))
