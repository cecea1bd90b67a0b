"""What v2 answers, unit by unit: metadata derived from the steps, label outputs, classification."""

from __future__ import annotations

import numpy as np
import pytest

from inference.oip import ProtocolError
from inference.oip_outputs import classify, output_metadata, output_tensors

SCHEMA = [{"name": "output", "datatype": "FP16", "shape": [3]}]
LABELS = {"step": "labels", "labels": ["a", "b", "c"]}


def test_metadata_follows_the_tensor_steps_and_adds_a_label_output():
    assert output_metadata(SCHEMA, []) == [{"name": "output", "datatype": "FP16", "shape": [-1, 3]}]
    assert output_metadata(SCHEMA, [{"step": "softmax"}, LABELS, {"step": "round"}]) == [
        {"name": "output", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "output_label", "datatype": "BYTES", "shape": [-1]}]
    assert output_metadata(SCHEMA, [{"step": "argmax"}, LABELS]) == [
        {"name": "output", "datatype": "INT64", "shape": [-1]},
        {"name": "output_label", "datatype": "BYTES", "shape": [-1]}]
    # topk structures: the steps after it (argmax here) do not change the tensor v2 answers
    assert output_metadata(SCHEMA, [{"step": "topk", "k": 2}, {"step": "argmax"}]) == [
        {"name": "output", "datatype": "FP16", "shape": [-1, 3]}]
    two = [{"name": "a", "datatype": "FP32", "shape": [2]}, {"name": "a_label", "datatype": "FP32", "shape": [2]}]
    assert output_metadata(two, [{**LABELS, "output": "a"}])[-1] == {"name": "a_label_", "datatype": "BYTES",
                                                                     "shape": [-1]}
    assert output_metadata(two, [LABELS]) == output_metadata(two, [])  # which output it names is unknown


def test_label_outputs_and_classification_strings():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], np.float32)
    out = output_tensors({"output": scores}, {"output": ["a", "b", "c"]}, None)
    assert out["output"] is scores and out["output_label"].tolist() == ["b", "a"]
    indices = output_tensors({"output": np.array([2, 0, 7])}, {"output": ["a", "b", "c"]}, None)
    assert indices["output_label"].tolist() == ["c", "a", "7"]  # as the labels step names an unknown index
    assert classify(scores, 2, ["a", "b", "c"]).tolist() == [["0.7:1:b", "0.2:2:c"], ["0.5:0:a", "0.3:2:c"]]
    assert classify(scores, 5, None).tolist() == [["0.7:1", "0.2:2", "0.1:0"], ["0.5:0", "0.3:2", "0.2:1"]]
    assert classify(np.array([[1, 5, 10, 4]], np.int32), 2, None).tolist() == [["10:2", "5:1"]]  # Triton's example
    asked = output_tensors({"output": scores}, {"output": ["a", "b", "c"]},
                           [{"name": "output", "parameters": {"classification": 1}}])
    assert asked["output"].tolist() == [["0.7:1:b"], ["0.5:0:a"]]
    with pytest.raises(ProtocolError, match="numeric"):
        output_tensors({"output": scores}, {"output": ["a", "b", "c"]},
                       [{"name": "output_label", "parameters": {"classification": 1}}])
