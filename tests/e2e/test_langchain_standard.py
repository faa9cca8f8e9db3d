"""LangChain's standard integration suite (``langchain-tests``' ChatModelIntegrationTests) through
``ChatOpenAI(base_url=...)``: against the gateway, and against stock vLLM serving the same tiny
checkpoint (the gateway's embedded Qwen2.5-VL engine, started with ``--enable-auto-tool-choice
--tool-call-parser hermes``), each once with Chat Completions and once with the Responses API.

The gateway's two classes run in every test run; stock vLLM's and the comparison only with
``LANGCHAIN_STANDARD_SUITE=1`` (16 min more).

The models have random weights, so tests that need a sensible answer (``magic_function(3)`` called
with 3, a joke with a setup and a punchline) fail whoever serves them. The gate is the comparison at the
end: every test stock vLLM passes must pass through the gateway; on the gateway side, the tests in
``RANDOM_WEIGHTS`` are expected to fail (with the reason), every other one must pass. The side-by-side
results are written to ``langchain_standard.md`` in the run's log directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from langchain_openai import ChatOpenAI
from langchain_tests.integration_tests import ChatModelIntegrationTests

from tests.e2e.conftest import EMBEDDED_FAMILY, model_id
from tests.helpers import png_bytes

pytestmark = pytest.mark.engine

# The gateway's side runs always (about 2.5 min); stock vLLM's side and the comparison take 16 min more on
# a 2-core box, so they run on request.
STOCK_SIDE = pytest.mark.skipif(
    not os.environ.get("LANGCHAIN_STANDARD_SUITE"),
    reason="stock vLLM's side takes 16 min on a 2-core box: run with LANGCHAIN_STANDARD_SUITE=1")

MODEL = model_id(EMBEDDED_FAMILY)
OUTCOMES: dict[str, dict[str, str]] = {}  # class name -> test name -> passed / failed / skipped

# Tests a random-weight model fails, whoever serves it; the reason is what the test asks of the answer.
_ARGS = "random weights: a forced call's arguments are schema-valid but never the asked-for values"
RANDOM_WEIGHTS: dict[str, str] = {
    "test_agent_loop[model0]": _ARGS, "test_agent_loop[model1]": _ARGS,
    "test_tool_calling[model0]": _ARGS, "test_tool_calling[model1]": _ARGS, "test_tool_calling_async": _ARGS,
    "test_unicode_tool_call_integration": _ARGS,
    "test_json_mode": "random weights: the JSON object's strings run to max_tokens",
    "test_tool_calling_with_no_arguments": "random weights: chat auto mode, the model never writes a call",
}

_real_get = httpx.get


def _offline_get(url: str, *args: Any, **kwargs: Any) -> httpx.Response:
    """The suite downloads its sample image from GitHub; this machine has no internet (and tests talk to
    loopback only): an image made here stands in for it."""
    if url.startswith(("http://127.0.0.1", "http://localhost")):
        return _real_get(url, *args, **kwargs)
    return httpx.Response(200, content=png_bytes(96, 64, (30, 120, 200)), request=httpx.Request("GET", url))


@pytest.fixture(autouse=True)
def _no_internet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(httpx, "get", _offline_get)


def _outcome(report: pytest.TestReport) -> str:
    if report.passed:
        return "passed"  # an expected failure that passed counts as passed
    if report.skipped and not hasattr(report, "wasxfail"):
        return "skipped"
    return "failed"


@pytest.fixture(autouse=True)
def _record(request: pytest.FixtureRequest):
    """Each test's outcome, for the comparison at the end (reports are kept on the item by the
    ``pytest_runtest_makereport`` hook in tests/e2e/conftest.py)."""
    name = request.node.name
    if request.cls is not None and request.cls.__name__.startswith("TestGateway") and name in RANDOM_WEIGHTS:
        request.applymarker(pytest.mark.xfail(reason=RANDOM_WEIGHTS[name], strict=False))
    yield
    report = getattr(request.node, "rep_call", None) or getattr(request.node, "rep_setup", None)
    if report is not None and request.cls is not None:
        OUTCOMES.setdefault(request.cls.__name__, {})[name] = _outcome(report)


class _Base(ChatModelIntegrationTests):
    url = ""  # set by the class fixture below
    responses_api = False

    @pytest.fixture(autouse=True, scope="class")
    def _target(self, request: pytest.FixtureRequest, gateway) -> None:
        request.cls.url = self.base_url(gateway)

    def base_url(self, gateway) -> str:
        raise NotImplementedError

    @property
    def chat_model_class(self) -> type[ChatOpenAI]:
        return ChatOpenAI

    @property
    def chat_model_params(self) -> dict:
        # the suite's own max_tokens (100); usage in the last streamed chunk, as ChatOpenAI sends it to OpenAI
        return {"model": MODEL, "base_url": self.url + "/v1", "api_key": "unused", "max_retries": 0,
                "stream_usage": True, "use_responses_api": self.responses_api}

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def supports_image_inputs(self) -> bool:
        return True

    @property
    def supports_image_tool_message(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_image_urls(self) -> bool:
        return False  # the suite's image URL is on the internet

    @property
    def enable_vcr_tests(self) -> bool:
        return False


class TestGatewayChatCompletions(_Base):
    def base_url(self, gateway) -> str:
        return gateway.url


class TestGatewayResponses(TestGatewayChatCompletions):
    responses_api = True


class TestStockVLLMChatCompletions(_Base):
    pytestmark = [STOCK_SIDE,
                  pytest.mark.xfail(reason="stock vLLM: recorded and compared at the end", strict=False)]

    def base_url(self, gateway) -> str:
        return gateway.engines[EMBEDDED_FAMILY]


class TestStockVLLMResponses(TestStockVLLMChatCompletions):
    responses_api = True


@STOCK_SIDE
def test_gateway_passes_whatever_stock_vllm_passes(logs: Path) -> None:
    pairs = [("Chat Completions", "TestGatewayChatCompletions", "TestStockVLLMChatCompletions"),
             ("Responses", "TestGatewayResponses", "TestStockVLLMResponses")]
    lines = ["| API | test | stock vLLM | gateway |", "|---|---|---|---|"]
    missing = []
    for api, ours, stock in pairs:
        for name in sorted(set(OUTCOMES.get(ours, {})) | set(OUTCOMES.get(stock, {}))):
            a, b = OUTCOMES.get(stock, {}).get(name, "-"), OUTCOMES.get(ours, {}).get(name, "-")
            lines.append(f"| {api} | {name} | {a} | {b} |")
            if a == "passed" and b != "passed":
                missing.append(f"{api}: {name}")
    (logs / "langchain_standard.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    assert OUTCOMES, "the suite did not run"
    assert not missing, missing
