"""mrw.generators: LangGraph workloads and the recorder that turns their LLM calls into traces."""
