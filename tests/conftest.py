# Import the package before anything imports numpy, so its thread settings apply (see tui_llm/__init__.py).
import tui_llm  # noqa: F401
