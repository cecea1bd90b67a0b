"""ONNX artifacts: from bytes to a checked ``ModelProto`` whose inputs and outputs match the config.

An ONNX file is a protobuf graph of standard operators: parsing it runs no code from the file,
so the format is safe by default. What could still reach outside the graph is refused here,
before any runtime sees the bytes:

* operators of a domain other than ONNX's own (``""``/``ai.onnx``) and ``ai.onnx.ml``: they
  need a custom-op library, which the platform never loads;
* tensors whose data lies in external files (``data_location: EXTERNAL``): their paths
  point outside the artifact.

The sha256 of the bytes is checked first, and their size against INFERENCE_MAX_ARTIFACT_BYTES,
on every load. Then the graph's inputs and outputs (names, element types, shapes) are checked
against the version's config; the first dimension of every input must be dynamic (the batch).
``onnx`` is imported here only, when an ONNX artifact is loaded.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from .artifacts import ArtifactError, check_sha256
from .schemas import DATATYPES, TensorSpec

#: Operator domains an artifact may use: ONNX's own and ONNX-ML (scikit-learn converters).
ALLOWED_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")

#: numpy dtype name -> the Open Inference Protocol datatype (the inverse of DATATYPES).
_OIP_OF_NUMPY = {np_name: oip for oip, np_name in DATATYPES.items()}


@dataclass(frozen=True)
class GraphTensor:
    """One input or output of a graph: its name, OIP datatype and dimensions (None: dynamic)."""

    name: str
    datatype: str | None  # None: not a tensor (a sequence or map) or an element type OIP lacks
    dims: tuple[int | None, ...] | None  # None: the graph declares no shape
    kind: str = "tensor"


def _tensors(graph: Any) -> Iterator[Any]:
    """Every TensorProto of a graph and of its subgraphs (initializers, constants, attributes)."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: Any) -> Iterator[Any]:
    for attr in node.attribute:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        if attr.HasField("sparse_tensor"):
            yield attr.sparse_tensor.values
            yield attr.sparse_tensor.indices
        if attr.HasField("g"):
            yield from _tensors(attr.g)
        for sub in attr.graphs:
            yield from _tensors(sub)


def _nodes(graph: Any) -> Iterator[Any]:
    """Every node of a graph and of its subgraphs (If/Loop/Scan bodies)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _nodes(attr.g)
            for sub in attr.graphs:
                yield from _nodes(sub)


def check_graph_safety(model: Any) -> None:
    """Raise ArtifactError for custom operator domains or external tensor data anywhere in the model."""
    functions = {(f.domain, f.name) for f in model.functions}  # model-local functions: standard ops inside
    nodes = list(_nodes(model.graph))
    for function in model.functions:
        nodes.extend(function.node)
    custom = sorted({f"{n.domain}::{n.op_type}" for n in nodes
                     if n.domain not in ALLOWED_DOMAINS and (n.domain, n.op_type) not in functions})
    if custom:
        raise ArtifactError(
            f"The ONNX graph uses operators outside the standard domains: {', '.join(custom[:10])}. Custom "
            f"operators need a custom-op library, which this platform never loads; export with standard "
            f"operators only (domains {', '.join(repr(d) for d in ALLOWED_DOMAINS)})."
        )
    tensors = list(_tensors(model.graph))
    for function in model.functions:
        for node in function.node:
            tensors.extend(_node_tensors(node))
    external = sorted({t.name or "(unnamed)" for t in tensors if t.data_location == t.EXTERNAL})
    if external:
        raise ArtifactError(
            f"The ONNX model keeps tensor data in external files ({', '.join(external[:10])}): their paths lie "
            "outside the artifact and are refused. Save the model as one file (onnx.save_model(model, path, "
            "save_as_external_data=False); the limit is 2 GB)."
        )


def _graph_tensor(value: Any) -> GraphTensor:
    import onnx

    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        return GraphTensor(value.name, None, None, kind=(kind or "unknown").replace("_type", ""))
    tensor_type = value.type.tensor_type
    try:
        np_name = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
    except (KeyError, ValueError, TypeError):
        np_name = ""
    datatype = "BYTES" if tensor_type.elem_type == onnx.TensorProto.STRING else _OIP_OF_NUMPY.get(np_name)
    dims = None
    if tensor_type.HasField("shape"):
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor_type.shape.dim)
    return GraphTensor(value.name, datatype, dims)


def graph_io(model: Any) -> tuple[list[GraphTensor], list[GraphTensor]]:
    """The inputs (initializers excluded: older exporters list them as inputs too) and outputs of a graph."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [_graph_tensor(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [_graph_tensor(v) for v in model.graph.output]


def _check_tensor(where: str, spec: TensorSpec, graph: GraphTensor, *, batch_required: bool) -> list[str]:
    problems = []
    if graph.datatype is None:
        return [f"{where} {spec.name!r} is a {graph.kind} in the graph, not a tensor (convert scikit-learn "
                "classifiers with options={'zipmap': False})"]
    if graph.datatype != spec.datatype:
        problems.append(f"{where} {spec.name!r} is {graph.datatype} in the graph, {spec.datatype} in the config")
    if graph.dims is None:
        return problems
    if len(graph.dims) != len(spec.shape) + 1:
        return [*problems, f"{where} {spec.name!r} has {len(graph.dims)} dimensions in the graph (batch first), "
                f"the config declares {len(spec.shape)} after the batch dimension ({list(spec.shape)})"]
    if batch_required and graph.dims[0] is not None:
        problems.append(
            f"{where} {spec.name!r} has a fixed first dimension ({graph.dims[0]}) in the graph: batching needs a "
            "dynamic batch dimension (torch.onnx.export(..., dynamic_axes={name: {0: 'batch'}}); skl2onnx: "
            "initial_types with None as the first dimension)")
    for i, (g, c) in enumerate(zip(graph.dims[1:], spec.shape), start=1):
        if g is not None and c != g:
            problems.append(f"{where} {spec.name!r} dimension {i} is {g} in the graph, "
                            f"{'variable (-1)' if c == -1 else c} in the config")
    return problems


def check_io(model: Any, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> None:
    """Raise ArtifactError unless the config's inputs are exactly the graph's, with the same datatypes
    and shapes and a dynamic batch dimension, and each output the config declares is one of the graph's."""
    graph_inputs, graph_outputs = graph_io(model)
    by_name_in = {t.name: t for t in graph_inputs}
    by_name_out = {t.name: t for t in graph_outputs}
    problems = []
    declared = {s.name for s in inputs}
    for name in sorted(set(by_name_in) - declared):
        problems.append(f"the graph's input {name!r} is not in the config's inputs")
    for spec in inputs:
        if spec.name not in by_name_in:
            problems.append(f"input {spec.name!r} is not an input of the graph (its inputs: {sorted(by_name_in)})")
        else:
            problems.extend(_check_tensor("input", spec, by_name_in[spec.name], batch_required=True))
    for spec in outputs:
        if spec.name not in by_name_out:
            problems.append(f"output {spec.name!r} is not an output of the graph (its outputs: {sorted(by_name_out)})")
        else:
            problems.extend(_check_tensor("output", spec, by_name_out[spec.name], batch_required=False))
    if problems:
        raise ArtifactError("The ONNX graph does not match the config: " + "; ".join(problems) + ".")


def load_onnx(
    data: bytes,
    *,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    expected_sha256: str | None = None,
) -> Any:
    """Return the checked ``onnx.ModelProto`` an artifact's bytes hold; ArtifactError with the reason."""
    check_sha256(data, expected_sha256)
    limit = settings.INFERENCE_MAX_ARTIFACT_BYTES
    if limit and len(data) > limit:
        raise ArtifactError(f"The artifact is {len(data)} bytes, over INFERENCE_MAX_ARTIFACT_BYTES ({limit} bytes).")
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ArtifactError(f"Corrupt or truncated ONNX file (not a ModelProto): {exc}") from exc
    if not model.graph.node and not model.graph.output:
        raise ArtifactError("The ONNX file holds no graph: a damaged file, or not an ONNX model.")
    check_graph_safety(model)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ArtifactError(f"The ONNX model is not valid: {str(exc).strip().splitlines()[0]}") from exc
    check_io(model, inputs, outputs)
    return model


def initializer_bytes(model: Any) -> int:
    """Bytes of the graph's weights (initializers): the model's memory footprint for the cache."""
    import onnx

    total = 0
    for t in model.graph.initializer:
        count = 1
        for d in t.dims:
            count *= d
        try:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        except (KeyError, ValueError, TypeError):
            itemsize = 1
        total += count * itemsize
    return total
