"""Which chat template renders the prompts: the model's own, a built-in one, a file, or none."""
# The model's own template is the default. A model without one needs --lac-chat-template NAME|FILE
# (a Jinja template, as transformers' apply_chat_template takes it) or --lac-no-chat-template (raw
# text with the tokenizer's BOS, for base models). The choice is part of a run's identity.
from __future__ import annotations

import hashlib
import traceback
from dataclasses import dataclass
from pathlib import Path

from ..errors import NoChatTemplateError, UsageError
from ..readfile import TEMPLATE, exists, read_text, shown

BUILTIN = {
    "chatml": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
              "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    "gemma": "{{ bos_token }}{% for m in messages %}<start_of_turn>"
             "{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] | trim }}"
             "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n"
             "{% endif %}",
    "llama3": "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}"
              "<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
              "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n"
              "{% endif %}",
}
FIXES = ("--lac-chat-template FILE (a Jinja chat template) or one of the built-in names "
         f"{', '.join(BUILTIN)}, or --lac-no-chat-template (raw prompt text, for base models)")


@dataclass(frozen=True)
class ChatTemplate:
    name: str  # "model" (the tokenizer's own), a built-in name, "file:<stem>", or "raw"
    text: str | None = None  # the Jinja source, when lac supplies it

    @property
    def raw(self) -> bool:
        return self.name == "raw"

    @property
    def sha256(self) -> str | None:
        return hashlib.sha256(self.text.encode()).hexdigest() if self.text else None

    @property
    def key(self) -> str:
        """The template's part of an expectations key."""
        return f"{self.name}@{self.sha256[:12]}" if self.name.startswith("file:") else self.name


MODEL = ChatTemplate("model")
# What the start check renders: one user message, and stand-ins for the special tokens a
# tokenizer passes to its template (transformers passes its special_tokens_map the same way).
SAMPLE = "Check message: as a lighthouse keeper, explain how tides work."
PLACEHOLDERS = {"bos_token": "<bos>", "eos_token": "<eos>"}


def _line(exc: BaseException) -> str:
    """Where Jinja puts the error: a syntax error's line, or the template's frame at run time."""
    line = getattr(exc, "lineno", None)
    frames = [f.lineno for f in traceback.extract_tb(exc.__traceback__)
              if f.filename == "<template>"]
    line = line or (frames[-1] if frames else None)
    return f"line {line}: " if line else ""


def _judge(label: str, render) -> None:
    """`render(header)` must give one user message's prompt, without and with the generation
    header: rendered at all, holding the message, the second extending the first."""
    out = {}
    for header in (False, True):
        try:
            out[header] = render(header)
        except Exception as exc:  # any failure here would fail every prompt of the run
            why = str(exc) if len(str(exc)) <= 200 else str(exc)[:197] + "..."
            raise UsageError(f"{label}: {_line(exc)}{type(exc).__name__}: {why}; fix the "
                             f"template (it must render one user message) or pass {FIXES}") \
                from None
    if not all(SAMPLE in rendered for rendered in out.values()):
        raise UsageError(f"{label}: the rendered prompt does not contain the user message "
                         "(messages[0]['content']), so every condition's prompt would be the "
                         f"same; render each message's content, or pass {FIXES}")
    if not out[True].startswith(out[False]) or out[True] == out[False]:
        raise UsageError(f"{label}: the prompt rendered with add_generation_prompt does not "
                         "extend the one rendered without it, so the user turn's last position "
                         "is undefined; add the assistant header only under "
                         f"add_generation_prompt, or pass {FIXES}")


def check(label: str, text: str) -> None:
    """Compile and render the template as transformers will for every prompt (one user message,
    without and with the generation header), so a template that cannot render, or that drops
    the message and would give every condition the same prompt, stops the run at start."""
    from transformers.utils.chat_template_utils import render_jinja_template

    _judge(label, lambda header: render_jinja_template(
        [[{"role": "user", "content": SAMPLE}]], chat_template=text,
        add_generation_prompt=header, **PLACEHOLDERS)[0][0])


def check_model(label: str, tokenizer, template: "ChatTemplate") -> None:
    """The same check through a loaded tokenizer, for the template it will render with (the
    model's own is only known once the model loads)."""
    if template.raw:
        return
    _judge(label, lambda header: tokenizer.apply_chat_template(
        [{"role": "user", "content": SAMPLE}], tokenize=False, chat_template=template.text,
        add_generation_prompt=header))


def choose(option: str | None, raw: bool) -> ChatTemplate:
    """The template a run uses, from --lac-chat-template and --lac-no-chat-template."""
    if option and raw:
        raise UsageError("--lac-chat-template and --lac-no-chat-template exclude each other; pass "
                         "one")
    if raw:
        return ChatTemplate("raw")
    if not option:
        return MODEL
    path = Path(option).expanduser()
    if option in BUILTIN:
        if exists(path, "--lac-chat-template"):  # never guess which one was meant
            raise UsageError(f"--lac-chat-template {option}: both a built-in template and a file "
                             f"in this folder; pass ./{option} for the file, or run elsewhere for "
                             "the built-in one")
        check(f"built-in chat template {option!r}", BUILTIN[option])
        return ChatTemplate(option, BUILTIN[option])
    if not exists(path, "--lac-chat-template"):
        raise UsageError(f"--lac-chat-template {shown(option)!r}: not a file and not a built-in "
                         f"name; pass {FIXES}")
    text = read_text(path, TEMPLATE)  # a regular UTF-8 file of at most 1 MiB, or Unreadable
    if path.suffix == ".json" or text.lstrip().startswith("{\""):
        raise UsageError(f"--lac-chat-template {path}: this looks like a chat_template.json file; "
                         "pass the Jinja text itself (the value of its chat_template key) in a "
                         "file of its own")
    check(f"--lac-chat-template {path}", text)
    return ChatTemplate(f"file:{path.stem}", text)


def attach(loaded, template: ChatTemplate):
    """The loaded model (models.LoadedModel) rendering its prompts with `template`: the model's
    own must exist; the provenance names the template and hashes its text."""
    own = getattr(loaded.tokenizer, "chat_template", None)
    if template.name == "model" and not own:
        raise NoChatTemplateError(f"{loaded.name} has no chat template; pass {FIXES}")
    text = template.text or (own if not template.raw else None)
    loaded.template = template
    loaded.provenance.update(chat_template=template.name, chat_template_sha256=hashlib.sha256(
        text.encode()).hexdigest() if text else None)
    return loaded
