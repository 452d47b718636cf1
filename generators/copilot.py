"""A search copilot: many user sessions sharing one large system prompt.

Each user turn runs the steps of a search copilot (Bing-Chat-like):
1. `rewrite`: the LLM turns the latest message (with the conversation so far) into a
   standalone search query;
2. `retrieve`: BM25 over a local passage corpus, a real retrieval step whose time the recorder
   measures as the answer's wait;
3. `answer`: the LLM answers with the numbered passages and the search query in its prompt.
Follow-up turns come after a think time (exponential, recorded as the next rewrite's wait),
and sessions arrive as a Poisson process. Every call starts with the same system prompt, so
prefix sharing is high, as in the reference.

Reference (Parrot, "Bing Chat" copilot): a 5,107-token shared system prompt; prompts of
5.2k-7.5k tokens (mean 6.2k); outputs of 100-800 tokens; Poisson arrivals.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TypedDict

from langgraph.graph import END, START, StateGraph

from mrw.generators import corpus
from mrw.generators.base import Env, param, poisson_arrivals, register
from mrw.generators.recorder import WorkflowSpec
from mrw.generators.retrieval import BM25

FOLLOW_UPS = [
    "Can you show a complete example?",
    "What are the common mistakes with that?",
    "How did this change between Python versions?",
    "Can you explain that more simply?",
    "Is there a faster way to do it?",
    "How would I test that?",
    "Why does it work that way?",
    "What does the documentation say exactly?",
]
REWRITE_STEP = ("[Internal step] Write the search query for the latest user message: one standalone line, "
                "no explanation.")


@dataclass
class CopilotParams:
    workflows: int = param(8, "User sessions (one workflow each).", reference="288 prompts")
    rate: float = param(0.5, "Poisson arrival rate of sessions per second (0: all at once).",
                        reference="0.25-32 req/s")
    followups: int = param(1, "Follow-up turns per session after the first query.")
    think_time_s: float = param(3.0, "Mean think time before a follow-up (exponential), recorded as wait.")
    system_tokens: int = param(5107, "Size of the shared system prompt in tokens (rules + pinned passages).",
                               reference="5,107")
    top_k: int = param(5, "Passages retrieved per query.")
    answer_tokens_min: int = param(100, "Shortest answer (tokens, exact unless --natural-lengths).",
                                   reference="100-800")
    answer_tokens_max: int = param(800, "Longest answer (tokens); each answer's length is uniform in the range.",
                                   reference="100-800")
    rewrite_tokens: int = param(16, "Length of the rewritten search query (tokens, exact).")
    corpus: str | None = param(None, "Folder of .txt/.md/.rst files to retrieve from instead of the bundled passages.")
    queries: str | None = param(None, 'JSON-lines file of user queries ({"text": ...}) instead of the bundled ones.')


def system_prompt(tokenizer, target_tokens: int, passages: list[corpus.Document]) -> str:
    """The bundled rules, then pinned passages (a fixed choice) until `target_tokens`."""
    import random

    text = corpus.data_text("copilot-system.md")
    pinned = list(range(len(passages)))
    random.Random("copilot-system").shuffle(pinned)
    parts = [text]
    n = tokenizer.count(text)
    for i in pinned:
        if n >= target_tokens:
            break
        block = f"\n[pinned] ({passages[i].title}) {passages[i].text}\n"
        parts.append(block)
        n += tokenizer.count(block)
    return "".join(parts)


class TurnState(TypedDict):
    turns: list[str]  # the user's messages, in order
    turn: int
    history: list[dict]
    query: str  # the rewritten search query (raw model output)
    results: str
    answer_tokens: list[int]
    think_s: list[float]


def copilot_graph(env: Env, p: CopilotParams, system: str, index: BM25, docs: list[corpus.Document]):
    llm = env.llm

    async def rewrite(s: TurnState) -> dict:
        user = s["turns"][s["turn"]]
        msgs = [{"role": "system", "content": system}, *s["history"],
                {"role": "user", "content": f"{user}\n\n{REWRITE_STEP}"}]
        return {"query": await llm.chat(msgs, p.rewrite_tokens, exact=True)}

    def retrieve(s: TurnState) -> dict:
        hits = index.top(s["query"], p.top_k)
        return {"results": "\n".join(f"[{n}] ({docs[i].title}) {docs[i].text}" for n, i in enumerate(hits, 1))}

    async def answer(s: TurnState) -> dict:
        user = s["turns"][s["turn"]]
        content = f"{user}\n\nSearch query: {s['query']}\nPassages:\n{s['results']}"
        msgs = [{"role": "system", "content": system}, *s["history"], {"role": "user", "content": content}]
        out = await llm.chat(msgs, s["answer_tokens"][s["turn"]], exact=True)
        history = [*s["history"], {"role": "user", "content": user}, {"role": "assistant", "content": out}]
        return {"history": history, "turn": s["turn"] + 1}

    async def think(s: TurnState) -> dict:
        await asyncio.sleep(s["think_s"][s["turn"]])  # the user reads and types
        return {}

    def more(s: TurnState) -> str:
        return "think" if s["turn"] < len(s["turns"]) else END

    g = StateGraph(TurnState)
    for name, fn in (("rewrite", rewrite), ("retrieve", retrieve), ("answer", answer), ("think", think)):
        g.add_node(name, fn)
    g.add_edge(START, "rewrite")
    g.add_edge("rewrite", "retrieve")
    g.add_edge("retrieve", "answer")
    g.add_conditional_edges("answer", more, ["think", END])
    g.add_edge("think", "rewrite")
    return g.compile()


@register("copilot", "Search copilot sessions sharing one large system prompt (rewrite, retrieve, answer).",
          CopilotParams)
def plan(p: CopilotParams, env: Env, prefix: str = "copilot", first_at_start: bool = True) -> list[WorkflowSpec]:
    if not 1 <= p.answer_tokens_min <= p.answer_tokens_max:
        raise corpus.DataError("--answer-tokens-min must be >= 1 and <= --answer-tokens-max")
    if p.rewrite_tokens < 8:
        raise corpus.DataError("--rewrite-tokens must be at least 8 (shorter queries cannot be told apart in prompts)")
    docs = corpus.passages(p.corpus)
    queries = [r["text"] for r in corpus.jsonl(p.queries, "copilot-queries.jsonl", "--queries", ("text",))]
    system = system_prompt(env.tokenizer, p.system_tokens, docs)
    index = BM25([f"{d.title} {d.text}" for d in docs])
    graph = copilot_graph(env, p, system, index, docs)
    arrivals = poisson_arrivals(p.workflows, p.rate, env.rng("copilot", "arrivals"), first_at_start=first_at_start)
    specs = []
    for k in range(p.workflows):
        rng = env.rng("copilot", "session", k)
        turns = [rng.choice(queries)]
        for _ in range(p.followups):
            turns.append(rng.choice(FOLLOW_UPS) if rng.random() < 0.7 else rng.choice(queries))
        inputs = {
            "turns": turns, "turn": 0, "history": [], "query": "", "results": "",
            "answer_tokens": [rng.randint(p.answer_tokens_min, p.answer_tokens_max) for _ in turns],
            "think_s": [round(rng.expovariate(1 / p.think_time_s), 3) if p.think_time_s > 0 else 0.0 for _ in turns],
        }
        tags = {"kind": "copilot", "turns": len(turns)}
        specs.append(WorkflowSpec(f"{prefix}-{k:03d}", graph, inputs, arrivals[k], tags))
    return specs
