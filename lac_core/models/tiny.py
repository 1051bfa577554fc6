"""Tiny random models of three architectures, built locally, for fast self-tests."""
# Each comes with a small byte-level BPE tokenizer trained on the grid text and a chat template in
# the style of its family (BOS in the template for Llama and Gemma, ChatML with a default system
# turn for Qwen2), so the token audit meets the same hazards as on the real models.
from __future__ import annotations

from functools import lru_cache

import torch
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig,
                          LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config,
                          Qwen2ForCausalLM)

from ..paths import GRID_DIR, TINY_ARCHITECTURES

TINY_SEED = 1234
TINY_LAYERS = 8

_STYLES = {  # special tokens and a chat template in the style of each family
    "llama": dict(
        bos="<s>", eos="</s>", pad="<pad>", extra=["<|start_header|>", "<|end_header|>", "<|eot|>"],
        add_bos=True,
        template="{{ bos_token }}{% for m in messages %}<|start_header|>{{ m['role'] }}"
                 "<|end_header|>\n\n{{ m['content'] }}<|eot|>{% endfor %}"
                 "{% if add_generation_prompt %}<|start_header|>assistant<|end_header|>"
                 "\n\n{% endif %}"),
    "qwen2": dict(
        bos=None, eos="<|im_end|>", pad="<|endoftext|>", extra=["<|im_start|>"], add_bos=False,
        template="{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a tiny "
                 "assistant.<|im_end|>\n{% endif %}{% for m in messages %}<|im_start|>"
                 "{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
    "gemma2": dict(
        bos="<bos>", eos="<eos>", pad="<pad>", extra=["<start_of_turn>", "<end_of_turn>"],
        add_bos=True,
        template="{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == "
                 "'assistant' else m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
                 "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"),
}
_STYLES["gemma3"] = _STYLES["gemma2"]
ARCHITECTURES = TINY_ARCHITECTURES
assert set(_STYLES) == set(ARCHITECTURES), "a tiny family without a style, or the reverse"


def _corpus() -> list[str]:
    """The paper grids' texts, in a fixed order: the tokenizer (and so every tiny number) is the
    same whatever else lies in fixtures/grids."""
    grids = [yaml.safe_load((GRID_DIR / f"{n}.yaml").read_text())
             for n in ("short", "long", "markers")]
    texts = [grids[0]["baseline"]["persona"], grids[0]["baseline"]["task"]]
    for grid in grids:
        texts += list(grid["personas"].values()) + list(grid["tasks"].values())
    for words in grids[2]["markers"].values():
        texts += words
    return texts + ["system user assistant model As You are a tiny assistant."]


@lru_cache(maxsize=None)
def tiny_tokenizer(arch: str) -> PreTrainedTokenizerFast:
    """A deterministic byte-level BPE tokenizer (about 600 tokens), the family's chat template."""
    style = _STYLES[arch]
    specials = [t for t in (style["bos"], style["eos"], style["pad"]) if t] + style["extra"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer=trainer)
    if style["add_bos"]:
        bos_id = tok.token_to_id(style["bos"])
        tok.post_processor = processors.TemplateProcessing(single=f"{style['bos']} $A",
                                                           special_tokens=[(style["bos"], bos_id)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=style["bos"],
                                   eos_token=style["eos"], pad_token=style["pad"],
                                   additional_special_tokens=style["extra"])
    fast.chat_template = style["template"]
    return fast


def tiny_model(arch: str, seed: int = TINY_SEED) -> torch.nn.Module:
    """A randomly initialised model of the family's shape, identical for the same seed."""
    tok = tiny_tokenizer(arch)
    common = dict(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=TINY_LAYERS,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        initializer_range=0.2, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id, tie_word_embeddings=False, attn_implementation="eager",
    )
    if arch == "llama":
        config, cls = LlamaConfig(**common), LlamaForCausalLM
    elif arch == "qwen2":
        config, cls = Qwen2Config(**common), Qwen2ForCausalLM
    elif arch == "gemma2":
        config, cls = Gemma2Config(head_dim=16, sliding_window=512, **common), Gemma2ForCausalLM
    elif arch == "gemma3":  # a window of 8, far shorter than any prompt: the cache must handle it
        config = Gemma3TextConfig(head_dim=16, sliding_window=8, **common)
        cls = Gemma3ForCausalLM
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {ARCHITECTURES}")
    torch.manual_seed(seed)
    return cls(config).to(torch.float32).eval()
