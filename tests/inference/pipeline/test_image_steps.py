"""The image geometry steps (resize, center_crop), the image step without a size, and normalize's
ImageNet preset: torchvision's classification preprocessing as declarative steps."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from inference.pipeline.base import Pipeline, StepConfigError, StepContext, StepInputError
from inference.pipeline.images import CenterCrop, ImageDecode, Resize
from inference.pipeline.steps import Normalize
from inference.tensors import InputError, check_model_inputs
from registry.schemas import parse_tensor_schema

from .test_pipeline import encode, images

CTX = StepContext()
RNG = np.random.default_rng(7)


def batch(*arrays: np.ndarray) -> dict[str, np.ndarray]:
    return {"image": np.stack(arrays).astype(np.float32)}


def pil_resize(channel: np.ndarray, height: int, width: int, resample=Image.Resampling.BILINEAR) -> np.ndarray:
    """PIL's own resize of one float channel (mode "F": no rounding to 8 bits)."""
    return np.asarray(Image.fromarray(channel.astype(np.float32), mode="F").resize((width, height), resample))


# --- resize -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("hw", "expected"), [((30, 40), (20, 26)), ((40, 30), (26, 20)), ((25, 25), (20, 20)),
                                              ((10, 15), (20, 30))])
def test_resize_makes_the_shorter_side_size_and_keeps_the_aspect_ratio(hw, expected):
    out = Resize(size=20)(batch(RNG.random((3, *hw))), CTX)["image"]
    assert out.shape == (1, 3, *expected) and out.dtype == np.float32


def test_resize_max_size_caps_the_longer_side_as_torchvision_does():
    step = Resize(size=20, max_size=30)
    assert step.output_size(20, 100) == (20 * 30 // 100, 30)  # the short side shrinks below 20
    assert step.output_size(100, 20) == (30, 6)
    assert step.output_size(40, 50) == (20, 25)  # under the cap: unchanged


def test_resize_to_height_width_and_a_same_size_image_left_as_it_is():
    x = batch(RNG.random((3, 12, 9)))
    assert Resize(size=[5, 7])(x, CTX)["image"].shape == (1, 3, 5, 7)
    same = Resize(size=9)(x, CTX)["image"]
    assert same is x["image"]  # nothing to do (torchvision returns the image unchanged too)


def test_resize_downscale_by_two_is_bilinear_with_antialiasing_by_hand():
    """Halving 4 pixels: each output pixel weighs the input pixels under a triangle twice as wide
    as for upscaling (the antialias), centres 0.5 and 1.5 away: 0.75, 0.75, 0.25, normalised to
    3/7, 3/7, 1/7. Row [0, 7, 14, 21] -> [3*0 + 3*7 + 14, 7 + 3*14 + 3*21] / 7 = [5, 16]."""
    row = np.array([0, 7, 14, 21], np.float32)
    image = np.tile(row, (4, 1))[None]  # one channel, every row alike
    out = Resize(size=[2, 2])(batch(image), CTX)["image"]
    np.testing.assert_allclose(out[0, 0], [[5, 16], [5, 16]], atol=1e-5)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize(("hw", "size"), [((60, 80), 24), ((17, 23), 40), ((50, 31), [20, 45])],
                         ids=["down", "up", "both"])
def test_resize_computes_what_pil_computes(interpolation, hw, size):
    image = RNG.random((3, *hw)).astype(np.float32)
    step = Resize(size=size, interpolation=interpolation)
    out = step(batch(image), CTX)["image"][0]
    h, w = step.output_size(*hw)
    resample = Image.Resampling.BILINEAR if interpolation == "bilinear" else Image.Resampling.BICUBIC
    expected = np.stack([pil_resize(c, h, w, resample) for c in image])
    np.testing.assert_allclose(out, expected, atol=2e-5)


def test_resize_refuses_output_images_over_the_pixel_limits(settings):
    settings.INFERENCE_IMAGE_MAX_PIXELS = 100 * 100
    with pytest.raises(StepInputError) as info:
        Resize(size=200)(batch(RNG.random((1, 4, 4))), CTX)
    assert (info.value.code, info.value.status) == ("image_too_large", 413)
    settings.INFERENCE_IMAGE_MAX_PIXELS = 4096 * 4096
    settings.INFERENCE_MAX_REQUEST_PIXELS = 3 * 50 * 50
    with pytest.raises(StepInputError) as info:
        Resize(size=50)(batch(*[RNG.random((1, 4, 4))] * 4), CTX)
    assert (info.value.code, info.value.status) == ("payload_too_large", 413)


# --- center_crop ------------------------------------------------------------------------------


def test_center_crop_cuts_the_middle_rounding_as_torchvision():
    image = np.arange(7 * 8, dtype=np.float32).reshape(1, 7, 8)
    out = CenterCrop(size=[4, 4])(batch(image), CTX)["image"]
    # top = round((7 - 4) / 2) = round(1.5) = 2 (Python rounds half to even), left = round(2.0) = 2
    np.testing.assert_array_equal(out[0, 0], image[0, 2:6, 2:6])
    out = CenterCrop(size=3)(batch(image), CTX)["image"]
    # top = round(2.0) = 2, left = round(2.5) = 2
    np.testing.assert_array_equal(out[0, 0], image[0, 2:5, 2:5])


def test_center_crop_pads_a_smaller_image_with_zeros():
    image = np.ones((1, 2, 3), np.float32)
    out = CenterCrop(size=[5, 6])(batch(image), CTX)["image"][0, 0]
    # padding: top (5-2)//2 = 1, bottom 2, left (6-3)//2 = 1, right 2
    expected = np.zeros((5, 6), np.float32)
    expected[1:3, 1:4] = 1
    np.testing.assert_array_equal(out, expected)


# --- the torchvision pipeline -----------------------------------------------------------------


def test_decode_resize_crop_normalize_is_torchvisions_preprocessing_of_a_png():
    """torchvision's classification transforms (Resize(256) on the PIL image, CenterCrop(224),
    ToTensor, Normalize(ImageNet)) computed with PIL here; the steps resize the decoded floats
    instead of PIL's 8-bit pixels, so they agree to PIL's rounding: to 8 bits after each of its two
    passes (rows, then columns), so at most a level in 255."""
    pixels = (RNG.random((200, 300, 3)) * 255).astype(np.uint8)
    pixels = np.asarray(Image.fromarray(pixels).resize((150, 100)).resize((300, 200)))  # smooth-ish, like a photo
    pipeline = Pipeline([{"step": "image", "mode": "RGB"}, {"step": "resize", "size": 256},
                         {"step": "center_crop", "size": 224}, {"step": "normalize", "preset": "imagenet"}],
                        stage="preprocess")
    out = pipeline(images(encode(pixels)), CTX)["image"]
    assert out.shape == (1, 3, 224, 224) and out.dtype == np.float32

    pil = Image.fromarray(pixels).resize((384, 256), Image.Resampling.BILINEAR)  # 300x200 -> shorter side 256
    left, top = round((384 - 224) / 2), round((256 - 224) / 2)
    tensor = np.asarray(pil.crop((left, top, left + 224, top + 224)), np.float32).transpose(2, 0, 1) / 255
    mean, std = np.array([0.485, 0.456, 0.406])[:, None, None], np.array([0.229, 0.224, 0.225])[:, None, None]
    expected = (tensor - mean) / std
    np.testing.assert_allclose(out[0], expected, atol=1.01 / 255 / 0.224)
    assert np.abs(out[0] - expected).mean() < 0.4 / 255 / 0.224


def test_images_of_different_sizes_travel_ragged_until_the_crop_gives_them_one():
    pipeline = Pipeline([{"step": "image", "mode": "RGB"}, {"step": "resize", "size": 32},
                         {"step": "normalize", "preset": "imagenet"}, {"step": "center_crop", "size": 32}],
                        stage="preprocess")
    wide, tall = (RNG.random((40, 80, 3)) * 255).astype(np.uint8), (RNG.random((90, 45, 3)) * 255).astype(np.uint8)
    decoded = pipeline.steps[0](images(encode(wide), encode(tall)), CTX)["image"]
    assert decoded.dtype == object and [i.shape for i in decoded] == [(3, 40, 80), (3, 90, 45)]
    resized = pipeline.steps[1]({"image": decoded}, CTX)["image"]
    assert [i.shape for i in resized] == [(3, 32, 64), (3, 64, 32)]
    out = pipeline(images(encode(wide), encode(tall)), CTX)["image"]
    assert out.shape == (2, 3, 32, 32) and out.dtype == np.float32
    # each image as it would be alone
    for i, pixels in enumerate((wide, tall)):
        np.testing.assert_allclose(out[i], pipeline(images(encode(pixels)), CTX)["image"][0], atol=1e-6)


def test_images_left_of_different_sizes_are_a_clear_error_before_the_model():
    pipeline = Pipeline([{"step": "image", "mode": "L"}], stage="preprocess")
    out = pipeline(images(encode(np.zeros((4, 6), np.uint8)), encode(np.zeros((5, 5), np.uint8))), CTX)
    inputs = parse_tensor_schema([{"name": "image", "datatype": "FP32", "shape": [1, -1, -1]}], where="inputs")
    with pytest.raises(InputError, match="images of different sizes .*1x4x6, 1x5x5.*center_crop") as info:
        check_model_inputs(out, inputs)
    assert info.value.code == "invalid_shape"


def test_normalize_imagenet_preset_is_per_channel_of_a_chw_image():
    x = np.full((1, 3, 2, 2), 0.5, np.float32)
    out = Normalize(preset="imagenet")({"image": x}, CTX)["image"]
    np.testing.assert_allclose(out[0, :, 0, 0], (0.5 - np.array([0.485, 0.456, 0.406])) / [0.229, 0.224, 0.225],
                               rtol=1e-6)
    hwc = Normalize(preset="imagenet", axis=-1)({"image": x.transpose(0, 2, 3, 1)}, CTX)["image"]
    np.testing.assert_allclose(hwc.transpose(0, 3, 1, 2), out, rtol=1e-6)


# --- bad configs ------------------------------------------------------------------------------


@pytest.mark.parametrize(("config", "message"), [
    ({"step": "resize"}, "bad options"),
    ({"step": "resize", "size": 0}, "size must be an integer"),
    ({"step": "resize", "size": "256"}, "size must be an integer"),
    ({"step": "resize", "size": True}, "size must be an integer"),
    ({"step": "resize", "size": [224]}, "size must be an integer"),
    ({"step": "resize", "size": [224, 224, 3]}, "size must be an integer"),
    ({"step": "resize", "size": 9000}, "from 1 to 8192"),
    ({"step": "resize", "size": 256, "interpolation": "nearest"}, "interpolation must be one of bilinear, bicubic"),
    ({"step": "resize", "size": [224, 224], "max_size": 300}, "max_size applies only"),
    ({"step": "resize", "size": 256, "max_size": 256}, "max_size must be an integer above size"),
    ({"step": "resize", "size": 256, "antialias": False}, "bad options"),
    ({"step": "center_crop", "size": -1}, "size must be an integer"),
    ({"step": "center_crop", "size": [224, "224"]}, "size must be an integer"),
    ({"step": "normalize", "preset": "cifar"}, "preset must be one of imagenet"),
    ({"step": "normalize", "preset": "imagenet", "mean": [0.5, 0.5, 0.5]}, "either the preset or both"),
    ({"step": "normalize", "mean": [0.5]}, "needs mean and std"),
    ({"step": "normalize", "preset": "imagenet", "axis": "0"}, "axis must be an integer"),
    ({"step": "image", "size": [224]}, "size must be \\[height, width\\]"),
])
def test_bad_image_step_configs_say_what_is_wrong(config, message):
    with pytest.raises(StepConfigError, match=message) as info:
        Pipeline([{"step": "image"}, config], stage="preprocess")
    assert str(info.value).startswith(f"preprocess[1] ({config['step']}): ")


def test_resize_before_the_image_step_is_a_config_error():
    with pytest.raises(StepConfigError, match="after the image step"):
        Resize(size=8)(images(encode(np.zeros((4, 4), np.uint8))), CTX)


def test_resize_of_tensors_that_are_no_images_is_the_clients_error():
    with pytest.raises(StepInputError, match=r"\[channels, height, width\], got \[4\]") as info:
        Resize(size=8)({"x": np.zeros((2, 4), np.float32)}, CTX)
    assert info.value.path == "x"


def test_image_without_a_size_keeps_each_images_own():
    grey = np.arange(6 * 10, dtype=np.uint8).reshape(6, 10)
    out = ImageDecode(mode="L", scale=1.0)(images(encode(grey), encode(grey)), CTX)["image"]
    assert out.shape == (2, 1, 6, 10)  # same sizes: one array
    np.testing.assert_array_equal(out[1, 0], grey)
