"""Which chat template renders the prompts: the model's own, a built-in one, a file, or none."""
# The model's own template is the default. A model without one needs --chat-template NAME|FILE
# (a Jinja template, as transformers' apply_chat_template takes it) or --no-chat-template (raw
# text with the tokenizer's BOS, for base models). The choice is part of a run's identity.
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError

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
FIXES = ("--chat-template FILE (a Jinja chat template) or one of the built-in names "
         f"{', '.join(BUILTIN)}, or --no-chat-template (raw prompt text, for base models)")


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


def choose(option: str | None, raw: bool) -> ChatTemplate:
    """The template a run uses, from --chat-template and --no-chat-template."""
    if option and raw:
        raise UsageError("--chat-template and --no-chat-template exclude each other; pass one")
    if raw:
        return ChatTemplate("raw")
    if not option:
        return MODEL
    if option in BUILTIN:
        return ChatTemplate(option, BUILTIN[option])
    path = Path(option).expanduser()
    if not path.is_file():
        raise UsageError(f"--chat-template {option!r}: not a file and not a built-in name; pass "
                         f"{FIXES}")
    return ChatTemplate(f"file:{path.stem}", path.read_text())
