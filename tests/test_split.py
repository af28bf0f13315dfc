"""The split: the edge half holds only vision weights, and with features passed through
unchanged, edge + cloud compute exactly what the monolithic model computes."""

import pytest
import torch

from alignedvq.evaluation.original_model import load_llava
from cloud_server.cloud_half import CloudHalf, merge_image_tokens
from cloud_server.language_model import build_prompt
from common.imaging.policy import open_image
from common.paths import DEFAULT_MODEL_DIR, SAMPLES_DIR
from common.split.point import SplitError, SplitPoint
from common.split.vision import features_at_cut
from edge_agent.torch_edge import EdgeHalf

IMAGES = ["sample0.png", "sample1.png", "sample3.jpg"]
QUESTIONS = ["what shape is the purple object?", "where is the green object?",
             "how many objects are there?"]


def monolithic_logits(images, questions):
    model, processor = load_llava(DEFAULT_MODEL_DIR)
    inputs = processor(images=images, text=[build_prompt(processor, q) for q in questions],
                       padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits, inputs


@pytest.mark.parametrize("split_layer", [None, 2, 0])
def test_identity_codec_equals_the_monolithic_model(split_layer):
    images = [open_image(SAMPLES_DIR / "images" / name) for name in IMAGES]
    expected, inputs = monolithic_logits(images, QUESTIONS)
    edge = EdgeHalf(DEFAULT_MODEL_DIR, mode="fp16", split_layer=split_layer)
    cloud = CloudHalf(DEFAULT_MODEL_DIR, split_layer=split_layer)
    # An identity codec: what the edge computed is what the cloud gets.
    features = features_at_cut(edge.vision, edge.image_processor, images)
    with torch.no_grad():
        embeds = merge_image_tokens(cloud.model, inputs.input_ids,
                                    cloud.image_embeddings(features))
        logits = cloud.model(inputs_embeds=embeds, attention_mask=inputs.attention_mask).logits
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_cls_crosses_only_when_the_cloud_needs_it():
    edge_default = EdgeHalf(DEFAULT_MODEL_DIR, mode="fp16")
    edge_early = EdgeHalf(DEFAULT_MODEL_DIR, mode="fp16", split_layer=2)
    grid = (edge_default.vision.config.vision_config.image_size
            // edge_default.vision.config.vision_config.patch_size) ** 2
    assert edge_default.tokens == grid
    assert edge_early.tokens == grid + 1


def test_edge_holds_no_language_model_parameters():
    edge = EdgeHalf(DEFAULT_MODEL_DIR, mode="fp16", split_layer=2)
    names = list(edge.vision.state_dict())
    assert names and all(n.startswith(("embeddings.", "pre_layrnorm.", "layers.")) for n in names)
    assert not any("language_model" in n or "lm_head" in n or "projector" in n for n in names)
    assert len(edge.vision.layers) == 2
    full, _ = load_llava(DEFAULT_MODEL_DIR)
    lm_params = sum(p.numel() for p in full.model.language_model.parameters())
    edge_params = sum(p.numel() for p in edge.vision.parameters())
    vision_params = sum(p.numel() for p in full.model.vision_tower.parameters())
    assert edge_params < vision_params < lm_params


def test_cloud_never_builds_the_vision_blocks_before_the_cut():
    cloud = CloudHalf(DEFAULT_MODEL_DIR, split_layer=2)
    # The language model is built without a vision side; the cloud's own blocks and projector
    # are read by key.
    assert cloud.model.model.vision_tower is None and cloud.model.model.multi_modal_projector is None
    assert not any(n.startswith(("model.vision_tower", "model.multi_modal_projector"))
                   for n in cloud.model.state_dict())
    layers = cloud.split.num_layers
    assert len(cloud.vision.layers) == layers - 2
    # Held by the cloud half, not attached to the transformers model.
    assert not hasattr(cloud.model, "cloud_vision_layers") and not hasattr(cloud.model, "split")


def test_the_language_model_loads_as_in_the_whole_checkpoint():
    """Built without its vision side, the language model holds the very tensors the whole
    LLaVA loads (lm_head included: the checkpoint's older layout is renamed, not skipped)."""
    cloud = CloudHalf(DEFAULT_MODEL_DIR)
    full, _ = load_llava(DEFAULT_MODEL_DIR)
    whole = full.state_dict()
    held = cloud.model.state_dict()
    assert held and all(torch.equal(t, whole[k]) for k, t in held.items())


def test_split_layer_bounds():
    model, _ = load_llava(DEFAULT_MODEL_DIR)
    with pytest.raises(SplitError, match="between 0 and the feature layer"):
        SplitPoint.from_config(model.config, 99)
