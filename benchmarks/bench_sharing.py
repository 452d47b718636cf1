"""Throughput of the sharing path: anonymise, synthesise prompts, pack, unpack+verify.

    .venv/bin/python benchmarks/bench_sharing.py [--workflows 200] [--out benchmarks/results/sharing.json]

Builds a text trace (chains of 5 calls with a 2,000-word shared system prompt and the
running output spliced in), tokenised with the tiny local model's tokenizer, then times each
step and reports calls/s and tokens/s (and MB/s for the archive steps) plus peak RSS.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import tempfile
import time
from pathlib import Path

from mrw.anonymize import anonymize, load_tokenizer, prompt_token_ids
from mrw.models import cache_dir, tiny_model
from mrw.trace import Call, Message, Trace, Workflow, dump, new_header

WORDS = ("energy latency cache block token batch prefill decode prompt output agent workflow graph "
         "summary search answer review test plan code queue power memory").split()


def build(n_wf: int, tok) -> Trace:
    rng = random.Random(0)
    system = " ".join(rng.choices(WORDS, k=2000))
    wfs, outs = [], {}
    for w in range(n_wf):
        calls = []
        for i in range(5):
            cid = f"w{w}.c{i}"
            body = [{"text": " ".join(rng.choices(WORDS, k=300))}]
            if i:
                body = [{"text": "So far: "}, {"ref": f"w{w}.c{i-1}"}] + body
            out = " ".join(rng.choices(WORDS, k=60))
            outs[cid] = out
            calls.append(Call(id=cid, node="step", deps=[f"w{w}.c{i-1}"] if i else [], output=out, output_tokens=60,
                              messages=[Message("system", [{"text": system}]), Message("user", body)],
                              t_issue=w * 1.0 + i, t_end=w * 1.0 + i + 0.5))
        wfs.append(Workflow(f"w{w}", w * 1.0, calls))
    t = Trace(new_header("bench", recorded_against={"model": "tiny-llama"}), wfs)
    for _, c in t.calls():
        c.input_tokens = len(prompt_token_ids(c, outs, tok))
    return t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workflows", type=int, default=200)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/sharing.json"))
    a = ap.parse_args()
    tok = load_tokenizer(tiny_model(cache_dir() / "models" / "tiny-llama").path)
    trace = build(a.workflows, tok)
    n_calls, n_tok = trace.n_calls, sum(c.input_tokens for _, c in trace.calls())
    res: dict = {"workflows": a.workflows, "calls": n_calls, "input_tokens": n_tok}

    t0 = time.perf_counter()
    anon, _ = anonymize(trace, tok, block_size=16)
    dt = time.perf_counter() - t0
    res["anonymize"] = {"s": dt, "calls_per_s": n_calls / dt, "tokens_per_s": n_tok / dt}

    from mrw import synth

    vocab = synth.Vocab.from_tokenizer(tok)
    t0 = time.perf_counter()
    for _, c in anon.calls():
        synth.prompt_for(c, 16, vocab)
    dt = time.perf_counter() - t0
    res["synth_token_ids"] = {"s": dt, "calls_per_s": n_calls / dt, "tokens_per_s": n_tok / dt}

    from mrw.tracesets import pack, unpack, verify_dir

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "set"
        dump(trace, d / "text.json.gz")
        dump(anon, d / "anon.json.gz")
        size = sum(p.stat().st_size for p in d.iterdir())
        t0 = time.perf_counter()
        pack(d, Path(tmp) / "set.tar.gz")
        dt = time.perf_counter() - t0
        res["pack"] = {"s": dt, "MB_per_s": size / dt / 1e6, "archive_MB": (Path(tmp) / "set.tar.gz").stat().st_size / 1e6}
        t0 = time.perf_counter()
        unpack(Path(tmp) / "set.tar.gz", Path(tmp) / "got")
        rep = verify_dir(Path(tmp) / "got")
        dt = time.perf_counter() - t0
        assert rep.ok
        res["unpack_verify"] = {"s": dt, "MB_per_s": size / dt / 1e6}
    res["peak_rss_MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
