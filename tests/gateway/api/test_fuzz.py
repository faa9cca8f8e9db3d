"""Schema-driven fuzzing: Schemathesis generates requests for every operation of the gateway's own OpenAPI
document (``/schema/openapi.json``) and sends them to the real app (uvicorn, tokenizer, templates, image
loader, files, job queue, batches) with a scripted engine in place of vLLM.

Every answer must be: no 5xx; a status the operation documents; the documented content type; a body that
validates against the documented schema (so every 4xx is the route's documented error shape: OpenAI's
``{"error": {...}}``, or the seed services' own on theirs). Each call is bounded by a client timeout (no
hang). Generation is derandomized: the same cases run on every machine.

Nothing leaves loopback: image and webhook URLs are limited to an allow list of one ``.invalid`` name,
which the SSRF guard checks before any lookup, and the system resolver is replaced by one that records
the call and fails; the last test checks it was never called.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.gateway.responses_api.conftest import ScriptedEngine
from tests.helpers import ALICE, TEST_KEYS, auth, serve_app
from vlm_gateway.app import create_app
from vlm_gateway.files import FileSettings
from vlm_gateway.images import guard
from vlm_gateway.jobs.settings import JobSettings, WebhookSettings
from vlm_gateway.limits import LimitSettings
from vlm_gateway.settings import ImageSettings, ModelSettings, Settings

EXAMPLES_PER_OPERATION = 40  # per operation and mode
MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]  # schema-valid requests, then invalid ones
CALL_TIMEOUT_S = 20
CASES: Counter[str] = Counter()  # "METHOD /path" -> cases sent
STATUSES: Counter[int] = Counter()
LOOKUPS: list[str] = []  # hosts the resolver was asked for (must stay empty)


async def _no_lookups(host: str, port: int) -> list[str]:
    LOOKUPS.append(host)
    raise OSError(f"no DNS in this test ({host})")


@pytest.fixture(scope="module")
def served(tiny_checkpoint, tmp_path_factory) -> Iterator[str]:
    real = guard.system_resolver
    guard.system_resolver = _no_lookups
    allow = ["fuzz.invalid"]
    s = Settings(
        models=[ModelSettings(id="m", checkpoint=str(tiny_checkpoint), aliases=["alias"])],
        limits=LimitSettings(keys=TEST_KEYS),
        images=ImageSettings(allow_hosts=allow),
        jobs=JobSettings(concurrency=1, poll_s=0.05, webhook=WebhookSettings(allow_hosts=allow, attempts=1)),
        files=FileSettings(dir=str(tmp_path_factory.mktemp("files"))),
    )
    try:
        with serve_app(create_app(s, engine_factory=lambda model, session: ScriptedEngine()),
                       start_timeout_s=60) as url:
            yield url.removesuffix("/v1")
    finally:
        guard.system_resolver = real


def _check(case, served: str) -> None:
    label = _label(case.operation)
    CASES[label] += 1
    if isinstance(case.body, dict) and "model" in case.body and CASES[label] % 2:
        case.body["model"] = "m"  # every other case names the served model, to get past the model lookup
    response = case.call(base_url=served, headers=auth(ALICE), timeout=CALL_TIMEOUT_S)
    STATUSES[response.status_code] += 1
    checks = [not_a_server_error, status_code_conformance]
    streamed = any(v.startswith("text/event-stream") for v in response.headers.get("content-type", []))
    if not streamed:  # `stream: true` answers server-sent events, documented in the 200's description
        checks += [content_type_conformance, response_schema_conformance]
    case.validate_response(response, checks=checks)


def _label(operation) -> str:
    return f"{operation.method.upper()} {operation.path}"


def test_every_operation_answers_as_documented(served: str) -> None:
    """Each operation in turn, ``EXAMPLES_PER_OPERATION`` generated cases per mode (Hypothesis, shrunk on
    failure); every operation's first failure is reported."""
    schema = schemathesis.openapi.from_url(f"{served}/schema/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    failures: dict[str, str] = {}
    for operation, mode in itertools.product(operations, MODES):
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate, Phase.shrink])
        def fuzz(case) -> None:
            _check(case, served)

        try:
            fuzz()
        except Unsatisfiable:
            if mode is GenerationMode.POSITIVE:
                raise
            # nothing invalid to send: every string is a valid path id, and there is no body
        except Exception as exc:  # noqa: BLE001 - collected, reported together below
            failures[f"{_label(operation)} ({mode.value})"] = f"{type(exc).__name__}: {exc}"[:2000]
    summary = ", ".join(f"{name}: {n}" for name, n in sorted(CASES.items()))
    print(f"\nschemathesis: {sum(CASES.values())} cases over {len(CASES)} operations ({summary}); "
          f"statuses: {dict(sorted(STATUSES.items()))}")
    assert not failures, "\n\n".join(f"{name}\n{text}" for name, text in failures.items())
    assert {_label(op) for op in operations} <= set(CASES)
    assert not LOOKUPS, f"the fuzzer's URLs reached the resolver: {LOOKUPS[:5]}"
