"""Stored responses (``store: true``): GET, DELETE, cancel and ``previous_response_id`` read them here.

Each response is one value in the app's state backend (``StateBackend.value_*``: Redis when
``redis_url`` is set, so every replica sees it; else this process), expiring ``responses.ttl_s`` after
it was last written. A record holds the response object, its owner and the conversation that led to it
(as chat messages, instructions left out: OpenAI does not carry them over to a follow-up), so a
follow-up is that conversation plus the response's output plus the new input.

A background response's record also holds the chat request its job runs. Cancelling sets a separate
flag key (``…:cancelled``) rather than rewriting the record, so a job writing its progress at the same
moment cannot undo it: while the flag is set the response reads as ``cancelled``, and the job stops and
stores nothing more.

Ownership: a record belongs to the API key (``Caller.key_id``) that created it; for any other key it
does not exist (404, as an unknown id).
"""

from __future__ import annotations

import msgspec

from vlm_gateway.errors import InvalidRequest, NotFound
from vlm_gateway.limits.rate import Caller
from vlm_gateway.responses_api.convert import output_messages
from vlm_gateway.responses_api.settings import ResponsesSettings
from vlm_gateway.schemas.openai import ChatCompletionRequest, ChatMessage
from vlm_gateway.schemas.responses import OutputFunctionCall, ResponseDeleted, ResponseObject
from vlm_gateway.state import StateBackend

UNFINISHED = ("queued", "in_progress")


class StoredResponse(msgspec.Struct):
    owner: str  # Caller.key_id
    response: ResponseObject
    history: list[ChatMessage]  # earlier turns and this input, without instructions
    chat: ChatCompletionRequest | None = None  # background, until it has run: what the job runs
    params: dict[str, str] = {}  # background: chat → Responses parameter names, for its errors

    @property
    def conversation(self) -> list[ChatMessage]:
        """What a follow-up continues: the history and this response's output."""
        return [*self.history, *output_messages(self.response.output)]

    @property
    def call_ids(self) -> list[str]:
        """The calls this response made, those cut off at ``max_output_tokens`` (not in ``conversation``)
        included: a follow-up may answer any of them."""
        return [item.call_id for item in self.response.output if isinstance(item, OutputFunctionCall)]


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(StoredResponse)


def not_found(response_id: str, param: str = "response_id") -> NotFound:
    if param == "previous_response_id":
        return NotFound(f"Previous response with id '{response_id}' not found.", param=param,
                        code="previous_response_not_found")
    return NotFound(f"Response with id '{response_id}' not found.", param=param)


class ResponseStore:
    def __init__(self, state: StateBackend, settings: ResponsesSettings) -> None:
        self.state = state
        self.settings = settings

    @staticmethod
    def _key(response_id: str) -> str:
        return f"responses:{response_id}"

    async def save(self, record: StoredResponse) -> None:
        await self.state.value_set(self._key(record.response.id), _ENCODER.encode(record), self.settings.ttl_s)

    async def find(self, response_id: str) -> StoredResponse | None:
        """The record as stored, whoever owns it (the background job's view)."""
        raw = await self.state.value_get(self._key(response_id))
        return None if raw is None else _DECODER.decode(raw)

    async def get(self, response_id: str, caller: Caller, param: str = "response_id") -> StoredResponse:
        """``caller``'s response as it reads now (``cancelled`` once cancelled); 404 naming ``param``."""
        record = await self.find(response_id)
        if record is None or record.owner != caller.key_id:
            raise not_found(response_id, param)
        if record.response.status != "cancelled" and await self.cancelled(response_id):
            record.response = msgspec.structs.replace(record.response, status="cancelled")
        return record

    async def previous(self, response_id: str, caller: Caller) -> StoredResponse:
        """The response ``previous_response_id`` continues (its ``conversation``), once finished."""
        record = await self.get(response_id, caller, "previous_response_id")
        if record.response.status in UNFINISHED:
            raise InvalidRequest(f"Previous response with id '{response_id}' is still {record.response.status}; "
                                 "continue it once it has finished", param="previous_response_id")
        return record

    async def delete(self, response_id: str, caller: Caller) -> ResponseDeleted:
        record = await self.get(response_id, caller)
        if record.response.status in UNFINISHED:  # a background job still to run: it stops, storing nothing
            await self.cancel(response_id)
        await self.state.value_delete(self._key(response_id))
        return ResponseDeleted(response_id)

    async def cancel(self, response_id: str) -> None:
        await self.state.value_set(self._key(response_id) + ":cancelled", b"1", self.settings.ttl_s)

    async def cancelled(self, response_id: str) -> bool:
        return await self.state.value_get(self._key(response_id) + ":cancelled") is not None
