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
ParamTensors), so AdamW, the all-reduce and checkpoints work on it as on a full model's. Per base
matrix that has adapted modules, in the order qkvw, attprojw, fcw, fcprojw, the A matrices of its
modules stacked (they read the same input, so one product makes all their x Aᵀ), then each
module's B, every tensor stacked over the L layers:

    tensor (in the buffer)   shape                 what
    <matrix>.lora_A          (L, k r, in)          rows [j r, (j+1) r): the A of the j-th adapted module
    <module>.lora_B          (L, out, r)           per adapted module of that matrix, in table order

e.g. Llama, all-linear: qkvw.lora_A (L, 3r, C), self_attn.q_proj.lora_B (L, QD, r), ..k_proj..,
..v_proj.., attprojw.lora_A (L, r, QD), self_attn.o_proj.lora_B (L, C, r), fcw.lora_A (L, 2r, C),
mlp.gate_proj.lora_B, mlp.up_proj.lora_B (L, F, r), fcprojw.lora_A (L, r, F), mlp.down_proj.lora_B.
Each module also has a view `<module>.lora_A` (L, r, in) of its rows of the stacked A. A
module's A and B of layer l are contiguous (r, in) and (out, r) matrices, exactly as PEFT keys them:

    base_model.model.<layers>.{l}.<module>.lora_A.weight   = views["<module>.lora_A"][l]   (r, in)
    base_model.model.<layers>.{l}.<module>.lora_B.weight   = views["<module>.lora_B"][l]   (out, r)

with <layers> = `model.layers` (Llama family) or `transformer.h` (GPT-2); `peft_tensor_map` lists
(key, view) in PEFT's order. PEFT stores A and B in these shapes for GPT-2's Conv1D modules too
(its fan_in_fan_out only transposes the merged delta); our GPT-2 matrices are (out, in) like
nn.Linear, so the merged weight is W + s B A for both architectures (HF GPT-2 files store its
transpose).
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


def adapted(config: GPTConfig | LlamaConfig, lora: LoraConfig) -> dict[str, list[Site]]:
    """{base matrix: its adapted modules, in table order}, matrices in layout order."""
    groups: dict[str, list[Site]] = {}
    for site in sites(config):
        if site.module in lora.targets:
            groups.setdefault(site.matrix, []).append(site)
    return groups


def param_shapes(config: GPTConfig | LlamaConfig, lora: LoraConfig) -> list[tuple[str, tuple[int, ...]]]:
    """The adapters' tensors in layout order (module docstring)."""
    L, r = config.num_layers, lora.rank
    shapes: list[tuple[str, tuple[int, ...]]] = []
    for matrix, group in adapted(config, lora).items():
        shapes.append((matrix + ".lora_A", (L, len(group) * r, group[0].in_features)))
        shapes += [(site.module + ".lora_B", (L, site.out_features, r)) for site in group]
    return shapes


def num_parameters(config: GPTConfig | LlamaConfig, lora: LoraConfig) -> int:
    return sum(math.prod(shape) for _, shape in param_shapes(config, lora))


class LoraParams(ParamTensors):
    """Named views into the adapters' flat float32 buffer: the tensors of param_shapes, plus each
    module's A (`<module>.lora_A`, its rows of the stacked A)."""

    def __init__(self, config: GPTConfig | LlamaConfig, lora: LoraConfig, flat: np.ndarray | None = None):
        super().__init__(config, flat, shapes=param_shapes(config, lora))
        self.lora = lora
        self.groups = adapted(config, lora)
        r = lora.rank
        for matrix, group in self.groups.items():
            stacked = self.views[matrix + ".lora_A"]
            for j, site in enumerate(group):
                self.views[site.module + ".lora_A"] = stacked[:, j * r:(j + 1) * r]

    def modules(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(module, A (L, r, in), B (L, out, r)) of every adapted module, in table order."""
        return [(site.module, self.views[site.module + ".lora_A"], self.views[site.module + ".lora_B"])
                for group in self.groups.values() for site in group]


def peft_tensor_map(params: LoraParams) -> list[tuple[str, np.ndarray]]:
    """(PEFT's key, the (r, in) or (out, r) view) of every adapter matrix, layer by layer."""
    cfg, prefix = params.config, layers_prefix(params.config)
    return [(f"base_model.model.{prefix}.{l}.{module}.{name}.weight", view[l])
            for l in range(cfg.num_layers) for module, A, B in params.modules() for name, view in (("lora_A", A),
                                                                                                    ("lora_B", B))]


def init_adapters(params: LoraParams, seed: int) -> None:
    """PEFT's init: every A ~ U(-1/√in, 1/√in) (kaiming_uniform_ with a = √5), every B = 0."""
    rng = np.random.default_rng(seed)
    for _, A, B in params.modules():
        bound = np.float32(1.0 / math.sqrt(A.shape[-1]))
        for layer in range(A.shape[0]):
            rng.random(out=A[layer], dtype=np.float32)
            A[layer] *= np.float32(2.0) * bound
            A[layer] -= bound
        B[:] = 0.0


def u_shapes(config: GPTConfig | LlamaConfig, lora: LoraConfig, layers: int, n: int) -> dict[str, tuple[int, ...]]:
    """What a training forward keeps for the backward: u (layers, n, k r) per base matrix with k
    adapted modules."""
    return {matrix: (layers, n, len(group) * lora.rank) for matrix, group in adapted(config, lora).items()}


def scratch_nbytes(config: GPTConfig | LlamaConfig, lora: LoraConfig, n: int) -> int:
    """The most memory Adapters' scratch buffers take in a training step of n rows."""
    chosen = [site for site in sites(config) if site.module in lora.targets]
    largest_in = max((site.in_features for site in chosen), default=0)
    largest_out = max((site.out_features for site in chosen), default=0)
    r = lora.rank
    k = max((len(group) for group in adapted(config, lora).values()), default=0)
    total = 2 * n * k * r + k * r * max(largest_in, largest_out)     # u, du; a gradient's scratch
    if lora.dropout > 0:
        total += n * largest_in                               # dropout(x)
    if blas.matmul_add is None:
        total += n * max(largest_in, largest_out)             # products added through a buffer
    return 4 * total


# ---------------------------------------------------------------------------------------
# The adapters at work: a model calls forward/backward at each base product.

class Adapters:
    """The adapters of a model: their parameters, gradients and the per-product math.

    The model keeps, per layer and base matrix, u = s · dropout(x) Aᵀ (N, k r) from the training
    forward (the backward's dB needs it; Activations allocates it). Dropout masks are not kept:
    they are rebuilt from `step_key` (set by the trainer for each micro-batch) in the backward.
    Without dropout the k modules of a matrix share one x Aᵀ product and one dA and dx product.
    """

    def __init__(self, config: GPTConfig | LlamaConfig, lora: LoraConfig, flat: np.ndarray | None = None):
        self.config = config
        self.lora = lora
        self.params = LoraParams(config, lora, flat)
        self.grads: LoraParams | None = None
        self.scale = np.float32(lora.scale)
        every = [site.module for site in sites(config)]
        # per matrix: its modules with their index in sites() (which keys their dropout masks)
        self.by_matrix = {matrix: [(every.index(site.module), site) for site in group]
                          for matrix, group in self.params.groups.items()}
        self.step_key = 0          # dropout masks of the current micro-batch (Trainer sets it)
        self._scratch: dict[str, np.ndarray] = {}

    @property
    def num_parameters(self) -> int:
        return int(self.params.flat.size)

    def allocate_grads(self) -> LoraParams:
        if self.grads is None:
            self.grads = LoraParams(self.config, self.lora)
        return self.grads

    def u_shapes(self, layers: int, n: int) -> dict[str, tuple[int, ...]]:
        return u_shapes(self.config, self.lora, layers, n)

    def _buffer(self, name: str, rows: int, cols: int) -> np.ndarray:
        """A scratch (rows, cols) float32 matrix, grown on demand and reused."""
        buf = self._scratch.get(name)
        if buf is None or buf.size < rows * cols:
            buf = self._scratch[name] = np.empty(rows * cols, np.float32)
        return buf[:rows * cols].reshape(rows, cols)

    def _dropped(self, x: np.ndarray, layer: int, index: int, key: int) -> np.ndarray:
        """dropout(x) of module `index` (a scratch)."""
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
        its rows. kept: where u goes per matrix (a training forward), None: scratch (sampling).
        key: the dropout masks' key (None: no dropout, as in validation and sampling)."""
        group = self.by_matrix.get(matrix)
        if not group:
            return
        r, views = self.lora.rank, self.params.views
        u = self.keep(x, matrix, layer, kept, key)
        for j, (_, site) in enumerate(group):
            self._add_product(out[:, site.rows[0]:site.rows[1]], u[:, j * r:(j + 1) * r],
                              views[site.module + ".lora_B"][layer].T)

    def keep(self, x: np.ndarray, matrix: str, layer: int, kept: dict[str, np.ndarray] | None,
             key: int | None) -> np.ndarray:
        """u = s · dropout(x) Aᵀ (N, k r) of `matrix`'s adapters, into kept[matrix] (or a scratch):
        the first half of forward, all that a recomputing backward needs of a product it skips."""
        group = self.by_matrix[matrix]
        r, views = self.lora.rank, self.params.views
        u = kept[matrix] if kept is not None else self._buffer("u", x.shape[0], len(group) * r)   # (N, k r)
        if key is None or self.lora.dropout == 0:
            np.matmul(x, views[matrix + ".lora_A"][layer].T, out=u)               # all k modules at once
        else:
            for j, (index, site) in enumerate(group):
                np.matmul(self._dropped(x, layer, index, key), views[site.module + ".lora_A"][layer].T,
                          out=u[:, j * r:(j + 1) * r])
        u *= self.scale
        return u

    def backward(self, dx: np.ndarray | None, dout: np.ndarray, x: np.ndarray, matrix: str, layer: int,
                 kept: dict[str, np.ndarray], key: int | None, accumulate: bool) -> None:
        """From dout (N, rows of `matrix`), the gradient of the product's output: dA and dB of its
        adapters (written, or added with accumulate), and their terms added to dx (N, in) unless
        None. With u = s x Aᵀ: dB = doutᵀ u, du = s dout B, dA = duᵀ x, dx += du A."""
        group = self.by_matrix.get(matrix)
        if not group:
            return
        g, views, r = self.allocate_grads(), self.params.views, self.lora.rank
        u = kept[matrix]
        du = self._buffer("du", x.shape[0], len(group) * r)
        scratch = self._buffer("grad", 1, views[matrix + ".lora_A"][layer].size + max(
            views[site.module + ".lora_B"][layer].size for _, site in group)).reshape(-1)
        for j, (_, site) in enumerate(group):
            d = dout[:, site.rows[0]:site.rows[1]]                                  # (N, out)
            name = site.module + ".lora_B"
            matmul_grad(g.views[name][layer], d.T, u[:, j * r:(j + 1) * r], scratch, accumulate)
            np.matmul(d, views[name][layer], out=du[:, j * r:(j + 1) * r])
        du *= self.scale
        if key is None or self.lora.dropout == 0:
            matmul_grad(g.views[matrix + ".lora_A"][layer], du.T, x, scratch, accumulate)
            if dx is not None:
                self._add_product(dx, du, views[matrix + ".lora_A"][layer])
            return
        for j, (index, site) in enumerate(group):  # each module's own mask, on its input and its input gradient
            name = site.module + ".lora_A"
            matmul_grad(g.views[name][layer], du[:, j * r:(j + 1) * r].T, self._dropped(x, layer, index, key), scratch,
                        accumulate)
            if dx is not None:
                part = self._buffer("dropped", *x.shape)
                np.matmul(du[:, j * r:(j + 1) * r], views[name][layer], out=part)
                dropout_apply(part, part, self.lora.dropout, np.uint64(dropout_key(key, layer, index)))
                dx += part


def merge_into(base: ParamTensors, adapters: LoraParams) -> None:
    """W += s B A for every adapted module, in place on a float32 base (a merged export: the
    plain model that computes what the base with its adapters computes, without dropout)."""
    if base.flat.dtype != np.float32:
        raise ValueError("merge_into needs float32 base weights (widen a bf16 base first)")
    scale = np.float32(adapters.lora.scale)
    for group in adapters.groups.values():
        for site in group:
            W = base.views[site.matrix]                                          # (L, rows, in)
            A, B = adapters.views[site.module + ".lora_A"], adapters.views[site.module + ".lora_B"]
            for layer in range(W.shape[0]):
                delta = B[layer] @ A[layer]                                      # (out, r) @ (r, in)
                delta *= scale
                W[layer, site.rows[0]:site.rows[1]] += delta
