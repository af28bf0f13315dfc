"""Where LLaVA is cut in two, and the two halves.

The cut sits at a CLIP block boundary: the edge runs the vision tower's embeddings and blocks
``[0, K)``; the cloud runs blocks ``[K, F)`` (none by default), the projector and the language
model, where ``F`` is the block whose output LLaVA reads (``vision_feature_layer``). Because the
cut is at a block boundary, the hidden state at the cut *is* the whole state the cloud needs:
nothing (no residual stream, no skip connection) bypasses the codec. This is the lesson of the
paper's withdrawn size claim (shared/DESIGN.md).

The edge builds its half from the checkpoint's vision keys alone (``safe_open`` reads only those
tensors), so it never holds a language-model parameter.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


class SplitError(ValueError):
    pass


@dataclass(frozen=True)
class SplitPoint:
    num_layers: int      # blocks in the vision tower
    feature_layer: int   # F: the hidden state LLaVA feeds the projector (0 = embeddings)
    split_layer: int     # K: the hidden state that crosses the wire
    strategy: str        # vision_feature_select_strategy: "default" drops CLS, "full" keeps it

    @classmethod
    def from_config(cls, config, split_layer: int | None = None) -> "SplitPoint":
        vision = config.vision_config
        if vision.model_type != "clip_vision_model":
            raise SplitError(f"only CLIP vision towers are supported (llava-1.5's), got "
                             f"{vision.model_type!r}")
        if not isinstance(config.vision_feature_layer, int):
            raise SplitError("a list of vision_feature_layer values is not supported")
        n = vision.num_hidden_layers
        f = config.vision_feature_layer
        f = f + n + 1 if f < 0 else f
        k = f if split_layer is None else (split_layer + n + 1 if split_layer < 0 else split_layer)
        if not 0 <= k <= f:
            raise SplitError(f"--split-layer must be the output of a vision block between 0 and "
                             f"the feature layer {f} (of {n} blocks), got {split_layer}")
        return cls(n, f, k, config.vision_feature_select_strategy)

    # The CLS rule, in one place. LLaVA's projector sees CLS only with the "full" strategy;
    # with "default" it is dropped at the feature layer. Dropped before the cut when the cut IS
    # the feature layer (it need not cross), else after the remaining blocks, which attend to it.
    @property
    def projector_sees_cls(self) -> bool:
        return self.strategy != "default"

    @property
    def sends_cls(self) -> bool:
        return self.projector_sees_cls or self.split_layer < self.feature_layer

    @property
    def cloud_drops_cls(self) -> bool:
        return self.sends_cls and not self.projector_sees_cls

    def tokens(self, vision_config) -> int:
        """Tokens that cross the wire."""
        return self._patches(vision_config) + (1 if self.sends_cls else 0)

    def image_tokens(self, vision_config) -> int:
        """Image tokens in the language model's prompt (the projector's output rows)."""
        return self._patches(vision_config) + (1 if self.projector_sees_cls else 0)

    @staticmethod
    def _patches(vision_config) -> int:
        grid = vision_config.image_size // vision_config.patch_size
        return grid * grid


# ---------------------------------------------------------------- reading only vision tensors

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


# ---------------------------------------------------------------- the two halves

class EdgeVision(nn.Module):
    """CLIP embeddings and blocks ``[0, K)``: pixels in, the hidden state at the cut out."""

    def __init__(self, vision_config, split: SplitPoint, fingerprint: str = "", config=None):
        """``fingerprint`` identifies the weights loaded (see :func:`vision_fingerprint`);
        ``config`` is the whole LLaVA config they came from (None for a bare tower)."""
        super().__init__()
        from transformers.models.clip.modeling_clip import CLIPEncoderLayer, CLIPVisionEmbeddings

        self.split, self.fingerprint, self.config = split, fingerprint, config
        self.embeddings = CLIPVisionEmbeddings(vision_config)
        self.pre_layrnorm = nn.LayerNorm(vision_config.hidden_size,
                                         eps=vision_config.layer_norm_eps)
        self.layers = nn.ModuleList(CLIPEncoderLayer(vision_config)
                                    for _ in range(split.split_layer))

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, split_layer: int | None = None,
                        device: str = "cpu", dtype: torch.dtype = torch.float32) -> "EdgeVision":
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
        split = SplitPoint.from_config(config, split_layer)
        config.vision_config._attn_implementation = "sdpa"
        tensors, fingerprint = read_vision_tensors(Path(model_dir), 0, split.split_layer, True)
        edge = cls(config.vision_config, split, fingerprint, config)
        state = {k.replace("encoder.layers.", "layers."): v for k, v in tensors.items()}
        missing, unexpected = edge.load_state_dict(state, strict=False)
        missing = [m for m in missing if not m.endswith("position_ids")]
        if missing or unexpected:
            raise SplitError(f"vision weights in {model_dir} do not match the config: missing "
                             f"{missing[:5]}, unexpected {unexpected[:5]}")
        return edge.to(device=device, dtype=dtype).eval()

    @torch.inference_mode()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        h = self.pre_layrnorm(self.embeddings(pixel_values.to(self.pre_layrnorm.weight.dtype)))
        for layer in self.layers:
            h = layer(h, None)
        return h if self.split.sends_cls else h[:, 1:]


def features_at_cut(vision: EdgeVision, image_processor, images) -> torch.Tensor:
    """Images -> the hidden state at the cut (B, T, D): the checkpoint's own resize, crop and
    normalisation (its image processor), then the blocks before the cut, on their device. The
    one way pixels become features, for the edge, the server's uploads and codec training."""
    pixels = image_processor(images=images, return_tensors="pt").pixel_values
    return vision(pixels.to(vision.pre_layrnorm.weight.device))


class CloudVision(nn.Module):
    """The cloud's share of the vision side: blocks ``[K, F)`` (none when the cut is the feature
    layer), the CLS rule, and LLaVA's projector. Features at the cut in, image embeddings (what
    ``get_image_features`` returns) out."""

    def __init__(self, split: SplitPoint, layers: nn.ModuleList, projector: nn.Module):
        super().__init__()
        self.split, self.layers, self.projector = split, layers, projector

    @classmethod
    def take_from(cls, model, split: SplitPoint) -> "CloudVision":
        """From a loaded LLaVA. Its vision tower is released (``vision_tower = None``): the
        blocks before the cut run on the edge and those past the feature layer never run, so
        their weights are freed; the blocks ``[K, F)`` live on here."""
        tower = model.model.vision_tower
        layers = nn.ModuleList(list(tower.encoder.layers)[split.split_layer:split.feature_layer])
        model.model.vision_tower = None
        return cls(split, layers, model.model.multi_modal_projector)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h = features.to(next(self.projector.parameters()).dtype)
        for layer in self.layers:
            h = layer(h, None)
        if self.split.cloud_drops_cls:
            h = h[:, 1:]
        return self.projector(h)


def merge_image_tokens(model, input_ids: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
    """``inputs_embeds`` with the image tokens replaced by the projected features, in order:
    what ``LlavaModel.forward`` does with ``get_image_features``' output, through its own
    ``get_placeholder_mask`` (transformers 5.24; it raises ValueError on a count mismatch)."""
    embeds = model.get_input_embeddings()(input_ids)
    image_features = image_features.to(embeds.device, embeds.dtype)
    mask = model.model.get_placeholder_mask(input_ids, inputs_embeds=embeds,
                                            image_features=image_features)
    return embeds.masked_scatter(mask, image_features)
