"""`tui-llm export --init-from MODEL OUT`: write a model as an llm.c file or a Hugging Face directory."""

from __future__ import annotations

from tui_llm.cli.headless import safe_text
from tui_llm.cli.parser import EXIT_OK, Parser, UsageError


def export_parser() -> Parser:
    p = Parser(prog="tui-llm export", description="Write a model as an llm.c .bin file or a Hugging Face directory.")
    p.add_argument("--init-from", required=True, metavar="MODEL",
                   help="our run directory or checkpoint, llm.c .bin, or Hugging Face dir/name")
    p.add_argument("out", help="output file (.bin) or directory (hf)")
    p.add_argument("--to", choices=("llmc", "llmc-bf16", "llmc-v1", "hf"), default="llmc",
                   help="llmc: version 3 fp32 (llm.c's train_gpt2.c); llmc-bf16: version 5; llmc-v1: unpadded "
                        "fp32 (llm.rust); hf: model.safetensors + config.json for transformers (default llmc)")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    return p


def cmd_export(argv) -> int:
    args = export_parser().parse_args(argv)
    from tui_llm.engine import formats
    from tui_llm.engine.formats.hf_llama import write_hf_llama
    from tui_llm.engine.models.llama import LlamaConfig
    from tui_llm.engine.run.export import check_export_destination
    from tui_llm.engine.training.model_source import load_model_source

    cfg, flat, name, tokenizer_dir = load_model_source(args.init_from)
    llama = isinstance(cfg, LlamaConfig)
    if llama and args.to != "hf":
        raise UsageError(f"--to {args.to}: llm.c files hold GPT-2 models only; export a Llama with --to hf")
    check_export_destination(args.init_from, args.out, "hf" if args.to == "hf" else "llmc", force=args.force)
    if llama:
        write_hf_llama(args.out, cfg, flat, tokenizer_dir=tokenizer_dir)
    elif args.to == "hf":
        formats.write_hf(args.out, cfg, flat, tokenizer_dir=tokenizer_dir)
    else:
        formats.write_llmc(args.out, cfg, flat, version={"llmc": 3, "llmc-bf16": 5, "llmc-v1": 1}[args.to])
    print(f"wrote {args.out} ({args.to}) from {safe_text(name)}")
    return EXIT_OK
