"""A call's rows split over single-threaded Runs (ModelRunner.workers): the same values as one
Run, and rows that change each other's outputs still found and sent one per call."""

import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import igcli
from igcli.errors import ExitCode
from igcli.model import ModelRunner
from tests import models
from tests.test_cli import DIGIT_PNGS, DIGITS


def _save_xy(path, nodes, x_dims, y_dims, inits=(), opset=13) -> Path:
    """A float32 graph from input x to output y, saved at `path`."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, x_dims)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, y_dims)
    return models.save(models._model(nodes, [x], [y], inits, opset), path)


def test_split_rows_give_what_one_run_gives():
    session = igcli.Session(DIGITS, cache=False, threads=2)
    sample = session.load(DIGIT_PNGS[0])[0]
    graph = session.graph_for(sample.x)
    runner = graph.runner
    assert runner.workers == 2
    points = np.stack([sample.x * a for a in np.linspace(0, 1, 7)]).astype(np.float32)
    targets = np.arange(7) % 10  # a target per row: each part must keep its own
    split_out, split_grad = graph.run_with_gradients(points, targets)
    runner.workers = 1
    one_out, one_grad = graph.run_with_gradients(points, targets)
    np.testing.assert_allclose(split_out, one_out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(split_grad, one_grad, rtol=1e-5, atol=1e-6)


def coupled_rows(path):
    """y = W (x - mean of x over the batch): a row's output depends on the other rows."""
    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[0], keepdims=1),
        helper.make_node("Sub", ["x", "m"], ["c"]),
        helper.make_node("MatMul", ["c", "w"], ["y"]),
    ]
    return _save_xy(path, nodes, ["N", 4], ["N", 3], [onnx.numpy_helper.from_array(w, "w")])


def test_rows_that_change_each_other_go_one_per_call(tmp_path):
    warnings = []
    session = igcli.Session(coupled_rows(tmp_path / "c.onnx"), threads=2, warn=warnings.append)
    np.save(tmp_path / "x.npy", np.array([[0.3, -0.2, 0.5, 1.0]], dtype=np.float32))
    session.attribute(tmp_path / "x.npy", steps=8)
    runner = session.runner
    assert isinstance(runner, ModelRunner)
    assert runner.batch_size == 1 and runner.workers == 1
    assert any("change each other's outputs" in w for w in warnings)


def half_coupled_rows(path):
    """y = W tanh(x - mean(x over the batch) / 2): alone, a row gives W tanh(x / 2) (not a
    constant); in a batch, its output moves with the other rows."""
    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10 - 0.5
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[0], keepdims=1),
        helper.make_node("Mul", ["m", "half"], ["hm"]),
        helper.make_node("Sub", ["x", "hm"], ["c"]),
        helper.make_node("Tanh", ["c"], ["t"]),
        helper.make_node("MatMul", ["t", "w"], ["y"]),
    ]
    inits = [onnx.numpy_helper.from_array(w, "w"),
             onnx.numpy_helper.from_array(np.array(0.5, dtype=np.float32), "half")]  # fmt: skip
    return _save_xy(path, nodes, ["N", 4], ["N", 3], inits)


def test_the_self_check_takes_coupled_rows_one_per_call_too(tmp_path):
    """The self-check's differences come from the plain model: it must send its rows one
    per call as well, or its differences are of a batch, and a right graph fails."""
    warnings = []
    model = half_coupled_rows(tmp_path / "c.onnx")
    session = igcli.Session(model, threads=2, warn=warnings.append, cache=False)
    np.save(tmp_path / "x.npy", np.array([[0.3, -0.2, 0.5, 1.0]], dtype=np.float32))
    a = session.attribute(tmp_path / "x.npy", steps=16)
    assert any("change each other's outputs" in w for w in warnings)
    assert not any("self-check" in w for w in warnings), warnings
    assert a.gradient_source == "graph" and session.graph.check.verdict == "ok"
    assert a.rel_error < 1e-4
    fd = igcli.Session(model, threads=2, gradients="fd", cache=False)
    b = fd.attribute(tmp_path / "x.npy", steps=16)
    assert fd.runner.batch_size == 1 and b.rel_error < 1e-3
    np.testing.assert_allclose(b.attributions, a.attributions, rtol=1e-2, atol=1e-4)


def test_threads_go_to_rows_first_then_to_each_run():
    """Fewer rows per call than threads: the rest of the threads serve each run."""
    from pathlib import Path

    def runner(threads, rows, providers=None):
        return ModelRunner(None, Path("m.onnx"), "x", "y", threads=threads, batch_size=rows,
                           providers=providers)  # fmt: skip

    assert (runner(2, 64).workers, runner(2, 64)._intra_op()) == (2, 1)
    assert (runner(8, 2).workers, runner(8, 2)._intra_op()) == (2, 4)
    assert (runner(4, 1).workers, runner(4, 1)._intra_op()) == (1, 4)
    gpu = runner(4, 64, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert (gpu.workers, gpu._intra_op()) == (1, 4)


def test_slow_rows_go_to_runs_of_few_rows(tmp_path):
    """Rows a thread takes RUN_SECONDS or more for each run in Runs of one row (faster per
    row: the activations stay in cache), still two at a time; fast rows keep one Run per
    worker. A first call, before any row is timed, sends a row per worker first, a row per
    Run, to time them (its memory is new to the process). The outputs are the same either
    way."""
    from igcli import model as model_module
    from tests import models

    path = models.save(models.min_one_sum(), tmp_path / "m.onnx")
    runner = ModelRunner(onnx.load(path), path, "x", "y", threads=2, batch_size=16)
    sizes: list[int] = []
    _counting(runner, sizes)
    x = np.random.default_rng(0).standard_normal((6, 2)).astype(np.float32)
    first = runner.call(x, ["y"])[0]
    assert sizes[:2] == [1, 1] and sorted(sizes[2:]) == [3, 3]  # (fast: all done again)
    sizes.clear()
    np.testing.assert_array_equal(runner.call(x, ["y"])[0], first)
    assert sorted(sizes) == [3, 3]
    sizes.clear()
    runner._row_seconds[("y",)] = model_module.RUN_SECONDS * 1.5  # as if measured
    np.testing.assert_array_equal(runner.call(x, ["y"])[0], first)
    assert sizes == [1] * 6
    sizes.clear()
    runner._row_seconds[("y",)] = model_module.RUN_SECONDS / 2.5  # three rows take as long
    runner.call(x, ["y"])
    assert sorted(sizes) == [3, 3]
    assert runner._row_seconds[("y",)] < model_module.RUN_SECONDS  # measured by the call


def _counting(runner: ModelRunner, sizes: list[int], seconds_per_row: float = 0.0) -> None:
    """The runner's session, noting the rows of each Run (and taking `seconds_per_row`)."""
    real = runner.session

    class Counting:
        def run(self, outputs, feeds):
            sizes.append(len(feeds["x"]))
            time.sleep(seconds_per_row * len(feeds["x"]))
            return real.run(outputs, feeds)

    runner.session = Counting()


@pytest.mark.parametrize("threads", [1, 2])
def test_a_first_call_of_slow_rows_goes_a_row_per_run(tmp_path, threads):
    """The rows it timed (one per worker) are kept, and the rest go a row per Run as later
    calls send them: one Run after another with one worker."""
    from igcli import model as model_module

    path = models.save(models.min_one_sum(), tmp_path / "m.onnx")
    runner = ModelRunner(onnx.load(path), path, "x", "y", threads=threads, batch_size=16)
    sizes: list[int] = []
    _counting(runner, sizes, seconds_per_row=1.5 * model_module.RUN_SECONDS)
    x = np.random.default_rng(0).standard_normal((5, 2)).astype(np.float32)
    first = runner.call(x, ["y"])[0]
    assert sizes == [1] * 5
    sizes.clear()
    np.testing.assert_array_equal(runner.call(x, ["y"])[0], first)
    assert sizes == [1] * 5


def test_one_worker_keeps_fast_rows_in_one_run(tmp_path):
    """With one thread, fast rows stay one Run (after a first call's timed row), slow rows
    go a row per Run, and a model fixed at a batch of 4 gets its 4 rows together."""
    from igcli import model as model_module

    path = models.save(models.min_one_sum(), tmp_path / "m.onnx")
    runner = ModelRunner(onnx.load(path), path, "x", "y", threads=1, batch_size=16)
    assert runner.workers == 1
    sizes: list[int] = []
    _counting(runner, sizes)
    x = np.random.default_rng(0).standard_normal((6, 2)).astype(np.float32)
    first = runner.call(x, ["y"])[0]
    assert sizes == [1, 6]
    sizes.clear()
    np.testing.assert_array_equal(runner.call(x, ["y"])[0], first)
    assert sizes == [6]
    sizes.clear()
    runner._row_seconds[("y",)] = model_module.RUN_SECONDS * 1.5  # as if measured
    np.testing.assert_array_equal(runner.call(x, ["y"])[0], first)
    assert sizes == [1] * 6
    sizes.clear()
    runner.pad_to = 4  # (as _fix_batch sets it for a model exported at a batch of 4)
    runner._row_seconds.clear()
    runner.call(x[:3], ["y"])
    assert sizes == [4]


@pytest.mark.parametrize("threads, runs", [(2, [2, 2]), (1, [4])])
def test_the_memory_probe_measures_the_runs_later_calls_use(tmp_path, threads, runs):
    """rows_within measures what 3 more rows cost from calls of 1 and then 4 rows: the 4
    must end in the Runs later calls use (for fast rows, one per worker), not a row per Run
    as a first call's timed rows go."""
    path = models.save(models.min_one_sum(), tmp_path / "m.onnx")
    runner = ModelRunner(onnx.load(path), path, "x", "y", threads=threads, batch_size=16)
    sizes: list[int] = []
    _counting(runner, sizes)
    x = np.random.default_rng(0).standard_normal((4, 2)).astype(np.float32)
    runner.call(x[:1], ["y"])
    sizes.clear()
    runner.call(x, ["y"])
    assert sorted(sizes[threads:]) == runs
    sizes.clear()
    runner.call(x, ["y"])
    assert sorted(sizes) == runs


def test_gradcheck_sends_coupled_rows_one_per_call(tmp_path):
    """gradcheck's differences went through the graph in batches: a right graph failed."""
    from tests.test_cli import run

    model = half_coupled_rows(tmp_path / "c.onnx")
    np.save(tmp_path / "x.npy", np.array([[0.3, -0.2, 0.5, 1.0]], dtype=np.float32))
    result = run("gradcheck", model, tmp_path / "x.npy")
    assert result.exit_code == 0, result.stdout + result.stderr


def test_a_model_with_one_scalar_output_goes_one_row_per_call(tmp_path):
    """y = ReduceSum(x) over every axis (keepdims 0): the output has no row axis. Each row
    alone is explained through the graph, one row per call (it failed with 'zero-dimensional
    arrays cannot be concatenated', and the graph's seed could not be shaped)."""
    from tests.test_cli import run

    nodes = [helper.make_node("Mul", ["x", "x"], ["s"]),
             helper.make_node("ReduceSum", ["s"], ["y"], keepdims=0)]  # fmt: skip
    model = _save_xy(tmp_path / "s.onnx", nodes, ["N", 5], [])
    x = np.array([[0.5, -1.0, 2.0, 0.0, 1.5]], dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    session = igcli.Session(model, cache=False, threads=2)
    a = session.attribute(tmp_path / "x.npy", steps=16)
    assert a.gradient_source == "graph" and session.runner.batch_size == 1
    np.testing.assert_allclose(a.attributions.reshape(-1), x.reshape(-1) ** 2, rtol=1e-5)
    assert run("gradcheck", model, tmp_path / "x.npy").exit_code == 0


def _batch_model(path, batch, flat):
    """Conv, Tanh, Reshape to `flat`, MatMul, with input [batch, 1, 28, 28]."""
    rng = np.random.default_rng(0)
    inits = [
        onnx.numpy_helper.from_array(rng.normal(size=(4, 1, 3, 3)).astype(np.float32), "w"),
        onnx.numpy_helper.from_array(rng.normal(size=(4 * 26 * 26, 3)).astype(np.float32), "fc"),
        onnx.numpy_helper.from_array(np.array(flat, np.int64), "flat"),
    ]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Tanh", ["c"], ["t"]),
             helper.make_node("Reshape", ["t", "flat"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["y"])]  # fmt: skip
    return _save_xy(path, nodes, [batch, 1, 28, 28], [batch, 3], inits)


@pytest.mark.parametrize("flat", [[0, -1], [8, -1]], ids=["batch-free", "hard-coded-8"])
def test_a_model_exported_with_a_fixed_batch_of_8_is_explained(tmp_path, flat):
    """Exported with a dummy batch of 8: the batch is made dynamic where the graph allows,
    else every call is padded to 8 rows. Either way, the attributions of a batch-free copy."""
    reference = _batch_model(tmp_path / "n.onnx", "N", [0, -1])
    fixed = _batch_model(tmp_path / "b8.onnx", 8, flat)
    expected = igcli.Session(reference, cache=False).attribute(DIGIT_PNGS[0], steps=16)
    session = igcli.Session(fixed, cache=False, threads=2)
    got = session.attribute(DIGIT_PNGS[0], steps=16)
    assert got.gradient_source == "graph" and got.target == expected.target
    np.testing.assert_allclose(got.attributions, expected.attributions, rtol=1e-4, atol=1e-7)
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 28, 28), np.float32))  # a leading 1 fits too
    assert session.attribute(tmp_path / "x.npy", steps=4).attributions.shape == (1, 28, 28)


def test_a_fixed_first_axis_whose_rows_mix_is_refused(tmp_path):
    """[8, 6, 3] fixed, its rows mixed (a sequence-first [T, N, F] exported with both fixed,
    here a Softmax over axis 0): no call gives one sample's outputs alone, and the answer came
    out wrong with a warning. Now the model is refused in one line (exit 3)."""
    from tests.test_cli import run

    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Softmax", ["x"], ["s"], axis=0),
             helper.make_node("ReduceSum", ["s", "axes"], ["p"], keepdims=0),
             helper.make_node("MatMul", ["p", "w"], ["y"])]  # fmt: skip
    w = rng.normal(size=(3, 2)).astype(np.float32)
    inits = [onnx.numpy_helper.from_array(np.array([1], np.int64), "axes"),
             onnx.numpy_helper.from_array(w, "w")]  # fmt: skip
    model = _save_xy(tmp_path / "mixed.onnx", nodes, [8, 6, 3], [8, 2], inits)
    np.save(tmp_path / "s.npy", rng.normal(size=(6, 3)).astype(np.float32))
    result = run("explain", model, tmp_path / "s.npy", "--steps", "4", "--out", tmp_path / "o")
    assert result.exit_code == ExitCode.MODEL, result.stderr
    assert "first axis (fixed at 8) is not a batch" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# torch.onnx.export (legacy exporter, opset 17, fixed shapes) of
# head(tanh(conv(x)).expand(-1, 4, -1, -1).mean((2, 3))), conv 3 -> 1, head 4 -> 3, seed 0:
# its Expand shape is computed from constants, with the batch of 1 in it.
EXPAND = Path(__file__).parent / "data" / "rows" / "expand_fixed_batch.onnx"
# The same exporter at opset 11 of a conv net with two nearest x2 Resizes (one by scales, one
# by sizes from Shape, Slice and Concat), 16x16 input: its graph is right at one row per
# call and off at several (the cause is not isolated).
RESIZE = Path(__file__).parent / "data" / "rows" / "resize_opset11.onnx"


def test_an_expand_to_a_shape_with_the_batch_of_1_in_it_sums_no_rows(tmp_path):
    """The graph is built where the batch is 1: whether the Expand broadcast axis 0 is known
    only at run time. Its gradient summed over every row of a call: attributions times the
    rows per call (x16 at --batch-size 16), while the one-row self-check passed."""
    warnings = []
    session = igcli.Session(EXPAND, cache=False, threads=1, batch_size=16, warn=warnings.append)
    a = session.attribute(EXPAND.with_name("expand_fixed_batch.x.npy"), steps=32,
                          baseline="zero", target=0)  # fmt: skip
    assert a.gradient_source == "graph" and a.rel_error < 1e-4
    assert session.runner.batch_size > 1
    assert not any("each other" in w for w in warnings)


def test_a_graph_whose_rows_change_each_others_gradients_is_caught(tmp_path, monkeypatch):
    """Rows of one call are compared with rows alone, and a graph whose rows differ there
    takes one row per call (its one-row gradient passed the self-check); gradcheck fails."""
    from tests.test_cli import run

    # differentiated at its declared batch of 1, as when the symbolic-batch form fails
    monkeypatch.setattr("igcli.session.declared_batch", lambda *_: None)
    x = RESIZE.with_name("resize_opset11.x.npy")
    warnings = []
    session = igcli.Session(RESIZE, cache=False, threads=1, batch_size=16, warn=warnings.append)
    a = session.attribute(x, steps=32, baseline="zero", target=4)
    assert a.gradient_source == "graph" and a.rel_error < 1e-5
    assert any("change each other's gradients" in w for w in warnings)
    assert run("gradcheck", RESIZE, x, "--target", "4").exit_code == 7


def _einsum_model(path, batch):
    """Einsum bij->bji, Flatten, MatMul: with the batch declared 1 the Einsum rule sees a
    size-1 axis and its gradient comes back with one row for a call of several."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Einsum", ["x"], ["e"], equation="bij->bji"),
        helper.make_node("Flatten", ["e"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "w"], ["y"]),
    ]
    w = onnx.numpy_helper.from_array(rng.normal(size=(12, 3)).astype(np.float32), "w")
    return _save_xy(path, nodes, [batch, 3, 4], [batch, 3], [w], opset=12)


def _einsum_fixed_and_free(tmp_path, warnings: list):
    """The Einsum model exported at a batch of 1 and with an open batch, each attributed at
    one input: (the batch-1 session, its attribution, the open-batch model's)."""
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32))
    fixed = igcli.Session(_einsum_model(tmp_path / "b1.onnx", 1), cache=False, threads=1,
                          batch_size=8, warn=warnings.append)  # fmt: skip
    got = fixed.attribute(x, steps=16, target=0, baseline="zero")
    free = igcli.Session(_einsum_model(tmp_path / "bn.onnx", "N"), cache=False)
    return fixed, got, free.attribute(x, steps=16, target=0, baseline="zero")


def test_a_graph_that_returns_fewer_gradient_rows_than_it_was_given_goes_one_row_per_call(
    tmp_path, monkeypatch
):
    """It crashed the run (exit 1, 'shape-mismatch for sum'): the rows check took 'fewer
    rows back' for 'nothing to compare'. Found by a real-model sweep."""
    # differentiated at its declared batch of 1, as when the symbolic-batch form fails
    monkeypatch.setattr("igcli.session.declared_batch", lambda *_: None)
    warnings = []
    _, got, expected = _einsum_fixed_and_free(tmp_path, warnings)
    assert got.gradient_source == "graph" and any("one per model call" in w for w in warnings)
    np.testing.assert_allclose(got.attributions, expected.attributions, rtol=1e-5, atol=1e-7)


def test_a_rule_that_reads_the_batch_sees_it_symbolic_in_a_model_exported_at_batch_1(tmp_path):
    """Differentiated with its batch made symbolic, the Einsum model above gets a gradient
    graph that takes many rows per call (it took one: the rule saw a size-1 axis)."""
    warnings = []
    fixed, got, expected = _einsum_fixed_and_free(tmp_path, warnings)
    assert got.gradient_source == "graph" and warnings == [] and fixed.runner.batch_size == 8
    np.testing.assert_allclose(got.attributions, expected.attributions, rtol=1e-5, atol=1e-7)


def test_onnx_runtime_errors_lose_their_cpp_noise():
    """A failing call's line keeps the node and the sentence a user can act on, not the C++
    file, function signature and assertion (a 500-character line before)."""
    from igcli.model import _first_line

    reshape = (
        "[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Reshape "
        "node. Name:'/enc/Reshape_4' Status Message: /onnxruntime_src/onnxruntime/core/"
        "providers/cpu/tensor/reshape_helper.h:91 onnxruntime::ReshapeHelper::ReshapeHelper("
        "const onnxruntime::TensorShape&, onnxruntime::TensorShapeVector&, bool) "
        "input_shape_size == requested_shape_size was false. The input tensor cannot be "
        "reshaped to the requested shape. Input shape:{1,8,32}, requested shape:{8,32,8}\nmore"
    )
    assert _first_line(RuntimeError(reshape)) == (
        "Reshape node '/enc/Reshape_4': The input tensor cannot be reshaped to the requested "
        "shape. Input shape:{1,8,32}, requested shape:{8,32,8}"
    )
    rank = "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Invalid rank for input: x Got: 3"
    assert _first_line(RuntimeError(rank)) == "Invalid rank for input: x Got: 3"
    assert _first_line(RuntimeError("")) == "RuntimeError"
    dims = (  # the line that says which dim was wrong comes after the first
        "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input: "
        "attention_mask for the following indices\n index: 0 Got: 2 Expected: 1\n Please fix "
        "either the inputs/outputs or the model."
    )
    assert _first_line(RuntimeError(dims)) == (
        "Got invalid dimensions for input: attention_mask for the following indices: index: 0 "
        "Got: 2 Expected: 1"
    )


def _relu_cnn(path, batch, flat):
    """Conv, Relu, Conv, Relu (16 channels: the Convs' blocked layout), global average pool,
    Reshape to `flat`, MatMul; input [batch, 1, 12, 12]."""
    rng = np.random.default_rng(3)
    inits = [
        onnx.numpy_helper.from_array(rng.normal(size=(16, 1, 3, 3)).astype(np.float32), "w1"),
        onnx.numpy_helper.from_array(rng.normal(size=(16, 16, 3, 3)).astype(np.float32), "w2"),
        onnx.numpy_helper.from_array(rng.normal(size=(16, 3)).astype(np.float32), "fc"),
        onnx.numpy_helper.from_array(np.array(flat, np.int64), "flat"),
    ]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
             helper.make_node("Reshape", ["g", "flat"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["y"])]  # fmt: skip
    return _save_xy(path, nodes, [batch, 1, 12, 12], [batch, 3], inits)


def test_a_model_exported_at_batch_1_gets_the_gradient_graph_of_a_batch_free_one(
    tmp_path, monkeypatch
):
    """The batch is made symbolic before differentiating, so the shapes recorded for the
    reverse pass hold for any batch and ONNX Runtime lays out the optimised graph as for a
    batch-free model (made symbolic only after, the records were dropped and every ReLU
    mask's product ran between two layout reorders). A graph that hard-codes the batch of 1
    still gets its gradient graph, one row per call."""
    x = np.random.default_rng(0).uniform(0, 1, (1, 1, 12, 12)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    results, reorders = {}, {}
    for name, batch, flat in [("free", "N", [0, -1]), ("one", 1, [0, -1]), ("hard", 1, [1, -1])]:
        cache = tmp_path / f"cache-{name}"
        monkeypatch.setenv("IGCLI_CACHE_DIR", str(cache))
        model = _relu_cnn(tmp_path / f"{name}.onnx", batch, flat)
        session = igcli.Session(model, threads=2)
        results[name] = session.attribute(tmp_path / "x.npy", steps=16)
        assert results[name].gradient_source == "graph"
        assert (session.runner.batch_size == 1) == (name == "hard")
        saved = [onnx.load(p, load_external_data=False) for p in cache.glob("ort-*.onnx")]
        reorders[name] = [sum(n.op_type.startswith("Reorder") for n in g.graph.node)
                          for g in saved]  # fmt: skip
    assert reorders["one"] == reorders["free"]
    for name in ("one", "hard"):
        np.testing.assert_allclose(
            results[name].attributions, results["free"].attributions, rtol=1e-5, atol=1e-7
        )


def test_a_model_whose_own_axis_is_named_n_keeps_it_apart_from_the_batch(tmp_path):
    """A point cloud [1, N, 3] exported at batch 1: the batch made symbolic must not take the
    name N, which would tell ONNX Runtime the batch equals the number of points."""
    from igcli.model import BATCH_SYMBOL, with_dynamic_batch, with_fixed_batch

    rng = np.random.default_rng(4)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Tanh", ["h"], ["t"]),
             helper.make_node("ReduceMax", ["t"], ["y"], axes=[1], keepdims=0)]  # fmt: skip
    w = onnx.numpy_helper.from_array(rng.normal(size=(3, 4)).astype(np.float32), "w")
    path = _save_xy(tmp_path / "points.onnx", nodes, [1, "N", 3], [1, 4], [w])
    model = onnx.load(path)
    dynamic = with_dynamic_batch(model)
    dims = [d.dim_param or d.dim_value for d in dynamic.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [BATCH_SYMBOL, "N", 3]
    back = with_fixed_batch(dynamic, 1).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in back] == [1, "N", 3]
    x = rng.normal(size=(1, 7, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    a = igcli.Session(tmp_path / "points.onnx", cache=False).attribute(
        tmp_path / "x.npy", steps=16, baseline="zero", target=1
    )
    assert a.gradient_source == "graph" and a.rel_error < 1e-3


@pytest.mark.parametrize("fails", ["to build", "to load"])
def test_a_symbolic_batch_form_that_fails_falls_back_to_the_model_as_exported(
    tmp_path, monkeypatch, fails
):
    """Differentiating with the batch made symbolic is an optimisation: if that form fails to
    build or ONNX Runtime cannot load it, the gradient graph of the model as exported is
    used, without a word (it was the only form before)."""
    import igcli.session
    from igcli.errors import ModelError
    from igcli.model import BATCH_SYMBOL

    if fails == "to build":

        def broken(*_):
            raise ValueError("no")

        monkeypatch.setattr(igcli.session, "with_dynamic_batch", broken)
    else:

        class Refusing(ModelRunner):
            def __init__(self, model, *args, **kw):
                dims = model.graph.input[0].type.tensor_type.shape.dim if model else []
                if dims and dims[0].dim_param == BATCH_SYMBOL:
                    raise ModelError("cannot load it", tmp_path)
                super().__init__(model, *args, **kw)

        monkeypatch.setattr(igcli.session, "ModelRunner", Refusing)
    x = np.random.default_rng(0).uniform(0, 1, (1, 1, 12, 12)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    warnings = []
    got = igcli.Session(
        _relu_cnn(tmp_path / "one.onnx", 1, [0, -1]), cache=False, warn=warnings.append
    ).attribute(tmp_path / "x.npy", steps=16)
    want = igcli.Session(_relu_cnn(tmp_path / "free.onnx", "N", [0, -1]), cache=False).attribute(
        tmp_path / "x.npy", steps=16
    )
    assert got.gradient_source == "graph" and warnings == []
    np.testing.assert_allclose(got.attributions, want.attributions, rtol=1e-5, atol=1e-7)
