"""What a headless run prints: one line per step, validation, sample and checkpoint.

    step 12/40 | loss 7.1234 | fwd 210 ms | bwd 430 ms | opt 40 ms | 3,900 tok/s | lr 1.00e-04 | grad_norm 1.234

Text that comes from files or users (model names, prompts, samples) is printed with control
characters escaped, so a crafted checkpoint cannot drive the terminal.
"""

from __future__ import annotations

import sys

from tui_llm.engine import events as ev

_ESCAPES = {i: f"\\x{i:02x}" for i in (*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0))}
_ESCAPES_KEEP_NEWLINES = {k: v for k, v in _ESCAPES.items() if chr(k) not in "\n\t"}


def safe_text(text: str, keep_newlines: bool = False) -> str:
    """`text` with control characters (ESC, CR, BEL, C1, ...) shown as \\xNN."""
    return str(text).translate(_ESCAPES_KEEP_NEWLINES if keep_newlines else _ESCAPES)


def parameters_line(event: ev.RunStarted) -> str:
    """`parameters: ...`: total and trained, and a LoRA run's adapters (a record from a file may
    lack any of the LoRA keys: they show as "?")."""
    c = event.run_config if isinstance(event.run_config, dict) else {}
    trainable = event.trainable_params or event.num_params
    if not c.get("lora_rank"):
        return f"parameters: {event.num_params:,}, all trained (full fine-tuning)"
    def number(key) -> str:
        value = c.get(key)
        return f"{value:g}" if type(value) in (int, float) else "?"
    rslora = ", rsLoRA" if c.get("use_rslora") else ""
    dropout = f", dropout {number('lora_dropout')}" if c.get("lora_dropout") else ""
    share = f" ({trainable / event.num_params:.2%})" if event.num_params else ""
    return (f"parameters: {event.num_params:,} in all, {trainable:,} trained{share}: LoRA rank {number('lora_rank')}, "
            f"alpha {number('lora_alpha')}{rslora}{dropout} on {safe_text(c.get('lora_targets', '?'))}; frozen "
            f"{safe_text(c.get('base_dtype', 'fp32'))} base")


def memory_line(event: ev.RunStarted) -> str:
    """`memory: ...`: what the run needs (the estimate made before it started)."""
    m = event.memory if isinstance(event.memory, dict) else {}

    def size(key) -> str:
        value = m.get(key, 0)
        return human_bytes(value) if type(value) is int else "?"
    if not m:
        return f"memory: {human_bytes(event.memory_bytes)} needed"
    used = "activations_recompute" if m.get("recompute") else "activations"
    adapters = f", adapters {size('adapters')}" if m.get("adapters") else ""
    return (f"memory: {size('total')} needed: weights {size('weights')}{adapters}, gradients {size('gradients')}, "
            f"AdamW {size('optimizer')}, activations {size(used)} ({size('activations')} without --recompute, "
            f"{size('activations_recompute')} with)")


def human_bytes(n: int) -> str:
    return f"{n / 2**30:,.2f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


class HeadlessPrinter:
    """Turns trainer events into the headless command's lines."""

    def __init__(self, out=None):
        self.out = out  # None: whatever sys.stdout is when a line is printed
        self.steps = 0
        self.tokens_per_step = 0
        self.compiling_shown = False

    def line(self, text: str) -> None:
        print(text, file=self.out or sys.stdout, flush=True)

    def __call__(self, event: ev.Event) -> None:
        match event:
            case ev.Compiling():
                if not self.compiling_shown:
                    self.line("compiling kernels (cached after the first run) ...")
                    self.compiling_shown = True
            case ev.RunStarted():
                self.started(event)
            case ev.TrainStep():
                masked = 0 < event.loss_tokens != self.tokens_per_step  # a loss mask: how many predictions counted
                self.line(f"step {event.step}/{self.steps} | loss {event.loss:.4f} | fwd {event.fwd_ms:,.0f} ms | "
                          f"bwd {event.bwd_ms:,.0f} ms | opt {event.opt_ms:,.0f} ms | {event.tok_per_s:,.0f} tok/s | "
                          f"lr {event.lr:.2e} | grad_norm {event.grad_norm:.3f}"
                          + (f" | loss_tokens {event.loss_tokens:,}" if masked else ""))
            case ev.Validation():
                self.line(f"val loss {event.loss:.4f} (step {event.step})")
            case ev.Sample():
                head = f"sample at step {event.step}" + (f", prompt {safe_text(repr(event.prompt))}" if event.prompt else "")
                text = safe_text(event.prompt + event.text, keep_newlines=True)
                self.line(f"{head} ({event.tok_per_s:,.0f} tok/s):\n---\n{text}\n---")
            case ev.ChatReply():
                said = f"no reply: {event.message}" if event.message else event.text
                self.line(f"chat reply at step {event.step}: {safe_text(said, keep_newlines=True)}")
            case ev.CheckpointSaved():
                self.line(f"saved checkpoint {event.path} (step {event.step}, {event.seconds:.1f} s)")
            case ev.Notice():
                self.line(("warning: " if event.level == ev.Level.WARNING else "") + safe_text(event.text))
            case ev.Error():
                print(f"error: {safe_text(event.message)}", file=sys.stderr, flush=True)
            case ev.SettingChanged():
                self.line(f"setting {safe_text(event.name)} = {safe_text(event.value)} (step {event.step})")
            case ev.Paused():
                self.line(f"paused at step {event.step}")
            case ev.Resumed():
                self.line(f"resumed at step {event.step}")
            case ev.Finished():
                lost = f"; steps since the last checkpoint are lost ({event.lost_steps})" \
                    if event.reason == ev.FinishReason.ERROR and event.lost_steps else ""
                self.line(f"finished at step {event.step} ({event.reason}){lost}")

    def started(self, event: ev.RunStarted) -> None:
        """The start-up lines. `watch --no-ui` prints them from a record in a file: a key that is
        missing or not a number shows as "?", never an exception."""
        self.steps = event.steps
        self.tokens_per_step = event.tokens_per_step
        mc, c = _Fields(event.model_config), _Fields(event.run_config)
        kv = f" / {mc['num_kv_heads']} KV" if mc.get("num_kv_heads", mc["num_heads"]) != mc["num_heads"] else ""
        ffn = f", SwiGLU {mc['ffn_channels']}" if "ffn_channels" in mc else ""
        self.line(f"model: {safe_text(event.model_name)} | {mc['num_layers']} layers, {mc['num_heads']} heads{kv}, "
                  f"{mc['channels']} channels{ffn}, max {mc['max_seq_len']} positions, vocab {mc['vocab_size']} "
                  f"(padded {mc['padded_vocab_size']})")
        self.line(parameters_line(event))
        self.line(memory_line(event))
        val = f"{safe_text(event.val_file)} ({event.val_tokens:,} tokens)" if event.val_file else "none"
        per_micro = c.number("batch_size") * c.number("seq_len") * max(event.world_size, 1)
        accum = event.tokens_per_step // per_micro if per_micro > 0 else 1
        shape = f"{c['batch_size']}x{c['seq_len']}" + (f" x {accum} micro-batches" if accum > 1 else "") \
            + (f" x {event.world_size} processes" if event.world_size > 1 else "")
        self.line(f"data: train {safe_text(event.train_file)} ({event.train_tokens:,} tokens, "
                  f"{event.batches_per_epoch:,} steps of {shape} per epoch) | val {val}")
        batch = f"{event.tokens_per_step:,} tokens per step" + (f" ({accum} micro-batches)" if accum > 1 else "") \
            + (f" over {event.world_size} processes" if event.world_size > 1 else "") \
            + (" (AdamW state split among them: --zero 1)" if c.get("zero") else "")
        start = f", resuming at step {event.step}" if event.step else ""
        lr = c.get("lr")
        lr = f"{lr:g}" if type(lr) in (int, float) else "?"
        products = ", matrix products in bf16" if c.get("matmul_dtype") == "bf16" else ""
        self.line(f"run: {safe_text(event.run_dir)} | {event.steps} steps, {batch}, lr {lr}{products}{start}")


class _Fields(dict):
    """A record's dict whose missing or non-numeric values show as "?" (config dicts from a file)."""

    def __getitem__(self, key):
        value = self.get(key)
        return value if type(value) is int else "?"

    def number(self, key) -> int:
        value = self.get(key)
        return value if type(value) is int else 0
