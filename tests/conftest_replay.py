"""Fixtures for the replay tests, over the session's one vLLM server (`vllm_server`).

Set MRW_TEST_VLLM_URL (and MRW_TEST_MODEL, the model folder it serves) to attach the replay
tests to a server you started yourself instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from mrw.trace import dump

sys.path.insert(0, str(Path(__file__).parent))
from replay_fixtures import build_trace  # noqa: E402

# Outputs long enough that a replay is still running when a test interrupts it.
LONG_OUTPUTS = (400, 800, 800, 300, 700, 700, 400)


@pytest.fixture(scope="session")
def vllm_url(request) -> str:
    """Root URL (no /v1) of the vLLM server the replay tests use."""
    url = os.environ.get("MRW_TEST_VLLM_URL")
    if url:
        return url.rstrip("/").removesuffix("/v1")
    return request.getfixturevalue("vllm_server").root_url


@pytest.fixture(scope="session")
def replay_model_dir(request) -> str:
    """The model folder behind `vllm_url` (its tokenizer counts the trace's input tokens)."""
    if os.environ.get("MRW_TEST_VLLM_URL"):
        return os.environ.get("MRW_TEST_MODEL", "/tmp/smol-hf")
    return str(request.getfixturevalue("vllm_server").model.path)


@pytest.fixture(scope="session")
def small_trace(replay_model_dir, tmp_path_factory) -> Path:
    """The 2-workflow test trace (chain + fan-out/fan-in), input tokens counted for the model."""
    p = tmp_path_factory.mktemp("trace") / "small.json"
    dump(build_trace(replay_model_dir), p)
    return p


@pytest.fixture(scope="session")
def long_trace(replay_model_dir, tmp_path_factory) -> Path:
    """Same shape with long outputs (seconds of generation): for interrupting."""
    p = tmp_path_factory.mktemp("trace") / "long.json"
    dump(build_trace(replay_model_dir, out_tokens=LONG_OUTPUTS), p)
    return p
