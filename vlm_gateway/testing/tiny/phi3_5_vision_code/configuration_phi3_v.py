# Re-implementation of `configuration_phi3_v.py` of microsoft/Phi-3.5-vision-instruct (remote code on the
# Hugging Face Hub), written for offline use: the tiny test checkpoints of vlm_gateway.testing.tiny and
# users without Hub access. Same class name, `model_type`, fields and defaults as the published file.
# Copy it next to a checkpoint's config.json with `"auto_map": {"AutoConfig":
# "configuration_phi3_v.Phi3VConfig"}` and load with `trust_remote_code=True`.
"""Phi-3-V configuration: the Phi-3 text model's fields plus the image embedding's `embd_layer` and
`img_processor` dicts (read by vLLM's `Phi3VForCausalLM`)."""

from transformers.configuration_utils import PretrainedConfig


class Phi3VConfig(PretrainedConfig):
    """Configuration of Phi-3-vision / Phi-3.5-vision (`Phi3VForCausalLM`).

    Text model (Phi-3-mini): `vocab_size` .. `sliding_window` as in `Phi3Config`.
    `embd_layer`: the HD image embedding, e.g. `{"embedding_cls": "image", "hd_transform_order":
    "sub_glb", "projection_cls": "mlp", "use_hd_transform": True, "with_learnable_separator": True}`.
    `img_processor`: the CLIP tower, e.g. `{"image_dim_out": 1024, "model_name":
    "openai/clip-vit-large-patch14-336", "name": "clip_vision_model", "num_img_tokens": 144}` (an optional
    `layer_idx`, default -2, picks the hidden layer whose patch features are used).
    """

    model_type = "phi3_v"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size=32064,
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=None,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attention_dropout=0.0,
        hidden_act="silu",
        max_position_embeddings=4096,
        original_max_position_embeddings=4096,
        initializer_range=0.02,
        rms_norm_eps=1e-5,
        use_cache=True,
        tie_word_embeddings=False,
        rope_theta=10000.0,
        rope_scaling=None,
        bos_token_id=1,
        eos_token_id=32000,
        pad_token_id=32000,
        sliding_window=None,
        embd_layer: str = "default",
        img_processor=None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        if num_key_value_heads is None:
            num_key_value_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.resid_pdrop = resid_pdrop
        self.embd_pdrop = embd_pdrop
        self.attention_dropout = attention_dropout
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.original_max_position_embeddings = original_max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.rope_theta = rope_theta
        self.rope_scaling = rope_scaling
        self._rope_scaling_validation()
        self.sliding_window = sliding_window
        self.embd_layer = embd_layer
        self.img_processor = img_processor

        super().__init__(
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    def _rope_scaling_validation(self):
        """`rope_scaling`, when set, is `{"type": "su" | "yarn" | "longrope", "short_factor": [...],
        "long_factor": [...]}` with one factor per rotary dimension pair (head_dim / 2)."""
        if self.rope_scaling is None:
            return
        if not isinstance(self.rope_scaling, dict) or len(self.rope_scaling) != 3:
            raise ValueError(
                "`rope_scaling` must be a dictionary with three fields, `type`, `short_factor` and "
                f"`long_factor`, got {self.rope_scaling}"
            )
        rope_scaling_type = self.rope_scaling.get("type", None)
        short_factor = self.rope_scaling.get("short_factor", None)
        long_factor = self.rope_scaling.get("long_factor", None)
        if rope_scaling_type is None or rope_scaling_type not in ["su", "yarn", "longrope"]:
            raise ValueError(
                f"`rope_scaling`'s type field must be one of ['su', 'yarn', 'longrope'], got {rope_scaling_type}"
            )
        half = self.hidden_size // self.num_attention_heads // 2
        for name, factor in (("short_factor", short_factor), ("long_factor", long_factor)):
            if not (isinstance(factor, list) and all(isinstance(x, (int, float)) for x in factor)):
                raise ValueError(f"`rope_scaling`'s {name} field must be a list of numbers, got {factor}")
            if len(factor) != half:
                raise ValueError(f"`rope_scaling`'s {name} field must have length {half}, got {len(factor)}")
