"""The tokenizer inside a GGUF file: written from ours, rebuilt from theirs.

llama.cpp tokenizes on its own from `tokenizer.ggml.*` metadata: the token strings, their types
(1 normal, 3 control, 4 user-defined, 5 unused padding), the BPE merges ("a b", best first), the
special ids, whether a BOS is added, and `tokenizer.ggml.pre`, the NAME of the pre-tokenizer regex
(llama.cpp has the regexes built in and refuses names it does not know). Supported here: byte-level
BPE (`tokenizer.ggml.model` "gpt2") with the pre-tokenizers of the families we train:

    gpt-2      GPT-2's regex inside ByteLevel                       GPT-2
    smollm     Digits(individual) then GPT-2's ByteLevel regex      SmolLM / SmolLM2
    llama-bpe  Llama 3's Split regex (\\p{N}{1,3}), ByteLevel      Llama 3.x
    qwen2      Qwen2's Split regex (\\p{N}), ByteLevel, NFC         Qwen2 / Qwen2.5 / Qwen3

The name is read off the tokenizer.json's pre-tokenizer structure (llama.cpp's converter instead
hashes the ids of a test string; the structures above are what those hashes stand for).
SentencePiece-style tokenizers (Llama 2, TinyLlama, Mistral v0.1: Metaspace + byte fallback,
`tokenizer.ggml.model` "llama") are refused in one line, on export and on load.

A tokenizer.json we export also travels verbatim as `tokenizer.huggingface.json` (a GGUF standard
key llama.cpp ignores), so loading our own file gives back the byte-identical tokenizer (same
fingerprint); other files get a tokenizer.json rebuilt from the ggml vocabulary. GPT-2's own
vocabulary is recognised and maps back to the built-in tiktoken tokenizer.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import Keys, TokenType

from tui_llm.engine.formats.common import CheckpointError

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")


def _byte_level(use_regex: bool) -> dict:
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": use_regex}


def _split(regex: str) -> dict:
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


# llama.cpp pre-tokenizer name -> the tokenizers pre-tokenizer steps it stands for
PRE_TOKENIZERS = {
    "gpt-2": [_byte_level(True)],
    "smollm": [{"type": "Digits", "individual_digits": True}, _byte_level(True)],
    "llama-bpe": [_split(LLAMA3_REGEX), _byte_level(False)],
    "qwen2": [_split(QWEN2_REGEX), _byte_level(False)],
}
NORMALIZERS = {"qwen2": {"type": "NFC"}}   # what the families' own tokenizer.json files carry
SENTENCEPIECE = ("SentencePiece-style tokenizers (Metaspace / byte fallback, as Llama 2, TinyLlama, Mistral v0.1) "
                 "are not supported in GGUF here; byte-level BPE only (GPT-2, SmolLM, Llama 3, Qwen)")


def _signature(steps: list[dict]) -> list[tuple]:
    """What decides how text is split: each step's type and behaviour-changing fields."""
    out: list[tuple] = []
    for s in steps:
        if s.get("type") == "ByteLevel":
            out.append(("ByteLevel", bool(s.get("add_prefix_space")), bool(s.get("use_regex", True))))
        elif s.get("type") == "Split":
            out.append(("Split", json.dumps(s.get("pattern"), sort_keys=True), s.get("behavior"), bool(s.get("invert"))))
        elif s.get("type") == "Digits":
            out.append(("Digits", bool(s.get("individual_digits"))))
        else:
            out.append((s.get("type"),))
    return out


def pre_tokenizer_name(tokenizer_json: dict) -> str:
    """llama.cpp's tokenizer.ggml.pre for a byte-level BPE tokenizer.json, or CheckpointError."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    for name, known in PRE_TOKENIZERS.items():
        if _signature(steps) == _signature(known):
            return name
    shown = ", ".join(s.get("type", "?") for s in steps)
    raise CheckpointError("tokenizer.json", f"its pre-tokenizer ({shown}) matches none llama.cpp knows by name "
                                            f"({', '.join(PRE_TOKENIZERS)}); llama.cpp would tokenize differently")


def looks_special(token: str) -> bool:
    """Added tokens llama.cpp's converter marks CONTROL although not flagged special ("<|...|>")."""
    return token.startswith("<|") and token.endswith("|>")


@functools.lru_cache(maxsize=1)
def gpt2_vocab() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """GPT-2's token strings (id order, byte-level characters) and merges, from the files the
    built-in tokenizer is verified against."""
    from tui_llm.engine.tokenizers.gpt2 import ENCODER_JSON_SHA256, VOCAB_BPE_SHA256, _read_verified

    encoder = json.loads(_read_verified("encoder.json", ENCODER_JSON_SHA256))
    tokens = sorted(encoder, key=encoder.__getitem__)
    merges = _read_verified("vocab.bpe", VOCAB_BPE_SHA256).decode("utf-8").split("\n")[1:-1]
    return tuple(tokens), tuple(merges)


@dataclass
class GGUFVocab:
    """A GGUF vocabulary: what llama.cpp tokenizes with, and our tokenizer rebuilt from it."""

    pre: str
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    add_bos: bool = False
    chat_template: str | None = None
    hf_json: str | None = field(default=None, repr=False)   # the exact tokenizer.json, when one travelled along
    model: str = "gpt2"

    def add_to(self, w) -> None:
        """Write the tokenizer.* metadata into a GGUFWriter."""
        w.add_tokenizer_model(self.model)
        w.add_tokenizer_pre(self.pre)
        w.add_token_list(self.tokens)
        w.add_token_types(self.token_types)
        w.add_token_merges(self.merges)
        for token_id, add in ((self.bos_token_id, w.add_bos_token_id), (self.eos_token_id, w.add_eos_token_id),
                              (self.pad_token_id, w.add_pad_token_id)):
            if token_id is not None:
                add(token_id)
        w.add_add_bos_token(self.add_bos)
        w.add_add_eos_token(False)
        if self.chat_template:
            w.add_chat_template(self.chat_template)
        if self.hf_json:
            w.add_string(Keys.Tokenizer.HF_JSON, self.hf_json)

    @property
    def is_gpt2(self) -> bool:
        """GPT-2's own vocabulary (then the built-in tiktoken tokenizer is the model's tokenizer)."""
        tokens, merges = gpt2_vocab()
        n = len(tokens)
        return (self.pre == "gpt-2" and tuple(self.tokens[:n]) == tokens and tuple(self.merges) == merges
                and all(t == TokenType.UNUSED for t in self.token_types[n:]))

    def tokenizer_json(self) -> str:
        """A Hugging Face tokenizer.json that tokenizes as llama.cpp does with this vocabulary."""
        if self.hf_json:
            return self.hf_json
        special = [i for i, t in enumerate(self.token_types) if t == TokenType.CONTROL]
        user = [i for i, t in enumerate(self.token_types) if t == TokenType.USER_DEFINED]
        bos = self.tokens[self.bos_token_id] if self.add_bos and self.bos_token_id is not None else None
        post = {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                                                         {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos: {"id": bos, "ids": [self.bos_token_id], "tokens": [bos]}}} if bos else \
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
        doc = {
            "version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [{"id": i, "content": self.tokens[i], "single_word": False, "lstrip": False,
                              "rstrip": False, "normalized": i in user, "special": i not in user}
                             for i in sorted(special + user)],
            "normalizer": NORMALIZERS.get(self.pre),
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": PRE_TOKENIZERS[self.pre]},
            "post_processor": post,
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": self.pre == "llama-bpe",
                      "vocab": {t: i for i, t in enumerate(self.tokens)},
                      "merges": [m.split(" ", 1) for m in self.merges]},
        }
        return json.dumps(doc, ensure_ascii=False)

    def tokenizer_files(self) -> dict[str, bytes]:
        """tokenizer.json + tokenizer_config.json: a directory HFTokenizer.from_dir reads."""
        config: dict[str, object] = {"add_bos_token": self.add_bos, "add_eos_token": False}
        for key, token_id in (("bos_token", self.bos_token_id), ("eos_token", self.eos_token_id),
                              ("pad_token", self.pad_token_id)):
            if token_id is not None:
                config[key] = self.tokens[token_id]
        if self.chat_template:
            config["chat_template"] = self.chat_template
        return {"tokenizer.json": self.tokenizer_json().encode("utf-8"),
                "tokenizer_config.json": (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode("utf-8")}


# ---------------------------------------------------------------------------------------
# export: our tokenizer -> GGUFVocab


def _padded(tokens: dict[int, str], types: dict[int, int], vocab_size: int, path) -> tuple[list[str], list[int]]:
    """Token strings and types for ids 0..vocab_size-1; ids the tokenizer lacks become "[PAD<id>]"
    (UNUSED), as llama.cpp's converter pads a vocabulary smaller than the embedding."""
    if tokens and max(tokens) >= vocab_size:
        raise CheckpointError(path, f"the tokenizer has ids up to {max(tokens)}, but the model's embedding has only "
                                    f"{vocab_size} rows")
    return ([tokens.get(i, f"[PAD{i}]") for i in range(vocab_size)],
            [types.get(i, TokenType.NORMAL) if i in tokens else TokenType.UNUSED for i in range(vocab_size)])


def vocab_for_export(tokenizer, vocab_size: int, chat_template: str | None, path) -> GGUFVocab:
    """The GGUF vocabulary of a model's tokenizer: None or GPT-2's tiktoken encoding, an
    HFTokenizer, or a GGUFVocab (re-export of a loaded GGUF)."""
    if isinstance(tokenizer, GGUFVocab):
        if len(tokenizer.tokens) != vocab_size:
            raise CheckpointError(path, f"the vocabulary has {len(tokenizer.tokens)} tokens, the model {vocab_size}")
        return tokenizer if chat_template is None else GGUFVocab(**{**tokenizer.__dict__, "chat_template": chat_template})
    if tokenizer is None or not hasattr(tokenizer, "tokenizer"):  # GPT-2's tiktoken encoding
        gpt2_tokens, merges = gpt2_vocab()
        eot = len(gpt2_tokens) - 1
        gpt2_list, gpt2_types = _padded(dict(enumerate(gpt2_tokens)), {eot: TokenType.CONTROL}, vocab_size, path)
        return GGUFVocab("gpt-2", gpt2_list, gpt2_types, list(merges), eot, eot, None, False, chat_template)

    doc = json.loads(tokenizer.tokenizer.to_str())
    model = doc.get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback") or (doc.get("decoder") or {}).get("type") != "ByteLevel":
        raise CheckpointError(path, SENTENCEPIECE)
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise CheckpointError(path, "a BPE tokenizer with subword prefixes/suffixes has no GGUF form llama.cpp runs")
    if doc.get("normalizer") not in (None, {"type": "NFC"}):
        raise CheckpointError(path, f"tokenizer normalizer {doc['normalizer'].get('type')} has no llama.cpp equivalent")
    try:
        pre = pre_tokenizer_name(doc)
    except CheckpointError as e:
        raise CheckpointError(path, e.problem) from None
    added = {t["id"]: t for t in doc.get("added_tokens", [])}
    vocab = tokenizer.tokenizer.get_vocab(with_added_tokens=True)
    tokens = {i: t for t, i in vocab.items()}
    types: dict[int, int] = {i: TokenType.CONTROL if a.get("special") or looks_special(a["content"])
                             else TokenType.USER_DEFINED for i, a in added.items()}
    hf_merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    padded_tokens, padded_types = _padded(tokens, types, vocab_size, path)
    directory = Path(tokenizer.path).parent
    config = _read_json(directory / "tokenizer_config.json")
    pad = config.get("pad_token")
    pad = pad.get("content") if isinstance(pad, dict) else pad
    return GGUFVocab(pre, padded_tokens, padded_types, hf_merges, tokenizer.bos_token_id, tokenizer.eos_token_id,
                     vocab.get(pad) if isinstance(pad, str) else None, bool(tokenizer.adds_bos),
                     chat_template if chat_template is not None else find_chat_template(directory),
                     Path(tokenizer.path).read_text(encoding="utf-8"))


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def find_chat_template(directory) -> str | None:
    """A tokenizer directory's chat template: chat_template.jinja (transformers 5), else
    tokenizer_config.json's "chat_template" (a string, or a list of {name, template}: "default")."""
    jinja = Path(directory) / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = _read_json(Path(directory) / "tokenizer_config.json").get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default", next(iter(named.values()), None))
    return template if isinstance(template, str) else None


# ---------------------------------------------------------------------------------------
# load: GGUF metadata -> GGUFVocab


def vocab_from_metadata(md: dict, vocab_size: int, path) -> GGUFVocab:
    """The vocabulary of a GGUF file, checked against the embedding's vocab_size rows, or
    CheckpointError naming what is missing, inconsistent or unsupported."""
    K = Keys.Tokenizer
    model = md.get(K.MODEL)
    if model == "llama":
        raise CheckpointError(path, SENTENCEPIECE)
    if model != "gpt2":
        raise CheckpointError(path, f"tokenizer.ggml.model {str(model)[:20]!r} is not supported (only byte-level BPE, "
                                    f"'gpt2')")
    tokens, merges = md.get(K.LIST), md.get(K.MERGES)
    if not isinstance(tokens, list):
        raise CheckpointError(path, "GGUF vocabulary without a token list (tokenizer.ggml.tokens, strings)")
    if len(tokens) != vocab_size:
        raise CheckpointError(path, f"the vocabulary has {len(tokens)} tokens but token_embd has {vocab_size} rows")
    if not isinstance(merges, list):
        raise CheckpointError(path, "GGUF vocabulary without BPE merges (tokenizer.ggml.merges, strings)")
    if len(set(tokens)) != len(tokens):
        raise CheckpointError(path, "the vocabulary lists a token twice")
    pre = md.get(K.PRE, "default")
    if pre not in PRE_TOKENIZERS:
        raise CheckpointError(path, f"tokenizer.ggml.pre {str(pre)[:30]!r} is not supported ({', '.join(PRE_TOKENIZERS)})")
    types = md.get(K.TOKEN_TYPE, np.full(len(tokens), TokenType.NORMAL))
    if not isinstance(types, np.ndarray) or types.dtype.kind not in "iu" or len(types) != len(tokens):
        raise CheckpointError(path, "tokenizer.ggml.token_type does not give one integer type per token")
    ids = {}
    for key, name in ((K.BOS_ID, "bos"), (K.EOS_ID, "eos"), (K.PAD_ID, "pad")):
        value = md.get(key)
        if value is not None and not (isinstance(value, int) and 0 <= value < vocab_size):
            raise CheckpointError(path, f"{key} {str(value)[:20]} is outside the vocabulary of {vocab_size}")
        ids[name] = value
    template = md.get(K.CHAT_TEMPLATE)
    vocab = GGUFVocab(pre, tokens, [int(t) for t in types], merges, ids["bos"], ids["eos"], ids["pad"],
                      bool(md.get(K.ADD_BOS, pre == "llama-bpe")), template if isinstance(template, str) else None)
    vocab.hf_json = _matching_hf_json(md.get(K.HF_JSON), vocab)
    _check_buildable(vocab, path)
    return vocab


def _matching_hf_json(text, vocab: GGUFVocab) -> str | None:
    """tokenizer.huggingface.json when it is a tokenizer.json with exactly this vocabulary (less
    the UNUSED padding tokens)."""
    if not isinstance(text, str):
        return None
    try:
        from tokenizers import Tokenizer
        hf_vocab = Tokenizer.from_str(text).get_vocab(with_added_tokens=True)
    except Exception:  # tokenizers raises plain Exceptions on bad JSON
        return None
    used = {t: i for i, (t, kind) in enumerate(zip(vocab.tokens, vocab.token_types)) if kind != TokenType.UNUSED}
    return text if hf_vocab == used else None


def _check_buildable(vocab: GGUFVocab, path) -> None:
    """Build the tokenizer once: merges naming unknown tokens or a byte alphabet with holes are
    refused here rather than mistokenizing later."""
    from tokenizers import Tokenizer
    from tokenizers.pre_tokenizers import ByteLevel

    known = set(vocab.tokens)
    if vocab.hf_json is None:
        missing = [c for c in ByteLevel.alphabet() if c not in known]
        if missing:
            raise CheckpointError(path, f"the vocabulary lacks {len(missing)} of the 256 byte-level symbols "
                                        f"(e.g. {missing[0]!r}): not a byte-level BPE vocabulary")
        for m in vocab.merges:
            parts = m.split(" ", 1) if isinstance(m, str) else []
            if len(parts) != 2 or parts[0] not in known or parts[1] not in known or parts[0] + parts[1] not in known:
                raise CheckpointError(path, f"merge {str(m)[:40]!r} does not join two tokens of the vocabulary")
    try:
        Tokenizer.from_str(vocab.tokenizer_json())
    except Exception as e:  # tokenizers raises plain Exceptions
        raise CheckpointError(path, f"cannot build a tokenizer from the GGUF vocabulary: {str(e)[:80]}") from None


# ---------------------------------------------------------------------------------------
# Ollama: a Modelfile beside the GGUF


CHATML_TEMPLATE = ('{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}'
                   '<|im_start|>assistant\n')
LLAMA3_TEMPLATE = ('{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>'
                   '{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n')


def modelfile_text(gguf_name: str, vocab: GGUFVocab) -> str:
    """An Ollama Modelfile for `ollama create NAME -f OUT.Modelfile`: FROM the GGUF beside it, the
    chat template in Ollama's Go-template form when the Jinja template is ChatML or Llama 3's (the
    two our families use; others get none, and Ollama prompts raw), and the stop tokens: the
    template's end-of-turn token and the EOS."""
    jinja = vocab.chat_template or ""
    template, stops = None, []
    if "<|im_start|>" in jinja and "<|im_end|>" in jinja:
        template, stops = CHATML_TEMPLATE, ["<|im_end|>"]
    elif "<|start_header_id|>" in jinja and "<|eot_id|>" in jinja:
        template, stops = LLAMA3_TEMPLATE, ["<|eot_id|>"]
    if vocab.eos_token_id is not None and vocab.tokens[vocab.eos_token_id] not in stops:
        stops.append(vocab.tokens[vocab.eos_token_id])
    lines = [f"FROM ./{gguf_name}"]
    if template:
        lines.append(f'TEMPLATE """{template}"""')
    lines += [f"PARAMETER stop {json.dumps(s)}" for s in stops]
    return "\n".join(lines) + "\n"
