"""A MetaGPT-style software team on programming tasks, one task per workflow.

product_manager -> architect -> for each round: one engineer per file (in parallel) ->
run the tests -> one reviewer per file (in parallel) -> one reviser per file (in parallel) ->
run the tests again -> next round (the engineers start from the revised files and the
test results).

Every prompt carries the shared project context (requirement, PRD, design, the current code
of all files, the latest test output), so later roles' prompts contain earlier roles'
outputs verbatim and share a long prefix. The tool step is real: the files the model wrote
and the task's unit tests run in a subprocess with a time limit, and that time is what the
recorder measures as the next calls' wait. (A small model writes broken code; the run and
its time are what matter.)

Reference (Parrot, MetaGPT-style coding): an architect call, then 10 rounds of 4-16 parallel
per-file coder, reviewer and reviser calls whose prompts share ~13k-18k characters; outputs of
0.7k-3.5k characters.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Annotated, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.types import Send

from mrw.generators import corpus
from mrw.generators.base import Env, param, poisson_arrivals, register
from mrw.generators.recorder import WorkflowSpec

SYSTEM = ("You are a member of a small software team that writes Python 3 code. Follow the product manager's "
          "requirements and the architect's design exactly, keep code simple and correct, and answer only with "
          "what your role is asked for.")
_CODE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.S)


@dataclass
class CodingParams:
    workflows: int = param(2, "Programming tasks (one workflow each; tasks repeat when fewer exist).")
    rounds: int = param(3, "Engineer -> test -> review -> revise -> test rounds.", reference="10")
    max_files: int = param(0, "Use at most this many files of each task (0: all; bundled tasks have 4-6).",
                           reference="4-16 files")
    pm_tokens: int = param(300, "Most output tokens of the product manager (natural length).")
    architect_tokens: int = param(400, "Most output tokens of the architect (natural length).")
    code_tokens: int = param(600, "Most output tokens of an engineer or reviser (natural length).",
                             reference="0.7k-3.5k characters")
    review_tokens: int = param(200, "Most output tokens of a reviewer (natural length).")
    tool_timeout_s: float = param(10.0, "Time limit of one test run (s).")
    tasks: str | None = param(None, "JSON-lines file of tasks ({id, title, requirement, files: [{name, purpose}], test}).")
    rate: float = param(0.0, "Poisson arrival rate of workflows per second (0: all arrive at once).")


def extract_code(text: str) -> str:
    """The first fenced code block of a reply, or the whole reply."""
    m = _CODE.search(text)
    return m.group(1) if m else text


async def run_tests(files: dict[str, str], test_name: str, test_src: str, timeout_s: float) -> str:
    """Write the files and the test module to a fresh folder and run the tests in a
    subprocess. Returns a short report (exit status, time, output tail)."""
    d = tempfile.mkdtemp(prefix="mrw-code-")
    try:
        for name, text in files.items():
            with open(os.path.join(d, os.path.basename(name)), "w") as f:
                f.write(extract_code(text))
        with open(os.path.join(d, test_name), "w") as f:
            f.write(test_src)
        t0 = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-E", "-s", test_name, cwd=d, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env={"PATH": os.environ.get("PATH", ""), "PYTHONHASHSEED": "0"},
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
            status = f"exit status {proc.returncode}"
        except asyncio.TimeoutError:
            proc.kill()
            out, _ = await proc.communicate()
            status = f"killed after the {timeout_s:g} s time limit"
        dt = time.monotonic() - t0
        tail = out.decode(errors="replace")[-1500:]
        return f"$ python {test_name}\n{tail}\n[{status}, {dt:.2f} s]"
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _merge(a: dict, b: dict) -> dict:
    return {**a, **b}


class TeamState(TypedDict):
    task: dict
    files: list[dict]
    prd: str
    design: str
    round: int
    code: dict  # file -> the latest text (engineer's or reviser's reply, verbatim)
    drafts: Annotated[dict, _merge]
    reviews: Annotated[dict, _merge]
    revised: Annotated[dict, _merge]
    report: str


class FileJob(TypedDict):
    file: dict
    prompt_head: str
    extra: str


def coding_graph(env: Env, p: CodingParams):
    llm = env.llm

    def context(s: TeamState) -> str:
        files = "\n".join(f"- `{f['name']}`: {f['purpose']}" for f in s["files"])
        return (f"# Project: {s['task']['title']}\n\n## Requirement\n{s['task']['requirement']}\n\n"
                f"## Product requirements document (product manager)\n{s['prd']}\n\n"
                f"## System design (architect)\n{s['design']}\n\n## Files\n{files}\n")

    def code_section(code: dict, files: list[dict]) -> str:
        return "\n## Current code\n" + "".join(f"\n### {f['name']}\n{code.get(f['name'], '(not written yet)')}\n"
                                               for f in files)

    async def ask(prompt: str, n: int) -> str:
        return await llm.chat([{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}], n)

    async def product_manager(s: TeamState) -> dict:
        prompt = (f"# Project: {s['task']['title']}\n\n## Requirement\n{s['task']['requirement']}\n\n"
                  "## Your job\nYou are the product manager. Write a short product requirements document: "
                  "goals, user stories, and the acceptance criteria the tests will check.")
        return {"prd": await ask(prompt, p.pm_tokens)}

    async def architect(s: TeamState) -> dict:
        prompt = (f"# Project: {s['task']['title']}\n\n## Requirement\n{s['task']['requirement']}\n\n"
                  f"## Product requirements document (product manager)\n{s['prd']}\n\n"
                  "## Your job\nYou are the architect. For each file below give its classes and functions with "
                  "signatures and one line each on what they do, and how the files depend on each other.\n"
                  + "\n".join(f"- `{f['name']}`: {f['purpose']}" for f in s["files"]))
        return {"design": await ask(prompt, p.architect_tokens)}

    def to_engineers(s: TeamState) -> list[Send]:
        head = context(s)
        if s["round"] > 0:
            head += code_section(s["code"], s["files"]) + f"\n## Test results\n{s['report']}\n"
        return [Send("engineer", {"file": f, "prompt_head": head, "extra": ""}) for f in s["files"]]

    async def engineer(j: FileJob) -> dict:
        f = j["file"]
        job = (f"\n## Your job\nYou are the engineer responsible for `{f['name']}` ({f['purpose']}). "
               f"Write the complete content of `{f['name']}` in one ```python code block.")
        return {"drafts": {f["name"]: await ask(j["prompt_head"] + job, p.code_tokens)}}

    async def test_drafts(s: TeamState) -> dict:
        code = {f["name"]: s["drafts"][f["name"]] for f in s["files"]}
        return {"code": code, "report": await run_tests(code, f"test_{s['task']['id']}.py", s["task"]["test"],
                                                           p.tool_timeout_s)}

    def to_reviewers(s: TeamState) -> list[Send]:
        head = context(s) + code_section(s["code"], s["files"]) + f"\n## Test results\n{s['report']}\n"
        return [Send("reviewer", {"file": f, "prompt_head": head, "extra": ""}) for f in s["files"]]

    async def reviewer(j: FileJob) -> dict:
        f = j["file"]
        job = (f"\n## Your job\nYou are the code reviewer of `{f['name']}`. List the concrete problems "
               "(bugs, deviations from the design, failing tests) and how to fix each.")
        return {"reviews": {f["name"]: await ask(j["prompt_head"] + job, p.review_tokens)}}

    def to_revisers(s: TeamState) -> list[Send]:
        # Every reviser reads all reviews (the team's shared message pool, as in MetaGPT): the
        # revisers start together once the last review is in, and their prompts say so.
        reviews = "".join(f"\n### Review of {f['name']}\n{s['reviews'][f['name']]}\n" for f in s["files"])
        head = (context(s) + code_section(s["code"], s["files"]) + f"\n## Test results\n{s['report']}\n"
                + "\n## Reviews\n" + reviews)
        return [Send("reviser", {"file": f, "prompt_head": head, "extra": ""}) for f in s["files"]]

    async def reviser(j: FileJob) -> dict:
        f = j["file"]
        job = (f"\n## Your job\nYou are the engineer responsible for `{f['name']}`. Apply the review of "
               f"`{f['name']}` and write the complete revised `{f['name']}` in one ```python code block.")
        return {"revised": {f["name"]: await ask(j["prompt_head"] + j["extra"] + job, p.code_tokens)}}

    async def test_revised(s: TeamState) -> dict:
        code = {f["name"]: s["revised"][f["name"]] for f in s["files"]}
        report = await run_tests(code, f"test_{s['task']['id']}.py", s["task"]["test"], p.tool_timeout_s)
        return {"code": code, "report": report, "round": s["round"] + 1}

    def reviews_done(s: TeamState) -> dict:  # a barrier: fan out to revisers once all reviews are in
        return {}

    def next_round(s: TeamState):
        return to_engineers(s) if s["round"] < p.rounds else END

    g = StateGraph(TeamState)
    for name, fn in (("product_manager", product_manager), ("architect", architect), ("engineer", engineer),
                     ("test_drafts", test_drafts), ("reviewer", reviewer), ("reviews_done", reviews_done),
                     ("reviser", reviser),
                     ("test_revised", test_revised)):
        g.add_node(name, fn)
    g.add_edge(START, "product_manager")
    g.add_edge("product_manager", "architect")
    g.add_conditional_edges("architect", to_engineers, ["engineer"])
    g.add_edge("engineer", "test_drafts")
    g.add_conditional_edges("test_drafts", to_reviewers, ["reviewer"])
    g.add_edge("reviewer", "reviews_done")
    g.add_conditional_edges("reviews_done", to_revisers, ["reviser"])
    g.add_edge("reviser", "test_revised")
    g.add_conditional_edges("test_revised", next_round, ["engineer", END])
    return g.compile()


@register("coding-agents", "A MetaGPT-style team (PM, architect, per-file engineers, reviewers, revisers) "
          "with real test runs.", CodingParams)
def plan(p: CodingParams, env: Env, prefix: str = "code", first_at_start: bool = True) -> list[WorkflowSpec]:
    if p.rounds < 1:
        raise corpus.DataError("--rounds must be at least 1")
    tasks = corpus.jsonl(p.tasks, "coding-tasks.jsonl", "--tasks", ("id", "title", "requirement", "files", "test"))
    order = list(range(len(tasks)))
    env.rng("coding", "order").shuffle(order)
    graph = coding_graph(env, p)
    arrivals = poisson_arrivals(p.workflows, p.rate, env.rng("coding", "arrivals"), first_at_start=first_at_start)
    specs = []
    for k in range(p.workflows):
        task = tasks[order[k % len(tasks)]]
        files = task["files"][: p.max_files] if p.max_files > 0 else task["files"]
        inputs = {"task": task, "files": files, "prd": "", "design": "", "round": 0, "code": {},
                  "drafts": {}, "reviews": {}, "revised": {}, "report": ""}
        tags = {"kind": "coding-agents", "task": task["id"], "files": len(files), "rounds": p.rounds}
        specs.append(WorkflowSpec(f"{prefix}-{k:03d}", graph, inputs, arrivals[k], tags))
    return specs
