"""Save LLaVA in the llava-1.5-hf key layout (``vision_tower.vision_model.*``).

transformers 5 flattens ``CLIPVisionModel`` (its parameters have no ``vision_model.`` level)
and, for a model built from a config rather than loaded, ``save_pretrained`` writes the
flattened names (``vision_tower.embeddings...``). transformers itself loads either layout, but
vLLM's ``LlavaForConditionalGeneration`` (and other llava-1.5 tools) only know the original one
(``There is no module or parameter named 'vision_tower.embeddings'``). So the checkpoint is
rewritten to llava-1.5-hf's names after saving. The vision fingerprint is unaffected: it hashes
the names inside the vision model (common/split/weights.py strips either prefix) and the stored bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

_FLAT = "vision_tower."
_NESTED = "vision_tower.vision_model."


def llava15_key(key: str) -> str:
    """``vision_tower.X`` -> ``vision_tower.vision_model.X``; every other key is unchanged."""
    if key.startswith(_FLAT) and not key.startswith(_NESTED):
        return _NESTED + key[len(_FLAT):]
    return key


def rewrite_to_llava15_layout(model_dir: Path) -> int:
    """Renames the vision keys of every safetensors file in ``model_dir`` in place (and the index,
    if sharded). Returns how many keys were renamed (0 if already in the llava-1.5-hf layout)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    model_dir = Path(model_dir)
    renamed = 0
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {"format": "pt"}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        moved = {llava15_key(k): v for k, v in tensors.items()}
        n = sum(1 for k in tensors if llava15_key(k) != k)
        if n:
            save_file(moved, str(path), metadata=metadata)
            renamed += n
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"] = {llava15_key(k): v for k, v in data["weight_map"].items()}
        index.write_text(json.dumps(data, indent=2))
    return renamed


if __name__ == "__main__":
    import sys

    for d in sys.argv[1:] or ["common/models/tiny-llava"]:
        print(d, rewrite_to_llava15_layout(Path(d)), "keys renamed")
