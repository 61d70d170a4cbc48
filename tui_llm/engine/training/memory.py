"""How much memory a training run needs, before it allocates any of it.

    estimate = estimate_memory(model_config, B, T, lora=None, base_dtype="fp32", recompute=False)
    estimate.total, estimate.to_dict()      # bytes: weights, adapters, gradients, optimizer, activations

The parts, in bytes:

    weights      the model: 4 per parameter (fp32), 2 for a frozen bf16 base plus its float32
                 scratch (the largest layer matrix) and widened norms/biases (models/weights.py)
    adapters     LoRA's A and B: 4 per adapter parameter (0 without LoRA)
    gradients    4 per trained parameter (the adapters', or every weight's)
    optimizer    AdamW's m and v: 8 per trained parameter (with --zero 1, this rank's slice)
    activations  what the forward keeps for the backward at (B, T) (Activations.nbytes_for of the
                 model, plus LoRA's kept terms and scratch); `activations_recompute` is the same
                 with --recompute (only each layer's input kept), whichever the run uses
    total        the sum, with the activations of the run's own choice

A run whose total exceeds the machine's memory (machine.physical_memory_bytes) is refused in one
line by check_run_fits, which names the options that would make it fit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from tui_llm.engine.kernels import blas
from tui_llm.engine.machine import NotEnoughMemory, physical_memory_bytes
from tui_llm.engine.models import gpt2, llama
from tui_llm.engine.models.build import num_parameters
from tui_llm.engine.models.gpt2_config import GPTConfig
from tui_llm.engine.models.llama_config import LlamaConfig, param_shapes
from tui_llm.engine.models.lora import ALL_LINEAR, LoraConfig, resolve_targets, scratch_nbytes, u_shapes
from tui_llm.engine.models.lora import num_parameters as lora_parameters

GiB = 2**30


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    adapters: int
    gradients: int
    optimizer: int
    activations: int              # without recompute
    activations_recompute: int    # with recompute
    recompute: bool               # which of the two this run uses
    total: int

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """One line: the parts in GiB."""
        def gib(n):
            return f"{n / GiB:,.2f}"
        acts = f"activations {gib(self.activations_recompute if self.recompute else self.activations)} " \
               f"({gib(self.activations)} without recompute, {gib(self.activations_recompute)} with)"
        adapters = f", adapters {gib(self.adapters)}" if self.adapters else ""
        return (f"{gib(self.total)} GiB: weights {gib(self.weights)}{adapters}, gradients {gib(self.gradients)}, "
                f"AdamW {gib(self.optimizer)}, {acts}")


def estimate_memory(config: GPTConfig | LlamaConfig, B: int, T: int, *, lora: LoraConfig | None = None,
                    base_dtype: str = "fp32", recompute: bool = False, optimizer_shards: int = 1) -> MemoryEstimate:
    n = num_parameters(config)
    weights = n * (2 if base_dtype == "bf16" else 4)
    if base_dtype == "bf16":
        weights += 4 * _bf16_extra(config)
    adapters = lora_parameters(config, lora) if lora is not None else 0
    trained = adapters if lora is not None else n
    gradients = 4 * trained
    optimizer = 8 * -(-trained // optimizer_shards)
    if lora is None and blas.matmul_add is None:
        gradients += 4 * _largest_layer_matrix(config)  # accumulation's scratch (grad_accumulation.py)

    def activations(recompute: bool) -> int:
        kept = u_shapes(config, lora, config.num_layers, B * T) if lora is not None else None
        model = llama.Activations if isinstance(config, LlamaConfig) else gpt2.Activations
        total = model.nbytes_for(config, B, T, recompute, kept)  # type: ignore[arg-type]
        return total + (scratch_nbytes(config, lora, B * T) if lora is not None else 0)

    without, with_ = activations(False), activations(True)
    total = weights + 4 * adapters + gradients + optimizer + (with_ if recompute else without)
    return MemoryEstimate(weights=weights, adapters=4 * adapters, gradients=gradients, optimizer=optimizer,
                          activations=without, activations_recompute=with_, recompute=recompute, total=total)


def _largest_layer_matrix(config) -> int:
    if isinstance(config, LlamaConfig):
        C, F = config.channels, config.ffn_channels
        return max(config.qkv_dim * C, 2 * F * C, C * config.q_dim, C * F)
    return 4 * config.channels * config.channels


def _bf16_extra(config) -> int:
    """Elements of float32 a bf16 base adds: the widening scratch and the widened small tensors."""
    small = 0
    if isinstance(config, LlamaConfig):
        small = sum(_prod(shape) for name, shape in param_shapes(config)
                    if name not in ("wte", "lm_head", "qkvw", "attprojw", "fcw", "fcprojw"))
    else:
        L, C = config.num_layers, config.channels
        small = config.max_seq_len * C + L * (4 * C + 3 * C + C + 4 * C + C) + 2 * C
    return _largest_layer_matrix(config) + small


def _prod(shape) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def check_run_fits(config, B: int, T: int, *, lora: LoraConfig | None, base_dtype: str, recompute: bool,
                   optimizer_shards: int = 1, file_bf16: bool = False) -> MemoryEstimate:
    """The run's estimate, or NotEnoughMemory (one line) naming what would make it fit: LoRA,
    --recompute, a smaller -b or -t."""
    estimate = estimate_memory(config, B, T, lora=lora, base_dtype=base_dtype, recompute=recompute,
                               optimizer_shards=optimizer_shards)
    ram = physical_memory_bytes()
    if ram is None or estimate.total <= ram:
        return estimate

    def fits(**change: Any) -> bool:
        settings: dict[str, Any] = dict(lora=lora, base_dtype=base_dtype, recompute=recompute, B=B, T=T)
        settings.update(change)
        return estimate_memory(config, settings["B"], settings["T"], lora=settings["lora"],
                               base_dtype=settings["base_dtype"], recompute=settings["recompute"],
                               optimizer_shards=optimizer_shards).total <= ram

    options = []
    if lora is None:  # the options in the order they cost the run least
        adapters = LoraConfig(rank=16, alpha=32.0, targets=resolve_targets(ALL_LINEAR, config))
        tries: list[tuple[str, dict[str, Any]]] = [
            ("--lora-rank 16", dict(lora=adapters, base_dtype="bf16" if file_bf16 else "fp32"))]
        if not file_bf16:
            tries.append(("--lora-rank 16 --base-dtype bf16", dict(lora=adapters, base_dtype="bf16")))
        tries += [(flags + " --recompute", dict(change, recompute=True)) for flags, change in tries if not recompute]
        for flags, change in tries:
            if fits(**change):
                options.append(f"LoRA ({flags})")
                break
    elif base_dtype == "fp32" and fits(base_dtype="bf16"):
        options.append("a bf16 base (--base-dtype bf16)")
    if not recompute and fits(recompute=True):
        options.append("--recompute")
    smaller: list[tuple[str, dict[str, Any]]] = [("-b 1", dict(B=1))] if B > 1 else []
    smaller += [(f"-t {t}", dict(T=t)) for t in (T // 2, T // 4, T // 8, T // 16) if t >= 16]
    for flag, change in smaller:
        if fits(**change):
            options.append(flag)
            break
        if not recompute and fits(recompute=True, **change):
            options.append(f"{flag} --recompute")
            break
    if options:
        advice = f"; {' or '.join(options)} would make it fit"
    elif estimate_memory(config, 1, 1, base_dtype="bf16").weights > ram:
        advice = "; even its weights as bf16 do not fit"
    else:
        advice = "; no option here makes it fit"
    raise NotEnoughMemory(f"this run needs {estimate.summary()}, more than this machine's {ram / GiB:,.1f} GiB "
                          f"of memory{advice}")
