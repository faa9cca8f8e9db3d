"""Tiny Phi-3.5-vision (``microsoft/Phi-3.5-vision-instruct`` layout).

``Phi3VForCausalLM`` (``model_type: phi3_v``): CLIP ViT-L/14-336 image tower with the HD transform
(a global 336 x 336 image plus up to ``num_crops`` 336-px crops; 24 x 24 patch features per crop, 2 x 2
merged to 12 x 12 = 144, a learnable separator after each row of 12 and one between crops and the global
image), 2-layer GELU projector, Phi-3 text model (fused ``qkv_proj`` / ``gate_up_proj``; vLLM runs it as
Llama). Llama-2 SentencePiece-style vocabulary (``<unk> <s> </s>``, byte fallback) padded to the real
32000 base ids, then the real Phi-3 added tokens at their real ids (``<|endoftext|>`` 32000,
``<|assistant|>`` 32001, ``<|system|>`` 32006, ``<|end|>`` 32007, ``<|user|>`` 32010, ``<|image|>``
32044, ``<|placeholderN|>`` elsewhere up to 32063).

The prompt names images with the plain-text markers ``<|image_1|>``, ``<|image_2|>``, ... (several
tokens each). vLLM (``phi3v.py``) decodes the prompt, re-tokenizes the text between markers chunk by
chunk as the published processor does (each chunk with its own leading ``<s>``), and replaces each
marker with ``tokens_for_image(w, h)`` x ``<|image|>`` (id 32044, hard-coded in vLLM). That count
depends on the image size and ``num_crops`` (4 in the published preprocessor_config.json).

Config, image processor and processor are remote code on the Hub (``configuration_phi3_v.py``,
``image_processing_phi3_v.py``, ``processing_phi3_v.py``); this builder copies the re-implementations
in ``phi3_5_vision_code/`` into the checkpoint and points ``auto_map`` at them, so vLLM (and
transformers) load it with ``trust_remote_code=True`` and no Hub access.

vLLM hard-codes the CLIP ViT-L/14-336 sizes (width 1024, 576 patches), so the tower stays 1024 wide; it
is cut to one encoder layer with ``img_processor.layer_idx = -24`` (vLLM builds ``24 + layer_idx + 1``
layers; the published modeling code reads ``hidden_states[layer_idx]``, the same layer).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType

from . import _common as c
from ._tokenizer import train_sentencepiece

ARCHITECTURE = "Phi3VForCausalLM"
IMAGE_PLACEHOLDER = "<|image_{n}|>"  # what the prompt contains once per image (n = 1, 2, ...)
IMAGE_TOKEN = "<|image|>"  # what it expands to (id 32044)
IMAGE_TOKEN_ID = 32044  # vLLM's phi3v._IMAGE_TOKEN_ID
PROCESSOR_IMAGE_ID = -1  # what the published HF processor writes instead, for image i: -i
CROP_SIZE = 336
PATCH_SIZE = 14
NUM_CROPS = 4  # preprocessor_config.json of microsoft/Phi-3.5-vision-instruct
CLIP_WIDTH = 1024  # hard-coded in vLLM's Phi3HDImageEmbedding
CLIP_LAYERS = 24  # of CLIP ViT-L/14-336; the tiny tower keeps only the first
CODE_DIR = Path(__file__).with_name("phi3_5_vision_code")
CODE_FILES = ("configuration_phi3_v.py", "image_processing_phi3_v.py", "processing_phi3_v.py")
BASE_VOCAB = 32000  # the Llama-2 SentencePiece ids; the added tokens start here

# Added tokens of the real tokenizer at ids 32000.. (special, not normalized).
_NAMED = {32000: "<|endoftext|>", 32001: "<|assistant|>", 32006: "<|system|>", 32007: "<|end|>",
          32010: "<|user|>", IMAGE_TOKEN_ID: IMAGE_TOKEN}
VOCAB_SIZE = 32064


def added_tokens() -> list[str]:
    """The 64 added tokens in id order; unnamed ids are ``<|placeholderN|>`` (N = 1, 2, ...)."""
    out, n = [], 0
    for i in range(BASE_VOCAB, VOCAB_SIZE):
        if i in _NAMED:
            out.append(_NAMED[i])
        else:
            n += 1
            out.append(f"<|placeholder{n}|>")
    return out


@functools.cache
def _image_processing() -> ModuleType:
    """The checkpoint's own ``image_processing_phi3_v.py`` (loaded from ``CODE_DIR``; it is not a package)."""
    from vlm_gateway.engines import cpu_compat

    cpu_compat.apply()  # it imports transformers, which imports torchvision
    spec = importlib.util.spec_from_file_location("_tiny_phi3_v_image_processing", CODE_DIR / CODE_FILES[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tokens_for_image(width: int, height: int, num_crops: int = NUM_CROPS) -> int:
    """``<|image|>`` tokens for a ``width`` x ``height`` image (the processor's ``calc_num_image_tokens``)."""
    code = _image_processing()
    return code.num_tokens_for_padded(*code.hd_size(width, height, num_crops))


# chat_template of microsoft/Phi-3.5-vision-instruct (tokenizer_config.json)
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|' + message['role'] + '|>' + '\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}"
    "{{- '<|assistant|>\n' -}}{% endif %}"
)


def build_tokenizer():
    from transformers import LlamaTokenizer

    vocab, merges = train_sentencepiece(["<unk>", "<s>", "</s>"], prepend_space=True)
    # Pad to the real 32000 base ids with pieces no merge produces (decodable, never encoded): a random
    # model samples every id, and vLLM must be able to detokenize each.
    i = 0
    while len(vocab) < BASE_VOCAB:
        vocab.setdefault(f"▁tok{i}", len(vocab))
        i += 1
    tok = LlamaTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="<|endoftext|>",
        add_bos_token=True,
        add_eos_token=False,
        legacy=False,
        model_max_length=131072,
        padding_side="right",
    )
    # the published tokenizer.json lists <unk> <s> </s> among its added tokens, then 32000..32063
    tok.add_tokens(c.added(["</s>", *added_tokens()]), special_tokens=True)
    tok.pad_token = "<|endoftext|>"
    tok.chat_template = CHAT_TEMPLATE
    assert len(tok) == VOCAB_SIZE and tok.convert_tokens_to_ids(IMAGE_TOKEN) == IMAGE_TOKEN_ID
    return tok


def _state_dict(config, seed: int = c.SEED):
    """Random weights under the published checkpoint's names (``model.``, ``lm_head.``,
    ``model.vision_embed_tokens.{img_processor.vision_model., glb_GN, sub_GN, img_projection.}``)."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel, Phi3Config, Phi3ForCausalLM

    torch.manual_seed(seed)
    text = Phi3Config(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, num_key_value_heads=config.num_key_value_heads,
        max_position_embeddings=config.max_position_embeddings, rms_norm_eps=config.rms_norm_eps,
        pad_token_id=config.pad_token_id, tie_word_embeddings=False,
    )
    sd = {k: v for k, v in Phi3ForCausalLM(text).state_dict().items()}
    clip = CLIPVisionConfig(
        hidden_size=CLIP_WIDTH, intermediate_size=4 * CLIP_WIDTH, num_attention_heads=16,
        num_hidden_layers=CLIP_LAYERS + config.img_processor["layer_idx"] + 1, image_size=CROP_SIZE,
        patch_size=PATCH_SIZE, projection_dim=768, hidden_act="quick_gelu",
    )
    tower = CLIPVisionModel(clip).state_dict()
    prefix = "model.vision_embed_tokens."
    for k, v in tower.items():
        if "post_layernorm" in k or "position_ids" in k:
            continue  # the truncated tower has no final norm (vLLM drops it too)
        k = k if k.startswith("vision_model.") else "vision_model." + k
        sd[prefix + "img_processor." + k] = v
    dim4 = 4 * CLIP_WIDTH
    sd[prefix + "glb_GN"] = torch.randn(1, 1, dim4) * 0.02
    sd[prefix + "sub_GN"] = torch.randn(1, 1, 1, dim4) * 0.02
    proj = torch.nn.Sequential(torch.nn.Linear(dim4, config.hidden_size), torch.nn.GELU(),
                               torch.nn.Linear(config.hidden_size, config.hidden_size))
    for k, v in proj.state_dict().items():
        sd[prefix + "img_projection." + k] = v
    dtype = getattr(torch, c.DTYPE)
    return {k: v.detach().to(dtype).contiguous() for k, v in sd.items()}


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def build(out: Path) -> None:
    import importlib.util

    from safetensors.torch import save_file

    out = Path(out)
    tok = build_tokenizer()
    spec = importlib.util.spec_from_file_location("_phi3v_configuration", CODE_DIR / "configuration_phi3_v.py")
    conf_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf_mod)
    config = conf_mod.Phi3VConfig(
        **c.text_dims(tok),
        max_position_embeddings=4096,
        original_max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
        embd_layer={
            "embedding_cls": "image",
            "hd_transform_order": "sub_glb",
            "projection_cls": "mlp",
            "use_hd_transform": True,
            "with_learnable_separator": True,
        },
        img_processor={
            "image_dim_out": CLIP_WIDTH,
            "model_name": "openai/clip-vit-large-patch14-336",
            "name": "clip_vision_model",
            "num_img_tokens": 144,
            "layer_idx": -CLIP_LAYERS,  # one CLIP encoder layer; see the module docstring
        },
    )
    config.architectures = [ARCHITECTURE]
    config.dtype = c.DTYPE
    config_dict = config.to_diff_dict()
    config_dict["auto_map"] = {"AutoConfig": "configuration_phi3_v.Phi3VConfig"}
    _write_json(out / "config.json", config_dict)

    sd = _state_dict(config)
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    n = sum(v.numel() for v in sd.values())
    c.log(f"saved {ARCHITECTURE} ({n / 1e6:.2f} M params) to {out}")

    _write_json(out / "generation_config.json", {
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": [tok.convert_tokens_to_ids(t) for t in ("<|end|>", "<|assistant|>", "<|endoftext|>")],
        "pad_token_id": tok.pad_token_id,
    })

    for name in CODE_FILES:
        shutil.copyfile(CODE_DIR / name, out / name)
    auto_map = {
        "AutoProcessor": "processing_phi3_v.Phi3VProcessor",
        "AutoImageProcessor": "image_processing_phi3_v.Phi3VImageProcessor",
    }
    _write_json(out / "preprocessor_config.json", {
        "auto_map": auto_map,
        "do_convert_rgb": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Phi3VImageProcessor",
        "num_crops": NUM_CROPS,
        "num_img_tokens": 144,
        "processor_class": "Phi3VProcessor",
    })
    _write_json(out / "processor_config.json", {"auto_map": auto_map, "processor_class": "Phi3VProcessor"})

    tok.save_pretrained(out)
    tc_path = out / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text())
    tc["processor_class"] = "Phi3VProcessor"
    _write_json(tc_path, tc)
