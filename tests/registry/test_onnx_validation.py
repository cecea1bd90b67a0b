"""ONNX artifacts at registration: the graph's inputs and outputs against the config, a dynamic batch
dimension, no custom operator domains, no external data; checked in the validation process."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from registry.artifacts import ArtifactError, check_container, sniff
from registry.models import ModelVersion
from registry.onnx_artifacts import load_onnx
from registry.schemas import parse_tensor_schema
from registry.validation import validate_model_only
from tests.helpers import register
from tests.onnx_models import graph_bytes, onnx_config, torch_onnx_bytes

pytestmark = pytest.mark.django_db


def specs(inputs, outputs):
    return parse_tensor_schema(inputs, where="inputs"), parse_tensor_schema(outputs, where="outputs")


IN = [{"name": "input", "datatype": "FP32", "shape": [4]}]
OUT = [{"name": "output", "datatype": "FP32", "shape": [3]}]


def test_an_onnx_model_registers_and_validates_in_its_process():
    version = register(torch_onnx_bytes(), onnx_config(example=[5.1, 3.5, 1.4, 0.2]), model_name="onnx-mlp")
    assert version.status == ModelVersion.Status.READY and version.format == "onnx"
    assert version.artifact.name.endswith(".onnx")


def test_a_fixed_batch_dimension_is_refused_at_validation():
    with pytest.raises(ValidationError) as err:
        register(torch_onnx_bytes(dynamic=False), onnx_config(), model_name="fixed")
    message = " ".join(err.value.messages)
    assert "input 'input' has a fixed first dimension (1)" in message and "dynamic batch dimension" in message
    assert not ModelVersion.objects.exists()


def test_a_custom_operator_domain_is_refused_at_validation():
    with pytest.raises(ValidationError) as err:
        register(graph_bytes(domain="com.example.ops"), onnx_config(), model_name="custom")
    assert "operators outside the standard domains: com.example.ops::MatMul" in " ".join(err.value.messages)


def test_external_data_is_refused():
    with pytest.raises(ArtifactError, match=r"external files \(W\).*refused"):
        load_onnx(graph_bytes(external=True), inputs=specs(IN, OUT)[0], outputs=specs(IN, OUT)[1])


@pytest.mark.parametrize(("inputs", "outputs", "expected"), [
    ([{"name": "input", "datatype": "FP32", "shape": [5]}], OUT,
     "input 'input' dimension 1 is 4 in the graph, 5 in the config"),
    ([{"name": "input", "datatype": "FP32", "shape": [-1]}], OUT,
     "input 'input' dimension 1 is 4 in the graph, variable (-1) in the config"),
    ([{"name": "input", "datatype": "FP32", "shape": [2, 2]}], OUT,
     "input 'input' has 2 dimensions in the graph (batch first), the config declares 2 after"),
    ([{"name": "input", "datatype": "FP64", "shape": [4]}], OUT, "input 'input' is FP32 in the graph, FP64 in the config"),
    ([{"name": "x", "datatype": "FP32", "shape": [4]}], OUT, "the graph's input 'input' is not in the config's inputs"),
    (IN, [{"name": "logits", "datatype": "FP32", "shape": [3]}], "output 'logits' is not an output of the graph"),
    (IN, [{"name": "output", "datatype": "FP32", "shape": [2]}], "output 'output' dimension 1 is 3 in the graph, 2"),
])
def test_the_graph_is_checked_against_the_config(inputs, outputs, expected):
    with pytest.raises(ArtifactError, match="The ONNX graph does not match the config") as err:
        load_onnx(torch_onnx_bytes(), inputs=specs(inputs, outputs)[0], outputs=specs(inputs, outputs)[1])
    assert expected in str(err.value)


def test_a_shape_mismatch_fails_the_registration_with_the_reason():
    cfg = onnx_config(inputs=[{"name": "input", "datatype": "FP32", "shape": [5]}])
    with pytest.raises(ValidationError) as err:
        register(torch_onnx_bytes(), cfg, model_name="mismatch")
    assert "dimension 1 is 4 in the graph, 5 in the config" in " ".join(err.value.messages)


def test_the_registrys_own_validator_checks_onnx_graphs(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(torch_onnx_bytes())
    details = validate_model_only(config=onnx_config(), artifact_path=str(path), allow_code=False)
    assert details == {"graph_inputs": ["input"], "graph_outputs": ["output"]}
    path.write_bytes(torch_onnx_bytes(dynamic=False))
    with pytest.raises(ArtifactError, match="fixed first dimension"):
        validate_model_only(config=onnx_config(), artifact_path=str(path), allow_code=False)


def test_the_container_is_sniffed_before_a_background_validation():
    assert sniff(torch_onnx_bytes()) == "onnx"
    check_container(torch_onnx_bytes(), "onnx")
    with pytest.raises(ArtifactError, match="not a onnx file"):
        check_container(b"PK\x03\x04 a zip", "onnx")
