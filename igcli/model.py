"""Loading a model, its sidecar, and running it in ONNX Runtime in batches.

The model is read once per run. Before use it is prepared: the batch dimension is made
dynamic where the graph allows it, and with --softmax a Softmax over each sample's
flattened output is appended, so every gradient source explains the same function.
"""

from __future__ import annotations

import contextlib
import copy
import glob
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper
from onnx.external_data_helper import load_external_data_for_model

from igcli import prefetch
from igcli.autodiff.inference import infer_shapes
from igcli.autodiff.subgraphs import captures, subgraphs
from igcli.errors import InputError, ModelError, UsageError
from igcli.files import (
    MAX_IMAGE_PIXELS,
    file_size,
    first_line,
    open_regular,
    os_reason,
    parse_json,
    read_npy,
)

SOFTMAX_OUTPUT = "igcli_softmax"

# ONNX Runtime would print its own multi-line errors (e.g. while igcli probes whether a fixed
# batch can be made dynamic); igcli reports failures itself, in one line.
ort.set_default_logger_severity(4)


def _json_type(value) -> str:
    """How a JSON value reads to a person: 'a number (5)', 'a string ("oops")', 'an object'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"a number ({value:g})" if isinstance(value, float) else f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({json.dumps(value[:30])})"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class _SidecarCheck:
    """Field-by-field validation, so a wrong type is one line naming the field and the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, field: str, expected: str, value) -> None:
        raise ModelError(
            f"sidecar field {field!r} must be {expected}, not {_json_type(value)}", self.path
        )

    def text(self, data: dict, key: str, field: str | None = None) -> str | None:
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            self.fail(field or key, "a string", value)
        return value

    def labels(self, value) -> list[str] | None:
        if value is None:
            return None
        if not isinstance(value, list):
            self.fail("labels", "a list of class names", value)
        for k, v in enumerate(value):
            if not (isinstance(v, str) or _number(v)):
                self.fail(f"labels[{k}]", "a string", v)
        return [v if isinstance(v, str) else f"{v:g}" for v in value]

    def feature_names(self, value) -> list[str] | None:
        if value is None:
            return None
        if not isinstance(value, list) or not value:
            self.fail("feature_names", "a non-empty list of column names", value)
        for k, v in enumerate(value):
            if not isinstance(v, str) or not v.strip():
                self.fail(f"feature_names[{k}]", "a non-empty string", v)
        names = [v.strip() for v in value]
        dup = next((n for n, c in Counter(names).items() if c > 1), None)
        if dup is not None:
            raise ModelError(f"sidecar field 'feature_names' names {dup!r} twice", self.path)
        return names

    def numbers(self, prep: dict, key: str, positive: bool) -> None:
        value = prep.get(key)
        if value is None:
            return
        expected = (
            "a positive number or a list of them" if positive else ("a number or a list of numbers")
        )
        items = value if isinstance(value, list) else [value]
        if not items:
            self.fail(f"preprocessing.{key}", expected, value)
        for v in items:
            if not _number(v) or (positive and v <= 0):
                self.fail(f"preprocessing.{key}", expected, v if isinstance(value, list) else value)

    def preprocessing(self, value) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail("preprocessing", "an object", value)
        layout = value.get("layout")
        if layout is not None and layout not in ("NCHW", "NHWC"):
            self.fail("preprocessing.layout", '"NCHW" or "NHWC"', layout)
        channels = value.get("channels")
        if channels is not None and (
            not _number(channels) or channels != int(channels) or int(channels) not in (1, 3, 4)
        ):
            self.fail("preprocessing.channels", "1, 3 or 4", channels)
        size = value.get("size")
        if size is not None:
            if (
                not isinstance(size, list)
                or len(size) != 2
                or not all(_number(v) and v == int(v) and 1 <= v <= 65535 for v in size)
            ):
                self.fail("preprocessing.size", "[height, width] in pixels", size)
            if size[0] * size[1] > MAX_IMAGE_PIXELS:
                raise ModelError(
                    f"sidecar field 'preprocessing.size' {size} is over {MAX_IMAGE_PIXELS:,} "
                    "pixels",
                    self.path,
                )
        scale = value.get("scale")
        if scale is not None and (not _number(scale) or scale <= 0):
            self.fail("preprocessing.scale", "a positive number", scale)
        self.numbers(value, "mean", positive=False)
        self.numbers(value, "std", positive=True)
        preset = value.get("preset")
        if preset is not None and preset not in ("imagenet", "clip", "none"):
            self.fail("preprocessing.preset", '"imagenet", "clip" or "none"', preset)
        crop = value.get("crop")
        if crop is not None and (not _number(crop) or not 0 < crop <= 1):
            self.fail("preprocessing.crop", "a fraction in (0, 1]", crop)
        return {k: v for k, v in value.items() if v is not None}  # null means "not given"


# A sidecar holds labels and names, not data: anything bigger is not a sidecar.
MAX_SIDECAR_BYTES = 64 << 20


@dataclass
class Sidecar:
    """What `<model>.json` beside a model says about labels, features and preprocessing.

    Every field is checked on loading: a wrong type is a one-line ModelError (exit 3)
    naming the sidecar and the field, never a crash later in the run. Unknown fields are
    ignored (e.g. "description").
    """

    kind: str | None = None
    labels: list[str] | None = None
    feature_names: list[str] | None = None
    preprocessing: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict)
    model_path: Path | None = None  # the model this sidecar belongs to, for error messages

    @classmethod
    def load(cls, model_path: Path) -> Sidecar:
        path = model_path.with_suffix(".json")
        if not os.path.lexists(path):
            return cls(model_path=model_path)  # no sidecar: the model's own defaults
        try:  # (a folder, a device or a dangling link there was taken for no sidecar)
            fh = open_regular(path, ModelError)
        except ModelError as exc:
            raise ModelError(f"sidecar cannot be read ({exc.reason})", path) from None
        with fh:
            if file_size(fh) > MAX_SIDECAR_BYTES:
                raise ModelError(
                    f"sidecar is over {MAX_SIDECAR_BYTES >> 20} MiB; not a sidecar", path
                )
            try:
                data = parse_json(fh.read().decode("utf-8-sig"))
            except (OSError, ValueError) as exc:
                raise ModelError(f"sidecar is not valid JSON ({first_line(exc)})", path) from None
        if not isinstance(data, dict):
            raise ModelError(f"sidecar must be a JSON object, not {_json_type(data)}", path)
        check = _SidecarCheck(path)
        for key in ("kind", "input", "output", "description"):
            check.text(data, key)
        return cls(
            kind=data.get("kind"),
            labels=check.labels(data.get("labels")),
            feature_names=check.feature_names(data.get("feature_names")),
            preprocessing=check.preprocessing(data.get("preprocessing")),
            raw=data,
            model_path=model_path,
        )


@dataclass
class TensorSpec:
    name: str
    shape: list[int | str | None]
    dtype: np.dtype
    kind: str = "tensor"  # or "sequence", "map", "optional", "sparse_tensor", "unknown"
    type_text: str = ""  # e.g. "tensor(float)", "seq(map(int64, tensor(float)))"

    def __post_init__(self) -> None:
        if not self.type_text:
            self.type_text = f"tensor({np.dtype(self.dtype).name})"


def fixed_dims(shape) -> bool:
    """Whether every dim of `shape` is a known size (none named or unknown)."""
    return all(isinstance(d, int) and d > 0 for d in shape)


def _type_text(tp: onnx.TypeProto) -> str:
    which = tp.WhichOneof("value")
    if which in ("tensor_type", "sparse_tensor_type"):
        t = getattr(tp, which)
        elem = onnx.TensorProto.DataType.Name(t.elem_type).lower() if t.elem_type else "?"
        return f"{'tensor' if which == 'tensor_type' else 'sparse_tensor'}({elem})"
    if which == "sequence_type":
        return f"seq({_type_text(tp.sequence_type.elem_type)})"
    if which == "map_type":
        key = onnx.TensorProto.DataType.Name(tp.map_type.key_type).lower()
        return f"map({key}, {_type_text(tp.map_type.value_type)})"
    if which == "optional_type":
        return f"optional({_type_text(tp.optional_type.elem_type)})"
    return "unknown type"


_KINDS = {
    "tensor_type": "tensor",
    "sequence_type": "sequence",
    "map_type": "map",
    "optional_type": "optional",
    "sparse_tensor_type": "sparse_tensor",
}


def _spec(vi: onnx.ValueInfoProto) -> TensorSpec:
    which = vi.type.WhichOneof("value")
    kind = _KINDS.get(which, "unknown")
    text = _type_text(vi.type)
    if kind != "tensor":
        return TensorSpec(vi.name, [], np.dtype(object), kind, text)
    t = vi.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type))
    except (KeyError, TypeError, ValueError):
        dtype = np.dtype(object)
    return TensorSpec(vi.name, dims, dtype, kind, text)


def is_float_tensor(spec: TensorSpec) -> bool:
    """A dense tensor of float16/32/64: what IG can differentiate and attribute."""
    return spec.kind == "tensor" and spec.dtype.kind == "f"


def unusable_reason(spec: TensorSpec, role: str = "output") -> str | None:
    """Why IG cannot use this input or output (None when it can), in one line.

    `role` is "input" or "output". Covers strings, integers, and non-tensor values such as
    the sequence of maps (ZipMap) that scikit-learn classifiers converted to ONNX output.
    """
    what = f"{role} {spec.name!r}"
    if spec.kind == "sequence" and "map(" in spec.type_text:
        return (
            f"{what} is a {spec.type_text} (a ZipMap of class probabilities); convert the "
            "model without ZipMap (skl2onnx: options={id(model): {'zipmap': False}})"
        )
    if spec.kind != "tensor":
        return f"{what} is a {spec.type_text}, not a tensor"
    if spec.dtype.kind == "f":
        return None
    if spec.type_text == "tensor(string)":
        return f"{what} is a tensor of strings"
    if spec.type_text == "tensor(bfloat16)":  # (numpy has no bfloat16 to compute with)
        return f"{what} is bfloat16, which igcli does not support; export it in float32"
    if role == "input":
        return f"{what} is {spec.type_text}: igcli attributes float inputs"
    return f"{what} is {spec.type_text}: igcli explains float outputs"


def default_output(specs: list[TensorSpec]) -> TensorSpec | None:
    """The first output IG can explain (a classifier's label output often comes first)."""
    return next((s for s in specs if unusable_reason(s) is None), None)


def load_model(path: Path) -> onnx.ModelProto:
    """Read an ONNX file and its external data, failing with a one-line ModelError."""
    with open_regular(path, ModelError) as fh:
        opened = os.fstat(fh.fileno())
        if opened.st_size == 0:
            raise ModelError("empty file (0 bytes), not an ONNX model", path)
        data = prefetch.take(str(path), opened)  # (read while the CLI imported)
        try:
            data = fh.read() if data is None else data
        except OSError as exc:
            raise ModelError(f"cannot read ({os_reason(exc)})", path) from None
    try:
        model = onnx.load_model_from_string(data)
    except Exception:
        raise ModelError("not an ONNX model (cannot parse it)", path) from None
    del data
    if len(model.graph.node) == 0:  # (any file parses as some protobuf)
        raise ModelError("not an ONNX model (no graph)", path)
    if not model.graph.output:
        raise ModelError("the model declares no outputs: nothing to explain", path)
    if not _names_are_text(model.graph):
        raise ModelError("not a valid ONNX model (tensor or node names are not UTF-8)", path)
    files = _load_external_data(model, path) if _external_tensors(model) else []
    _EXTERNAL[os.path.realpath(path)] = files
    return model


# the external data files of each model read by load_model (by real path): part of its hash
_EXTERNAL: dict[str, list[str]] = {}


def _names_are_text(graph: onnx.GraphProto) -> bool:
    """Protobuf hands back bytes for string fields that are not UTF-8 (a damaged file)."""
    names = [vi.name for vi in [*graph.input, *graph.output, *graph.value_info]]
    names += [i.name for i in graph.initializer]
    for node in graph.node:
        names += [*node.input, *node.output, node.op_type, node.domain, node.name]
    return all(isinstance(n, str) for n in names)


def _load_external_data(model: onnx.ModelProto, path: Path) -> list[str]:
    """Tensors stored beside the model; only files inside the model's folder are read.
    Returns those files' paths."""
    files = _data_files(model, path)
    try:
        load_external_data_for_model(model, str(path.parent))
    except Exception as exc:
        raise ModelError(f"cannot load its external data ({first_line(exc)})", path) from None
    return files


def _data_files(model: onnx.ModelProto, path: Path) -> list[str]:
    """The files a model's external tensors name, each checked to be a file inside the
    model's folder (a ModelError says which is not)."""
    folder = os.path.realpath(path.parent)
    files = set()
    for tensor in _external_tensors(model):
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        what = f"external data {location!r} of tensor {tensor.name!r}"
        if not location or os.path.isabs(location):
            raise ModelError(f"{what} must be a file name relative to the model; refused", path)
        target = os.path.realpath(os.path.join(folder, location))
        if os.path.commonpath([folder, target]) != folder:
            raise ModelError(f"{what} points outside the model's folder; refused", path)
        if not os.path.isfile(target):
            raise ModelError(f"{what}: no such file beside the model", path)
        files.add(target)
    return sorted(files)


def _external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Tensors whose data lives in another file: initializers and tensor attributes, in
    subgraphs too."""
    found: list[onnx.TensorProto] = []

    def graph(g: onnx.GraphProto) -> None:
        found.extend(g.initializer)
        for node in g.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    found.append(attr.t)
                found.extend(attr.tensors)
                if attr.HasField("g"):
                    graph(attr.g)
                for sub in attr.graphs:
                    graph(sub)

    graph(model.graph)
    return [t for t in found if t.data_location == onnx.TensorProto.EXTERNAL]


def require_inputs(model: onnx.ModelProto, path: Path) -> list[TensorSpec]:
    """The model's inputs; a model without any has nothing to attribute (ModelError)."""
    specs = graph_inputs(model)
    if not specs:
        raise ModelError("model has no inputs: there is nothing to attribute", path)
    return specs


def _names_with_equals(given: dict[str, object], names: list[str]) -> dict[str, object]:
    """--feed a=b=c.npy was split at its first '=' (name 'a', file 'b=c.npy'); where the model
    has no input 'a' but one named 'a=b', that is the one meant (ONNX names may hold '=')."""
    out = {}
    for key, value in given.items():
        if key not in names and isinstance(value, Path) and "=" in str(value):
            whole = f"{key}={value}"
            cuts = [i for i, c in enumerate(whole) if c == "="][1:]
            match = next((i for i in cuts if whole[:i] in names and whole[i + 1 :]), None)
            if match is not None:
                key, value = whole[:match], Path(whole[match + 1 :])
        if key in out:
            raise UsageError(f"--feed {key} is given twice: give each input once")
        out[key] = value
    return out


def load_feeds(
    given: dict[str, object],
    inputs: list[TensorSpec],
    attributed: TensorSpec,
    model_path: Path | None = None,
) -> dict[str, Feed]:
    """Values for the model inputs other than the attributed one (--feed NAME=FILE.npy, or
    arrays from Python), each with the axis that carries the batch (see feed_batch_axis).

    Checked once, before any input is explained, so a bad feed is one usage error naming
    the feed file, not a failure of every input: unknown names, a feed for the attributed
    input itself, a missing feed, and each file (see check_feed).
    """
    names = [s.name for s in inputs]
    given = _names_with_equals(given, names)
    unknown = sorted(set(given) - set(names))
    if unknown:
        others = [n for n in names if n != attributed.name]
        can = f"inputs that take --feed: {', '.join(others)}" if others else "no other inputs"
        raise UsageError(
            f"--feed names unknown input(s) {', '.join(map(repr, unknown))} (the model has "
            f"{can}; {attributed.name!r} is attributed)"
        )
    if attributed.name in given:
        raise UsageError(
            f"--feed {attributed.name}: that is the attributed input (its values come from "
            "the INPUT files); choose another one with --input, or drop that --feed"
        )
    feeds = {}
    for spec in inputs:
        if spec.name == attributed.name:
            continue
        if spec.name not in given:
            raise UsageError(
                f"model input {spec.name!r} needs a value: --feed {spec.name}=FILE.npy",
                model_path,
            )
        source = given[spec.name]
        if not isinstance(source, np.ndarray | str | os.PathLike):
            raise UsageError(
                f"the feed for {spec.name!r} is a .npy file's path or a numpy array, not "
                f"{type(source).__name__}"
            )
        axis = feed_batch_axis(spec, attributed)
        if isinstance(source, np.ndarray):
            value = check_feed(source, spec, axis, Path(f"<feed {spec.name}>"))
        else:
            value = check_feed(read_npy(Path(source), UsageError), spec, axis, Path(source))
        feeds[spec.name] = Feed(value, axis)
    return feeds


def check_feed(value: np.ndarray, spec: TensorSpec, batch_axis: int | None, path: Path):
    """One fed value, cast to the input's dtype only where that loses nothing, in the
    input's declared shape with a batch axis of 1 (the run repeats it for every row)."""
    what = f"input {spec.name!r} ({spec.type_text})"
    if spec.kind != "tensor":
        raise UsageError(f"{what} cannot be fed from a .npy file", path)
    have, want = value.dtype, spec.dtype
    if have.kind in "US" or want.kind in "OUS":
        if not (have.kind in "US" and want.kind in "OUS"):
            held = f"strings (dtype {have})" if have.kind in "US" else f"dtype {have}"
            raise UsageError(f"holds {held}; {what} takes {want}", path)
    elif want.kind == "f":
        if have.kind not in "fiub":
            raise UsageError(f"dtype {have} cannot feed {what}", path)
        with np.errstate(all="ignore"):
            cast = value.astype(want)
        if not np.all(np.isfinite(cast)):
            raise UsageError(f"contains NaN or Inf (as {want}); {what}", path)
        value = cast
    elif want.kind in "iu":
        if have.kind == "f" and not np.all(np.isfinite(value) & (value == np.round(value))):
            raise UsageError(f"holds values that are not whole numbers; {what} takes {want}", path)
        if have.kind not in "fiub":
            raise UsageError(f"dtype {have} cannot feed {what}", path)
        info = np.iinfo(want)
        if value.size and (value.min() < info.min or value.max() > info.max):
            raise UsageError(f"values out of the range of {want}; {what}", path)
        value = value.astype(want)
    elif want.kind == "b":
        if have.kind != "b":
            raise UsageError(f"dtype {have} cannot feed {what}: save it as bool", path)
    else:
        raise UsageError(f"igcli cannot feed {what}", path)
    declared = spec.shape
    if not declared:  # no declared shape: the file is taken as it is
        return value
    if value.ndim == len(declared) - 1 and batch_axis is not None:
        value = np.expand_dims(value, batch_axis)  # given without its batch axis
    if value.ndim != len(declared) or any(
        isinstance(d, int) and d > 0 and d != n and k != batch_axis
        for k, (n, d) in enumerate(zip(value.shape, declared, strict=True))
    ):
        raise UsageError(f"shape {list(value.shape)} does not fit {what} of shape {declared}", path)
    if batch_axis is not None and value.shape[batch_axis] != 1:
        raise UsageError(
            f"holds a batch of {value.shape[batch_axis]} (axis {batch_axis}); give one sample "
            "(batch of 1): it is repeated for every input",
            path,
        )
    return value


def model_hash(path: Path, remember: bool = True) -> str:
    """The sha256 of a model file (see cache.file_sha256; `remember` False keeps it out of
    the cache folder), and of its external data files where it has any: weights changed in
    a .data file beside an unchanged .onnx kept serving the old model's cached graph."""
    from igcli.cache import file_sha256

    sha = file_sha256(path, remember)
    files = _EXTERNAL.get(os.path.realpath(path))
    if files is None:  # (a model not loaded here: read without its data, to name the files)
        files = _external_files(path)
    if not files:
        return sha
    digest = hashlib.sha256(sha.encode())
    for file in files:
        digest.update(file_sha256(Path(file), remember).encode())
    return digest.hexdigest()


def _external_files(path: Path) -> list[str]:
    """The external data files a model names, read without its data (as load_model checks
    them; none where they do not pass, which loading the model then says)."""
    try:
        return _data_files(onnx.load_model(str(path), load_external_data=False), path)
    except Exception:
        return []


def graph_inputs(model: onnx.ModelProto) -> list[TensorSpec]:
    """The real inputs: graph inputs that are not initializers (old models list both)."""
    inits = {i.name for i in model.graph.initializer}
    return [_spec(vi) for vi in model.graph.input if vi.name not in inits]


def graph_outputs(model: onnx.ModelProto) -> list[TensorSpec]:
    return [_spec(vi) for vi in model.graph.output]


def opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def with_softmax(model: onnx.ModelProto, output: str) -> tuple[onnx.ModelProto, str]:
    """Append softmax over each sample's flattened `output`; return the model and new output."""
    model = copy.deepcopy(model)
    flat = f"{SOFTMAX_OUTPUT}/flat"
    model.graph.node.extend(
        [
            helper.make_node("Flatten", [output], [flat], axis=1),
            helper.make_node("Softmax", [flat], [SOFTMAX_OUTPUT], axis=1),
        ]
    )
    spec = next(o for o in graph_outputs(model) if o.name == output)
    elem = helper.np_dtype_to_tensor_dtype(spec.dtype)
    model.graph.output.append(helper.make_tensor_value_info(SOFTMAX_OUTPUT, elem, None))
    return model, SOFTMAX_OUTPUT


# The symbol a fixed batch becomes: not 'N', which a model may already use for another axis
# (a point cloud's [1, N, 3]); one symbol for two axes tells ONNX Runtime they are equal.
BATCH_SYMBOL = "igcli_batch"


def as_float32(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float16 model computing in float32: weights, constants, casts and declared types
    widened (subgraphs too). The same function with float32's rounding: its differences
    resolve a gradient that float16's 3 digits cannot (the self-check of a float16 graph)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    _widen_graph(out.graph)
    return out


def _widen_tensor(t: onnx.TensorProto) -> None:
    if t.data_type == onnx.TensorProto.FLOAT16:
        wide = numpy_helper.to_array(t).astype(np.float32)
        t.CopyFrom(numpy_helper.from_array(wide, t.name))


def _widen_graph(graph: onnx.GraphProto) -> None:
    for init in graph.initializer:
        _widen_tensor(init)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                _widen_tensor(attr.t)
            elif attr.type == onnx.AttributeProto.GRAPH:
                _widen_graph(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    _widen_graph(sub)
            elif attr.name in ("to", "dtype") and attr.i == onnx.TensorProto.FLOAT16:
                attr.i = onnx.TensorProto.FLOAT  # (Cast's to, RandomNormal's dtype, ...)
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16:
            vi.type.tensor_type.elem_type = onnx.TensorProto.FLOAT


def with_dynamic_batch(model: onnx.ModelProto, size: int = 1) -> onnx.ModelProto:
    """Rename a fixed batch of `size` (1, or the 8 a model was exported with) to the symbol
    BATCH_SYMBOL on inputs and outputs (a try, not a promise)."""
    model = copy.deepcopy(model)
    inits = {i.name for i in model.graph.initializer}
    for vi in [*model.graph.input, *model.graph.output]:
        if vi.name in inits:
            continue
        dims = vi.type.tensor_type.shape.dim
        if len(dims) and dims[0].HasField("dim_value") and dims[0].dim_value == size:
            dims[0].dim_param = BATCH_SYMBOL
    del model.graph.value_info[:]
    return model


def with_fixed_batch(model: onnx.ModelProto, size: int) -> onnx.ModelProto:
    """The inverse of with_dynamic_batch, for a model made from one exported at `size` whose
    dynamic form fails: BATCH_SYMBOL back to `size` wherever it stands, in the recorded
    shapes too (the gradient graph's: shape inference proved those axes are the batch)."""
    model = copy.deepcopy(model)
    graph = model.graph
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        for dim in vi.type.tensor_type.shape.dim:
            if dim.dim_param == BATCH_SYMBOL:
                dim.dim_value = size  # (clears dim_param: a oneof)
    return model


def declared_batch(model: onnx.ModelProto, input_name: str) -> int | None:
    """The fixed batch `input_name` declares (1, or a dummy 8), or None when symbolic."""
    spec = next(i for i in graph_inputs(model) if i.name == input_name)
    first = spec.shape[0] if spec.shape else None
    return first if isinstance(first, int) and first >= 1 else None


def without_initializer_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop graph inputs that are initializers (old exporters list every weight as an input).

    ONNX Runtime treats such weights as overridable inputs and then folds no constants
    through them; igcli never overrides weights, so they become plain constants. Changes
    `model` in place (callers pass one they just loaded: a copy of ResNet-50 costs 0.3 s).
    """
    inits = {i.name for i in model.graph.initializer}
    if not any(vi.name in inits for vi in model.graph.input):
        return model
    keep = [vi for vi in model.graph.input if vi.name not in inits]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    return model


def float_tensors(model: onnx.ModelProto) -> dict[str, TensorSpec]:
    """Every float tensor the graph computes (node outputs), with its inferred shape."""
    try:
        inferred = infer_shapes(model)
    except Exception:  # inference is a help: without it only graph outputs are typed
        inferred = model
    specs = {vi.name: _spec(vi) for vi in [*inferred.graph.value_info, *inferred.graph.output]}
    produced = {o for node in model.graph.node for o in node.output if o}
    return {n: s for n, s in specs.items() if n in produced and s.dtype.kind == "f"}


def sequence_first_axis(spec: TensorSpec, outputs: list[TensorSpec]) -> int | None:
    """1 for a float input declared sequence first by its dims, [T, N, F...]; None
    otherwise: T > 1 fixed and N the one open dim, named, and first in some output
    ([N, classes]: PyTorch's RNNs and Transformer encoders unless batch_first), or exported
    at [T, 1, F] with outputs [1, ...] and none [T, ...]. Narrow on purpose: a fixed 1
    first is a fixed batch ([1, seq] token ids), and [8, S, F] with S on no output's first
    axis is a dummy batch of 8 with a dynamic sequence, whose batch is axis 0. (For a model
    with one input, sequence_axis runs it instead where the dims allow both readings.)"""
    shape = spec.shape
    if spec.kind != "tensor" or np.dtype(spec.dtype).kind != "f" or len(shape) < 3:
        return None
    if not isinstance(shape[0], int) or shape[0] < 2:
        return None
    open_dims = [k for k, d in enumerate(shape) if not isinstance(d, int) or d < 1]
    firsts = [o.shape[0] for o in outputs if o.shape]
    if not open_dims and shape[1] == 1:  # exported at [T, 1, F] (torch.export fixes a 1)
        return 1 if 1 in firsts and shape[0] not in firsts else None
    if open_dims != [1] or not isinstance(shape[1], str):
        return None
    return 1 if shape[1] in firsts else None


def sequence_axis(
    model: onnx.ModelProto, spec: TensorSpec, sha256: str | None = None
) -> int | None:
    """1 where the model's input is sequence first ([T, N, F...]: a sample is [T, F...]),
    None where its batch is axis 0.

    An RNN, GRU or LSTM reading the input says so by its layout. Otherwise, for a model
    with this one input whose dims allow both readings (ambiguous_sequence_axis), the model
    is run on two samples side by side on axis 1: that axis is a batch if each sample gets
    the outputs it gets alone, in every output. The dims alone misled both ways (a
    CTC-style [8, T, F] -> [T, 8, C] read as sequence first, a Transformer encoder with an
    output per step [T, N, F] -> [T, N, C] as batch first). The verdict is cached under the
    model's sha256 (None: not kept). With other inputs: sequence first where one of them
    has that open dim first (a padding mask [N, T] beside [T, N, F]), else the dims'
    reading (sequence_first_axis)."""
    outputs = graph_outputs(model)
    told = _recurrent_batch_axis(model, spec.name)
    if told is not None:
        return 1 if told == 1 and len(spec.shape) == 3 and spec.kind == "tensor" else None
    others = [s for s in graph_inputs(model) if s.name != spec.name]
    ambiguous = ambiguous_sequence_axis(spec)
    if ambiguous and any(o.shape and o.shape[0] == spec.shape[1] for o in others):
        return 1  # another input (a padding mask [N, T]) has the open dim first: the batch
    if not ambiguous or others:
        return sequence_first_axis(spec, outputs)
    found = _cached_verdict(sha256, "axis-1-is-a-batch", spec.name,
                            lambda: axis_one_is_a_batch(model, spec))  # fmt: skip
    return 1 if found else None


def _cached_verdict(sha256: str | None, what: str, name: str, probe: Callable[[], bool]) -> bool:
    """A probe's yes or no about the model (it runs the model), cached under its sha256."""
    from igcli.cache import cache_key, load_fact, save_fact

    key = cache_key(sha256, what, name) if sha256 else None
    found = load_fact(key) if key else None
    if not isinstance(found, bool):
        found = probe()
        if key:
            save_fact(key, found)
    return found


def ambiguous_sequence_axis(spec: TensorSpec) -> bool:
    """Whether a float input's dims allow both readings, batch on axis 0 or on axis 1:
    [A, S, F...] with every F fixed, S an open named dim and A fixed > 1 or open under
    another name. A dummy batch of A over a dynamic sequence S (batch first) looks just
    like a sequence of A steps over a dynamic batch S (sequence first)."""
    shape = spec.shape
    if spec.kind != "tensor" or np.dtype(spec.dtype).kind != "f" or len(shape) < 3:
        return False
    if not isinstance(shape[1], str) or not fixed_dims(shape[2:]):
        return False
    first = shape[0]
    return (isinstance(first, int) and first > 1) or (isinstance(first, str) and first != shape[1])


PROBE_STEPS = 5  # the length of an open axis 0 in the probe


def axis_one_is_a_batch(model: onnx.ModelProto, spec: TensorSpec) -> bool:
    """Whether the model treats axis 1 of its one input as a batch: two random [A, 1, F...]
    samples each give, alone, the outputs they give side by side in [A, 2, F...] (up to
    float rounding), in every output, each of which must carry the axis (an output without
    it, a pooled [8, C], has no row per sample). A sequence mixes its positions; a batch
    never does. One CPU session of the model, three calls; False if any of it fails."""
    symbol = spec.shape[1]
    outputs = graph_outputs(model)
    if not outputs or any(symbol not in o.shape for o in outputs):
        return False
    rng = np.random.default_rng(0)
    steps = spec.shape[0] if isinstance(spec.shape[0], int) else PROBE_STEPS
    shape = [steps, 1, *spec.shape[2:]]
    a, b = (rng.standard_normal(shape).astype(spec.dtype) for _ in range(2))
    try:
        session = ort.InferenceSession(model.SerializeToString(), session_options(1),
                                       providers=["CPUExecutionProvider"],
                                       disabled_optimizers=_crashing_optimizers(model))  # fmt: skip
        alone = [session.run(None, {spec.name: v}) for v in (a, b)]
        both = session.run(None, {spec.name: np.concatenate([a, b], axis=1)})
    except Exception:  # noqa: BLE001 (a model that cannot run so is no evidence)
        return False
    for k, (o, pair) in enumerate(zip(outputs, both, strict=True)):
        axis = o.shape.index(symbol)
        for i, single in enumerate(alone):
            got, want = np.take(pair, [i], axis=axis), single[k]
            if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-5):
                return False
    # Axis 1 is independent. If axis 0 is too (a model that mixes neither, a per-step MLP),
    # both readings compute the same, and the declared one stays: a batch on axis 0, whose
    # open axis 1 then takes samples of any length. Axis 0 mixes if changing its first
    # position changes the outputs at the others (or no output keeps its positions).
    changed = a.copy()
    changed[0] += 1.0
    try:
        moved = session.run(None, {spec.name: changed})
    except Exception:  # noqa: BLE001
        return True
    steps_axes = [o.shape.index(spec.shape[0]) if spec.shape[0] in o.shape else None
                  for o in outputs]  # fmt: skip
    if any(ax is None for ax in steps_axes):
        return True  # pooled over axis 0: it mixes
    return any(
        not np.allclose(
            np.delete(new, 0, axis=ax), np.delete(old, 0, axis=ax), rtol=1e-4, atol=1e-5
        )  # fmt: skip
        for new, old, ax in zip(moved, alone[0], steps_axes, strict=True)
    )


RECURRENT_OPS = ("RNN", "GRU", "LSTM")


def _recurrent_batch_axis(model: onnx.ModelProto, name: str) -> int | None:
    """The batch axis of graph input `name` as the recurrent ops reading it as X declare it
    (layout 0: [T, N, F], axis 1; layout 1: [N, T, F], axis 0); None where none reads it, or
    they disagree."""
    names, axes = {name}, set()
    for node in model.graph.node:  # topological: a passthrough comes before its readers
        if node.op_type in ("Identity", "Cast") and node.input and node.input[0] in names:
            names.update(o for o in node.output if o)
        elif node.op_type in RECURRENT_OPS and node.input and node.input[0] in names:
            layout = next((a.i for a in node.attribute if a.name == "layout"), 0)
            axes.add(0 if layout else 1)
    return axes.pop() if len(axes) == 1 else None


def rows_first(
    model: onnx.ModelProto, spec: TensorSpec, sha256: str | None = None
) -> tuple[onnx.ModelProto, int, bool]:
    """The model as igcli runs it, its input's rows and every output's on axis 0: the input
    moved where it is sequence first (sequence_axis), an output moved where the batch is on
    a later axis of it (batch_later_in_an_output). Returns the model, the input's declared
    batch axis, and whether only outputs were moved. explain and inspect both read a model
    through this."""
    axis = sequence_axis(model, spec, sha256)
    if not axis and batch_later_in_an_output(model, spec):
        axis = 0  # the input's batch is first, an output's later (CTC's [T, N, C])
    moved = batch_first(model, spec.name, axis) if axis is not None else None
    if moved is None:  # no batch at all, or one squeezed out of the outputs
        wrapped = None
        if not axis and (unbatched_image(model, spec) or unbatched(model, spec, sha256)):
            wrapped = with_batch_axis(model, spec.name)
        elif squeezed_batch(model, spec):
            wrapped = with_batch_axis(model, spec.name, input_too=False)
        elif squeezed_batch(model, spec, dynamic=True):
            wrapped = with_batch_axis(_batch_of_one(model, spec.name), spec.name, input_too=False)
        return (model, 0, False) if wrapped is None else (wrapped, 0, True)
    if axis:  # a sequence-first [T, 1, F] at batch 1 may squeeze it out too (a GRU's state)
        first = next(s for s in graph_inputs(moved) if s.name == spec.name)
        if squeezed_batch(moved, first):
            moved = with_batch_axis(moved, spec.name, input_too=False) or moved
    return moved, axis, axis == 0


def _batch_of_one(model: onnx.ModelProto, input_name: str) -> onnx.ModelProto:
    """A copy of `model` whose input `input_name` declares a batch of 1."""
    model = copy.deepcopy(model)
    vi = next(i for i in model.graph.input if i.name == input_name)
    vi.type.tensor_type.shape.dim[0].dim_value = 1  # (clears dim_param: a oneof)
    return model


def squeezed_batch(model: onnx.ModelProto, spec: TensorSpec, dynamic: bool = False) -> bool:
    """Whether a model fixed at a batch of 1 gives outputs without it: every output fixed
    and none with 1 first (torch's squeeze(0): [1, F] -> [C]). igcli read such an output's
    C values as C rows: 'target 2 is out of range: 1 values per sample', the gradient graph
    failed in a Reshape, and F at the baseline came from the input's own row. `dynamic`:
    the same of a model whose input's batch is not fixed (exported with a dynamic batch,
    squeezed all the same), which crashed in the gradient self-check; it is run at 1."""
    if not spec.shape or (spec.shape[0] != 1 and not dynamic):
        return False
    if dynamic and isinstance(spec.shape[0], int):
        return False
    outputs = graph_outputs(model)
    return bool(outputs) and all(
        o.kind == "tensor" and fixed_dims(o.shape) and (not o.shape or o.shape[0] != 1)
        for o in outputs
    )


def unbatched_image(model: onnx.ModelProto, spec: TensorSpec) -> bool:
    """Whether the input is one RGB image without a batch axis, [3, H, W], in a model with
    2-D convolutions: torchvision's detectors take a list of images and export on one. Read
    as a batch of 3, no PNG or .npy fitted it. (Without a 2-D Conv, [3, S, F] may be a batch
    of 3 sequences.)"""
    dims = spec.shape
    if not (spec.kind == "tensor" and np.dtype(spec.dtype).kind == "f" and len(dims) == 3):
        return False
    if dims[0] != 3 or any(isinstance(d, int) and d <= 3 for d in dims[1:]):
        return False
    kernels = {i.name: len(i.dims) for i in model.graph.initializer}
    return any(n.op_type == "Conv" and kernels.get(n.input[1]) == 4 for n in model.graph.node)


def unbatched(model: onnx.ModelProto, spec: TensorSpec, sha256: str | None = None) -> bool:
    """Whether the model has no batch axis at all: exported on one unbatched sample (torch
    on an x of [F], or [T, F]; rank 2 at most), every dim of its one float input and of
    its outputs fixed, and either no output with the input's first dim first, or one whose
    positions on that axis change each other's outputs (a sequence [T, F] -> [T, C]
    through attention: no batch ever mixes its rows). Or a set model: [P, F] of open P with
    fixed outputs that stay so at any P (see _first_axis_is_a_set). Or such a sequence of
    open length, [T, F] -> [T, C], whose rows mix (see _open_sequence). Its first axis was read
    as a batch: a sample [F] 'held a batch of F', [1, F] did 'not fit the model input [F]',
    one row of a [T, F] model was explained as a sequence of length 1, and a set of 50
    points 'held a batch of 50'. The probe's verdict is
    cached under sha256."""
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    if len([i for i in graph.input if i.name not in inits]) != 1:
        return False
    dims = spec.shape
    if spec.kind != "tensor" or np.dtype(spec.dtype).kind != "f":
        return False
    if not dims or dims[0] == 1 or not fixed_dims(dims[1:]):
        return False
    if len(dims) > 2:  # [A, B, F...]: B may be the batch (a fixed sequence-first model), which
        return False  # _refuse_a_fixed_axis_that_is_no_batch turns down where A mixes
    outputs = graph_outputs(model)
    if not outputs or any(o.kind != "tensor" for o in outputs):
        return False
    if not fixed_dims(dims[:1]) and _open_sequence(dims[0], outputs):
        return _cached_verdict(sha256, "open-first-axis-mixes", spec.name,
                               lambda: _first_axis_mixes(model, spec))  # fmt: skip
    if any(not fixed_dims(o.shape) for o in outputs):
        return False
    if not fixed_dims(dims[:1]):  # [P, F] of open P, outputs fixed: a set of P points?
        return _cached_verdict(sha256, "first-axis-is-a-set", spec.name,
                               lambda: _first_axis_is_a_set(model, spec, outputs))  # fmt: skip
    if all(not o.shape or o.shape[0] != dims[0] for o in outputs):
        return True
    return _cached_verdict(sha256, "first-axis-mixes", spec.name,
                           lambda: _first_axis_mixes(model, spec))  # fmt: skip


# What exporters and people name a batch axis (lower case): an open first axis so named stays
# a batch even where its rows change each other (batch statistics), see _open_sequence.
BATCH_NAMES = frozenset({
    "n", "b", "bs", "batch", "batches", "batch_size", "batchsize", "nbatch", "num_batch",
    "n_batch", "samples", "n_samples", "num_samples", "rows", "n_rows",
})  # fmt: skip


def _open_sequence(first: object, outputs: list[TensorSpec]) -> bool:
    """Whether an open first axis may be a sequence of any length ([T, F] -> [T, C]: a
    transformer, a graph network or a per-point model exported on one unbatched sample)
    rather than a batch: it has a name that is not a batch's, and every output either is
    fixed or has that axis first and every other dim fixed. The probe then decides."""
    if not isinstance(first, str) or first.lower() in BATCH_NAMES or "batch" in first.lower():
        return False
    carried = False
    for o in outputs:
        if o.shape and o.shape[0] == first and fixed_dims(o.shape[1:]):
            carried = True
        elif not fixed_dims(o.shape):
            return False
    return carried


def _probe_runs(
    model: onnx.ModelProto, name: str, values: list[np.ndarray]
) -> list[list[np.ndarray]] | None:
    """Every output of the model for each of `values` fed to input `name`, from one
    single-threaded CPU session: what a probe of the model's axes reads. None where any of it
    fails (a model that cannot run so is no evidence)."""
    try:
        session = ort.InferenceSession(model.SerializeToString(), session_options(1),
                                       providers=["CPUExecutionProvider"],
                                       disabled_optimizers=_crashing_optimizers(model))  # fmt: skip
        return [session.run(None, {name: v}) for v in values]
    except Exception:  # noqa: BLE001
        return None


def _first_axis_is_a_set(
    model: onnx.ModelProto, spec: TensorSpec, outputs: list[TensorSpec]
) -> bool:
    """Whether an input [P, F] of open P whose outputs are all fixed takes P points as one
    sample (a PointNet pools over them: [P, 3] -> [1, C]) rather than a batch of P rows
    whose outputs were declared at the batch of 1 they were traced at (dynamic axes given
    for the input only): run at P = 2 and 3, every output keeps its declared shape."""
    rng = np.random.default_rng(0)
    points = [rng.standard_normal([p, *spec.shape[1:]]).astype(spec.dtype) for p in (2, 3)]
    runs = _probe_runs(model, spec.name, points)
    return runs is not None and all(
        np.shape(v) == tuple(o.shape) for got in runs for v, o in zip(got, outputs, strict=True)
    )


def _first_axis_mixes(model: onnx.ModelProto, spec: TensorSpec) -> bool:
    """Whether changing row 0 of the input changes the other rows of an output that carries
    the input's first dim first (a batch never does). Two calls; False if either fails."""
    rng = np.random.default_rng(0)
    rows = spec.shape[0] if isinstance(spec.shape[0], int) else 3  # (an open length: 3)
    x = rng.standard_normal([rows, *spec.shape[1:]]).astype(spec.dtype)
    changed = x.copy()
    changed[0] += 1.0
    runs = _probe_runs(model, spec.name, [x, changed])
    if runs is None:
        return False
    before, after = runs
    return any(
        np.shape(old)[:1] == (rows,) and not np.allclose(new[1:], old[1:], rtol=1e-4, atol=1e-5)
        for old, new in zip(before, after, strict=True)
    )


def with_batch_axis(
    model: onnx.ModelProto, input_name: str, input_too: bool = True
) -> onnx.ModelProto | None:
    """A copy of an unbatched model (see unbatched) taking a batch of 1 on a new axis 0 of
    its input and giving one on every output: a model fixed at a batch of 1, which igcli
    calls one row at a time (`input_too` False: the outputs only, see squeezed_batch).
    None where an If/Loop/Scan body reads the input itself."""
    if input_too and any(
        input_name in captures(sub) for n in model.graph.node for sub in subgraphs(n)
    ):
        return None
    model = copy.deepcopy(model)
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    axes = f"{input_name}/igcli_axis0"

    def axis_args(op: str, x: str, out: str) -> onnx.NodeProto:
        if opset >= 13:
            return helper.make_node(op, [x, axes], [out], name=out)
        return helper.make_node(op, [x], [out], name=out, axes=[0])

    if opset >= 13:
        graph.initializer.append(numpy_helper.from_array(np.array([0], np.int64), axes))
    if input_too:
        inner = _read_as(graph, input_name, f"{input_name}/igcli_unbatched")
        graph.node.insert(0, axis_args("Squeeze", input_name, inner))
        vi = next(i for i in graph.input if i.name == input_name)
        vi.type.tensor_type.shape.dim.insert(0, onnx.TensorShapeProto.Dimension(dim_value=1))
    for out in graph.output:
        produced = _made_as(graph, out.name, f"{out.name}/igcli_unbatched")
        graph.node.append(axis_args("Unsqueeze", produced, out.name))
        out.type.tensor_type.shape.dim.insert(0, onnx.TensorShapeProto.Dimension(dim_value=1))
    del graph.value_info[:]
    return model


def batch_first(model: onnx.ModelProto, input_name: str, axis: int) -> onnx.ModelProto | None:
    """A copy of `model` whose input `input_name` takes its batch on axis 0 (moved there from
    `axis` by a Transpose inside the graph; axis 0: left as it is), and whose outputs with
    the same batch dim on a later axis give it on axis 0 too: igcli's rows are always the
    first axis. A sample is then the input without its batch axis, [T, F] for [T, N, F], as
    the user holds it.
    None where an If/Loop/Scan body reads the input itself (it would see the new layout)."""
    if any(input_name in captures(sub) for n in model.graph.node for sub in subgraphs(n)):
        return None
    model = copy.deepcopy(model)
    graph = model.graph
    vi = next(i for i in graph.input if i.name == input_name)
    dims = vi.type.tensor_type.shape.dim
    batch = dims[axis].dim_param or None
    fixed = None if batch or not axis else (dims[axis].dim_value, _dim_key(dims[0]))  # [T, B, F]
    if not batch and not axis and len(dims) > 1:  # [B, T, F] fixed at B -> an output [T, B, C]
        fixed = (dims[0].dim_value, _dim_key(dims[1]))
    if axis:  # (axis 0: the input stays; only outputs with the batch later are moved)
        inner = _read_as(graph, input_name, f"{input_name}/igcli_seq")
        order = _permute_dims(dims, axis)
        back = [order.index(k) for k in range(len(order))]  # original axis k <- new axis back[k]
        graph.node.insert(0, helper.make_node("Transpose", [input_name], [inner], perm=back,
                                              name=inner))  # fmt: skip
    for out in graph.output:
        odims = out.type.tensor_type.shape.dim
        at = [k for k, d in enumerate(odims) if batch is not None and d.dim_param == batch]
        if fixed is not None and len(odims) > 1 and fixed[0] > 0 and fixed[1] is not None:
            # a batch fixed at B (exported at 1, or a dummy 8): an output [T, B, ...] has it
            # on axis 1, with the input's own T first
            size, steps = fixed
            at = [1] if _dim_key(odims[0]) == steps and odims[1].dim_value == size else []
            if not axis and odims[0].dim_value == size:
                at = []  # (the input's rows are first, and this output's are too)
        if len(at) != 1 or at[0] == 0:
            continue
        k = at[0]
        produced = _made_as(graph, out.name, f"{out.name}/igcli_seq")
        perm = _permute_dims(odims, k)
        graph.node.append(helper.make_node("Transpose", [produced], [out.name], perm=perm,
                                           name=f"{out.name}/igcli_batch_first"))  # fmt: skip
    del graph.value_info[:]
    return model


def _read_as(graph: onnx.GraphProto, name: str, inner: str) -> str:
    """Every node reading `name` reads `inner` instead, for a node put first to make it."""
    for node in graph.node:
        node.input[:] = [inner if i == name else i for i in node.input]
    return inner


def _made_as(graph: onnx.GraphProto, output: str, produced: str) -> str:
    """The graph output `output` is made (and read inside) as `produced` instead, for a node
    put last to make the output from it."""
    for node in graph.node:
        node.output[:] = [produced if o == output else o for o in node.output]
        node.input[:] = [produced if i == output else i for i in node.input]
    return produced


def batch_later_in_an_output(model: onnx.ModelProto, spec: TensorSpec) -> bool:
    """Whether the input's named batch (axis 0) is on a later axis of some output and not on
    its first: a CTC-style [N, T, F] -> [T, N, C]. igcli reads an output's rows on axis 0,
    so such an output is moved (batch_first with axis 0)."""
    batch = spec.shape[0] if spec.shape else None
    if isinstance(batch, int) and batch > 0 and len(spec.shape) > 1:
        # exported at a fixed batch B: [B, T, F] -> [T, B, C] (torch's nn.Transformer without
        # batch_first) has its rows on axis 1, the input's T first
        steps = spec.shape[1]
        return steps != batch and any(
            len(o.shape) > 1 and o.shape[0] == steps and o.shape[1] == batch
            for o in graph_outputs(model)
        )
    if not isinstance(batch, str):
        return False
    return any(o.shape and o.shape[0] != batch and o.shape.count(batch) == 1
               for o in graph_outputs(model))  # fmt: skip


def _dim_key(dim) -> int | str | None:
    """A declared dim as comparable: its value, its name, or None when neither."""
    if dim.HasField("dim_value"):
        return dim.dim_value
    return dim.dim_param or None


def _permute_dims(dims, axis: int) -> list[int]:
    """Move declared dim `axis` to the front, in place; the order the dims now come in."""
    order = [axis] + [k for k in range(len(dims)) if k != axis]
    moved = [copy.deepcopy(dims[k]) for k in order]
    del dims[:]
    dims.extend(moved)
    return order


def expose_output(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """Make an intermediate float tensor (pre-softmax logits, a block's output) a graph output."""
    if any(o.name == name for o in model.graph.output):
        return model
    produced = {o for node in model.graph.node for o in node.output if o}
    if name not in produced:
        outputs = ", ".join(o.name for o in model.graph.output)
        if any(i.name == name for i in model.graph.input):
            raise UsageError(f"output {name!r} is the model's input, not a tensor it computes "
                             f"(outputs: {outputs})")  # fmt: skip
        raise UsageError(f"output {name!r} is not a tensor of the graph (outputs: {outputs})")
    spec = float_tensors(model).get(name)
    elem = helper.np_dtype_to_tensor_dtype(spec.dtype) if spec else _runtime_type(model, name)
    if elem not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
        raise UsageError(f"output {name!r} is not a float tensor; igcli explains float outputs")
    model = copy.deepcopy(model)
    model.graph.output.append(helper.make_tensor_value_info(name, elem, None))
    return model


def _runtime_type(model: onnx.ModelProto, name: str) -> int | None:
    """The element type ONNX Runtime gives a tensor that shape inference cannot type (the
    outputs of ai.onnx.ml operators, say), or None."""
    probe = copy.deepcopy(model)
    vi = probe.graph.output.add()
    vi.name = name
    opts = session_options(None)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(probe.SerializeToString(), opts)
    except Exception:
        return None
    kind = next((o.type for o in session.get_outputs() if o.name == name), "")
    dtype = _ort_dtype(kind)
    return helper.np_dtype_to_tensor_dtype(dtype) if dtype.kind == "f" else None


@dataclass
class Feed:
    """A value for a model input other than the attributed one, and where its batch axis is.

    Silero VAD's state is [2, batch, 128]: the batch axis is the one whose declared dimension
    matches the attributed input's batch dimension, not always axis 0. None: no batch axis
    (a scalar sample rate, say), the value goes to every call as it is.
    """

    value: np.ndarray
    batch_axis: int | None = 0

    def for_rows(self, n: int) -> np.ndarray:
        axis = self.batch_axis
        if axis is None or self.value.shape[axis] == n or self.value.shape[axis] != 1:
            return self.value
        return np.repeat(self.value, n, axis=axis)

    def rows(self, start: int, stop: int, total: int) -> Feed:
        """Rows start:stop of a value that holds one entry per row of `total` rows (a value
        with a batch of 1, or none, serves every row as it is)."""
        axis = self.batch_axis
        if axis is None or total == 1 or self.value.shape[axis] != total:
            return self
        index = [slice(None)] * self.value.ndim
        index[axis] = slice(start, stop)
        return Feed(self.value[tuple(index)], axis)


# Values of other model inputs that belong to one sample (its attention mask, the token ids
# a cut model still reads) or, stacked, to each row of a call: name -> Feed.
Context = dict[str, Feed]


def stack_contexts(contexts: list[Context | None]) -> Context | None:
    """One context for rows that each have their own (one entry per row, in order): each
    sample's value repeated over its run of rows, joined along the batch axis."""
    if all(c is None for c in contexts):
        return None
    if any(c is None for c in contexts):
        raise ValueError("rows with and without context feeds cannot share a call")
    runs: list[list] = []  # [context, rows] for each run of rows sharing a context
    for c in contexts:
        if runs and runs[-1][0] is c:
            runs[-1][1] += 1
        else:
            runs.append([c, 1])
    if len(runs) == 1:
        c, n = runs[0]
        return {k: Feed(f.for_rows(n), f.batch_axis) for k, f in c.items()}
    out: Context = {}
    for name, first in runs[0][0].items():
        axis = first.batch_axis
        if axis is None:
            out[name] = first
            continue
        parts = [np.repeat(c[name].value, n, axis=axis) for c, n in runs]
        out[name] = Feed(np.concatenate(parts, axis=axis), axis)
    return out


def feed_batch_axis(feed: TensorSpec, attributed: TensorSpec) -> int | None:
    """The axis of `feed` that carries the batch of the attributed input (None if none does).

    A named batch dimension must match by name. A batch fixed at 1 (an export of one
    sample whose sequence axis is open, [1, seq]) is the feed's first axis where that is 1
    too, or open but not named like one of the attributed input's other axes (a [seq] feed
    has none). Otherwise the one open dimension, else a leading (or the first) dimension of
    size 1.
    """
    if not feed.shape:
        return None
    batch = attributed.shape[0] if attributed.shape else None
    if isinstance(batch, str):
        return next((k for k, d in enumerate(feed.shape) if d == batch), None)
    if batch == 1:
        first = feed.shape[0]
        if first == 1 or (isinstance(first, str) and first not in attributed.shape[1:]):
            return 0
        if first is None or (isinstance(first, int) and first <= 0):
            return 0 if len(feed.shape) == len(attributed.shape) else None
        return None
    open_dims = [k for k, d in enumerate(feed.shape) if not isinstance(d, int) or d <= 0]
    if len(open_dims) == 1:
        return open_dims[0]
    if feed.shape[0] in (1, None):
        return 0
    return next((k for k, d in enumerate(feed.shape) if d == 1), None)


def row_workers(threads: int | None, providers: list[str]) -> int:
    """How many single-threaded Runs share a call's rows: `threads`, else the CPUs this
    process may use; 1 off the CPU (a GPU provider runs a call as one)."""
    if providers != ["CPUExecutionProvider"]:
        return 1
    return threads or usable_cpus()


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, where the OS has one)."""
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return max(1, len(usable) if usable else (os.cpu_count() or 1))


def weight_bytes(model: onnx.ModelProto) -> int:
    """What a model's initializers take in memory, from their shapes (not their encoding)."""
    total = 0
    for init in model.graph.initializer:
        try:
            itemsize = helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        except (KeyError, ValueError, TypeError):
            itemsize = 4  # an undefined or exotic type: count it as float32
        total += int(np.prod(init.dims, dtype=np.int64)) * itemsize
    return total


def session_options(threads: int | None) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    # ONNX Runtime's idle threads spin between ops by default, taking the cores our writer
    # threads draw heatmaps on: digits, 1000 images, 19.8 s spinning and 16.8 s not; ResNet-50
    # and ViT-S/16 (bench_vs_captum's runs) the same either way, with 10-35% less CPU.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # No memory pattern: ONNX Runtime then plans one block per input shape beside its arena.
    # Without it a ResNet-50 gradient call at 16 rows peaks at 1.10 GB instead of 1.41 (ViT-S:
    # 2.13 against 2.25), in the same time (digits: 31 against 33 ms per 256 rows).
    opts.enable_mem_pattern = False
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return opts


def resolve_providers(provider: str | None) -> list[str]:
    """CPU by default; CUDA first when that build and device are there; or what the user named."""
    available = ort.get_available_providers()
    if provider:
        name = (
            provider if provider.endswith("ExecutionProvider") else f"{provider}ExecutionProvider"
        )
        match = next((p for p in available if p.lower() == name.lower()), None)
        if match is None:
            raise UsageError(
                f"execution provider {provider!r} is not available; have {', '.join(available)}"
            )
        return [match] if match == "CPUExecutionProvider" else [match, "CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def make_session(
    model: onnx.ModelProto,
    path: Path,
    providers: list[str],
    threads: int | None,
    optimized: Path | None = None,
) -> ort.InferenceSession:
    """A session for `model`; with `optimized`, ONNX Runtime's optimised graph is saved there
    (written whole or not at all) for `open_optimized` to reuse on the next run."""
    opts = session_options(threads)
    staging = None
    if optimized is not None:
        # The weights go to a file beside the graph (`.data`), which ONNX Runtime maps into
        # memory when it opens the graph again: ResNet-50 opens in 0.05 s instead of 0.2 s,
        # without faulting in 200 MB of fresh memory. Both are written in a staging folder
        # first, so a crash leaves no half-written entry under the real names; the weights
        # file's name is this write's own, so two runs saving the same entry at once never
        # pair one's graph with the other's weights.
        with contextlib.suppress(OSError):
            optimized.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=optimized.parent))
            opts.optimized_model_filepath = str(staging / optimized.name)
            opts.add_session_config_entry(
                "session.optimized_model_external_initializers_file_name",
                f"{optimized.stem}.{staging.name.rsplit('-', 1)[-1]}.data",
            )
            opts.add_session_config_entry(
                "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
            )
    try:
        session = ort.InferenceSession(model.SerializeToString(), opts, providers=providers,
                                       disabled_optimizers=_crashing_optimizers(model))  # fmt: skip
    except Exception as exc:
        if staging is None:
            raise ModelError(f"ONNX Runtime cannot load it: {_first_line(exc)}", path) from None
        # The optimised graph could not be written (a full disk: ONNX Runtime then fails the
        # session, and a model that loads was refused with exit 3): one without it.
        shutil.rmtree(staging, ignore_errors=True)
        return make_session(model, path, providers, threads)
    if staging is not None:
        _publish_optimized(staging, optimized)
    return session


def _crashing_optimizers(model: onnx.ModelProto) -> list[str]:
    """ONNX Runtime optimisers to leave out for this model. On float16 graphs (which its CPU
    provider runs through casts to float32) MatmulTransposeFusion can move a Cast past a
    Transpose, give up on the fusion and report no change; NchwcTransformer then
    segfaults on the stale graph. A float16 LSTM's gradient graph (an outer product as
    Transpose(perm=[1, 2, 0]) and MatMul with a 2-D constant) killed the whole run, exit 139."""
    half = onnx.TensorProto.FLOAT16
    graph = model.graph
    typed = [*graph.input, *graph.output, *graph.value_info]
    if any(i.data_type == half for i in graph.initializer) or any(
        v.type.tensor_type.elem_type == half for v in typed
    ):
        return ["MatmulTransposeFusion"]
    return []


def optimized_data(optimized: Path) -> list[Path]:
    """The weights files beside an optimised graph saved at `optimized` (one, but a run that
    replaced the graph while another read it may leave an older one until the next save)."""
    return sorted(optimized.parent.glob(f"{glob.escape(optimized.stem)}.*.data"))


def _publish_optimized(staging: Path, optimized: Path) -> None:
    """Move a saved graph and its weights to their names: the weights first, so a graph
    under its real name always finds them; then older weights of the same entry go."""
    from igcli.cache import enforce_limit

    graph = staging / optimized.name
    try:
        with contextlib.suppress(OSError):
            if graph.is_file():
                ours = [p.name for p in staging.glob("*.data")]
                for name in ours:
                    os.replace(staging / name, optimized.parent / name)
                os.replace(graph, optimized)
                for old in optimized_data(optimized):
                    if old.name not in ours:
                        old.unlink(missing_ok=True)
                enforce_limit()  # (a bad IGCLI_CACHE_MAX raises: the staging goes all the same)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def open_optimized(
    optimized: Path, providers: list[str], threads: int | None
) -> ort.InferenceSession | None:
    """A session on a graph ONNX Runtime optimised before; None when there is none (or it
    no longer loads: a stale entry is rebuilt, never an error)."""
    if not optimized.is_file():
        return None
    opts = session_options(threads)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(optimized), opts, providers=providers)
    except Exception:
        with contextlib.suppress(OSError):
            optimized.unlink()
            for data in optimized_data(optimized):
                data.unlink(missing_ok=True)
        return None
    with contextlib.suppress(OSError):
        for path in (optimized, *optimized_data(optimized)):
            os.utime(path)  # recently used: kept longest
    return session


_ORT_TYPES = {
    "float": np.float32,
    "double": np.float64,
    "float16": np.float16,
    "int64": np.int64,
    "int32": np.int32,
    "int16": np.int16,
    "int8": np.int8,
    "uint8": np.uint8,
    "bool": np.bool_,
}


def _ort_dtype(type_name: str) -> np.dtype:
    m = type_name.removeprefix("tensor(").removesuffix(")")
    return np.dtype(_ORT_TYPES.get(m, object))


NO_TARGET = np.iinfo(np.int64).max  # a target index past every output: an all-zero seed
TOP_CLASS = np.iinfo(np.int64).min  # each row's own arg-max output (see with_target_seed)
# A Run's rows should take at least this long on one thread. Within that, fewer rows per Run
# are faster per row (the activations stay in cache): gradient calls of 16 rows on 2 threads,
# ResNet-50 1525 -> 1360-1390 ms in Runs of 1-2 rows instead of 8, a ViT-S/16 2190 -> 2050.
# Below it the fixed cost of a Run (per node, per call) would show.
RUN_SECONDS = 0.02
#
# A call whose outputs have no row timed yet sends `workers` rows first, a row per Run, and
# times them. What a Run allocates is new to the process then (the kernel maps and zeroes
# each page), and it grows with the Run's rows: ResNet-50's first gradient call of 16 rows on
# 2 threads took 5.5 s in two Runs of 8 and 2.0 s in Runs of 1 (later calls: 2.1 and 1.9 s);
# one explanation with --steps auto (35 points) took 7.5 s, then 5.7-6.1 s. Slow rows, which
# later calls also send a row per Run, go on so; fast rows are all done again as later calls
# do them (a row alone rounds apart from the same row among others), so that no row's result
# depends on which call came first, and the memory probe (rows_within) measures the Runs
# later calls use.


def _first_line(exc: Exception) -> str:
    """An error's first line; ONNX Runtime's without its C++ source location, function
    signature and failed assertion ("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code
    returned while running Reshape node. Name:'r' Status Message: /onnxruntime_src/...h:91
    onnxruntime::ReshapeHelper::ReshapeHelper(...) ... was false. The input tensor cannot be
    reshaped ..." becomes "Reshape node 'r': The input tensor cannot be reshaped ...")."""
    text = str(exc).strip()
    lines = text.splitlines()
    line = lines[0] if text else type(exc).__name__
    if line.endswith("for the following indices"):  # the dims that were wrong come next
        line += ": " + ", ".join(
            rest.strip() for rest in lines[1:] if rest.strip().startswith("index")
        )
    line = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", line)
    node = re.match(r"Non-zero status code returned while running (\w+) node\. "
                    r"Name:'([^']*)' Status Message: (.*)$", line)  # fmt: skip
    if node is None:
        return _without_source(line)
    return f"{node.group(1)} node '{node.group(2)}': {_without_source(node.group(3))}"


def _without_source(message: str) -> str:
    """ONNX Runtime's message without the C++ file:line, function signature and assertion
    in front of the sentence ('/onnxruntime_src/...h:46 void onnxruntime::f(const std::
    string&, int) cond was false. Opset 99 is ...' becomes 'Opset 99 is ...')."""
    found = re.search(r"/onnxruntime_src/\S+:\d+ ", message)
    if found is None:
        return message
    head, rest = message[: found.start()], message[found.end() :]
    paren = rest.find("(")
    if 0 <= paren < 200 and "." not in rest[:paren]:  # a signature: skip to its last ')'
        depth = 0
        for k in range(paren, len(rest)):
            depth += {"(": 1, ")": -1}.get(rest[k], 0)
            if depth == 0:
                rest = rest[k + 1 :].lstrip()
                rest = re.sub(r"^(?:const\s+)?", "", rest)
                break
    rest = re.sub(r"^[^.]* was false\.\s*(?=\S)", "", rest)
    return head + rest


class ModelRunner:
    """One ONNX Runtime session, called on batches of `batch_size` rows, timed and counted.

    For a gradient model (see gradients.with_target_seed) each row also carries a target
    index; `run` then passes NO_TARGET, which zeroes the seed: ONNX Runtime runs the whole
    graph whatever outputs are asked for, so the forward values come from the same session.

    Models whose batch dimension is fixed at 1 are first tried with it made dynamic; when the
    graph itself hard-codes the batch (a Reshape to [1, -1], say), rows go one per call.

    On the CPU a call's rows are split over `workers` single-threaded `Run`s at once (one
    session may run concurrently), rather than one `Run` on ONNX Runtime's intra-op
    threads, which meet at every op: 2 threads, gradient calls, ResNet-50 at 16 rows 1750
    -> 1450 ms, ViT-S/16 2220 -> 1860 ms, digits at 256 rows 38.5 -> 33.2 ms. Where rows
    are slow (see RUN_SECONDS) they go in Runs of fewer rows still, `workers` at a time, and
    one at a time with one worker: a Run's memory is then that of its few rows (ResNet-50,
    --threads 1, --steps auto, at a time when page faults were slow: 12.8-13.2 s in Runs of
    16 rows, 3.3 s of it the kernel's, 8.7-9.1 s in Runs of 1; 10.8 s either way when they
    were not; under --memory-limit 1G it peaked at 1.56 GB, now 0.6). Runners that take one
    row per call use the intra-op threads instead.
    """

    def __init__(
        self,
        model: onnx.ModelProto | None,
        path: Path,
        input_name: str,
        output_name: str,
        *,
        feeds: dict[str, Feed] | None = None,
        providers: list[str] | None = None,
        threads: int | None = None,
        batch_size: int = 64,
        target_input: str | None = None,
        cache_key: str | None = None,
        exported_batch: int | None = None,
    ) -> None:
        """`model` may be None when `cache_key` names an optimised graph saved by an earlier
        run (see `from_cache`); with a key, this run's optimised graph is saved for the next.
        `exported_batch`: `model`'s batch is symbolic, made so (with_dynamic_batch) from a
        model fixed at that batch, so the fixed form is still tried if the dynamic one fails.
        """
        self.path, self.input_name, self.output_name = path, input_name, output_name
        self.batch_size = max(1, batch_size)
        self.providers = providers or ["CPUExecutionProvider"]
        self.threads = threads
        self.extra_feeds = feeds or {}
        self.target_input = target_input
        self.tuner = None  # a RowTuner (memory.py) chooses rows per call below batch_size
        self.pad_to: int | None = None  # a fixed batch > 1 that every Run must be given
        self._cores = row_workers(threads, self.providers)
        self.workers = min(self._cores, self.batch_size)
        self._pool: ThreadPoolExecutor | None = None
        self._row_seconds: dict[tuple[str, ...], float] = {}  # one thread's time per row
        self._cache_key = cache_key
        self._reset_counters()
        if model is None:
            return  # from_cache fills in the session
        spec = next(i for i in graph_inputs(model) if i.name == input_name)
        if output_name not in {o.name for o in graph_outputs(model)}:
            names = ", ".join(o.name for o in graph_outputs(model))
            raise UsageError(f"model has no output {output_name!r} (outputs: {names})")
        fixed_batch = declared_batch(model, input_name)
        variant = with_dynamic_batch(model, fixed_batch) if fixed_batch else model
        made_dynamic = bool(exported_batch and not fixed_batch)
        fixed_batch = exported_batch if made_dynamic else fixed_batch
        saved = self._saved(cache_key)
        self._open(make_session(variant, path, self.providers, self._intra_op(), saved))
        if fixed_batch and not self._dynamic_batch_works(spec):
            if saved is not None:  # saved above, but it cannot take a batch
                with contextlib.suppress(OSError):
                    for stale in (saved, *optimized_data(saved)):
                        stale.unlink()
            fixed = self._saved(cache_key, "batch1")  # (the fixed-batch entry, any size)
            self.workers = 1
            if made_dynamic:
                model = with_fixed_batch(model, fixed_batch)
            self._open(make_session(model, path, self.providers, self._intra_op(), fixed))
            self._fix_batch()
        self._reset_counters()  # the probe above is not part of the work

    @classmethod
    def from_cache(cls, cache_key: str, path: Path, input_name: str, output_name: str, **kw):
        """A runner on the optimised graph an earlier run saved under `cache_key`, or None."""
        runner = cls(None, path, input_name, output_name, **kw)
        for variant, batch_size in (("", runner.batch_size), ("batch1", 1)):
            runner.workers = min(runner._cores, batch_size)
            saved = runner._saved(cache_key, variant)
            session = open_optimized(saved, runner.providers, runner._intra_op())
            if session is not None:
                runner._open(session)
                runner.batch_size, runner._cache_key = batch_size, cache_key
                if variant:
                    runner._fix_batch()
                return runner
        return None

    def _fix_batch(self) -> None:
        """The session takes exactly its declared batch: 1 (a row per call), or the 8 a
        model was exported with and hard-codes inside (a Reshape to [8, -1]), whose calls
        then take up to 8 rows, padded to 8 (see `call`)."""
        shape = next(i.shape for i in self.session.get_inputs() if i.name == self.input_name)
        size = shape[0] if shape and isinstance(shape[0], int) and shape[0] > 1 else 1
        self.batch_size, self.workers, self.pad_to = size, 1, size if size > 1 else None

    def _intra_op(self) -> int | None:
        """ONNX Runtime's intra-op threads per Run: the threads the workers leave (1 when
        there are as many workers as threads; more where calls have fewer rows than cores)."""
        return max(1, self._cores // self.workers) if self.workers > 1 else self.threads

    def one_row_per_call(self) -> None:
        """One row per call (rows that change each other's outputs, or a memory budget of
        one row): then ONNX Runtime's own threads serve each call (reopened from the cached
        graph when there is one)."""
        self.batch_size = 1
        if self.workers <= 1:
            return
        self.workers = 1
        saved = self._saved(self._cache_key)
        session = open_optimized(saved, self.providers, self._intra_op()) if saved else None
        if session is not None:
            self._open(session)

    def has_saved(self, cache_key: str) -> bool:
        """Whether this runner's optimised graph is in the cache under `cache_key`."""
        paths = (self._saved(cache_key), self._saved(cache_key, "batch1"))
        return any(p is not None and p.is_file() for p in paths)

    def _saved(self, cache_key: str | None, variant: str = "") -> Path | None:
        if cache_key is None:
            return None
        from igcli.cache import optimized_path

        return optimized_path(cache_key + variant, self.providers)

    def _open(self, session: ort.InferenceSession) -> None:
        self.session = session
        # a cut model, or a graph specialised by igcli, may no longer read every input
        self.takes = {i.name for i in session.get_inputs()}
        types = {i.name: i.type for i in session.get_inputs()}
        types.update({o.name: o.type for o in session.get_outputs()})
        self.input_dtype = _ort_dtype(types[self.input_name])
        self.output_dtype = _ort_dtype(types.get(self.output_name, "tensor(float)"))

    def _reset_counters(self) -> None:
        self.calls = 0
        self.rows = 0
        self.seconds = 0.0  # time inside ONNX Runtime, for benchmarks

    def _dynamic_batch_works(self, spec: TensorSpec) -> bool:
        shape = [2] + [d if isinstance(d, int) and d > 0 else 1 for d in spec.shape[1:]]
        rows = np.zeros(shape, dtype=self.input_dtype)
        try:  # two rows in one Run: split over workers, one row each would always pass
            out = self.call(rows, [self.output_name], split=False)[0]
        except InputError:
            return False
        return out.shape[:1] == (2,)

    def _feeds_for(
        self, batch: np.ndarray, targets: np.ndarray | None, context: Context | None = None
    ) -> dict[str, np.ndarray]:
        feeds = {self.input_name: batch}
        for name, feed in {**self.extra_feeds, **(context or {})}.items():
            if name in self.takes:
                feeds[name] = feed.for_rows(len(batch))
        if self.target_input is not None:
            if targets is None:
                targets = np.full(len(batch), NO_TARGET, dtype=np.int64)
            feeds[self.target_input] = np.ascontiguousarray(targets, dtype=np.int64)
        return feeds

    def batches(self, points: np.ndarray):
        """(start row, contiguous batch of at most batch_size rows in the input's dtype); the
        rows per call are the tuner's choice below that cap when one is set."""
        start = 0
        while start < len(points):
            size = self.batch_size
            if self.tuner is not None:
                size = max(1, min(size, self.tuner.next_size()))
            yield start, np.ascontiguousarray(points[start : start + size], self.input_dtype)
            start += size

    def call(
        self,
        batch: np.ndarray,
        outputs: list[str],
        targets: np.ndarray | None = None,
        context: Context | None = None,
        split: bool = True,
    ) -> list[np.ndarray]:
        """One model call, timed and counted; a runtime failure becomes a one-line error.
        `context` holds values of other inputs for these rows (see stack_contexts). Its rows
        go to the workers in parts unless `split` is False (probes of what one Run does)."""
        rows = len(batch)
        if self.pad_to and rows < self.pad_to:  # a model fixed at a batch of pad_to
            batch, targets, context = _padded(batch, targets, context, self.pad_to)
        start = time.perf_counter()
        parts = 0
        # (on the CPU, with one worker too; a model fixed at a batch takes it whole: that is
        # where workers > 1 could be, see row_workers and _fix_batch)
        in_parts = self.providers == ["CPUExecutionProvider"] and not self.pad_to
        try:
            if split and in_parts and len(batch) > 1:
                result, parts = self._run_in_parts(batch, outputs, targets, context)
            else:
                result = self.session.run(outputs, self._feeds_for(batch, targets, context))
        except InputError:  # (its parts' outputs could not be joined: join_rows says why)
            raise
        except RuntimeError as exc:
            if str(exc).startswith("can't start new thread"):  # the machine's memory, not
                raise  # this input: the run stops, 'memory ran out' (exit 2), as elsewhere
            raise InputError(f"model call failed: {_first_line(exc)}", self.path) from None
        except Exception as exc:
            raise InputError(f"model call failed: {_first_line(exc)}", self.path) from None
        finally:
            spent = time.perf_counter() - start
            self.seconds += spent
        if parts:
            self._row_seconds[tuple(outputs)] = spent * min(self.workers, parts) / len(batch)
        self.calls += 1
        self.rows += rows
        if self.tuner is not None:
            self.tuner.record(rows, spent)
        out = [_with_row_axis(r, len(batch)) for r in result]
        return [o[:rows] for o in out] if len(batch) > rows else out

    def _run_in_parts(self, batch, outputs, targets, context) -> tuple[list[np.ndarray], int]:
        """The rows in parts, each a Run, `workers` at a time (see `_edges`). Where no row of
        these outputs was timed yet, `workers` rows go first, a row per Run, and time one
        (why: beside RUN_SECONDS). Returns the outputs and the number of parts."""
        n, key = len(batch), tuple(outputs)
        first = None  # (the timed rows' outputs, on a first call)
        if key not in self._row_seconds:
            head = min(self.workers, n)
            start = time.perf_counter()
            first = self._parts(batch, outputs, targets, context, list(range(head + 1)))
            self._row_seconds[key] = time.perf_counter() - start
            if head == n:
                return first, n
        edges = self._edges(n, key)
        if first is not None and len(edges) == n + 1:  # slow rows: later calls go so too
            rest = self._parts(batch, outputs, targets, context, edges[head:])
            pairs = zip(first, rest, strict=True)
            return [
                join_rows(list(p), o, self.path) for p, o in zip(pairs, outputs, strict=True)
            ], n
        # (fast rows first timed: their Runs take several rows, which round apart from one
        # alone, so these are done again as every later call does them)
        return self._parts(batch, outputs, targets, context, edges), len(edges) - 1

    def _edges(self, n: int, key: tuple[str, ...]) -> list[int]:
        """Where n rows are cut into parts: `workers` nearly equal parts, or where rows were
        timed slow enough, parts of as few rows as take RUN_SECONDS."""
        k = min(self.workers, n)
        per_row = self._row_seconds.get(key)
        if per_row is not None and per_row > 0:
            k = max(k, min(n, n // max(1, math.ceil(RUN_SECONDS / per_row))))
        return [n * i // k for i in range(k + 1)]

    def _parts(self, batch, outputs, targets, context, edges: list[int]) -> list[np.ndarray]:
        """Rows edges[i]:edges[i + 1] in a Run each, `workers` at a time (one after another
        with one worker); the outputs of rows edges[0]:edges[-1]."""
        n = len(batch)

        def part(i: int) -> list:
            a, b = edges[i], edges[i + 1]
            rows = None if targets is None else targets[a:b]
            feeds = self._feeds_for(batch[a:b], rows, rows_of(context, a, b - a, n))
            return [_with_row_axis(r, b - a) for r in self.session.run(outputs, feeds)]

        k = len(edges) - 1
        if k == 1:
            return part(0)
        if self.workers == 1:
            parts = [part(i) for i in range(k)]
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="igcli-rows")
            parts = list(self._pool.map(part, range(k)))
        return [join_rows([p[j] for p in parts], name, self.path) for j, name in enumerate(outputs)]

    def run(
        self, points: np.ndarray, context: Context | None = None, rows_first: bool = True
    ) -> np.ndarray:
        """Output for each row of `points` (rows are model inputs without the batch axis);
        `context`: other inputs' values for one sample, or one entry per row. `rows_first`
        False: the caller reads the output's rows itself (a tensor --at names may not have
        its batch first, and is refused in words about --at)."""
        outs = []
        for start, batch in self.batches(points):
            rows = rows_of(context, start, len(batch), len(points))
            outs.append(self.call(batch, [self.output_name], context=rows)[0])
        result = join_rows(outs, self.output_name, self.path)
        if rows_first:
            check_rows(result, len(points), self.output_name, self.path)
        check_output(result, self.output_name, self.path)
        return result


def _padded(batch: np.ndarray, targets, context, size: int):
    """Rows padded to `size` with copies of the last (their outputs are dropped)."""
    extra = size - len(batch)

    def pad(a: np.ndarray, axis: int = 0) -> np.ndarray:
        last = np.take(a, [a.shape[axis] - 1], axis=axis)
        return np.concatenate([a, np.repeat(last, extra, axis=axis)], axis=axis)

    if targets is not None:
        targets = pad(np.asarray(targets))
    if context is not None:
        context = {
            name: Feed(pad(f.value, f.batch_axis), f.batch_axis)
            if f.batch_axis is not None and f.value.shape[f.batch_axis] == len(batch) > 1
            else f
            for name, f in context.items()
        }
    return pad(batch), targets, context


def _with_row_axis(output, rows: int) -> np.ndarray:
    """A model output as rows: a scalar output (a model that sums over everything, its
    first axis included) is the value of a one-row call; of more rows it is left as it is,
    for the rows-independence probe to see that it is no batch."""
    out = np.asarray(output)
    return out.reshape(1) if out.ndim == 0 and rows == 1 else out


def rows_of(context: Context | None, start: int, n: int, total: int) -> Context | None:
    """The part of a per-row context for rows start:start+n of `total`."""
    if context is None:
        return None
    return {k: f.rows(start, start + n, total) for k, f in context.items()}


def join_rows(parts: list[np.ndarray], name: str, path: Path) -> np.ndarray:
    """The values of output `name` from calls on consecutive rows, as one array. A detector
    whose number of detections changes from row to row (3 boxes at the input, 10 on black)
    cannot be joined: an InputError says so, where numpy's ValueError was an internal error."""
    if len({p.shape[1:] for p in parts}) > 1:
        shapes = " and ".join(sorted({str(list(p.shape[1:])) for p in parts}))
        raise InputError(
            f"output {name!r} changes shape from one path point to another ({shapes} per "
            "row): a detector whose number of detections changes along the path has no "
            "fixed value to attribute; choose an output of fixed shape with --output",
            path,
        )
    return np.concatenate(parts, axis=0)


def check_rows(values: np.ndarray, rows: int, name: str, path: Path) -> None:
    """A call's values of output `name` hold one entry per row on their first axis. A model
    whose output only claims the batch ([batch_size], giving 2 scores for one row) ended in
    an internal error (an index past the end) where its values were read per row."""
    if len(values) != rows:
        raise InputError(
            f"output {name!r} gives {len(values)} entries on its first axis for {rows} "
            f"row(s): that axis is not the batch it declares",
            path,
        )


def check_output(values: np.ndarray, name: str, path: Path) -> None:
    """A call's values of output `name`: some for each row (a detector that found no boxes
    here has nothing to attribute), all finite."""
    if values.size == 0 and len(values):
        raise InputError(
            f"output {name!r} has no values at this input {list(values.shape[1:])}: "
            "nothing to attribute",
            path,
        )
    check_finite(values, f"output {name!r}", path)


def check_finite(
    values: np.ndarray, what: str, path: Path, error: type[InputError] = InputError
) -> None:
    if not np.all(np.isfinite(values)):
        bad = "NaN" if np.isnan(values).any() else "Inf"
        raise error(f"{what} contains {bad}", path)
