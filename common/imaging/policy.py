"""The one image-opening policy of the edge and the server.

Every image either side accepts goes through :func:`open_image` (the file as an upright RGB
picture) or :func:`load_model_input` (straight to the square the model sees), so both sides
refuse, convert and crop alike:

* **Refused before decoding** (:class:`ImageRefused`, a clear message without Python reprs):
  what Pillow cannot identify (text, SVG), an empty file, a directory, and any image whose
  *header* claims more pixels than the limit; a lying header costs a few hundred bytes to send
  and gigabytes to decode.
* **The model's square, as its processor makes it**: llava-1.5's CLIPImageProcessor resizes the
  shortest side to ``size`` (bicubic, long side ``int(size * long / short)``) and takes the
  centre ``size`` x ``size`` crop. :func:`model_square` does exactly that for ordinary shapes (the
  same Pillow calls, so the same pixels) and, for extreme aspect ratios, resamples only the
  source region the crop comes from: a 10000 x 1 strip would otherwise be upscaled to
  1,280,000 x 128 (1.96 GB measured) before being cropped. The JPEG baseline encodes this square
  and nothing more (:func:`jpeg_baseline`).
* **Bounded memory for very large images**: above :data:`EXACT_UP_TO_PIXELS` a JPEG is decoded
  at a reduced DCT scale (Pillow's draft mode) and anything else is reduced by an integer factor
  right after decoding, keeping at least :data:`REDUCING_GAP` times the model's size (Pillow's
  own rule for a reduction that is indistinguishable from a full resample).
* **High bit depth and float** (``I;16``, ``I``, ``F``) are scaled from their range to 0-255;
  ``convert("RGB")`` would clip every value above 255 (a 16-bit scene arrived white).
* Alpha is flattened onto white, as a viewer shows it; EXIF orientation is applied; an animated
  image contributes its first frame.
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# This module checks every header against its own limit (below), before decoding. Pillow's
# global check would fire first, with its own message and a warning printed on stderr.
Image.MAX_IMAGE_PIXELS = None

# Default limit on the pixels an image header may claim (edge: --max-image-pixels). 100 Mpx:
# a 108-Mpx phone sensor is the largest common camera; decoded as RGB it takes 4 B a pixel, so
# the limit also bounds the edge's largest allocation to ~400 MB.
DEFAULT_MAX_PIXELS = 100_000_000
# Up to this size an image is decoded whole and resized exactly as the model's processor does.
# Above it, it is reduced while decoding (16 Mpx: a 4000 x 4000 photo, 64 MB as RGB).
EXACT_UP_TO_PIXELS = 16_000_000
# Reduction keeps at least this multiple of the model's size before the bicubic resample
# (Pillow's ``reducing_gap``: 3 is "indistinguishable from fair resampling in most cases").
REDUCING_GAP = 3
# When resizing the whole image would make more than this multiple of the crop's pixels, only
# the source region of the crop is resampled (aspect ratios beyond 4:1).
FULL_RESIZE_UP_TO = 4


class ImageRefused(ValueError):
    """An image this policy will not or cannot decode; ``str()`` is the message for the user."""


def _describe(source) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else "the uploaded image"


def _open(source) -> Image.Image:
    """Open (header only), mapping every failure to a message a user can act on."""
    name = _describe(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            raise ImageRefused(f"{name} is a directory, not an image file")
        if not path.exists():
            raise ImageRefused(f"{name}: no such file")
        if path.stat().st_size == 0:
            raise ImageRefused(f"{name} is empty (0 bytes)")
    elif isinstance(source, (bytes, bytearray, memoryview)):
        if not len(source):
            raise ImageRefused("the uploaded image is empty (0 bytes)")
        source = io.BytesIO(source)
    try:
        return Image.open(source)
    except UnidentifiedImageError:
        # Pillow's message names the file object's repr (``<_io.BytesIO object at 0x...>``).
        raise ImageRefused(f"{name} could not be decoded: it is not in an image format this "
                           f"service reads (JPEG, PNG, GIF, BMP, TIFF, WebP, ...; not SVG or "
                           f"other vector formats)") from None
    except OSError as e:
        if e.errno is not None:  # the file system's refusal (permissions, I/O)
            raise ImageRefused(f"{name} could not be read: {e.strerror}") from None
        raise ImageRefused(f"{name} could not be decoded: the data is truncated or corrupt "
                           f"({e})") from None


def _check_size(im: Image.Image, name: str, max_pixels: int | None) -> None:
    # None is not "unlimited": Pillow's own check is off (above), so some limit always holds.
    max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    w, h = im.size
    if w < 1 or h < 1:
        raise ImageRefused(f"{name} has no pixels ({w} x {h})")
    if w * h > max_pixels:
        raise ImageRefused(f"{name} is {w} x {h} = {w * h} pixels by its header; at most "
                           f"{max_pixels} are accepted")


def _decode(im: Image.Image, name: str) -> None:
    try:
        im.load()
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        # Truncated or corrupt data; Pillow's own text ("image file is truncated (3 bytes not
        # processed)") says which, and names no object.
        raise ImageRefused(f"{name} could not be decoded: the data is truncated or corrupt "
                           f"({e})") from None


def _nominal_range(values: np.ndarray, mode: str) -> tuple[float, float]:
    """The range an ``I``/``F`` image's values are meant in: 0-1 (float images), 0-255,
    0-65535 (16-bit data widened to ``I``), else the values' own span."""
    if mode.startswith("I;16"):
        return 0.0, 65535.0
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    for top in (1.0, 255.0, 65535.0):
        if lo >= 0 and hi <= top:
            return 0.0, top
    return lo, hi if hi > lo else lo + 1.0


def _scale_to_8bit(im: Image.Image) -> Image.Image:
    """``I;16*``, ``I`` or ``F`` as 8-bit ``L``, scaled from its range (not clipped). Done in
    row blocks, so a large image needs one extra copy of itself, not several."""
    values = np.asarray(im)
    lo, hi = _nominal_range(values, im.mode)
    out = np.empty(values.shape, np.uint8)
    step = max(1, (1 << 22) // max(1, values.shape[1]))
    for top in range(0, values.shape[0], step):
        block = values[top:top + step].astype(np.float32)
        np.nan_to_num(block, copy=False, nan=lo, posinf=hi, neginf=lo)
        out[top:top + step] = np.clip(np.rint((block - lo) * (255.0 / (hi - lo))), 0, 255)
    return Image.fromarray(out, "L")


def _reducible(im: Image.Image) -> Image.Image:
    """The image in a mode Pillow can reduce and resize in 8 bits (L, LA, RGB, RGBA)."""
    if im.mode.startswith("I") or im.mode == "F":
        return _scale_to_8bit(im)
    if im.mode in ("L", "LA", "RGB", "RGBA"):
        return im
    if im.mode in ("P", "PA"):
        return im.convert("RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB")
    if im.mode in ("La", "RGBa"):
        return im.convert("RGBA")
    return im.convert("RGB")  # 1, CMYK, YCbCr, LAB, HSV, RGBX


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("LA", "RGBA"):
        # Alpha is flattened onto white, as a viewer shows it.
        canvas = Image.new("RGB", im.size, (255, 255, 255))
        canvas.paste(im.convert("RGBA"), mask=im.getchannel("A"))
        return canvas
    return im.convert("RGB") if im.mode != "RGB" else im


def _reduction(size: tuple[int, int], target: int | None) -> int:
    """The integer factor a large image is reduced by while decoding; 1 for ordinary images."""
    w, h = size
    if target is None or w * h <= EXACT_UP_TO_PIXELS:
        return 1
    return max(1, min(w, h) // (target * REDUCING_GAP))


def check_image(source, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """The image's (width, height) from its header, refused as :func:`open_image` would refuse
    it without decoding it: a cheap check before anything goes on the network."""
    im = _open(source)
    try:
        _check_size(im, _describe(source), max_pixels)
        return im.size
    finally:
        im.close()


def open_image(source, max_pixels: int = DEFAULT_MAX_PIXELS, *,
               target: int | None = None) -> Image.Image:
    """An image file (path, bytes or binary file object) as upright RGB, under this module's
    policy. ``max_pixels`` is checked from the header, before anything is decoded. With
    ``target`` (the model's input size), an image over :data:`EXACT_UP_TO_PIXELS` comes back
    reduced, its short side still at least ``REDUCING_GAP * target``."""
    name = _describe(source)
    im = _open(source)
    try:
        _check_size(im, name, max_pixels)
        factor = _reduction(im.size, target)
        if factor > 1 and im.format == "JPEG":
            # Decode at 1/2, 1/4 or 1/8 scale in the DCT: the full image is never in memory.
            im.draft(im.mode, (math.ceil(im.width / factor), math.ceil(im.height / factor)))
        _decode(im, name)
        orientation = im.getexif().get(_ORIENTATION, 1)
        out = _reducible(im)
        factor = _reduction(out.size, target)
        if factor > 1:
            out = out.reduce(factor)
        if orientation in _UPRIGHT:
            out = out.transpose(_UPRIGHT[orientation])
        out = _to_rgb(out)
    except BaseException:
        im.close()
        raise
    if out is not im:
        im.close()  # frees the decoded original at once, not when the collector gets to it
    return out


_ORIENTATION = 0x0112
# EXIF orientation -> the transpose that makes the picture upright (as ImageOps.exif_transpose).
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
            4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
            6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}


def model_square(image: Image.Image, size: int) -> Image.Image:
    """What llava-1.5's CLIPImageProcessor feeds the model: the shortest side resized to
    ``size`` (bicubic; long side ``int(size * long / short)``, its rule), then the centre
    ``size`` x ``size`` crop (offsets ``(len - size) // 2``). The processor given this square
    leaves it as it is."""
    w, h = image.size
    short, long = min(w, h), max(w, h)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if w <= h else (new_long, size)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    if new_w * new_h <= FULL_RESIZE_UP_TO * size * size:
        # The processor's own calls, so ordinary images get exactly its pixels.
        resized = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
        return resized.crop((left, top, left + size, top + size))
    # Resample only the crop's source region, with the whole image's scale (Pillow's ``box``):
    # the same filter positions, without the huge upscaled intermediate.
    sx, sy = w / new_w, h / new_h
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    return image.resize((size, size), Image.Resampling.BICUBIC, box=box)


def load_model_input(source, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An image file straight to the model's ``size`` x ``size`` input square, in bounded
    memory (see the module docstring)."""
    return model_square(open_image(source, max_pixels, target=size), size)


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def jpeg_baseline(image: Image.Image, size: int, quality: int = 90) -> bytes:
    """The cloud-only baseline's upload: exactly the square the model sees, JPEG-encoded (an
    image already at ``size`` x ``size`` is encoded as it is)."""
    if image.size != (size, size):
        image = model_square(image, size)
    return jpeg_bytes(image, quality)


def processor_size(image_processor) -> int:
    """The square input size of a CLIP-style processor (resize shortest edge to N, crop N x N),
    the geometry this policy reproduces."""
    return _square_size(getattr(image_processor, "size", None),
                        getattr(image_processor, "crop_size", None))


def checkpoint_image_size(model_dir: str | Path) -> int:
    """The input size from a checkpoint's processor files, read as JSON (no torch, no
    transformers), so the edge can prepare the image before it loads the model."""
    model_dir = Path(model_dir)
    for name, key in (("preprocessor_config.json", None), ("processor_config.json",
                                                           "image_processor")):
        path = model_dir / name
        if path.is_file():
            config = json.loads(path.read_text())
            config = config.get(key, {}) if key else config
            if config:
                return _square_size(config.get("size"), config.get("crop_size"))
    raise FileNotFoundError(f"no image processor config in {model_dir} (expected "
                            f"preprocessor_config.json or processor_config.json)")


def _square_size(size, crop) -> int:
    def get(d, k):
        if isinstance(d, int):  # older configs: "size": 224, "crop_size": 224
            return d
        return d.get(k) if isinstance(d, dict) else getattr(d, k, None)

    short = get(size, "shortest_edge")
    crop_h, crop_w = get(crop, "height"), get(crop, "width")
    if not short or short != crop_h or crop_h != crop_w:
        raise ValueError(f"image processor resizes to {size} and crops {crop}; this image "
                         f"policy reproduces 'shortest edge N, centre crop N x N' "
                         f"(CLIPImageProcessor as llava-1.5 configures it)")
    return int(short)
