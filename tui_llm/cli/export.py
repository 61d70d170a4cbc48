"""`tui-llm export --init-from MODEL OUT`: write a model as an llm.c file, a Hugging Face directory,
or a GGUF file (with an Ollama Modelfile beside it) for llama.cpp and Ollama."""

from __future__ import annotations

from tui_llm.cli.headless import safe_text
from tui_llm.cli.parser import EXIT_OK, Parser, UsageError

OUTTYPES = ("f32", "f16", "bf16", "q8_0")  # formats/gguf.py OUTTYPES, named here so --help needs no gguf import


def export_parser() -> Parser:
    p = Parser(prog="tui-llm export",
               description="Write a model as an llm.c .bin file, a Hugging Face directory or a GGUF file.")
    p.add_argument("--init-from", required=True, metavar="MODEL",
                   help="our run directory or checkpoint, llm.c .bin, Hugging Face dir/name, or GGUF file")
    p.add_argument("out", help="output file (.bin, .gguf) or directory (hf)")
    p.add_argument("--to", choices=("llmc", "llmc-bf16", "llmc-v1", "hf", "gguf"), default="llmc",
                   help="llmc: version 3 fp32 (llm.c's train_gpt2.c); llmc-bf16: version 5; llmc-v1: unpadded "
                        "fp32 (llm.rust); hf: model.safetensors + config.json for transformers; gguf: one file for "
                        "llama.cpp and Ollama, with OUT.Modelfile beside it for `ollama create` (default llmc)")
    p.add_argument("--outtype", choices=OUTTYPES,
                   help="--to gguf: how the weight matrices are stored (norms and biases stay f32): f32, f16, bf16, "
                        "or q8_0 as llama.cpp quantises it (default f16, as llama.cpp's converter)")
    p.add_argument("--chat-template", metavar="FILE|chatml",
                   help="--to gguf: the chat template to ship (a .jinja file, a tokenizer_config.json, a model "
                        "directory, or chatml); default: the model's tokenizer's own")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    return p


def cmd_export(argv) -> int:
    args = export_parser().parse_args(argv)
    for flag, value in (("--outtype", args.outtype), ("--chat-template", args.chat_template)):
        if value is not None and args.to != "gguf":
            raise UsageError(f"{flag} is for --to gguf only")
    from tui_llm.engine import formats
    from tui_llm.engine.formats.hf_llama import write_hf_llama
    from tui_llm.engine.models.llama import LlamaConfig
    from tui_llm.engine.run.export import check_export_destination
    from tui_llm.engine.training.model_source import load_model_source

    cfg, flat, name, tokenizer_dir = load_model_source(args.init_from)
    if args.to == "gguf":
        return export_gguf(args, cfg, flat, name, tokenizer_dir)
    llama = isinstance(cfg, LlamaConfig)
    if llama and args.to != "hf":
        raise UsageError(f"--to {args.to}: llm.c files hold GPT-2 models only; export a Llama with --to hf or gguf")
    check_export_destination(args.init_from, args.out, "hf" if args.to == "hf" else "llmc", force=args.force)
    if llama:
        write_hf_llama(args.out, cfg, flat, tokenizer_dir=tokenizer_dir)
    elif args.to == "hf":
        formats.write_hf(args.out, cfg, flat, tokenizer_dir=tokenizer_dir)
    else:
        formats.write_llmc(args.out, cfg, flat, version={"llmc": 3, "llmc-bf16": 5, "llmc-v1": 1}[args.to])
    print(f"wrote {args.out} ({args.to}) from {safe_text(name)}")
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
