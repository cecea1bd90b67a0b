"""registry.artifacts.load_module: every format with real models, and every refusal.

The security tests use pickles that really do create a marker file when unpickled the
unsafe way (each has a positive control proving it), and assert that the platform's
loader refuses them without the marker ever appearing.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import zipfile

import pytest
import torch

from registry.architectures import MLP, SmallCNN
from registry.artifacts import ArtifactError, load_module, sha256_of, sniff
from tests.conftest import (
    IRIS_CONFIG,
    safetensors_bytes,
    small_mlp,
    state_dict_bytes,
    torch_export_bytes,
    torchscript_bytes,
)
from tests.helpers import evil_raw_pickle, evil_torch_save, whole_model_bytes

ARCH = "registry.architectures.MLP"
ARGS = IRIS_CONFIG["architecture_args"]


def inputs(n: int = 5) -> torch.Tensor:
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(123))


def assert_same_outputs(loaded, original, x=None) -> None:
    x = inputs() if x is None else x
    with torch.inference_mode():
        expected = original(x)
        got = loaded(x)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-6)


# --- Loading every format -------------------------------------------------------------------


@pytest.mark.parametrize("to_bytes", [safetensors_bytes, state_dict_bytes], ids=["safetensors", "state_dict"])
def test_weight_formats_load_the_same_model(to_bytes):
    original = small_mlp(seed=1)
    fmt = "safetensors" if to_bytes is safetensors_bytes else "state_dict"
    loaded = load_module(to_bytes(original), format=fmt, architecture=ARCH, architecture_args=ARGS)
    assert isinstance(loaded, MLP)
    assert loaded is not original
    assert not loaded.training  # eval mode
    assert_same_outputs(loaded, original)
    # a different model gives different outputs: the comparison above is meaningful
    other = small_mlp(seed=2)
    with torch.inference_mode():
        assert not torch.allclose(loaded(inputs()), other(inputs()))


def test_state_dict_inside_a_training_checkpoint_loads():
    original = small_mlp(seed=3)
    buf = io.BytesIO()
    torch.save({"state_dict": original.state_dict(), "epoch": 7}, buf)
    loaded = load_module(buf.getvalue(), format="state_dict", architecture=ARCH, architecture_args=ARGS)
    assert_same_outputs(loaded, original)


def test_small_cnn_loads_from_safetensors():
    torch.manual_seed(4)
    args = {"in_channels": 1, "num_classes": 10, "image_size": 8, "channels": [4, 8]}
    original = SmallCNN(**args).eval()
    loaded = load_module(
        safetensors_bytes(original), format="safetensors", architecture="registry.architectures.SmallCNN",
        architecture_args=args,
    )
    assert_same_outputs(loaded, original, torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)))


def test_weights_from_a_plain_sequential_load_into_mlp():
    torch.manual_seed(5)
    plain = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    loaded = load_module(safetensors_bytes(plain), format="safetensors", architecture=ARCH, architecture_args=ARGS)
    assert_same_outputs(loaded, plain)


def test_torchscript_loads_with_code_allowed():
    original = small_mlp(seed=6)
    loaded = load_module(torchscript_bytes(original), format="torchscript", allow_code=True)
    assert isinstance(loaded, torch.jit.ScriptModule)
    assert_same_outputs(loaded, original)


def test_torch_export_loads_with_code_allowed():
    original = small_mlp(seed=7)
    loaded = load_module(torch_export_bytes(original), format="torch_export", allow_code=True)
    assert_same_outputs(loaded, original)
    assert_same_outputs(loaded, original, inputs(17))  # dynamic batch dimension


@pytest.mark.parametrize(
    ("fmt", "to_bytes"), [("torchscript", torchscript_bytes), ("torch_export", torch_export_bytes)]
)
def test_code_formats_refused_when_code_is_not_allowed(fmt, to_bytes):
    with pytest.raises(ArtifactError) as exc:
        load_module(to_bytes(small_mlp()), format=fmt, allow_code=False)
    assert "INFERENCE_ALLOW_CODE_ARTIFACTS" in str(exc.value)


def test_code_formats_follow_the_setting_by_default(settings):
    data = torchscript_bytes(small_mlp())
    settings.INFERENCE_ALLOW_CODE_ARTIFACTS = False
    with pytest.raises(ArtifactError, match="code artifacts are disabled"):
        load_module(data, format="torchscript")
    settings.INFERENCE_ALLOW_CODE_ARTIFACTS = True
    assert_same_outputs(load_module(data, format="torchscript"), small_mlp())


def test_code_format_that_is_not_an_archive():
    with pytest.raises(ArtifactError, match="zip"):
        load_module(safetensors_bytes(small_mlp()), format="torchscript", allow_code=True)


def test_corrupt_torchscript_archive():
    data = torchscript_bytes(small_mlp())
    with pytest.raises(ArtifactError, match="Cannot load the torchscript archive"):
        load_module(data[: len(data) // 2], format="torchscript", allow_code=True)


def test_unknown_format_is_refused():
    with pytest.raises(ArtifactError, match="Unknown artifact format 'keras'"):
        load_module(safetensors_bytes(small_mlp()), format="keras", architecture=ARCH, architecture_args=ARGS)
    # onnx is known, and not the PyTorch loader's: its runtime (INFERENCE_RUNTIMES) loads it.
    with pytest.raises(ArtifactError, match="Format 'onnx' is not a PyTorch artifact"):
        load_module(safetensors_bytes(small_mlp()), format="onnx")


# --- sha256 -------------------------------------------------------------------------------


def test_sha256_checked_before_loading():
    data = safetensors_bytes(small_mlp())
    digest = hashlib.sha256(data).hexdigest()
    assert sha256_of([data[:10], data[10:]]) == digest
    loaded = load_module(data, format="safetensors", architecture=ARCH, architecture_args=ARGS, expected_sha256=digest)
    assert_same_outputs(loaded, small_mlp())

    tampered = bytearray(data)
    tampered[-1] ^= 0x01  # flip one bit of the last weight: still a valid safetensors file
    with pytest.raises(ArtifactError) as exc:
        load_module(bytes(tampered), format="safetensors", architecture=ARCH, architecture_args=ARGS,
                    expected_sha256=digest)
    assert "sha256" in str(exc.value)
    assert digest in str(exc.value)


# --- Damaged and mislabelled files --------------------------------------------------------


def test_sniff_recognises_the_formats():
    assert sniff(safetensors_bytes(small_mlp())) == "safetensors"
    assert sniff(state_dict_bytes(small_mlp())) == "zip"
    assert sniff(torchscript_bytes(small_mlp())) == "zip"
    assert sniff(pickle.dumps({"a": 1}, protocol=2)) == "pickle"
    assert sniff(b"hello world, not a model") == "unknown"


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_truncated_safetensors(cut):
    data = safetensors_bytes(small_mlp())
    with pytest.raises(ArtifactError) as exc:
        load_module(data[: int(len(data) * cut)], format="safetensors", architecture=ARCH, architecture_args=ARGS)
    assert "safetensors" in str(exc.value)


def test_corrupt_safetensors_header():
    data = bytearray(safetensors_bytes(small_mlp()))
    data[9:15] = b"\x00\xff\x00\xff\x00\xff"  # garbage inside the JSON header
    with pytest.raises(ArtifactError, match="safetensors"):
        load_module(bytes(data), format="safetensors", architecture=ARCH, architecture_args=ARGS)


def test_random_bytes_as_safetensors():
    with pytest.raises(ArtifactError, match="Not a safetensors file"):
        load_module(b"\x13\x37" * 500, format="safetensors", architecture=ARCH, architecture_args=ARGS)


def test_pickle_renamed_safetensors_is_refused():
    data = pickle.dumps(small_mlp().state_dict(), protocol=4)
    with pytest.raises(ArtifactError) as exc:
        load_module(data, format="safetensors", architecture=ARCH, architecture_args=ARGS)
    assert "Not a safetensors file" in str(exc.value)
    assert "pickle" in str(exc.value)


def test_torch_save_file_declared_as_safetensors_is_refused():
    with pytest.raises(ArtifactError, match="looks like zip"):
        load_module(state_dict_bytes(small_mlp()), format="safetensors", architecture=ARCH, architecture_args=ARGS)


def test_truncated_state_dict():
    data = state_dict_bytes(small_mlp())
    with pytest.raises(ArtifactError, match="Corrupt or truncated state_dict"):
        load_module(data[: len(data) // 2], format="state_dict", architecture=ARCH, architecture_args=ARGS)


def test_not_a_torch_file_as_state_dict():
    with pytest.raises(ArtifactError, match="Not a torch.save file"):
        load_module(safetensors_bytes(small_mlp()), format="state_dict", architecture=ARCH, architecture_args=ARGS)


def test_state_dict_holding_something_else_than_tensors():
    buf = io.BytesIO()
    torch.save([torch.zeros(3)], buf)
    with pytest.raises(ArtifactError, match="mapping of parameter names to tensors"):
        load_module(buf.getvalue(), format="state_dict", architecture=ARCH, architecture_args=ARGS)


# --- Weights that do not fit the architecture ----------------------------------------------


def test_missing_keys_are_named():
    # weights for 4-8-3, architecture 4-8-8-3: one Linear layer more
    with pytest.raises(ArtifactError) as exc:
        load_module(safetensors_bytes(small_mlp()), format="safetensors", architecture=ARCH,
                    architecture_args={"in_features": 4, "hidden": [8, 8], "out_features": 3})
    message = str(exc.value)
    assert "missing keys" in message
    assert "4.weight" in message and "4.bias" in message
    assert "architecture_args" in message


def test_unexpected_keys_are_named():
    torch.manual_seed(0)
    deep = MLP(4, [8, 8], 3)
    with pytest.raises(ArtifactError) as exc:
        load_module(state_dict_bytes(deep), format="state_dict", architecture=ARCH, architecture_args=ARGS)
    message = str(exc.value)
    assert "unexpected keys" in message
    assert "4.weight" in message


def test_shape_mismatch_is_named():
    # hidden [16] vs weights for [8]: same keys, different shapes
    with pytest.raises(ArtifactError) as exc:
        load_module(safetensors_bytes(small_mlp()), format="safetensors", architecture=ARCH,
                    architecture_args={"in_features": 4, "hidden": [16], "out_features": 3})
    message = str(exc.value)
    assert "shape mismatch" in message
    assert "0.weight" in message
    assert "(8, 4)" in message and "(16, 4)" in message


def test_bad_architecture_args():
    with pytest.raises(ArtifactError, match="architecture_args"):
        load_module(safetensors_bytes(small_mlp()), format="safetensors", architecture=ARCH,
                    architecture_args={"in_features": 4, "hidden": [8], "out_features": 3, "dropout": 0.1})
    with pytest.raises(ArtifactError, match="positive"):
        load_module(safetensors_bytes(small_mlp()), format="safetensors", architecture=ARCH,
                    architecture_args={"in_features": 4, "hidden": [0], "out_features": 3})


@pytest.mark.parametrize(
    "architecture", ["torch.nn.Linear", "os.system", "tests.helpers.PidMLP", "registry.architectures.Nope"]
)
def test_architecture_outside_the_allowlist(architecture):
    with pytest.raises(ArtifactError) as exc:
        load_module(safetensors_bytes(small_mlp()), format="safetensors", architecture=architecture,
                    architecture_args=ARGS)
    assert "allowlist" in str(exc.value)
    assert architecture in str(exc.value)


def test_allowlisted_but_missing_architecture(settings):
    settings.INFERENCE_ARCHITECTURES = [*settings.INFERENCE_ARCHITECTURES, "registry.architectures.Nope"]
    with pytest.raises(ArtifactError, match="cannot be imported"):
        load_module(safetensors_bytes(small_mlp()), format="safetensors", architecture="registry.architectures.Nope",
                    architecture_args=ARGS)


# --- Pickles that are not weights --------------------------------------------------------------


def test_whole_model_pickle_refused_as_state_dict():
    data = whole_model_bytes(small_mlp())
    # control: this file really holds the whole model
    assert isinstance(torch.load(io.BytesIO(data), weights_only=False), MLP)
    with pytest.raises(ArtifactError) as exc:
        load_module(data, format="state_dict", architecture=ARCH, architecture_args=ARGS)
    assert "Refused" in str(exc.value)
    assert "state_dict()" in str(exc.value)


def test_torchscript_archive_declared_as_state_dict_is_refused():
    data = torchscript_bytes(small_mlp())
    with pytest.raises(ArtifactError) as exc:
        load_module(data, format="state_dict", architecture=ARCH, architecture_args=ARGS)
    assert "TorchScript" in str(exc.value)


def test_torch_export_archive_declared_as_state_dict_is_refused():
    with pytest.raises(ArtifactError):
        load_module(torch_export_bytes(small_mlp()), format="state_dict", architecture=ARCH, architecture_args=ARGS)


# --- SECURITY: crafted pickles never run ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["open", "system"])
def test_control_the_crafted_pickles_really_run_code(tmp_path, kind):
    """Positive control: unpickled the unsafe way, both payloads create their marker."""
    raw_marker, zip_marker = tmp_path / "raw", tmp_path / "zip"
    result = pickle.loads(evil_raw_pickle(raw_marker, kind))
    if kind == "open":
        result["0.weight"].close()
    assert raw_marker.exists()
    result = torch.load(io.BytesIO(evil_torch_save(zip_marker, kind)), weights_only=False)
    if kind == "open":
        result["w"].close()
    assert zip_marker.exists()


@pytest.mark.parametrize("kind", ["open", "system"])
@pytest.mark.parametrize("builder", [evil_raw_pickle, evil_torch_save], ids=["raw-pickle", "torch-save-zip"])
@pytest.mark.parametrize("fmt", ["safetensors", "state_dict"])
def test_crafted_pickle_is_refused_without_running(tmp_path, kind, builder, fmt):
    marker = tmp_path / "pwned"
    data = builder(marker, kind)
    assert not marker.exists()
    with pytest.raises(ArtifactError) as exc:
        load_module(data, format=fmt, architecture=ARCH, architecture_args=ARGS)
    assert not marker.exists(), "the pickle's payload ran"
    if fmt == "safetensors":
        assert "Not a safetensors file" in str(exc.value)
    elif builder is evil_torch_save:
        assert "Refused" in str(exc.value)


def test_crafted_pickle_inside_a_checkpoint_among_real_weights(tmp_path):
    """A payload hidden next to genuine weights is refused as a whole."""
    from tests.helpers import OpenForWrite

    marker = tmp_path / "pwned"
    state = dict(small_mlp().state_dict())
    buf = io.BytesIO()
    torch.save({"state_dict": state, "optimizer": OpenForWrite(marker)}, buf)
    with pytest.raises(ArtifactError, match="Refused"):
        load_module(buf.getvalue(), format="state_dict", architecture=ARCH, architecture_args=ARGS)
    assert not marker.exists()


def test_crafted_pickle_inside_a_torchscript_declared_archive_is_not_loaded_without_code(tmp_path):
    marker = tmp_path / "pwned"
    data = evil_torch_save(marker)
    assert zipfile.is_zipfile(io.BytesIO(data))
    with pytest.raises(ArtifactError, match="code artifacts are disabled"):
        load_module(data, format="torchscript", allow_code=False)
    assert not marker.exists()


def test_crafted_pickle_refused_even_when_the_environment_disables_weights_only(tmp_path, monkeypatch):
    """TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD only changes torch.load calls that leave weights_only unset."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "pwned"
    with pytest.raises(ArtifactError, match="Refused"):
        load_module(evil_torch_save(marker), format="state_dict", architecture=ARCH, architecture_args=ARGS)
    assert not marker.exists()
