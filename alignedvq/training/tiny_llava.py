"""The embedded tiny LLaVA: a real ``LlavaForConditionalGeneration`` with a word-level tokenizer
and a ``LlavaProcessor``, saved in HF format so the same code path loads it and a llava-1.5-hf
checkpoint.

Sizes follow the recipe measured in issue 2 (CLIP 4 x 128, Llama 4 x 192, 128 px, patch 16):
64 image tokens is a real patch grid, and the whole checkpoint stays a few MB.
"""

from __future__ import annotations

from common._runtime.torchvision_cpu import install_import_hook

install_import_hook()  # before transformers' image processors import torchvision

from tokenizers import Tokenizer, models, pre_tokenizers, processors  # noqa: E402
from transformers import (  # noqa: E402
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from alignedvq.data import shapes_vqa as spec

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", IMAGE_TOKEN]

# llava-1.5-hf's own chat template, verbatim, so prompts are built exactly as for the real model:
# "USER: <image>\n{question} ASSISTANT:".
LLAVA_15_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

VISION = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
              image_size=spec.IMAGE_SIZE, patch_size=16, projection_dim=128)
TEXT = dict(hidden_size=192, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=4, max_position_embeddings=512, rms_norm_eps=1e-5,
            tie_word_embeddings=False)
# CLIP's own normalisation constants, as llava-1.5's processor uses them.
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def vocabulary() -> list[str]:
    """Every word the chat template and the ShapesVQA templates and answers can produce."""
    words = ["USER", "ASSISTANT", ":", "?", ".", ",", "'", "-"]
    words += "what shape is the object color where there a how many are objects".split()
    words += list(spec.COLORS) + list(spec.SHAPES) + [s + "s" for s in spec.SHAPES]
    words += sorted({w for row in spec.POSITIONS for p in row for w in p.split()})
    words += list(spec.NUMBERS) + ["yes", "no"]
    seen: dict[str, None] = {}
    for w in SPECIAL_TOKENS + words:
        seen.setdefault(w, None)
    return list(seen)


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(vocabulary())}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    # Words split on white space, punctuation split off ("USER:" -> "USER", ":").
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<pad>", extra_special_tokens={"image_token": IMAGE_TOKEN},
        padding_side="left", model_max_length=512)
    return tok


def build_processor(tokenizer: PreTrainedTokenizerFast) -> LlavaProcessor:
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": spec.IMAGE_SIZE},
        crop_size={"height": spec.IMAGE_SIZE, "width": spec.IMAGE_SIZE},
        image_mean=CLIP_MEAN, image_std=CLIP_STD, do_convert_rgb=True)
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=VISION["patch_size"],
        vision_feature_select_strategy="default", chat_template=LLAVA_15_CHAT_TEMPLATE,
        num_additional_image_tokens=1)


def build_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlavaForConditionalGeneration:
    import torch

    torch.manual_seed(seed)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**VISION),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **TEXT),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    model = LlavaForConditionalGeneration(config)
    gc = model.generation_config
    gc.bos_token_id, gc.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    gc.pad_token_id, gc.do_sample, gc.max_new_tokens = tokenizer.pad_token_id, False, 8
    return model
