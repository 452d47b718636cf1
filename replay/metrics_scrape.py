"""Scrape an engine's Prometheus `/metrics` into a timeline (`metrics.jsonl` in the run dir).

Why: the client sees each request from outside; the engine's own gauges say what it was
doing meanwhile (running vs waiting requests, KV-cache fill, prefix-cache hits, preemptions),
which is what explains a latency or energy figure. One line per scrape:

    {"t": 12.503, "num_requests_running": 7.0, "num_requests_waiting": 2.0, "kv_cache_usage_perc": 0.41, ...}

`t` is run time (seconds since the run's t0, the clock of requests.jsonl). Values are summed
over label sets (several engines / data-parallel ranks). Counters stay cumulative; analysis
takes differences.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import IO, Iterator

import httpx
import orjson

# vLLM series worth a timeline. Old names (vLLM < 0.10) are mapped to the current ones.
VLLM_SERIES = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:prefix_cache_hits_total",
    "vllm:prefix_cache_queries_total",
    "vllm:num_preemptions_total",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:request_success_total",
    "vllm:request_queue_time_seconds_sum",
    "vllm:request_queue_time_seconds_count",
    "vllm:request_prefill_time_seconds_sum",
    "vllm:request_decode_time_seconds_sum",
)
ALIASES = {
    "vllm:gpu_cache_usage_perc": "vllm:kv_cache_usage_perc",
    "vllm:gpu_prefix_cache_hits_total": "vllm:prefix_cache_hits_total",
    "vllm:gpu_prefix_cache_queries_total": "vllm:prefix_cache_queries_total",
}


def samples(text: str) -> Iterator[tuple[str, str, float]]:
    """(metric name, raw label string, value) for every sample line of Prometheus text."""
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        brace = line.find("{")
        if brace >= 0:
            close = line.rfind("}")
            name, labels, rest = line[:brace], line[brace + 1 : close], line[close + 1 :]
        else:
            name, _, rest = line.partition(" ")
            labels = ""
        parts = rest.split()
        if not parts:
            continue
        try:
            yield name, labels, float(parts[0])
        except ValueError:
            continue


def parse_labels(raw: str) -> dict[str, str]:
    """`a="1",b="x"` -> {"a": "1", "b": "x"} (values are not expected to hold quotes)."""
    out: dict[str, str] = {}
    i = 0
    while i < len(raw):
        eq = raw.find("=", i)
        if eq < 0:
            break
        key = raw[i:eq].strip().lstrip(",").strip()
        q1 = raw.find('"', eq)
        q2 = raw.find('"', q1 + 1)
        while q2 > 0 and raw[q2 - 1] == "\\":
            q2 = raw.find('"', q2 + 1)
        if q1 < 0 or q2 < 0:
            break
        out[key] = raw[q1 + 1 : q2]
        i = q2 + 1
    return out


def pick(text: str, wanted: tuple[str, ...] = VLLM_SERIES) -> dict[str, float]:
    """Sum of each wanted series over its label sets; key = name without the 'vllm:' prefix."""
    want = set(wanted)
    acc: dict[str, float] = {}
    for name, _, value in samples(text):
        name = ALIASES.get(name, name)
        if name in want:
            key = name.split(":", 1)[-1]
            acc[key] = acc.get(key, 0.0) + value
    return acc


def info_labels(text: str, metric: str) -> dict[str, str]:
    """Labels of an info-style metric (e.g. vllm:cache_config_info), or {} if absent."""
    for name, labels, _ in samples(text):
        if name == metric:
            return parse_labels(labels)
    return {}


class MetricsScraper:
    """Background task: GET `url` every `interval_s`, append picked values to `path`."""

    def __init__(self, url: str, path: Path, *, t0: float, interval_s: float = 0.5, wanted: tuple[str, ...] = VLLM_SERIES):
        self.url = url
        self.path = Path(path)
        self.t0 = t0
        self.interval_s = interval_s
        self.wanted = wanted
        self.scrapes = 0
        self.failures = 0
        self.last_error: str | None = None
        self._task: asyncio.Task | None = None
        self._file: IO[bytes] | None = None
        # Made here, not in start(): an httpx client builds an SSL context (~10 ms), which
        # must not land between the run's t0 and its first request.
        self._client: httpx.AsyncClient | None = httpx.AsyncClient(
            timeout=httpx.Timeout(2.0), limits=httpx.Limits(max_connections=1), trust_env=False
        )

    async def scrape_once(self) -> dict | None:
        assert self._client is not None and self._file is not None
        t = time.perf_counter() - self.t0
        try:
            r = await self._client.get(self.url)
            r.raise_for_status()
        except httpx.HTTPError as e:
            self.failures += 1
            self.last_error = f"{type(e).__name__}: {e}"[:200]
            return None
        row = {"t": round(t, 4), **pick(r.text, self.wanted)}
        self._file.write(orjson.dumps(row) + b"\n")
        self._file.flush()
        self.scrapes += 1
        return row

    async def _loop(self) -> None:
        nxt = time.perf_counter()
        while True:
            await self.scrape_once()
            nxt += self.interval_s
            delay = nxt - time.perf_counter()
            if delay < 0:  # a slow scrape: skip missed ticks rather than bunch up
                nxt = time.perf_counter()
                delay = 0
            await asyncio.sleep(delay)

    def start(self, t0: float | None = None) -> None:
        if t0 is not None:
            self.t0 = t0
        self._file = open(self.path, "ab")
        self._task = asyncio.create_task(self._loop(), name="metrics-scrape")

    async def stop(self, *, final: bool = True) -> None:
        """Stop the loop; take one last sample so counters cover the whole run."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
        if final and self._client is not None and self._file is not None:
            try:
                await asyncio.wait_for(self.scrape_once(), 2.5)
            except (asyncio.TimeoutError, Exception):
                pass
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def to_dict(self) -> dict:
        return {
            "url": self.url,
            "interval_s": self.interval_s,
            "scrapes": self.scrapes,
            "failures": self.failures,
            "last_error": self.last_error,
        }
