"""CLIP's image preprocessing in Pillow and numpy, step for step as transformers'
``CLIPImageProcessorPil`` does it (transformers 5: image_processing_backends.PilBackend and
image_transforms), so the ONNX edge feeds its graph the very tensor the torch edge computes.

Torch-free. ``alignedvq export-edge`` checks it against the real processor on every export."""

from __future__ import annotations

import numpy as np
from PIL import Image

from edge_agent.edge_spec import Preprocess


def resized_size(width: int, height: int, shortest_edge: int) -> tuple[int, int]:
    """(width, height) after the shortest-edge resize: the long side is truncated, not rounded
    (transformers' get_resize_output_image_size, default_to_square=False)."""
    if width <= height:
        return shortest_edge, int(shortest_edge * height / width)
    return int(shortest_edge * width / height), shortest_edge


def center_crop(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """(C, H, W) -> (C, height, width); offsets floor((H - height) / 2), zero padding when the
    image is smaller (image_transforms.center_crop)."""
    _, h, w = x.shape
    top, left = (h - height) // 2, (w - width) // 2
    if top >= 0 and left >= 0:
        return x[:, top:top + height, left:left + width]
    nh, nw = max(height, h), max(width, w)
    top_pad, left_pad = -(-(nh - h) // 2), -(-(nw - w) // 2)     # ceil, as transformers
    canvas = np.zeros((x.shape[0], nh, nw), dtype=x.dtype)
    canvas[:, top_pad:top_pad + h, left_pad:left_pad + w] = x
    top, left = top + top_pad, left + left_pad
    return canvas[:, max(0, top):min(nh, top + height), max(0, left):min(nw, left + width)]


def preprocess_one(image: Image.Image, pre: Preprocess) -> np.ndarray:
    """One RGB image -> (3, crop_height, crop_width) float32."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    if pre.do_resize:
        image = image.resize(resized_size(image.width, image.height, pre.shortest_edge),
                             resample=pre.resample)
    x = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
    if pre.do_center_crop:
        x = center_crop(x, pre.crop_height, pre.crop_width)
    if pre.do_rescale:
        # Upcast first, multiply in float64, then float32 (image_transforms.rescale).
        x = (x.astype(np.float64) * pre.rescale_factor).astype(np.float32)
    else:
        x = x.astype(np.float32)
    if pre.do_normalize:
        mean = np.asarray(pre.image_mean, dtype=np.float32)[:, None, None]
        std = np.asarray(pre.image_std, dtype=np.float32)[:, None, None]
        x = (x - mean) / std
    return np.ascontiguousarray(x, dtype=np.float32)


def preprocess(images, pre: Preprocess) -> np.ndarray:
    """RGB images -> the graph's input, (batch, 3, H, W) float32."""
    return np.stack([preprocess_one(im, pre) for im in images])
