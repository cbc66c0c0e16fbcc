"""The scoring stage's model tasks: templates (templates/*.yaml) + the parsers of their answers."""

from pathlib import Path

from resources.llm.tasks import Task

from ..common.answers import extract_final_answer

TEMPLATES = Path(__file__).parent / "templates"

#: a math item: the parsed value is the final answer
SOLVE_MATH = Task.from_file(TEMPLATES / "solve_math.yaml", parse=lambda text, row: extract_final_answer(text))
#: a free-form item: the parsed value is the whole answer
ANSWER = Task.from_file(TEMPLATES / "answer.yaml", parse=lambda text, row: text)
