"""Engine pools on real engines: two gateway replicas sharing one Redis, and a pool of two stock vLLM servers
(the session's tiny LLaVA, A, and one more started here, B).

- Failover: 200 streamed requests at concurrency 8 while B is killed with SIGKILL and restarted. A request
  whose answer had not started (no 200 yet: the gateway answers once the engine's first output is there)
  never fails: it goes to A. Streams B was serving end with an OpenAI error event. B rejoins the rotation
  and serves again.
- Affinity: 20 five-turn conversations, each resending its history and image every turn, their turns alternating
  between the replicas: every later turn reaches the engine of its first turn (one owner table in Redis),
  neither engine takes more than 60 % of the requests, and vLLM's own multimodal and prefix cache hit
  counters (its /metrics) rise with them.
- OpenAI pass-through: a model whose engine is A's plain ``/v1/chat/completions`` (no token-in), with keys
  and limits on: chat, streaming and usage through the OpenAI SDK.

What each run measured is written to ``pool-report.json`` in the session's log directory.
"""

from __future__ import annotations

import json
import signal
import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import msgspec
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import ENGINE_START_TIMEOUT_S, REMOTE_FAMILIES, model_id
from tests.e2e.test_cluster import Replica, create_key
from tests.helpers import Child, free_port, png_data_uri
from vlm_gateway.engines.vllm_launch import server_command, server_env

pytestmark = pytest.mark.engine

FAMILY = REMOTE_FAMILIES[0]  # tiny LLaVA-1.5
POOL = "tiny-llava-pool"
AFFINITY_POOL = "tiny-llava-pool-2"  # the same two engines; its own owner table, fresh for its test
PASS = "tiny-llava-passthrough"
SLOW_START_S = 3


class Engine:
    """A stock vLLM server this module starts, kills and restarts on one port."""

    def __init__(self, checkpoint: Path, logs: Path) -> None:
        self.checkpoint, self.logs = checkpoint, logs
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.child: Child | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        cmd = server_command(str(self.checkpoint), self.port, ["--served-model-name", model_id(FAMILY)])
        self.child = Child(f"vllm-b-{self.starts}", cmd, self.logs, env=server_env(model_path=str(self.checkpoint)))
        self.child.wait_http(self.url + "/health", ENGINE_START_TIMEOUT_S)

    def kill9(self) -> None:
        assert self.child is not None
        self.child.stop(sig=signal.SIGKILL)  # the whole process group: API server and engine core

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    text = httpx.get(url + "/metrics", timeout=30).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples: dict, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


@pytest.fixture(scope="module")
def engine_b(checkpoints, logs: Path):
    engine = Engine(checkpoints[FAMILY], logs)
    engine.start()
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def pool_config(gateway, engine_b: Engine, logs: Path, checkpoints) -> Path:
    prefix = f"vlmtest-{uuid.uuid4().hex[:8]}"
    a = gateway.engines[FAMILY]
    lines = ['redis_url = "redis://127.0.0.1:6379/0"', "",
             "[limits]", f'redis_prefix = "{prefix}:limits:"', "request_timeout_s = 120", "",
             "[jobs]", f'key_prefix = "{prefix}:{{jobs}}:"', "", "[images]", "allow_loopback = true", "",
             "[[models]]", f'id = "{POOL}"', f'checkpoint = "{checkpoints[FAMILY]}"', "context_length = 4096",
             f'engine = {{ kind = "remote", urls = ["{a}", "{engine_b.url}"], slow_start_s = {SLOW_START_S} }}', "",
             "[[models]]", f'id = "{AFFINITY_POOL}"', f'checkpoint = "{checkpoints[FAMILY]}"', "context_length = 4096",
             f'engine = {{ kind = "remote", urls = ["{a}", "{engine_b.url}"] }}', "",
             "[[models]]", f'id = "{PASS}"', f'checkpoint = "{checkpoints[FAMILY]}"', "context_length = 4096",
             f'engine = {{ kind = "openai", urls = ["{a}/v1"], model = "{model_id(FAMILY)}" }}', ""]
    path = logs / "pool.toml"
    path.write_text("\n".join(lines))
    return path


@pytest.fixture(scope="module")
def replicas(pool_config: Path, logs: Path):
    pair = [Replica("pool-replica-a", pool_config, logs), Replica("pool-replica-b", pool_config, logs)]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(Replica.start, pair))
    yield pair
    for replica in pair:
        if replica.child is not None:
            replica.child.stop()


@pytest.fixture(scope="module")
def key(pool_config: Path) -> str:
    return create_key(pool_config, "--name", "pool", "--rpm", "0", "--concurrency", "0")


@pytest.fixture(scope="module")
def report(logs: Path):
    found: dict = {}
    yield found
    (logs / "pool-report.json").write_text(json.dumps(found, indent=2))


class Outcome(msgspec.Struct):
    status: int  # 0: no HTTP answer at all
    content: str = ""
    error: dict | None = None
    done: bool = False


def stream(url: str, key: str, i: int) -> Outcome:
    body = {"model": POOL, "stream": True, "max_tokens": 48, "ignore_eos": True,
            "messages": [{"role": "user", "content": f"Request {i}: tell a story about the number {i}."}]}
    try:
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120,
                          headers={"Authorization": f"Bearer {key}"}) as r:
            if r.status_code != 200:
                r.read()
                return Outcome(r.status_code, error={"body": r.text[:300]})
            out = Outcome(200)
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    out.done = True
                    break
                event = json.loads(line[6:])
                if "error" in event:
                    out.error = event["error"]
                    break
                out.content += "".join(c["delta"].get("content") or "" for c in event.get("choices", []))
            return out
    except httpx.HTTPError as exc:
        return Outcome(0, error={"exception": repr(exc)})


def server_up(replica: Replica, url: str) -> float:
    return total(scrape(replica.url), "vlm_gateway_engine_server_up", model=POOL, server=url)


def vllm_requests(url: str) -> float:
    return total(scrape(url), "vllm:request_success_total")


def test_failover_when_an_engine_is_killed_and_restarted(replicas, engine_b: Engine, key: str, report) -> None:
    failovers_before = sum(total(scrape(r.url), "vlm_gateway_engine_failovers_total") for r in replicas)
    killed = threading.Event()
    finished: list[int] = []
    lock = threading.Lock()

    def one(i: int) -> Outcome:
        out = stream(replicas[i % 2].url, key, i)
        with lock:
            finished.append(i)
            if len(finished) == 30 and not killed.is_set():  # B is serving about half of the 8 in flight
                engine_b.kill9()
                killed.set()
        return out

    with ThreadPoolExecutor(8) as pool:
        first = list(pool.map(one, range(100)))
    assert killed.is_set()
    engine_b.start()  # restarted on its port; the pool's health checks see it answer again
    for replica in replicas:
        deadline_polls = 240
        while server_up(replica, engine_b.url) != 1 and deadline_polls:
            threading.Event().wait(0.5)
            deadline_polls -= 1
        assert server_up(replica, engine_b.url) == 1, f"{replica.name} did not take B back"
    threading.Event().wait(SLOW_START_S)  # its slow start over: a full share again
    with ThreadPoolExecutor(8) as pool:
        second = list(pool.map(one, range(100, 200)))
    outcomes = first + second

    not_started = [o for o in outcomes if o.status != 200]
    cut = [o for o in outcomes if o.status == 200 and o.error is not None]
    assert not not_started, not_started[:3]  # zero failures for requests that had not started
    assert all(o.done for o in outcomes if o.status == 200 and o.error is None)
    for o in cut:  # a stream B was serving: OpenAI's error event, then the end
        assert o.error.get("type") and o.error.get("message"), o.error
    served_by_b_after = vllm_requests(engine_b.url)  # the restarted process counts from zero
    assert served_by_b_after > 0  # rejoined the rotation
    failovers = sum(total(scrape(r.url), "vlm_gateway_engine_failovers_total") for r in replicas) - failovers_before
    report["failover"] = {"requests": len(outcomes), "failed_before_start": len(not_started),
                          "streams_cut": len(cut), "failovers": failovers,
                          "served_by_b_after_restart": served_by_b_after}


def served_by(counts: dict[str, float]) -> str:
    """The one engine whose finished-request counter moved past ``counts`` (vLLM counts a request as its
    answer leaves, so the counter may trail the response by a moment)."""
    for _ in range(100):
        moved = [url for url, before in counts.items() if vllm_requests(url) > before]
        if moved:
            assert len(moved) == 1, moved
            return moved[0]
        threading.Event().wait(0.1)
    raise AssertionError("no engine counted the request")


def test_conversations_stay_on_their_engine(replicas, engine_b: Engine, gateway, key: str, report) -> None:
    a = gateway.engines[FAMILY]
    engines = [a, engine_b.url]
    client = [openai.OpenAI(base_url=r.url + "/v1", api_key=key, max_retries=0) for r in replicas]
    before = {url: scrape(url) for url in engines}
    where: dict[tuple[int, int], str] = {}
    for turn in range(5):
        for c in range(20):  # turn by turn: each request is attributed by the engines' own counters
            image = png_data_uri(64 + c, 48, (10 * c, 200 - 5 * c, 90))
            messages = [{"role": "user", "content": [{"type": "text", "text": f"Conversation {c}."},
                                                     {"type": "image_url", "image_url": {"url": image}}]}]
            for t in range(turn):  # as chat clients do: the whole history again, its image included
                messages += [{"role": "assistant", "content": f"Answer {t}."},
                             {"role": "user", "content": f"And turn {t + 1}?"}]
            counts = {url: vllm_requests(url) for url in engines}
            client[(c + turn) % 2].chat.completions.create(model=AFFINITY_POOL, messages=messages, max_tokens=2)
            where[c, turn] = served_by(counts)
    later = [(c, t) for (c, t) in where if t > 0]
    stayed = sum(where[c, t] == where[c, 0] for c, t in later) / len(later)
    share = Counter(where.values())
    assert stayed >= 0.95, stayed
    assert max(share.values()) <= 0.6 * len(where), share
    after = {url: scrape(url) for url in engines}

    def rose(name: str) -> float:
        return sum(total(after[u], name) - total(before[u], name) for u in engines)

    mm_hits, mm_queries = rose("vllm:mm_cache_hits_total"), rose("vllm:mm_cache_queries_total")
    prefix_hits, prefix_queries = rose("vllm:prefix_cache_hits_total"), rose("vllm:prefix_cache_queries_total")
    # every later turn resends an image its engine has seen: a multimodal cache hit each (of 80)
    assert mm_hits >= 0.95 * len(later), (mm_hits, mm_queries)
    assert prefix_hits > 0, (prefix_hits, prefix_queries)
    report["affinity"] = {"later_turns_on_first_engine": stayed, "requests_per_engine": dict(share),
                          "mm_cache_hits": mm_hits, "mm_cache_queries": mm_queries,
                          "prefix_cache_hit_tokens": prefix_hits, "prefix_cache_query_tokens": prefix_queries}


def test_pass_through_engine_serves_chat_streaming_and_usage_with_keys_and_limits(replicas, gateway,
                                                                                  pool_config: Path) -> None:
    a = gateway.engines[FAMILY]
    limited = create_key(pool_config, "--name", "pass3", "--rpm", "3", "--concurrency", "0")
    sdk = openai.OpenAI(base_url=replicas[0].url + "/v1", api_key=limited, max_retries=0)
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is in the picture?"},
                                             {"type": "image_url", "image_url": {"url": png_data_uri(96, 64)}}]}]
    fixed = {"max_tokens": 5, "temperature": 0, "extra_body": {"ignore_eos": True}}
    reply = sdk.chat.completions.create(model=PASS, messages=messages, **fixed)
    assert reply.model == PASS and reply.choices[0].message.content is not None
    direct = httpx.post(a + "/v1/chat/completions", timeout=120, json={
        "model": model_id(FAMILY), "messages": messages, "max_tokens": 5, "temperature": 0, "ignore_eos": True}).json()
    assert reply.usage.prompt_tokens == direct["usage"]["prompt_tokens"]  # the engine rendered and counted it
    assert reply.usage.completion_tokens == direct["usage"]["completion_tokens"] == 5
    assert reply.choices[0].message.content == direct["choices"][0]["message"]["content"]

    chunks = list(sdk.chat.completions.create(model=PASS, messages=messages, stream=True,
                                              stream_options={"include_usage": True}, **fixed))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply.choices[0].message.content
    assert chunks[-1].usage.prompt_tokens == reply.usage.prompt_tokens

    sdk.chat.completions.create(model=PASS, messages=messages, max_tokens=1)  # the key's third request this minute
    with pytest.raises(openai.RateLimitError):  # shared by the replicas: the fourth, on the other one
        openai.OpenAI(base_url=replicas[1].url + "/v1", api_key=limited, max_retries=0).chat.completions.create(
            model=PASS, messages=messages, max_tokens=1)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=replicas[1].url + "/v1", api_key="nope", max_retries=0).chat.completions.create(
            model=PASS, messages=messages, max_tokens=1)


def test_pass_through_the_image_of_a_prompt_vllm_refused_is_taken_by_the_next_request(replicas, key: str) -> None:
    """Stock vLLM's chat route processes a request's images before it finds the prompt too long; its frontend
    then sends that image by key with the next request that has it, to an engine that never got it (a 500
    before any output, and vLLM forgets the key). The pass-through engine sends such a request once more."""
    sdk = openai.OpenAI(base_url=replicas[0].url + "/v1", api_key=key, max_retries=0)
    image = {"type": "image_url", "image_url": {"url": png_data_uri(80, 60, (uuid.uuid4().int % 250, 7, 7))}}
    too_long = [{"role": "user", "content": [image, {"type": "text", "text": "lorem ipsum " * 400}]}]  # 576 + ~3600
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model=PASS, messages=too_long, max_tokens=4)
    assert refused.value.code == "context_length_exceeded"
    short = [{"role": "user", "content": [image, {"type": "text", "text": "And this?"}]}]
    reply = sdk.chat.completions.create(model=PASS, messages=short, max_tokens=4)
    assert reply.usage.prompt_tokens > 576  # the image's tokens, expanded by the engine
