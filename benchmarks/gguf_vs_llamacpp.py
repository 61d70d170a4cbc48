"""GGUF against a real llama.cpp: our exports run in llama.cpp, llama.cpp's converter output runs in us.

Runs in a throwaway venv holding llama-cpp-python (built from its sdist), torch and transformers —
never dependencies of tui-llm — with this repository on PYTHONPATH:

    PYTHONPATH=$PWD /work/venvs/llamacpp/bin/python benchmarks/gguf_vs_llamacpp.py \
        --llama-cpp-src /work/venvs/src/llama_cpp_python-0.3.36/vendor/llama.cpp [--out DIR]

Part A, our export -> llama.cpp (llama_cpp.Llama, f32 KV cache: type_k = type_v = 0): for a GPT-2 and
tiny llama / qwen2 / qwen3 models, trained here for a few steps on Tiny Shakespeare with byte-level
BPE tokenizers of each family's pre-tokenizer, exported as f32, f16, bf16 and q8_0, each file run by
llama.cpp and by us (read back: the same dequantised weights):
  * logits on a token sequence: max |ours - llama.cpp| / max |ours|
  * greedy continuation (32 tokens), token for token
  * quantisation_effect_*: our logits from the f16/bf16/q8_0 file against our f32 model's
  * llama.cpp's tokenizer (special=False and True) against ours on texts with digits, contractions,
    whitespace runs, emoji and CJK
  * our q8_0 bytes against llama.cpp's own C quantiser (llama_model_quantize of our f32 file)
Part B, llama.cpp's convert_hf_to_gguf.py -> us: tiny transformers models (GPT2LMHeadModel,
LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM), converted to f32/bf16/q8_0 GGUF, loaded by
read_gguf: logits against transformers', token ids of our rebuilt tokenizer against the HF tokenizer.
The converter names pre-tokenizers by hashing a real tokenizer's output; for tokenizers trained here
there is no hash, so the script tells it the name (GPT-2's real vocabulary needs no help).
Part C, the commands a user types (`python -m tui_llm` in subprocesses): prepare -> train ->
`export --to gguf` (f32, q8_0) -> llama.cpp, for a fresh GPT-2 (d2), a fresh llama (--arch llama,
llama-bpe tokenizer) and a qwen3 started from an HF directory; our side is `tui_llm.load_model(the .gguf)`
with the tokenizer rebuilt from the file (logits, greedy, tokenizer as in part A). Then the way back:
`prepare --tokenizer the.gguf` (token files identical to the original tokenizer's), `--init-from the.gguf`,
train on, `--resume`, export again, llama.cpp again; and part B's converter files (when part B ran)
through `load_model`, whose tokenizers are rebuilt from ggml metadata alone, against llama.cpp.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tui_llm.engine.formats.gguf import read_gguf, write_gguf
from tui_llm.engine.formats.gguf_vocab import LLAMA3_REGEX, QWEN2_REGEX, pre_tokenizer_name
from tui_llm.engine.models.build import build_model
from tui_llm.engine.models.gpt2 import GPT
from tui_llm.engine.models.gpt2_config import GPTConfig
from tui_llm.engine.models.llama import Llama
from tui_llm.engine.models.llama_config import LlamaConfig
from tui_llm.engine.tokenizers.gpt2 import get_tokenizer
from tui_llm.engine.tokenizers.hf import HFTokenizer
from tui_llm.engine.training.optim import AdamW, AdamWConfig

SHAKESPEARE = Path("/work/shared/data/tinyshakespeare.txt")
TEXTS = ["First Citizen:\nBefore we proceed any further, hear me speak.",
         "I'll say 'tis 1234567 o'clock, they've 3.14159 and we'RE sure?\n\n\n   four   spaces\t\ttab",
         "Zürich 😀 日本語のテキスト, naïve — «ok» 🇫🇷 ελληνικά 🦙🦙",
         "<|im_start|>user\nWhat light through yonder window breaks?<|im_end|>\n"]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>"]
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}  # Llama 3.1's
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def log(*args):
    print(*args, flush=True)


# ---------------------------------------------------------------------------------------
# tokenizers and models made here


def train_tokenizer(directory: Path, family: str, text: str) -> HFTokenizer:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    pre = {"gpt-2": pre_tokenizers.ByteLevel(add_prefix_space=False),
           "smollm": pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                              pre_tokenizers.ByteLevel(add_prefix_space=False)]),
           "llama-bpe": pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_REGEX), "isolated"), byte_level]),
           "qwen2": pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_REGEX), "isolated"), byte_level])}[family]
    tok = Tokenizer(models.BPE(ignore_merges=family == "llama-bpe"))
    tok.pre_tokenizer, tok.decoder = pre, decoders.ByteLevel()
    if family == "qwen2":
        tok.normalizer = normalizers.NFC()
    trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text[i:i + 4096] for i in range(0, len(text), 4096)], trainer)
    adds_bos = family == "llama-bpe"
    bos = "<|begin_of_text|>" if adds_bos else "<|endoftext|>"
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[
        (bos, tok.token_to_id(bos))]) if adds_bos else processors.ByteLevel(trim_offsets=False)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": bos, "eos_token": "<|im_end|>", "add_bos_token": adds_bos, "chat_template": CHATML,
        "tokenizer_class": "PreTrainedTokenizerFast"}))
    return HFTokenizer.from_dir(directory)


def train(model, tokens: np.ndarray, steps: int, B=4, T=64, lr=3e-3, seed=0):
    """A few AdamW steps on random windows of the token stream: a model with opinions."""
    rng = np.random.default_rng(seed)
    opt = AdamW(model, AdamWConfig(weight_decay=0.0))
    for _step in range(steps):
        starts = rng.integers(0, tokens.size - T - 1, B)
        x = np.stack([tokens[s:s + T] for s in starts]).astype(np.int32)
        y = np.stack([tokens[s + 1:s + T + 1] for s in starts]).astype(np.int32)
        loss = model.forward(x, y, training=True)
        model.backward()
        opt.update(lr, opt.grad_norm())
    return loss


def ours_logits(model, ids) -> np.ndarray:
    model.forward(np.asarray([ids], np.int32))
    return model.acts.logits.reshape(len(ids), -1)[:, :model.config.vocab_size].copy()


def ours_greedy(model, ids, n) -> list[int]:
    cache = model.new_kv_cache()
    logits = model.extend(cache, np.asarray(ids, np.int32), 0)
    out, t = [], len(ids)
    for _ in range(n):
        nxt = int(np.argmax(logits[:model.config.vocab_size]))
        out.append(nxt)
        logits = model.extend(cache, np.asarray([nxt], np.int32), t)
        t += 1
    return out


# ---------------------------------------------------------------------------------------
# llama.cpp


def open_llama_cpp(path, n_ctx=128):
    from llama_cpp import Llama as LlamaCpp
    return LlamaCpp(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, type_k=0, type_v=0,
                    n_threads=2, verbose=False)


def cpp_logits(llm, ids) -> np.ndarray:
    llm.reset()
    llm.eval(list(ids))
    return np.array(llm.scores[:len(ids)], np.float32)


def cpp_greedy(llm, ids, n) -> list[int]:
    llm.reset()
    llm.eval(list(ids))
    out = []
    for _ in range(n):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(nxt)
        llm.eval([nxt])
    return out


def rel(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(a).max())


# ---------------------------------------------------------------------------------------
# Part A


def part_a(work: Path, text: str, steps: int) -> list[dict]:
    import llama_cpp
    rows = []
    gpt2_tok = get_tokenizer()
    cases = [("gpt2", "gpt-2 (GPT-2's own vocab)", None),
             ("llama", "llama-bpe", dict(num_heads=4, num_kv_heads=2, rope_theta=500000.0, rope_scaling=LLAMA3_ROPE)),
             ("llama", "smollm", dict(num_heads=4, num_kv_heads=4)),
             ("qwen2", "qwen2", dict(num_heads=4, num_kv_heads=2, qkv_bias=True)),
             ("qwen3", "qwen2", dict(num_heads=4, num_kv_heads=2, head_dim=32, qk_norm=True, tied_embeddings=False))]
    for arch, family, extra in cases:
        name = f"{arch}/{family.split()[0]}"
        t0 = time.time()
        if arch == "gpt2":
            tok = gpt2_tok
            encode = tok.encode_ordinary
            stream = np.array(encode(text[:300_000]), np.int32)
            model = GPT.random_init(GPTConfig(max_seq_len=128, vocab_size=50257, num_layers=2, num_heads=4,
                                              channels=64))
        else:
            tok = train_tokenizer(work / f"tok-{family}", family, text)
            encode = tok.encode_ordinary
            stream = np.array(tok.encode_ordinary(text[:300_000]), np.int32)
            cfg = LlamaConfig(vocab_size=1024 + 64, max_seq_len=128, num_layers=2, channels=64, ffn_channels=128,
                              rms_norm_eps=1e-5, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                              **{"rope_theta": 10000.0, **extra})
            model = Llama.random_init(cfg)
        loss = train(model, stream, steps)
        p = model.params.flat
        rng = np.random.default_rng(1)  # make norms, biases and q/k norms differ from their init
        real = np.ones_like(p, bool)
        real[model.config.vocab_size * model.config.channels:model.config.padded_vocab_size * model.config.channels] = 0
        p[real] += rng.normal(0, 0.02, int(real.sum())).astype(np.float32)
        prompt = encode(TEXTS[0])
        ref = ours_logits(model, prompt)
        greedy = ours_greedy(model, prompt, 32)
        row = {"model": name, "params": p.size, "train_steps": steps, "loss": round(loss, 3)}
        for outtype in ("f32", "f16", "bf16", "q8_0"):
            path = work / f"{arch}-{family.split()[0]}-{outtype}.gguf"
            write_gguf(path, model.config, p, None if arch == "gpt2" else tok, outtype=outtype, name=name,
                       description=f"tui-llm test export, {steps} steps on Tiny Shakespeare")
            # llama.cpp against us on the same (dequantised) weights, read back from the file
            back = build_model(*read_gguf(path)[:2])
            ref_q, greedy_q = ours_logits(back, prompt), ours_greedy(back, prompt, 32)
            llm = open_llama_cpp(path)
            row[f"logits_rel_{outtype}"] = rel(ref_q, cpp_logits(llm, prompt))
            cpp = cpp_greedy(llm, prompt, 32)
            row[f"greedy_equal_{outtype}"] = sum(a == b for a, b in zip(cpp, greedy_q))
            if outtype == "f32":
                assert greedy_q == greedy and np.array_equal(ref_q, ref)
            else:  # what the storage type itself changes, in our engine
                row[f"quantisation_effect_{outtype}"] = rel(ref, ref_q)
            if outtype == "f32":
                mism = []
                for t in TEXTS:
                    ours_plain = encode(t)
                    ours_special = tok.encode(t, allowed_special="all") if arch == "gpt2" else \
                        tok.tokenizer.encode(t, add_special_tokens=False).ids
                    if llm.tokenize(t.encode(), add_bos=False, special=False) != ours_plain:
                        mism.append(("plain", t[:20]))
                    if llm.tokenize(t.encode(), add_bos=False, special=True) != ours_special:
                        mism.append(("special", t[:20]))
                bos = llm.tokenize(b"hi", add_bos=True, special=False)[:1]
                row["tokenizer_mismatches"] = mism
                row["llama_cpp_adds_bos"] = bos == [getattr(tok, "bos_token_id", None)] and \
                    bool(getattr(tok, "adds_bos", False))
                f32_path = path
            del llm
        q8_path = work / f"{arch}-{family.split()[0]}-q8_0.gguf"
        c_path = work / f"{arch}-{family.split()[0]}-q8_0-by-llama-cpp.gguf"
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
        params.nthread = 2
        assert llama_cpp.llama_model_quantize(str(f32_path).encode(), str(c_path).encode(), params) == 0
        row["q8_0_bytes_vs_llama_cpp"] = compare_q8(q8_path, c_path)
        row["seconds"] = round(time.time() - t0, 1)
        log(json.dumps(row))
        rows.append(row)
    return rows


def compare_q8(ours: Path, theirs: Path) -> str:
    """Tensors both files store as Q8_0: how many are byte-identical."""
    from gguf import GGMLQuantizationType, GGUFReader
    a = {t.name: t for t in GGUFReader(ours).tensors}
    b = {t.name: t for t in GGUFReader(theirs).tensors}
    both = [n for n in a if n in b and a[n].tensor_type == b[n].tensor_type == GGMLQuantizationType.Q8_0]
    same = sum(np.array_equal(np.asarray(a[n].data), np.asarray(b[n].data)) for n in both)
    return f"{same}/{len(both)} identical"


# ---------------------------------------------------------------------------------------
# Part B


def part_b(work: Path, text: str, src: Path) -> list[dict]:
    import torch
    import transformers as tf
    torch.manual_seed(0)
    rows = []
    gpt2_dir = work / "tok-gpt2-files"  # GPT-2's real vocab.json / merges.txt, as a tokenizer.json
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from tui_llm.engine.formats.hf_gpt2 import gpt2_tokenizer_files
    gpt2_dir.mkdir(exist_ok=True)
    for fname, data in gpt2_tokenizer_files().items():
        (gpt2_dir / fname).write_bytes(data)
    gpt2_tok = Tokenizer(models.BPE.from_file(str(gpt2_dir / "vocab.json"), str(gpt2_dir / "merges.txt")))
    gpt2_tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    gpt2_tok.decoder = decoders.ByteLevel()
    # the converter reads GPT-2's n_ctx
    cases = [("gpt2", tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=128, n_ctx=128,
                                                       vocab_size=50257)), gpt2_dir, None),
             ("llama", tf.LlamaForCausalLM, "llama-bpe", dict(num_key_value_heads=2)),
             ("llama3-rope", tf.LlamaForCausalLM, "llama-bpe", dict(num_key_value_heads=2, rope_theta=500000.0,
                                                                     rope_scaling=dict(LLAMA3_ROPE))),
             ("qwen2", tf.Qwen2ForCausalLM, "qwen2", dict(num_key_value_heads=2)),
             ("qwen3", tf.Qwen3ForCausalLM, "qwen2", dict(num_key_value_heads=2, head_dim=32,
                                                          tie_word_embeddings=False))]
    for arch, model, family, extra in cases:
        t0 = time.time()
        d = work / f"hf-{arch}"
        if arch == "gpt2":
            hf_tok = tf.PreTrainedTokenizerFast(tokenizer_object=gpt2_tok, bos_token="<|endoftext|>",
                                                eos_token="<|endoftext|>")
            pre = None
        else:
            tok_dir = work / f"tok-{family}"
            if not (tok_dir / "tokenizer.json").is_file():
                train_tokenizer(tok_dir, family, text)
            hf_tok = tf.PreTrainedTokenizerFast.from_pretrained(str(tok_dir))
            pre = pre_tokenizer_name(json.loads((tok_dir / "tokenizer.json").read_text()))
            config_cls = {"qwen2": tf.Qwen2Config, "qwen3": tf.Qwen3Config}.get(arch, tf.LlamaConfig)
            hf_cfg = config_cls(vocab_size=1024 + 64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=4, max_position_embeddings=128, rms_norm_eps=1e-6,
                                **{"rope_theta": 10000.0, "tie_word_embeddings": True, **extra},
                                bos_token_id=hf_tok.bos_token_id, eos_token_id=hf_tok.eos_token_id)
            model = model(hf_cfg)
        with torch.no_grad():  # non-trivial norms and biases
            for _name, prm in model.named_parameters():
                prm.add_(torch.randn_like(prm) * (0.1 if prm.ndim == 1 else 0.0))
        model.eval()
        model.save_pretrained(d, safe_serialization=True)
        hf_tok.save_pretrained(d)
        ids = hf_tok(TEXTS[0], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            ref = model(torch.tensor([ids])).logits[0].float().numpy()
        row = {"model": f"{arch} (convert_hf_to_gguf.py)"}
        for outtype in ("f32", "bf16", "q8_0"):
            out = work / f"converted-{arch}-{outtype}.gguf"
            convert(src, d, out, outtype, pre)
            cfg, flat, vocab, md = read_gguf(out)
            ours = build_model(cfg, flat)
            row[f"logits_rel_{outtype}"] = rel(ref, ours_logits(ours, ids))
            if outtype == "f32":
                files = vocab.tokenizer_files()
                tdir = work / f"rebuilt-{arch}"
                tdir.mkdir(exist_ok=True)
                for fname, data in files.items():
                    (tdir / fname).write_bytes(data)
                mine = HFTokenizer.from_dir(tdir)
                row["gguf_pre"] = md.get("tokenizer.ggml.pre")
                row["is_gpt2_vocab"] = vocab.is_gpt2
                row["tokenizer_mismatches"] = [t[:20] for t in TEXTS if mine.encode_ordinary(t) !=
                                               hf_tok(t, add_special_tokens=False)["input_ids"] and "<|" not in t]
        row["seconds"] = round(time.time() - t0, 1)
        log(json.dumps(row))
        rows.append(row)
    return rows


def convert(src: Path, model_dir: Path, out: Path, outtype: str, pre: str | None) -> None:
    """llama.cpp's converter in a subprocess (it imports its own gguf-py), told the pre-tokenizer
    name when the tokenizer was trained here and has no known hash."""
    code = (f"import sys; sys.path.insert(0, {str(src)!r}); "
            f"sys.argv = ['convert_hf_to_gguf.py', {str(model_dir)!r}, '--outfile', "
            f"{str(out)!r}, '--outtype', {outtype!r}]; import convert_hf_to_gguf as c; import conversion.base as b\n"
            f"if {pre!r}: b.TextModel.get_vocab_base_pre = lambda self, tok: {pre!r}\n"
            "c.main()")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=src)
    if r.returncode:
        raise SystemExit(f"convert_hf_to_gguf.py failed:\n{r.stderr[-3000:]}")


# ---------------------------------------------------------------------------------------
# Part C


def tui_llm_cli(*args, env) -> str:
    """`python -m tui_llm ARGS` (this interpreter, this checkout); its stdout, or exit with its stderr."""
    r = subprocess.run([sys.executable, "-m", "tui_llm", *map(str, args)], capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(f"tui-llm {' '.join(map(str, args))} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r.stdout


def against_llama_cpp(gguf: Path, row: dict, key: str) -> None:
    """llama.cpp and `tui_llm.load_model(gguf)` (its tokenizer rebuilt from the file) on the same file."""
    import tui_llm
    from tui_llm.engine.tokenizers.lookup import load_tokenizer

    ours = tui_llm.load_model(gguf)
    tok = load_tokenizer(ours.tokenizer_dir)
    prompt = tok.encode_ordinary(TEXTS[0])
    llm = open_llama_cpp(gguf)
    row[f"logits_rel_{key}"] = rel(ours_logits(ours, prompt), cpp_logits(llm, prompt))
    row[f"greedy_equal_{key}"] = sum(a == b for a, b in zip(ours_greedy(ours, prompt, 32), cpp_greedy(llm, prompt, 32)))
    mism = []
    for t in TEXTS:
        special = tok.encode(t, allowed_special="all") if ours.tokenizer_dir is None else \
            tok.tokenizer.encode(t, add_special_tokens=False).ids
        mism += [("plain", t[:20])] * (llm.tokenize(t.encode(), add_bos=False, special=False) != tok.encode_ordinary(t))
        mism += [("special", t[:20])] * (llm.tokenize(t.encode(), add_bos=False, special=True) != special)
    row[f"tokenizer_mismatches_{key}"] = mism
    del llm


def part_c(work: Path, text: str, steps: int) -> list[dict]:
    from tui_llm.engine.formats.gguf_file import read_contents
    from tui_llm.engine.formats.hf_llama import write_hf_llama
    from tui_llm.engine.models.llama_config import num_parameters

    c = work / "cli"
    c.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT), XDG_CACHE_HOME=str(c / "cache"))
    (c / "shakespeare.txt").write_text(text, encoding="utf-8")
    train = ["--no-ui", "-b", "4", "-t", "64", "--lr", "3e-3", "--threads", "2", "--val-every", "0",
             "--sample-every", "0", "--save-every", "0"]
    qwen3_dir = c / "qwen3-start"  # an HF directory to start from, as a downloaded model would be
    tok = train_tokenizer(c / "tok-qwen2", "qwen2", text)
    cfg = LlamaConfig(vocab_size=1024 + 64, max_seq_len=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=32,
                      channels=64, ffn_channels=128, qk_norm=True, tied_embeddings=False,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    write_hf_llama(qwen3_dir, cfg, (np.random.default_rng(0).standard_normal(num_parameters(cfg)) * 0.02)
                   .astype(np.float32), tokenizer_dir=c / "tok-qwen2")
    cases = [("gpt2", None, ["--model", "d2", "--max-seq-len", "128", "--init-style", "numpy"]),
             ("llama", train_tokenizer(c / "tok-llama-bpe", "llama-bpe", text).path.parent,
              ["--arch", "llama", "--model", "d2", "--kv-heads", "1", "--max-seq-len", "128"]),
             ("qwen3", qwen3_dir, ["--init-from", qwen3_dir])]
    rows = []
    for name, tokenizer, start in cases:
        t0 = time.time()
        data = c / f"data-{name}"
        tui_llm_cli("prepare", c / "shakespeare.txt", "--out-dir", data, "--val-fraction", "0.05",
                    *(["--tokenizer", tokenizer] if tokenizer else []), env=env)
        run = c / f"run-{name}"
        tui_llm_cli(data / "shakespeare_train.bin", *train, *start, *(["--tokenizer", tokenizer] if name == "llama"
                                                                       else []), "--steps", steps, "--out-dir", run,
                    env=env)
        row: dict = {"model": f"{name} (run: {' '.join(map(str, start[:2]))}...)"}
        for outtype in ("f32", "q8_0"):
            gguf = c / f"{name}-{outtype}.gguf"
            tui_llm_cli("export", "--init-from", run, gguf, "--to", "gguf", "--outtype", outtype, "--force", env=env)
            against_llama_cpp(gguf, row, outtype)
        md = read_contents(c / f"{name}-f32.gguf").metadata
        row["general.description"] = md.get("general.description")
        row["modelfile"] = (c / f"{name}-f32.Modelfile").read_text().splitlines()

        # the way back: the GGUF as tokenizer and as starting point, resumed, exported, run by llama.cpp
        back = c / f"data-{name}-from-gguf"
        tui_llm_cli("prepare", c / "shakespeare.txt", "--out-dir", back, "--val-fraction", "0.05", "--tokenizer",
                    c / f"{name}-f32.gguf", env=env)
        row["prepare_from_gguf_identical"] = all(
            (data / f).read_bytes() == (back / f).read_bytes() for f in ("shakespeare_train.bin", "shakespeare_val.bin"))
        again = c / f"run-{name}-from-gguf"
        tui_llm_cli(back / "shakespeare_train.bin", *train, "--init-from", c / f"{name}-f32.gguf", "--steps",
                    steps // 10, "--out-dir", again, env=env)
        tui_llm_cli("--resume", again, "--no-ui", "--steps", 2 * (steps // 10), env=env)
        tui_llm_cli("export", "--init-from", again, c / f"{name}-again.gguf", "--to", "gguf", "--outtype", "f32",
                    "--force", env=env)
        against_llama_cpp(c / f"{name}-again.gguf", row, "again_f32")
        row["general.description_again"] = read_contents(c / f"{name}-again.gguf").metadata.get("general.description")
        row["seconds"] = round(time.time() - t0, 1)
        log(json.dumps(row))
        rows.append(row)
    for converted in sorted(work.glob("converted-*-f32.gguf")):  # part B's: tokenizers rebuilt from ggml metadata
        row = {"model": f"{converted.name} (llama.cpp's converter)"}
        against_llama_cpp(converted, row, "f32")
        log(json.dumps(row))
        rows.append(row)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llama-cpp-src", type=Path, required=True, help="llama.cpp source (the sdist's vendor/llama.cpp)")
    ap.add_argument("--out", type=Path, default=None, help="where the model files go (default a temp dir)")
    ap.add_argument("--steps", type=int, default=150, help="training steps per model")
    ap.add_argument("--skip-a", action="store_true", help="only part B")
    ap.add_argument("--skip-b", action="store_true", help="no part B (no torch needed)")
    ap.add_argument("--skip-c", action="store_true", help="no part C (the commands)")
    args = ap.parse_args()
    import llama_cpp
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    log(f"# {time.strftime('%Y-%m-%d')} | {cpu} | {os.cpu_count()} cpus | Python {platform.python_version()} | "
        f"llama-cpp-python {llama_cpp.__version__} | numpy {np.__version__}")
    text = SHAKESPEARE.read_text() if SHAKESPEARE.is_file() else " ".join(TEXTS) * 2000
    work = args.out or Path(tempfile.mkdtemp(prefix="gguf-vs-llamacpp-"))
    work.mkdir(parents=True, exist_ok=True)
    if not args.skip_a:
        log("## A: tui-llm export -> llama.cpp")
        part_a(work, text, args.steps)
    if not args.skip_b:
        log("## B: llama.cpp convert_hf_to_gguf.py -> tui-llm (against transformers)")
        part_b(work, text, args.llama_cpp_src)
    if not args.skip_c:
        log("## C: the commands: prepare -> train -> export --to gguf -> llama.cpp, and --init-from the GGUF back")
        part_c(work, text, args.steps)


if __name__ == "__main__":
    main()
