"""The served models: settings entries resolved to their family, and looked up by id or alias."""

from __future__ import annotations

import time

import msgspec

from vlm_gateway.errors import ModelNotFound
from vlm_gateway.prompts.families import Family, UnknownFamily, family_for_checkpoint, load_families
from vlm_gateway.settings import EngineSettings, ModelSettings, Settings, SettingsError


class Model(msgspec.Struct, frozen=True):
    id: str
    aliases: tuple[str, ...]
    family: Family
    checkpoint: str
    tokenizer: str
    max_images: int
    context_length: int | None  # None: ask the engine
    images_before_text: bool
    owned_by: str
    created: int
    engine: EngineSettings  # the pool's settings and first servers
    engines: tuple[EngineSettings, ...]  # every server group of the pool, ``engine`` first
    generation_config: bool = False  # apply the checkpoint's default sampling (settings.ModelSettings)

    @property
    def engine_renders(self) -> bool:
        """A server of the pool renders prompts itself (OpenAI pass-through): requests carry the chat."""
        return any(e.kind == "openai" for e in self.engines)


def _resolve(entry: ModelSettings, created: int, families: dict[str, Family]) -> Model:
    try:
        family_id = entry.family or family_for_checkpoint(entry.checkpoint, families)
    except UnknownFamily as exc:
        raise SettingsError(f"model {entry.id!r}: {exc}. Fix: set `family` in the model entry "
                            f"(one of: {', '.join(families)})") from None
    if family_id not in families:
        raise SettingsError(f"model {entry.id!r}: unknown family {family_id!r}. Fix: use one of: "
                            f"{', '.join(families)}")
    family = families[family_id]
    for engine in (entry.engine, *entry.engines):
        if engine.kind != "embedded" and not engine.urls:
            raise SettingsError(f"model {entry.id!r}: a {engine.kind} engine needs urls")
    return Model(
        id=entry.id,
        aliases=tuple(entry.aliases),
        family=family,
        checkpoint=entry.checkpoint,
        tokenizer=entry.tokenizer or entry.checkpoint,
        max_images=entry.max_images if entry.max_images is not None else family.max_images,
        context_length=entry.context_length,
        images_before_text=(entry.images_before_text if entry.images_before_text is not None
                            else family.images_before_text),
        owned_by=entry.owned_by,
        created=created,
        engine=entry.engine,
        engines=(entry.engine, *entry.engines),
        generation_config=entry.generation_config,
    )


class ModelRegistry:
    """Every served model, by id and alias."""

    def __init__(self, settings: Settings) -> None:
        created = int(time.time())
        families = load_families(settings.templates_dir or None)
        self.models = [_resolve(entry, created, families) for entry in settings.models]
        self._by_name: dict[str, Model] = {}
        for model in self.models:
            for name in (model.id, *model.aliases):
                if name in self._by_name:
                    raise SettingsError(f"model name {name!r} is used twice")
                self._by_name[name] = model

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def resolve(self, name: str) -> Model:
        try:
            return self._by_name[name]
        except KeyError:
            raise ModelNotFound(f"The model `{name}` does not exist.", param="model") from None
