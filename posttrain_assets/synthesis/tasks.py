"""The synthesis stage's model tasks: templates (templates/*.yaml) + the parsers of their answers.

Evol-Instruct (`evolved_instructions`): the three evolution operations (`evol_width`, `evol_depth`
with its methods, `evol_flatten`), the equality judge (`evol_equal`, elimination rule 1), the
seed's quality judge (`evol_judge`) and the answer (`evol_answer`, whose system prompt goes into
the row's conversation)."""

from pathlib import Path

import yaml

from resources.llm.tasks import Task, TaskParseError

TEMPLATES = Path(__file__).parent / "templates"


def parse_evolved_prompt(text: str, row: dict) -> str:
    """The evolved prompt as the model wrote it, stripped (surrounding quotes removed). Nothing else is
    cleaned: an answer that copies the template's words is eliminated (rule 4), not repaired."""
    out = text.strip()
    if len(out) >= 2 and out[0] == out[-1] and out[0] in "\"'「":
        out = out[1:-1].strip()
    elif len(out) >= 2 and out[0] == "「" and out[-1] == "」":
        out = out[1:-1].strip()
    return out


def _yaml(name: str) -> dict:
    return yaml.safe_load((TEMPLATES / f"{name}.yaml").read_text(encoding="utf-8"))


#: evolution operations (the `chain` names them): width = in-breadth, depth = in-depth, flatten
EVOLVE = {
    "width": Task.from_file(TEMPLATES / "evol_width.yaml", parse=parse_evolved_prompt),
    "depth": Task.from_file(TEMPLATES / "evol_depth.yaml", parse=parse_evolved_prompt),
    "flatten": Task.from_file(TEMPLATES / "evol_flatten.yaml", parse=parse_evolved_prompt),
}
#: in-depth methods: name -> {language: the method's sentence} (filled into evol_depth's `{method}`)
DEPTH_METHODS: dict[str, dict[str, str]] = _yaml("evol_depth")["methods"]
#: elimination rule 4: every evolution template's own words, in every language
TEMPLATE_WORDS: tuple[str, ...] = tuple(dict.fromkeys(
    w for op in ("evol_width", "evol_depth", "evol_flatten")
    for words in (_yaml(op).get("leak_words") or {}).values() for w in words))

#: elimination rule 1: {"equal": bool, "reason": str} (JSON-schema path; parsed + validated)
EQUAL = Task.from_file(TEMPLATES / "evol_equal.yaml")
#: the seed's judge: {"accept", "natural", "clear_intent", "safe", "answerable", "reason"}
JUDGE = Task.from_file(TEMPLATES / "evol_judge.yaml")
#: the answer to an accepted prompt (the whole text)
ANSWER = Task.from_file(TEMPLATES / "evol_answer.yaml", parse=lambda text, row: text.strip())


def depth_method_text(method: str, language: str) -> str:
    """The sentence of an in-depth method in `language` (falling back to English)."""
    texts = DEPTH_METHODS[method]
    return texts.get(language) or texts["en"]


def system_prompt(language: str) -> str:
    """The conversation's system prompt: the answer task's system turn in the row's language."""
    return ANSWER.templates[ANSWER.language_of({"language": language})]["system"]


__all__ = ["ANSWER", "DEPTH_METHODS", "EQUAL", "EVOLVE", "JUDGE", "TEMPLATE_WORDS", "TaskParseError",
           "depth_method_text", "parse_evolved_prompt", "system_prompt"]
