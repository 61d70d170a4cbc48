"""tui-llm: train GPT-2-class language models on the CPU from a terminal."""

__version__ = "0.1.0"
