"""The gateway through LangChain's ChatOpenAI(base_url=...)."""

from __future__ import annotations

import pytest
from langchain_core.messages import HumanMessage
from langchain_openai import ChatOpenAI

from tests.e2e.conftest import EMBEDDED_FAMILY, model_id
from tests.helpers import png_data_uri

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def chat(gateway) -> ChatOpenAI:
    return ChatOpenAI(base_url=gateway.url + "/v1", api_key="unused", model=model_id(EMBEDDED_FAMILY),
                      max_tokens=6, temperature=0, max_retries=0)


def message() -> HumanMessage:
    return HumanMessage(content=[
        {"type": "text", "text": "Describe the image."},
        {"type": "image_url", "image_url": {"url": png_data_uri(32, 32, (0, 90, 200))}},
    ])


def test_invoke_with_image(chat: ChatOpenAI) -> None:
    reply = chat.invoke([message()])
    assert isinstance(reply.content, str) and reply.content
    usage = reply.usage_metadata
    assert usage is not None and usage["input_tokens"] > 20 and 1 <= usage["output_tokens"] <= 6


def test_stream(chat: ChatOpenAI) -> None:
    parts = list(chat.stream([message()]))
    streamed = "".join(p.content for p in parts if isinstance(p.content, str))
    assert streamed == chat.invoke([message()]).content
