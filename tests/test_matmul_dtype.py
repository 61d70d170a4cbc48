"""--matmul-dtype: a training step with bf16 products against the float64 reference (within bf16
rounding), exact resume of a bf16 run, and what is refused or falls back on a CPU without
avx512_bf16 (simulated in a subprocess)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from tests import reference_gpt2 as ref_gpt2
from tests import reference_llama as ref_llama
from tests.run_helpers import make_data, read_metrics, run, run_cli
from tests.test_llama import CONFIGS, random_model
from tests.test_lora import lora_config, randomise_adapters
from tests.test_model import CFG, make_batch, reference_params
from tui_llm.engine.kernels.bf16 import narrow_to_bf16
from tui_llm.engine.kernels.bf16_matmul import cpu_has_bf16
from tui_llm.engine.models.gpt2 import GPT
from tui_llm.engine.models.gpt2_config import PARAM_NAMES
from tui_llm.engine.models.llama import Llama

needs_bf16 = pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no avx512_bf16 (vdpbf16ps)")
TINY = ["--model", "d2", "-b", "2", "-t", "16", "--max-seq-len", "32", "--threads", "1", "--init-style", "numpy",
        "--val-every", "0", "--sample-every", "0"]
# Each product's inputs are rounded to bf16 (relative error <= 2^-9); a gradient passes through
# several such products, forward and back, so its error is some multiple of that (fp32's: ~1e-6).
BF16_BOUND = 16 * 2.0**-9


def rel_err(ours, expected) -> float:
    return float(np.max(np.abs(np.asarray(ours, np.float64) - expected)) / np.max(np.abs(expected)))


def norm_err(ours, expected) -> float:
    return float(np.linalg.norm(np.asarray(ours, np.float64) - expected) / np.linalg.norm(expected))


@needs_bf16
def test_gpt2_step_with_bf16_products_against_the_float64_reference():
    model = GPT.random_init(CFG, seed=3)
    P = reference_params(model)
    x, y = make_batch()
    _, loss_ref, G = ref_gpt2.forward_backward(P, x, y, CFG.num_heads, CFG.vocab_size)
    model.w.matmul_dtype = "bf16"
    loss = model.forward(x, y, training=True)
    model.backward()
    assert abs(loss - loss_ref) / loss_ref < 2.0**-9
    errors = {name: rel_err(model.grads.views[name], G[name]) for name in PARAM_NAMES}
    assert max(errors.values()) < BF16_BOUND, errors
    assert max(errors.values()) > 1e-4, "the products were not rounded to bf16"
    assert not model.grads.wte[CFG.vocab_size:].any()

    first = model.grads.flat.copy()  # accumulating a second, identical micro-batch doubles the gradients
    model.forward(x, y, training=True)
    model.backward(accumulate=True)
    np.testing.assert_allclose(model.grads.flat, 2 * first, rtol=1e-5, atol=1e-7)


@needs_bf16
def test_llama_step_with_bf16_products_against_the_float64_reference():
    cfg = CONFIGS["gqa-untied"]
    model = random_model(cfg)
    P = ref_llama.from_engine(model.params, cfg)
    x, y = make_batch()
    _, loss_ref, G = ref_llama.forward_backward(P, ref_llama.ref_config(cfg), x, y)
    model.w.matmul_dtype = "bf16"
    loss = model.forward(x, y, training=True)
    model.backward()
    assert abs(loss - loss_ref) / loss_ref < 2.0**-8
    ours = ref_llama.from_engine(model.grads, cfg)
    # random_model's weights (std 0.2, every norm and bias random) amplify errors more than a
    # trained model's: the bound is on each gradient's norm-wise error, twice GPT-2's
    errors = {key: norm_err(ours[key], expected) for key, expected in G.items()}
    assert max(errors.values()) < 2 * BF16_BOUND, errors
    assert max(errors.values()) > 1e-4, "the products were not rounded to bf16"


@needs_bf16
@pytest.mark.slow
def test_a_bf16_run_resumes_exactly(tmp_path):
    """6 steps straight, and 3 steps then a resume to 6 (which keeps bf16 from the checkpoint's
    settings): the same losses, bit for bit."""
    train = make_data(tmp_path)
    common = [str(train), "--no-ui", *TINY, "--lr", "3e-3", "--matmul-dtype", "bf16"]
    straight = run_cli(*common, "--steps", "6", "--save-every", "0", "--out-dir", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr
    assert "matrix products in bf16" in straight.stdout
    first = run_cli(*common, "--steps", "3", "--save-every", "3", "--out-dir", str(tmp_path / "resumed"))
    assert first.returncode == 0, first.stderr
    resumed = run_cli("--resume", str(tmp_path / "resumed"), "--no-ui", "--steps", "6")
    assert resumed.returncode == 0, resumed.stderr
    assert "matrix products in bf16" in resumed.stdout
    losses = {name: [m["loss"] for m in read_metrics(tmp_path / name) if m["type"] == "train"]
              for name in ("straight", "resumed")}
    assert len(losses["straight"]) == 6 and losses["resumed"] == losses["straight"]
    config = json.loads((tmp_path / "resumed" / "config.json").read_text())
    assert config["run_config"]["matmul_dtype"] == "bf16"

    fp32 = run_cli(*common[:-2], "--steps", "6", "--save-every", "0", "--out-dir", str(tmp_path / "fp32"))
    assert fp32.returncode == 0, fp32.stderr
    fp32_losses = [m["loss"] for m in read_metrics(tmp_path / "fp32") if m["type"] == "train"]
    assert fp32_losses != losses["straight"]  # a different computation ...
    np.testing.assert_allclose(fp32_losses, losses["straight"], rtol=1e-2)  # ... that learns the same


WITHOUT_BF16 = ("import sys\n"
                "import tui_llm.engine.kernels.bf16_matmul as k\n"
                "k.cpu_has_bf16 = lambda: False  # a CPU without avx512_bf16\n"
                "from tui_llm.cli import main\n"
                "sys.exit(main(sys.argv[1:]))\n")


def test_bf16_is_refused_in_one_line_on_a_cpu_without_it(tmp_path):
    train = make_data(tmp_path)
    r = run([sys.executable, "-c", WITHOUT_BF16, str(train), "--no-ui", *TINY, "--steps", "1",
             "--matmul-dtype", "bf16", "--out-dir", str(tmp_path / "run")])
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "--matmul-dtype" in lines[0] and "avx512_bf16" in lines[0] and "Traceback" not in r.stderr


def test_auto_falls_back_to_fp32_with_a_notice(tmp_path):
    train = make_data(tmp_path)
    r = run([sys.executable, "-c", WITHOUT_BF16, str(train), "--no-ui", *TINY, "--steps", "1",
             "--matmul-dtype", "auto", "--out-dir", str(tmp_path / "run")])
    assert r.returncode == 0, r.stderr
    assert "no avx512_bf16" in r.stdout + r.stderr and "matrix products in bf16" not in r.stdout
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["run_config"]["matmul_dtype"] == "fp32"  # recorded resolved


def test_an_unknown_matmul_dtype_is_one_line(tmp_path):
    r = run_cli(str(make_data(tmp_path)), "--no-ui", *TINY, "--matmul-dtype", "fp16")
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "fp16" in lines[0], r.stderr


@needs_bf16
def test_a_lora_run_over_a_bf16_base_with_bf16_products():
    """A frozen base stored as bf16 bits (widened per product, the head in row blocks) and the same
    values stored as fp32 give the same numbers with bf16 products too: rounding a bf16 value to
    bf16 is exact, only the order of float32 sums may differ."""
    cfg = CONFIGS["gqa-untied"]
    bits = np.empty(random_model(cfg).params.flat.size, np.uint16)
    narrow_to_bf16(bits, random_model(cfg).params.flat)
    exact = Llama(cfg, (bits.astype(np.uint32) << 16).view(np.float32))
    bf16 = Llama(cfg, bits)
    x, y = make_batch()
    losses = []
    for model in (exact, bf16):
        model.attach_lora(lora_config(model))
        randomise_adapters(model)
        model.w.matmul_dtype = "bf16"
        losses.append(model.forward(x, y, training=True))
        model.backward()
    assert abs(losses[0] - losses[1]) < 1e-6 * losses[0]
    assert rel_err(bf16.lora.grads.flat, exact.lora.grads.flat.astype(np.float64)) < 1e-5
