"""Tiny Gemma 3 (``google/gemma-3-4b-it`` layout).

``Gemma3ForConditionalGeneration``: SigLIP vision tower at 896 px / patch 14 (64 x 64 patches), average
pooled to 16 x 16 = 256 soft tokens, Gemma 3 text model (sliding + full attention layers). Gemma
SentencePiece-style vocabulary (``<pad> <eos> <bos> <unk> <mask> [multimodal]``, byte fallback,
``<start_of_turn>``/``<end_of_turn>``) in which ``"\\n"``, ``"\\n\\n"``, ``"\\n\\n\\n"`` and
``"\\n\\n\\n\\n"`` are single vocabulary entries (vLLM's Gemma 3 processor looks them up), plus
``<start_of_image>``, ``<end_of_image>``, ``<image_soft_token>``. The prompt has ``<start_of_image>``
once per image; it expands to ``"\\n\\n<start_of_image>" + 256 x <image_soft_token> +
"<end_of_image>\\n\\n"`` (260 tokens, or fewer extra newline tokens where they merge with neighbours).
"""

from __future__ import annotations

from pathlib import Path

from . import _common as c
from ._tokenizer import train_sentencepiece

ARCHITECTURE = "Gemma3ForConditionalGeneration"
IMAGE_PLACEHOLDER = "<start_of_image>"
IMAGE_TOKEN = "<image_soft_token>"
BOI, EOI = "<start_of_image>", "<end_of_image>"
IMAGE_SIZE = 896
PATCH_SIZE = 14
TOKENS_PER_IMAGE = 256  # soft tokens; the full expansion adds BOI, EOI and two "\n\n"

LEADING = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "[multimodal]", "<start_of_turn>", "<end_of_turn>"]
NEWLINES = ["\n", "\n\n", "\n\n\n", "\n\n\n\n"]


def tokens_for_image(width: int, height: int) -> int:
    return TOKENS_PER_IMAGE


# chat_template of google/gemma-3-4b-it
CHAT_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""


def build_tokenizer():
    from transformers import GemmaTokenizer

    vocab, merges = train_sentencepiece(LEADING, prepend_space=False, extra_pieces=NEWLINES)
    for t in (BOI, EOI, IMAGE_TOKEN):
        vocab.setdefault(t, len(vocab))
    tok = GemmaTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        mask_token="<mask>",
        boi_token=BOI,
        eoi_token=EOI,
        image_token=IMAGE_TOKEN,
        add_bos_token=True,
        add_eos_token=False,
        model_max_length=131072,
        padding_side="left",
    )
    tok.add_tokens(c.added([*LEADING, BOI, EOI, IMAGE_TOKEN]), special_tokens=True)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build(out: Path) -> None:
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessor,
        Gemma3Processor,
        GenerationConfig,
        SiglipVisionConfig,
    )

    tok = build_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in [*LEADING, BOI, EOI, IMAGE_TOKEN]}
    text = dict(
        **c.text_dims(tok),
        head_dim=c.HEAD_DIM,
        query_pre_attn_scalar=c.HEAD_DIM,
        sliding_window=512,
        layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=131072,
        rms_norm_eps=1e-6,
        pad_token_id=ids["<pad>"],
        eos_token_id=ids["<eos>"],
        bos_token_id=ids["<bos>"],
    )
    vision = SiglipVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=1,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        vision_use_head=False,
        layer_norm_eps=1e-6,
    )
    config = Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=TOKENS_PER_IMAGE,
        boi_token_index=ids[BOI],
        eoi_token_index=ids[EOI],
        image_token_index=ids[IMAGE_TOKEN],
    )
    config.architectures = [ARCHITECTURE]
    config.eos_token_id = [ids["<eos>"], ids["<end_of_turn>"]]
    c.save_model(Gemma3ForConditionalGeneration, config, out)
    c.rename_weights(out, c.nest_vision_model)  # vLLM's SiglipVisionModel has ``vision_model.``
    GenerationConfig(
        bos_token_id=ids["<bos>"],
        eos_token_id=[ids["<eos>"], ids["<end_of_turn>"]],
        pad_token_id=ids["<pad>"],
        do_sample=True,
        top_k=64,
        top_p=0.95,
    ).save_pretrained(out)

    image_processor = Gemma3ImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        resample=2,
        do_pan_and_scan=False,
    )
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tok,
        chat_template=CHAT_TEMPLATE,
        image_seq_length=TOKENS_PER_IMAGE,
    )
    processor.save_pretrained(out)
    image_processor.save_pretrained(out)
