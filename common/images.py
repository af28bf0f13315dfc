"""Opening an image the way every edge and the server do: upright, RGB, alpha on white.

Kept free of torch so that the ONNX edge (``edge-agent --runtime onnx``) can open images on a
device that has no torch install; ``common.llava_io`` re-exports these names."""

from __future__ import annotations

from PIL import Image, ImageOps


class ImageTooLarge(ValueError):
    pass


def open_image(source, max_pixels: int | None = None) -> Image.Image:
    """Any image PIL opens (a path or a binary file object), upright (EXIF orientation applied)
    and in RGB. ``max_pixels`` is checked from the header, before anything is decoded."""
    with Image.open(source) as im:
        if max_pixels is not None and im.width * im.height > max_pixels:
            raise ImageTooLarge(f"the image has {im.width}x{im.height} pixels; at most "
                                f"{max_pixels} are accepted")
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            # Alpha is flattened onto white, as a viewer shows it.
            im = im.convert("RGBA")
            canvas = Image.new("RGB", im.size, (255, 255, 255))
            canvas.paste(im, mask=im.getchannel("A"))
            return canvas
        return im.convert("RGB")
