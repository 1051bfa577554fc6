"""Chat templates: positions stay right under every built-in template and in raw mode."""
import pytest

from lac_core.errors import NoChatTemplateError, UsageError
from lac_core.protocol.grids import resolve_grid
from lac_core.protocol.prompts import CONDITIONS, render
from lac_core.protocol.templates import BUILTIN, MODEL, ChatTemplate, choose

GRID = resolve_grid("short")


@pytest.mark.parametrize("name", [*BUILTIN, "model", "raw"])
def test_persona_and_task_sit_before_p_user_last(tiny, name):
    """Under each template, the user message (persona and task) is inside ids[:p_user_last + 1],
    and the four conditions of a cell share everything after it (the generation header), so
    p_last is the same header token in every condition."""
    template = choose(name if name in BUILTIN else None, name == "raw")
    tok = tiny.tokenizer
    cell = GRID.cells[1]
    rendered = {c: render(tok, GRID.user_text(cell, c), template) for c in CONDITIONS}
    headers = set()
    for c, r in rendered.items():
        text = GRID.user_text(cell, c)
        assert r.p_last == len(r.ids) - 1
        assert text in tok.decode(r.ids[: r.p_user_last + 1])
        headers.add(tuple(r.ids[r.p_user_last + 1:]))
        if template.raw:
            assert r.p_user_last == r.p_last and tok.decode(r.ids, skip_special_tokens=True) == text
        else:
            assert r.p_user_last < r.p_last and text not in tok.decode(r.ids[r.p_user_last + 1:])
    assert len(headers) == 1
    persona = tok.decode(rendered["XY"].ids[: rendered["XY"].p_user_last + 1])
    assert cell.persona in persona and cell.task in persona


def test_raw_mode_adds_only_the_tokenizers_bos(tiny):
    r = render(tiny.tokenizer, "As Yoda, Write a haiku.", ChatTemplate("raw"))
    plain = tiny.tokenizer("As Yoda, Write a haiku.", add_special_tokens=False)["input_ids"]
    bos = tiny.tokenizer.bos_token_id
    assert list(r.ids) == ([bos] + plain if bos is not None and tiny.tokenizer("x")["input_ids"][0] == bos
                           else plain)


def test_builtin_templates_render_their_markup(tiny):
    for name, marker in (("chatml", "<|im_start|>assistant"), ("gemma", "<start_of_turn>model"),
                         ("llama3", "<|start_header_id|>assistant")):
        r = render(tiny.tokenizer, "Hello there.", choose(name, False))
        assert marker in tiny.tokenizer.decode(r.ids)


def test_template_choice_errors_and_files(tmp_path):
    with pytest.raises(UsageError, match="exclude each other"):
        choose("chatml", True)
    with pytest.raises(UsageError, match="not a file and not a built-in name"):
        choose("nope", False)
    f = tmp_path / "mine.jinja"
    f.write_text(BUILTIN["chatml"])
    t = choose(str(f), False)
    assert t.name == "file:mine" and t.text == BUILTIN["chatml"] and t.key.startswith("file:mine@")
    assert choose(None, False) is MODEL and choose(None, True).raw


def test_a_model_without_a_template_is_refused_by_default(lac_models):
    tok = lac_models("tiny-llama").tokenizer
    saved = tok.chat_template
    try:
        tok.chat_template = None
        with pytest.raises(NoChatTemplateError, match="--lac-no-chat-template"):
            render(tok, "As Yoda, Write a haiku.")
        assert render(tok, "As Yoda, Write a haiku.", choose("llama3", False)).p_last > 0
    finally:
        tok.chat_template = saved


BAD_TEMPLATES = {  # name -> (file text, what the start error says)
    "syntax": ("{% for m in messages %}\n{{ m['content'] }\n{% endfor %}", "line 2: TemplateSyntaxError"),
    "undefined": ("{% for m in messages %}{{ m['content'] }}{% endfor %}\n{{ settings.header }}",
                  "line 2: UndefinedError: 'settings' is undefined"),
    "raises": ("{{ raise_exception('only system messages') }}", "line 1: TemplateError: only system"),
    "no_message": ("{{ bos_token }}<|user|>\n{% if add_generation_prompt %}<|assistant|>{% endif %}",
                   "does not contain the user message"),
    "no_header": ("{% for m in messages %}<|user|>{{ m['content'] }}{% endfor %}",
                  "does not extend the one rendered without it"),
}


@pytest.mark.parametrize("name", BAD_TEMPLATES)
def test_a_chat_template_file_is_compiled_and_rendered_at_start(tmp_path, name):
    """Each of these passed the start check (the file was only read) and then every test errored
    or every condition got the same prompt."""
    text, message = BAD_TEMPLATES[name]
    f = tmp_path / f"{name}.jinja"
    f.write_text(text)
    with pytest.raises(UsageError) as err:
        choose(str(f), False)
    assert f"--lac-chat-template {f}" in str(err.value) and message in str(err.value)
    assert "--lac-no-chat-template" in str(err.value)


def test_a_chat_template_file_that_is_not_text_is_a_usage_error(tmp_path):
    f = tmp_path / "binary.jinja"
    f.write_bytes(b"\xff\xfe{{ messages }}\x80")
    with pytest.raises(UsageError, match="cannot read it") as err:
        choose(str(f), False)
    assert str(f) in str(err.value)


def test_builtin_templates_pass_the_start_check():
    from lac_core.protocol.templates import PLACEHOLDERS, SAMPLE, check

    for name, text in BUILTIN.items():
        check(name, text)  # raises on any failure
    assert {"bos_token", "eos_token"} <= set(PLACEHOLDERS) and SAMPLE
    with pytest.raises(UsageError, match="built-in chat template 'chatml'"):
        check("built-in chat template 'chatml'", BUILTIN["chatml"].replace("{{ m['content'] }}", ""))


def test_a_broken_chat_template_stops_the_session_at_start(tmp_path):
    import subprocess
    import sys

    from lac_core.run.settings import ROOT

    f = tmp_path / "broken.jinja"
    f.write_text(BAD_TEMPLATES["syntax"][0])
    cmd = [sys.executable, "-m", "pytest", "claims/", "-q", "-p", "no:cacheprovider", "--lac-model",
           "tiny-llama", "--lac-chat-template", str(f), "--lac-reports", str(tmp_path / "r")]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 4, out.stdout[-2000:] + out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if "lac:" in line]
    assert len(lines) == 1 and str(f) in lines[0] and "line 2: TemplateSyntaxError" in lines[0]
    assert "passed" not in out.stdout and "error" not in out.stdout and not (tmp_path / "r").exists()


def test_a_model_whose_own_template_drops_the_message_fails_before_any_experiment(tmp_path):
    """Probe B1: the model's own template is only known once it loads; it gets the same check."""
    import subprocess
    import sys

    from lac_core.models import load
    from lac_core.run.settings import ROOT

    lm = load("tiny-llama")
    ckpt = tmp_path / "ckpt"
    lm.model.save_pretrained(ckpt)
    lm.tokenizer.save_pretrained(ckpt)  # then the saved template is edited (the tokenizer is shared)
    template = ckpt / "chat_template.jinja"
    template.write_text(template.read_text().replace("m['content']", "m['contents']"))
    cmd = [sys.executable, "-m", "pytest", "claims/", "-q", "-rfs", "-p", "no:cacheprovider",
           "--lac-no-cache", "--lac-model", str(ckpt), "--lac-grid", "example", "--lac-reports",
           str(tmp_path / "r"), "-k", "c1_additive or c4_no"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    text = out.stdout + out.stderr
    assert out.returncode == 1 and "does not contain the user message" in text, text[-2000:]
    assert "sweep: started" not in text and "HOLDS" not in text


@pytest.mark.parametrize("name, body, message", [
    ("chat_template.json", '{"chat_template": "{{ messages }}"}', "looks like a chat_template.json"),
    ("chatml", "{{ messages[0]['content'] }}", "both a built-in template and a file"),
])
def test_ambiguous_or_wrapped_template_files_are_refused(tmp_path, monkeypatch, name, body, message):
    """Probes B5, B6: a JSON wrapper is named as such; a file shadowing a built-in name is never
    silently ignored."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_text(body)
    with pytest.raises(UsageError, match=message):
        choose(name, False)
