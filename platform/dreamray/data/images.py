"""Safe checks of encoded image bytes: decode them fully, never trust the header's size.

Converters keep the source bytes unchanged; this module only answers "would training be able
to decode this?" (modes such as CMYK, L, RGBA or I;16 decode, so they pass: the training-time
transform converts modes).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, ImageFile, UnidentifiedImageError

from dreamray.data.schema import (
    REASON_IMAGE_BOMB,
    REASON_IMAGE_EMPTY,
    REASON_IMAGE_MISSING,
    REASON_IMAGE_PATH,
    REASON_IMAGE_TRUNCATED,
    REASON_IMAGE_UNDECODABLE,
)

# 8192 x 8192: far above any training image (SD side is 512 px), far below what would make a
# worker run out of memory when decoded (RGBA at this size is 256 MiB).
MAX_IMAGE_PIXELS = 8192 * 8192


def check_image(data: bytes | None, max_pixels: int = MAX_IMAGE_PIXELS) -> str | None:
    """Check that encoded image bytes decode to a sane image.

    The declared size is read from the header first and compared with `max_pixels` before any
    pixel is decoded; PIL's own bomb guard (DecompressionBombWarning / Error, raised at open
    from its global limit) is caught too, so whichever limit is lower wins.

    Args:
        data: the encoded bytes (None counts as missing).
        max_pixels: the largest width * height accepted.

    Returns:
        None when the image decodes fully, else a reject reason from `dreamray.data.schema`.
    """
    if data is None:
        return REASON_IMAGE_MISSING
    if len(data) == 0:
        return REASON_IMAGE_EMPTY
    # A global switch elsewhere in the process would make truncated files "decode" silently.
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on: truncation is invisible")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                if width * height > max_pixels:
                    return REASON_IMAGE_BOMB
                im.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            return REASON_IMAGE_BOMB
        except UnidentifiedImageError:
            return REASON_IMAGE_UNDECODABLE
        except OSError as err:
            return REASON_IMAGE_TRUNCATED if "truncated" in str(err) else REASON_IMAGE_UNDECODABLE
        except (SyntaxError, ValueError, TypeError, EOFError, IndexError, KeyError):
            # PIL plugins signal corrupt headers with a zoo of exception types.
            return REASON_IMAGE_UNDECODABLE
    return None


def read_image_file(root: Path, rel_path: str) -> tuple[bytes | None, str | None]:
    """Read an image file named relative to a root, refusing paths that escape the root.

    Args:
        root: the image directory.
        rel_path: the path as written in the annotation (may start with "./").

    Returns:
        (bytes, None) on success, (None, reason) when the path escapes the root or the file is
        missing or unreadable.
    """
    root = root.resolve()
    path = (root / rel_path).resolve()
    if not path.is_relative_to(root):
        return None, REASON_IMAGE_PATH
    try:
        return path.read_bytes(), None
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
        return None, REASON_IMAGE_MISSING
