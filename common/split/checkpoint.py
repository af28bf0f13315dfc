"""Loading a LLaVA checkpoint (or its processor) from a local folder: the one code path shared by
the embedded tiny model and a llava-1.5-hf checkpoint on disk. Never touches a model hub."""

from __future__ import annotations

from pathlib import Path

import torch

from common._runtime.torchvision_cpu import install_import_hook

# transformers' image processors import torchvision when it is installed, and PyPI's (a CUDA
# build on x86_64, which the vLLM install brings) fails beside a CPU torch: the hook makes it
# importable. Installed here, where checkpoints are loaded, not on ``import common``.
install_import_hook()


class ModelNotFoundError(FileNotFoundError):
    pass


def default_device() -> str:
    """``auto`` means the GPU when there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


# The image processor's Pillow backend, always: transformers 5 picks its torchvision backend
# whenever torchvision imports (the vLLM install makes it importable), and that one resizes
# differently (up to 0.015 after normalisation): an edge's features would depend on what else is
# installed, and the ONNX edge (edge_agent/clip_preprocess.py) reproduces the Pillow one bit for
# bit.
IMAGE_BACKEND = "pil"


def load_processor(model_dir: str | Path):
    """The checkpoint's processor (tokenizer + Pillow image processor), from local files only."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(model_dir, local_files_only=True, backend=IMAGE_BACKEND)


def load_image_processor(model_dir: str | Path):
    """The checkpoint's image processor alone (what the edge and image uploads need)."""
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(model_dir, local_files_only=True,
                                              backend=IMAGE_BACKEND)


def check_checkpoint(model_dir: Path) -> None:
    if not (model_dir / "config.json").is_file():
        raise ModelNotFoundError(
            f"no HF checkpoint at {model_dir} (expected config.json, *.safetensors and the "
            "processor files, as save_pretrained writes them)")
