"""A test double of Parrot's serve core with one OpenAI-type engine, for CI where ParrotServe
cannot run. It follows ../shared/parrot-api.md and Parrot's code (microsoft/ParrotServe at
2e1825e, checked live) to the letter where a client can tell:

- sessions: `POST /v1/session` -> `{"session_id", "session_auth": "1"}`, ids from a recycling
  pool (0, 1, ...; freed ids reused first-in first-out); `DELETE /v1/session/{id}` needs a JSON
  body; a session untouched for `session_life_span` s is dropped;
- `POST /v1/semantic_call`: `{{name}}` placeholders (`[a-zA-Z_][a-zA-Z0-9_]*`), parameters
  checked like Parrot's dataclasses (same TypeError/ValueError texts), text after the last
  placeholder dropped (`remove_pure_fill`), the text before the first placeholder a global
  content-hashed constant-prefix variable (`cache_prefix`), `param_info` for every placeholder
  in template order, `sampling_config` with `max_gen_length` (Parrot's SamplingConfig fields;
  `max_tokens` is a TypeError), `model_type` default "token_id";
- one output per call: later output placeholders are accepted, but GETting them fails;
- lazy execution: a call runs once its output is activated (a GET on it or on a downstream
  output, or `output_criteria` at submit), and its inputs exist; activation propagates upstream
  with Parrot's depth; `latency` lets at most 4 tasks share the engine, `throughput` is unbounded;
- `GET /v1/semantic_var/{id}` blocks until the value exists, with no server-side timeout, and
  needs `criteria` in its JSON body; `POST /v1/semantic_var` makes an empty variable and
  `POST /v1/semantic_var/{id}` sets one once;
- a call whose model_type or models match no engine is never scheduled: its GET hangs;
- errors: a user error answers 500 `{"error": "ParrotError(type=<class 'X'>, msg=...)",
  "traceback": ...}`; anything else (Parrot's internal assertions, a missing key) answers a
  plain-text 500 `Internal Server Error`, as Parrot's FastAPI does;
- generation is forwarded the way Parrot's OpenAI-type engine does it: the openai client, chat
  endpoint, every text piece of the call merged into one `user` message, and only temperature,
  top_p, max_tokens (= max_gen_length), stop, presence_penalty, frequency_penalty passed on;
- fail-fast: a backend error (after the openai client's own retries) ends the engine and then
  the serve core, so this process exits with code 1, as an unknown model_type does once the
  scheduler sees it.

Not emulated (a client of mrw's kind cannot tell): the engine registration/heartbeat API,
`py_native_call`, graph/ctx grouping and several engines.

Run: python tests/parrot_double.py --port P --backend http://127.0.0.1:8000/v1 --model NAME
In tests: `with ParrotDouble(backend_v1, model) as d: d.url`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

PLACEHOLDER_REGEX = "{{[a-zA-Z_][a-zA-Z0-9_]*}}"
LATENCY_TASKS_UPPERBOUND = 4  # Parrot's TaskCreator for PerformanceCriteria.LATENCY
THROUGHPUT_TASKS_UPPERBOUND = 99999
METADATA_DEFAULTS = {
    "models": [],
    "model_type": "token_id",
    "remove_pure_fill": True,
    "cache_prefix": True,
    "output_criteria": None,
    "fuse_fill": False,
}


# ----------------------------------------------------------------- Parrot's exceptions


class ParrotError(Exception):
    def __init__(self, exception: Exception) -> None:
        self.exception = exception

    def __repr__(self) -> str:
        return f"ParrotError(type={type(self.exception)}, msg={self.exception.args[0]})"


class ParrotCoreUserError(ParrotError):
    """Answered as JSON; every other exception is a plain 500."""


def parrot_assert(cond: bool, msg: str) -> None:
    if not cond:
        raise ParrotError(AssertionError(msg))


# ----------------------------------------------------------------- Parrot's dataclasses


@dataclass
class SamplingConfig:
    temperature: float = 1.0
    top_p: float = 1.0
    max_gen_length: int = 512
    ignore_tokenizer_eos: bool = False
    stop_token_ids: list = field(default_factory=list)
    stop_str: Optional[str] = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    n: int = 1
    best_of: int = 1
    logit_bias: Optional[dict] = None
    repetition_penalty: float = 0.0
    length_penalty: float = 0.0

    def get_openai_params(self) -> dict:
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_gen_length,
            "stop": self.stop_str,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
        }


@dataclass
class SemanticFunctionParameter:
    name: str
    is_output: bool
    var_id: Optional[str] = None
    value: Optional[Any] = None
    sampling_config: Optional[Any] = None

    def __post_init__(self) -> None:
        if isinstance(self.sampling_config, dict):
            self.sampling_config = SamplingConfig(**self.sampling_config)
        if self.is_output:
            if self.var_id is not None:
                raise ValueError("Output parameter should not have var_id.")
            if self.sampling_config is None:
                self.sampling_config = SamplingConfig()
        else:
            if self.sampling_config is not None:
                raise ValueError("Input parameter should not have sampling_config.")
        if self.var_id is not None and self.value is not None:
            raise ValueError("Parameter should not have both var_id and value.")
        if not self.is_output and self.var_id is None and self.value is None:
            raise ValueError("Input parameter should have either var_id or value.")


def get_performance_criteria(criteria: str) -> str:
    if criteria in ("latency", "throughput", "TTFT", "TPOT"):
        return criteria
    raise NotImplementedError(f"PerformanceCriteria {criteria} is not supported.")


# ----------------------------------------------------------------- graph


class Var:
    """A semantic variable: a future with an optional producer (a call's output)."""

    def __init__(self, name: str, var_id: str):
        self.name, self.id = name, var_id
        self.content: Optional[str] = None
        self.ready = asyncio.Event()
        self.producer: Optional[Chain] = None
        self.orphan_output = False  # a second output placeholder: no completion chain
        self.activated = asyncio.Event()
        self.criteria: Optional[str] = None
        self.depth = 99999

    def set(self, content: str) -> None:
        assert self.content is None, f"This semantic variable (id={self.id}) is filled"
        self.content = content
        self.ready.set()


@dataclass
class Chain:
    """A completion chain: the fills before the first output, and that output."""

    session_id: int
    fills: list[Var]
    gen: Var
    sampling: SamplingConfig
    models: list[str]
    model_type: str
    upperbound: int = THROUGHPUT_TASKS_UPPERBOUND
    scheduled: asyncio.Event = field(default_factory=asyncio.Event)


class Namespace:
    def __init__(self) -> None:
        self.vars: dict[str, Var] = {}
        self.uuid = uuid.uuid4()
        self._free: list[int] = []
        self._next = 0

    def _seed(self) -> int:
        if self._free:
            return self._free.pop(0)
        self._next += 1
        return self._next - 1

    def _id(self, name: str) -> str:
        return str(uuid.uuid3(self.uuid, name))

    def by_content(self, content: str) -> Var:
        vid = self._id(content)
        if vid not in self.vars:
            v = Var("constant", vid)
            v.set(content)
            self.vars[vid] = v
        return self.vars[vid]

    def by_name(self, name: str) -> Var:
        vid = self._id(str(self._seed()))
        parrot_assert(vid not in self.vars, "SV ID already exists.")
        self.vars[vid] = Var(name, vid)
        return self.vars[vid]


@dataclass
class Session:
    id: int
    ns: Namespace
    last_access: float
    running: bool = True
    requests: int = 0


# ----------------------------------------------------------------- the core


class DoubleCore:
    def __init__(self, backend: str, model: str, *, life_span: float = 600.0, tasks_capacity: int = 256, app_fifo: bool = False):
        import openai

        self.client = openai.AsyncOpenAI(api_key="EMPTY", base_url=backend)
        self.model = model
        self.life_span = life_span
        self.tasks_capacity = tasks_capacity
        self.app_fifo = app_fifo
        self.sessions: dict[int, Session] = {}
        self._free_sids: list[int] = []
        self._next_sid = 0
        self.constants = Namespace()  # global constant-prefix namespace
        self.queue: list[Chain] = []
        self.running: dict[int, int] = {}  # id(chain) -> tasks_num_upperbound
        self.wake = asyncio.Event()

    # -- sessions

    def _check_session(self, sid: int) -> Session:
        if sid not in self.sessions:
            raise ParrotCoreUserError(RuntimeError(f"Session (session_id={sid}) not found."))
        s = self.sessions[sid]
        if not s.running:
            raise ParrotCoreUserError(RuntimeError(f"Session (session_id={sid}) is not valid."))
        s.last_access = time.monotonic()
        return s

    def register_session(self, payload: dict) -> dict:
        if self._free_sids:
            sid = self._free_sids.pop(0)
        else:
            sid, self._next_sid = self._next_sid, self._next_sid + 1
        self.sessions[sid] = Session(sid, Namespace(), time.monotonic())
        return {"session_id": sid, "session_auth": "1"}

    def remove_session(self, sid: int, payload: dict) -> dict:
        self._check_session(sid)
        self._drop(sid)
        return {}

    def _drop(self, sid: int) -> None:
        self.sessions.pop(sid)
        self._free_sids.append(sid)

    def get_var(self, s: Session, var_id: str) -> Var:
        v = self.constants.vars.get(var_id) or s.ns.vars.get(var_id)
        if v is None:
            raise ParrotCoreUserError(ValueError(f"Unknown Semantic Variable ID: {var_id}"))
        return v

    # -- calls

    def submit(self, payload: dict) -> dict:
        s = self._check_session(payload["session_id"])
        request_id = s.requests  # allocated before parsing: a refused call uses one up too
        s.requests += 1
        parrot_assert("template" in payload, "Missing field 'template' in request.")
        parrot_assert("parameters" in payload, "Missing field 'parameters' in request.")
        meta = dict(METADATA_DEFAULTS)
        meta.update({k: payload[k] for k in METADATA_DEFAULTS if k in payload})
        params: dict[str, SemanticFunctionParameter] = {}
        for p in payload["parameters"]:
            try:
                parsed = SemanticFunctionParameter(**p)
            except BaseException as e:
                raise ParrotCoreUserError(e) from None
            parrot_assert(parsed.name not in params, "Duplicate parameter name.")
            params[parsed.name] = parsed

        template: str = payload["template"]
        body: list[tuple[str, str]] = []  # ("text", text) | ("ph", name)
        last = 0
        for m in re.finditer(PLACEHOLDER_REGEX, template):
            if template[last : m.start()]:
                body.append(("text", template[last : m.start()]))
            body.append(("ph", template[m.start() + 2 : m.end() - 2]))
            last = m.end()
        if not meta["remove_pure_fill"] and template[last:]:
            body.append(("text", template[last:]))
        if not body:
            raise UnboundLocalError("cannot access local variable 'request_chain'")  # Parrot's own crash
        for i, (kind, val) in enumerate(body):
            if kind == "ph":
                param = params[val]  # KeyError: plain 500, as in Parrot
                parrot_assert(not (param.is_output and i == 0), "Gen node should have a prev node.")

        # Variables, in template order (Parrot's create_vars_for_semantic_request_chain).
        nodes: list[tuple[str, Var, Optional[SemanticFunctionParameter]]] = []
        prefix = meta["cache_prefix"]
        for kind, val in body:
            if kind == "text":
                var = self.constants.by_content(val) if prefix else s.ns.by_content(val)
                nodes.append(("fill", var, None))
                continue
            prefix = False
            param = params[val]
            if param.is_output:
                nodes.append(("gen", s.ns.by_name(param.name), param))
            elif param.var_id is None:
                var = s.ns.by_name(param.name)
                var.set(param.value)
                nodes.append(("fill", var, param))
            else:
                var = s.ns.vars.get(param.var_id)
                parrot_assert(var is not None, "Local variable does not exist.")
                nodes.append(("fill", var, param))

        # The first output gets a completion chain; later outputs none (Parrot's one-output limit).
        chain: Optional[Chain] = None
        for i, (kind, var, param) in enumerate(nodes):
            if kind != "gen":
                continue
            if chain is None:
                chain = Chain(s.id, [v for k, v, _ in nodes[:i]], var, param.sampling_config, list(meta["models"]), meta["model_type"])
                var.producer = chain
            else:
                var.orphan_output = True
        if chain is not None:
            asyncio.get_running_loop().create_task(self._execute(chain))
        if meta["output_criteria"] is not None and chain is not None:
            self.activate(chain.gen, get_performance_criteria(meta["output_criteria"]))
        info = [
            {"parameter_name": p.name, "is_output": p.is_output, "var_name": v.name, "var_id": v.id}
            for _, v, p in nodes
            if p is not None
        ]
        return {"request_id": request_id, "param_info": info}

    def activate(self, var: Var, criteria: str) -> int:
        """Parrot's activate_sv/_traverse: activate a variable's producer chain and, backward,
        every chain it waits on; returns the depth."""
        if criteria not in ("latency", "throughput"):
            raise NotImplementedError(f"PerformanceCriteria {criteria} is not supported.")
        if var.orphan_output:
            raise ParrotError(AssertionError("This node has no completion chain."))
        if var.producer is None:
            return 0
        if var.activated.is_set():
            return var.depth
        depth = 0
        for fill in var.producer.fills:
            depth = max(depth, self.activate(fill, criteria) + 1)
        var.criteria, var.depth = criteria, depth
        var.activated.set()
        return depth

    async def _execute(self, chain: Chain) -> None:
        await chain.gen.activated.wait()
        chain.upperbound = LATENCY_TASKS_UPPERBOUND if chain.gen.criteria == "latency" else THROUGHPUT_TASKS_UPPERBOUND
        for fill in chain.fills:
            await fill.ready.wait()
        self.queue.append(chain)
        self.wake.set()
        await chain.scheduled.wait()
        messages = [{"role": "user", "content": "".join(f.content for f in chain.fills)}]
        try:
            resp = await self.client.chat.completions.create(messages=messages, model=self.model, **chain.sampling.get_openai_params())
            text = resp.choices[0].message.content
        except Exception:
            self._fail_fast("engine: backend call failed")
            return
        finally:
            self.running.pop(id(chain), None)
            self.wake.set()
        chain.gen.set(text)

    def _fail_fast(self, why: str) -> None:
        print(f"--- QUIT THE WHOLE SYSTEM BECAUSE ERROR HAPPENS! (Fail Fast Mode) --- {why}", file=sys.stderr, flush=True)
        traceback.print_exc()
        os._exit(1)

    def _engine_takes(self, chain: Chain) -> bool:
        if chain.model_type not in ("token_id", "text"):
            self._fail_fast(f"Unknown model type: {chain.model_type}")
        if chain.model_type != "text" or (chain.models and self.model not in chain.models):
            return False  # no engine can take it: it waits forever
        n = len(self.running)
        bound = min([9999999999, *self.running.values()])
        return 1 + n <= chain.upperbound and 1 + n <= bound and n < self.tasks_capacity

    async def serve_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=0.5)
            except asyncio.TimeoutError:
                pass
            self.wake.clear()
            now = time.monotonic()
            for sid, s in list(self.sessions.items()):
                if now - s.last_access > self.life_span:
                    self._drop(sid)
            if self.app_fifo:
                self.queue.sort(key=lambda c: -c.gen.depth)
            for chain in list(self.queue):
                if self._engine_takes(chain):
                    self.queue.remove(chain)
                    self.running[id(chain)] = chain.upperbound
                    chain.scheduled.set()


# ----------------------------------------------------------------- HTTP


def build_app(core: DoubleCore):
    import contextlib

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def user_error(request: Request, exc: ParrotCoreUserError) -> JSONResponse:
        return JSONResponse({"error": repr(exc), "traceback": traceback.format_exc()}, status_code=500)

    async def session_new(request: Request):
        return JSONResponse(core.register_session(await request.json()))

    def path_sid(request: Request) -> int | JSONResponse:
        raw = request.path_params["sid"]
        try:
            return int(raw)  # FastAPI's `session_id: int` takes "-1" too
        except ValueError:
            detail = {"type": "int_parsing", "loc": ["path", "session_id"], "input": raw,
                      "msg": "Input should be a valid integer, unable to parse string as an integer"}  # fmt: skip
            return JSONResponse({"detail": [detail]}, status_code=422)

    async def session_del(request: Request):
        sid = path_sid(request)
        if isinstance(sid, JSONResponse):
            return sid
        return JSONResponse(core.remove_session(sid, await request.json()))

    async def not_implemented(request: Request):
        raise NotImplementedError("Not implemented yet.")

    async def semantic_call(request: Request):
        return JSONResponse(core.submit(await request.json()))

    # Field reads come before the session check, as in Parrot: a missing field is a plain 500.
    async def var_new(request: Request):
        payload = await request.json()
        sid, name = payload["session_id"], payload["var_name"]
        s = core._check_session(sid)
        return JSONResponse({"var_id": s.ns.by_name(name).id})

    async def var_set(request: Request):
        payload = await request.json()
        sid, content = payload["session_id"], payload["content"]
        s = core._check_session(sid)
        core.get_var(s, request.path_params["var_id"]).set(content)
        return JSONResponse({})

    async def var_get(request: Request):
        payload = await request.json()
        sid, criteria = payload["session_id"], payload["criteria"]
        s = core._check_session(sid)
        var = core.get_var(s, request.path_params["var_id"])
        if (var.producer is not None or var.orphan_output) and not var.activated.is_set():
            core.activate(var, get_performance_criteria(criteria))
        await var.ready.wait()
        return JSONResponse({"content": var.content})

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        task = asyncio.get_running_loop().create_task(core.serve_loop())
        yield
        task.cancel()

    routes = [
        Route("/v1/session", session_new, methods=["POST"]),
        Route("/v1/session/{sid}", session_del, methods=["DELETE"]),
        Route("/v1/session/{sid}", not_implemented, methods=["GET"]),
        Route("/v1/semantic_call", semantic_call, methods=["POST"]),
        Route("/v1/semantic_var", var_new, methods=["POST"]),
        Route("/v1/semantic_var", not_implemented, methods=["GET"]),
        Route("/v1/semantic_var/{var_id}", var_set, methods=["POST"]),
        Route("/v1/semantic_var/{var_id}", var_get, methods=["GET"]),
    ]
    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": "Not Found"}, status_code=404)  # FastAPI's answer

    handlers = {ParrotCoreUserError: user_error, 404: not_found}
    return Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Parrot serve core + OpenAI-type engine test double")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--backend", required=True, help="OpenAI base URL, with /v1")
    ap.add_argument("--model", required=True)
    ap.add_argument("--session-life-span", type=float, default=600.0)
    ap.add_argument("--tasks-capacity", type=int, default=256)
    ap.add_argument("--app-fifo", action="store_true")
    a = ap.parse_args(argv)
    import uvicorn

    core = DoubleCore(a.backend, a.model, life_span=a.session_life_span, tasks_capacity=a.tasks_capacity, app_fifo=a.app_fifo)
    uvicorn.run(build_app(core), host=a.host, port=a.port, log_level="warning", timeout_graceful_shutdown=1)


# ----------------------------------------------------------------- for tests


class ParrotDouble:
    """The double as a child process (so that its fail-fast exit is a real process exit)."""

    def __init__(self, backend_v1: str, model: str, *, port: int | None = None, log_path: Path | None = None, extra: list[str] = ()):
        from mrw.launch import free_port

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.argv = [sys.executable, str(Path(__file__).resolve()), "--port", str(self.port), "--backend", backend_v1, "--model", model, *extra]
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 30.0) -> "ParrotDouble":
        import httpx

        sink = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.argv, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the Parrot double exited with {self.proc.returncode}")
            try:
                r = httpx.request("DELETE", f"{self.url}/v1/session/-1", json={"session_id": -1}, timeout=1.0)
                if "ParrotError" in r.text:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("the Parrot double did not come up")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        from mrw.launch import _stop_group

        if self.proc is not None:
            _stop_group(self.proc, 5.0)
            self.proc = None

    def __enter__(self) -> "ParrotDouble":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    main()


# ----------------------------------------------------------------- pytest fixtures
# tests/conftest.py imports them, so every test module sees them.

try:
    import pytest
except ImportError:  # running as a server
    pytest = None

if pytest is not None:

    class ProxyProcess:
        """The mrw backend proxy as a child process, recording request bodies (--keep-text)."""

        def __init__(self, backend_root: str, log_path: Path, extra: list[str] = ()):
            from mrw.launch import free_port

            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            self.argv = [sys.executable, "-m", "mrw.backend_proxy", "--backend", backend_root, "--port", str(self.port),
                         "--keep-text", "--log", str(log_path), *extra]  # fmt: skip
            self.proc: subprocess.Popen | None = None

        def start(self) -> "ProxyProcess":
            import httpx

            self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
            for _ in range(200):
                try:
                    if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                        return self
                except httpx.HTTPError:
                    time.sleep(0.05)
            raise RuntimeError("the backend proxy did not come up")

        def records(self, after: int = 0) -> list[dict]:
            import httpx

            return httpx.get(f"{self.url}/mrw/requests", params={"after": after}, timeout=5.0).json()

        def count(self) -> int:
            return len(self.records())

        def stop(self) -> None:
            from mrw.launch import _stop_group

            if self.proc is not None:
                _stop_group(self.proc, 5.0)
                self.proc = None

        def kill(self) -> None:
            """Die at once, as a crashed backend does (no graceful draining)."""
            import signal

            if self.proc is not None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
                self.proc = None

    def served_model(root_url: str) -> str:
        import httpx

        return httpx.get(f"{root_url}/v1/models", timeout=10.0).json()["data"][0]["id"]

    @pytest.fixture(scope="session")
    def backend_proxy(vllm_url, tmp_path_factory):
        """The mrw proxy in front of the session's real vLLM."""
        p = ProxyProcess(vllm_url, tmp_path_factory.mktemp("proxy") / "requests.jsonl").start()
        yield p
        p.stop()

    @pytest.fixture(scope="session")
    def parrot_double(backend_proxy, vllm_url, tmp_path_factory):
        """The Parrot double whose engine forwards through the proxy to the real vLLM."""
        d = ParrotDouble(f"{backend_proxy.url}/v1", served_model(vllm_url), log_path=tmp_path_factory.mktemp("double") / "double.log")
        d.start()
        yield d
        d.stop()
