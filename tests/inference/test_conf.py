"""inference.conf.hot: the request path's settings as plain attributes, following every settings change."""

from __future__ import annotations

import pytest
from django.test import override_settings

from inference.conf import hot


def test_hot_settings_follow_overrides_and_the_settings_fixture(settings):
    settings.INFERENCE_INLINE_BYTES = 123
    assert hot.INFERENCE_INLINE_BYTES == 123
    with override_settings(INFERENCE_INLINE_BYTES=7):
        assert hot.INFERENCE_INLINE_BYTES == 7
    assert hot.INFERENCE_INLINE_BYTES == 123
    settings.INFERENCE_INLINE_BYTES = 456
    assert hot.INFERENCE_INLINE_BYTES == 456


def test_a_missing_setting_is_an_attribute_error():
    with pytest.raises(AttributeError):
        getattr(hot, "NO_SUCH_SETTING_ANYWHERE")  # noqa: B009 - the attribute read is the test
    with pytest.raises(AttributeError):
        getattr(hot, "lowercase_name")  # noqa: B009 - the attribute read is the test
