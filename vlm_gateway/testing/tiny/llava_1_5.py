"""Tiny LLaVA-1.5 (``llava-hf/llava-1.5-7b-hf`` layout).

``LlavaForConditionalGeneration``: CLIP ViT vision tower at 336 px / patch 14 (24 x 24 = 576 patch
features, CLS dropped by the ``default`` feature-select strategy), 2-layer GELU projector, Llama text
model. Llama-2 SentencePiece-style vocabulary (``<unk> <s> </s>``, byte fallback) plus the added
``<image>`` and ``<pad>`` tokens; one ``<image>`` in the prompt expands to 576 ``<image>`` tokens.
"""

from __future__ import annotations

from pathlib import Path

from . import _common as c
from ._tokenizer import train_sentencepiece

ARCHITECTURE = "LlavaForConditionalGeneration"
IMAGE_PLACEHOLDER = "<image>"  # what the prompt contains once per image
IMAGE_TOKEN = "<image>"  # what it expands to
IMAGE_SIZE = 336
PATCH_SIZE = 14
TOKENS_PER_IMAGE = (IMAGE_SIZE // PATCH_SIZE) ** 2  # 576, for any input image size


def tokens_for_image(width: int, height: int) -> int:
    return TOKENS_PER_IMAGE


# chat_template.json of llava-hf/llava-1.5-7b-hf
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{# Render all images first #}{% for content in message['content'] | selectattr('type', "
    "'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] "
    "!= 'assistant' %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% else %}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'text') %}{% generation %}{{ content['text'] + ' '}}{% endgeneration %}"
    "{% endfor %}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def build_tokenizer():
    from transformers import LlamaTokenizer

    vocab, merges = train_sentencepiece(["<unk>", "<s>", "</s>"], prepend_space=True)
    tok = LlamaTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        add_bos_token=True,
        add_eos_token=False,
        legacy=False,
        model_max_length=4096,
        padding_side="left",
    )
    tok.add_tokens(c.added([IMAGE_TOKEN, "<pad>"]), special_tokens=True)
    tok.pad_token = "<pad>"
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build(out: Path) -> None:
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tok = build_tokenizer()
    image_token_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    text = LlamaConfig(
        **c.text_dims(tok),
        head_dim=c.HEAD_DIM,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    vision = CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=1,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        projection_dim=64,
        hidden_act="quick_gelu",
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_seq_length=TOKENS_PER_IMAGE,
        tie_word_embeddings=False,
    )
    config.architectures = [ARCHITECTURE]
    config.pad_token_id = tok.pad_token_id
    c.save_model(LlavaForConditionalGeneration, config, out)
    # transformers 5 saves the CLIP tower as ``vision_tower.embeddings...``; vLLM's CLIPVisionModel
    # (like the llava-hf checkpoints) has it under ``vision_tower.vision_model.``.
    c.rename_weights(out, c.nest_vision_model)

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_center_crop=True,
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,
    )
    processor.save_pretrained(out)
    image_processor.save_pretrained(out)  # preprocessor_config.json too, as the hub checkpoints have
