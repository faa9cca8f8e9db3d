"""OpenAI's Responses API as an adapter over the chat pipeline (no second pipeline).

A Responses request is converted into a ``ChatCompletionRequest`` and run exactly as
``/v1/chat/completions`` runs one (admission, limits, images, usage); the chat output is converted back.

    convert.py     request → chat (input items, tools, text.format) and which chat param is which input
    output.py      the Response object: as it starts, then finished with its items (usage, status)
    events.py      chat chunks → output items and the streaming events (``response.created`` … ``response.completed``)
    store.py       stored responses (``store: true``) in the state backend, for GET / DELETE / previous_response_id
    background.py  ``background: true``: a job on the durable queue, cancellable while queued or running
    replay.py      ``GET /v1/responses/{id}?stream=true``: a stored response as its events (a background one once done)
    run.py         what ``POST /v1/responses`` does, put together (the routes are in api/responses.py)

This module imports nothing: ``vlm_gateway.settings`` imports ``responses_api.settings``.
"""
