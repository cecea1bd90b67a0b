"""Pipeline steps (unit), operator-defined steps and inference hooks (through the API)."""

from __future__ import annotations

import base64
import io
import logging
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from inference.pipeline.base import (
    Pipeline,
    Step,
    StepConfigError,
    StepContext,
    StepInputError,
    builtin_steps,
    clean_parameters,
    per_instance,
)
from inference.pipeline.steps import (
    Argmax,
    Cast,
    ImageDecode,
    Labels,
    Normalize,
    Reshape,
    Round,
    Softmax,
    TopK,
)
from registry.schemas import parse_tensor_schema
from tests.conftest import small_mlp
from tests.inference.support import ROWS, config, error_of, forward, ready

CTX = StepContext()


def ctx(**parameters) -> StepContext:
    return StepContext(parameters=parameters)


# --- normalize, reshape, cast ------------------------------------------------------------------


def test_normalize_a_feature_vector():
    x = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.float32)
    out = Normalize(mean=[1, 2, 3, 4], std=[2, 4, 0.5, 1])({"input": x}, CTX)
    expected = (x - np.array([1, 2, 3, 4], np.float32)) / np.array([2, 4, 0.5, 1], np.float32)
    np.testing.assert_allclose(out["input"], expected, rtol=1e-6)
    assert out["input"].dtype == np.float32
    # a scalar mean/std applies to every value
    np.testing.assert_allclose(Normalize(mean=2, std=4)({"input": x}, CTX)["input"], (x - 2) / 4)


def test_normalize_per_channel_along_an_axis():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(2, 3, 4, 5)).astype(np.float32)  # batch, C, H, W
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    out = Normalize(mean=mean, std=std, axis=0)({"image": x}, CTX)["image"]
    expected = (x - np.array(mean, np.float32)[None, :, None, None]) / np.array(std, np.float32)[None, :, None, None]
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    # HWC: channels last, the default axis
    hwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    out = Normalize(mean=mean, std=std)({"image": hwc}, CTX)["image"]
    np.testing.assert_allclose(out, expected.transpose(0, 2, 3, 1), rtol=1e-5)
    # the wrong number of channels along that axis is the client's error
    with pytest.raises(StepInputError) as info:
        Normalize(mean=mean, std=std, axis=0)({"image": x[:, :2]}, CTX)
    assert info.value.path == "image"


def test_normalize_picks_the_named_input_of_several():
    data = {"a": np.ones((1, 2), np.float32), "b": np.ones((1, 2), np.float32)}
    out = Normalize(mean=1, std=2, input="b")(data, CTX)
    assert out["a"].tolist() == [[1, 1]] and out["b"].tolist() == [[0, 0]]
    with pytest.raises(StepConfigError, match="several"):
        Normalize(mean=1, std=2)(data, CTX)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mean": [0, 0], "std": [1, 0]},
        {"mean": [0, 0, 0], "std": [1, 1]},
        {"mean": "a", "std": 1},
        {"mean": [[0]], "std": 1},
        {"mean": float("nan"), "std": 1},
    ],
)
def test_normalize_config_errors(kwargs):
    with pytest.raises(StepConfigError):
        Normalize(**kwargs)


def test_reshape():
    x = np.arange(2 * 16, dtype=np.float32).reshape(2, 16)
    out = Reshape(shape=[1, 4, 4])({"input": x}, CTX)["input"]
    assert out.shape == (2, 1, 4, 4)
    assert out[1, 0, 3].tolist() == x[1, 12:16].tolist()
    assert Reshape(shape=[-1, 2])({"input": x}, CTX)["input"].shape == (2, 8, 2)
    with pytest.raises(StepInputError, match="cannot reshape"):
        Reshape(shape=[5, 3])({"input": x}, CTX)
    for bad in ([0, 4], [-1, -1], "4x4", [2.5]):
        with pytest.raises(StepConfigError):
            Reshape(shape=bad)


def test_cast():
    x = np.array([[1.7, -2.2]], np.float32)
    out = Cast(datatype="INT64")({"input": x}, CTX)["input"]
    assert out.dtype == np.int64 and out.tolist() == [[1, -2]]
    assert Cast(datatype="FP64")({"input": x}, CTX)["input"].dtype == np.float64
    for bad in ("BYTES", "FLOAT", "fp32"):
        with pytest.raises(StepConfigError):
            Cast(datatype=bad)


# --- image ---------------------------------------------------------------------------------------


def encode(pixels: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> str:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


def images(*values) -> dict[str, np.ndarray]:
    arr = np.empty(len(values), dtype=object)
    arr[:] = list(values)
    return {"image": arr}


def png_claiming_size(width: int, height: int) -> bytes:
    """A ~60-byte PNG whose header declares width x height pixels (no real pixel data)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")


GREY = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4


def test_image_decodes_a_greyscale_png():
    step = ImageDecode(size=[8, 8], mode="L", scale=255.0)
    out = step(images(encode(GREY), encode(255 - GREY)), CTX)["image"]
    assert out.shape == (2, 1, 8, 8) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], GREY / 255.0, rtol=1e-6)
    np.testing.assert_allclose(out[1, 0], (255 - GREY) / 255.0, rtol=1e-6)


def test_image_invert_scale_and_layout():
    inverted = ImageDecode(size=[8, 8], mode="L", invert=True, scale=1.0)(images(encode(GREY)), CTX)["image"]
    np.testing.assert_array_equal(inverted[0, 0], 255.0 - GREY)
    hwc = ImageDecode(size=[8, 8], mode="L", layout="HWC")(images(encode(GREY)), CTX)["image"]
    assert hwc.shape == (1, 8, 8, 1)
    np.testing.assert_allclose(hwc[0, :, :, 0], GREY / 255.0, rtol=1e-6)


def test_image_rgb_conversion_and_layouts():
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 255, 128, 0
    chw = ImageDecode(size=[4, 6], mode="RGB", scale=255.0)(images(encode(rgb)), CTX)["image"]
    assert chw.shape == (1, 3, 4, 6)
    np.testing.assert_allclose(chw[0, :, 0, 0], [1.0, 128 / 255, 0.0], rtol=1e-6)
    hwc = ImageDecode(size=[4, 6], mode="RGB", layout="HWC")(images(encode(rgb)), CTX)["image"]
    assert hwc.shape == (1, 4, 6, 3)
    # a greyscale PNG sent to an RGB model becomes three equal channels
    grey = ImageDecode(size=[8, 8], mode="RGB")(images(encode(GREY)), CTX)["image"]
    assert grey.shape == (1, 3, 8, 8)
    np.testing.assert_array_equal(grey[0, 0], grey[0, 2])
    # an RGB PNG sent to a greyscale model becomes one channel
    assert ImageDecode(size=[4, 6], mode="L")(images(encode(rgb)), CTX)["image"].shape == (1, 1, 4, 6)


def test_image_resizes_to_the_declared_size():
    quadrants = np.zeros((32, 32), np.uint8)
    quadrants[:16, 16:], quadrants[16:, :16], quadrants[16:, 16:] = 80, 160, 240
    out = ImageDecode(size=[8, 8], mode="L", scale=1.0)(images(encode(quadrants)), CTX)["image"]
    assert out.shape == (1, 1, 8, 8)
    corners = out[0, 0, [0, 0, 7, 7], [0, 7, 0, 7]]
    np.testing.assert_allclose(corners, [0, 80, 160, 240], atol=1)
    # a wide image is resized to [height, width] too, not cropped
    wide = np.full((10, 40), 200, np.uint8)
    out = ImageDecode(size=[8, 8], mode="L", scale=1.0)(images(encode(wide)), CTX)["image"]
    assert out.shape == (1, 1, 8, 8)
    np.testing.assert_allclose(out, 200, atol=1)


def test_image_decodes_a_jpeg():
    smooth = np.tile(np.linspace(0, 255, 16, dtype=np.uint8), (16, 1))
    out = ImageDecode(size=[16, 16], mode="L", scale=1.0)(images(encode(smooth, "JPEG")), CTX)["image"]
    assert out.shape == (1, 1, 16, 16)
    np.testing.assert_allclose(out[0, 0], smooth, atol=12)  # lossy, but the same picture


def test_image_decodes_a_multi_picture_jpeg_from_a_camera():
    """Cameras and phones write MPO files: JPEGs with extra pictures; Pillow names their format MPO."""
    rgb = np.stack([GREY] * 3, axis=-1)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="MPO", save_all=True, append_images=[Image.fromarray(255 - rgb)])
    assert Image.open(io.BytesIO(buf.getvalue())).format == "MPO"
    out = ImageDecode(size=[8, 8], mode="L", scale=1.0)(images(base64.b64encode(buf.getvalue()).decode()), CTX)
    np.testing.assert_allclose(out["image"][0, 0], GREY, atol=12)  # the first (main) picture


def test_image_decodes_a_16_bit_greyscale_png_as_the_same_picture():
    deep = GREY.astype(np.uint16) * 257  # the 8-bit picture on the 16-bit scale
    buf = io.BytesIO()
    Image.fromarray(deep).save(buf, format="PNG")
    out = ImageDecode(size=[8, 8], mode="L", scale=255.0)(images(base64.b64encode(buf.getvalue()).decode()), CTX)
    np.testing.assert_allclose(out["image"][0, 0], GREY / 255.0, atol=1 / 255)  # not clipped to white


@pytest.mark.parametrize("value", ["not base64!!", "aGVsbG8", 42])
def test_image_refuses_what_is_not_a_base64_string(value):
    with pytest.raises(StepInputError) as info:
        ImageDecode(size=[8, 8], mode="L")(images(encode(GREY), value), CTX)
    assert info.value.path.startswith("instances[1]")
    assert info.value.code == "invalid_input"


def test_image_refuses_bytes_that_are_no_image():
    junk = base64.b64encode(b"hello, this is not a picture").decode()
    with pytest.raises(StepInputError, match="cannot decode") as info:
        ImageDecode(size=[8, 8], mode="L")(images(junk), CTX)
    assert info.value.path.startswith("instances[0]")


def test_image_refuses_gif():
    gif = encode(GREY, "GIF")
    with pytest.raises(StepInputError, match="GIF") as info:
        ImageDecode(size=[8, 8], mode="L")(images(gif), CTX)
    assert info.value.path.startswith("instances[0]")


def test_image_over_max_pixels_is_refused_before_decoding():
    big = np.zeros((64, 64), np.uint8)
    with pytest.raises(StepInputError) as info:
        ImageDecode(size=[8, 8], mode="L", max_pixels=1000)(images(encode(big)), CTX)
    assert info.value.code == "image_too_large"
    assert "64x64" in str(info.value)


@pytest.mark.parametrize("side", [5_000, 20_000], ids=["over-our-limit", "over-pillow-bomb-limit"])
def test_a_png_claiming_a_huge_size_is_image_too_large(side):
    """A tiny file whose header claims side x side pixels: refused by its declared size, never decoded."""
    tiny = base64.b64encode(png_claiming_size(side, side)).decode()
    assert len(tiny) < 200
    with pytest.raises(StepInputError) as info:
        ImageDecode(size=[8, 8], mode="L")(images(tiny), CTX)  # default limit: 4096 x 4096 pixels
    assert info.value.code == "image_too_large", str(info.value)
    assert info.value.path.startswith("instances[0]")


def test_image_error_path_of_a_one_input_model_is_the_instance():
    """For a one-input model an instance is the value itself (as in decode_instances' paths)."""
    one_input = StepContext(
        inputs=parse_tensor_schema([{"name": "image", "datatype": "FP32", "shape": [1, 8, 8]}], where="inputs")
    )
    with pytest.raises(StepInputError) as info:
        ImageDecode(size=[8, 8], mode="L")(images(encode(GREY), "%%%"), one_input)
    assert info.value.path == "instances[1]"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"size": [8]},
        {"size": [0, 8]},
        {"size": [8, 8], "mode": "CMYK"},
        {"size": [8, 8], "layout": "NCHW"},
        {"size": [8, 8], "scale": 0},
    ],
)
def test_image_config_errors(kwargs):
    with pytest.raises(StepConfigError):
        ImageDecode(**kwargs)


# --- postprocess ---------------------------------------------------------------------------------

LOGITS = np.array([[1.0, 3.0, 2.0, 0.5], [0.0, -1.0, 4.0, 4.5]], np.float32)


def softmax_ref(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_softmax():
    out = Softmax()({"output": LOGITS}, CTX)["output"]
    np.testing.assert_allclose(out, softmax_ref(LOGITS), rtol=1e-6)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-6)
    # large logits do not overflow
    big = Softmax()({"output": LOGITS * 1000}, CTX)["output"]
    assert np.isfinite(big).all()


def test_argmax():
    assert Argmax()({"output": LOGITS}, CTX)["output"].tolist() == [1, 3]


def test_topk_default_k_and_request_override():
    scores = softmax_ref(LOGITS)
    top = TopK(k=3)({"output": scores}, ctx())
    assert [[item["index"] for item in row] for row in top] == [[1, 2, 0], [3, 2, 0]]
    assert top[0][0]["score"] == pytest.approx(float(scores[0, 1]))
    assert all(len(row) == 3 for row in top)
    one = TopK(k=3)({"output": scores}, ctx(top_k=1))
    assert [[item["index"] for item in row] for row in one] == [[1], [3]]
    # k above the number of classes gives every class
    assert all(len(row) == 4 for row in TopK(k=10)({"output": scores}, ctx()))


@pytest.mark.parametrize("bad", [0, 1001, "3", True, 2.5, None])
def test_top_k_request_parameter_is_validated(bad):
    allowed = Pipeline([{"step": "topk", "k": 3}], stage="postprocess").request_parameters
    with pytest.raises(StepInputError) as info:
        clean_parameters({"top_k": bad}, allowed)
    assert info.value.path == "parameters.top_k"
    assert clean_parameters({"top_k": 2}, allowed) == {"top_k": 2}


def test_unknown_or_malformed_parameters_are_refused():
    with pytest.raises(StepInputError, match="unknown parameter 'temperature'") as info:
        clean_parameters({"temperature": 2}, {})
    assert info.value.path == "parameters.temperature"
    with pytest.raises(StepInputError) as info:
        clean_parameters([1], {})
    assert info.value.path == "parameters"
    assert clean_parameters(None, {}) == {}


@pytest.mark.parametrize("bad", [0, 1001, "5"])
def test_topk_config_is_validated(bad):
    with pytest.raises(StepConfigError):
        Pipeline([{"step": "topk", "k": bad}], stage="postprocess")


LABELS = ["cat", "dog", "bird", "fish"]


def test_labels_after_argmax_after_topk_and_on_scores():
    indices = Argmax()({"output": LOGITS}, CTX)
    assert Labels(labels=LABELS)(indices, CTX) == ["dog", "fish"]
    top = Labels(labels=LABELS)(TopK(k=2)({"output": LOGITS}, ctx()), CTX)
    assert [[(i["index"], i["label"]) for i in row] for row in top] == [
        [(1, "dog"), (2, "bird")],
        [(3, "fish"), (2, "bird")],
    ]
    best = Labels(labels=LABELS)({"output": softmax_ref(LOGITS)}, CTX)
    assert [b["label"] for b in best] == ["dog", "fish"]
    assert best[0]["score"] == pytest.approx(float(softmax_ref(LOGITS)[0, 1]))
    # an index without a label is named by its number
    assert Labels(labels=["only"])({"output": np.array([0, 3])}, CTX) == ["only", "3"]
    for bad in ([], "cat", [1, 2]):
        with pytest.raises(StepConfigError):
            Labels(labels=bad)


def test_round():
    out = Round(decimals=2)({"output": np.array([[0.123456, 2.0049]], np.float32)}, CTX)["output"]
    np.testing.assert_allclose(out, [[0.12, 2.0]], atol=1e-6)
    rounded = Round(decimals=3)([[{"index": 1, "score": 0.123456, "label": "x"}]], CTX)
    assert rounded == [[{"index": 1, "score": 0.123, "label": "x"}]]
    ints = np.array([[1, 2]])
    assert Round(decimals=1)({"output": ints}, CTX)["output"].tolist() == [[1, 2]]
    for bad in (-1, 13, 1.5, True):
        with pytest.raises(StepConfigError):
            Round(decimals=bad)


def test_a_full_classification_postprocess_chain():
    pipe = Pipeline(
        [
            {"step": "softmax"},
            {"step": "topk", "k": 2},
            {"step": "labels", "labels": LABELS},
            {"step": "round", "decimals": 4},
        ],
        stage="postprocess",
    )
    assert pipe.request_parameters.keys() == {"top_k"}
    out = per_instance(pipe({"output": LOGITS}, ctx()), 2)
    probs = softmax_ref(LOGITS)
    assert out[0] == [
        {"index": 1, "score": round(float(probs[0, 1]), 4), "label": "dog"},
        {"index": 2, "score": round(float(probs[0, 2]), 4), "label": "bird"},
    ]


def test_unknown_step_names_the_known_steps():
    with pytest.raises(StepConfigError) as info:
        Pipeline([{"step": "softmax"}, {"step": "sharpen"}], stage="postprocess")
    message = str(info.value)
    assert "postprocess[1]" in message and "'sharpen'" in message
    for name in builtin_steps():
        assert name in message
    with pytest.raises(StepConfigError, match="unknown step None"):
        Pipeline([{"k": 3}], stage="postprocess")


def test_bad_step_options_are_config_errors():
    with pytest.raises(StepConfigError, match=r"preprocess\[0\] \(normalize\)"):
        Pipeline([{"step": "normalize", "mean": [0], "std": [1], "colour": "red"}], stage="preprocess")
    with pytest.raises(StepConfigError, match="takes no options"):
        Step(colour="red")


# --- operator-defined steps (settings.INFERENCE_PIPELINE_STEPS) ----------------------------------


class AddOffset(Step):
    """An operator's preprocess step: x -> x + offset."""

    name = "add_offset"

    def __init__(self, offset: float, input: str | None = None):
        if not isinstance(offset, (int, float)):
            raise StepConfigError("offset must be a number")
        self.offset = float(offset)
        self.input = input

    def __call__(self, data, ctx):
        key = self.pick(data, self.input, kind="input")
        return {**data, key: data[key] + np.float32(self.offset)}


class Tagged(Step):
    """An operator's postprocess step with its own request parameter."""

    name = "tagged"
    request_parameters = {"tag": str}

    def __call__(self, data, ctx):
        key = self.pick(data, None, kind="output")
        tag = ctx.parameters.get("tag", "none")
        return [{"tag": tag, "values": row} for row in data[key].tolist()]


OPERATOR_STEPS = {"add_offset": f"{__name__}.AddOffset", "tagged": f"{__name__}.Tagged"}


def test_operator_steps_are_known_by_name(settings):
    settings.INFERENCE_PIPELINE_STEPS = OPERATOR_STEPS
    pipe = Pipeline([{"step": "add_offset", "offset": 1.5}], stage="preprocess")
    assert isinstance(pipe.steps[0], AddOffset)
    with pytest.raises(StepConfigError) as info:
        Pipeline([{"step": "nope"}], stage="preprocess")
    assert "add_offset" in str(info.value) and "tagged" in str(info.value)
    with pytest.raises(StepConfigError, match="offset must be a number"):
        Pipeline([{"step": "add_offset", "offset": "x"}], stage="preprocess")


def test_operator_steps_work_end_to_end_through_the_api(settings, api, key):
    settings.INFERENCE_PIPELINE_STEPS = OPERATOR_STEPS
    module = small_mlp(3)
    ready(
        module,
        config(preprocess=[{"step": "add_offset", "offset": 1.5}], postprocess=[{"step": "tagged"}]),
        model_name="custom",
        aliases=["production"],
    )
    r = api.post("/api/v1/models/custom/predict", {"instances": ROWS, "parameters": {"tag": "t1"}}, key)
    assert r.status_code == 200, r.content
    predictions = r.json()["predictions"]
    expected = forward(module, (np.array(ROWS, np.float32) + np.float32(1.5)).tolist())
    assert [p["tag"] for p in predictions] == ["t1"] * len(ROWS)
    np.testing.assert_allclose([p["values"] for p in predictions], expected, rtol=1e-5, atol=1e-6)
    # the operator step's parameter is the only one this version accepts
    r = api.post("/api/v1/models/custom/predict", {"instances": ROWS, "parameters": {"top_k": 1}}, key)
    assert r.status_code == 400
    assert error_of(r)["details"]["path"] == "parameters.top_k"


def test_the_model_listing_names_the_request_parameters_of_every_step(settings, api, key):
    settings.INFERENCE_PIPELINE_STEPS = OPERATOR_STEPS
    ready(small_mlp(3), config(postprocess=[{"step": "tagged"}]), model_name="custom")
    ready(small_mlp(3), config(postprocess=[{"step": "softmax"}, {"step": "topk", "k": 2}]), model_name="builtin")
    r = api.get("/api/v1/models/builtin", key)
    assert r.json()["versions"][0]["parameters"] == ["top_k"]
    r = api.get("/api/v1/models/custom", key)
    assert r.status_code == 200
    assert r.json()["versions"][0]["parameters"] == ["tag"]  # what the version accepts (see above)


# --- hooks (settings.INFERENCE_HOOKS) ------------------------------------------------------------

HOOK_CALLS: list[dict] = []


def recording_hook(*, model, version, timings, outcome):
    HOOK_CALLS.append({"model": model, "version": version, "timings": dict(timings), "outcome": outcome})


def failing_hook(**kwargs):
    raise RuntimeError("hook bug")


@pytest.fixture
def hook_calls():
    HOOK_CALLS.clear()
    yield HOOK_CALLS
    HOOK_CALLS.clear()


def test_a_hook_observes_each_request(settings, api, key, iris, hook_calls):
    settings.INFERENCE_HOOKS = [f"{__name__}.recording_hook"]
    r = api.post("/api/v1/models/iris/predict", {"instances": ROWS}, key)
    assert r.status_code == 200
    assert len(hook_calls) == 1
    call = hook_calls[0]
    assert (call["model"], call["version"]) == ("iris", 1)
    assert set(call["timings"]) >= {"preprocess", "queue", "compute", "postprocess", "total"}
    assert all(isinstance(v, float) and v >= 0 for v in call["timings"].values())
    parts = sum(call["timings"][k] for k in ("preprocess", "queue", "compute", "postprocess"))
    assert call["timings"]["total"] >= parts
    outcome = call["outcome"]
    assert outcome.status == 200 and outcome.instances == len(ROWS) and outcome.batch_size >= len(ROWS)
    # a refused request is observed too, with its status and code
    r = api.post("/api/v1/models/iris/versions/2/predict", {"instances": [[1, 2]]}, key)
    assert r.status_code == 400
    assert len(hook_calls) == 2
    assert (hook_calls[1]["version"], hook_calls[1]["outcome"].status) == (2, 400)
    assert hook_calls[1]["outcome"].error_code == "invalid_shape"


def test_a_failing_hook_is_logged_and_the_request_succeeds(settings, api, key, iris, hook_calls, caplog):
    settings.INFERENCE_HOOKS = [f"{__name__}.failing_hook", f"{__name__}.recording_hook"]
    with caplog.at_level(logging.ERROR, logger="inference.predict"):
        r = api.post("/api/v1/models/iris/predict", {"instances": ROWS}, key)
    assert r.status_code == 200
    np.testing.assert_allclose(r.json()["predictions"], forward(iris[1], ROWS), rtol=1e-5, atol=1e-6)
    assert len(hook_calls) == 1  # the hooks after the failing one still run
    failures = [rec for rec in caplog.records if rec.name == "inference.predict" and "hook" in rec.getMessage()]
    assert failures and failures[0].exc_info is not None
    assert "hook bug" in str(failures[0].exc_info[1])


def test_hooks_follow_the_setting(settings, api, key, iris, hook_calls):
    settings.INFERENCE_HOOKS = []
    assert api.post("/api/v1/models/iris/predict", {"instances": ROWS}, key).status_code == 200
    assert hook_calls == []
    settings.INFERENCE_HOOKS = [recording_hook]  # a callable works as well as a dotted path
    assert api.post("/api/v1/models/iris/predict", {"instances": ROWS}, key).status_code == 200
    assert len(hook_calls) == 1


# --- per-request decoding budget ------------------------------------------------------------------


def test_a_requests_images_together_are_refused_past_the_per_request_pixel_budget(settings, monkeypatch):
    """Each image within max_pixels, all of them together over INFERENCE_MAX_REQUEST_PIXELS: 413 (status on
    the error), decided from the headers alone: not one pixel is decoded."""
    settings.INFERENCE_MAX_REQUEST_PIXELS = 3 * 64 * 64
    step = ImageDecode(size=[8, 8], mode="L")
    png = encode(np.zeros((64, 64), np.uint8))
    decoded: list[int] = []
    real = ImageDecode._decode
    monkeypatch.setattr(ImageDecode, "_decode", lambda self, raw, path: decoded.append(1) or real(self, raw, path))
    assert step(images(png, png, png), CTX)["image"].shape == (3, 1, 8, 8)  # exactly at the budget
    decoded.clear()
    with pytest.raises(StepInputError) as info:
        step(images(png, png, png, png), CTX)
    assert (info.value.status, info.value.code) == (413, "payload_too_large")
    assert "16384 pixels" in str(info.value) and "INFERENCE_MAX_REQUEST_PIXELS" in str(info.value)
    assert decoded == []


def test_the_pixel_budget_reads_a_jpeg_header_past_the_prefix(settings):
    """A JPEG whose frame header comes after a large EXIF block (past the prefix read first) is measured
    from its whole header, not refused."""
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x010E] = "x" * 20_000  # ImageDescription
    Image.fromarray(np.full((32, 48), 200, np.uint8)).save(buffer, format="JPEG", exif=exif.tobytes())
    assert len(buffer.getvalue()) > 20_000
    settings.INFERENCE_MAX_REQUEST_PIXELS = 32 * 48
    out = ImageDecode(size=[8, 8], mode="L")(images(base64.b64encode(buffer.getvalue()).decode()), CTX)
    assert out["image"].shape == (1, 1, 8, 8)
    settings.INFERENCE_MAX_REQUEST_PIXELS = 32 * 48 - 1
    with pytest.raises(StepInputError) as info:
        ImageDecode(size=[8, 8], mode="L")(images(base64.b64encode(buffer.getvalue()).decode()), CTX)
    assert info.value.status == 413


@pytest.mark.django_db
def test_over_the_pixel_budget_a_predict_is_a_json_413_naming_the_setting(settings, api, key, digits_demo):
    from tests.inference.support import register_demo

    register_demo(digits_demo)
    settings.INFERENCE_MAX_REQUEST_PIXELS = 2 * 64 * 64
    png = encode(np.zeros((64, 64), np.uint8))
    assert api.post("/api/v1/models/digits/predict", {"instances": [png, png]}, key).status_code == 200
    r = api.post("/api/v1/models/digits/predict", {"instances": [png, png, png]}, key)
    assert r.status_code == 413
    err = error_of(r)
    assert err["code"] == "payload_too_large" and "INFERENCE_MAX_REQUEST_PIXELS" in err["message"]
    assert err["details"]["path"] == "instances"


@pytest.mark.django_db
def test_over_the_element_budget_a_request_is_a_413_on_both_protocols(settings, api, key, iris):
    """INFERENCE_MAX_REQUEST_ELEMENTS bounds all of a request's tensors together (per tensor:
    INFERENCE_MAX_TENSOR_ELEMENTS, a 400)."""
    settings.INFERENCE_MAX_REQUEST_ELEMENTS = 8
    rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
    assert api.post("/api/v1/models/iris/predict", {"instances": rows}, key).status_code == 200
    r = api.post("/api/v1/models/iris/predict", {"instances": rows + rows[:1]}, key)
    assert r.status_code == 413 and "INFERENCE_MAX_REQUEST_ELEMENTS" in error_of(r)["message"]
    v2 = {"inputs": [{"name": "input", "shape": [3, 4], "datatype": "FP32", "data": sum(rows + rows[:1], [])}]}
    r = api.post("/v2/models/iris/infer", v2, key)
    assert r.status_code == 413 and "INFERENCE_MAX_REQUEST_ELEMENTS" in r.json()["error"]
