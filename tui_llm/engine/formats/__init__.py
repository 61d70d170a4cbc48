"""Reading and writing model weights and training state, one module per format.

Everything works on a (config, flat) pair: `flat` is the contiguous float32 buffer holding the
parameter tensors in llm.c's order (models/gpt2_config.py), or in models/llama_config.py's layout when the config is a
LlamaConfig (Hugging Face llama/mistral/qwen2 dirs, checkpoints whose model_config says
"arch": "llama"). Modules:

    atomic.py       the one way files are written (atomic_write, atomic_files, atomic_write_together,
                    stale temp cleanup)
    common.py       CheckpointError and array <-> file helpers
    safetensors.py  our streaming safetensors reader/writer (F32/F16/BF16 and integer arrays)
    llmc.py         llm.c model files v1/v3/v5
    hf_gpt2.py      Hugging Face GPT-2 (mapping, config.json, local cache lookup, tokenizer files)
    hf_llama.py     Hugging Face Llama family (llama, mistral, qwen2)
    checkpoint.py   our resumable training checkpoints
    gguf.py         GGUF (llama.cpp, Ollama): write_gguf / read_gguf; gguf_file.py the bounded
                    container parser, gguf_vocab.py the tokenizer metadata, gguf_tokenizer.py that
                    tokenizer as a directory in the user's cache (imported on use: not re-exported
                    here, so `gguf` is loaded only when a GGUF file is)
    gguf_lora.py    LoRA adapters as llama.cpp's GGUF adapter file (for its --lora)
    peft.py         Hugging Face PEFT LoRA adapter directories (write_peft / read_peft)
    detect.py       load_model_weights: any of the above, by magic bytes

Every read validates sizes before allocating and refuses NaN/inf weights; every problem with a
file is a CheckpointError whose str() is one line, '<file>: <problem>'.
"""

from tui_llm.engine.formats.atomic import atomic_files, atomic_write, remove_stale_temp_files
from tui_llm.engine.formats.checkpoint import (
                                               TRAINING_FORMAT,
                                               TRAINING_MODEL_CONFIG_KEY,
                                               TRAINING_PARAMS_KEY,
                                               load_training_checkpoint,
                                               load_training_params,
                                               require,
                                               save_training_checkpoint,
                                               training_model_config,
)
from tui_llm.engine.formats.common import CheckpointError
from tui_llm.engine.formats.detect import detect_checkpoint_kind, load_model_weights
from tui_llm.engine.formats.hf_gpt2 import hf_config_dict, parse_hf_config, read_hf, write_hf
from tui_llm.engine.formats.llmc import LLMC_MAGIC, LLMC_VERSIONS, fp32_to_bf16_bits, llmc_file_nbytes, read_llmc, write_llmc

__all__ = [
    "CheckpointError", "atomic_files", "atomic_write", "detect_checkpoint_kind",
    "fp32_to_bf16_bits", "hf_config_dict", "llmc_file_nbytes",
    "load_model_weights", "load_training_checkpoint", "load_training_params", "parse_hf_config", "read_hf", "read_llmc",
    "remove_stale_temp_files", "require", "save_training_checkpoint", "training_model_config", "write_hf", "write_llmc",
    "LLMC_MAGIC", "LLMC_VERSIONS", "TRAINING_FORMAT", "TRAINING_MODEL_CONFIG_KEY", "TRAINING_PARAMS_KEY",
]
