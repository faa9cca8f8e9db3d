"""Tiny FastVLM (``apple/FastVLM-1.5B`` as transformers converts it, e.g. ``KamilaMila/FastVLM-1.5B``).

``FastVlmForConditionalGeneration`` (transformers >= 5, model type ``fast_vlm``): FastViTHD vision tower
(timm ``fastvit_mci3`` behind ``TimmWrapperModel``, config ``model_args={"inference_mode": True}``;
needs the ``timm`` package), 2-layer GELU projector, Qwen2 text model. Layout from transformers'
``convert_fastvlm_weights_to_hf.py``: ``image_token_index`` 151646 (``<image>``, added right after
Qwen2's ``<|endoftext|> <|im_start|> <|im_end|>``), ``image_seq_length`` 256, feature layer -1 /
strategy ``full``; ``LlavaProcessor`` with ``patch_size`` 64 and a ``CLIPImageProcessor`` that resizes
the shortest edge to 1024 and center-crops 1024 x 1024 (mean 0, std 1). FastViTHD downsamples 64x, so
one ``<image>`` in the prompt expands to (1024 / 64)^2 = 256 ``<image>`` tokens for any image size.

The tiny tower keeps the real stage structure (conv stem /4, 4 downsampling stages, repmixer stages
then attention stages with conditional position encodings, final conv doubling the channels) and
therefore the real 64x downsampling and token count, with 1 block per stage and narrow channels.
The original Apple checkpoint (``LlavaQwen2ForCausalLM`` remote code) is a different layout.
"""

from __future__ import annotations

from pathlib import Path

from . import _common as c
from ._tokenizer import train_bytelevel

ARCHITECTURE = "FastVlmForConditionalGeneration"
IMAGE_PLACEHOLDER = "<image>"  # what the prompt contains once per image
IMAGE_TOKEN = "<image>"  # what it expands to
IMAGE_SIZE = 1024
PATCH_SIZE = 64  # effective: FastViTHD's total stride (stem /4, four /2 downsamplings)
TOKENS_PER_IMAGE = (IMAGE_SIZE // PATCH_SIZE) ** 2  # 256, for any input image size

# Qwen2 tokenizer's added tokens (151643 ...), then the image token the conversion adds (151646).
ADDED_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", IMAGE_TOKEN]

# Tiny FastViT-MCi3: real stage layout (repmixer x3, attention x2), one block per stage. Attention
# stages need channels divisible by timm's head_dim 32; the final conv doubles the last stage's width.
VISION_EMBED_DIMS = (16, 16, 32, 32, 64)
VISION_HIDDEN = 2 * VISION_EMBED_DIMS[-1]

# chat_template of the converted checkpoints (convert_fastvlm_weights_to_hf.py): ChatML, images first
# ("<image>"), then "\n" + each text part.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n'}}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}"
    "{% endfor %}{# Render all text next #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ '\n' + content['text'] }}{% endfor %}{{'<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tokens_for_image(width: int, height: int) -> int:
    return TOKENS_PER_IMAGE


def build_tokenizer():
    from transformers import Qwen2Tokenizer

    vocab, merges = train_bytelevel()
    for t in ADDED_TOKENS:
        vocab.setdefault(t, len(vocab))
    # Qwen/Qwen2-1.5B's tokenizer_config (the conversion's text model): no BOS, EOS = PAD = <|endoftext|>.
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        errors="replace",
        model_max_length=32768,
        split_special_tokens=False,
    )
    tok.add_tokens(c.added(ADDED_TOKENS), special_tokens=True)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build(out: Path) -> None:
    from transformers import (
        CLIPImageProcessor,
        FastVlmConfig,
        FastVlmForConditionalGeneration,
        GenerationConfig,
        LlavaProcessor,
        Qwen2Config,
        TimmWrapperConfig,
    )

    tok = build_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in ADDED_TOKENS}
    text = Qwen2Config(
        **c.text_dims(tok),
        head_dim=c.HEAD_DIM,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=True,  # Qwen2-1.5B ties them; FastVlmConfig inherits it
        use_sliding_window=False,
        max_window_layers=c.LAYERS,
    )
    vision = TimmWrapperConfig(
        architecture="fastvit_mci3",
        do_pooling=True,
        global_pool="avg",
        hidden_size=VISION_HIDDEN,  # the tower's num_features (3072 in the real one)
        initializer_range=0.02,
        model_args={
            "inference_mode": True,
            "layers": [1, 1, 1, 1, 1],  # real: (2, 12, 24, 4, 2)
            "embed_dims": list(VISION_EMBED_DIMS),  # real: (96, 192, 384, 768, 1536)
        },
        num_labels=0,
    )
    vision.label2id, vision.id2label = {}, {}
    config = FastVlmConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=ids[IMAGE_TOKEN],
        image_seq_length=TOKENS_PER_IMAGE,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        multimodal_projector_bias=True,
        tie_word_embeddings=True,
    )
    config.architectures = [ARCHITECTURE]
    c.save_model(FastVlmForConditionalGeneration, config, out)
    GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
    ).save_pretrained(out)

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_center_crop=True,
        image_mean=[0.0, 0.0, 0.0],
        image_std=[1.0, 1.0, 1.0],
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=PATCH_SIZE,
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )
    processor.save_pretrained(out)
    image_processor.save_pretrained(out)
