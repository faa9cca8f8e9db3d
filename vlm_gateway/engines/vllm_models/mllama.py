"""Llama 3.2 Vision (``MllamaForConditionalGeneration``) on vLLM 0.32's V1 engine, as an encoder-decoder model.

vLLM dropped mllama after 0.10.2 (it ran on the V0 engine only); V1 serves encoder-decoder models (Whisper) with
cross-attention KV caches, which is what mllama is: the image's tiles are the "encoder" tokens and the text model's
cross-attention layers read them.

* **Prompt**: the decoder prompt is the request's own token ids, one ``<|image|>`` per image. The encoder prompt
  is ``<|image|>`` repeated once per vision token of the image (``tiles * ((560/14)^2 + 1)``), so vLLM sizes the
  cross-attention cache to the image.
* **Vision side**: transformers' own ``MllamaVisionModel`` (tiled ViT, gated positional and aspect-ratio
  embeddings, global layers) and the projector, run on the image processor's tiles; the padded tiles are dropped
  after the vision model (transformers masks them out of cross-attention, so dropping them changes nothing).
* **Text side**: vLLM's Llama decoder layers, and at ``cross_attention_layers`` a gated cross-attention layer
  (q/k RMS-normed per head, no rotary) over the image tokens.
* **Masks**: a request without an image skips the cross-attention layers (transformers does too); in the chunk that
  holds the ``<|image|>`` token, the text before it has its cross-attention MLP zeroed (transformers'
  ``full_text_row_masked_out_mask``). One difference from transformers remains: there those rows attend to every
  vision position, padded tiles included; here only to the image's own tiles.
* **Limits**: one image per prompt (the family's limit, as trained); tensor parallel 1 is what is tested.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn
from transformers import BatchFeature
from transformers.models.mllama.configuration_mllama import MllamaConfig, MllamaTextConfig
from transformers.models.mllama.image_processing_mllama import get_optimal_tiled_canvas
from transformers.models.mllama.modeling_mllama import MllamaVisionModel
from transformers.models.mllama.processing_mllama import MllamaProcessor
from vllm.config import VllmConfig
from vllm.config.multimodal import MultiModalDummyOptions
from vllm.forward_context import get_forward_context
from vllm.inputs import MultiModalDataDict
from vllm.model_executor.layers.attention import CrossAttention
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import ColumnParallelLinear, RowParallelLinear
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.model_executor.models.interfaces import SupportsMultiModal
from vllm.model_executor.models.llama import LlamaDecoderLayer, LlamaMLP
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import ImageProcessorItems, ImageSize, MultiModalDataItems
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseProcessingInfo,
    EncDecMultiModalProcessor,
    PromptReplacement,
    PromptUpdate,
)
from vllm.v1.attention.backend import AttentionType

IMAGE_TOKEN = "<|image|>"


# --- the prompt ---------------------------------------------------------------------------------------------


class MllamaProcessingInfo(BaseProcessingInfo):
    def get_hf_config(self) -> MllamaConfig:
        return self.ctx.get_hf_config(MllamaConfig)

    def get_hf_processor(self, **kwargs: object) -> MllamaProcessor:
        return self.ctx.get_hf_processor(MllamaProcessor, **kwargs)

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": 1}

    @property
    def skip_prompt_length_check(self) -> bool:
        return True  # the encoder prompt is the image's vision tokens, not text the context must hold

    def max_tiles(self) -> int:
        return self.get_hf_config().vision_config.max_num_tiles

    def tokens_per_tile(self) -> int:
        vision = self.get_hf_config().vision_config
        return (vision.image_size // vision.patch_size) ** 2 + 1

    def get_num_image_tokens(self, *, image_width: int, image_height: int) -> int:
        tile = self.get_hf_config().vision_config.image_size
        height, width = get_optimal_tiled_canvas(image_height, image_width, self.max_tiles(), tile)
        return int(height // tile) * int(width // tile) * self.tokens_per_tile()

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        return {"image": self.max_tiles() * self.tokens_per_tile()}

    def get_image_size_with_most_features(self) -> ImageSize:
        tile = self.get_hf_config().vision_config.image_size
        return ImageSize(width=tile * self.max_tiles(), height=tile)


class MllamaDummyInputsBuilder(BaseDummyInputsBuilder[MllamaProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return IMAGE_TOKEN * mm_counts.get("image", 0)

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int],
                          mm_options: MultiModalDummyOptions) -> MultiModalDataDict:
        size = self.info.get_image_size_with_most_features()
        return {"image": self._get_dummy_images(width=size.width, height=size.height,
                                                num_images=mm_counts.get("image", 0),
                                                overrides=mm_options.get("image") if mm_options else None)}


class MllamaMultiModalProcessor(EncDecMultiModalProcessor[MllamaProcessingInfo]):
    def _image_token_id(self) -> int:
        return self.info.get_hf_config().image_token_index

    def create_encoder_prompt(self, prompt: list[int], mm_items: MultiModalDataItems) -> list[int]:
        return [self._image_token_id()] * mm_items.get_all_counts().get("image", 0)

    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> BatchFeature:
        images = hf_data.get("images") or []
        processor = self.info.get_hf_processor(**hf_kwargs).image_processor
        out = processor([[image] for image in images], return_tensors="pt")  # one image per sample
        return BatchFeature({
            "pixel_values": out["pixel_values"][:, 0],  # (images, max tiles, 3, 560, 560)
            "aspect_ratio_ids": out["aspect_ratio_ids"][:, 0],
            "aspect_ratio_mask": out["aspect_ratio_mask"][:, 0],
            "num_tiles": torch.tensor([tiles[0] for tiles in out["num_tiles"]]),
        })

    def _get_mm_fields_config(self, hf_inputs: BatchFeature,
                              hf_processor_mm_kwargs: Mapping[str, object]) -> Mapping[str, MultiModalFieldConfig]:
        return {name: MultiModalFieldConfig.batched("image")
                for name in ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask", "num_tiles")}

    def _get_prompt_updates(self, mm_items: MultiModalDataItems, hf_processor_mm_kwargs: Mapping[str, object],
                            out_mm_kwargs: MultiModalKwargsItems) -> Sequence[PromptUpdate]:
        token = self._image_token_id()

        def vision_tokens(item: int) -> list[int]:
            size = mm_items.get_items("image", ImageProcessorItems).get_image_size(item)
            return [token] * self.info.get_num_image_tokens(image_width=size.width, image_height=size.height)

        return [PromptReplacement(modality="image", target=[token], replacement=vision_tokens)]


# --- the text model ------------------------------------------------------------------------------------------


class _Rows:
    """Per token of the batch: does its request have an image (else the cross-attention layers pass it through),
    and may its cross-attention MLP act (not on the text before the image, in the chunk that holds it)."""

    def __init__(self, with_image: torch.Tensor | None, mlp: torch.Tensor | None):
        self.with_image, self.mlp = with_image, mlp

    @classmethod
    def of(cls, input_ids: torch.Tensor, layer: str, image_token_id: int) -> _Rows:
        metadata = get_forward_context().attn_metadata
        if isinstance(metadata, list):  # micro-batches: not used on this path
            metadata = metadata[0] if metadata else None
        if not isinstance(metadata, dict) or layer not in metadata:
            return cls(None, None)  # profiling and warm-up runs: every row as if it had an image
        cross = metadata[layer]
        starts = cross.query_start_loc
        lengths = (starts[1:] - starts[:-1]).long()
        used = int(starts[-1])
        requests = torch.repeat_interleave(torch.arange(len(lengths), device=input_ids.device), lengths)
        with_image = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        with_image[:used] = torch.repeat_interleave(cross.seq_lens > 0, lengths)
        is_image = (input_ids[:used] == image_token_id).long()
        seen = torch.cumsum(is_image, 0)
        before_request = torch.cat([seen.new_zeros(1), seen])[starts[:-1].long()]
        seen_here = seen - before_request[requests]  # image tokens at or before the row, in its request's chunk
        in_chunk = torch.zeros(len(lengths), dtype=torch.long, device=input_ids.device).index_add_(0, requests,
                                                                                                  is_image)
        mlp = torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        mlp[:used] = (in_chunk[requests] == 0) | (seen_here > 0)
        return cls(with_image, mlp)


class MllamaCrossAttentionDecoderLayer(nn.Module):
    """transformers' ``MllamaCrossAttentionDecoderLayer``: tanh-gated cross-attention and MLP."""

    def __init__(self, config: MllamaTextConfig, vllm_config: VllmConfig, prefix: str):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.hidden_size // self.num_heads
        hidden = config.hidden_size
        self.cross_attn = nn.Module()
        attn = self.cross_attn
        attn.q_proj = ColumnParallelLinear(hidden, self.num_heads * self.head_dim, bias=False,
                                           prefix=f"{prefix}.cross_attn.q_proj")
        attn.k_proj = ColumnParallelLinear(hidden, self.num_kv_heads * self.head_dim, bias=False,
                                           prefix=f"{prefix}.cross_attn.k_proj")
        attn.v_proj = ColumnParallelLinear(hidden, self.num_kv_heads * self.head_dim, bias=False,
                                           prefix=f"{prefix}.cross_attn.v_proj")
        attn.o_proj = RowParallelLinear(self.num_heads * self.head_dim, hidden, bias=False,
                                        prefix=f"{prefix}.cross_attn.o_proj")
        attn.q_norm = RMSNorm(self.head_dim, eps=config.rms_norm_eps)
        attn.k_norm = RMSNorm(self.head_dim, eps=config.rms_norm_eps)
        attn.attn = CrossAttention(self.num_heads, self.head_dim, self.head_dim**-0.5, num_kv_heads=self.num_kv_heads,
                                   cache_config=vllm_config.cache_config, prefix=f"{prefix}.cross_attn.attn",
                                   attn_type=AttentionType.ENCODER_DECODER)
        self.layer_name = f"{prefix}.cross_attn.attn"
        self.input_layernorm = RMSNorm(hidden, eps=config.rms_norm_eps)
        self.cross_attn_attn_gate = nn.Parameter(torch.zeros(1))
        self.mlp = LlamaMLP(hidden, config.intermediate_size, config.hidden_act, prefix=f"{prefix}.mlp")
        self.post_attention_layernorm = RMSNorm(hidden, eps=config.rms_norm_eps)
        self.cross_attn_mlp_gate = nn.Parameter(torch.zeros(1))

    def _heads_normed(self, x: torch.Tensor, norm: RMSNorm, heads: int) -> torch.Tensor:
        return norm(x.reshape(-1, self.head_dim)).reshape(-1, heads * self.head_dim)

    def forward(self, hidden_states: torch.Tensor, image_states: torch.Tensor | None, rows: _Rows) -> torch.Tensor:
        attn = self.cross_attn
        x = self.input_layernorm(hidden_states)
        q = self._heads_normed(attn.q_proj(x)[0], attn.q_norm, self.num_heads)
        if image_states is not None:  # the step that computed the image: its keys and values go to the cache
            k = self._heads_normed(attn.k_proj(image_states)[0], attn.k_norm, self.num_kv_heads)
            v = attn.v_proj(image_states)[0]
        else:
            k = v = None
        out = attn.o_proj(attn.attn(q, k, v))[0]
        h = hidden_states + self.cross_attn_attn_gate.tanh() * out
        m = self.mlp(self.post_attention_layernorm(h))
        if rows.mlp is not None:
            m = m * rows.mlp.unsqueeze(-1).to(m.dtype)
        h = h + self.cross_attn_mlp_gate.tanh() * m
        if rows.with_image is not None:
            h = torch.where(rows.with_image.unsqueeze(-1), h, hidden_states)
        return h


class MllamaTextModel(nn.Module):
    def __init__(self, vllm_config: VllmConfig, prefix: str):
        super().__init__()
        config: MllamaTextConfig = vllm_config.model_config.hf_config.text_config
        self.image_token_id = vllm_config.model_config.hf_config.image_token_index
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size + 8, config.hidden_size)  # + image ids
        cross = set(config.cross_attention_layers)
        self.layers = nn.ModuleList([
            MllamaCrossAttentionDecoderLayer(config, vllm_config, f"{prefix}.layers.{i}") if i in cross
            else LlamaDecoderLayer(vllm_config, prefix=f"{prefix}.layers.{i}", config=config)
            for i in range(config.num_hidden_layers)
        ])
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                image_states: torch.Tensor | None) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)
        residual = None
        rows: _Rows | None = None
        for layer in self.layers:
            if isinstance(layer, MllamaCrossAttentionDecoderLayer):
                if residual is not None:
                    hidden, residual = hidden + residual, None
                if rows is None:
                    rows = _Rows.of(input_ids, layer.layer_name, self.image_token_id)
                if rows.with_image is not None and not bool(rows.with_image.any()):
                    continue  # no request in the batch has an image: the layer changes nothing
                hidden = layer(hidden, image_states, rows)
            else:
                hidden, residual = layer(positions, hidden, residual)
        if residual is not None:
            hidden, _ = self.norm(hidden, residual)
        else:
            hidden = self.norm(hidden)
        return hidden


# --- the model ----------------------------------------------------------------------------------------------


class _Projector(nn.Linear):
    """``multi_modal_projector``: vision output (final + intermediate states) to the text width."""


@MULTIMODAL_REGISTRY.register_processor(MllamaMultiModalProcessor, info=MllamaProcessingInfo,
                                        dummy_inputs=MllamaDummyInputsBuilder)
class MllamaForConditionalGeneration(nn.Module, SupportsMultiModal):
    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("image"):
            return IMAGE_TOKEN
        raise ValueError("Only image modality is supported")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config: MllamaConfig = vllm_config.model_config.hf_config
        self.config = config
        self.dtype = vllm_config.model_config.dtype
        text = config.text_config
        config.vision_config._attn_implementation = "sdpa"
        with self._mark_composite_model(vllm_config, language_targets=MllamaTextModel,
                                        tower_targets={"image": (MllamaVisionModel, _Projector)}):
            self.vision_model = MllamaVisionModel(config.vision_config)
            self.multi_modal_projector = _Projector(config.vision_config.vision_output_dim, text.hidden_size)
            self.language_model = MllamaTextModel(vllm_config, prefix="language_model")
        self.lm_head = ParallelLMHead(text.vocab_size, text.hidden_size, prefix="lm_head")
        self.logits_processor = LogitsProcessor(text.vocab_size)

    def embed_multimodal(self, **kwargs: object) -> list[torch.Tensor]:
        pixel_values = kwargs.get("pixel_values")
        if pixel_values is None:
            return []
        pixel_values = torch.stack(list(pixel_values)) if isinstance(pixel_values, list) else pixel_values
        ratio_ids, ratio_mask = (torch.stack(list(v)) if isinstance(v, list) else v
                                 for v in (kwargs["aspect_ratio_ids"], kwargs["aspect_ratio_mask"]))
        num_tiles = kwargs["num_tiles"]
        out = self.vision_model(pixel_values=pixel_values.unsqueeze(1).to(self.dtype),
                                aspect_ratio_ids=ratio_ids.reshape(-1, 1),
                                aspect_ratio_mask=ratio_mask.unsqueeze(1)).last_hidden_state
        states = self.multi_modal_projector(out[:, 0])  # (images, max tiles, patches + 1, hidden)
        return [states[i, : int(num_tiles[i])].reshape(-1, states.shape[-1]) for i in range(states.shape[0])]

    def embed_input_ids(self, input_ids: torch.Tensor, multimodal_embeddings=None, *,
                        is_multimodal: torch.Tensor | None = None) -> torch.Tensor:
        return self.language_model.embed_tokens(input_ids)  # the image enters by cross-attention only

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, intermediate_tensors=None,
                inputs_embeds: torch.Tensor | None = None, encoder_outputs: list[torch.Tensor] | None = None,
                **kwargs: object) -> torch.Tensor:
        image_states = torch.cat(encoder_outputs, dim=0) if encoder_outputs else None
        return self.language_model(input_ids, positions, image_states)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Checkpoint names as published (``language_model.model.*``, ``language_model.lm_head.*``,
        ``vision_model.*``, ``multi_modal_projector.*``) or as transformers 5 names them in memory
        (``model.language_model.*``, ``model.vision_model.*``, ``lm_head.*``)."""
        stacked = [(".self_attn.qkv_proj", ".self_attn.q_proj", "q"), (".self_attn.qkv_proj", ".self_attn.k_proj", "k"),
                   (".self_attn.qkv_proj", ".self_attn.v_proj", "v"), (".mlp.gate_up_proj", ".mlp.gate_proj", 0),
                   (".mlp.gate_up_proj", ".mlp.up_proj", 1)]
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, weight in weights:
            name = name.removeprefix("model.")
            name = name.replace("language_model.model.", "language_model.")
            name = name.replace("language_model.lm_head.", "lm_head.")
            for fused, part, shard in stacked:
                if name.startswith("language_model.") and part in name:  # the vision model keeps its names
                    target = name.replace(part, fused)
                    param = params[target]
                    param.weight_loader(param, weight, shard)
                    loaded.add(target)
                    break
            else:
                if name not in params:
                    continue  # e.g. rotary buffers
                param = params[name]
                getattr(param, "weight_loader", default_weight_loader)(param, weight)
                loaded.add(name)
        return loaded
