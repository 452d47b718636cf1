"""A small user LangGraph app for the `mrw record --graph` tests. It knows nothing of mrw: it
uses the plain openai client configured from OPENAI_BASE_URL / OPENAI_API_KEY, one node
asynchronously with streaming, two in parallel, and one synchronously without streaming."""

from __future__ import annotations

import operator
import os
from typing import Annotated, TypedDict

import openai
from langgraph.graph import END, START, StateGraph

MAX_TOKENS = int(os.environ.get("RESEARCH_MAX_TOKENS", "24"))


class State(TypedDict):
    topic: str
    outline: str
    sections: Annotated[list[str], operator.add]
    final: str


def _model() -> str:
    return os.environ.get("RESEARCH_MODEL") or openai.OpenAI().models.list().data[0].id


async def outline(s: State) -> dict:
    client = openai.AsyncOpenAI()
    stream = await client.chat.completions.create(
        model=_model(), messages=[{"role": "user", "content": f"Outline a short note about {s['topic']}."}],
        max_tokens=MAX_TOKENS, stream=True, extra_body={"min_tokens": MAX_TOKENS})
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    return {"outline": text}


async def _section(s: State, angle: str) -> dict:
    client = openai.AsyncOpenAI()
    r = await client.chat.completions.create(
        model=_model(), max_tokens=MAX_TOKENS, extra_body={"min_tokens": MAX_TOKENS},
        messages=[{"role": "system", "content": "You write one paragraph."},
                  {"role": "user", "content": f"Outline:\n{s['outline']}\n\nWrite the {angle} paragraph."}])
    return {"sections": [r.choices[0].message.content]}


async def history(s: State) -> dict:
    return await _section(s, "history")


async def uses(s: State) -> dict:
    return await _section(s, "practical uses")


def merge(s: State) -> dict:  # a sync node, non-streaming: runs in a worker thread
    client = openai.OpenAI()
    body = "\n\n".join(s["sections"])
    r = client.chat.completions.create(
        model=_model(), max_tokens=MAX_TOKENS, extra_body={"min_tokens": MAX_TOKENS},
        messages=[{"role": "user", "content": f"Join these into one note:\n\n{body}"}])
    return {"final": r.choices[0].message.content}


builder = StateGraph(State)
builder.add_node("outline", outline)
builder.add_node("history", history)
builder.add_node("uses", uses)
builder.add_node("merge", merge)
builder.add_edge(START, "outline")
builder.add_edge("outline", "history")
builder.add_edge("outline", "uses")
builder.add_edge(["history", "uses"], "merge")
builder.add_edge("merge", END)
graph = builder.compile()
