"""The Parrot test double against ../shared/parrot-api.md (itself checked against the live
ParrotServe): if the double drifts from Parrot, the adapter's conformance through it means
nothing. Generation goes to the session's real vLLM through the mrw backend proxy, whose
records show exactly what the double's engine sent."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from parrot_double import ParrotDouble

pytestmark = pytest.mark.vllm

OUT = {"name": "out", "is_output": True, "sampling_config": {"max_gen_length": 6, "ignore_tokenizer_eos": True, "temperature": 0.0}}
USER_ERROR = re.compile(r"^ParrotError\(type=<class '(\w+)'>, msg=(.*)\)$", re.S)


class Client:
    """A fresh connection per request: Parrot closes a connection after a plain 500."""

    def __init__(self, url: str):
        self.url = url

    def req(self, method: str, path: str, body=None, timeout: float = 30.0) -> httpx.Response:
        with httpx.Client(timeout=timeout) as c:
            return c.request(method, self.url + path, json=body)

    def session(self) -> dict:
        r = self.req("POST", "/v1/session", {"api_key": "x"})
        assert r.status_code == 200
        s = r.json()
        return {"session_id": s["session_id"], "session_auth": s["session_auth"]}

    def call(self, auth: dict, template: str, params: list, **kw) -> httpx.Response:
        return self.req("POST", "/v1/semantic_call", {**auth, "func_name": "f", "template": template, "parameters": params, **kw})

    def out_var(self, r: httpx.Response) -> str:
        assert r.status_code == 200, r.text
        return [p for p in r.json()["param_info"] if p["is_output"]][-1]["var_id"]

    def get(self, auth: dict, var_id: str, timeout: float = 60.0, criteria: str = "latency") -> httpx.Response:
        return self.req("GET", f"/v1/semantic_var/{var_id}", {**auth, "criteria": criteria}, timeout=timeout)


@pytest.fixture
def c(parrot_double: ParrotDouble) -> Client:
    return Client(parrot_double.url)


def user_error(r: httpx.Response) -> tuple[str, str]:
    assert r.status_code == 500
    body = r.json()
    assert set(body) == {"error", "traceback"}
    m = USER_ERROR.match(body["error"])
    assert m, body["error"]
    return m.group(1), m.group(2)


def plain_500(r: httpx.Response) -> None:
    assert r.status_code == 500 and r.text == "Internal Server Error"


def test_sessions_are_recycled_ints_and_delete_needs_a_body(backend_proxy, vllm_server) -> None:
    # Its own double: ids are recycled first-in first-out, so earlier tests' sessions matter.
    with ParrotDouble(f"{backend_proxy.url}/v1", vllm_server.model.name) as d:
        _sessions_are_recycled(Client(d.url))


def _sessions_are_recycled(c: Client) -> None:
    a = c.session()
    assert isinstance(a["session_id"], int) and a["session_auth"] == "1"
    plain_500(c.req("DELETE", f"/v1/session/{a['session_id']}"))  # no JSON body
    assert c.req("DELETE", f"/v1/session/{a['session_id']}", a).json() == {}
    kind, msg = user_error(c.req("DELETE", f"/v1/session/{a['session_id']}", a))
    assert (kind, msg) == ("RuntimeError", f"Session (session_id={a['session_id']}) not found.")
    b, e = c.session(), c.session()
    assert (b["session_id"], e["session_id"]) == (a["session_id"], a["session_id"] + 1)  # freed ids are reused first
    for s in (b, e):
        c.req("DELETE", f"/v1/session/{s['session_id']}", s)
    assert [c.session()["session_id"] for _ in range(2)] == [b["session_id"], e["session_id"]]  # first-in first-out


def test_execution_is_lazy_until_get(c: Client, backend_proxy) -> None:
    a = c.session()
    before = backend_proxy.count()
    var = c.out_var(c.call(a, "Say hello. {{out}}", [OUT], model_type="text"))
    time.sleep(1.0)
    assert backend_proxy.count() == before, "a submit alone must not run the call"
    r = c.get(a, var)
    assert r.status_code == 200
    rec = backend_proxy.records(before)
    assert len(rec) == 1 and rec[0]["output"] == r.json()["content"]
    assert rec[0]["completion_tokens"] == 6


def test_output_criteria_at_submit_runs_without_get(c: Client, backend_proxy) -> None:
    a = c.session()
    before = backend_proxy.count()
    c.out_var(c.call(a, "Count. {{out}}", [OUT], model_type="text", output_criteria="throughput"))
    deadline = time.monotonic() + 30
    while backend_proxy.count() == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert backend_proxy.count() == before + 1


def test_dependency_wiring_merged_user_message_and_dropped_tail(c: Client, backend_proxy) -> None:
    a = c.session()
    before = backend_proxy.count()
    va = c.out_var(c.call(a, "First. {{out}} trailing text is dropped", [OUT], model_type="text"))
    r = c.call(
        a, "Second: {{x}} and {{y}} {{out}}",
        [{"name": "x", "is_output": False, "var_id": va}, {"name": "y", "is_output": False, "value": "{{not_a_placeholder}}"}, OUT],
        model_type="text",
    )  # fmt: skip
    info = r.json()["param_info"]
    assert [p["parameter_name"] for p in info] == ["x", "y", "out"]
    assert info[0]["var_id"] == va and info[0]["var_name"] == "out"  # bound to A's output variable
    assert [p["is_output"] for p in info] == [False, False, True]
    vb = c.out_var(r)
    out_b = c.get(a, vb).json()["content"]  # GET on B alone runs A first
    recs = backend_proxy.records(before)
    assert len(recs) == 2
    first, second = recs
    assert first["request"]["messages"] == [{"role": "user", "content": "First. "}]
    out_a = c.get(a, va).json()["content"]
    assert second["request"]["messages"] == [{"role": "user", "content": f"Second: {out_a} and {{{{not_a_placeholder}}}} "}]
    assert second["output"] == out_b and first["t_end"] <= second["t_recv"]
    # Only these sampling fields reach the backend; ignore_tokenizer_eos is lost.
    assert set(second["request"]) == {"model", "messages", "temperature", "top_p", "max_tokens", "stop", "presence_penalty", "frequency_penalty"}


def test_one_output_per_call(c: Client) -> None:
    a = c.session()
    r = c.call(a, "A {{o1}} B {{o2}}", [dict(OUT, name="o1"), dict(OUT, name="o2")], model_type="text")
    assert r.status_code == 200
    v1, v2 = [p["var_id"] for p in r.json()["param_info"]]
    assert c.get(a, v1).status_code == 200
    plain_500(c.get(a, v2))


def test_sampling_takes_max_gen_length_not_max_tokens(c: Client) -> None:
    a = c.session()
    bad = {"name": "out", "is_output": True, "sampling_config": {"max_tokens": 5}}
    kind, msg = user_error(c.call(a, "Hi {{out}}", [bad], model_type="text"))
    assert kind == "TypeError" and "unexpected keyword argument 'max_tokens'" in msg


def test_model_type_default_is_token_id_and_hangs_a_text_engine(c: Client) -> None:
    a = c.session()
    var = c.out_var(c.call(a, "Hello {{out}}", [OUT]))  # no model_type: "token_id"
    with pytest.raises(httpx.ReadTimeout):
        c.get(a, var, timeout=2.0)
    var = c.out_var(c.call(a, "Hello {{out}}", [OUT], model_type="text", models=["no-such-model"]))
    with pytest.raises(httpx.ReadTimeout):
        c.get(a, var, timeout=2.0)


def test_user_errors_are_json_and_internal_ones_plain(c: Client) -> None:
    a = c.session()
    assert user_error(c.get(a, "nope")) == ("ValueError", "Unknown Semantic Variable ID: nope")
    assert user_error(c.call({"session_id": 999, "session_auth": "1"}, "a {{out}}", [OUT])) == (
        "RuntimeError",
        "Session (session_id=999) not found.",
    )
    assert user_error(c.call(a, "a {{out}}", [dict(OUT, var_id="x")]))[1] == "Output parameter should not have var_id."
    both = {"name": "x", "is_output": False, "var_id": "v", "value": "w"}
    assert user_error(c.call(a, "a {{x}}{{out}}", [both, OUT]))[1] == "Parameter should not have both var_id and value."
    plain_500(c.call(a, "a {{zz}} {{out}}", [OUT], model_type="text"))  # placeholder without parameter
    plain_500(c.call(a, "a {{out}}", [OUT, OUT], model_type="text"))  # duplicate parameter
    plain_500(c.call(a, "a {{x}} {{out}}", [{"name": "x", "is_output": False, "var_id": "nope"}, OUT], model_type="text"))
    plain_500(c.call(a, "no placeholder at all", [], model_type="text"))
    plain_500(c.req("GET", "/v1/semantic_var", a))
    plain_500(c.req("GET", f"/v1/session/{a['session_id']}", a))
    assert c.req("GET", "/v1/models").status_code == 404


def test_semantic_variables_set_once_and_get_blocks(c: Client) -> None:
    a = c.session()
    var = c.req("POST", "/v1/semantic_var", {**a, "var_name": "v"}).json()["var_id"]
    with pytest.raises(httpx.ReadTimeout):
        c.get(a, var, timeout=1.0)  # empty: blocks, no server-side timeout
    assert c.req("POST", f"/v1/semantic_var/{var}", {**a, "content": "hello"}).json() == {}
    assert c.get(a, var).json() == {"content": "hello"}
    plain_500(c.req("POST", f"/v1/semantic_var/{var}", {**a, "content": "again"}))
    plain_500(c.req("GET", f"/v1/semantic_var/{var}", a))  # criteria is required


def test_latency_criteria_bounds_concurrency_to_four(c: Client, backend_proxy) -> None:
    def max_overlap(recs: list[dict]) -> int:
        events = sorted([(r["t_recv"], 1) for r in recs] + [(r["t_end"], -1) for r in recs])
        cur = best = 0
        for _, d in events:
            cur += d
            best = max(best, cur)
        return best

    for criteria, bound in (("latency", 4), ("throughput", 8)):
        a = c.session()
        before = backend_proxy.count()
        sc = {"max_gen_length": 200, "ignore_tokenizer_eos": True, "temperature": 0.0}
        # Eight calls behind one empty "gate" variable: once it is set, all are ready at once.
        gate = c.req("POST", "/v1/semantic_var", {**a, "var_name": "gate"}).json()["var_id"]
        gated = [{"name": "g", "is_output": False, "var_id": gate}, dict(OUT, sampling_config=sc)]
        vars_ = [c.out_var(c.call(a, f"Item {i}. {{{{g}}}}{{{{out}}}}", gated, model_type="text")) for i in range(8)]
        with ThreadPoolExecutor(8) as pool:
            answers = [pool.submit(c.get, a, v, 120.0, criteria) for v in vars_]  # activates all
            time.sleep(1.0)
            c.req("POST", f"/v1/semantic_var/{gate}", {**a, "content": "go"})
            assert all(f.result().status_code == 200 for f in answers)
        recs = [r for r in backend_proxy.records(before) if r["max_tokens"] == 200]
        assert len(recs) == 8
        overlap = max_overlap(recs)
        assert overlap <= bound
        if criteria == "throughput":
            assert overlap > 4, "throughput must not be held to latency's bound"


def test_session_expires_after_its_life_span(backend_proxy, vllm_server, tmp_path) -> None:
    with ParrotDouble(f"{backend_proxy.url}/v1", vllm_server.model.name, extra=["--session-life-span", "1"]) as d:
        c = Client(d.url)
        a = c.session()
        time.sleep(2.0)
        kind, msg = user_error(c.req("POST", "/v1/semantic_var", {**a, "var_name": "v"}))
        assert msg == f"Session (session_id={a['session_id']}) not found."


def test_backend_error_ends_the_whole_process(vllm_server, tmp_path) -> None:
    from mrw.launch import free_port

    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    with ParrotDouble(dead, vllm_server.model.name, log_path=tmp_path / "d.log") as d:
        c = Client(d.url)
        a = c.session()
        var = c.out_var(c.call(a, "Hi {{out}}", [OUT], model_type="text"))
        with pytest.raises(httpx.HTTPError):
            c.get(a, var, timeout=30.0)  # the openai client retries, then the engine fails fast
        assert d.proc.wait(10) == 1
        assert "Fail Fast" in (tmp_path / "d.log").read_text()
