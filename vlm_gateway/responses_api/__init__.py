"""OpenAI's Responses API as an adapter over the chat pipeline (no second pipeline).

A Responses request is converted into a ``ChatCompletionRequest`` and run exactly as
``/v1/chat/completions`` runs one (admission, limits, images, usage); the chat output is converted back.

    convert.py     request → chat (input items, tools, text.format) and which chat param is which input
    output.py      chat completion → Response object (output items, usage, status)
    events.py      chat chunks → the Responses streaming events (``response.created`` … ``response.completed``)
    store.py       stored responses (``store: true``) in the state backend, for GET / DELETE / previous_response_id
    background.py  ``background: true``: a job on the durable queue, cancellable while queued or running
    run.py         what ``POST /v1/responses`` does, put together (the routes are in api/responses.py)

This module imports nothing: ``vlm_gateway.settings`` imports ``responses_api.settings``.
"""
