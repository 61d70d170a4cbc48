"""The KV-cache sampler against re-running the full forward per token."""

import numpy as np
import pytest

from tui_llm.engine.models.gpt2 import GPT
from tui_llm.engine.models.gpt2_config import GPTConfig
from tui_llm.engine.tokenizers.gpt2 import get_tokenizer
from tui_llm.engine.training.sampler import Sampler, choose_token

CFG = GPTConfig(max_seq_len=48, vocab_size=50257, num_layers=2, num_heads=2, channels=32)


@pytest.fixture(scope="module")
def sampler():
    model = GPT.random_init(CFG, seed=9)
    model.params.wte[:] *= 20  # sharper distributions than a fresh init: sampling is less flat
    return Sampler(model, get_tokenizer())


def test_kv_cache_equals_full_forward_token_for_token(sampler):
    for prompt, temperature, top_k in (("", 1.0, 0), ("First Citizen:\n", 0.8, 40), ("Hello", 0.0, 0)):
        cached = sampler.generate(prompt, 20, temperature=temperature, top_k=top_k, seed=5)
        full = sampler.generate(prompt, 20, temperature=temperature, top_k=top_k, seed=5, use_cache=False)
        assert cached.token_ids == full.token_ids
        np.testing.assert_allclose(cached.token_probs, full.token_probs, rtol=1e-4)
        assert len(cached.token_ids) == 20 and len(cached.token_texts) == 20
        assert cached.text == "".join(cached.token_texts)


def test_prompt_round_trips_and_seed_repeats(sampler):
    result = sampler.generate("To be, or not to be", 5, seed=1)
    assert result.prompt == "To be, or not to be"
    assert sampler.encoding.decode(result.prompt_ids) == result.prompt
    assert sampler.generate("To be, or not to be", 5, seed=1).token_ids == result.token_ids


def test_context_is_capped_at_the_model_length(sampler):
    long_prompt = list(range(100, 200))  # longer than max_seq_len 48
    result = sampler.generate(long_prompt, 100, seed=0)
    assert len(result.token_ids) == CFG.max_seq_len - 1


def test_choose_token_top_k_and_greedy():
    logits = np.array([0.0, 5.0, 4.0, 3.0, -1.0, 9.0, 9.0, 9.0], np.float32)  # last 3 are padding
    buf = np.empty(8, np.float32)
    assert choose_token(logits, 5, 0.0, 0, 0.3, buf) == (1, 1.0)
    seen = {choose_token(logits, 5, 1.0, 2, coin, buf)[0] for coin in np.linspace(0, 0.999, 50)}
    assert seen == {1, 2}
    token, prob = choose_token(logits, 5, 1.0, 0, 0.999999, buf)
    assert token < 5
    e = np.exp(logits[:5] - 5.0)
    assert choose_token(logits, 5, 1.0, 0, 0.0, buf)[1] == pytest.approx(e[0] / e.sum(), rel=1e-5)


def test_extend_equals_the_training_forward():
    """The cached path (prompt at once, then one position at a time) gives forward()'s logits."""
    model = GPT.random_init(CFG, seed=4)
    ids = np.random.default_rng(0).integers(0, CFG.vocab_size, 12).astype(np.int32)
    model.forward(ids[None, :])
    full = model.acts.logits  # (12, Vp), float32
    cache = model.new_kv_cache()
    np.testing.assert_allclose(model.extend(cache, ids[:5], 0), full[4], rtol=1e-4, atol=1e-5)
    for t in range(5, 12):
        np.testing.assert_allclose(model.extend(cache, ids[t:t + 1], t), full[t], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError):
        model.extend(cache, ids, CFG.max_seq_len - 3)  # past the last position
    with pytest.raises(ValueError):
        model.extend(cache, np.array([CFG.vocab_size], np.int32), 0)


def test_sampler_takes_eot_and_text_from_the_tokenizer():
    class Digits:  # a toy tokenizer: token i is the character str(i % 10), token 3 ends a text
        eot_token = 3

        def encode_ordinary(self, text):
            return [int(c) for c in text]

        def decode(self, ids):
            return "".join(str(i % 10) for i in ids)

        def decode_single_token_bytes(self, i):
            return str(i % 10).encode()

    model = GPT.random_init(GPTConfig(max_seq_len=16, vocab_size=10, num_layers=1, num_heads=1, channels=8), seed=1)
    sampler = Sampler(model, Digits())
    result = sampler.generate("12", 10, seed=3, stop_at_eot=True)
    assert result.prompt_ids == [1, 2]
    assert result.text == "".join(result.token_texts) == "".join(str(t) for t in result.token_ids)
    assert 3 not in result.token_ids[:-1] and (len(result.token_ids) == 10 or result.token_ids[-1] == 3)
    assert result.tok_per_s > 0
