"""LoRA adapters (Hu et al. 2021, as Hugging Face PEFT trains them) over a frozen base model.

Each adapted linear layer W (out, in) of a transformer layer gets two small matrices, A (r, in)
and B (out, r), and computes

    y = x Wᵀ + s · (dropout(x) Aᵀ) Bᵀ          s = alpha / r   (rsLoRA: alpha / √r)

PEFT's initialisation: A Kaiming-uniform as nn.Linear draws it (a = √5: U(±1/√in)), B zero, so
the adapted model starts exactly at the base model. Only A and B train; the base (every matrix,
embedding, norm and bias) is frozen.

Where the adapters sit (module paths inside transformer layer l, as PEFT names them):

    arch    module             base matrix  its rows                 in
    llama   self_attn.q_proj   qkvw         [0, QD)                  C
            self_attn.k_proj   qkvw         [QD, QD + KVD)           C
            self_attn.v_proj   qkvw         [QD + KVD, QD + 2 KVD)   C
            self_attn.o_proj   attprojw     all C                    QD
            mlp.gate_proj      fcw          [0, F)                   C
            mlp.up_proj        fcw          [F, 2F)                  C
            mlp.down_proj      fcprojw      all C                    F
    gpt2    attn.c_attn        qkvw         all 3C                   C
            attn.c_proj        attprojw     all C                    C
            mlp.c_fc           fcw          all 4C                   C
            mlp.c_proj         fcprojw      all C                    4C

(QD = H hd, KVD = KV hd, F the SwiGLU width.) A fused base product (q/k/v, gate/up) stays one
product: the adapters of its modules each add their low-rank term into their rows of its output,
and in the backward their input-gradient terms into its input gradient.

`--lora-targets` takes PEFT's rule: a name selects every module whose path is it or ends with
"." + it, so `c_proj` is both of GPT-2's (`attn.c_proj`, `mlp.c_proj`) and `q_proj` is
`self_attn.q_proj`; `all-linear` (the default) is every module above (PEFT's "all-linear": every
linear layer but the output head).

The adapters' parameters: one flat float32 buffer (LoraParams, named views like the base's
ParamTensors), so AdamW, the all-reduce and checkpoints work on it as on a full model's. For each
targeted module, in the order of the table, two tensors stacked over the L layers:

    name                        shape           PEFT key of layer l (its [l] view, same shape)
    <module>.lora_A             (L, r, in)      base_model.model.<layers>.{l}.<module>.lora_A.weight
    <module>.lora_B             (L, out, r)     base_model.model.<layers>.{l}.<module>.lora_B.weight

with <layers> = `model.layers` (Llama family) or `transformer.h` (GPT-2). PEFT stores A and B in
these shapes for GPT-2's Conv1D modules too (its fan_in_fan_out only transposes the merged
delta); our GPT-2 matrices are (out, in) like nn.Linear, so the merged weight is W + s B A for
both architectures (HF GPT-2 files store its transpose). `peft_tensor_map` lists (key, view).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tui_llm.engine.errors import TuiLlmError
from tui_llm.engine.kernels import blas
from tui_llm.engine.kernels.grad_accumulation import matmul_grad
from tui_llm.engine.kernels.lora import dropout_apply, dropout_key
from tui_llm.engine.models.gpt2_config import GPTConfig, ParamTensors
from tui_llm.engine.models.llama_config import LlamaConfig

ALL_LINEAR = "all-linear"


class LoraError(TuiLlmError, ValueError):
    """LoRA settings that do not fit the model (an unknown target, a bad rank). str() is one line."""


@dataclass(frozen=True)
class Site:
    """One adaptable module of a transformer layer: where its rows sit in a base matrix."""
    module: str       # PEFT's module path inside the layer, e.g. "self_attn.q_proj"
    matrix: str       # the base matrix (ParamTensors name) that holds it
    rows: tuple[int, int]  # [start, end) of its output rows in that matrix
    in_features: int

    @property
    def out_features(self) -> int:
        return self.rows[1] - self.rows[0]


def sites(config: GPTConfig | LlamaConfig) -> list[Site]:
    """Every module LoRA can adapt in one transformer layer of this architecture, in layout order."""
    if isinstance(config, LlamaConfig):
        C, QD, KVD, F = config.channels, config.q_dim, config.kv_dim, config.ffn_channels
        return [Site("self_attn.q_proj", "qkvw", (0, QD), C), Site("self_attn.k_proj", "qkvw", (QD, QD + KVD), C),
                Site("self_attn.v_proj", "qkvw", (QD + KVD, QD + 2 * KVD), C),
                Site("self_attn.o_proj", "attprojw", (0, C), QD),
                Site("mlp.gate_proj", "fcw", (0, F), C), Site("mlp.up_proj", "fcw", (F, 2 * F), C),
                Site("mlp.down_proj", "fcprojw", (0, C), F)]
    C = config.channels
    return [Site("attn.c_attn", "qkvw", (0, 3 * C), C), Site("attn.c_proj", "attprojw", (0, C), C),
            Site("mlp.c_fc", "fcw", (0, 4 * C), C), Site("mlp.c_proj", "fcprojw", (0, C), 4 * C)]


def layers_prefix(config: GPTConfig | LlamaConfig) -> str:
    """Where PEFT finds transformer layer l: f"{prefix}.{l}" (after base_model.model.)."""
    return "model.layers" if isinstance(config, LlamaConfig) else "transformer.h"


def resolve_targets(spec: str, config: GPTConfig | LlamaConfig) -> tuple[str, ...]:
    """The module paths `spec` selects (comma-separated names, or all-linear), in layout order;
    LoraError naming the names that match nothing and listing the ones this model has."""
    every = [site.module for site in sites(config)]
    names = [name.strip() for name in str(spec).split(",") if name.strip()]
    if not names:
        raise LoraError("lora_targets is empty: give module names (e.g. q_proj,v_proj) or all-linear")
    if names == [ALL_LINEAR]:
        return tuple(every)
    chosen, unknown = set(), []
    for name in names:
        matched = [m for m in every if m == name or m.endswith("." + name)]
        if not matched:
            unknown.append(name)
        chosen.update(matched)
    if unknown:
        short = sorted({m.rsplit(".", 1)[1] for m in every})
        raise LoraError(f"lora_targets: this model has no {', '.join(repr(n) for n in unknown)} "
                        f"(it has {', '.join(short)}, or the paths {', '.join(every)}, or {ALL_LINEAR})")
    return tuple(m for m in every if m in chosen)


@dataclass(frozen=True)
class LoraConfig:
    rank: int                      # r
    alpha: float                   # the scale's numerator
    targets: tuple[str, ...]       # module paths (resolve_targets)
    dropout: float = 0.0           # probability an input element is dropped (training forwards only)
    use_rslora: bool = False       # s = alpha / √r instead of alpha / r

    def __post_init__(self):
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank <= 0:
            raise LoraError(f"lora_rank must be a positive whole number, got {self.rank!r}")
        if not isinstance(self.alpha, (int, float)) or isinstance(self.alpha, bool) or not math.isfinite(self.alpha) \
                or self.alpha <= 0:
            raise LoraError(f"lora_alpha must be a finite number > 0, got {self.alpha!r}")
        if not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise LoraError(f"lora_dropout must be a number in [0, 1), got {self.dropout!r}")

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

    def to_dict(self) -> dict:
        return {"rank": self.rank, "alpha": self.alpha, "targets": list(self.targets), "dropout": self.dropout,
                "use_rslora": self.use_rslora}

    @classmethod
    def from_dict(cls, d, config: GPTConfig | LlamaConfig) -> LoraConfig:
        """The inverse of to_dict (a checkpoint's), every value checked against this model (LoraError)."""
        if not isinstance(d, dict) or set(d) != {"rank", "alpha", "targets", "dropout", "use_rslora"}:
            raise LoraError(f"bad LoRA settings: {str(d)[:80]}")
        targets = d["targets"]
        every = [site.module for site in sites(config)]
        if not isinstance(targets, list) or not targets or not all(isinstance(t, str) and t in every for t in targets):
            raise LoraError(f"bad LoRA targets for this model: {str(targets)[:80]}")
        if not isinstance(d["use_rslora"], bool):
            raise LoraError(f"bad use_rslora: {d['use_rslora']!r}")
        return cls(rank=d["rank"], alpha=d["alpha"], targets=tuple(m for m in every if m in targets),
                   dropout=d["dropout"], use_rslora=d["use_rslora"])


def param_shapes(config: GPTConfig | LlamaConfig, lora: LoraConfig) -> list[tuple[str, tuple[int, ...]]]:
    """The adapters' tensors in layout order (module docstring)."""
    L, r = config.num_layers, lora.rank
    shapes: list[tuple[str, tuple[int, ...]]] = []
    for site in sites(config):
        if site.module in lora.targets:
            shapes += [(site.module + ".lora_A", (L, r, site.in_features)),
                       (site.module + ".lora_B", (L, site.out_features, r))]
    return shapes


def num_parameters(config: GPTConfig | LlamaConfig, lora: LoraConfig) -> int:
    return sum(math.prod(shape) for _, shape in param_shapes(config, lora))


class LoraParams(ParamTensors):
    """Named views (p.views["self_attn.q_proj.lora_A"], ...) into the adapters' flat float32 buffer."""

    def __init__(self, config: GPTConfig | LlamaConfig, lora: LoraConfig, flat: np.ndarray | None = None):
        super().__init__(config, flat, shapes=param_shapes(config, lora))
        self.lora = lora


def peft_tensor_map(params: LoraParams) -> list[tuple[str, np.ndarray]]:
    """(PEFT's key, the (r, in) or (out, r) view) of every adapter matrix, layer by layer."""
    cfg, prefix = params.config, layers_prefix(params.config)
    return [(f"base_model.model.{prefix}.{l}.{name}.weight", view[l])
            for l in range(cfg.num_layers) for name, view in params.items()]


def init_adapters(params: LoraParams, seed: int) -> None:
    """PEFT's init: every A ~ U(-1/√in, 1/√in) (kaiming_uniform_ with a = √5), every B = 0."""
    rng = np.random.default_rng(seed)
    for name, view in params.items():
        if name.endswith(".lora_A"):
            bound = np.float32(1.0 / math.sqrt(view.shape[-1]))
            rng.random(out=view.reshape(-1), dtype=np.float32)
            view *= np.float32(2.0) * bound
            view -= bound
        else:
            view[:] = 0.0


def u_shapes(lora: LoraConfig, layers: int, n: int) -> dict[str, tuple[int, int, int]]:
    """What a training forward keeps for the backward: u (layers, n, r) per adapted module."""
    return dict.fromkeys(lora.targets, (layers, n, lora.rank))


def scratch_nbytes(config: GPTConfig | LlamaConfig, lora: LoraConfig, n: int) -> int:
    """The most memory Adapters' scratch buffers take in a training step of n rows."""
    chosen = [site for site in sites(config) if site.module in lora.targets]
    largest_in = max((site.in_features for site in chosen), default=0)
    largest_out = max((site.out_features for site in chosen), default=0)
    r = lora.rank
    total = 2 * n * r + r * max(largest_in, largest_out)     # u, du; a gradient's scratch
    if lora.dropout > 0:
        total += n * largest_in                               # dropout(x)
    if blas.matmul_add is None:
        total += n * max(largest_in, largest_out)             # products added through a buffer
    return 4 * total


# ---------------------------------------------------------------------------------------
# The adapters at work: a model calls forward/backward at each base product.

class Adapters:
    """The adapters of a model: their parameters, gradients and the per-product math.

    The model keeps, per layer and module, u = s · dropout(x) Aᵀ (N, r) from the training forward
    (the backward's dB needs it; Activations allocates it). Dropout masks are not kept: they are
    rebuilt from `step_key` (set by the trainer for each micro-batch) in the backward.
    """

    def __init__(self, config: GPTConfig | LlamaConfig, lora: LoraConfig, flat: np.ndarray | None = None):
        self.config = config
        self.lora = lora
        self.params = LoraParams(config, lora, flat)
        self.grads: LoraParams | None = None
        self.scale = np.float32(lora.scale)
        self.by_matrix: dict[str, list[tuple[int, Site]]] = {}
        for index, site in enumerate(sites(config)):
            if site.module in lora.targets:
                self.by_matrix.setdefault(site.matrix, []).append((index, site))
        self.step_key = 0          # dropout masks of the current micro-batch (Trainer sets it)
        self._scratch: dict[str, np.ndarray] = {}

    @property
    def num_parameters(self) -> int:
        return int(self.params.flat.size)

    def allocate_grads(self) -> LoraParams:
        if self.grads is None:
            self.grads = LoraParams(self.config, self.lora)
        return self.grads

    def u_shapes(self, layers: int, n: int) -> dict[str, tuple[int, int, int]]:
        return u_shapes(self.lora, layers, n)

    def _buffer(self, name: str, rows: int, cols: int) -> np.ndarray:
        """A scratch (rows, cols) float32 matrix, grown on demand and reused."""
        buf = self._scratch.get(name)
        if buf is None or buf.size < rows * cols:
            buf = self._scratch[name] = np.empty(rows * cols, np.float32)
        return buf[:rows * cols].reshape(rows, cols)

    def _input(self, x: np.ndarray, layer: int, index: int, key: int | None) -> np.ndarray:
        """dropout(x) of this module (a scratch), or x itself without dropout."""
        if key is None or self.lora.dropout == 0:
            return x
        out = self._buffer("dropped", *x.shape)
        dropout_apply(out, x, self.lora.dropout, np.uint64(dropout_key(key, layer, index)))
        return out

    def _add_product(self, out: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
        """out += a @ b (inside the gemm where numpy's BLAS allows it)."""
        if blas.matmul_add is not None:
            blas.matmul_add(out, a, b)
        else:
            part = self._buffer("part", out.shape[0], out.shape[1])
            np.matmul(a, b, out=part)
            out += part

    def forward(self, out: np.ndarray, x: np.ndarray, matrix: str, layer: int,
                kept: dict[str, np.ndarray] | None, key: int | None) -> None:
        """out (N, rows of `matrix`) += every adapter of that matrix's s · dropout(x) Aᵀ Bᵀ, in
        its rows. kept: where u goes per module (a training forward), None: scratch (sampling).
        key: the dropout masks' key (None: no dropout, as in validation and sampling)."""
        for index, site in self.by_matrix.get(matrix, ()):
            A = self.params.views[site.module + ".lora_A"][layer]                 # (r, in)
            B = self.params.views[site.module + ".lora_B"][layer]                 # (out, r)
            u = kept[site.module] if kept is not None else self._buffer("u", x.shape[0], self.lora.rank)
            np.matmul(self._input(x, layer, index, key), A.T, out=u)               # (N, r)
            u *= self.scale
            self._add_product(out[:, site.rows[0]:site.rows[1]], u, B.T)

    def backward(self, dx: np.ndarray | None, dout: np.ndarray, x: np.ndarray, matrix: str, layer: int,
                 kept: dict[str, np.ndarray], key: int | None, accumulate: bool) -> None:
        """From dout (N, rows of `matrix`), the gradient of the product's output: dA and dB of its
        adapters (written, or added with accumulate), and their terms added to dx (N, in) unless
        None."""
        g = self.allocate_grads()
        for index, site in self.by_matrix.get(matrix, ()):
            A = self.params.views[site.module + ".lora_A"][layer]
            B = self.params.views[site.module + ".lora_B"][layer]
            d = dout[:, site.rows[0]:site.rows[1]]                                  # (N, out)
            scratch = self._buffer("grad", 1, max(A.size, B.size)).reshape(-1)
            matmul_grad(g.views[site.module + ".lora_B"][layer], d.T, kept[site.module], scratch, accumulate)
            du = self._buffer("du", x.shape[0], self.lora.rank)
            np.matmul(d, B, out=du)                                                  # (N, r)
            du *= self.scale
            xd = self._input(x, layer, index, key)
            matmul_grad(g.views[site.module + ".lora_A"][layer], du.T, xd, scratch, accumulate)
            if dx is None:
                continue
            if xd is x:
                self._add_product(dx, du, A)
            else:  # the input's gradient goes back through the same mask
                part = self._buffer("dropped", *x.shape)
                np.matmul(du, A, out=part)
                assert key is not None
                dropout_apply(part, part, self.lora.dropout, np.uint64(dropout_key(key, layer, index)))
                dx += part
