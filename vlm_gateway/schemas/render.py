"""``POST /v1/chat/completions/render``'s answer: the prompt a chat request becomes, without generating.

Modeled on vLLM's own render route (``/v1/chat/completions/render`` answers a ``GenerateRequest``:
``request_id``, ``token_ids``, ``features`` with the multimodal placeholder positions, ``model``). The
gateway adds the prompt text, since it renders the template itself.
"""

from __future__ import annotations

from typing import Literal

from msgspec import Struct


class PlaceholderRange(Struct):
    """Where one image stands in ``token_ids`` (vLLM's ``PlaceholderRange``)."""

    offset: int  # index of the image's placeholder token in ``token_ids``
    length: int  # ids it takes there: 1 when the engine expands it, else the image's own tokens


class RenderFeatures(Struct):
    """The request's images as the engine receives them (vLLM's ``features``, images only)."""

    image_token: str  # the family's image placeholder token, e.g. "<image>"
    image_token_id: int | None  # its id in the model's vocabulary (None: the tokenizer does not know it)
    mm_placeholders: list[PlaceholderRange]  # one per image, in order


class RenderedChat(Struct):
    """A chat request rendered as the gateway would send it to the engine; nothing is generated.

    ``token_ids`` are exactly the ids sent to the engine: the rendered ``prompt`` tokenized with the
    model's tokenizer (special tokens as the family says). Where the gateway preprocesses the images itself
    (``engines.preprocess = "gateway"``, families with a gateway image processor) each image's placeholder
    is already expanded into the image's own tokens: ``images_expanded`` is true and ``image_tokens`` equals
    a generated answer's ``usage.prompt_tokens_details.image_tokens``. Otherwise ``token_ids`` hold ONE
    placeholder id per image, which the engine (vLLM) expands: ``images_expanded`` is false and
    ``image_tokens`` counts the placeholder ids.
    """

    request_id: str  # chatcmpl-…: the id the request would have had (not reserved; nothing runs)
    model: str  # as the client asked for it (an id or an alias)
    prompt: str  # the exact prompt text the family's template rendered, image placeholders included
    token_ids: list[int]
    token_count: int  # len(token_ids)
    image_count: int
    image_tokens: int  # ids in token_ids that stand for images (see above)
    images_expanded: bool  # True: token_ids hold each image's own tokens; False: one placeholder id each
    features: RenderFeatures | None  # None when the request has no image
    max_tokens: int | None  # the completion budget the request would run with (None: up to the context)
    object: Literal["chat.completion.render"] = "chat.completion.render"
