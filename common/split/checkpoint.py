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
# installed, and the ONNX edge (common/clip_preprocess.py) reproduces the Pillow one bit for bit.
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


def load_llava(model_dir: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """Model and processor from a local HF-format folder; never touches a model hub."""
    from transformers import LlavaForConditionalGeneration

    _check_checkpoint(Path(model_dir))
    processor = load_chat_processor(model_dir)
    model = LlavaForConditionalGeneration.from_pretrained(
        model_dir, dtype=dtype, local_files_only=True).to(device).eval()
    return model, processor


def load_language_model(model_dir: str | Path, device: str = "cpu",
                        dtype: torch.dtype = torch.float32):
    """The checkpoint's language model as a LLaVA without its vision side: what the cloud half
    runs after its own vision blocks and projector (:class:`common.split.vision.CloudVision`)."""
    from transformers import LlavaForConditionalGeneration

    class LlavaWithoutVision(LlavaForConditionalGeneration):
        # The checkpoint's vision tower and projector are left on disk: transformers materialises
        # only the tensors the model has a place for, and these patterns keep the load report
        # quiet about the rest.
        _keys_to_ignore_on_load_unexpected = [r"vision_tower\.", r"multi_modal_projector\."]

        def __init__(self, config):
            # LlavaModel's constructor always builds both (transformers 5.19 has no option to
            # leave them out); from_pretrained builds on the meta device, so dropping them here,
            # before any weight is read, costs neither memory nor reads.
            super().__init__(config)
            self.model.vision_tower = None
            self.model.multi_modal_projector = None

    _check_checkpoint(Path(model_dir))
    return LlavaWithoutVision.from_pretrained(
        model_dir, dtype=dtype, local_files_only=True,
        key_mapping=_library_key_renamings("llava")).to(device).eval()


def _library_key_renamings(model_type: str) -> dict[str, str]:
    """transformers' own renamings of older checkpoint layouts (llava-1.5-hf's original
    ``language_model.model.*``, the embedded tiny model's) for ``model_type``, as a
    ``key_mapping``. transformers applies them only to classes defined in its own package, so a
    subclass has to ask for them; without them ``lm_head`` would load as random weights."""
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    return {source: target
            for renaming in get_checkpoint_conversion_mapping(model_type) or []
            for source, target in zip(renaming.source_patterns, renaming.target_patterns)}


def load_chat_processor(model_dir: str | Path):
    """The processor for batched generation: new tokens are appended on the right, so prompts
    are padded on the left."""
    processor = load_processor(model_dir)
    processor.tokenizer.padding_side = "left"
    return processor


def _check_checkpoint(model_dir: Path) -> None:
    if not (model_dir / "config.json").is_file():
        raise ModelNotFoundError(
            f"no HF checkpoint at {model_dir} (expected config.json, *.safetensors and the "
            "processor files, as save_pretrained writes them)")


def build_prompt(processor, question: str) -> str:
    """The checkpoint's own chat template (llava-1.5: ``USER: <image>\\n{q} ASSISTANT:``)."""
    conversation = [{"role": "user", "content": [{"type": "image"},
                                                 {"type": "text", "text": question}]}]
    return processor.apply_chat_template(conversation, add_generation_prompt=True)
