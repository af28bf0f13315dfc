"""Reading a checkpoint's tensors by key (``safe_open``), never the whole model: the edge holds
only the vision blocks before the cut, the cloud the blocks after it and the projector.
The same reading gives the vision fingerprint, which ties a codec to the weights it was trained
against."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from common.split.point import SplitPoint

_VISION_PREFIXES = ("model.vision_tower.", "vision_tower.")


def _safetensors_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / n for n in names]
    single = model_dir / "model.safetensors"
    if single.is_file():
        return [single]
    raise FileNotFoundError(f"no safetensors weights in {model_dir}")


def _vision_key(key: str) -> str | None:
    """Checkpoint key -> key inside a CLIPVisionModel, or None for everything else. Accepts the
    transformers 5 layout (``model.vision_tower.embeddings...``) and llava-1.5-hf's original one
    (``vision_tower.vision_model.embeddings...``)."""
    for prefix in _VISION_PREFIXES:
        if key.startswith(prefix):
            rest = key[len(prefix):]
            return rest[len("vision_model."):] if rest.startswith("vision_model.") else rest
    return None


def _wanted(key: str, first: int, stop: int, with_embeddings: bool) -> bool:
    if key.startswith(("embeddings.", "pre_layrnorm.")):
        return with_embeddings
    if key.startswith("encoder.layers."):
        return first <= int(key.split(".")[2]) < stop
    return False


def read_vision_tensors(model_dir: Path, first: int, stop: int, with_embeddings: bool,
                        fingerprint_only: bool = False):
    """The vision tensors of blocks ``[first, stop)`` (and the embeddings), read by key, with a
    fingerprint over their names and stored bytes (independent of the dtype they run in)."""
    from contextlib import ExitStack

    from safetensors import safe_open

    tensors, digest = {}, hashlib.sha256()
    with ExitStack() as stack:
        found = []
        for path in _safetensors_files(Path(model_dir)):
            f = stack.enter_context(safe_open(str(path), framework="pt"))
            for key in f.keys():
                vkey = _vision_key(key)
                if vkey is not None and _wanted(vkey, first, stop, with_embeddings):
                    found.append((vkey, key, f))
        # Sorted by name, so the fingerprint does not depend on how the checkpoint is sharded.
        for vkey, key, f in sorted(found, key=lambda item: item[0]):
            t = f.get_tensor(key)
            digest.update(vkey.encode())
            digest.update(t.contiguous().view(torch.uint8).numpy().tobytes())
            if not fingerprint_only:
                tensors[vkey] = t
    return tensors, digest.hexdigest()[:16]


def vision_fingerprint(model_dir: Path, split: SplitPoint) -> str:
    """Identifies the weights that produce the features at the cut: a codec trained against
    them is valid for exactly this fingerprint."""
    return read_vision_tensors(model_dir, 0, split.split_layer, True, fingerprint_only=True)[1]


_PROJECTOR_PREFIXES = ("model.multi_modal_projector.", "multi_modal_projector.")


def read_projector_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    """LLaVA's projector (``linear_1``, ``linear_2``), read by key, in either layout."""
    from safetensors import safe_open

    tensors = {}
    for path in _safetensors_files(Path(model_dir)):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                for prefix in _PROJECTOR_PREFIXES:
                    if key.startswith(prefix):
                        tensors[key[len(prefix):]] = f.get_tensor(key)
    return tensors
