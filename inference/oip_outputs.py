"""What the Open Inference Protocol answers: tensors, as Triton does, never JSON text in BYTES.

A version's postprocess steps split in two: the *tensor* steps (softmax, argmax, round ...)
before the first *structuring* one (``labels``, ``topk``: ``Step.structures``), and the rest.
/api/v1 and jobs run them all (``{"label": "setosa", "score": 0.97}`` per instance); v2 runs
the tensor steps only and answers:

* each declared output, after the tensor steps (FP32 probabilities after ``softmax``, INT64
  indices after ``argmax``);
* where a ``labels`` step exists, one more output, ``<output>_label`` (BYTES): each instance's
  top class name (``argmax`` of the scores, or the name of each index after ``argmax``), the
  label /api/v1 returns;
* Triton's classification extension: an output requested with
  ``"parameters": {"classification": k}`` comes back as BYTES of shape ``[batch, k]`` (k at
  most the number of classes), each ``"<value>:<index>:<label>"``, best first; without a
  label for the index, ``"<value>:<index>"``.

The model metadata (``output_metadata``) is derived from the same steps, so that it lists
exactly the outputs infer returns.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .oip import ProtocolError, tensor_metadata
from .pipeline.base import Pipeline, StepConfigError
from .pipeline.served import class_labels

LABEL_SUFFIX = "_label"
MAX_CLASSIFICATION = 1000


def label_output_name(target: str, output_names: list[str]) -> str:
    """The name of the label output of `target`: ``<target>_label`` (``_`` appended while taken)."""
    name = target + LABEL_SUFFIX
    while name in output_names:
        name += "_"
    return name


def output_metadata(output_schema: list[dict], postprocess: list[dict]) -> list[dict]:
    """The outputs as infer returns them (datatype, shape with the batch dimension as -1).

    ``softmax`` makes its output FP32, ``argmax`` INT64 without the reduced axis; other tensor
    steps (round, an operator's own) keep the declared datatype and shape.
    """
    try:
        post = Pipeline(postprocess, stage="postprocess")
    except StepConfigError:  # a step no longer installed: the version cannot load; say what it declares
        return tensor_metadata(output_schema)
    meta = {m["name"]: m for m in tensor_metadata(output_schema)}
    names = list(meta)
    for step in post.tensor_steps:
        if step.name not in ("softmax", "argmax"):
            continue
        target = getattr(step, "output", None) or (names[0] if len(names) == 1 else None)
        if target not in meta:
            continue
        if step.name == "softmax":
            meta[target]["datatype"] = "FP32"
        else:
            shape, axis = meta[target]["shape"], getattr(step, "axis", -1)
            if -len(shape) <= axis < len(shape) and axis not in (0, -len(shape)):
                del shape[axis]
            meta[target]["datatype"] = "INT64"
    out = list(meta.values())
    for target in class_labels(post, names):
        indices = meta[target]["datatype"] in ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")
        shape = list(meta[target]["shape"]) if indices else [-1]
        out.append({"name": label_output_name(target, names), "datatype": "BYTES", "shape": shape})
    return out


def _label(labels: list[str], index: int) -> str:
    return labels[index] if 0 <= index < len(labels) else str(index)  # as the labels step names it


def top_labels(arr: np.ndarray, labels: list[str]) -> np.ndarray:
    """Each instance's class name: of each index (integers), else of the highest score per instance."""
    if arr.dtype.kind in "iu":
        indices = arr
    else:
        indices = arr.reshape(len(arr), -1).argmax(axis=1)
    out = np.empty(indices.shape, dtype=object)
    out.reshape(-1)[:] = [_label(labels, i) for i in indices.reshape(-1).tolist()]
    return out


def classify(arr: np.ndarray, k: int, labels: list[str] | None) -> np.ndarray:
    """Triton's classification of one output: BYTES [batch, min(k, classes)] of "value:index[:label]"."""
    scores = arr.reshape(len(arr), -1)
    k = min(k, scores.shape[1])
    keys = -scores if scores.dtype.kind == "f" else -scores.astype(np.float64)
    idx = np.argsort(keys, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(scores, idx, axis=1)
    out = np.empty(idx.shape, dtype=object)
    for row, (ri, rv) in enumerate(zip(idx.tolist(), top, strict=True)):
        # str() of the numpy scalar: the shortest text that reads back as the same value of its dtype
        out[row] = [f"{v!s}:{i}:{labels[i]}" if labels is not None and i < len(labels) else f"{v!s}:{i}"
                    for i, v in zip(ri, rv, strict=True)]
    return out


def _classification(params: dict[str, Any], name: str) -> int | None:
    k = params.get("classification")
    if k is None:
        return None
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_CLASSIFICATION:
        raise ProtocolError(f"output {name!r}: classification must be an integer from 1 to {MAX_CLASSIFICATION}")
    return k


def output_tensors(tensors: dict[str, np.ndarray], labels: dict[str, list[str]],
                   requested: list[dict[str, Any]] | None) -> dict[str, np.ndarray]:
    """The response's tensors: the tensor steps' outputs, the label outputs, and the requested
    classifications in place of their outputs."""
    out = dict(tensors)
    names = list(tensors)
    for target, names_of_classes in labels.items():
        if target in tensors:
            out[label_output_name(target, names)] = top_labels(tensors[target], names_of_classes)
    for spec in requested or ():
        name = spec["name"]
        params = spec.get("parameters") or {}
        if not isinstance(params, dict):
            raise ProtocolError(f"output {name!r}: parameters must be an object")
        k = _classification(params, name)
        if k is None or name not in out:
            continue  # an unknown name is refused with the list of outputs when encoding
        if out[name].dtype == object:
            raise ProtocolError(f"output {name!r} holds strings: classification needs a numeric output")
        out[name] = classify(out[name], k, labels.get(name))
    return out
