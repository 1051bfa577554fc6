"""Token audit of each chat template and the probe positions PROTOCOL.md defines."""
import pytest

from lac_core.errors import NoChatTemplateError, TokenizationError, UsageError
from lac_core.protocol.grids import resolve_grid
from lac_core.protocol.prompts import (CONDITIONS, PROBES, layer_fractions_to_layers, mid_layer, multilayer_sets,
                              render, swept_layers)
from lac_core.models.tiny import tiny_tokenizer

GRIDS = {name: resolve_grid(name) for name in ("short", "long", "markers")}


def _template_text(tok, text, header):
    return tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                   add_generation_prompt=header)


def test_token_audit(any_lm):
    tok = any_lm.tokenizer
    for grid in ("short", "long"):
        g = GRIDS[grid]
        for cell in g.cells[:3]:
            for cond in CONDITIONS:
                text = g.user_text(cell, cond)
                r = render(tok, text)
                ids = list(r.ids)
                rendered = _template_text(tok, text, True)
                if tok.bos_token_id is not None:
                    # tokenization adds no BOS of its own: every BOS comes from the template text
                    # (SmolLM2's BOS is <|im_start|>, which opens each of its three turns)
                    assert ids.count(tok.bos_token_id) == rendered.count(tok.bos_token)
                    assert ids[:2] != [tok.bos_token_id] * 2, "double BOS"
                # p_last is the last prompt token; p_user_last ends the user turn
                assert r.p_last == len(ids) - 1
                user_only = tok(_template_text(tok, text, False), add_special_tokens=False)["input_ids"]
                assert ids[: r.p_user_last + 1] == user_only
                header = tok.decode(ids[r.p_user_last + 1:])
                assert text not in header and len(header) > 0
                assert text in tok.decode(ids[: r.p_user_last + 1])
                assert [r.position(p) for p in PROBES] == [r.p_user_last, r.p_last, r.p_last + 1, r.p_last + 2]


def test_conditions_text():
    g = GRIDS["short"]
    cell = g.cells[0]
    assert g.user_text(cell, "XY") == f"As {cell.persona}, {cell.task}"
    assert g.user_text(cell, "BB") == f"As {g.baseline_persona}, {g.baseline_task}"
    assert g.user_text(cell, "XB") == f"As {cell.persona}, {g.baseline_task}"
    assert g.user_text(cell, "BY") == f"As {g.baseline_persona}, {cell.task}"
    assert g.user_text(cell, "bare") == cell.task
    assert [len(GRIDS[k].cells) for k in ("short", "long", "markers")] == [12, 48, 24]


def test_double_bos_is_caught():
    tok = tiny_tokenizer("gemma2")
    saved = tok.chat_template
    try:
        tok.chat_template = "{{ bos_token }}" + saved  # a template that doubles BOS
        with pytest.raises(TokenizationError, match="double BOS"):
            render(tok, "As Yoda, Write a haiku.")
    finally:
        tok.chat_template = saved


def test_missing_chat_template_is_an_error():
    tok = tiny_tokenizer("llama")
    saved = tok.chat_template
    try:
        tok.chat_template = None
        with pytest.raises(NoChatTemplateError, match="chat template"):
            render(tok, "As Yoda, Write a haiku.")
    finally:
        tok.chat_template = saved


def test_paper_layer_mapping():
    assert layer_fractions_to_layers(26) == (6, 10, 14, 18, 22)
    assert layer_fractions_to_layers(28) == (7, 11, 15, 20, 24)
    assert layer_fractions_to_layers(36) == (9, 14, 20, 25, 31)
    assert mid_layer(26) == 14
    assert multilayer_sets(26) == ((14,), (10, 12, 14), (10, 12, 14, 16, 18), (10, 12, 14, 16, 18, 20, 22),
                                   (6, 8, 10, 12, 14, 16, 18, 20, 22))
    assert all(1 <= layer <= 3 for layer in layer_fractions_to_layers(4))


def test_swept_layers_from_indices_or_fractions():
    assert swept_layers(30) == (8, 12, 16, 21, 26)
    assert swept_layers(30, (4, 8, 12)) == (4, 8, 12)
    assert swept_layers(30, (0.25, 0.5)) == (8, 15)
    with pytest.raises(UsageError, match="0.5 and 0.5 are both layer 15"):  # a repeat is an error
        swept_layers(30, (0.25, 0.5, 0.5))
    with pytest.raises(UsageError, match="30 is layer 30, out of range"):
        swept_layers(30, (4, 30))
