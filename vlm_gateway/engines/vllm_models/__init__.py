"""Models this project adds to vLLM, registered through vLLM's ``vllm.general_plugins`` entry point.

vLLM calls :func:`register` in every process it starts (API server, engine core, workers) once this package
is installed (``pyproject.toml`` names it). Each model is registered by its module path, so nothing heavy is
imported until vLLM builds that model, and only where vLLM has no model of that architecture itself:

* ``MllamaForConditionalGeneration`` (Llama 3.2 Vision): removed from vLLM after 0.10.2; :mod:`.mllama` serves
  it on vLLM's V1 encoder-decoder path (the image tiles are the encoder's tokens, read by the cross-attention
  layers). The engine needs ``--hf-overrides '{"is_encoder_decoder": true}'`` (the family's ``engine_args``).
"""

from __future__ import annotations

MODELS = {
    "MllamaForConditionalGeneration": "vlm_gateway.engines.vllm_models.mllama:MllamaForConditionalGeneration",
}


def register() -> None:
    from vllm import ModelRegistry

    known = set(ModelRegistry.get_supported_archs())
    for architecture, where in MODELS.items():
        if architecture not in known:
            ModelRegistry.register_model(architecture, where)
