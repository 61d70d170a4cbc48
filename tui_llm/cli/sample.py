"""`tui-llm sample --init-from MODEL`: generate text from a model (the KV-cache sampler)."""

from __future__ import annotations

from tui_llm.cli.chat import add_chat_options
from tui_llm.cli.headless import safe_text
from tui_llm.cli.parser import EXIT_OK, SAMPLE_LEN, SEED, Parser, UsageError


def sample_parser() -> Parser:
    p = Parser(prog="tui-llm sample", description="Generate text from a model (KV-cache sampler).")
    p.add_argument("--init-from", required=True, metavar="MODEL",
                   help="our run directory or checkpoint, llm.c .bin, Hugging Face dir or cached name, GGUF "
                        "file, or a PEFT LoRA adapter directory (sampled with the adapter applied)")
    p.add_argument("--base", metavar="MODEL",
                   help="the base model of a PEFT adapter given as --init-from (default: the one it names)")
    p.add_argument("--prompt", default="", help="text to continue (default: start from end-of-text)")
    p.add_argument("--sample-len", type=int, default=SAMPLE_LEN, help=f"tokens to generate (default {SAMPLE_LEN})")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1.0)")
    p.add_argument("--top-k", type=int, default=0, help="0 = all tokens (default 0)")
    p.add_argument("--seed", type=int, default=SEED, help=f"random seed (default {SEED})")
    p.add_argument("--num-samples", type=int, default=1, help="how many samples (default 1)")
    p.add_argument("--threads", type=int, default=0, help="threads (default 0 = all cores)")
    p.add_argument("--tokenizer", metavar="DIR|NAME|GGUF",
                   help="the model's tokenizer (default: the one recorded with it)")
    p.add_argument("--chat", metavar="QUESTION",
                   help="ask one question with the model's chat template and print the reply (tui-llm chat's one-shot form)")
    add_chat_options(p)
    return p


def cmd_sample(argv) -> int:
    args = sample_parser().parse_args(argv)
    from tui_llm.engine.training.run_config import RunConfig

    RunConfig(sample_len=args.sample_len, temperature=args.temperature, top_k=args.top_k, seed=args.seed,
              threads=args.threads).validate()
    if args.num_samples <= 0:
        raise UsageError(f"--num-samples must be positive, got {args.num_samples}")
    if args.chat is not None:
        return _sample_chat(args)
    chat_only = [flag for flag, value in (("--chat-template", args.chat_template), ("--system", args.system)) if value]
    if chat_only:
        raise UsageError(f"{' and '.join(chat_only)}: only with --chat QUESTION")
    import numpy as np

    from tui_llm.engine.api import load_model
    from tui_llm.engine.machine import set_threads
    from tui_llm.engine.models.llama import LlamaConfig
    from tui_llm.engine.tokenizers.lookup import load_tokenizer
    from tui_llm.engine.training.model_source import is_adapter_source
    from tui_llm.engine.training.sampler import Sampler

    if args.base is not None and not is_adapter_source(args.init_from):
        raise UsageError("--base is the base model of a PEFT adapter given as --init-from")
    model = load_model(args.init_from, tokenizer=args.tokenizer, base=args.base)  # adapters applied
    name, tokenizer_dir = model.name, model.tokenizer_dir
    if isinstance(model.config, LlamaConfig) and tokenizer_dir is None:
        raise UsageError(f"{args.init_from}: no tokenizer.json with this Llama model; give --tokenizer DIR")
    set_threads(args.threads)
    sampler = Sampler(model, load_tokenizer(tokenizer_dir))   # load_model made a GGUF's into a directory
    rng = np.random.default_rng(args.seed)
    for i in range(args.num_samples):
        result = sampler.generate(args.prompt, args.sample_len, temperature=args.temperature, top_k=args.top_k, rng=rng)
        print(f"--- sample {i + 1} from {safe_text(name)} ({len(result.token_ids)} tokens, {result.tok_per_s:.1f} tok/s)")
        print(safe_text(result.full_text, keep_newlines=True), flush=True)
    return EXIT_OK


def _sample_chat(args) -> int:
    """One question, one reply per sample (each from the same conversation), streamed to stdout."""
    if args.prompt:
        raise UsageError("--prompt and --chat: give one (--chat renders the question with the chat template)")
    if not args.chat.strip():
        raise UsageError("--chat: the question is empty")
    import numpy as np

    from tui_llm.cli.chat import load_chat
    from tui_llm.engine.training.chat import Conversation

    name, chat = load_chat(args)
    asked = Conversation(system=args.system).ask(args.chat)
    rng = np.random.default_rng(args.seed)
    for i in range(args.num_samples):
        if args.num_samples > 1:
            print(f"--- reply {i + 1} from {safe_text(name)}", flush=True)
        chat.reply(asked, args.sample_len, args.temperature, args.top_k, rng,
                   on_text=lambda piece: print(safe_text(piece, keep_newlines=True), end="", flush=True))
        print(flush=True)
    return EXIT_OK
