"""Tiny Llama 3.2 Vision (``meta-llama/Llama-3.2-11B-Vision-Instruct`` layout).

``MllamaForConditionalGeneration``: a ViT (patch 14) on 560 px tiles, up to 4 tiles per image (the
canvas the image processor picks: 1x1 .. 1x4 / 2x2 / 4x1), each tile 40 x 40 patches + CLS = 1601
vision tokens; a gated "global" encoder on top; the final + intermediate hidden states are
concatenated (``vision_output_dim``) and projected to the text width. The text model is Llama 3 with
extra *cross-attention* layers (``cross_attention_layers``) whose keys/values are the vision tokens.

Unlike LLaVA-style families the image is NOT spliced into the token sequence: the prompt keeps ONE
``<|image|>`` token per image (``tokens_for_image`` is 1 for any size) and the text tokens after it
read the image through cross-attention. The vision side is ``encoder_tokens_for_image`` long (vLLM
0.10.x sends it as the encoder prompt: ``num_tiles * 1601`` copies of the image id); its KV lives in the
cross-attention layers only. Only the last run of consecutive images is visible to the tokens that
follow it (``get_cross_attention_token_mask``).

Vocabulary: tiktoken-style byte-level BPE followed by Llama 3's 256 special tokens at their real
relative positions (``<|begin_of_text|>`` first, ``<|start_header_id|>`` +6, ``<|eot_id|>`` +9,
``<|python_tag|>`` +10, as ids 128000/128006/128009/128010), then ``<|image|>`` as the LAST id, one past
the text vocabulary (128256 in the real checkpoint): ``text_config.vocab_size`` excludes it (the LM head
never emits it) and the input embedding has ``vocab_size + 8`` rows, as in the real model.

Checkpoint compatibility (vLLM 0.9/0.10 run transformers 4.5x): transformers 5 saves mllama in the
hub layout (``language_model.model.*``, ``language_model.lm_head.*``, ``vision_model.*``,
``multi_modal_projector.*``: its load-time renaming to ``model.language_model.*`` etc. is reverted on
save), which is what vLLM's loader expects (vLLM 0.10.2 also maps the ``model.*`` names), so no rename
step. ``config.json`` gets the rope settings both ways (``rope_parameters`` for transformers 5,
``rope_theta`` + ``rope_scaling`` for 4.x) and ``torch_dtype`` next to ``dtype``;
``tokenizer_config.json`` names ``PreTrainedTokenizerFast`` (transformers 4.x has no
``TokenizersBackend``; 5.x reads both) and ``processor_config.json`` loses the image-processor settings
that transformers 5 nests there (4.x would pass them to ``MllamaProcessor``; both read
``preprocessor_config.json``). The cross-attention and vision gates start at 0 in a fresh
model (tanh(0) = 0: the image would change nothing), so they are set to 0.5 as trained weights are
non-zero.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import _common as c
from ._tokenizer import reserved, train_bytelevel

ARCHITECTURE = "MllamaForConditionalGeneration"
IMAGE_PLACEHOLDER = "<|image|>"  # what the prompt contains once per image
IMAGE_TOKEN = "<|image|>"  # it stays one token: the image enters through cross-attention
IDS_PAST_TEXT_VOCAB = 1  # <|image|> is one id past text_config.vocab_size (the LM head never emits it)
TILE = 560
PATCH_SIZE = 14
MAX_TILES = 4
TOKENS_PER_TILE = (TILE // PATCH_SIZE) ** 2 + 1  # 1601 vision tokens (40 x 40 patches + CLS)
CROSS_ATTENTION_LAYERS = [1]  # of LAYERS + 1 text layers: self, cross, self

# Llama 3's 256 special tokens (ids 128000 .. 128255 in the real vocabulary), in order.
SPECIALS = [
    "<|begin_of_text|>", "<|end_of_text|>", *reserved("reserved_special_token", 0, 2),
    "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
    "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
    *reserved("reserved_special_token", 3, 245),
]  # fmt: skip

# Llama 3's pre-tokenizer split (tokenizer.json of meta-llama/Llama-3.2-11B-Vision-Instruct).
PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# chat_template.json of meta-llama/Llama-3.2-11B-Vision-Instruct (the revision that allows a system
# message together with images: the system block is written when one is given or when there is no image).
CHAT_TEMPLATE = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
    {%- set user_supplied_system_message = true %}
{%- else %}
    {%- set system_message = "" %}
    {%- set user_supplied_system_message = false %}
{%- endif %}

{#- Find out if there are any images #}
{% set image_ns = namespace(has_images=false) %}
{%- for message in messages %}
    {%- for content in message['content'] %}
        {%- if content['type'] == 'image' %}
            {%- set image_ns.has_images = true %}
        {%- endif %}
    {%- endfor %}
{%- endfor %}

{#- System message if there are no images, or if the user supplied one #}
{%- if user_supplied_system_message or not image_ns.has_images %}
    {{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
    {%- if tools is not none %}
        {{- "Environment: ipython\\n" }}
    {%- endif %}
    {{- "Cutting Knowledge Date: December 2023\\n" }}
    {{- "Today Date: " + date_string + "\\n\\n" }}
    {%- if tools is not none and not tools_in_user_message %}
        {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
        {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
        {{- "Do not use variables.\\n\\n" }}
        {%- for t in tools %}
            {{- t | tojson(indent=4) }}
            {{- "\\n\\n" }}
        {%- endfor %}
    {%- endif %}
    {{- system_message }}
    {{- "<|eot_id|>" }}
{%- endif %}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}
        {%- if message['content'] is string %}
            {{- message['content'] }}
        {%- else %}
            {%- for content in message['content'] %}
                {%- if content['type'] == 'image' %}
                    {{- '<|image|>' }}
                {%- elif content['type'] == 'text' %}
                    {{- content['text'] }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""  # noqa: E501


def _tiles(width: int, height: int) -> tuple[int, int]:
    """(rows, cols) of 560-px tiles MllamaImageProcessor picks (``get_optimal_tiled_canvas``): the
    smallest upscale that fits, else the largest downscale; ties go to the smallest canvas."""
    canvases = [(h, w) for w in range(1, MAX_TILES + 1) for h in range(1, MAX_TILES + 1) if h * w <= MAX_TILES]
    scales = [min(h * TILE / height, w * TILE / width) for h, w in canvases]
    up = [s for s in scales if s >= 1]
    chosen = min(up) if up else max(scales)
    best = [cv for cv, s in zip(canvases, scales, strict=True) if s == chosen]
    return min(best, key=lambda cv: cv[0] * cv[1])


def tokens_for_image(width: int, height: int) -> int:
    """Prompt tokens of one image: always 1 (the ``<|image|>`` token is not expanded; the image is read
    through the cross-attention layers, see ``encoder_tokens_for_image``)."""
    return 1


def encoder_tokens_for_image(width: int, height: int) -> int:
    """Vision tokens the cross-attention layers attend to for one image: ``tiles * 1601``."""
    rows, cols = _tiles(width, height)
    return rows * cols * TOKENS_PER_TILE


def build_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab, merges = train_bytelevel()
    base = len(vocab)
    for t in [*SPECIALS, IMAGE_TOKEN]:
        vocab.setdefault(t, len(vocab))
    assert len(SPECIALS) == 256 and vocab["<|start_header_id|>"] - base == 6 and vocab["<|eot_id|>"] - base == 9
    assert vocab[IMAGE_TOKEN] == len(vocab) - 1 == base + 256
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tk.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    bos = "<|begin_of_text|>"
    tk.post_processor = processors.Sequence(
        [
            processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
            processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1", special_tokens=[(bos, vocab[bos])]
            ),
        ]
    )
    tk.add_special_tokens(c.added([*SPECIALS, IMAGE_TOKEN]))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=bos,
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
        model_max_length=131072,
        clean_up_tokenization_spaces=False,  # the hub has True; transformers 5 ignores it for BPE
        model_input_names=["input_ids", "attention_mask"],
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
ROPE_THETA = 500000.0


def _model(config):
    """MllamaForConditionalGeneration with its tanh gates opened (a fresh model has them at 0)."""
    import torch
    from transformers import MllamaForConditionalGeneration

    gates = ("gate", "gate_attn", "gate_ffn", "cross_attn_attn_gate", "cross_attn_mlp_gate")
    model = MllamaForConditionalGeneration(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.rsplit(".", 1)[-1] in gates:
                p.fill_(0.5)
    return model


_model.__name__ = ARCHITECTURE


def _processor_config_both_ways(out: Path) -> None:
    """transformers 5 nests the image processor's settings in ``processor_config.json``; transformers 4.x
    passes every key there to ``MllamaProcessor(...)`` and fails (``Received a dict for argument
    image_processor``). Both read them from ``preprocessor_config.json``, so drop the nested copy."""
    path = out / "processor_config.json"
    cfg = json.loads(path.read_text())
    cfg.pop("image_processor", None)
    path.write_text(json.dumps(cfg, indent=2) + "\n")


def _tokenizer_config_both_ways(out: Path) -> None:
    path = out / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


def _config_both_ways(out: Path) -> None:
    """Add the transformers-4.x spellings next to transformers 5's in ``config.json``."""
    path = out / "config.json"
    cfg = json.loads(path.read_text())
    text = cfg["text_config"]
    text["rope_theta"] = ROPE_THETA
    text["rope_scaling"] = dict(ROPE)
    for sub in (cfg, text, cfg["vision_config"]):
        if "dtype" in sub:
            sub.setdefault("torch_dtype", sub["dtype"])
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def build(out: Path) -> None:
    from transformers import (
        GenerationConfig,
        MllamaConfig,
        MllamaImageProcessor,
        MllamaProcessor,
        MllamaTextConfig,
        MllamaVisionConfig,
    )

    tok = build_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in [*SPECIALS, IMAGE_TOKEN]}
    dims = c.text_dims(tok)
    text = MllamaTextConfig(
        vocab_size=dims["vocab_size"] - 1,  # <|image|> is past the text vocabulary, as 128256 is
        hidden_size=c.HIDDEN,
        intermediate_size=c.INTERMEDIATE,
        num_hidden_layers=c.LAYERS + len(CROSS_ATTENTION_LAYERS),
        cross_attention_layers=CROSS_ATTENTION_LAYERS,
        num_attention_heads=c.HEADS,
        num_key_value_heads=c.KV_HEADS,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_theta": ROPE_THETA, **ROPE},
        tie_word_embeddings=False,
        bos_token_id=ids["<|begin_of_text|>"],
        eos_token_id=ids["<|end_of_text|>"],
        pad_token_id=ids["<|finetune_right_pad_id|>"],
    )
    vision = MllamaVisionConfig(
        hidden_size=64,
        intermediate_size=256,  # 4 x hidden, as 5120 / 1280
        attention_heads=1,
        num_hidden_layers=2,
        num_global_layers=1,
        intermediate_layers_indices=[0],
        vision_output_dim=64 * 2,  # hidden * (1 + len(intermediate_layers_indices)), as 1280 * 6 = 7680
        image_size=TILE,
        patch_size=PATCH_SIZE,
        max_num_tiles=MAX_TILES,
        norm_eps=1e-5,
    )
    config = MllamaConfig(vision_config=vision, text_config=text, image_token_index=ids[IMAGE_TOKEN])
    config.architectures = [ARCHITECTURE]
    assert config.image_token_index == config.text_config.vocab_size
    c.save_model(_model, config, out)
    _config_both_ways(out)
    GenerationConfig(
        bos_token_id=ids["<|begin_of_text|>"],
        eos_token_id=[ids["<|end_of_text|>"], ids["<|eom_id|>"], ids["<|eot_id|>"]],
        pad_token_id=ids["<|finetune_right_pad_id|>"],
        do_sample=True,
        temperature=0.6,
        top_p=0.9,
    ).save_pretrained(out)

    image_processor = MllamaImageProcessor(
        size={"height": TILE, "width": TILE},
        max_image_tiles=MAX_TILES,
        do_convert_rgb=True,
        do_normalize=True,
        do_pad=True,
        do_rescale=True,
        do_resize=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
        resample=2,
        rescale_factor=1 / 255,
    )
    processor = MllamaProcessor(image_processor=image_processor, tokenizer=tok, chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(out)
    image_processor.save_pretrained(out)  # preprocessor_config.json, as the hub checkpoint has
    _processor_config_both_ways(out)
    _tokenizer_config_both_ways(out)
