"""Chat templates: the same text and token ids as transformers' apply_chat_template, the reply mask, the sandbox.

The expected ids were produced by transformers (tests/fixtures/chat/make_expected.py, run in a venv
outside the repo) for five real templates (SmolLM2, Qwen2.5, Qwen3, Llama 3.2, Llama 3) and one with
{% generation %} blocks, on small tokenizers with each model's special tokens.
"""

import json
from datetime import datetime
from pathlib import Path

import pytest

import tui_llm
from tui_llm.engine.tokenizers.chat_template import (
    CHATML,
    ChatEncoder,
    ChatTemplate,
    ChatTemplateError,
    encode_chat,
    load_chat_template,
)
from tui_llm.engine.tokenizers.lookup import load_tokenizer

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "chat"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text(encoding="utf-8"))
CONVERSATIONS = json.loads((FIXTURES / "conversations.json").read_text(encoding="utf-8"))
_ENCODERS = {}


def encoder(model, **kwargs) -> ChatEncoder:
    key = (model, json.dumps(kwargs, sort_keys=True))
    if key not in _ENCODERS:
        _ENCODERS[key] = ChatEncoder(FIXTURES / model, **kwargs)
    return _ENCODERS[key]


def replies(enc: ChatEncoder, ids, mask) -> list[str]:
    """The text of each run of masked tokens."""
    runs, run = [], []
    for t, m in zip(ids, mask):
        if m:
            run.append(t)
        elif run:
            runs.append(run)
            run = []
    return [enc.tokenizer.decode(r) for r in runs + ([run] if run else [])]


def test_the_fixtures_cover_every_model_and_both_prompt_modes():
    models = {c["model"] for c in EXPECTED["cases"]}
    assert models == {"smollm2", "qwen2.5", "qwen3", "llama3.2", "llama3", "chatml-generation"}
    assert {c["add_generation_prompt"] for c in EXPECTED["cases"]} == {False, True}
    assert len(EXPECTED["cases"]) >= 100


@pytest.mark.parametrize("case", EXPECTED["cases"],
                         ids=[f"{c['model']}-{c['conversation']}-{'gen' if c['add_generation_prompt'] else 'full'}"
                              f"{'-' + '-'.join(map(str, c['kwargs'].values())) if c['kwargs'] else ''}"
                              for c in EXPECTED["cases"]])
def test_text_ids_and_mask_equal_transformers(case):
    enc = encoder(case["model"], **case["kwargs"])
    messages = CONVERSATIONS[case["conversation"]]
    agp = case["add_generation_prompt"]
    assert enc.render(messages, add_generation_prompt=agp) == case["text"]
    ids, mask = enc.encode(messages, add_generation_prompt=agp)
    assert ids == case["ids"]
    reference = case.get("assistant_masks") or case["trl_mask"]
    if reference is not None:
        assert mask == reference
    if agp:
        assert not any(mask)  # a prompt to be answered has no reply in it


def test_qwen3_replies_of_earlier_turns_are_found_where_the_template_puts_them():
    # Qwen3 drops the empty think block from earlier turns once a later user turn follows, so TRL's
    # prefix rule cannot apply; each reply is still its content plus its end-of-turn text.
    enc = encoder("qwen3")
    ids, mask = enc.encode(CONVERSATIONS[2])
    assert replies(enc, ids, mask) == ["Why did the chicken cross the road?<|im_end|>\n",
                                       "<think>\n\n</think>\n\nTo get to the other side!<|im_end|>\n"]
    ids, mask = enc.encode(CONVERSATIONS[11])
    assert replies(enc, ids, mask) == ["b<|im_end|>\n", "d<|im_end|>\n", "f<|im_end|>\n",
                                       "<think>\n\n</think>\n\nh<|im_end|>\n"]
    ids, mask = enc.encode(CONVERSATIONS[7])  # reasoning_content is rendered inside the reply
    assert replies(enc, ids, mask) == ["<think>\n3 times 7 is 21.\n</think>\n\nThe answer is 21.<|im_end|>\n"]


def test_replies_include_the_end_of_turn_token_for_every_family():
    messages = CONVERSATIONS[2]
    expect = {"smollm2": "To get to the other side!<|im_end|>\n", "qwen2.5": "To get to the other side!<|im_end|>\n",
              "llama3": "To get to the other side!<|eot_id|>", "chatml-generation": "To get to the other side!<|im_end|>"}
    for model, last in expect.items():
        enc = encoder(model)
        ids, mask = enc.encode(messages)
        assert replies(enc, ids, mask)[-1] == last, model
    enc = encoder("llama3.2", date_string="26 Jul 2024")
    ids, mask = enc.encode(messages)
    assert replies(enc, ids, mask) == ["Why did the chicken cross the road?<|eot_id|>",
                                       "To get to the other side!<|eot_id|>"]


def test_train_on_all_and_prompt_completion():
    enc = encoder("smollm2")
    ids, mask = enc.encode(CONVERSATIONS[1], train_on="all")
    assert mask == [1] * len(ids)
    prompt, completion = CONVERSATIONS[3][:2], CONVERSATIONS[3][2:5]  # the completion: a, u, a
    ids, mask = enc.encode_prompt_completion(prompt, completion)
    assert ids == enc.encode(prompt + completion)[0]
    assert replies(enc, ids, mask) == ["Arr, buried on the isle.<|im_end|>\n<|im_start|>user\nWhich isle?<|im_end|>\n"
                                       "<|im_start|>assistant\nThe one with the palm tree, matey.<|im_end|>\n"]
    with pytest.raises(ChatTemplateError, match="train_on"):
        enc.encode(CONVERSATIONS[1], train_on="replies")


def test_encode_chat_takes_a_directory_a_loaded_tokenizer_or_gpt2_with_chatml():
    messages = CONVERSATIONS[0]
    by_dir = encode_chat(str(FIXTURES / "smollm2"), messages)
    assert tui_llm.encode_chat is encode_chat
    assert encode_chat(load_tokenizer(FIXTURES / "smollm2"), messages) == by_dir
    assert by_dir[0] == next(c["ids"] for c in EXPECTED["cases"] if c["model"] == "smollm2" and c["conversation"] == 0)
    ids, mask = encode_chat(None, messages, chat_template="chatml")  # GPT-2: the markers are plain text
    gpt2 = load_tokenizer(None)
    assert gpt2.decode(ids) == ("<|im_start|>user\nHello there<|im_end|>\n"
                                "<|im_start|>assistant\nHi! How can I help?<|im_end|>\n")
    text = gpt2.decode([t for t, m in zip(ids, mask) if m])
    assert text == "Hi! How can I help?<|im_end|>\n"
    with pytest.raises(ChatTemplateError, match="GPT-2's tokenizer has no chat template"):
        encode_chat(None, messages)


# ----------------------------------------------------------------------------------------------------
# loading

def test_template_sources(tmp_path):
    assert load_chat_template("chatml") == CHATML
    model = tmp_path / "model"
    model.mkdir()
    (model / "tokenizer_config.json").write_text(json.dumps({"chat_template": "from config"}))
    assert load_chat_template(None, model) == "from config"
    (model / "chat_template.jinja").write_text("from jinja file")  # transformers 5: the file wins
    assert load_chat_template(None, model) == "from jinja file"
    named = tmp_path / "named.json"
    named.write_text(json.dumps({"chat_template": [{"name": "tool_use", "template": "T"},
                                                   {"name": "default", "template": "D"}]}))
    assert load_chat_template(named) == "D"
    named.write_text(json.dumps({"chat_template": [{"name": "tool_use", "template": "T"}]}))
    with pytest.raises(ChatTemplateError, match="none named 'default'"):
        load_chat_template(named)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ChatTemplateError, match="no chat template.*--chat-template"):
        load_chat_template(None, bare)
    with pytest.raises(ChatTemplateError, match="no such file, and not a built-in"):
        load_chat_template(tmp_path / "missing.jinja")
    (bare / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ChatTemplateError, match="bad JSON"):
        load_chat_template(bare / "tokenizer_config.json")


# ----------------------------------------------------------------------------------------------------
# the environment: transformers' globals and filters, jinja's sandbox

MESSAGES = [{"role": "user", "content": "hi"}]


def render(template, messages=MESSAGES, **kwargs):
    return ChatTemplate(template, {"bos_token": "<s>", "eos_token": "</s>"}).render(messages, **kwargs)


def test_globals_filters_and_whitespace_control():
    assert render("{{ bos_token }}{{ messages[0].content }}{{ eos_token }}") == "<s>hi</s>"
    assert render("{{ add_generation_prompt }}", add_generation_prompt=True) == "True"
    assert render("{{ {'a': '<é>'} | tojson }}") == '{"a": "<é>"}'  # no HTML escaping, no \\u escapes
    assert render("{{ [1] | tojson(indent=2) }}") == "[\n  1\n]"
    assert render('{{ strftime_now("%Y-%m-%d") }}') == datetime.now().strftime("%Y-%m-%d")
    assert render("{% for i in [1, 2, 3] %}{% if i == 2 %}{% break %}{% endif %}{{ i }}{% endfor %}") == "1"
    assert render("{% for i in [1, 2, 3] %}{% if i == 2 %}{% continue %}{% endif %}{{ i }}{% endfor %}") == "13"
    counting = "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}"
    assert render(counting) == "1"
    assert render("{{ dict(a=1)['a'] }}") == "1"
    assert render("  {% if true %}\nx\n  {% endif %}\n") == "x\n"  # trim_blocks and lstrip_blocks
    assert render("{{ date_string }}", date_string="1 Jan 2025") == "1 Jan 2025"
    assert render("{{ messages[0].reasoning_content }}", [{"role": "user", "content": "", "thinking": "t"}]) == "t"
    assert render("{{ 'content' in messages[0] }}", [{"role": "assistant", "content": None, "tool_calls": [1]}]) == "False"


@pytest.mark.parametrize("template, says", [
    ("{{ raise_exception('Conversation roles must alternate') }}", "refused this conversation: Conversation roles must"),
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "refused.*unsafe"),
    ("{{ messages[0].content.__len__() }}", "refused.*unsafe"),
    ("{% set x = messages.append(1) %}", "refused.*unsafe"),          # immutable: the data cannot be changed
    ("{% set x = messages[0].update(role='system') %}", "refused.*unsafe"),
    ("{% set ns = namespace(_x=1) %}", "refused.*cannot set '_x'"),
    ("{{ cycler.__init__.__globals__ }}", "refused.*unsafe"),
    ("{{ joiner.__init__.__globals__.os }}", "refused.*unsafe"),
    ("{{ messages[0].content + 1 }}", "failed on this conversation: TypeError"),
    ("{{ messages[5].content.strip() }}", "refused.*no element 5"),
])
def test_a_template_cannot_escape_or_crash(template, says):
    with pytest.raises(ChatTemplateError, match=says) as e:
        render(template)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("template", ["{{ messages.__class__ }}", "{{ range.__self__ }}", "{{ namespace.__dict__ }}"])
def test_internal_attributes_read_as_undefined(template):
    assert render(template) == ""


def test_a_broken_template_is_one_line():
    with pytest.raises(ChatTemplateError, match="chat template line 2") as e:
        ChatTemplate("ok\n{% for %}")
    assert "\n" not in str(e.value)
    with pytest.raises(ChatTemplateError, match="empty"):
        ChatTemplate("")


def test_a_conversation_the_template_rejects():
    enc = encoder("llama3.2", date_string="26 Jul 2024")
    calls = [{"function": {"name": "a", "arguments": {}}}, {"function": {"name": "b", "arguments": {}}}]
    bad = [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": calls}]
    with pytest.raises(ChatTemplateError, match="only supports single tool-calls"):
        enc.encode(bad)
    with pytest.raises(ChatTemplateError, match="non-empty list"):
        enc.encode([])
