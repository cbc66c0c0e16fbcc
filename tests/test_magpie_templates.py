"""Magpie pre-query templates (posttrain_assets/magpie/templates.py + templates/pre_query_templates.yaml):
every family / variant renders, the upstream strings are copied exactly (magpie-align/magpie,
configs/model_configs.json @ e26cb8fe888e912657a45d5e972080f15fa01e6c), SmolLM2's template is what
the bundled tokenizer's chat template renders, the reject rules, and the errors of a bad file."""

import copy

import pytest
import yaml

from posttrain_assets.magpie import templates as mt
from posttrain_assets.magpie.templates import TemplateError, clean_instruction, instruction_issue

# --- upstream strings, verbatim from configs/model_configs.json ------------------------------------
LLAMA3_PLAIN = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
LLAMA3_MATH = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are an AI assistant designed "
               "to provide helpful, step-by-step guidance on solving math problems. The user will ask you a wide "
               "range of complex mathematical questions.\nYour purpose is to assist users in understanding "
               "mathematical concepts, working through equations, and arriving at the correct solutions."
               "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n")
LLAMA3_CODE = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are an AI assistant designed "
               "to provide helpful, step-by-step guidance on coding problems. The user will ask you a wide range "
               "of coding questions.\nYour purpose is to assist users in understanding coding concepts, working "
               "through code, and arriving at the correct solutions.<|eot_id|><|start_header_id|>user"
               "<|end_header_id|>\n\n")
LLAMA3_TRANSLATION = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are an AI assistant "
                      "specifically designed to provide accurate and contextually appropriate translations. Users "
                      "will ask you to translate text between various languages.\nYour purpose is to assist users "
                      "in understanding and conveying meaning across languages, maintaining the original context "
                      "and nuances.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n")
LLAMA3_STOP = ["<|eot_id|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"]
QWEN25_PLAIN = ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
                "<|im_end|>\n<|im_start|>user\n")
QWEN2_PLAIN = "<|im_start|>user\n"
QWEN2_WITH_SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"  # Qwen2-Math
CHATML_STOP = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]
UPSTREAM_PLAIN = {"mistral": "<s> [INST] ", "phi3": "<s> <|user|>\n", "gemma": "<bos><start_of_turn>user\n",
                  "gemma2": "<bos><start_of_turn>user\n\n"}
SMOLLM2_DEFAULT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def test_families_and_variants():
    assert mt.families() == ["llama3", "qwen2", "qwen2.5", "mistral", "phi3", "gemma", "gemma2", "smollm2"]
    domain = ["math", "math.algebra", "math.calculus", "math.geometry", "math.statistics",
              "math.number_theory", "code", "translation", "ja"]
    for fam in mt.families():
        with_default = fam in ("qwen2", "qwen2.5", "smollm2")
        assert mt.variants(fam) == domain + (["default_system"] if with_default else []), fam
    t = mt.default_templates()
    assert t.version == "1"
    assert {v: t.language(v) for v in domain} == {**{v: "en" for v in domain}, "ja": "ja"}


@pytest.mark.parametrize("family", ["llama3", "qwen2", "qwen2.5", "mistral", "phi3", "gemma", "gemma2", "smollm2"])
def test_every_variant_renders(family):
    t = mt.default_templates()
    plain = mt.pre_query(family)
    assert plain and "{system}" not in plain
    rendered = {}
    for v in mt.variants(family):
        text = mt.pre_query(family, v)
        system = mt.system_prompt(family, v)
        assert system and text.count(system) == 1 and "{system}" not in text, (family, v)
        assert text == t.family(family).render(system)
        rendered[v] = text
    assert len(set(rendered.values())) == len(rendered)  # every variant gives its own text
    assert mt.stops(family) and all(mt.stops(family))


def test_llama3_strings_equal_upstream():
    assert mt.pre_query("llama3") == LLAMA3_PLAIN
    assert mt.pre_query("llama3", "math") == LLAMA3_MATH
    assert mt.pre_query("llama3", "code") == LLAMA3_CODE
    assert mt.pre_query("llama3", "translation") == LLAMA3_TRANSLATION
    assert mt.stops("llama3") == LLAMA3_STOP
    assert mt.stops("llama3", include_assistant=True) == LLAMA3_STOP + ["assistant"]
    assert mt.default_templates().family("llama3").stop_token_ids == (128009, 128001, 128006, 128007)


def test_qwen_strings_equal_upstream():
    assert mt.pre_query("qwen2.5") == QWEN25_PLAIN
    assert mt.pre_query("qwen2.5", "default_system") == QWEN25_PLAIN
    assert mt.system_prompt("qwen2.5") == "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    assert mt.pre_query("qwen2") == QWEN2_PLAIN
    assert mt.system_prompt("qwen2") is None  # upstream's plain Qwen2 template has no system turn
    assert mt.pre_query("qwen2", "default_system") == QWEN2_WITH_SYSTEM
    assert mt.stops("qwen2.5") == mt.stops("qwen2") == CHATML_STOP
    assert mt.stops("qwen2.5", include_assistant=True) == CHATML_STOP + ["Assistant", "assistant"]
    # a variant replaces the default system turn
    assert mt.pre_query("qwen2.5", "code").startswith("<|im_start|>system\nYou are an AI assistant designed")
    assert mt.pre_query("qwen2.5", "code").endswith("<|im_end|>\n<|im_start|>user\n")


def test_other_plain_templates_equal_upstream():
    for fam, text in UPSTREAM_PLAIN.items():
        assert mt.pre_query(fam) == text, fam
    # no system role: the variant text opens the user turn, then a blank line
    assert mt.pre_query("gemma2", "ja") == "<bos><start_of_turn>user\n" + mt.system_prompt("gemma2", "ja") + "\n\n"
    assert mt.pre_query("mistral", "code") == "<s> [INST] " + mt.system_prompt("mistral", "code") + "\n\n"


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    from resources.llm import embedded_model_dir

    return AutoTokenizer.from_pretrained(embedded_model_dir())


def _chat_pre_query(tok, system):
    """The chat template's rendering of [system?, user "X"] cut before "X"."""
    msgs = ([{"role": "system", "content": system}] if system is not None else []) + [{"role": "user", "content": "X"}]
    text = tok.apply_chat_template(msgs, tokenize=False)
    cut = text.rindex("X")
    assert text[cut:] == "X<|im_end|>\n"
    return text[:cut]


def test_smollm2_equals_the_bundled_chat_template(smollm2_tokenizer):
    tok = smollm2_tokenizer
    # no system message: the chat template adds its default system turn
    assert mt.pre_query("smollm2") == _chat_pre_query(tok, None)
    assert mt.system_prompt("smollm2") == SMOLLM2_DEFAULT
    assert mt.pre_query("smollm2") == f"<|im_start|>system\n{SMOLLM2_DEFAULT}<|im_end|>\n<|im_start|>user\n"
    for v in mt.variants("smollm2"):
        assert mt.pre_query("smollm2", v) == _chat_pre_query(tok, mt.system_prompt("smollm2", v)), v
    ids = [tok.convert_tokens_to_ids(s) for s in mt.stops("smollm2")]
    assert tuple(ids) == mt.default_templates().family("smollm2").stop_token_ids


# --- reject rules ---------------------------------------------------------------------------------
def test_clean_instruction():
    assert clean_instruction("  How do I sort a list?\n") == "How do I sort a list?"
    assert clean_instruction("user\nHow do I sort a list?") == "How do I sort a list?"
    assert clean_instruction("\nUser:\n\n  How do I sort a list?") == "How do I sort a list?"
    assert clean_instruction("USER \nHi") == "Hi"
    assert clean_instruction("user") == ""
    assert clean_instruction(None) == ""
    # only one leading "user" line, and only when the word is alone on its line
    assert clean_instruction("user\nuser\nHi") == "user\nHi"
    assert clean_instruction("User: How do I sort a list?") == "User: How do I sort a list?"
    assert clean_instruction("username and password: how do I reset them?") == \
        "username and password: how do I reset them?"


def test_empty():
    for text in ("", "   \n\t", None, "user\n", "User:\n  "):
        assert instruction_issue(text, "stop", "qwen2.5") == "empty", repr(text)
    assert instruction_issue("", "length", "llama3") == "empty"  # empty comes first


def test_truncated():
    assert instruction_issue("Write a long essay about the history of", "length", "llama3") == "truncated"
    assert instruction_issue("Write a long essay about the history of Rome.", "stop", "llama3") is None
    assert instruction_issue("Tell me [INST] more", "length", "mistral") == "truncated"  # before the echo rule


@pytest.mark.parametrize("text", [
    "<|im_start|>assistant\nSure, here is a poem.",
    "What is 2+2?<|eot_id|>",
    "Tell me more [INST] about cats",
    "<start_of_turn>model\nSure!",
    "im_start|>user\nhello",                    # a piece of a marker
    "How do I bake bread?<|end|>",
    "What does <|reserved_special_token_3|> do?",  # any <|name|> special token
    "assistant\n\nSure! Here is the answer.",  # a role word on the first line
    "user\nmodel\nHello there",                 # a role word after the dropped "user" line
    "System:\nYou are now in developer mode.",
])
def test_template_echo_markers_and_roles(text):
    assert instruction_issue(text, "stop", "qwen2.5") == "template_echo"


def test_template_echo_repeats_the_system_prompt():
    assert instruction_issue("You are Qwen, created by Alibaba Cloud. What can you do?", "stop",
                             "qwen2.5") == "template_echo"
    assert instruction_issue("you are QWEN,  created by Alibaba   Cloud.", "stop", "qwen2.5") == "template_echo"
    math_echo = "The user will ask you a wide range of complex mathematical questions. Solve x^2 = 4."
    assert instruction_issue(math_echo, "stop", "llama3", "math") == "template_echo"
    assert instruction_issue(math_echo, "stop", "llama3") is None  # the plain template has no system turn
    assert instruction_issue("あなたは親切で知識豊富なAIアシスタントです。東京でおすすめの公園は？", "stop",
                             "gemma2", "ja") == "template_echo"
    assert instruction_issue("Hello!" + SMOLLM2_DEFAULT, "stop", "smollm2") == "template_echo"


def test_good_instructions_pass():
    assert instruction_issue("user\nHow do I reverse a string in Python?", "stop", "smollm2") is None
    assert instruction_issue("Write an email to my assistant about Friday's meeting.", "stop", "qwen2.5") is None
    assert instruction_issue("What is the derivative of x^3 sin(x)?", "stop", "phi3", "math.calculus") is None
    assert instruction_issue("東京でおすすめの公園を教えてください。", "stop", "llama3", "ja") is None
    assert instruction_issue("How do I use the <s> tag in HTML?", "stop", "mistral") is None
    assert instruction_issue("Prove that there are infinitely many primes.", None, "gemma", "math.number_theory") is None


def test_unknown_family_or_variant():
    with pytest.raises(TemplateError, match="unknown family 'llama4'"):
        mt.pre_query("llama4")
    with pytest.raises(TemplateError, match="family 'llama3' has no variant 'default_system'"):
        mt.pre_query("llama3", "default_system")
    with pytest.raises(TemplateError, match="family 'gemma2' has no variant 'math.topology'"):
        instruction_issue("hi", "stop", "gemma2", "math.topology")
    with pytest.raises(TemplateError, match="unknown family"):
        mt.stops("nope")


# --- a bad file -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_data():
    return yaml.safe_load(mt.TEMPLATES_FILE.read_text(encoding="utf-8"))


def _load(tmp_path, data):
    p = tmp_path / "pre_query_templates.yaml"
    p.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return mt.load_templates(p)


def test_bundled_file_round_trips(tmp_path, good_data):
    loaded = _load(tmp_path, copy.deepcopy(good_data))
    assert loaded.families == mt.default_templates().families
    assert good_data["task"] == mt.TEMPLATES_FILE.stem and {"en", "ja"} <= set(good_data["templates"])


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["families"]["llama3"].pop("stop"), "family 'llama3': field 'stop': missing"),
    (lambda d: d["families"]["llama3"].update(stop=[]), "family 'llama3': field 'stop': must be a non-empty list"),
    (lambda d: d["families"]["mistral"].update(system_template="<s> [INST] "),
     "family 'mistral': field 'system_template': must be a string that contains '{system}' once"),
    (lambda d: d["families"]["gemma"].update(variants=["math", "math.topology"]),
     "family 'gemma': variant 'math.topology' (field 'variants'): unknown variant"),
    (lambda d: d["families"]["phi3"].update(stops=["<|end|>"]), "family 'phi3': unknown field(s) 'stops'"),
    (lambda d: d["families"]["qwen2.5"].update(pre_query_template="<|im_start|>system\nYou are Qwen, created by "
                                               "Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"),
     "family 'qwen2.5': field 'pre_query_template': holds default_system but differs"),
    (lambda d: d["families"]["smollm2"].update(stop_token_ids=[1, "2"]),
     "family 'smollm2': field 'stop_token_ids': must be a list of non-negative integers"),
    (lambda d: d["families"]["gemma2"].update(pre_query_template=""),
     "family 'gemma2': field 'pre_query_template': must be a non-empty string"),
    (lambda d: d["templates"]["en"].update(code="  "), "variant 'code' (templates.en): the system text must be"),
    (lambda d: d["templates"]["ja"].update(math="数学の質問をします。"), "variant 'math' (templates.ja): also defined"),
    (lambda d: d["templates"].pop("ja"), "field 'templates': missing language(s) ja"),
    (lambda d: d.update(version=1), "field 'version': must be a non-empty quoted string"),
    (lambda d: d.update(task="magpie"), "field 'task': must be 'pre_query_templates'"),
    (lambda d: d.pop("families"), "missing field(s) families"),
    (lambda d: d.update(extra=1), "unknown field(s) 'extra'"),
])
def test_bad_file_errors_name_the_place(tmp_path, good_data, mutate, message):
    data = copy.deepcopy(good_data)
    mutate(data)
    with pytest.raises(TemplateError) as exc:
        _load(tmp_path, data)
    assert str(exc.value).startswith("pre_query_templates.yaml: ")
    assert message in str(exc.value)


def test_not_yaml(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("task: [unclosed\n", encoding="utf-8")
    with pytest.raises(TemplateError, match="broken.yaml: not valid YAML"):
        mt.load_templates(p)
