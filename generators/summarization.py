"""Summarization of long documents, one document per workflow.

- `chain` (refine, the default): the first call summarises chunk 0; each next call refines
  the running summary with the next chunk. A chain of as many calls as there are chunks,
  each prompt holding the previous call's output.
- `map-reduce`: one call per chunk, all in parallel (LangGraph `Send`), then one reduce call
  over all partial summaries (fan-in of every map call).

Reference (Parrot, chain summarization): arXiv papers of 8.9k-19.2k words, chunks of
512-2048 tokens, summaries of 25-100 tokens, fixed output lengths.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Annotated, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.types import Send

from mrw.generators import corpus
from mrw.generators.base import Env, param, poisson_arrivals, register
from mrw.generators.recorder import WorkflowSpec

SUMMARIZE = "Write a concise summary of the following text.\n\n{chunk}\n\nCONCISE SUMMARY:"
REFINE = (
    "Your job is to produce a final summary.\n"
    "We have provided an existing summary up to a certain point:\n{summary}\n\n"
    "We have the opportunity to refine the existing summary (only if needed) with some more context below.\n"
    "------------\n{chunk}\n------------\n"
    "Given the new context, refine the original summary. If the context isn't useful, return the original summary.\n"
    "REFINED SUMMARY:"
)
REDUCE = (
    "The following is a set of summaries of consecutive parts of one document:\n\n{summaries}\n\n"
    "Take these and distill them into a final, consolidated summary of the whole document.\n"
    "FINAL SUMMARY:"
)


@dataclass
class SummarizationParams:
    workflows: int = param(4, "Documents to summarise (one workflow each; documents repeat when fewer exist).",
                           reference="10 arXiv papers")
    mode: str = param("chain", "chain (refine) or map-reduce.", choices=("chain", "map-reduce"),
                      reference="chain; map-reduce in the mixed workload")
    chunk_tokens: int = param(1024, "Chunk size in the served model's tokens (512-2048 in the reference).",
                              reference="512-2048")
    summary_tokens: int = param(50, "Output tokens per call, exact unless --natural-lengths (25-100 in the reference).",
                                reference="25-100")
    max_chunks: int = param(0, "Use at most this many chunks of each document (0: all).")
    docs: str | None = param(None, "Folder of .txt/.md/.rst documents to use instead of the bundled ones.")
    rate: float = param(0.0, "Poisson arrival rate of workflows per second (0: all arrive at once).")


class ChainState(TypedDict):
    chunks: list[str]
    i: int
    summary: str


class MapState(TypedDict):
    chunks: list[str]
    summaries: Annotated[list[tuple[int, str]], operator.add]
    final: str


class ChunkState(TypedDict):
    index: int
    chunk: str


def chain_graph(env: Env, summary_tokens: int):
    llm = env.llm

    async def summarize(s: ChainState) -> dict:
        out = await llm.chat([{"role": "user", "content": SUMMARIZE.format(chunk=s["chunks"][0])}],
                             summary_tokens, exact=True)
        return {"summary": out, "i": 1}

    async def refine(s: ChainState) -> dict:
        prompt = REFINE.format(summary=s["summary"], chunk=s["chunks"][s["i"]])
        out = await llm.chat([{"role": "user", "content": prompt}], summary_tokens, exact=True)
        return {"summary": out, "i": s["i"] + 1}

    def more(s: ChainState) -> str:
        return "refine" if s["i"] < len(s["chunks"]) else END

    g = StateGraph(ChainState)
    g.add_node("summarize", summarize)
    g.add_node("refine", refine)
    g.add_edge(START, "summarize")
    g.add_conditional_edges("summarize", more, ["refine", END])
    g.add_conditional_edges("refine", more, ["refine", END])
    return g.compile()


def map_reduce_graph(env: Env, summary_tokens: int):
    llm = env.llm

    def fan_out(s: MapState) -> list[Send]:
        return [Send("map", {"index": i, "chunk": c}) for i, c in enumerate(s["chunks"])]

    async def map_chunk(s: ChunkState) -> dict:
        out = await llm.chat([{"role": "user", "content": SUMMARIZE.format(chunk=s["chunk"])}],
                             summary_tokens, exact=True)
        return {"summaries": [(s["index"], out)]}

    async def reduce(s: MapState) -> dict:
        parts = [text for _, text in sorted(s["summaries"])]
        prompt = REDUCE.format(summaries="\n\n".join(parts))
        return {"final": await llm.chat([{"role": "user", "content": prompt}], summary_tokens, exact=True)}

    g = StateGraph(MapState)
    g.add_node("map", map_chunk)
    g.add_node("reduce", reduce)
    g.add_conditional_edges(START, fan_out, ["map"])
    g.add_edge("map", "reduce")
    g.add_edge("reduce", END)
    return g.compile()


@register("summarization", "Chain (refine) or map-reduce summarization of long documents.", SummarizationParams)
def plan(p: SummarizationParams, env: Env, prefix: str = "sum", first_at_start: bool = True) -> list[WorkflowSpec]:
    if not 1 <= p.summary_tokens <= 4096:
        raise corpus.DataError(f"--summary-tokens {p.summary_tokens}: must be 1-4096")
    if p.chunk_tokens < 16:
        raise corpus.DataError(f"--chunk-tokens {p.chunk_tokens}: too small (the reference used 512-2048)")
    docs = corpus.documents(p.docs)
    rng = env.rng("summarization", "order")
    order = list(range(len(docs)))
    rng.shuffle(order)
    graph = chain_graph(env, p.summary_tokens) if p.mode == "chain" else map_reduce_graph(env, p.summary_tokens)
    arrivals = poisson_arrivals(p.workflows, p.rate, env.rng("summarization", "arrivals"), first_at_start=first_at_start)
    specs = []
    for k in range(p.workflows):
        doc = docs[order[k % len(docs)]]
        chunks = env.tokenizer.chunks(doc.text, p.chunk_tokens)
        if p.max_chunks > 0:
            chunks = chunks[: p.max_chunks]
        inputs = {"chunks": chunks, "i": 0, "summary": ""} if p.mode == "chain" else {"chunks": chunks, "summaries": []}
        tags = {"kind": "summarization", "mode": p.mode, "document": doc.id, "chunks": len(chunks)}
        specs.append(WorkflowSpec(f"{prefix}-{k:03d}", graph, inputs, arrivals[k], tags))
    return specs
