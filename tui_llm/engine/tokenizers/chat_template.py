"""A model's chat template, rendered the way transformers renders it, and the loss mask of a conversation.

    ids, mask = encode_chat("path/to/SmolLM2-135M-Instruct", messages)     # or tui_llm.encode_chat
    encoder = ChatEncoder(tokenizer, chat_template="chatml")                # GPT-2 / base models
    ids, mask = encoder.encode(messages)                                   # mask[t] = 1: token t is a reply token

The template (ChatTemplate) is the model's own: `chat_template.jinja` beside tokenizer_config.json,
else tokenizer_config.json's "chat_template" (a string, or a list of {"name", "template"} whose
"default" is used), as transformers 5 loads it; or a file given with --chat-template, or `chatml`.

Rendering copies transformers' environment (utils/chat_template_utils.py): jinja2's
ImmutableSandboxedEnvironment (templates are untrusted code: no attribute access outside the data,
no mutation of it) with trim_blocks and lstrip_blocks, the loop-controls extension, a `{% generation %}`
tag, the globals raise_exception, strftime_now, dict and a namespace that refuses "_" names, a tojson
filter that does not escape HTML, and as variables the tokenizer's special tokens (bos_token,
eos_token, ...), add_generation_prompt and any keyword the caller adds (date_string, enable_thinking).
Messages are cleaned as transformers does (keys whose value is None dropped; reasoning given as
"thinking" or "reasoning" also passed as "reasoning_content"). The rendered text is encoded with the
special tokens recognised and none added, so the ids equal `apply_chat_template(messages, tokenize=True)`
(tests/fixtures/chat/expected.json records transformers' ids for five real templates).

Which tokens count in the loss ("replies"):
  * a template with {% generation %} blocks: the text inside them (transformers' assistant mask);
  * otherwise TRL's rule: for each assistant message i, render messages[:i] with the generation prompt
    (the reply starts where that text ends) and messages[:i+1] (the reply ends where that text ends),
    so the reply includes the template's end-of-turn text ("<|im_end|>\\n", "<|eot_id|>").
    Some templates render an earlier turn differently once later turns follow (Qwen3 drops past
    reasoning and adds "<think>\\n\\n</think>\\n\\n" only to the last turn): there the reply starts where
    the generation-prompt render stops agreeing with the whole conversation, and ends after the
    end-of-turn text that follows the reply's content in the whole conversation (found by rendering it
    once more with a marker appended to that content).
A token counts when it overlaps a reply's characters (transformers' rule for assistant_masks).
train_on="all" counts every token.
"""

from __future__ import annotations

import json
import re
from contextvars import ContextVar
from datetime import datetime
from pathlib import Path

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tui_llm.engine.errors import TuiLlmError

CHAT_TEMPLATE_FILE = "chat_template.jinja"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
TRAIN_ON = ("assistant", "all")
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")

# ChatML with no default system prompt: for models without a template of their own (--chat-template chatml)
CHATML = ("{%- for message in messages %}"
          "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
          "{%- endfor %}"
          "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
BUILTIN_TEMPLATES = {"chatml": CHATML}

_MARKER = "\ue000tui-llm-reply-end\ue001"  # appended to a reply's content to find where it ends
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


class ChatTemplateError(TuiLlmError):
    """A template that cannot be loaded or rendered, or a conversation it cannot take; one line for the user."""


# ----------------------------------------------------------------------------------------------------
# loading

def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ChatTemplateError(f"{path}: bad JSON ({e})") from None
    if not isinstance(data, dict):
        raise ChatTemplateError(f"{path}: not a JSON object")
    return data


def _template_of_config(config: dict, path: Path) -> str | None:
    """tokenizer_config.json's "chat_template": a string, or a list of {"name", "template"} (its "default")."""
    template = config.get("chat_template")
    if template is None or isinstance(template, str):
        return template
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        if isinstance(named.get("default"), str):
            return named["default"]
        raise ChatTemplateError(f"{path}: several chat templates ({', '.join(map(str, named))}) and none named "
                                f"'default'; give one with --chat-template FILE")
    raise ChatTemplateError(f"{path}: chat_template is neither a string nor a list of named templates")


def special_tokens_of(directory) -> dict[str, str]:
    """{"bos_token": "<s>", "eos_token": ...} from tokenizer_config.json (special_tokens_map.json fills gaps)."""
    directory = Path(directory)
    found: dict[str, str] = {}
    for name in (TOKENIZER_CONFIG, "special_tokens_map.json"):
        path = directory / name
        config = _read_json(path) if path.is_file() else {}
        for key in SPECIAL_TOKEN_NAMES:
            value = config.get(key)
            if isinstance(value, dict):  # {"content": "<s>", "lstrip": false, ...}
                value = value.get("content")
            if isinstance(value, str) and key not in found:
                found[key] = value
    return found


def load_chat_template(source, tokenizer_dir=None) -> str:
    """The template text of `source`: "chatml", a .jinja file, a tokenizer_config.json, or a model
    directory; None: the template of tokenizer_dir. ChatTemplateError (one line) when there is none."""
    if source is None:
        if tokenizer_dir is None:
            raise ChatTemplateError("GPT-2's tokenizer has no chat template; give one with --chat-template FILE|chatml")
        source = tokenizer_dir
        missing = (f"{tokenizer_dir}: this tokenizer has no chat template (no {CHAT_TEMPLATE_FILE}, no chat_template "
                   f"in {TOKENIZER_CONFIG}); give one with --chat-template FILE|chatml")
    else:
        if str(source) in BUILTIN_TEMPLATES:
            return BUILTIN_TEMPLATES[str(source)]
        missing = f"{source}: no chat template in this directory"
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / CHAT_TEMPLATE_FILE).is_file():  # transformers 5: the .jinja file wins over the config's key
            path = path / CHAT_TEMPLATE_FILE
        elif (path / TOKENIZER_CONFIG).is_file():
            path = path / TOKENIZER_CONFIG
        else:
            raise ChatTemplateError(missing)
    if not path.is_file():
        raise ChatTemplateError(f"{source}: no such file, and not a built-in template ({', '.join(BUILTIN_TEMPLATES)})")
    if path.suffix == ".json":
        template = _template_of_config(_read_json(path), path)
        if template is None:
            raise ChatTemplateError(missing if path.parent == Path(source).expanduser() else
                                    f"{path}: no chat_template in this file")
        return template
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ChatTemplateError(f"{path}: cannot read the template ({e})") from None


# ----------------------------------------------------------------------------------------------------
# the jinja environment (transformers' choices, our code)

class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: renders its body and, while tracking, records where it lands."""

    tags = {"generation"}

    def __init__(self, environment):
        super().__init__(environment)
        self.tracking: ContextVar = ContextVar("generation_spans", default=None)

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_generation"), [], [], body).set_lineno(lineno)

    def _generation(self, caller):
        text = caller()
        tracking = self.tracking.get()
        if tracking is not None:  # (blocks rendered so far, spans)
            blocks, spans = tracking
            start = sum(len(b) for b in blocks)
            spans.append((start, start + len(text)))
        return text


class _Namespace(jinja2.utils.Namespace):
    """jinja's namespace() refusing names that start with "_" (no reaching CPython internals)."""

    def __init__(*args, **kwargs):  # jinja's own signature trick, so namespace(self=...) works
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"a template cannot set {name!r} on a namespace")


class _Dict:
    """The `dict` global: builds dicts, offers nothing else (no type to climb from)."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, dict=_Dict(),
                       namespace=_Namespace)
    return env


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def clean_messages(messages) -> list[dict]:
    """transformers' normalisation: keys whose value is None dropped; reasoning also as reasoning_content."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ChatTemplateError("a conversation is a non-empty list of messages")
    cleaned = []
    for m in messages:
        if not isinstance(m, dict):
            raise ChatTemplateError(f"a message must be an object with a role and content, got {type(m).__name__}")
        m = {k: v for k, v in m.items() if v is not None}
        reasoning = next((m[k] for k in REASONING_FIELDS if k in m), None)
        if reasoning is not None:
            m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
        cleaned.append(m)
    return cleaned


class ChatTemplate:
    """A compiled chat template plus the special tokens it sees (bos_token, eos_token, ...)."""

    def __init__(self, template: str, special_tokens: dict | None = None, **template_kwargs):
        if not isinstance(template, str) or not template:
            raise ChatTemplateError("the chat template is empty")
        self.source = template
        env = _environment()
        self._tracker = next(e for e in env.extensions.values() if isinstance(e, _GenerationTag))
        try:
            self.template = env.from_string(template)
        except jinja2.TemplateSyntaxError as e:
            raise ChatTemplateError(f"chat template line {e.lineno}: {_one_line(e)}") from None
        self.variables = {**(special_tokens or {}), **template_kwargs}
        self.has_generation = _GENERATION_TAG.search(template) is not None

    def render(self, messages, add_generation_prompt: bool = False, **kwargs) -> str:
        return self._render(messages, add_generation_prompt, kwargs, None)

    def render_with_spans(self, messages, add_generation_prompt: bool = False, **kwargs):
        """(text, [(start, end) character spans of the {% generation %} blocks])."""
        spans: list[tuple[int, int]] = []
        return self._render(messages, add_generation_prompt, kwargs, spans), spans

    def _render(self, messages, add_generation_prompt, kwargs, spans) -> str:
        variables = {**self.variables, **kwargs, "messages": clean_messages(messages),
                     "add_generation_prompt": bool(add_generation_prompt)}
        variables.setdefault("tools", None)
        variables.setdefault("documents", None)
        blocks: list[str] = []
        token = self._tracker.tracking.set((blocks, spans)) if spans is not None else None
        try:
            for block in self.template.generate(**variables):
                blocks.append(block)
        except jinja2.TemplateError as e:  # raise_exception(), undefined names, sandbox refusals
            raise ChatTemplateError(f"the chat template refused this conversation: {_one_line(e)}") from None
        except Exception as e:
            raise ChatTemplateError(f"the chat template failed on this conversation: {type(e).__name__}: "
                                    f"{_one_line(e)}") from None
        finally:
            if token is not None:
                self._tracker.tracking.reset(token)
        return "".join(blocks)


# ----------------------------------------------------------------------------------------------------
# tokenizers: ids and character offsets of a rendered text

class _HFText:
    """An HF tokenizer.json: special tokens in the text recognised, none added (add_special_tokens=False)."""

    def __init__(self, hf_tokenizer):
        self.tokenizer = hf_tokenizer.tokenizer

    def encode(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets


class _TiktokenText:
    """GPT-2's tiktoken encoding; "<|endoftext|>" in the text is the EOT token, as in transformers' GPT-2."""

    def __init__(self, encoding):
        self.encoding = encoding

    def encode(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        ids = self.encoding.encode(text, allowed_special="all")
        _, starts = self.encoding.decode_with_offsets(ids)
        ends = starts[1:] + [len(text)]
        return ids, [(s, max(e, s + 1)) for s, e in zip(starts, ends)]


def _special_tokens_of_tiktoken() -> dict[str, str]:
    return {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}


def resolve_tokenizer(tokenizer):
    """A loaded tokenizer from an HFTokenizer, a tiktoken Encoding, a model directory or a cached name, or
    None / "gpt2" (GPT-2's). Returns (tokenizer, its directory or None)."""
    from tui_llm.engine.tokenizers.hf import HFTokenizer
    from tui_llm.engine.tokenizers.lookup import find_tokenizer_dir, load_tokenizer

    if tokenizer is None or (isinstance(tokenizer, str) and tokenizer == "gpt2"):
        return load_tokenizer(None), None
    if isinstance(tokenizer, HFTokenizer):
        return tokenizer, tokenizer.path.parent
    if isinstance(tokenizer, (str, Path)):
        directory = find_tokenizer_dir(tokenizer)
        return HFTokenizer.from_dir(directory), directory
    if hasattr(tokenizer, "decode_with_offsets"):  # a tiktoken Encoding
        return tokenizer, None
    raise ChatTemplateError(f"not a tokenizer: {type(tokenizer).__name__} (give a model directory, a cached name "
                            f"or a loaded tokenizer)")


# ----------------------------------------------------------------------------------------------------
# conversations -> (ids, reply mask)

def _common_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix of a and b (comparisons of slices: C speed, log n of them)."""
    if b.startswith(a):
        return len(a)
    lo, hi = 0, min(len(a), len(b))  # a[:lo] == b[:lo], and a[:hi+1] != b[:hi+1]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class ChatEncoder:
    """Renders and encodes conversations with one tokenizer and one template; encode() gives (ids, mask)."""

    def __init__(self, tokenizer=None, chat_template=None, **template_kwargs):
        self.tokenizer, directory = resolve_tokenizer(tokenizer)
        if isinstance(chat_template, ChatTemplate):
            self.template = chat_template
        else:
            text = load_chat_template(chat_template, directory)
            specials = special_tokens_of(directory) if directory is not None else _special_tokens_of_tiktoken()
            self.template = ChatTemplate(text, specials, **template_kwargs)
        self._text = _HFText(self.tokenizer) if directory is not None else _TiktokenText(self.tokenizer)

    # the pieces ------------------------------------------------------------------------------------

    def render(self, messages, add_generation_prompt: bool = False, **kwargs) -> str:
        return self.template.render(messages, add_generation_prompt, **kwargs)

    def encode_text(self, text: str) -> list[int]:
        return list(self._text.encode(text)[0])

    def reply_spans(self, messages, text: str | None = None, **kwargs) -> list[tuple[int, int]]:
        """Character spans of the assistant replies in the rendered conversation `text`."""
        if self.template.has_generation:
            return self.template.render_with_spans(messages, **kwargs)[1]
        text = self.render(messages, **kwargs) if text is None else text
        spans = []
        for i, m in enumerate(messages):
            if isinstance(m, dict) and m.get("role") == "assistant":
                spans.append(self._reply_span(messages, i, text, kwargs))
        return spans

    def _reply_span(self, messages, i, text, kwargs) -> tuple[int, int]:
        prompt = self.render(messages[:i], add_generation_prompt=True, **kwargs) if i else ""
        start = _common_prefix(prompt, text)
        upto = self.render(messages[:i + 1], **kwargs)
        if text.startswith(upto) and len(upto) >= start:
            return start, len(upto)
        # this turn renders differently once later turns follow: find the end of its content in the
        # whole conversation, then the end-of-turn text the template puts after it when it is last
        end = self._content_end(messages, i, text, kwargs, last=False)
        upto_end = self._content_end(messages[:i + 1], i, upto, kwargs, last=True)
        tail = upto[upto_end:] if upto_end is not None else None
        if end is None or tail is None or not text.startswith(tail, end) or end < start:
            raise ChatTemplateError(f"cannot find assistant message {i + 1} in the rendered conversation "
                                    f"(the template does not render it recognisably)")
        return start, end + len(tail)

    def _content_end(self, messages, i, text, kwargs, last) -> int | None:
        content = messages[i].get("content")
        if not isinstance(content, str):
            return None
        marked = list(messages)
        marked[i] = {**messages[i], "content": content + _MARKER}
        try:
            rendered = self.render(marked, **kwargs)
        except ChatTemplateError:
            return None
        at = _common_prefix(rendered, text)
        return at if rendered.startswith(_MARKER, at) else None

    # the whole -------------------------------------------------------------------------------------

    def encode(self, messages, train_on: str = "assistant", add_generation_prompt: bool = False,
               **kwargs) -> tuple[list[int], list[int]]:
        """(token ids, mask): mask[t] = 1 when token t belongs to an assistant reply (train_on="assistant")
        or always (train_on="all"). The ids are apply_chat_template(messages, tokenize=True)'s."""
        if train_on not in TRAIN_ON:
            raise ChatTemplateError(f"train_on must be one of {', '.join(TRAIN_ON)}, got {train_on!r}")
        text = self.render(messages, add_generation_prompt, **kwargs)
        ids, offsets = self._text.encode(text)
        if train_on == "all":
            return list(ids), [1] * len(ids)
        spans = [] if add_generation_prompt else self.reply_spans(messages, text, **kwargs)
        return list(ids), _mask_of(offsets, spans)

    def encode_prompt_completion(self, prompt, completion, train_on: str = "assistant",
                                 **kwargs) -> tuple[list[int], list[int]]:
        """TRL's prompt-completion: the prompt rendered with the generation prompt, the rest (the
        completion's messages and their end-of-turn text) counts."""
        if train_on not in TRAIN_ON:
            raise ChatTemplateError(f"train_on must be one of {', '.join(TRAIN_ON)}, got {train_on!r}")
        messages = list(prompt) + list(completion)
        text = self.render(messages, **kwargs)
        ids, offsets = self._text.encode(text)
        if train_on == "all":
            return list(ids), [1] * len(ids)
        start = _common_prefix(self.render(prompt, add_generation_prompt=True, **kwargs), text)
        return list(ids), _mask_of(offsets, [(start, len(text))])


def _mask_of(offsets, spans) -> list[int]:
    """1 for every token whose characters overlap a span (spans sorted, not overlapping)."""
    mask = [0] * len(offsets)
    k = 0
    for t, (start, end) in enumerate(offsets):
        while k < len(spans) and start >= spans[k][1]:
            k += 1
        if k == len(spans):
            break
        if end > spans[k][0] and end > start:
            mask[t] = 1
    return mask


_ENCODERS: dict = {}


def encode_chat(tokenizer, messages, *, chat_template=None, train_on: str = "assistant",
                add_generation_prompt: bool = False, **template_kwargs) -> tuple[list[int], list[int]]:
    """Token ids and loss mask of one conversation.

    tokenizer: a model directory, a cached Hugging Face name, a loaded HFTokenizer, or None for GPT-2's
    (which needs chat_template="chatml" or a template file). The ids equal transformers'
    `tokenizer.apply_chat_template(messages, tokenize=True)`; mask[t] = 1 when token t is part of an
    assistant reply (its end-of-turn text included), or for every token with train_on="all".
    A directory's encoder is kept for the next call with the same arguments.
    """
    if isinstance(tokenizer, (str, Path, type(None))):
        key = (str(tokenizer), str(chat_template), json.dumps(template_kwargs, sort_keys=True, default=repr))
        encoder = _ENCODERS.get(key)
        if encoder is None:
            _ENCODERS.clear()  # keep one: a model's tokenizer is large
            encoder = _ENCODERS[key] = ChatEncoder(tokenizer, chat_template, **template_kwargs)
    else:
        encoder = ChatEncoder(tokenizer, chat_template, **template_kwargs)
    return encoder.encode(messages, train_on=train_on, add_generation_prompt=add_generation_prompt)
