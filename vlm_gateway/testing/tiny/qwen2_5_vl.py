"""Tiny Qwen2.5-VL (``Qwen/Qwen2.5-VL-7B-Instruct`` layout).

``Qwen2_5_VLForConditionalGeneration``: windowed ViT (patch 14, 2x2 spatial merge, temporal patch 2),
Qwen2 text model with M-RoPE. Qwen2 byte-level BPE vocabulary plus Qwen's added tokens in their real
order (``<|endoftext|> <|im_start|> <|im_end|> ... <|vision_start|> <|vision_end|> <|vision_pad|>
<|image_pad|> <|video_pad|>`` ...). The prompt has ``<|vision_start|><|image_pad|><|vision_end|>`` per
image; the single ``<|image_pad|>`` expands to (h/14)*(w/14)/4 ``<|image_pad|>`` tokens, h and w being
the image size after Qwen's ``smart_resize`` (multiples of 28, 3136 <= h*w <= 12845056 pixels).
"""

from __future__ import annotations

from pathlib import Path

from . import _common as c
from ._tokenizer import train_bytelevel

ARCHITECTURE = "Qwen2_5_VLForConditionalGeneration"
IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
IMAGE_TOKEN = "<|image_pad|>"
PATCH_SIZE = 14
MERGE_SIZE = 2
MIN_PIXELS = 56 * 56
MAX_PIXELS = 28 * 28 * 16384  # 12845056, as in the hub preprocessor_config.json

# Added tokens of the Qwen2.5 tokenizer, in id order (151643 ...); ``special`` False for the tool tags.
ADDED_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
]
NOT_SPECIAL = {"<tool_call>", "</tool_call>"}

# chat_template.json of Qwen/Qwen2.5-VL-7B-Instruct
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = "
    "video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)


def tokens_for_image(width: int, height: int) -> int:
    from vlm_gateway.images.features import smart_resize

    h, w = smart_resize(height, width, PATCH_SIZE * MERGE_SIZE, MIN_PIXELS, MAX_PIXELS)
    return (h // PATCH_SIZE) * (w // PATCH_SIZE) // (MERGE_SIZE * MERGE_SIZE)


def build_tokenizer():
    from transformers import Qwen2Tokenizer

    vocab, merges = train_bytelevel()
    for t in ADDED_TOKENS:
        vocab.setdefault(t, len(vocab))
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        errors="replace",
        model_max_length=131072,
        split_special_tokens=False,
    )
    tok.add_tokens([*c.added([t for t in ADDED_TOKENS if t not in NOT_SPECIAL])], special_tokens=True)
    tok.add_tokens(c.added(sorted(NOT_SPECIAL), special=False))
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build(out: Path) -> None:
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    tok = build_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in ADDED_TOKENS}
    text = dict(
        **c.text_dims(tok),
        max_position_embeddings=128000,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [8, 12, 12]},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
        use_sliding_window=False,
        max_window_layers=c.LAYERS,
    )
    vision = dict(
        depth=2,
        hidden_size=64,
        intermediate_size=128,
        num_heads=1,
        out_hidden_size=c.HIDDEN,
        patch_size=PATCH_SIZE,
        spatial_merge_size=MERGE_SIZE,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[1],
        tokens_per_second=2,
    )
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    config.architectures = [ARCHITECTURE]
    config.bos_token_id = ids["<|endoftext|>"]
    config.eos_token_id = ids["<|im_end|>"]
    c.save_model(Qwen2_5_VLForConditionalGeneration, config, out)
    _write_generation_config(out, ids)

    mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    size = {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}
    common = dict(
        size=size, patch_size=PATCH_SIZE, temporal_patch_size=2, merge_size=MERGE_SIZE,
        image_mean=mean, image_std=std,
    )  # fmt: skip
    image_processor = Qwen2VLImageProcessor(**common)
    video_processor = Qwen2VLVideoProcessor(**common)
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    image_processor.save_pretrained(out)


def _write_generation_config(out: Path, ids: dict[str, int]) -> None:
    from transformers import GenerationConfig

    GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=True,
        temperature=0.1,
        top_p=0.001,
        top_k=1,
        repetition_penalty=1.05,
    ).save_pretrained(out)
