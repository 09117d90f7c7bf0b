"""Every layout and indexing rule against central finite differences.

Most cases go through `check_graph` (float64 reference evaluator vs. central differences, then
the emitted graph in ONNX Runtime float32). `NodeCase` adds what one-node `check_op` cannot
express: parameters given as Constant nodes in their own dtype (Resize's float32 scales),
skipped optional inputs (""), parameters computed at runtime (a Constant behind an Identity,
which the rules cannot read at build time) and several outputs. Ops the reference evaluator
cannot run forward (Resize-10, linear Upsample, negative pads) are checked in ONNX Runtime
against the op's own Jacobian, read column by column from its forward pass (they are linear).
Resize cases also go through that ORT check, so our reference-probed interpolation matrices
must agree with the kernel igcli actually runs.
"""

import numpy as np
import pytest
from onnx import helper, numpy_helper

from igcli.autodiff import build_gradient_model
from igcli.errors import UnsupportedOpsError
from tests.autodiff.checker import Case, Runner, check_graph, make_model

rng = np.random.default_rng(7)
INT_MAX = np.iinfo(np.int64).max


def r(*shape):
    return rng.uniform(-2.0, 2.0, size=shape)


def ints(*values):
    return np.asarray(values, dtype=np.int64)


def floats(*values):
    return np.asarray(values, dtype=np.float32)


def check_linear_ort(nodes, inputs, output, *, opset, constants=None, dynamic=False, seed=0):
    """Gradient of a linear (or affine) op in ORT float32 vs. the Jacobian of ORT's forward."""
    (name,) = inputs
    x = np.asarray(inputs[name], dtype=np.float32)
    consts = {k: v.astype(np.float32) if v.dtype.kind == "f" else v
              for k, v in (constants or {}).items()}  # fmt: skip
    run = Runner(make_model(nodes, {name: x}, output, opset, consts, dynamic), name, output, "ort")
    base = run.forward({name: np.zeros_like(x)})
    seed_arr = np.random.default_rng(seed).standard_normal(base.shape).astype(np.float32)
    expected = np.zeros(x.size)
    for i in range(x.size):
        basis = np.zeros(x.size, dtype=np.float32)
        basis[i] = 1.0
        column = run.forward({name: basis.reshape(x.shape)}) - base
        expected[i] = np.sum(seed_arr.astype(np.float64) * column)
    got = run.gradient({name: x}, seed_arr)
    scale = np.abs(expected).max() + 1e-12
    np.testing.assert_allclose(got.reshape(-1), expected, rtol=1e-5, atol=1e-5 * scale)


class NodeCase(Case):
    """One op whose extra inputs are Constant nodes (`fixed`, dtype kept; names in `runtime` go
    through an Identity so they are unknown at build time), with explicit input `order` ("" for
    skipped optional inputs), optional `pre` nodes, several outputs, and the ORT Jacobian check
    (`ort_jacobian` in addition to check_graph, `ort_only` instead of it)."""

    def __init__(self, op, inputs, attrs=None, id="", *, fixed=None, runtime=(), order=None,
                 pre=(), n_outputs=1, output_index=0, ort_jacobian=False, ort_only=False,
                 **options):  # fmt: skip
        super().__init__(op, inputs, attrs, id, **options)
        self.fixed, self.runtime, self.order, self.pre = fixed or {}, set(runtime), order, pre
        self.n_outputs, self.output_index = n_outputs, output_index
        self.ort_jacobian, self.ort_only = ort_jacobian, ort_only

    def nodes(self):
        nodes = []
        for name, value in self.fixed.items():
            out = f"{name}_const" if name in self.runtime else name
            tensor = numpy_helper.from_array(np.asarray(value), out)
            nodes.append(helper.make_node("Constant", [], [out], value=tensor))
            if name in self.runtime:
                nodes.append(helper.make_node("Identity", [out], [name]))
        nodes.extend(self.pre)
        names = self.order or [*self.inputs, *self.options.get("constants", {}), *self.fixed]
        outputs = [f"y{k}" for k in range(self.n_outputs)]
        nodes.append(helper.make_node(self.op, names, outputs, **self.attrs))
        return nodes, outputs[self.output_index]

    def run(self):
        nodes, output = self.nodes()
        opts = self.options
        if not self.ort_only:
            check_graph(nodes, self.inputs, output, **opts)
        if self.ort_only or self.ort_jacobian:
            check_linear_ort(nodes, self.inputs, output, opset=opts.get("opset", 17),
                             constants=opts.get("constants"),
                             dynamic=opts.get("dynamic", False))  # fmt: skip


CASES: list[Case] = []
add = CASES.append

# -- Reshape, Flatten, Squeeze, Unsqueeze: reshape back ----------------------------------------
for opset in (9, 13):
    for dyn in (False, True):
        tag = f"{opset}{'-dyn' if dyn else ''}"
        add(Case("Reshape", {"x": r(2, 3, 4)}, constants={"shape": ints(0, -1)}, opset=opset,
                 dynamic=dyn, id=f"Reshape-0,-1-{tag}"))  # fmt: skip
        add(Case("Flatten", {"x": r(2, 3, 2)}, {"axis": 2}, opset=opset, dynamic=dyn,
                 id=f"Flatten-2-{tag}"))  # fmt: skip
add(Case("Reshape", {"x": r(2, 3, 4)}, constants={"shape": ints(4, 0, -1)}, id="Reshape-4,0,-1"))
add(Case("Flatten", {"x": r(2, 3, 2)}, {"axis": 0}, opset=9, id="Flatten-0"))
add(Case("Squeeze", {"x": r(3, 1, 4)}, {"axes": [1]}, opset=9, id="Squeeze-attr-9"))
add(Case("Squeeze", {"x": r(3, 1, 4)}, {"axes": [-2]}, opset=11, dynamic=True, id="Squeeze-neg-11"))
add(Case("Squeeze", {"x": r(3, 1, 4, 1)}, constants={"axes": ints(-1, 1)}, opset=13,
         dynamic=True, id="Squeeze-input-13-dyn"))  # fmt: skip
add(Case("Squeeze", {"x": r(1, 3, 1, 2)}, opset=13, id="Squeeze-noaxes-13"))
add(Case("Squeeze", {"x": r(1, 3, 1, 2)}, opset=9, id="Squeeze-noaxes-9"))
add(Case("Unsqueeze", {"x": r(3, 4)}, {"axes": [0, 3]}, opset=9, id="Unsqueeze-attr-9"))
add(Case("Unsqueeze", {"x": r(3, 4)}, {"axes": [-1, 1]}, opset=11, dynamic=True,
         id="Unsqueeze-neg-11-dyn"))  # fmt: skip
add(Case("Unsqueeze", {"x": r(3, 4)}, constants={"axes": ints(-1, 1)}, opset=13, dynamic=True,
         id="Unsqueeze-input-13-dyn"))  # fmt: skip


@pytest.mark.parametrize(("dims", "shape_ops"), [(["N", 3, 4], 0), (["N", "S", 4], 1)])
def test_a_reshape_goes_back_to_a_known_shape_without_a_shape_op(dims, shape_ops):
    """Back to x's shape as a constant [-1, ...] where only the batch is unknown (a ViT-S/16:
    206 Shape ops fewer), and by x's runtime Shape where more is."""
    x = helper.make_tensor_value_info("x", 1, dims)
    node = helper.make_node("Reshape", ["x", "shape"], ["y"])
    graph = helper.make_graph([node], "g", [x], [helper.make_tensor_value_info("y", 1, None)],
                              [numpy_helper.from_array(np.array([0, -1]), "shape")])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    grad = build_gradient_model(model, "x", "y")
    assert [n.op_type for n in grad.graph.node].count("Shape") == shape_ops


# -- Transpose -----------------------------------------------------------------------------
add(Case("Transpose", {"x": r(2, 3, 4)}, {"perm": [2, 0, 1]}, opset=9, id="Transpose-perm-9"))
add(Case("Transpose", {"x": r(2, 3, 4)}, opset=13, id="Transpose-default-13"))
add(Case("Transpose", {"x": r(2, 3, 2, 2)}, {"perm": [0, 3, 1, 2]}, dynamic=True,
         id="Transpose-perm-dyn"))  # fmt: skip

# -- Concat and Split ----------------------------------------------------------------------
three = {"a": r(2, 3), "b": r(2, 1), "c": r(2, 4)}
add(Case("Concat", three, {"axis": 1}, opset=9, id="Concat-1-9"))
add(Case("Concat", three, {"axis": -1}, opset=13, id="Concat-neg-13"))
add(Case("Concat", three, {"axis": 1}, opset=9, dynamic=True, id="Concat-1-9-dyn"))
add(Case("Concat", {"a": r(2, 3), "b": r(1, 3)}, {"axis": 0}, opset=13, dynamic=True,
         id="Concat-dynamic-axis-13"))  # fmt: skip
add(Case("Concat", {"a": r(2, 3), "b": r(3, 3)}, {"axis": -2}, opset=11, dynamic=True,
         wrt=["b"], id="Concat-dynamic-axis-11-wrt-b"))  # fmt: skip

add(NodeCase("Split", {"x": r(2, 6)}, {"axis": 1, "split": [1, 2, 3]}, n_outputs=3,
             output_index=1, opset=9, id="Split-attr-9"))  # fmt: skip
add(NodeCase("Split", {"x": r(3, 3)}, {"axis": -1}, fixed={"split": ints(2, 1)}, n_outputs=2,
             opset=13, dynamic=True, id="Split-input-13-dyn"))  # fmt: skip
add(NodeCase("Split", {"x": r(7, 2)}, {"axis": 0, "num_outputs": 3}, n_outputs=3,
             output_index=2, opset=18, id="Split-num_outputs-18"))  # fmt: skip
add(NodeCase("Split", {"x": r(2, 4)}, {"axis": 1}, n_outputs=2, output_index=1, opset=11,
             dynamic=True, id="Split-equal-11-dyn"))  # fmt: skip

# -- Slice ---------------------------------------------------------------------------------
x456 = r(4, 5, 6)
add(Case("Slice", {"x": x456}, {"starts": [1, -4], "ends": [3, 100], "axes": [0, 2]}, opset=9,
         id="Slice-attrs-9"))  # fmt: skip
add(Case("Slice", {"x": x456}, {"starts": [0, 1], "ends": [2, -1]}, opset=9,
         id="Slice-attrs-noaxes-9"))  # fmt: skip
add(Case("Slice", {"x": x456}, {"starts": [-3], "ends": [-1], "axes": [-1]}, opset=9,
         dynamic=True, id="Slice-attrs-9-dyn"))  # fmt: skip
add(Case("Slice", {"x": x456}, opset=10, id="Slice-steps-10",
         constants={"starts": ints(-1, 0), "ends": ints(-5, 10), "axes": ints(0, 2),
                    "steps": ints(-2, 3)}))  # fmt: skip
add(NodeCase("Slice", {"x": x456}, opset=13, id="Slice-noaxes-steps-13",
             fixed={"starts": ints(3, 1, -1), "ends": ints(-INT_MAX, 5, 0),
                    "steps": ints(-1, 2, -2)},
             order=["x", "starts", "ends", "", "steps"]))  # fmt: skip
add(Case("Slice", {"x": x456}, opset=13, dynamic=True, id="Slice-reverse-13-dyn",
         constants={"starts": ints(-1), "ends": ints(-INT_MAX), "axes": ints(-2),
                    "steps": ints(-1)}))  # fmt: skip
add(Case("Slice", {"x": x456}, opset=11, dynamic=True, id="Slice-dynamic-axis-11",
         constants={"starts": ints(1, 1), "ends": ints(INT_MAX, 4),
                    "axes": ints(0, 1)}))  # fmt: skip
add(NodeCase("Slice", {"x": x456}, opset=13, id="Slice-runtime-bounds-13",
             fixed={"starts": ints(-3, 0), "ends": ints(0, 5), "axes": ints(1, 2),
                    "steps": ints(-1, 2)}, runtime={"starts"}))  # fmt: skip
add(Case("Slice", {"x": x456}, opset=13, id="Slice-clamped-13",
         constants={"starts": ints(-100, 2), "ends": ints(100, 1), "axes": ints(2, 1),
                    "steps": ints(1, -3)}))  # fmt: skip

# -- Gather: repeated and negative indices accumulate ----------------------------------------
repeats = ints(0, -1, 2, 0, 4, 4).reshape(3, 2)
for opset in (9, 13, 16, 18):
    add(Case("Gather", {"x": r(5, 3)}, constants={"idx": repeats}, opset=opset,
             id=f"Gather-repeats-{opset}"))  # fmt: skip
for opset in (11, 16):
    add(Case("Gather", {"x": r(2, 5, 3)}, {"axis": 1}, constants={"idx": ints(3, -2, 3)},
             opset=opset, dynamic=True, id=f"Gather-axis1-{opset}-dyn"))  # fmt: skip
    add(NodeCase("Gather", {"x": r(2, 3, 5)}, {"axis": -1}, fixed={"idx": repeats},
                 runtime={"idx"}, opset=opset, dynamic=True,
                 id=f"Gather-runtime-idx-{opset}"))  # fmt: skip
    add(Case("Gather", {"x": r(4, 3)}, constants={"idx": ints(2, -1, 2)}, opset=opset,
             dynamic=True, id=f"Gather-dynamic-axis-{opset}"))  # fmt: skip
add(Case("Gather", {"x": r(3, 4)}, {"axis": -1}, constants={"idx": np.asarray(2)}, opset=13,
         id="Gather-scalar-13"))  # fmt: skip
add(NodeCase("Gather", {"x": r(3, 4)}, {"axis": 1}, fixed={"idx": np.asarray([[1, -1]], np.int32)},
             runtime={"idx"}, opset=9, id="Gather-runtime-int32-9"))  # fmt: skip
add(Case("Gather", {"x": r(3, 5, 2)}, {"axis": 1}, constants={"idx": repeats}, opset=13,
         dynamic=True, id="Gather-2d-idx-13-dyn"))  # fmt: skip


# -- TopK: Values' gradient scattered back to Indices (k an attribute before opset 10) ---------
def distinct(*shape):
    """Values 0.05 apart in random order: no ties for TopK to break, none near for FD."""
    n = int(np.prod(shape))
    return (rng.permutation(n) * 0.05 - n * 0.025).reshape(shape)


add(NodeCase("TopK", {"x": distinct(3, 5)}, {"k": 2}, n_outputs=2, opset=9,
             id="TopK-attr-9"))  # fmt: skip
add(NodeCase("TopK", {"x": distinct(4, 3)}, {"k": 3, "axis": 0}, n_outputs=2, opset=9,
             dynamic=False, id="TopK-axis0-9"))  # fmt: skip
add(NodeCase("TopK", {"x": distinct(2, 5, 3)}, {"axis": -2}, fixed={"k": ints(2)},
             n_outputs=2, opset=10, dynamic=True, id="TopK-input-10-dyn"))  # fmt: skip
for opset in (11, 24):
    # unsorted: ORT and the reference return the values in different orders, so one seed
    # means different things to each; FD checks the reference alone
    for largest, sorted_ in [(1, 1), (0, 1), (1, 0)]:
        add(NodeCase("TopK", {"x": distinct(3, 6)}, {"largest": largest, "sorted": sorted_},
                     fixed={"k": ints(4)}, n_outputs=2, opset=opset, check_ort=bool(sorted_),
                     id=f"TopK-largest{largest}-sorted{sorted_}-{opset}"))  # fmt: skip
    add(NodeCase("TopK", {"x": distinct(2, 3, 4)}, {"axis": 1}, fixed={"k": ints(3)},
                 runtime={"k"}, n_outputs=2, opset=opset, dynamic=True,
                 id=f"TopK-all-runtime-k-{opset}"))  # fmt: skip

# -- GatherND: ScatterND of GO, repeats added (opset 16+), batch_dims (12+) ---------------------
nd_unique = ints(0, 1, 2, -1, 1, 0).reshape(3, 2)  # x[4, 3, 2]: positions (0,1) (2,2) (1,0)
nd_repeats = ints(0, 1, 2, 0, 0, 1, -4, 1).reshape(2, 2, 2)  # (0,1) three times, (2,0)
for opset in (11, 13, 16):
    add(NodeCase("GatherND", {"x": r(4, 3, 2)}, fixed={"idx": nd_unique}, opset=opset,
                 id=f"GatherND-distinct-{opset}"))  # fmt: skip
for opset in (16, 18):
    add(NodeCase("GatherND", {"x": r(4, 3, 2)}, fixed={"idx": nd_repeats}, opset=opset,
                 id=f"GatherND-repeats-{opset}"))  # fmt: skip
    add(NodeCase("GatherND", {"x": r(4, 3, 2)}, fixed={"idx": nd_repeats}, runtime={"idx"},
                 opset=opset, dynamic=True, id=f"GatherND-runtime-{opset}-dyn"))  # fmt: skip
    add(NodeCase("GatherND", {"x": r(4, 3)}, fixed={"idx": ints(3, -1, 0, 2).reshape(2, 2, 1)},
                 runtime={"idx"}, opset=opset, id=f"GatherND-rows-runtime-{opset}"))  # fmt: skip
# batch_dims: x[2, 3, 4], idx[2, 2, 1] picks rows of each batch entry (repeats in the second)
nd_batch = ints(2, -1, 1, 1).reshape(2, 2, 1)
add(NodeCase("GatherND", {"x": r(2, 3, 4)}, {"batch_dims": 1}, fixed={"idx": ints(2, 0, 1, 0)
             .reshape(2, 2, 1)}, opset=12, id="GatherND-batch-distinct-12"))  # fmt: skip
for opset in (16, 18):
    add(NodeCase("GatherND", {"x": r(2, 3, 4)}, {"batch_dims": 1}, fixed={"idx": nd_batch},
                 opset=opset, id=f"GatherND-batch-repeats-{opset}"))  # fmt: skip
    add(NodeCase("GatherND", {"x": r(2, 3, 4)}, {"batch_dims": 1}, fixed={"idx": nd_batch},
                 runtime={"idx"}, opset=opset, id=f"GatherND-batch-runtime-{opset}"))  # fmt: skip
    add(NodeCase("GatherND", {"x": r(2, 3, 4, 2)}, {"batch_dims": 2},
                 fixed={"idx": ints(0, 3, 1, 1, 2, 0, 3, 3, 0, 0, 1, 2).reshape(2, 3, 2, 1)},
                 runtime={"idx"}, opset=opset, id=f"GatherND-batch2-runtime-{opset}"))  # fmt: skip

# -- ScatterElements / Scatter / ScatterND: data zeroed where written, updates read back --------
se_unique = ints(1, 0, 2, -1, 2, 0).reshape(2, 3)  # along axis 0 of x[3, 3]: distinct
se_repeats = ints(1, 0, 2, 1, -3, 2).reshape(2, 3)  # column 0 and 2 written twice
for opset in (11, 13, 18):
    for name, idx in (("distinct", se_unique), ("repeats", se_repeats)):
        add(NodeCase("ScatterElements", {"x": r(3, 3), "u": r(2, 3)}, fixed={"idx": idx},
                     order=["x", "idx", "u"], opset=opset,
                     id=f"ScatterElements-{name}-{opset}"))  # fmt: skip
    add(NodeCase("ScatterElements", {"x": r(2, 4), "u": r(2, 3)}, {"axis": -1},
                 fixed={"idx": ints(3, 0, 3, 1, 1, -2).reshape(2, 3)}, runtime={"idx"},
                 order=["x", "idx", "u"], opset=opset, dynamic=True,
                 id=f"ScatterElements-runtime-axis-1-{opset}"))  # fmt: skip
for opset in (16, 18):
    add(NodeCase("ScatterElements", {"x": r(3, 3), "u": r(2, 3)}, {"reduction": "add"},
                 fixed={"idx": se_repeats}, order=["x", "idx", "u"], opset=opset,
                 id=f"ScatterElements-add-{opset}"))  # fmt: skip
for opset in (9, 10):  # Scatter, ScatterElements' name before 11: no GatherElements for updates
    add(NodeCase("Scatter", {"x": r(3, 3), "u": r(2, 3)}, fixed={"idx": se_repeats},
                 order=["x", "idx", "u"], wrt=["x"], opset=opset,
                 id=f"Scatter-data-{opset}"))  # fmt: skip

snd_unique = ints(2, 0, -1).reshape(3, 1)  # rows of x[4, 3]
snd_repeats = ints(2, 0, 2, -2).reshape(2, 2, 1)  # row 2 written twice (as 2 and -2)
snd_cells = ints(0, 1, 3, 2, 0, 1).reshape(3, 2)  # cells, (0, 1) twice
for opset in (11, 13, 18):
    add(NodeCase("ScatterND", {"x": r(4, 3), "u": r(3, 3)}, fixed={"idx": snd_unique},
                 order=["x", "idx", "u"], opset=opset, id=f"ScatterND-rows-{opset}"))  # fmt: skip
    add(NodeCase("ScatterND", {"x": r(4, 3), "u": r(2, 2, 3)}, fixed={"idx": snd_repeats},
                 order=["x", "idx", "u"], opset=opset,
                 id=f"ScatterND-repeats-{opset}"))  # fmt: skip
    add(NodeCase("ScatterND", {"x": r(4, 3), "u": r(3)}, fixed={"idx": snd_cells},
                 runtime={"idx"}, order=["x", "idx", "u"], opset=opset,
                 id=f"ScatterND-cells-runtime-{opset}"))  # fmt: skip
for opset in (16, 18):
    add(NodeCase("ScatterND", {"x": r(4, 3), "u": r(3)}, {"reduction": "add"},
                 fixed={"idx": snd_cells}, order=["x", "idx", "u"], opset=opset,
                 id=f"ScatterND-add-{opset}"))  # fmt: skip

# -- CumSum (11+): axis an input (int32 or int64, negative too), exclusive and reverse -------
for opset in (11, 14):
    for exclusive in (0, 1):
        for reverse in (0, 1):
            add(NodeCase("CumSum", {"x": r(3, 4, 2)}, {"exclusive": exclusive, "reverse": reverse},
                         fixed={"axis": np.asarray(1, np.int64)}, opset=opset,
                         id=f"CumSum-ex{exclusive}-rev{reverse}-{opset}"))  # fmt: skip
    add(NodeCase("CumSum", {"x": r(3, 5)}, fixed={"axis": np.asarray(-2, np.int32)}, opset=opset,
                 dynamic=True, id=f"CumSum-int32-negative-{opset}-dyn"))  # fmt: skip
    add(NodeCase("CumSum", {"x": r(2, 5)}, {"reverse": 1}, fixed={"axis": np.asarray(-1)},
                 runtime={"axis"}, opset=opset, id=f"CumSum-runtime-axis-{opset}"))  # fmt: skip

# -- CumProd (26+): exclusive and reverse, a negative axis, zeros in x (no division) ---------
for exclusive in (0, 1):
    for reverse in (0, 1):
        add(NodeCase("CumProd", {"x": r(3, 4, 2)}, {"exclusive": exclusive, "reverse": reverse},
                     fixed={"axis": np.asarray(1, np.int64)}, opset=26,
                     id=f"CumProd-ex{exclusive}-rev{reverse}"))  # fmt: skip
ZEROS = r(2, 5)
ZEROS[0, 1] = ZEROS[1, 1] = ZEROS[1, 3] = 0.0  # one zero in a line, two in another
add(NodeCase("CumProd", {"x": ZEROS}, fixed={"axis": np.asarray(-1, np.int32)}, opset=26,
             id="CumProd-zeros-negative-axis"))  # fmt: skip
add(NodeCase("CumProd", {"x": ZEROS}, {"reverse": 1, "exclusive": 1},
             fixed={"axis": np.asarray(1, np.int64)}, opset=26, dynamic=True,
             id="CumProd-zeros-reverse-exclusive-dyn"))  # fmt: skip

# -- Compress (11+): along an axis (negative too), flattened, a condition shorter than the
# axis, computed at run time ----------------------------------------------------------------
MASK = np.array([True, False, True, True])
add(NodeCase("Compress", {"x": r(3, 4, 2)}, {"axis": 1}, fixed={"c": MASK}, opset=11,
             id="Compress-axis1"))  # fmt: skip
add(NodeCase("Compress", {"x": r(4, 3)}, {"axis": -2}, fixed={"c": MASK[:3]}, opset=11,
             id="Compress-short-condition-negative-axis"))  # fmt: skip
add(NodeCase("Compress", {"x": r(2, 3)}, fixed={"c": np.array([0, 1, 1, 0, 1], bool)},
             runtime={"c"}, opset=13, id="Compress-flat-runtime"))  # fmt: skip
add(NodeCase("Compress", {"x": r(3, 4)}, {"axis": 1}, fixed={"c": MASK}, opset=13, dynamic=True,
             id="Compress-dyn"))  # fmt: skip

# -- ReverseSequence (10+): time axis 0 or 1, lengths constant or computed at run time ---------
for batch_axis, time_axis, shape in ((1, 0, (4, 3, 2)), (0, 1, (3, 4, 2))):
    add(NodeCase("ReverseSequence", {"x": r(*shape)}, {"batch_axis": batch_axis,
                 "time_axis": time_axis}, fixed={"lens": ints(4, 1, 3)}, opset=10,
                 id=f"ReverseSequence-time{time_axis}"))  # fmt: skip
add(NodeCase("ReverseSequence", {"x": r(4, 3)}, fixed={"lens": ints(2, 4, 0)}, runtime={"lens"},
             opset=22, dynamic=True, id="ReverseSequence-runtime-lens-dyn"))  # fmt: skip

# -- CenterCropPad (18+): crop and pad by odd and even amounts, all axes or some -----------------
add(NodeCase("CenterCropPad", {"x": r(3, 6, 5)}, fixed={"shape": ints(4, 3, 8)}, opset=18,
             id="CenterCropPad-all-axes"))  # fmt: skip
add(NodeCase("CenterCropPad", {"x": r(2, 7, 4)}, {"axes": [-2, 2]}, fixed={"shape": ints(2, 7)},
             opset=18, id="CenterCropPad-axes"))  # fmt: skip
add(NodeCase("CenterCropPad", {"x": r(2, 5, 6)}, {"axes": [1, 2]}, fixed={"shape": ints(8, 3)},
             opset=18, dynamic=True, id="CenterCropPad-dyn"))  # fmt: skip

# -- Trilu (14+): the same mask on GO; k absent, constant, negative, computed at run time ----
for opset in (14, 22):
    for upper in (0, 1):
        add(NodeCase("Trilu", {"x": r(2, 3, 5)}, {"upper": upper}, opset=opset,
                     id=f"Trilu-upper{upper}-{opset}"))  # fmt: skip
        add(NodeCase("Trilu", {"x": r(4, 3)}, {"upper": upper},
                     fixed={"k": np.asarray(-1, np.int64)}, opset=opset, dynamic=True,
                     id=f"Trilu-upper{upper}-k-1-{opset}"))  # fmt: skip
    add(NodeCase("Trilu", {"x": r(2, 4, 4)}, fixed={"k": np.asarray(2)}, runtime={"k"},
                 opset=opset, id=f"Trilu-runtime-k-{opset}"))  # fmt: skip

# -- GatherElements: repeats accumulate, idx may be shorter than x on other axes ---------------
idx_ge = ints(0, 2, -1, 2, 0, 0, 1, -3, 2, 2, 1, 0).reshape(3, 4)  # into x[3, 5] along axis 0
idx_ge1 = ints(4, 0, 4, -1, 1, 1, 2, 2).reshape(2, 4)  # into x[3, 5] along axis 1 (rows 0..1)
for opset in (11, 13, 16, 18):
    add(Case("GatherElements", {"x": r(3, 5)}, {"axis": 0}, constants={"idx": idx_ge},
             opset=opset, id=f"GatherElements-axis0-{opset}"))  # fmt: skip
    add(Case("GatherElements", {"x": r(3, 5)}, {"axis": -1}, constants={"idx": idx_ge1},
             opset=opset, dynamic=True, id=f"GatherElements-short-axis1-{opset}-dyn"))  # fmt: skip
    add(NodeCase("GatherElements", {"x": r(2, 3, 4)}, {"axis": 1}, runtime={"idx"},
                 fixed={"idx": np.asarray(rng.integers(-3, 3, size=(2, 5, 4)), np.int32)},
                 opset=opset, id=f"GatherElements-runtime-int32-{opset}"))  # fmt: skip
add(Case("GatherElements", {"x": r(2, 3, 4)}, {"axis": 2}, opset=21, dynamic=True,
         constants={"idx": ints(*rng.integers(0, 4, size=12)).reshape(2, 3, 2)},
         id="GatherElements-last-axis-21-dyn"))  # fmt: skip

# -- Range: d start = sum GO, d delta = sum i GO ---------------------------------------------
for opset in (11, 21):
    add(Case("Range", {"start": np.asarray(0.3), "limit": np.asarray(5.1),
                       "delta": np.asarray(0.7)}, opset=opset, id=f"Range-{opset}"))  # fmt: skip
add(Case("Range", {"start": np.asarray(2.5), "delta": np.asarray(-0.4)},
         constants={"limit": np.asarray(-1.0)}, opset=13, id="Range-descending-13"))  # fmt: skip

# -- Pad -----------------------------------------------------------------------------------
x234 = r(2, 3, 4)
pads = [1, 0, 2, 0, 2, 1]
for mode in ("constant", "edge", "reflect"):
    add(Case("Pad", {"x": x234}, {"pads": pads, "mode": mode, "value": 0.5}, opset=9,
             id=f"Pad-{mode}-9"))  # fmt: skip
    add(Case("Pad", {"x": x234}, {"mode": mode}, opset=11, id=f"Pad-{mode}-11",
             constants={"pads": ints(*pads), "value": np.asarray(0.5)}))  # fmt: skip
    add(Case("Pad", {"x": x234}, {"mode": mode}, opset=13, dynamic=True, id=f"Pad-{mode}-13-dyn",
             constants={"pads": ints(0, 2, 1, 0, 1, 3)}))  # fmt: skip
add(NodeCase("Pad", {"x": x234}, {"mode": "reflect"}, opset=18, id="Pad-axes-18",
             fixed={"pads": ints(1, 2, 2, 0), "axes": ints(-1, 1)},
             order=["x", "pads", "", "axes"]))  # fmt: skip
add(Case("Pad", {"x": x234}, {"mode": "wrap"}, opset=19, id="Pad-wrap-19",
         constants={"pads": ints(0, 2, 3, 1, 0, 4)}))  # fmt: skip
# borders longer than the axis (edge: every copy from one end) and a long axis whose borders
# are reversed through [border, span] matrices, not one [n + pads, n]
add(Case("Pad", {"x": x234}, {"mode": "edge"}, opset=13, id="Pad-edge-long-borders-13",
         constants={"pads": ints(0, 5, 0, 0, 2, 7)}))  # fmt: skip
add(Case("Pad", {"x": r(2, 300)}, {"mode": "reflect"}, opset=13, id="Pad-reflect-long-axis-13",
         constants={"pads": ints(0, 7, 0, 299)}))  # fmt: skip
add(Case("Pad", {"x": x234}, {"pads": [0, 0, 0, 0, 0, 0]}, opset=9, id="Pad-zero-9"))
# negative pads crop: np.pad (the reference) rejects them, so ORT checks these
add(NodeCase("Pad", {"x": x234}, {"pads": [-1, 1, 0, 0, -2, 2]}, opset=9, ort_only=True,
             id="Pad-negative-9"))  # fmt: skip
add(NodeCase("Pad", {"x": x234}, fixed={"pads": ints(0, -1, 2, 1, 1, -3)}, opset=13,
             ort_only=True, dynamic=True, id="Pad-negative-13-dyn"))  # fmt: skip
add(NodeCase("Pad", {"x": x234}, fixed={"pads": ints(0, -1, 2, 1, 1, -3)}, runtime={"pads"},
             opset=13, ort_only=True, id="Pad-runtime-pads-13"))  # fmt: skip

# -- Expand and Tile -----------------------------------------------------------------------
for opset in (9, 13):
    add(Case("Expand", {"x": r(3, 1)}, constants={"shape": ints(2, 3, 4)}, opset=opset,
             id=f"Expand-{opset}"))  # fmt: skip
    add(Case("Expand", {"x": r(2, 1, 4)}, constants={"shape": ints(1, 3, 1)}, opset=opset,
             dynamic=True, id=f"Expand-{opset}-dyn"))  # fmt: skip
    add(Case("Tile", {"x": r(2, 3)}, constants={"reps": ints(2, 3)}, opset=opset,
             id=f"Tile-{opset}"))  # fmt: skip
    add(Case("Tile", {"x": r(2, 1, 3)}, constants={"reps": ints(2, 3, 1)}, opset=opset,
             dynamic=True, id=f"Tile-{opset}-dyn"))  # fmt: skip
add(NodeCase("Expand", {"x": r(2, 1, 4)}, fixed={"shape": ints(3, 1)}, runtime={"shape"},
             opset=13, dynamic=True, id="Expand-runtime-shape-13-dyn"))  # fmt: skip
add(NodeCase("Tile", {"x": r(2, 3)}, fixed={"reps": ints(3, 2)}, runtime={"reps"}, opset=13,
             id="Tile-runtime-reps-13"))  # fmt: skip

# -- DepthToSpace and SpaceToDepth ---------------------------------------------------------
for opset in (9, 13):
    add(Case("DepthToSpace", {"x": r(1, 8, 2, 3)}, {"blocksize": 2}, opset=opset,
             id=f"DepthToSpace-DCR-{opset}"))  # fmt: skip
    add(Case("SpaceToDepth", {"x": r(2, 2, 4, 6)}, {"blocksize": 2}, opset=opset,
             dynamic=opset == 13, id=f"SpaceToDepth-{opset}"))  # fmt: skip
add(Case("DepthToSpace", {"x": r(2, 8, 2, 3)}, {"blocksize": 2, "mode": "CRD"}, opset=13,
         dynamic=True, id="DepthToSpace-CRD-13-dyn"))  # fmt: skip
add(Case("DepthToSpace", {"x": r(1, 9, 2, 2)}, {"blocksize": 3, "mode": "DCR"}, opset=13,
         dynamic=True, id="DepthToSpace-DCR-13-dyn"))  # fmt: skip


# -- Resize and Upsample: per-axis interpolation matrices ------------------------------------
def resize(x, attrs, opset, id, roi=None, scales=None, sizes=None, **options):
    """A Resize case at opset >= 11 with roi/scales/sizes as Constants ("" where absent)."""
    fixed, order = {}, ["x"]
    for name, value in (("roi", roi), ("scales", scales), ("sizes", sizes)):
        if value is None and (opset >= 13 or name == "sizes"):
            order.append("")
            continue
        fixed[name] = floats() if value is None else value
        order.append(name)
    while order[-1] == "":
        order.pop()
    options.setdefault("ort_jacobian", True)
    return NodeCase("Resize", {"x": x}, attrs, id, fixed=fixed, order=order, opset=opset,
                    **options)  # fmt: skip


x1234 = r(1, 2, 3, 4)
add(resize(x1234, {"mode": "linear"}, 11, "Resize-linear-11", scales=floats(1, 1, 2, 1.5)))
add(resize(x1234, {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                   "nearest_mode": "floor"}, 11, "Resize-nearest-sizes-11",
           sizes=ints(1, 2, 5, 3)))  # fmt: skip
add(resize(x1234, {"mode": "linear", "coordinate_transformation_mode": "align_corners"}, 11,
           "Resize-align-corners-11", sizes=ints(1, 2, 2, 7)))  # fmt: skip
add(resize(x1234, {"mode": "cubic"}, 13, "Resize-cubic-13", sizes=ints(1, 2, 5, 6)))
add(resize(x1234, {"mode": "cubic", "exclude_outside": 1, "cubic_coeff_a": -0.5}, 13,
           "Resize-cubic-exclude-13", scales=floats(1, 1, 0.7, 1.8)))  # fmt: skip
add(resize(x1234, {"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize",
                   "extrapolation_value": 0.7}, 13, "Resize-crop-13",
           roi=floats(0, 0, 0.2, -0.1, 1, 1, 0.9, 1.2), sizes=ints(1, 2, 4, 5)))  # fmt: skip
add(resize(x1234, {"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"},
           13, "Resize-pytorch-13", sizes=ints(1, 2, 1, 6)))  # fmt: skip
add(resize(x1234, {"mode": "nearest", "nearest_mode": "round_prefer_ceil"}, 13,
           "Resize-nearest-down-13", scales=floats(1, 1, 0.67, 0.5)))  # fmt: skip
add(resize(r(1, 2, 5, 4), {"mode": "linear", "antialias": 1, "axes": [2, 3]}, 18,
           "Resize-antialias-axes-18", scales=floats(0.6, 1.5)))  # fmt: skip
add(resize(x1234, {"mode": "nearest", "axes": [3]}, 18, "Resize-axes-sizes-18",
           sizes=ints(7)))  # fmt: skip
# onnx's reference Resize mishandles negative axes: ORT alone checks this one
add(resize(x1234, {"mode": "linear", "axes": [-1, -2]}, 18, "Resize-negative-axes-18",
           scales=floats(0.5, 2), ort_only=True))  # fmt: skip
add(resize(x1234, {"mode": "linear", "coordinate_transformation_mode": "half_pixel_symmetric"},
           19, "Resize-symmetric-19", scales=floats(1, 1, 1.7, 0.8)))  # fmt: skip
# scales whose output length n * scale is no whole number, where the coordinates depend on
# that length: onnx's reference takes it unrounded, ONNX Runtime (and torch) its floor, so
# ORT alone checks these (the reference's forward is another function)
ALIGNED = {"coordinate_transformation_mode": "align_corners"}
for mode in ("linear", "cubic", "nearest"):
    add(resize(r(1, 2, 5, 9), {"mode": mode, **ALIGNED}, 13, f"Resize-aligned-scales-{mode}-13",
               scales=floats(1, 1, 1.7, 0.75), ort_only=True))  # fmt: skip
add(resize(r(1, 2, 5, 9), {"mode": "linear", "antialias": 1, **ALIGNED}, 18,
           "Resize-aligned-antialias-18", scales=floats(1, 1, 1.7, 0.75),
           ort_only=True))  # fmt: skip
add(resize(r(1, 2, 3, 7), {"mode": "cubic", "coordinate_transformation_mode":
                           "half_pixel_symmetric"}, 19, "Resize-symmetric-cubic-19",
           scales=floats(1, 1, 0.4, 1.3), ort_only=True))  # fmt: skip
add(resize(r(1, 2, 3, 4), {"mode": "linear", "coordinate_transformation_mode":
                           "pytorch_half_pixel"}, 13, "Resize-pytorch-to-one-13",
           scales=floats(1, 1, 0.4, 1.0), ort_only=True))  # fmt: skip
add(resize(r(2, 2, 3, 3), {"mode": "linear"}, 13, "Resize-13-dyn", scales=floats(1, 1, 2, 2),
           dynamic=True))  # fmt: skip
add(resize(r(2, 4, 3), {"mode": "linear"}, 13, "Resize-rank3-axis1-13-dyn",
           scales=floats(1, 1.5, 1), dynamic=True))  # fmt: skip
add(resize(r(3, 2, 2), {"mode": "linear"}, 13, "Resize-rank3-axis0-13", scales=floats(2, 1, 1)))
add(NodeCase("Resize", {"x": r(2, 2, 3, 3)}, {"mode": "linear"}, "Resize-runtime-sizes-13-dyn",
             pre=[helper.make_node("Shape", ["x"], ["shape"]),
                  helper.make_node("Slice", ["shape", "zero", "two"], ["nc"]),
                  helper.make_node("Concat", ["nc", "hw"], ["sizes"], axis=0)],
             fixed={"zero": ints(0), "two": ints(2), "hw": ints(5, 2)},
             order=["x", "", "", "sizes"], opset=13, dynamic=True, ort_jacobian=True))  # fmt: skip
# Resize-10 and Upsample-9: k / scale coordinates; onnx's reference cannot run most of them
for op, opset in (("Resize", 10), ("Upsample", 9)):
    add(NodeCase(op, {"x": x1234}, {"mode": "linear"}, fixed={"scales": floats(1, 1, 2, 1.5)},
                 opset=opset, ort_only=True, id=f"{op}-linear-{opset}"))  # fmt: skip
    add(NodeCase(op, {"x": x1234}, {"mode": "nearest"}, fixed={"scales": floats(1, 1, 2, 1.5)},
                 opset=opset, ort_only=True, dynamic=True,
                 id=f"{op}-nearest-{opset}-dyn"))  # fmt: skip
add(NodeCase("Resize", {"x": r(1, 2, 5, 5)}, {"mode": "nearest"},
             fixed={"scales": floats(1, 1, 0.6, 1.5)}, opset=10, ort_only=True,
             id="Resize-nearest-down-10"))  # fmt: skip
add(NodeCase("Resize", {"x": r(1, 2, 5, 4)}, {"mode": "linear"},
             fixed={"scales": floats(1, 1, 0.6, 1)}, opset=10, ort_only=True,
             id="Resize-linear-down-10"))  # fmt: skip
add(NodeCase("Upsample", {"x": x1234}, {"mode": "nearest"}, fixed={"scales": floats(1, 1, 2, 3)},
             opset=9, ort_jacobian=True, id="Upsample-nearest-int-9"))  # fmt: skip

# -- the newest opsets: one case per rule -----------------------------------------------------
for opset in (21, 23):
    add(Case("Reshape", {"x": r(2, 3, 2)}, constants={"shape": ints(0, -1)}, opset=opset,
             dynamic=True, id=f"Reshape-{opset}"))  # fmt: skip
    add(Case("Squeeze", {"x": r(2, 1, 3)}, constants={"axes": ints(1)}, opset=opset,
             id=f"Squeeze-{opset}"))  # fmt: skip
    add(Case("Unsqueeze", {"x": r(2, 3)}, constants={"axes": ints(-1)}, opset=opset,
             id=f"Unsqueeze-{opset}"))  # fmt: skip
    add(Case("Flatten", {"x": r(2, 3, 2)}, opset=opset, id=f"Flatten-{opset}"))
    add(Case("Transpose", {"x": r(2, 3, 2)}, opset=opset, dynamic=True, id=f"Transpose-{opset}"))
    add(Case("Concat", {"a": r(2, 3), "b": r(2, 2)}, {"axis": -1}, opset=opset, dynamic=True,
             id=f"Concat-{opset}"))  # fmt: skip
    add(NodeCase("Split", {"x": r(2, 5)}, {"axis": 1, "num_outputs": 2}, n_outputs=2,
                 opset=opset, id=f"Split-{opset}"))  # fmt: skip
    add(Case("Slice", {"x": x456}, opset=opset, dynamic=True, id=f"Slice-{opset}",
             constants={"starts": ints(-1, 1), "ends": ints(0, 5), "axes": ints(2, 1),
                        "steps": ints(-2, 3)}))  # fmt: skip
    add(Case("Gather", {"x": r(3, 5, 2)}, {"axis": 1}, constants={"idx": repeats}, opset=opset,
             dynamic=True, id=f"Gather-{opset}"))  # fmt: skip
    add(Case("Pad", {"x": x234}, {"mode": "reflect"}, opset=opset, dynamic=True,
             constants={"pads": ints(0, 1, 2, 0, 2, 1)}, id=f"Pad-{opset}"))  # fmt: skip
    add(Case("Expand", {"x": r(2, 1, 4)}, constants={"shape": ints(3, 1)}, opset=opset,
             dynamic=True, id=f"Expand-{opset}"))  # fmt: skip
    add(Case("Tile", {"x": r(2, 3)}, constants={"reps": ints(1, 2)}, opset=opset, dynamic=True,
             id=f"Tile-{opset}"))  # fmt: skip
    add(Case("DepthToSpace", {"x": r(2, 8, 2, 2)}, {"blocksize": 2, "mode": "CRD"}, opset=opset,
             dynamic=True, id=f"DepthToSpace-{opset}"))  # fmt: skip
    add(Case("SpaceToDepth", {"x": r(2, 2, 4, 2)}, {"blocksize": 2}, opset=opset, dynamic=True,
             id=f"SpaceToDepth-{opset}"))  # fmt: skip
    add(resize(r(2, 2, 3, 3), {"mode": "cubic"}, opset, f"Resize-{opset}",
               scales=floats(1, 1, 1.5, 2), dynamic=True))  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_rule(case):
    case.run()


def test_split_gradients_of_several_outputs_meet_zeros():
    """Two of three Split outputs carry gradient; the middle one gets zeros."""
    nodes = [
        helper.make_node("Split", ["x"], ["a", "b", "c"], axis=1),
        helper.make_node("Mul", ["a", "c"], ["y"]),
    ]
    check_graph(nodes, {"x": r(2, 6)}, "y", opset=11, dynamic=True)


def _blocked(nodes, inputs, output, opset, constants=None, dynamic=False):
    """What the rules refuse from static information alone (igcli may then probe shapes)."""
    model = make_model(nodes, inputs, output, opset, constants, dynamic)
    try:
        build_gradient_model(model, next(iter(inputs)), output)
    except UnsupportedOpsError as exc:
        return exc.ops
    return []


@pytest.mark.parametrize(
    "nodes, constants, opset, dynamic, reason",
    [
        ([helper.make_node("Concat", ["x", "x"], ["y"], axis=0)], {}, 9, True, "dynamic axis"),
        ([helper.make_node("Slice", ["x"], ["y"], starts=[1], ends=[3], axes=[0])], {}, 9, True,
         "opset 11"),
        ([helper.make_node("Identity", ["p"], ["q"]),
          helper.make_node("Pad", ["x", "q"], ["y"], mode="reflect")],
         {"p": ints(0, 1, 0, 1)}, 13, False, "runtime"),
        ([helper.make_node("Pad", ["x"], ["y"], mode="edge", pads=[0, -1, 0, 1])], {}, 9, False,
         "negative"),
        ([helper.make_node("Resize", ["x", "roi", "scales"], ["y"],
                           coordinate_transformation_mode="tf_half_pixel_for_nn")],
         {"roi": floats(), "scales": floats(1, 2)}, 11, False, "tf_half_pixel_for_nn"),
        ([helper.make_node("Identity", ["s"], ["t"]),
          helper.make_node("Expand", ["x", "t"], ["y"])],
         {"s": ints(2, 1, 1)}, 9, True, "Expand to a shape unknown"),
        ([helper.make_node("Resize", ["x", "", "scales"], ["y"])],
         {"scales": floats(2, 2)}, 13, True, "static sizes"),
        ([helper.make_node("GatherND", ["x", "i"], ["y"])],
         {"i": ints(1, 1).reshape(2, 1)}, 13, False, "repeat below opset 16"),
        ([helper.make_node("Identity", ["i0"], ["i"]),
          helper.make_node("GatherND", ["x", "i"], ["y"])],
         {"i0": ints(1, 2).reshape(2, 1)}, 15, False, "repeat below opset 16"),
        ([helper.make_node("ScatterElements", ["x", "i", "x"], ["y"], reduction="mul")],
         {"i": ints(0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2).reshape(3, 4)}, 16, False,
         "reduction mul"),
        ([helper.make_node("ScatterND", ["x", "i", "u"], ["y"], reduction="max")],
         {"i": ints(0, 1).reshape(2, 1), "u": r(2, 4).astype(np.float32)}, 18, False,
         "reduction max"),
    ],
)  # fmt: skip
def test_unsupported_configurations_block_with_a_reason(nodes, constants, opset, dynamic, reason):
    blocked = _blocked(nodes, {"x": r(3, 4).astype(np.float32)}, "y", opset, constants, dynamic)
    assert len(blocked) == 1 and reason in blocked[0], blocked


def test_resize_gradient_is_matmuls_for_nchw():
    """Bilinear 4-D resize of H and W differentiates into two MatMuls, no transposes."""
    case = resize(r(1, 2, 3, 4), {"mode": "linear"}, 13, "", scales=floats(1, 1, 2, 2))
    nodes, output = case.nodes()
    model = make_model(nodes, {"x": np.zeros((1, 2, 3, 4), np.float32)}, output, 13)
    grad_model = build_gradient_model(model, "x", output)
    ops = [n.op_type for n in grad_model.graph.node if n.name.startswith("igcli_grad/")]
    assert sorted(ops) == ["MatMul", "MatMul"], ops


# -- slices that tile a tensor: their gradients add up as one Concat ----------------------------
def _slices_model_nodes(bounds, axis):
    nodes, outs = [], []
    for k in range(len(bounds)):
        nodes.append(helper.make_node("Slice", ["x", f"s{k}", f"e{k}", "ax"], [f"p{k}"]))
        nodes.append(helper.make_node("Mul", [f"p{k}", f"w{k}"], [f"q{k}"]))
        outs.append(f"r{k}")
        nodes.append(helper.make_node("ReduceSum", [f"q{k}"], [f"r{k}"], keepdims=0))
    nodes.append(helper.make_node("Sum", outs, ["y"]))
    return nodes


@pytest.mark.parametrize(
    "bounds",
    [[(0, 2), (2, 5), (5, 8)], [(5, 8), (0, 2), (2, 5)], [(0, 3), (3, 8)],  # tile: Concat
     [(0, 2), (3, 8)], [(0, 4), (2, 8)], [(0, 8), (0, 8)]],  # gap, overlap, twice: Sum
)  # fmt: skip
def test_slices_that_tile_a_tensor(bounds):
    """The q, k, v pattern: a Concat where the slices tile the axis exactly, the Pads and Sum
    everywhere else; the gradient is checked against differences either way."""
    x = rng.uniform(-1, 1, (2, 8, 3))
    consts = {"ax": np.array([1])}
    for k, (lo, hi) in enumerate(bounds):
        consts.update({f"s{k}": np.array([lo]), f"e{k}": np.array([hi]),
                       f"w{k}": rng.uniform(-1, 1, (2, hi - lo, 3))})  # fmt: skip
    nodes = _slices_model_nodes(bounds, 1)
    check_graph(nodes, {"x": x}, "y", opset=17, constants=consts)
    model = make_model(nodes, {"x": x.astype(np.float32)}, "y", 17,
                       {k: (v.astype(np.float32) if v.dtype.kind == "f" else v)
                        for k, v in consts.items()})  # fmt: skip
    ops = [n.op_type for n in build_gradient_model(model, "x", "y").graph.node]
    tiles = sorted(bounds) in ([(0, 2), (2, 5), (5, 8)], [(0, 3), (3, 8)])
    assert ("Concat" in ops) == tiles, ops


def test_a_resize_too_long_for_its_matrix_has_no_rule_rather_than_gigabytes():
    """Resize's gradient builds a dense [n, out] interpolation matrix (and probes it with an
    eye(n) input): a 20,000-long audio axis doubled would take 3.2 GB and as much again."""
    from igcli.autodiff import blocking_ops
    from igcli.autodiff.rules_shape import RESIZE_MATRIX_MAX
    from tests.autodiff.checker import make_model

    n = 20000
    assert n * 2 * n > RESIZE_MATRIX_MAX
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear")
    model = make_model([node], {"x": np.zeros((1, 1, n))}, "y", 13,
                       {"scales": np.array([1, 1, 2], np.float32)}, False)  # fmt: skip
    (blocked,) = blocking_ops(model, "x", "y")
    assert blocked.startswith("Resize (") and "too large" in blocked
