"""Shared pytest fixtures. Replay fixtures (one vLLM server per session, a small trace) live
in conftest_replay.py until the lead's launcher-based `vllm_server` fixture replaces them."""

from conftest_replay import free_port, long_trace, replay_model_dir, small_trace, vllm_url  # noqa: F401
