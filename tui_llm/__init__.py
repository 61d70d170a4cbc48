"""tui-llm: train and fine-tune GPT-2 and Llama-family models (SmolLM2, Llama 3.x, Qwen2.5, Qwen3,
Mistral) on the CPU, from a terminal or from Python.

    import tui_llm
    trainer = tui_llm.Trainer(tui_llm.RunConfig(train_file=tui_llm.default_train_file(),  # prepared once
                                                steps=100, out_dir="runs/mine"))
    trainer.run(print)                                   # every event, as it happens
    trainer = tui_llm.Trainer.resume("runs/mine", steps=200)
    model = tui_llm.load_model("runs/mine")              # run dir, checkpoint, llm.c .bin, HF dir/name
    print(tui_llm.generate(model, "ROMEO:", sample_len=40).text)
    ids, mask = tui_llm.encode_chat("path/to/model_dir", messages)  # a conversation's tokens and loss mask
"""

import os

# Numba's kernels (OpenMP threads) and numpy's matrix products (OpenBLAS threads) take turns on
# the same cores, a few hundred times per training step. By default both pools spin for a while
# after their work is done, so each steals cores from the other: on 2 cores a GPT-2 step ran
# about 45% slower (benchmarks/step.py). Idle threads of both pools should sleep instead.
# These take effect only if set before numpy and numba start their threads, hence here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # 2**4 cycles of spinning, OpenBLAS's minimum

__version__ = "0.2.0"

_API = {
    "RunConfig": "tui_llm.engine.training.run_config", "ConfigError": "tui_llm.engine.training.run_config",
    "Trainer": "tui_llm.engine.training.trainer", "TrainingError": "tui_llm.engine.training.trainer",
    "load_model": "tui_llm.engine.api", "generate": "tui_llm.engine.api", "default_train_file": "tui_llm.engine.api",
    "Sampler": "tui_llm.engine.training.sampler", "SampleResult": "tui_llm.engine.training.sampler",
    "RunDir": "tui_llm.engine.run.run_dir",
    "encode_chat": "tui_llm.engine.tokenizers.chat_template",
    "RunWatcher": "tui_llm.engine.run.watcher", "RemoteTrainer": "tui_llm.engine.run.watcher",
    "ControlClient": "tui_llm.engine.run.channel", "ChannelError": "tui_llm.engine.run.channel",
    **dict.fromkeys(("Event", "Compiling", "RunStarted", "TrainStep", "Validation", "Sample", "CheckpointSaved",
                     "Paused", "Resumed", "Notice", "Error", "SettingChanged", "Finished", "Command", "Pause",
                     "Resume", "SampleNow", "SaveNow", "SetSetting", "Stop", "FinishReason", "SaveReason", "RunState",
                     "Level"), "tui_llm.engine.events"),
}
__all__ = sorted(_API)


def __getattr__(name: str):
    """The public API, imported on first use (so `tui-llm --help` does not compile kernels)."""
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'tui_llm' has no attribute {name!r}")
