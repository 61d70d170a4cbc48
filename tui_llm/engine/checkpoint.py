"""Reading and writing model weights and training state.

Everything here works on a (GPTConfig, flat) pair: `flat` is the contiguous float32 buffer holding
the 16 parameter tensors in llm.c's order (see config.py). Three formats:

* llm.c model files (`gpt2_124M.bin`, `model_00001000.bin`): a 256 x int32 header, then the 16
  tensors back to back. Version 3 = fp32 with the padded vocab (what train_gpt2.c loads), 5 = bf16
  padded (train_gpt2.cu), 1 = fp32 unpadded (old llm.c, llm.rust).
* Hugging Face GPT-2 (`model.safetensors` + `config.json`): same numbers, different names, and the
  four Conv1D weights stored transposed, (in, out) instead of (out, in).
* Our resumable training checkpoint: a safetensors file (params, AdamW m and v, ...) whose header
  metadata carries the step, data loader and RNG state, configs and metrics as JSON.

Every write goes to a temporary file in the target directory and is renamed into place only once
complete, so a crash or a full disk never destroys the previous file. Every read validates sizes
before allocating and refuses NaN/inf weights, raising CheckpointError with a one-line message.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
from pathlib import Path
from typing import Iterable

import numpy as np

from .config import EOT_TOKEN, GPTConfig, ParamTensors, param_shapes

LLMC_MAGIC = 20240326
LLMC_HEADER_INTS = 256  # 1,024 bytes
LLMC_VERSIONS = {1: "fp32, unpadded vocab", 3: "fp32", 5: "bf16"}
# Other llm.c files people may pass by mistake, to say what they are instead of "bad magic".
OTHER_LLMC_MAGICS = {
    20240327: "an llm.c debug state file",
    20240328: "an llm.c tokenizer file",
    20240520: "an llm.c token data file",
    20240801: "an llm.c (llama3) token data file",
    20240522: "an llm.c eval data file",
    20240527: "an llm.c optimizer state file (state_*.bin)",
}

# Values converted per chunk when encoding/decoding bf16 or scanning for NaN: bounds temporaries to a few MB.
CHUNK = 1 << 20

# The training checkpoint: which safetensors metadata marks it, and the names the trainer uses.
TRAINING_FORMAT = "tui-llm-training"
TRAINING_FORMAT_VERSION = "1"
TRAINING_PARAMS_KEY = "params"              # arrays[...]: the flat parameter buffer
TRAINING_MODEL_CONFIG_KEY = "model_config"  # meta[...]: GPTConfig.to_dict()


class CheckpointError(Exception):
    """A checkpoint cannot be read or found. str() is one line: '<file>: <problem>'."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


# ---------------------------------------------------------------------------------------
# Atomic writes


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb"):
    """Open a temporary file next to `path` for writing; on success move it into place.

    The data is flushed and fsynced, renamed over `path` (atomic on POSIX and Windows), and the
    directory fsynced so the rename itself survives a power cut. If the body raises, the temporary
    file is removed and whatever was at `path` before is left untouched.

        with atomic_write("out/config.json", "w") as f:
            json.dump(cfg, f)
    """
    path = Path(path)
    directory = path.parent  # Path("x").parent is Path("."): always a usable directory
    tmp = directory / f".{path.name}.{secrets.token_hex(4)}.tmp"
    # os.open with 0o666 lets the umask decide permissions, as a plain open() would (mkstemp forces 0600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # Windows cannot open a directory; its rename is durable enough
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories; the data itself is already synced
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------
# Small helpers shared by the readers and writers


def _write_array(f, arr: np.ndarray) -> None:
    """Write an array's raw little-endian bytes without copying it (unless it is strided or big-endian)."""
    arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    f.write(memoryview(arr.reshape(-1)).cast("B"))


def _read_exact(f, arr: np.ndarray, path) -> None:
    """Fill a contiguous array straight from the file (no intermediate bytes object)."""
    view = memoryview(arr.reshape(-1)).cast("B")
    got = f.readinto(view)
    if got != view.nbytes:
        raise CheckpointError(path, f"truncated: wanted {view.nbytes} more bytes, got {got}")


def _check_finite(path, flat: np.ndarray, names: list[tuple[str, int, int]] | None = None) -> None:
    """Raise if any value is NaN or inf, naming the tensor it is in. Scans in chunks to bound memory."""
    for start in range(0, flat.size, CHUNK):
        chunk = flat[start:start + CHUNK]
        bad = np.flatnonzero(~np.isfinite(chunk))
        if bad.size:
            index = start + int(bad[0])
            where = f"flat index {index}"
            for name, lo, hi in names or []:
                if lo <= index < hi:
                    where = f"tensor {name} (element {index - lo})"
            raise CheckpointError(path, f"non-finite value ({chunk[bad[0]]}) in {where}; refusing NaN/inf weights")


def _param_ranges(cfg: GPTConfig) -> list[tuple[str, int, int]]:
    ranges, offset = [], 0
    for name, shape in param_shapes(cfg):
        size = math.prod(shape)
        ranges.append((name, offset, offset + size))
        offset += size
    return ranges


def _file_size(path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        raise CheckpointError(path, "no such file") from None


# ---------------------------------------------------------------------------------------
# llm.c model files


def llmc_file_nbytes(cfg: GPTConfig, version: int = 3) -> int:
    """Exact size of an llm.c model file: the 1,024-byte header plus every parameter."""
    numel = sum(math.prod(shape) for _, shape in param_shapes(cfg))  # Python ints: no overflow on bad headers
    if version == 1:  # unpadded: wte has only the V real rows
        numel -= (cfg.padded_vocab_size - cfg.vocab_size) * cfg.channels
    return 4 * LLMC_HEADER_INTS + numel * (2 if version == 5 else 4)


def read_llmc(path) -> tuple[GPTConfig, np.ndarray]:
    """Load an llm.c model file (version 1, 3 or 5) into a fresh padded fp32 flat buffer."""
    size = _file_size(path)
    if size < 4 * LLMC_HEADER_INTS:
        raise CheckpointError(path, f"truncated: {size} bytes, shorter than the 1024-byte llm.c header")
    with open(path, "rb") as f:
        header = np.fromfile(f, dtype="<i4", count=LLMC_HEADER_INTS)
        magic, version = int(header[0]), int(header[1])
        if magic != LLMC_MAGIC:
            what = OTHER_LLMC_MAGICS.get(magic, "not an llm.c model file")
            raise CheckpointError(path, f"bad magic {magic} (expected {LLMC_MAGIC}): {what}")
        if version not in LLMC_VERSIONS:
            raise CheckpointError(path, f"unsupported llm.c model version {version} (readable: 1, 3, 5)")
        maxT, V, L, NH, C, Vp = (int(x) for x in header[2:8])
        if version == 1:
            Vp = 0  # v1 has no padded rows on disk; GPTConfig pads to a multiple of 128
        elif Vp < V:
            raise CheckpointError(path, f"version {version} header has padded vocab {Vp} < vocab {V}")
        try:
            cfg = GPTConfig(max_seq_len=maxT, vocab_size=V, num_layers=L, num_heads=NH,
                            channels=C, padded_vocab_size=Vp)
        except ValueError as e:
            raise CheckpointError(path, f"bad header: {e}") from None
        expected = llmc_file_nbytes(cfg, version)
        if size != expected:
            problem = "truncated" if size < expected else "has trailing bytes"
            raise CheckpointError(path, f"{problem}: {size} bytes, but the header (v{version}, L={L} C={C} "
                                        f"V={V} maxT={maxT}) implies exactly {expected}")

        # Read straight into the final buffer: one copy of the weights in memory, never two.
        n = sum(math.prod(shape) for _, shape in param_shapes(cfg))
        if version == 5:
            flat = np.empty(n, dtype=np.float32)
            bits = flat.view(np.uint32)
            chunk = np.empty(min(CHUNK, n), dtype="<u2")
            for start in range(0, n, CHUNK):
                part = chunk[:min(CHUNK, n - start)]
                _read_exact(f, part, path)
                out = bits[start:start + part.size]
                out[:] = part
                out <<= 16  # a bf16 value is the top half of the fp32 bit pattern
        else:
            flat = np.empty(n, dtype="<f4")
            wte_real, wte_padded = V * C, cfg.padded_vocab_size * C
            if version == 1:
                _read_exact(f, flat[:wte_real], path)
                flat[wte_real:wte_padded] = 0  # padded rows are zero, as train_gpt2.py exports them
                _read_exact(f, flat[wte_padded:], path)
            else:
                _read_exact(f, flat, path)
            flat = flat.astype(np.float32, copy=False)  # no-op on little-endian hosts
    _check_finite(path, flat, _param_ranges(cfg))
    return cfg, flat


def fp32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 values to bfloat16 as PyTorch does (nearest, ties to even); return the uint16 patterns."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    # Adding 0x7FFF, plus 1 when the lowest kept bit is odd, then dropping the low 16 bits rounds to
    # nearest with ties to even; overflow past the largest bf16 correctly becomes inf.
    rounded = bits + (0x7FFF + ((bits >> 16) & 1))
    out = (rounded >> 16).astype(np.uint16)
    out[np.isnan(x)] = 0x7FC0  # NaN must stay NaN (the addition could carry it into inf or flip the sign)
    return out


def write_llmc(path, cfg: GPTConfig, flat: np.ndarray, version: int = 3) -> None:
    """Write an llm.c model file: 3 = fp32 padded (train_gpt2.c), 5 = bf16 padded, 1 = fp32 unpadded."""
    if version not in LLMC_VERSIONS:
        raise ValueError(f"llm.c model version must be 1, 3 or 5, got {version}")
    ParamTensors(cfg, flat)  # validates dtype, size and contiguity
    header = np.zeros(LLMC_HEADER_INTS, dtype="<i4")
    header[:7] = [LLMC_MAGIC, version, cfg.max_seq_len, cfg.vocab_size, cfg.num_layers,
                  cfg.num_heads, cfg.channels]
    header[7] = 0 if version == 1 else cfg.padded_vocab_size  # exactly what llm.c writes
    with atomic_write(path) as f:
        _write_array(f, header)
        if version == 3:
            _write_array(f, flat)
        elif version == 1:
            _write_array(f, flat[:cfg.vocab_size * cfg.channels])   # only the V real rows of wte
            _write_array(f, flat[cfg.padded_vocab_size * cfg.channels:])
        else:
            for start in range(0, flat.size, CHUNK):
                _write_array(f, fp32_to_bf16_bits(flat[start:start + CHUNK]))


# ---------------------------------------------------------------------------------------
# safetensors, written and parsed by hand so that multi-hundred-MB arrays stream to and from disk
# (format: u64 little-endian header length, JSON header, then the raw tensor bytes back to back)

_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}
_ST_CODES = {np.dtype(t): code for code, t in _ST_DTYPES.items()}
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit


def _write_safetensors(f, tensors: list[tuple[str, np.ndarray]], metadata: dict[str, str]) -> None:
    """Stream tensors into safetensors format; arrays are written one at a time, never concatenated."""
    header: dict = {"__metadata__": metadata}
    offset = 0
    for name, arr in tensors:
        code = _ST_CODES.get(arr.dtype.newbyteorder("="))
        if code is None:
            raise ValueError(f"array {name!r} has dtype {arr.dtype}, which safetensors cannot store")
        header[name] = {"dtype": code, "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # pad with spaces (allowed by the spec) so the data is 8-byte aligned
    f.write(len(raw).to_bytes(8, "little"))
    f.write(raw)
    for _, arr in tensors:
        _write_array(f, arr)


def _read_safetensors_header(f, path) -> tuple[dict[str, tuple[np.dtype, tuple, int, int]], dict, int]:
    """Parse and validate a safetensors header: ({name: (dtype, shape, start, end)}, metadata, data_start)."""
    size = os.fstat(f.fileno()).st_size
    if size < 8:
        raise CheckpointError(path, f"truncated: {size} bytes, too short for a safetensors header")
    n = int.from_bytes(f.read(8), "little")
    if n > min(size - 8, MAX_HEADER_BYTES):
        raise CheckpointError(path, f"header length {n} does not fit in the {size}-byte file (truncated or not safetensors)")
    try:
        header = json.loads(f.read(n).decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(path, f"bad safetensors header JSON: {e}") from None
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise CheckpointError(path, "bad safetensors header: __metadata__ is not an object")

    entries = {}
    for name, info in header.items():
        try:
            dtype = np.dtype(_ST_DTYPES[info["dtype"]])
            shape = tuple(int(d) for d in info["shape"])
            start, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(path, f"bad safetensors header entry for {name!r}: {info!r}") from None
        if min(shape, default=0) < 0 or end - start != math.prod(shape) * dtype.itemsize:
            raise CheckpointError(path, f"tensor {name!r}: offsets {start}..{end} do not match shape {shape} {dtype}")
        entries[name] = (dtype, shape, start, end)

    # The tensors must tile the data section exactly: no gaps, no overlap, nothing missing or extra.
    data_start, position = 8 + n, 0
    for name, (_, _, start, end) in sorted(entries.items(), key=lambda kv: kv[1][2:]):
        if start != position:
            raise CheckpointError(path, f"tensor {name!r} starts at byte {start}, expected {position}")
        position = end
    if data_start + position != size:
        problem = "truncated" if data_start + position > size else "has trailing bytes"
        raise CheckpointError(path, f"{problem}: {size} bytes, header describes {data_start + position}")
    return entries, metadata, data_start


# ---------------------------------------------------------------------------------------
# Hugging Face GPT-2

HF_WEIGHTS = "model.safetensors"
HF_CONFIG = "config.json"
# Per-layer tensors: (HF name under h.{l}., our name, stored as Conv1D (in, out) = transposed).
_HF_LAYER_KEYS = (
    ("ln_1.weight", "ln1w", False), ("ln_1.bias", "ln1b", False),
    ("attn.c_attn.weight", "qkvw", True), ("attn.c_attn.bias", "qkvb", False),
    ("attn.c_proj.weight", "attprojw", True), ("attn.c_proj.bias", "attprojb", False),
    ("ln_2.weight", "ln2w", False), ("ln_2.bias", "ln2b", False),
    ("mlp.c_fc.weight", "fcw", True), ("mlp.c_fc.bias", "fcb", False),
    ("mlp.c_proj.weight", "fcprojw", True), ("mlp.c_proj.bias", "fcprojb", False),
)
# Per-layer attention-mask buffers older HF files contain (h.{l}.attn.bias): constants, not parameters.
_HF_IGNORED_LAYER_KEYS = ("attn.bias", "attn.masked_bias")


def _hf_tensor_map(p: ParamTensors) -> list[tuple[str, np.ndarray, bool]]:
    """Every HF tensor (name without the 'transformer.' prefix) -> our view into the flat buffer, transposed?"""
    cfg = p.config
    mapping = [("wte.weight", p.wte[:cfg.vocab_size], False),  # HF has no padded rows
               ("wpe.weight", p.wpe, False)]
    for layer in range(cfg.num_layers):
        for hf_name, name, transposed in _HF_LAYER_KEYS:
            mapping.append((f"h.{layer}.{hf_name}", p.views[name][layer], transposed))
    mapping += [("ln_f.weight", p.lnfw, False), ("ln_f.bias", p.lnfb, False)]
    return mapping


def hf_cache_dir() -> Path:
    """Where huggingface_hub keeps downloaded repos (same environment variables, same order)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "huggingface" / "hub"


def find_hf_cached(name: str) -> Path | None:
    """The snapshot directory of a model in the local HF cache holding both config.json and
    model.safetensors, or None. 'gpt2' also finds 'openai-community/gpt2' (the repo's newer name)."""
    names = [name] if "/" in name else [name, f"openai-community/{name}", f"distilbert/{name}"]
    for repo in names:
        repo_dir = hf_cache_dir() / ("models--" + repo.replace("/", "--"))
        snapshots = repo_dir / "snapshots"
        if not snapshots.is_dir():
            continue
        complete = [d for d in snapshots.iterdir() if (d / HF_CONFIG).is_file() and (d / HF_WEIGHTS).is_file()]
        # Prefer the revision refs/main points at; otherwise the most recently downloaded one.
        ref = repo_dir / "refs" / "main"
        main = snapshots / ref.read_text().strip() if ref.is_file() else None
        if main in complete:
            return main
        if complete:
            return max(complete, key=lambda d: d.stat().st_mtime)
    return None


def _hf_files(path_or_name) -> tuple[Path, Path]:
    """(config.json, model.safetensors) for a directory, a .safetensors file, or a cached model name."""
    p = Path(path_or_name).expanduser()
    if p.is_file():
        weights, config = p, p.parent / HF_CONFIG
    else:
        directory = p if p.is_dir() else find_hf_cached(str(path_or_name))
        if directory is None:
            raise CheckpointError(path_or_name, (
                f"no such file or directory, and not in the local Hugging Face cache ({hf_cache_dir()}); "
                "there is no network here: on a connected machine run `huggingface-cli download "
                f"{path_or_name} config.json model.safetensors --local-dir DIR`, copy DIR here and pass its path"))
        weights, config = directory / HF_WEIGHTS, directory / HF_CONFIG
    if not weights.is_file():
        other = [q.name for q in weights.parent.glob("*.bin")] + [q.name for q in weights.parent.glob("*.index.json")]
        hint = f" (found {', '.join(sorted(other))}: only a single model.safetensors is supported)" if other else ""
        raise CheckpointError(weights.parent, f"no {HF_WEIGHTS}{hint}")
    if not config.is_file():
        raise CheckpointError(config.parent, f"no {HF_CONFIG} next to the weights")
    return config, weights


def _hf_config(config_path: Path) -> GPTConfig:
    try:
        hf = json.loads(config_path.read_text(encoding="utf-8"))
        if hf.get("model_type", "gpt2") != "gpt2":
            raise ValueError(f"model_type is {hf['model_type']!r}, not 'gpt2'")
        # gelu_new and gelu_pytorch_tanh are both the tanh approximation our engine uses.
        if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"activation_function {hf['activation_function']!r} is not supported")
        return GPTConfig(max_seq_len=int(hf.get("n_positions", hf.get("n_ctx"))),
                         vocab_size=int(hf["vocab_size"]), num_layers=int(hf["n_layer"]),
                         num_heads=int(hf["n_head"]), channels=int(hf["n_embd"]))
    except (KeyError, TypeError, ValueError) as e:  # includes json.JSONDecodeError
        raise CheckpointError(config_path, f"not a usable GPT-2 config: {type(e).__name__}: {e}") from None


def read_hf(path_or_name) -> tuple[GPTConfig, np.ndarray]:
    """Load Hugging Face GPT-2 weights (directory, model.safetensors path, or cached model name).

    Keys may carry the 'transformer.' prefix (GPT2LMHeadModel) or not (GPT2Model, the hub's gpt2).
    The attention-mask buffers are ignored. lm_head.weight is ignored when it equals wte (tied, as
    in every GPT-2); an untied head raises CheckpointError, because this engine always ties them and
    silently dropping the head would change the model.
    """
    from safetensors import SafetensorError, safe_open

    config_path, weights = _hf_files(path_or_name)
    cfg = _hf_config(config_path)
    p = ParamTensors(cfg)  # zero-filled, so the padded wte rows end up zero
    wanted = {name: (dest, transposed) for name, dest, transposed in _hf_tensor_map(p)}
    try:
        with safe_open(weights, framework="numpy") as f:
            keys = {k.removeprefix("transformer."): k for k in f.keys()}
            missing = [k for k in wanted if k not in keys]
            if missing:
                raise CheckpointError(weights, f"{len(missing)} GPT-2 tensors missing, e.g. {', '.join(missing[:3])}")
            unknown = [k for k in keys if k not in wanted and k != "lm_head.weight"
                       and not (k.startswith("h.") and k.split(".", 2)[-1] in _HF_IGNORED_LAYER_KEYS)]
            if unknown:
                raise CheckpointError(weights, f"unexpected tensors for GPT-2, e.g. {', '.join(unknown[:3])}")
            for name, (dest, transposed) in wanted.items():
                tensor = f.get_tensor(keys[name])  # one tensor at a time keeps the peak memory low
                expected = dest.T.shape if transposed else dest.shape
                if tensor.shape != expected:
                    raise CheckpointError(weights, f"{keys[name]} has shape {tensor.shape}, config implies {expected}")
                dest[...] = tensor.T if transposed else tensor  # Conv1D (in, out) -> Linear (out, in)
            if "lm_head.weight" in keys:
                head = f.get_tensor(keys["lm_head.weight"])
                if head.shape != (cfg.vocab_size, cfg.channels) or not np.array_equal(head, p.wte[:cfg.vocab_size]):
                    raise CheckpointError(weights, "lm_head.weight differs from wte.weight (untied output "
                                                   "head); this engine ties them, so it cannot load this model")
    except SafetensorError as e:
        raise CheckpointError(weights, f"not a valid safetensors file: {e}") from None
    except TypeError as e:  # e.g. a bf16 tensor, which numpy cannot represent
        raise CheckpointError(weights, f"unsupported tensor: {e}") from None
    _check_finite(weights, p.flat, _param_ranges(cfg))
    return cfg, p.flat


def hf_config_dict(cfg: GPTConfig) -> dict:
    """A GPT-2 config.json for transformers' GPT2LMHeadModel (values as in OpenAI's gpt2 config)."""
    eot = EOT_TOKEN if cfg.vocab_size > EOT_TOKEN else None  # a custom small vocab has no GPT-2 EOT
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "activation_function": "gelu_new",
        "n_ctx": cfg.max_seq_len,
        "n_positions": cfg.max_seq_len,
        "n_embd": cfg.channels,
        "n_head": cfg.num_heads,
        "n_layer": cfg.num_layers,
        "n_inner": None,  # 4 * n_embd
        "vocab_size": cfg.vocab_size,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        # Our trainer uses no dropout; zero keeps a HF fine-tune of the export behaving the same.
        "attn_pdrop": 0.0, "embd_pdrop": 0.0, "resid_pdrop": 0.0,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "use_cache": True,
        "torch_dtype": "float32",
    }


def write_hf(directory, cfg: GPTConfig, flat: np.ndarray) -> None:
    """Export model.safetensors + config.json that transformers' GPT2LMHeadModel.from_pretrained loads.

    Keys use GPT2LMHeadModel's 'transformer.' prefix, Conv1D weights are transposed back to (in, out)
    and wte loses its padded rows; lm_head is left out (tied). Each file is written atomically, weights
    first, so config.json never describes weights that are not there yet. Other files in the
    directory (e.g. tokenizer files) are left alone.
    """
    p = ParamTensors(cfg, flat)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # Transposed tensors are strided views here; _write_array copies them one layer at a time.
    tensors = [("transformer." + name, view.T if transposed else view)
               for name, view, transposed in _hf_tensor_map(p)]
    with atomic_write(directory / HF_WEIGHTS) as f:
        _write_safetensors(f, tensors, {"format": "pt"})  # transformers refuses files without format
    with atomic_write(directory / HF_CONFIG, "w") as f:
        json.dump(hf_config_dict(cfg), f, indent=2)
        f.write("\n")


# ---------------------------------------------------------------------------------------
# Resumable training checkpoints


def save_training_checkpoint(path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Atomically write arrays (params, AdamW m and v, ...) and JSON-able meta to one safetensors file.

    Arrays are streamed from their own memory to the file, so saving a d12 run adds only a few MB
    of memory. The trainer stores the flat params under "params" and GPTConfig.to_dict() under
    meta["model_config"], which is what load_model_weights reads back.
    """
    metadata = {"format": TRAINING_FORMAT, "format_version": TRAINING_FORMAT_VERSION,
                "meta": json.dumps(meta)}  # raises TypeError for non-JSON-able meta before any file exists
    with atomic_write(path) as f:
        _write_safetensors(f, list(arrays.items()), metadata)


def load_training_checkpoint(path, names: Iterable[str] | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Read a training checkpoint into fresh arrays: all of them, or only `names` (which must exist)."""
    _file_size(path)  # a clear "no such file" error
    with open(path, "rb") as f:
        entries, metadata, data_start = _read_safetensors_header(f, path)
        if metadata.get("format") != TRAINING_FORMAT:
            raise CheckpointError(path, "not a tui-llm training checkpoint (safetensors metadata has no "
                                        f"format={TRAINING_FORMAT!r})")
        if metadata.get("format_version") != TRAINING_FORMAT_VERSION:
            raise CheckpointError(path, f"training checkpoint format version {metadata.get('format_version')!r} "
                                        f"is not {TRAINING_FORMAT_VERSION!r}")
        try:
            meta = json.loads(metadata["meta"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(path, f"bad training metadata: {type(e).__name__}: {e}") from None
        names = list(entries) if names is None else list(names)
        missing = [name for name in names if name not in entries]
        if missing:
            raise CheckpointError(path, f"missing arrays: {', '.join(missing)} (has {', '.join(entries) or 'none'})")
        arrays = {}
        for name in names:
            dtype, shape, start, _ = entries[name]
            arr = np.empty(shape, dtype=dtype.newbyteorder("<"))
            f.seek(data_start + start)
            _read_exact(f, arr, path)
            arr = arr.astype(dtype, copy=False)  # no-op on little-endian hosts
            if arr.dtype.kind == "f":
                try:
                    _check_finite(path, arr.reshape(-1))
                except CheckpointError as e:
                    raise CheckpointError(path, f"array {name!r}: {e.problem}") from None
            arrays[name] = arr
    return arrays, meta


# ---------------------------------------------------------------------------------------
# One entry point for "give me a model, whatever this is"


def detect_checkpoint_kind(path) -> str:
    """'llmc', 'hf' or 'training', from the magic bytes of a file or the contents of a directory."""
    p = Path(path)
    if p.is_dir():
        if (p / HF_CONFIG).is_file() and (p / HF_WEIGHTS).is_file():
            return "hf"
        raise CheckpointError(path, f"directory without {HF_CONFIG} + {HF_WEIGHTS}: not a Hugging Face model")
    size = _file_size(path)
    with open(p, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(path, f"only {size} bytes: not a model file")
        magic = int.from_bytes(head[:4], "little")
        if magic == LLMC_MAGIC:
            return "llmc"
        if magic in OTHER_LLMC_MAGICS:
            raise CheckpointError(path, f"this is {OTHER_LLMC_MAGICS[magic]}, not a model file")
        # safetensors: a u64 header length that fits in the file, then a JSON object.
        n = int.from_bytes(head, "little")
        if 0 < n <= min(size - 8, MAX_HEADER_BYTES) and f.read(1) == b"{":
            f.seek(0)
            _, metadata, _ = _read_safetensors_header(f, path)
            return "training" if metadata.get("format") == TRAINING_FORMAT else "hf"
    raise CheckpointError(path, "unrecognised file: neither an llm.c model file nor safetensors")


def load_model_weights(path_or_name) -> tuple[GPTConfig, np.ndarray, str]:
    """Load weights from an llm.c file, a HF directory/file/cached name, or a training checkpoint.

    Returns (config, flat, description), the description being one line for the UI and logs.
    """
    if not os.path.exists(path_or_name):  # not a path: a model name in the HF cache (or an error saying so)
        cfg, flat = read_hf(path_or_name)
        return cfg, flat, f"Hugging Face GPT-2 {path_or_name} from the local cache ({_millions(cfg)} params)"
    kind = detect_checkpoint_kind(path_or_name)
    if kind == "llmc":
        cfg, flat = read_llmc(path_or_name)
        with open(path_or_name, "rb") as f:
            version = int(np.fromfile(f, dtype="<i4", count=2)[1])
        return cfg, flat, f"llm.c model file {path_or_name} (v{version}, {LLMC_VERSIONS[version]}, {_millions(cfg)} params)"
    if kind == "hf":
        cfg, flat = read_hf(path_or_name)
        return cfg, flat, f"Hugging Face GPT-2 {path_or_name} ({_millions(cfg)} params)"
    arrays, meta = load_training_checkpoint(path_or_name, names=[TRAINING_PARAMS_KEY])
    try:
        cfg = GPTConfig(**meta[TRAINING_MODEL_CONFIG_KEY])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(path_or_name, f"training checkpoint has no usable model config: {e}") from None
    flat = arrays[TRAINING_PARAMS_KEY]
    try:
        ParamTensors(cfg, flat)
    except ValueError as e:
        raise CheckpointError(path_or_name, f"params do not match the model config: {e}") from None
    step = meta.get("step", "?")
    return cfg, flat, f"training checkpoint {path_or_name} (step {step}, {_millions(cfg)} params)"


def _millions(cfg: GPTConfig) -> str:
    n = sum(math.prod(s) for _, s in param_shapes(cfg))
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,}"
