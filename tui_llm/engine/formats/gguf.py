"""GGUF model files, the format llama.cpp and Ollama run: write ours, load theirs (and ours).

    write_gguf(path, config, flat, tokenizer, outtype="f32"|"f16"|"bf16"|"q8_0", name=..., description=...,
               modelfile=True)          # and OUT.Modelfile beside it for `ollama create`, both or neither
    read_gguf(path) -> (config, flat float32, GGUFVocab, metadata)
    read_gguf_vocab(path) -> GGUFVocab          (the tokenizer only, no weights read)

Tensors are named and laid out exactly as llama.cpp's converter (convert_hf_to_gguf.py) writes
them from the Hugging Face model our export would produce, so llama.cpp loads them without help:

    GPT-2 (arch gpt2)       token_embd, position_embd, blk.N.{attn_norm, attn_qkv, attn_output,
                            ffn_norm, ffn_up, ffn_down}.{weight,bias}, output_norm; no `output`
                            (llama.cpp reuses token_embd). q/k/v stay fused: our qkvw rows are [q|k|v].
    Llama / Mistral (llama) token_embd, blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output,
                            ffn_norm, ffn_gate, ffn_up, ffn_down}.weight, output_norm, output (untied).
                            attn_q / attn_k rows are permuted: llama.cpp's llama rotates interleaved
                            pairs (x0,x1),(x2,x3)..., we and transformers rotate halves (x_i, x_{i+hd/2}).
                            llama3 RoPE scaling becomes the `rope_freqs` tensor of per-pair factors.
    Qwen2 (qwen2)           as llama plus attn_{q,k,v}.bias; not permuted (llama.cpp's qwen2 rotates halves).
    Qwen3 (qwen3)           as llama plus attn_q_norm / attn_k_norm; not permuted.

Storage types follow the converter too: 1-D tensors, norms, biases and GPT-2's position_embd stay
F32; the matrices take the chosen type (a q8_0 matrix whose rows are not a multiple of 32 falls back
to F16, as llama.cpp's converter does). q8_0 is gguf-py's quantiser, bit-exact with ggml's
quantize_row_q8_0_ref. The file (and its Modelfile) is written through atomic_write_together:
both temporaries are written and fsynced, then the Modelfile is renamed into place and the GGUF
last, so a complete GGUF always has its Modelfile beside it; any failure before that removes both
temporaries and leaves the previous files as they were.

Reading accepts what this module writes and what llama.cpp's converter writes for the same
architectures, F32/F16/BF16/Q8_0 tensors, dequantised to float32; the header is parsed with
bounds first (gguf_file.py). The tokenizer comes back as a GGUFVocab (gguf_vocab.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import (
    GGML_QUANT_VERSION,
    MODEL_TENSOR,
    TENSOR_NAMES,
    GGMLQuantizationType,
    GGUFWriter,
    LlamaFileType,
    RopeScalingType,
)
from gguf.gguf_writer import WriterState

from tui_llm.engine.formats.atomic import atomic_write_together
from tui_llm.engine.formats.common import CheckpointError, check_finite
from tui_llm.engine.formats.gguf_file import (
    READABLE_TYPES,
    GGUFContents,
    encode_chunks,
    read_contents,
    read_tensor_into,
    tensor_nbytes,
)
from tui_llm.engine.formats.gguf_vocab import GGUFVocab, modelfile_text, vocab_for_export, vocab_from_metadata
from tui_llm.engine.models.gpt2_config import GPTConfig, ParamTensors
from tui_llm.engine.models.llama_config import LlamaConfig, LlamaConfigError, LlamaParams, check_rope_scaling, rope_inv_freq

Q = GGMLQuantizationType
OUTTYPES = {"f32": (Q.F32, LlamaFileType.ALL_F32), "f16": (Q.F16, LlamaFileType.MOSTLY_F16),
            "bf16": (Q.BF16, LlamaFileType.MOSTLY_BF16), "q8_0": (Q.Q8_0, LlamaFileType.MOSTLY_Q8_0)}
ARCHS = ("gpt2", "llama", "qwen2", "qwen3")
GPT2_LAYER_NORM_EPS = 1e-5
# A Llama-family file's context length becomes max_seq_len (RoPE table rows) up to this: Llama 3.1's
# 131,072. Files that claim more (1M-token Qwen2.5, Llama 4) load with this many positions.
MAX_POSITIONS = 131072
MODELFILE_SUFFIX = ".Modelfile"
F16_MAX = 65504.0


def modelfile_path(path) -> Path:
    """Where the Ollama Modelfile of a GGUF goes: OUT.gguf -> OUT.Modelfile."""
    return Path(path).with_suffix(MODELFILE_SUFFIX)


def tensor_name(kind: MODEL_TENSOR, layer: int | None = None, suffix: str = ".weight") -> str:
    """llama.cpp's name for a tensor: tensor_name(MODEL_TENSOR.ATTN_Q, 3) == "blk.3.attn_q.weight"."""
    return TENSOR_NAMES[kind].format(bid=layer) + suffix


def gguf_arch(config, path="config") -> str:
    """The llama.cpp architecture that runs this config, or CheckpointError saying why none does."""
    if isinstance(config, GPTConfig):
        return "gpt2"
    if config.qkv_bias and config.qk_norm:
        raise CheckpointError(path, "q/k/v biases together with q/k norms: no llama.cpp architecture has both")
    if config.qkv_bias and config.q_dim != config.channels:
        raise CheckpointError(path, f"llama.cpp's qwen2 needs heads x head_dim = channels "
                                        f"({config.q_dim} != {config.channels})")
    return "qwen2" if config.qkv_bias else "qwen3" if config.qk_norm else "llama"


# ---------------------------------------------------------------------------------------
# our flat layout <-> llama.cpp's tensors

def rope_interleave(w: np.ndarray, n_head: int) -> np.ndarray:
    """q/k rows from half-split RoPE order (transformers, ours) to llama.cpp llama's interleaved
    pairs: within each head, row j of the first half and row j of the second become rows 2j, 2j+1
    (convert_hf_to_gguf.py's LlamaModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def rope_deinterleave(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of rope_interleave."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tensor_map(p) -> list[tuple[str, np.ndarray, int]]:
    """(GGUF name, view into the flat buffer, heads to interleave for RoPE or 0) for every tensor."""
    cfg, T = p.config, MODEL_TENSOR
    if isinstance(cfg, GPTConfig):
        out = [(tensor_name(T.TOKEN_EMBD), p.wte[:cfg.vocab_size], 0), (tensor_name(T.POS_EMBD), p.wpe, 0)]
        for i in range(cfg.num_layers):
            for kind, ours in ((T.ATTN_NORM, "ln1"), (T.ATTN_QKV, "qkv"), (T.ATTN_OUT, "attproj"),
                               (T.FFN_NORM, "ln2"), (T.FFN_UP, "fc"), (T.FFN_DOWN, "fcproj")):
                out += [(tensor_name(kind, i), p.views[ours + "w"][i], 0),
                        (tensor_name(kind, i, ".bias"), p.views[ours + "b"][i], 0)]
        return out + [(tensor_name(T.OUTPUT_NORM), p.lnfw, 0), (tensor_name(T.OUTPUT_NORM, None, ".bias"), p.lnfb, 0)]
    QD, KVD, F = cfg.q_dim, cfg.kv_dim, cfg.ffn_channels
    interleave = gguf_arch(cfg) == "llama"
    hq, hk = (cfg.num_heads, cfg.num_kv_heads) if interleave else (0, 0)
    out = [(tensor_name(T.TOKEN_EMBD), p.wte[:cfg.vocab_size], 0)]
    for i in range(cfg.num_layers):
        out += [(tensor_name(T.ATTN_NORM, i), p.ln1w[i], 0),
                (tensor_name(T.ATTN_Q, i), p.qkvw[i, :QD], hq),
                (tensor_name(T.ATTN_K, i), p.qkvw[i, QD:QD + KVD], hk),
                (tensor_name(T.ATTN_V, i), p.qkvw[i, QD + KVD:], 0)]
        if cfg.qkv_bias:
            out += [(tensor_name(T.ATTN_Q, i, ".bias"), p.qkvb[i, :QD], hq),
                    (tensor_name(T.ATTN_K, i, ".bias"), p.qkvb[i, QD:QD + KVD], hk),
                    (tensor_name(T.ATTN_V, i, ".bias"), p.qkvb[i, QD + KVD:], 0)]
        if cfg.qk_norm:
            out += [(tensor_name(T.ATTN_Q_NORM, i), p.qnormw[i], 0), (tensor_name(T.ATTN_K_NORM, i), p.knormw[i], 0)]
        out += [(tensor_name(T.ATTN_OUT, i), p.attprojw[i], 0),
                (tensor_name(T.FFN_NORM, i), p.ln2w[i], 0),
                (tensor_name(T.FFN_GATE, i), p.fcw[i, :F], 0),
                (tensor_name(T.FFN_UP, i), p.fcw[i, F:], 0),
                (tensor_name(T.FFN_DOWN, i), p.fcprojw[i], 0)]
    out.append((tensor_name(T.OUTPUT_NORM), p.lnfw, 0))
    if not cfg.tied_embeddings:
        out.append((tensor_name(T.OUTPUT), p.lm_head[:cfg.vocab_size], 0))
    return out


def llama3_rope_factors(cfg: LlamaConfig) -> np.ndarray:
    """The `rope_freqs` tensor llama.cpp's converter writes for llama3 RoPE scaling: per rotated
    pair, the factor its frequency is divided by (1 for short wavelengths, `factor` for long ones)."""
    unscaled = 1.0 / cfg.rope_theta ** (np.arange(0, cfg.head_dim, 2, dtype=np.float64) / cfg.head_dim)
    return (unscaled / rope_inv_freq(cfg)).astype(np.float32)


def storage_type(name: str, shape: tuple[int, ...], outtype: Q) -> Q:
    """The type llama.cpp's converter stores this tensor as, for the requested outtype."""
    if len(shape) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight") \
            or name.startswith(TENSOR_NAMES[MODEL_TENSOR.POS_EMBD]):
        return Q.F32
    if outtype == Q.Q8_0 and shape[-1] % 32:
        return Q.F16  # the converter's fallback when rows do not split into q8_0 blocks
    return outtype


# ---------------------------------------------------------------------------------------
# writing

def write_gguf(path, config, flat: np.ndarray, tokenizer=None, *, outtype: str = "f32", name: str = "tui-llm model",
               description: str = "", chat_template: str | None = None, modelfile: bool = False) -> None:
    """Write a GGUF file llama.cpp runs: weights (stored as outtype), architecture metadata and the
    tokenizer (None or GPT-2's tiktoken encoding: GPT-2's; an HFTokenizer: its tokenizer.json; a
    GGUFVocab: a loaded GGUF's). chat_template: a Jinja template, default the tokenizer's own (if
    any). modelfile: also write modelfile_path(path) for Ollama, the two together or neither.
    CheckpointError (one line) for anything GGUF or llama.cpp cannot express; nothing is written then."""
    path = Path(path)
    if modelfile and modelfile_path(path) == path:
        raise CheckpointError(path, f"a GGUF named *{MODELFILE_SUFFIX} would be its own Modelfile; name it *.gguf")
    if outtype not in OUTTYPES:
        raise CheckpointError(path, f"unknown GGUF outtype {outtype!r} (choose from {', '.join(OUTTYPES)})")
    qtype, file_type = OUTTYPES[outtype]
    arch = gguf_arch(config, path)
    p = (ParamTensors if arch == "gpt2" else LlamaParams)(config, flat)
    check_finite(path, flat)
    vocab = vocab_for_export(tokenizer, config.vocab_size, chat_template, path)

    tensors = [(n, view, heads, storage_type(n, view.shape, qtype)) for n, view, heads in tensor_map(p)]
    rope = getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type") == "llama3":  # llama.cpp reads llama3 scaling as per-pair factors, in llama only
        if arch != "llama":
            raise CheckpointError(path, f"llama3 RoPE scaling has no GGUF form for llama.cpp's {arch}")
        tensors.insert(0, (tensor_name(MODEL_TENSOR.ROPE_FREQS), llama3_rope_factors(config), 0, Q.F32))
    for n, view, _, q in tensors:  # f16 (and q8_0's f16 block scale, max/127) saturate to inf beyond 65504
        limit = {Q.F16: F16_MAX, Q.Q8_0: F16_MAX * 127}.get(q)
        if limit is not None and view.size and float(np.abs(view).max()) > limit:
            raise CheckpointError(path, f"{n} holds weights up to {float(np.abs(view).max()):.4g}, beyond what "
                                        f"{q.name} stores ({limit:.6g}); export with --outtype bf16 or f32")

    w = GGUFWriter(None, arch)
    w.add_type("model")
    w.add_name(name)
    if description:
        w.add_description(description)
    _add_hyperparameters(w, config, arch)
    w.add_file_type(file_type)
    w.add_quantization_version(GGML_QUANT_VERSION)
    vocab.add_to(w)
    for n, view, _, q in tensors:
        w.add_tensor_info(n, view.shape, np.dtype(np.float32), tensor_nbytes(view.shape, q), raw_dtype=q)

    outputs = [modelfile_path(path), path] if modelfile else [path]  # the GGUF last: its rename commits both
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write_together(outputs) as files:
            f = files[-1]
            if modelfile:
                files[0].write(modelfile_text(path.name, vocab).encode("utf-8"))
            w.fout, w.state = [f], WriterState.EMPTY  # gguf-py writes header, metadata and table into our file
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_ti_data_to_file()
            for n, view, heads, q in tensors:  # then the data, one tensor (and chunk) at a time
                w.write_padding(f, f.tell())
                written = 0
                for chunk in encode_chunks(rope_interleave(view, heads) if heads else view, q):
                    f.write(memoryview(chunk).cast("B"))
                    written += chunk.nbytes
                assert written == tensor_nbytes(view.shape, q), n
                w.write_padding(f, written)
            w.fout = None
    except OSError as e:
        raise CheckpointError(path, f"cannot write: {e.strerror or e}") from None


def _add_hyperparameters(w: GGUFWriter, cfg, arch: str) -> None:
    w.add_block_count(cfg.num_layers)
    w.add_context_length(cfg.max_seq_len)
    w.add_embedding_length(cfg.channels)
    w.add_head_count(cfg.num_heads)
    if arch == "gpt2":
        w.add_feed_forward_length(4 * cfg.channels)
        w.add_layer_norm_eps(GPT2_LAYER_NORM_EPS)
        return
    if arch == "llama":
        w.add_vocab_size(cfg.vocab_size)
    w.add_feed_forward_length(cfg.ffn_channels)
    w.add_head_count_kv(cfg.num_kv_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    if cfg.rope_scaling and cfg.rope_scaling["rope_type"] == "linear":
        w.add_rope_scaling_type(RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(cfg.rope_scaling["factor"])


# ---------------------------------------------------------------------------------------
# reading

def read_gguf(path, max_seq_len: int | None = None) -> tuple[GPTConfig | LlamaConfig, np.ndarray, GGUFVocab, dict]:
    """(config, flat float32 parameters, vocabulary, metadata) of a GGUF model file.

    max_seq_len: the longest sequence that will be used (default the file's context length, at most
    MAX_POSITIONS for the Llama family; GPT-2 always has its position_embd's rows).
    CheckpointError (one line) for a damaged file or anything this engine cannot run exactly."""
    contents = read_contents(path)
    for info in contents.tensors.values():  # name an unsupported quantisation before anything else
        if info.type not in READABLE_TYPES:
            raise CheckpointError(path, f"tensor {info.name} is {info.type.name}; only F32, F16, BF16 and Q8_0 GGUF "
                                        f"files can be loaded (convert it with llama.cpp to one of those)")
    md = contents.metadata
    config = config_from_gguf(contents, max_seq_len)
    vocab = vocab_from_metadata(md, config.vocab_size, path)
    if isinstance(config, LlamaConfig) and (vocab.bos_token_id, vocab.eos_token_id) != (None, None):
        config = LlamaConfig(**{**config.__dict__, "bos_token_id": vocab.bos_token_id,
                                "eos_token_id": vocab.eos_token_id})
    p = ParamTensors(config) if isinstance(config, GPTConfig) else LlamaParams(config)  # zeros: padded rows stay 0
    wanted = tensor_map(p)
    extra = {tensor_name(MODEL_TENSOR.OUTPUT)} if isinstance(config, GPTConfig) else set()
    if isinstance(config, LlamaConfig) and config.rope_scaling and config.rope_scaling["rope_type"] == "llama3":
        extra.add(tensor_name(MODEL_TENSOR.ROPE_FREQS))
    missing = [n for n, _, _ in wanted if n not in contents.tensors]
    unknown = [n for n in contents.tensors if n not in {w[0] for w in wanted} | extra]
    if missing or unknown:
        what = f"{len(missing)} tensors missing, e.g. {', '.join(missing[:3])}" if missing else \
            f"unexpected tensors for {md['general.architecture']}, e.g. {', '.join(unknown[:3])}"
        raise CheckpointError(path, what)
    for n, view, _ in wanted:
        if contents.tensors[n].shape != view.shape:
            raise CheckpointError(path, f"tensor {n} has shape {list(contents.tensors[n].shape)}, "
                                        f"the metadata implies {list(view.shape)}")
    with open(path, "rb") as f:
        for n, view, heads in wanted:
            info = contents.tensors[n]
            if heads:
                tmp = np.empty(view.shape, np.float32)
                read_tensor_into(f, path, info, tmp)
                view[...] = rope_deinterleave(tmp, heads)
            else:
                read_tensor_into(f, path, info, view)
        head = contents.tensors.get(tensor_name(MODEL_TENSOR.OUTPUT))
        if isinstance(config, GPTConfig) and head is not None:
            tied = head.shape == p.wte[:config.vocab_size].shape
            if tied:
                out = np.empty(head.shape, np.float32)
                read_tensor_into(f, path, head, out)
                tied = np.array_equal(out, p.wte[:config.vocab_size])
            if not tied:
                raise CheckpointError(path, "output.weight differs from token_embd.weight (an untied head): "
                                            "this engine's GPT-2 ties them, so it cannot load this model")
    return config, p.flat, vocab, md


def read_gguf_vocab(path) -> GGUFVocab:
    """Only the tokenizer of a GGUF model file (header and metadata; no tensor data is read):
    what `prepare --tokenizer MODEL.gguf` needs."""
    contents = read_contents(path)
    embd = contents.tensors.get(tensor_name(MODEL_TENSOR.TOKEN_EMBD))
    if embd is None or len(embd.shape) != 2:
        raise CheckpointError(path, "no 2-D token_embd.weight tensor")
    return vocab_from_metadata(contents.metadata, embd.shape[0], path)


def _get(md: dict, key: str, path, kind, default=None):
    """A metadata value of the given kind ("int", "float", "str"), or default when absent."""
    value = md.get(key)
    if value is None:
        if default is None:
            raise CheckpointError(path, f"GGUF metadata has no {key}")
        return default
    ok = {"int": isinstance(value, (int, np.integer)) and not isinstance(value, bool),
          "float": isinstance(value, (int, float, np.floating)) and not isinstance(value, bool),
          "str": isinstance(value, str)}[kind]
    if not ok:
        raise CheckpointError(path, f"GGUF metadata {key} is {str(value)[:40]!r}, not a single {kind}")
    if kind == "float" and float(np.float32(value)) == value:  # stored as f32: its shortest decimal (1e-05)
        return float(str(np.float32(value)))
    return value if kind == "str" else int(value) if kind == "int" else float(value)


def config_from_gguf(contents: GGUFContents, max_seq_len: int | None = None) -> GPTConfig | LlamaConfig:
    """The engine config a GGUF file's metadata and tensor shapes describe, or CheckpointError."""
    md, path = contents.metadata, contents.path
    arch = _get(md, "general.architecture", path, "str")
    if arch not in ARCHS:
        raise CheckpointError(path, f"GGUF architecture {arch!r} is not supported ({', '.join(ARCHS)})")
    embd = contents.tensors.get(tensor_name(MODEL_TENSOR.TOKEN_EMBD))
    if embd is None or len(embd.shape) != 2:
        raise CheckpointError(path, "no 2-D token_embd.weight tensor")

    def num(key, kind="int", default=None):
        return _get(md, key.format(arch=arch), path, kind, default)

    L, T, C, H = num("{arch}.block_count"), num("{arch}.context_length"), num("{arch}.embedding_length"), \
        num("{arch}.attention.head_count")
    F, V = num("{arch}.feed_forward_length"), embd.shape[0]
    if embd.shape[1] != C:
        raise CheckpointError(path, f"token_embd has {embd.shape[1]} columns, embedding_length is {C}")
    use_T = min(T, MAX_POSITIONS) if max_seq_len is None else max_seq_len
    if use_T > T:
        raise CheckpointError(path, f"sequence length {use_T} exceeds the model's context length {T}")
    try:
        if arch == "gpt2":
            eps = num("{arch}.attention.layer_norm_epsilon", "float", GPT2_LAYER_NORM_EPS)
            if abs(eps - GPT2_LAYER_NORM_EPS) > 1e-12 or F != 4 * C or num("{arch}.attention.head_count_kv",
                                                                            default=H) != H:
                raise CheckpointError(path, f"GPT-2 with layer_norm_epsilon {eps}, feed_forward_length {F}, "
                                            f"grouped heads is not what this engine runs (1e-05, 4 x {C}, none)")
            # all T positions: position_embd has T rows (GPTConfig refuses what memory cannot hold)
            return GPTConfig(max_seq_len=T, vocab_size=V, num_layers=L, num_heads=H, channels=C)
        hd = num("{arch}.attention.key_length", default=C // H if H and C % H == 0 else 0)
        if num("{arch}.attention.value_length", default=hd) != hd or num("{arch}.rope.dimension_count",
                                                                          default=hd) != hd:
            raise CheckpointError(path, "key_length, value_length and rope.dimension_count differ: partial RoPE "
                                        "and unequal key/value heads are not supported")
        scaling = _rope_scaling(contents, arch, hd, num("{arch}.rope.freq_base", "float", 10000.0))
        return LlamaConfig(
            vocab_size=V, max_seq_len=use_T, num_layers=L, num_heads=H,
            num_kv_heads=num("{arch}.attention.head_count_kv", default=H), channels=C, ffn_channels=F,
            head_dim=hd, rms_norm_eps=num("{arch}.attention.layer_norm_rms_epsilon", "float"),
            rope_theta=num("{arch}.rope.freq_base", "float", 10000.0), rope_scaling=scaling,
            tied_embeddings=tensor_name(MODEL_TENSOR.OUTPUT) not in contents.tensors,
            qkv_bias=tensor_name(MODEL_TENSOR.ATTN_Q, 0, ".bias") in contents.tensors,
            qk_norm=tensor_name(MODEL_TENSOR.ATTN_Q_NORM, 0) in contents.tensors)
    except (LlamaConfigError, ValueError) as e:
        raise CheckpointError(path, f"unusable GGUF hyperparameters: {e}") from None


def _rope_scaling(contents: GGUFContents, arch: str, head_dim: int, theta: float) -> dict | None:
    """RoPE scaling from rope.scaling.* keys (none, linear) or llama3's rope_freqs tensor."""
    md, path = contents.metadata, contents.path
    kind = md.get(f"{arch}.rope.scaling.type", "none")
    if kind == "linear":
        return {"rope_type": "linear", "factor": _get(md, f"{arch}.rope.scaling.factor", path, "float")}
    if kind != "none":
        raise CheckpointError(path, f"RoPE scaling {str(kind)[:20]!r} is not supported (none, linear, llama3)")
    freqs = contents.tensors.get(tensor_name(MODEL_TENSOR.ROPE_FREQS))
    if freqs is None:
        return None
    if freqs.shape != (head_dim // 2,) or freqs.type != Q.F32:
        raise CheckpointError(path, f"rope_freqs has shape {list(freqs.shape)} {freqs.type.name}, "
                                    f"expected [{head_dim // 2}] F32")
    with open(path, "rb") as f:
        factors = np.empty(freqs.shape, np.float32)
        read_tensor_into(f, path, freqs, factors)
    # llama3 scaling is four numbers; Llama 3.1/3.2/3.3 use low 1, high 4, original 8192 and factor 8 or 32
    scaling = {"rope_type": "llama3", "factor": float(factors.max()), "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    try:
        trial = LlamaConfig(vocab_size=1, num_layers=1, num_heads=1, channels=head_dim, ffn_channels=1,
                            head_dim=head_dim, rope_theta=theta, rope_scaling=check_rope_scaling(scaling))
    except LlamaConfigError:
        trial = None
    if trial is None or not np.allclose(llama3_rope_factors(trial), factors, rtol=1e-5, atol=0):
        raise CheckpointError(path, "rope_freqs holds RoPE factors that are not Llama 3's usual llama3 scaling "
                                    "(factor, low 1, high 4, original 8192); not supported")
    return scaling
