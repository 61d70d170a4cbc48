"""`tui-llm export --init-from MODEL OUT`: write a model as an llm.c file, a Hugging Face directory,
or a GGUF file (with an Ollama Modelfile beside it) for llama.cpp and Ollama; a LoRA run's (or a
PEFT adapter's) adapters alone as a PEFT adapter directory or llama.cpp's GGUF LoRA adapter, or
merged into their base (W + s B A) as a plain model in any of the model formats."""

from __future__ import annotations

from tui_llm.cli.headless import safe_text
from tui_llm.cli.parser import EXIT_OK, Parser, UsageError

OUTTYPES = ("f32", "f16", "bf16", "q8_0")  # formats/gguf.py OUTTYPES, named here so --help needs no gguf import


def export_parser() -> Parser:
    p = Parser(prog="tui-llm export",
               description="Write a model as an llm.c .bin file, a Hugging Face directory or a GGUF file, or a "
                           "LoRA run's adapter as a PEFT adapter directory or a GGUF LoRA adapter.")
    p.add_argument("--init-from", required=True, metavar="MODEL",
                   help="our run directory or checkpoint, llm.c .bin, Hugging Face dir/name, GGUF file, or a PEFT "
                        "adapter dir")
    p.add_argument("out", help="output file (.bin, .gguf) or directory (hf, peft)")
    p.add_argument("--to", choices=("llmc", "llmc-bf16", "llmc-v1", "hf", "gguf", "peft", "gguf-lora"), default="llmc",
                   help="llmc: version 3 fp32 (llm.c's train_gpt2.c); llmc-bf16: version 5; llmc-v1: unpadded "
                        "fp32 (llm.rust); hf: model.safetensors + config.json for transformers; gguf: one file for "
                        "llama.cpp and Ollama, with OUT.Modelfile beside it for `ollama create`; peft: a LoRA run's "
                        "adapter alone (adapter_config.json + adapter_model.safetensors for PeftModel); gguf-lora: "
                        "the adapter alone as a GGUF file for llama.cpp's --lora; a LoRA run to llmc, hf or gguf is "
                        "merged into its base (default llmc)")
    p.add_argument("--outtype", choices=OUTTYPES,
                   help="--to gguf: how the weight matrices are stored (norms and biases stay f32): f32, f16, bf16, "
                        "or q8_0 as llama.cpp quantises it (default f16, as llama.cpp's converter)")
    p.add_argument("--chat-template", metavar="FILE|chatml",
                   help="--to gguf: the chat template to ship (a .jinja file, a tokenizer_config.json, a model "
                        "directory, or chatml); default: the model's tokenizer's own")
    p.add_argument("--base", metavar="MODEL",
                   help="the base model of a PEFT adapter given as --init-from (default: the one it names)")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    return p


def cmd_export(argv) -> int:
    args = export_parser().parse_args(argv)
    for flag, value in (("--outtype", args.outtype), ("--chat-template", args.chat_template)):
        if value is not None and args.to != "gguf":
            raise UsageError(f"{flag} is for --to gguf only")
    from tui_llm.engine.training.model_source import is_adapter_source

    if is_adapter_source(args.init_from):
        return _export_adapters(args)
    if args.base is not None:
        raise UsageError("--base is the base model of a PEFT adapter given as --init-from")
    if args.to in ("peft", "gguf-lora"):
        raise UsageError(f"--to {args.to} writes a LoRA adapter, and {args.init_from} is a whole model (give a LoRA "
                         "run or a PEFT adapter directory)")
    from tui_llm.engine.run.export import check_export_destination
    from tui_llm.engine.training.model_source import load_model_source

    cfg, flat, name, tokenizer_dir = load_model_source(args.init_from)
    if args.to == "gguf":
        return export_gguf(args, cfg, flat, name, tokenizer_dir)
    _check_kind(cfg, args.to)
    check_export_destination(args.init_from, args.out, "hf" if args.to == "hf" else "llmc", force=args.force)
    _write_model(args, cfg, flat, tokenizer_dir)
    print(f"wrote {args.out} ({args.to}) from {safe_text(name)}")
    return EXIT_OK


def _check_kind(cfg, to: str) -> None:
    from tui_llm.engine.models.llama import LlamaConfig

    if isinstance(cfg, LlamaConfig) and to not in ("hf", "gguf", "peft"):  # cfg None: not known yet
        raise UsageError(f"--to {to}: llm.c files hold GPT-2 models only; export a Llama with --to hf or gguf "
                         "(merged with a LoRA run's adapters), or a LoRA run's adapter with --to peft")


def _write_model(args, cfg, flat, tokenizer_dir) -> None:
    from tui_llm.engine import formats
    from tui_llm.engine.formats.hf_llama import write_hf_llama
    from tui_llm.engine.models.llama import LlamaConfig

    if isinstance(cfg, LlamaConfig):
        write_hf_llama(args.out, cfg, flat, tokenizer_dir=tokenizer_dir)
    elif args.to == "hf":
        formats.write_hf(args.out, cfg, flat, tokenizer_dir=tokenizer_dir)
    else:
        formats.write_llmc(args.out, cfg, flat, version={"llmc": 3, "llmc-bf16": 5, "llmc-v1": 1}[args.to])


def _export_adapters(args) -> int:
    """A LoRA run or PEFT adapter: the adapter alone (--to peft), or merged into its base."""
    from tui_llm.engine.formats.peft import write_peft
    from tui_llm.engine.kernels.bf16 import fingerprint
    from tui_llm.engine.models.build import build_model
    from tui_llm.engine.models.lora import LoraParams, merge_into
    from tui_llm.engine.run.export import check_export_destination
    from tui_llm.engine.training.model_source import load_lora_source, peek_lora_config

    if args.to == "gguf-lora":
        return _export_gguf_lora(args)
    # What the destination must be, checked before the base is read (that can take a while)
    _check_kind(peek_lora_config(args.init_from, args.base), args.to)
    kind = args.to if args.to in ("peft", "hf", "gguf") else "llmc"
    check_export_destination(args.init_from, args.out, kind, force=args.force)
    src = load_lora_source(args.init_from, args.base)
    adapters = LoraParams(src.config, src.lora, src.adapters)
    if args.to == "peft":
        identity = {"fingerprint": fingerprint(src.base_flat), "dtype": "bf16" if src.base_flat.dtype.itemsize == 2
                    else "fp32"}
        write_peft(args.out, adapters, src.base_source, identity)
        print(f"wrote {args.out} (PEFT LoRA adapter, r={src.lora.rank}, {adapters.flat.size:,} parameters) from "
              f"{safe_text(str(src.path))}")
        return EXIT_OK
    merged = src.base_fp32()
    if merged is src.base_flat:
        merged = merged.copy() if not merged.flags.writeable else merged
    base = build_model(src.config, merged).params
    merge_into(base, adapters)
    if args.to == "gguf":
        return export_gguf(args, src.config, merged, f"{src.name} + LoRA adapters (merged)", src.tokenizer_dir)
    _write_model(args, src.config, merged, src.tokenizer_dir)
    print(f"wrote {args.out} ({args.to}, the base with its LoRA adapters merged) from {safe_text(str(src.path))}")
    return EXIT_OK


def _export_gguf_lora(args) -> int:
    """The adapters alone as llama.cpp's GGUF LoRA adapter (formats/gguf_lora.py); the base's
    weights are not read (its headers give its config)."""
    from tui_llm.engine.formats.gguf_lora import write_gguf_lora
    from tui_llm.engine.models.lora import LoraParams
    from tui_llm.engine.run.export import check_export_destination
    from tui_llm.engine.training.model_source import read_adapters

    check_export_destination(args.init_from, args.out, "llmc", force=args.force)   # one file
    config, lora, flat = read_adapters(args.init_from, args.base)
    write_gguf_lora(args.out, LoraParams(config, lora, flat), name=f"LoRA adapter from {args.init_from}"[:200])
    print(f"wrote {args.out} (GGUF LoRA adapter, r={lora.rank}, for llama.cpp's --lora over the base's GGUF) from "
          f"{safe_text(str(args.init_from))}")
    return EXIT_OK


def export_gguf(args, cfg, flat, name: str, tokenizer_dir) -> int:
    """OUT.gguf + OUT.Modelfile: the weights, the tokenizer, its chat template, a name and a
    description of the fine-tune (formats/gguf.py writes both files together or neither)."""
    from tui_llm.engine.formats.gguf import modelfile_path, write_gguf
    from tui_llm.engine.models.llama import LlamaConfig
    from tui_llm.engine.run.export import check_export_destination, export_provenance
    from tui_llm.engine.tokenizers.chat_template import load_chat_template
    from tui_llm.engine.tokenizers.lookup import load_tokenizer

    if isinstance(cfg, LlamaConfig) and tokenizer_dir is None:
        raise UsageError(f"{args.init_from}: no tokenizer.json with this Llama model, and a GGUF must carry its "
                         f"tokenizer")
    out = check_export_destination(args.init_from, args.out, "gguf", force=args.force)
    general_name, description = export_provenance(args.init_from)
    from tui_llm.engine.training.model_source import recorded_chat_template

    chosen = args.chat_template or recorded_chat_template(args.init_from)  # default: the run's --chat-template
    template = load_chat_template(chosen) if chosen else None
    tokenizer = load_tokenizer(tokenizer_dir) if tokenizer_dir else None
    outtype = args.outtype or "f16"
    write_gguf(out, cfg, flat, tokenizer, outtype=outtype, name=general_name, description=description,
               chat_template=template, modelfile=True)
    print(f"wrote {out} (gguf {outtype}) and {modelfile_path(out)} from {safe_text(name)}")
    return EXIT_OK
