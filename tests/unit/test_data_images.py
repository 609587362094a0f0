"""check_image: every mode decodes and is kept, every bad kind gets its reason."""

from __future__ import annotations

import numpy as np
import pytest

from dreamray.data import schema
from dreamray.data.images import check_image, read_image_file
from dreamray.data.synthetic.images import GOOD_KINDS, bad_image, bomb_png, make_image


@pytest.mark.parametrize("kind", GOOD_KINDS)
def test_every_mode_decodes(kind):
    assert check_image(make_image(np.random.default_rng(0), kind)) is None


@pytest.mark.parametrize(
    "reason",
    [schema.REASON_IMAGE_UNDECODABLE, schema.REASON_IMAGE_TRUNCATED, schema.REASON_IMAGE_BOMB,
     schema.REASON_IMAGE_EMPTY],
)
def test_bad_bytes_get_their_reason(reason):
    assert check_image(bad_image(np.random.default_rng(0), reason)) == reason


def test_missing_bytes():
    assert check_image(None) == schema.REASON_IMAGE_MISSING


def test_own_pixel_limit_applies_before_decoding():
    image = make_image(np.random.default_rng(0), "rgb_jpeg", 40, 40)
    assert check_image(image, max_pixels=40 * 40) is None
    assert check_image(image, max_pixels=40 * 40 - 1) == schema.REASON_IMAGE_BOMB


def test_pil_bomb_warning_is_caught_even_under_a_higher_limit():
    # 10000^2 is above PIL's warning limit but below its error limit: only the warning fires.
    assert check_image(bomb_png(10_000), max_pixels=10**12) == schema.REASON_IMAGE_BOMB


def test_image_paths_cannot_escape_the_root(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "secret.jpg").write_bytes(b"x")
    (tmp_path / "root" / "a.jpg").write_bytes(b"y")
    assert read_image_file(tmp_path / "root", "./a.jpg") == (b"y", None)
    assert read_image_file(tmp_path / "root", "../secret.jpg") == (None, schema.REASON_IMAGE_PATH)
    assert read_image_file(tmp_path / "root", "nope.jpg") == (None, schema.REASON_IMAGE_MISSING)
