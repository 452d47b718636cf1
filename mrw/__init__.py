"""mrw: record, replay and measure multi-request LLM workflows (latency and energy)."""

__version__ = "0.1.0"
