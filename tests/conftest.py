# Import the package before anything imports numpy, so its thread settings apply (see tui_llm/__init__.py).
import pytest

import tui_llm  # noqa: F401
from tui_llm.engine.run.run_dir import RunDir


@pytest.fixture
def locked(tmp_path):
    """A run directory with its lock held, as by a training process (the test writes its records)."""
    run = RunDir(tmp_path / "run")
    run.create()
    run.lock()
    yield run
    run.close()
