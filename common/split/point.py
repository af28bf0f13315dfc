"""Where LLaVA is cut in two (:class:`SplitPoint`), and the CLS rule, in one place.

The cut sits at a CLIP block boundary: the edge runs the vision tower's embeddings and blocks
``[0, K)``; the cloud runs blocks ``[K, F)`` (none by default), the projector and the language
model, where ``F`` is the block whose output LLaVA reads (``vision_feature_layer``). Because the
cut is at a block boundary, the hidden state at the cut *is* the whole state the cloud needs:
nothing (no residual stream, no skip connection) bypasses the codec. The paper this project
follows cut inside the first CLIP block and did not count the residual links it sent
(docs/design.md, "The lesson").
"""


from __future__ import annotations

from dataclasses import dataclass


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


