"""Tiny Llama 4 (``meta-llama/Llama-4-Scout-17B-16E-Instruct`` layout).

``Llama4ForConditionalGeneration``: Llama 4 vision encoder on 336 px tiles / patch 14 (576 patches),
pixel shuffle 0.5 -> 144 tokens per tile, MoE text model (here: 2 experts, top-1, every 2nd layer MoE,
chunked attention on RoPE layers, QK-norm). tiktoken-style byte-level BPE vocabulary with Llama 4's
special tokens at their real relative positions (``<|begin_of_text|>`` first, ``<|image_start|>`` at
+80, ``<|image|>`` at +90, ``<|patch|>`` at +92, as in ids 200000/200080/200090/200092).

The prompt has ``<|image|>`` once per image. It expands to ``<|image_start|>`` [tiles: 144 x
``<|patch|>`` with ``<|tile_x_separator|>`` / ``<|tile_y_separator|>``] ``<|image|>`` 144 x
``<|patch|>`` ``<|image_end|>``; an image that fits one 336 x 336 tile gives 147 tokens.
"""

from __future__ import annotations

import math
from pathlib import Path

from . import _common as c
from ._tokenizer import reserved, train_bytelevel

ARCHITECTURE = "Llama4ForConditionalGeneration"
IMAGE_PLACEHOLDER = "<|image|>"
IMAGE_TOKEN = "<|patch|>"
TILE = 336
PATCH_SIZE = 14
PATCHES_PER_TILE = int((TILE // PATCH_SIZE) ** 2 * 0.5**2)  # 144
MAX_TILES = 16

SPECIALS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
    "<|header_start|>", "<|header_end|>", "<|eom|>", "<|eot|>", "<|step|>",
    *reserved("text_post_train_reserved_special_token", 0, 6),
    "<|python_start|>", "<|python_end|>", "<|finetune_right_pad|>",
    *reserved("text_post_train_reserved_special_token", 6, 61),
    "<|image_start|>", "<|image_end|>", *reserved("vision_reserved_special_token", 0, 2),
    "<|tile_x_separator|>", "<|tile_y_separator|>", *reserved("vision_reserved_special_token", 2, 4),
    "<|image|>", "<|vision_reserved_special_token_6|>", "<|patch|>",
    *reserved("vision_reserved_special_token", 7, 9),
]  # fmt: skip

PRETOKENIZE_REGEX = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Llama 4's chat template without the tool-calling branches.
CHAT_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}"
    "{{- '<|header_start|>' + message['role'] + '<|header_end|>\\n\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}{%- else %}"
    "{%- for content in message['content'] %}{%- if content['type'] == 'image' %}{{- '<|image|>' }}"
    "{%- elif content['type'] == 'text' %}{{- content['text'] }}{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|eot|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|header_start|>assistant<|header_end|>\\n\\n' }}{%- endif %}"
)


def _tiles(width: int, height: int) -> tuple[int, int]:
    """(rows, cols) of 336-px tiles Llama4ImageProcessor picks (resize_to_max_canvas=False)."""
    canvases = sorted({(h, w) for h in range(1, MAX_TILES + 1) for w in range(1, MAX_TILES + 1) if h * w <= MAX_TILES})
    scales = []
    for h, w in canvases:
        scales.append(min((h * TILE) / height, (w * TILE) / width))
    up = [s for s in scales if s >= 1]
    chosen = min(up) if up else max(scales)
    best = [cv for cv, s in zip(canvases, scales, strict=True) if s == chosen]
    return min(best, key=lambda cv: cv[0] * cv[1])


def tokens_for_image(width: int, height: int) -> int:
    """Tokens one ``<|image|>`` expands to (start, tiles + separators, global tile, end)."""
    rows, cols = _tiles(width, height)
    n = 1 + 1 + PATCHES_PER_TILE + 1  # <|image_start|> <|image|> patches <|image_end|>
    if rows * cols > 1:
        n += rows * cols * PATCHES_PER_TILE + rows * (cols - 1) + rows
    return n


def build_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab, merges = train_bytelevel()
    base = len(vocab)
    for t in SPECIALS:
        vocab.setdefault(t, len(vocab))
    assert vocab["<|image_start|>"] - base == 80 and vocab["<|patch|>"] - base == 92
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tk.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    bos = "<|begin_of_text|>"
    tk.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1", special_tokens=[(bos, vocab[bos])]
    )
    tk.add_special_tokens(c.added(SPECIALS))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=bos,
        eos_token="<|eot|>",
        pad_token="<|finetune_right_pad|>",
        model_max_length=10485760,
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build(out: Path) -> None:
    from transformers import (
        GenerationConfig,
        Llama4Config,
        Llama4ForConditionalGeneration,
        Llama4ImageProcessor,
        Llama4Processor,
    )

    tok = build_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIALS}
    text = dict(
        **c.text_dims(tok),
        intermediate_size_mlp=c.INTERMEDIATE,
        head_dim=c.HEAD_DIM,
        num_local_experts=2,
        num_experts_per_tok=1,
        interleave_moe_layer_step=2,
        no_rope_layer_interval=2,
        attention_chunk_size=8192,
        use_qk_norm=True,
        max_position_embeddings=10485760,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },  # fmt: skip
        bos_token_id=ids["<|begin_of_text|>"],
        eos_token_id=[ids["<|end_of_text|>"], ids["<|eom|>"], ids["<|eot|>"]],
        pad_token_id=ids["<|finetune_right_pad|>"],
    )
    vision = dict(
        hidden_size=64,
        intermediate_size=256,  # = hidden / pixel_shuffle_ratio**2, as in the real config (1408 -> 5632)
        num_hidden_layers=2,
        num_attention_heads=1,
        image_size=TILE,
        patch_size=PATCH_SIZE,
        pixel_shuffle_ratio=0.5,
        projector_input_dim=c.HIDDEN,
        projector_output_dim=c.HIDDEN,
        vision_output_dim=c.HIDDEN,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    config = Llama4Config(
        text_config=text,
        vision_config=vision,
        boi_token_index=ids["<|image_start|>"],
        eoi_token_index=ids["<|image_end|>"],
        image_token_index=ids[IMAGE_TOKEN],
    )
    config.architectures = [ARCHITECTURE]
    c.save_model(Llama4ForConditionalGeneration, config, out)
    GenerationConfig(
        bos_token_id=ids["<|begin_of_text|>"],
        eos_token_id=[ids["<|end_of_text|>"], ids["<|eom|>"], ids["<|eot|>"]],
        pad_token_id=ids["<|finetune_right_pad|>"],
        do_sample=True,
        temperature=0.6,
        top_p=0.9,
    ).save_pretrained(out)

    image_processor = Llama4ImageProcessor(
        size={"height": TILE, "width": TILE}, max_patches=MAX_TILES, resize_to_max_canvas=False
    )
    processor = Llama4Processor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=PATCH_SIZE,
        pixel_shuffle_ratio=0.5,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    image_processor.save_pretrained(out)


assert math.isclose(PATCHES_PER_TILE, 144)
