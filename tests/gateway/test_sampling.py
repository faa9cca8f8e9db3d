"""The model's own default sampling (its generation_config.json), under the request's fields."""

from __future__ import annotations

import json

import msgspec
import pytest

from vlm_gateway.engines.vllm_remote import _vllm_sampling as vllm_sampling
from vlm_gateway.errors import InvalidRequest
from vlm_gateway.sampling import NO_DEFAULTS, SamplingDefaults, chat_sampling, completion_sampling, load_defaults
from vlm_gateway.schemas.openai import ChatCompletionRequest, CompletionRequest

QWEN = {"do_sample": True, "repetition_penalty": 1.05, "temperature": 0.1, "top_k": 1, "top_p": 0.001,
        "eos_token_id": [1, 2], "max_new_tokens": 64}


def chat(**fields) -> ChatCompletionRequest:
    return msgspec.convert({"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields},
                           ChatCompletionRequest)


def test_the_checkpoints_generation_config_is_read(tmp_path) -> None:
    (tmp_path / "generation_config.json").write_text(json.dumps(QWEN))
    assert load_defaults(str(tmp_path)) == SamplingDefaults(temperature=0.1, top_p=0.001, top_k=1,
                                                            repetition_penalty=1.05, max_tokens=64)
    assert load_defaults(str(tmp_path / "missing")) == NO_DEFAULTS


def test_fields_the_request_leaves_out_take_the_models_values(tmp_path) -> None:
    (tmp_path / "generation_config.json").write_text(json.dumps(QWEN))
    defaults = load_defaults(str(tmp_path))
    params = chat_sampling(chat(), [7], defaults)
    assert (params.temperature, params.top_p, params.top_k, params.repetition_penalty, params.max_tokens) == (
        0.1, 0.001, 1, 1.05, 64)
    params = chat_sampling(chat(temperature=0.7, top_k=-1, repetition_penalty=1.0, max_tokens=5), [7], defaults)
    assert (params.temperature, params.top_p, params.top_k, params.repetition_penalty, params.max_tokens) == (
        0.7, 0.001, -1, 1.0, 5)
    params = completion_sampling(msgspec.convert({"model": "m", "prompt": "x", "temperature": 0},
                                                 CompletionRequest), [7], defaults)
    assert (params.temperature, params.top_k, params.max_tokens) == (0, 1, 16)  # completions: OpenAI's 16


def test_no_defaults_send_nothing_extra() -> None:
    sent = msgspec.json.decode(msgspec.json.encode(chat_sampling(chat(), [7])))
    assert not {"temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_tokens"} & sent.keys()


def test_logit_bias_keys_become_token_ids() -> None:
    params = chat_sampling(chat(logit_bias={"5": -100, "700": 2.5}), [7])
    assert params.logit_bias == {5: -100.0, 700: 2.5}
    assert msgspec.json.decode(msgspec.json.encode(params))["logit_bias"] == {"5": -100.0, "700": 2.5}
    assert chat_sampling(chat(logit_bias={}), [7]).logit_bias is None
    for key in ("x", "-1", "1.5", " 3", "٣"):  # not a token id (the last: an Arabic-Indic digit)
        with pytest.raises(InvalidRequest) as info:
            chat_sampling(chat(logit_bias={key: 1}), [7])
        assert info.value.param == "logit_bias"
    with pytest.raises(msgspec.ValidationError, match="<= 100.0"):
        chat(logit_bias={"5": 101})


def test_combinations_the_engine_refuses_without_a_name_are_refused_naming_the_field() -> None:
    for fields, param in (({"min_tokens": 5, "max_tokens": 4}, "min_tokens"),
                          ({"min_tokens": 5, "max_completion_tokens": 4}, "min_tokens")):
        with pytest.raises(InvalidRequest) as info:
            chat_sampling(chat(**fields), [7])
        assert info.value.param == param
    assert chat_sampling(chat(n=2, temperature=0.01, min_tokens=4, max_tokens=4), [7]).n == 2
    assert chat_sampling(chat(min_tokens=400), [7]).min_tokens == 400  # no max_tokens: the context's rest


def test_completions_legacy_fields_are_refused_not_dropped() -> None:
    def completion(**fields) -> CompletionRequest:
        return msgspec.convert({"model": "m", "prompt": "x", **fields}, CompletionRequest)

    for fields, param in (({"suffix": "end"}, "suffix"), ({"best_of": 3}, "best_of"),
                          ({"best_of": 2, "n": 1}, "best_of")):
        with pytest.raises(InvalidRequest) as info:
            completion_sampling(completion(**fields), [7])
        assert info.value.param == param
    assert completion_sampling(completion(suffix="", best_of=2, n=2, temperature=1), [7]).n == 2


@pytest.mark.parametrize("stop", ["", ["a", ""]])
def test_an_empty_stop_sequence_is_a_400_naming_stop(stop) -> None:
    with pytest.raises(InvalidRequest) as raised:
        chat_sampling(chat(stop=stop), [7], NO_DEFAULTS)
    assert raised.value.param == "stop"


def test_n_above_1_at_temperature_0_is_n_greedy_answers() -> None:
    """OpenAI takes it (a 400 before); vLLM refuses greedy sampling with n > 1, so its client asks for the
    equal (temperature 1, top_k 1) and other engines get what the client sent."""
    params = chat_sampling(chat(n=2, temperature=0), [7])
    assert (params.n, params.temperature, params.top_k) == (2, 0, None)
    params = completion_sampling(msgspec.convert({"model": "m", "prompt": "x", "n": 3, "temperature": 0},
                                                 CompletionRequest), [7])
    assert (vllm_sampling(params).n, vllm_sampling(params).temperature, vllm_sampling(params).top_k) == (3, 1.0, 1)
    assert vllm_sampling(chat_sampling(chat(temperature=0), [7])).temperature == 0
    assert vllm_sampling(chat_sampling(chat(n=2, temperature=0.5), [7])).top_k is None


def test_a_logit_bias_id_past_any_vocabulary_is_a_400_naming_it() -> None:
    for key in ("99999999999999999999999", "1" * 10_000):
        with pytest.raises(InvalidRequest) as info:
            chat_sampling(chat(logit_bias={key: 5}), [7])
        assert info.value.param == "logit_bias" and len(info.value.message) < 200
    assert chat_sampling(chat(logit_bias={"999999999": 1}), [7]).logit_bias == {999_999_999: 1.0}
