"""llmrouter: a fast, local-first LLM router."""

__version__ = "0.1.0"
