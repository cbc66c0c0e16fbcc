"""Write the hand-written fixture files under tests/data/brought/.

Every row here was written for these tests; nothing is copied from the public
datasets whose *schemas* (column names, nesting, types) the files follow. See
SOURCE.md next to this script for the row-by-row table.

Run:  .venv/bin/python tests/data/brought/make_fixtures.py
Re-running rewrites every file; the JSON / JSONL output is byte-identical from
run to run (fixed row order, fixed key order, no timestamps, no randomness), and
the parquet files are written by pyarrow with zstd compression from the same
fixed data.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent


def boxed(ans: str) -> str:
    return "\\boxed{" + ans + "}"


def write_jsonl(rel: str, rows: list[dict]) -> None:
    path = HERE / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_json(rel: str, rows: list[dict]) -> None:
    path = HERE / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(json.dumps(rows, ensure_ascii=False, indent=2) + "\n")


def write_parquet(rel: str, rows: list[dict], schema: pa.Schema) -> None:
    path = HERE / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, path, compression="zstd")


# --------------------------------------------------------------------------
# 1. arena/arena_battles.jsonl  (schema of lmarena-ai/arena-human-preference-100k)
# --------------------------------------------------------------------------

def _toks(text: str) -> int:
    # A stand-in token count (about four characters a token), deterministic.
    return max(1, len(text) // 4)


def _conv(pairs: list[tuple[str, str]]) -> list[dict]:
    out = []
    for user, assistant in pairs:
        out.append({"role": "user", "content": user})
        out.append({"role": "assistant", "content": assistant})
    return out


def _category(*, complexity=False, creativity=False, domain_knowledge=False,
              problem_solving=False, real_world=False, specificity=False,
              technical_accuracy=False, if_=False, if_score=0, math=False) -> dict:
    return {
        "criteria_v0.1": {
            "complexity": complexity,
            "creativity": creativity,
            "domain_knowledge": domain_knowledge,
            "problem_solving": problem_solving,
            "real_world": real_world,
            "specificity": specificity,
            "technical_accuracy": technical_accuracy,
        },
        "if_v0.1": {"if": if_, "score": if_score},
        "math_v0.1": {"math": math},
    }


def arena_row(n: int, *, model_a: str, model_b: str, winner: str,
              a: list[tuple[str, str]], b: list[tuple[str, str]], language: str,
              is_code: bool = False, is_refusal: bool = False,
              high_freq: bool = False, category: dict | None = None) -> dict:
    conversation_a = _conv(a)
    conversation_b = _conv(b)
    turn = len(a)
    return {
        "question_id": f"aaaa{n:028x}",
        "model_a": model_a,
        "model_b": model_b,
        "winner": winner,
        "conversation_a": conversation_a,
        "conversation_b": conversation_b,
        "turn": turn,
        "anony": True,
        "language": language,
        "tstamp": 1717200000.25 + 3600.5 * n,
        "conv_metadata": {
            "sum_user_tokens": sum(_toks(u) for u, _ in a),
            "sum_assistant_a_tokens": sum(_toks(x) for _, x in a),
            "sum_assistant_b_tokens": sum(_toks(x) for _, x in b),
            "turns": turn,
        },
        "is_code": is_code,
        "is_refusal": is_refusal,
        "dedup_tag": {"high_freq": high_freq, "sampled": True},
        "category_tag": category if category is not None else _category(),
    }


JA_TIE_PROMPT = "富士山の高さは何メートルですか。"

ARENA_ROWS = [
    # q1: English single turn, winner model_a
    arena_row(
        1, model_a="gpt-4o-2024-08-06", model_b="llama-3.1-70b-instruct", winner="model_a",
        a=[("Give me one tip for keeping basil fresh in the kitchen.",
            "Trim the stems and keep the basil in a glass of water on the counter, like cut flowers.")],
        b=[("Give me one tip for keeping basil fresh in the kitchen.",
            "Put it in the fridge.")],
        language="English", category=_category(real_world=True, specificity=True),
    ),
    # q2: English single turn, winner model_b (a coding question)
    arena_row(
        2, model_a="gemma-2-27b-it", model_b="claude-3-5-sonnet-20241022", winner="model_b",
        a=[("How do I reverse a list in Python without changing the original?",
            "Call my_list.reverse() on it.")],
        b=[("How do I reverse a list in Python without changing the original?",
            "Use slicing: reversed_copy = my_list[::-1] returns a new list and leaves my_list as it was.")],
        language="English", is_code=True,
        category=_category(problem_solving=True, technical_accuracy=True, specificity=True),
    ),
    # q3: English two-turn battle, same user turns on both sides, winner model_a
    arena_row(
        3, model_a="mistral-large-2407", model_b="qwen2.5-72b-instruct", winner="model_a",
        a=[("Name a planet with rings.",
            "Saturn is the best-known planet with rings."),
           ("Does any other planet have them?",
            "Yes, Jupiter, Uranus and Neptune also have faint ring systems.")],
        b=[("Name a planet with rings.",
            "Saturn."),
           ("Does any other planet have them?",
            "No, only Saturn has rings.")],
        language="English", category=_category(domain_knowledge=True),
    ),
    # q4: Japanese single turn, winner tie
    arena_row(
        4, model_a="gemini-1.5-pro-002", model_b="gpt-4o-mini-2024-07-18", winner="tie",
        a=[(JA_TIE_PROMPT, "富士山の高さは約3776メートルです。")],
        b=[(JA_TIE_PROMPT, "標高は3776メートルで、日本で一番高い山です。")],
        language="Japanese", high_freq=True, category=_category(domain_knowledge=True),
    ),
    # q5: Chinese single turn, winner tie (bothbad); model_b refuses
    arena_row(
        5, model_a="deepseek-v2.5", model_b="yi-lightning", winner="tie (bothbad)",
        a=[("请用一句话解释什么是光合作用。", "光合作用就是植物晚上吸收氧气的过程。")],
        b=[("请用一句话解释什么是光合作用。", "抱歉,我无法回答这个问题。")],
        language="Chinese", is_refusal=True, category=_category(domain_knowledge=True),
    ),
    # q6: Chinese three-turn battle, winner model_b
    arena_row(
        6, model_a="glm-4-plus", model_b="qwen-max-0919", winner="model_b",
        a=[("推荐一本适合初学者的编程书。", "你可以读任何一本书。"),
           ("这本书用什么语言?", "不确定。"),
           ("大概需要多长时间读完?", "很久。")],
        b=[("推荐一本适合初学者的编程书。", "可以先读一本讲 Python 基础的入门书,例子多、语言浅显。"),
           ("这本书用什么语言?", "书中的例子都用 Python 编写。"),
           ("大概需要多长时间读完?", "每天读一小时的话,大约一个月可以读完。")],
        language="Chinese", category=_category(real_world=True),
    ),
    # q7: same prompt as q4 (a tie), different responses, winner tie
    arena_row(
        7, model_a="claude-3-5-haiku-20241022", model_b="llama-3.1-405b-instruct", winner="tie",
        a=[(JA_TIE_PROMPT, "3776メートルです。")],
        b=[(JA_TIE_PROMPT, "富士山は標高3776メートルの山です。")],
        language="Japanese", high_freq=True, category=_category(domain_knowledge=True),
    ),
    # q8: Japanese two-turn, winner model_a
    arena_row(
        8, model_a="gpt-4o-2024-08-06", model_b="gemma-2-9b-it", winner="model_a",
        a=[("おすすめの朝ごはんを一つ教えてください。", "焼き魚とご飯とみそ汁の和朝食がおすすめです。"),
           ("もっと手軽なものはありますか。", "納豆ご飯なら五分で用意できます。")],
        b=[("おすすめの朝ごはんを一つ教えてください。", "パンです。"),
           ("もっと手軽なものはありますか。", "ありません。")],
        language="Japanese", category=_category(real_world=True),
    ),
    # q9: winner value that no schema declares -> must be an error naming row and field
    arena_row(
        9, model_a="phi-3-medium-4k-instruct", model_b="command-r-plus-08-2024", winner="model_c",
        a=[("What colour do you get by mixing blue and yellow?", "Mixing blue and yellow gives green.")],
        b=[("What colour do you get by mixing blue and yellow?", "You get green paint.")],
        language="English",
    ),
    # q10: user turn 2 differs between conversation_a and conversation_b, winner model_a
    arena_row(
        10, model_a="claude-3-5-sonnet-20241022", model_b="gpt-4o-mini-2024-07-18", winner="model_a",
        a=[("Suggest a name for a grey cat.", "How about Pebble?"),
           ("Give me one more option.", "Smokey is another good choice.")],
        b=[("Suggest a name for a grey cat.", "You could call it Ash."),
           ("Now suggest a name for a black dog.", "Shadow would suit a black dog.")],
        language="English", category=_category(creativity=True),
    ),
]


# --------------------------------------------------------------------------
# 2. webdev_arena/webdev_battles.json  (schema of lmarena-ai/webdev-arena-preference-10k)
# --------------------------------------------------------------------------

def _tsx(component: str, heading: str, body: str) -> str:
    return (
        "export default function " + component + "() {\n"
        "  return (\n"
        "    <main className=\"min-h-screen flex flex-col items-center justify-center\">\n"
        "      <h1 className=\"text-3xl font-bold\">" + heading + "</h1>\n"
        "      <p className=\"mt-4 text-gray-600\">" + body + "</p>\n"
        "    </main>\n"
        "  );\n"
        "}\n"
    )


def _counter_tsx() -> str:
    return (
        "'use client';\n"
        "import { useState } from 'react';\n"
        "\n"
        "export default function Counter() {\n"
        "  const [count, setCount] = useState(0);\n"
        "  return (\n"
        "    <main className=\"p-8\">\n"
        "      <p className=\"text-xl\">Count: {count}</p>\n"
        "      <button className=\"mt-2 rounded bg-blue-600 px-4 py-2 text-white\" onClick={() => setCount(count + 1)}>\n"
        "        Add one\n"
        "      </button>\n"
        "    </main>\n"
        "  );\n"
        "}\n"
    )


def _html(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n"
        "<html lang=\"en\">\n"
        "  <head><meta charset=\"utf-8\"><title>" + title + "</title></head>\n"
        "  <body>\n"
        "    <h1>" + title + "</h1>\n"
        "    <p>" + body + "</p>\n"
        "  </body>\n"
        "</html>\n"
    )


def _object(title: str, description: str, code: str, *, file_path: str = "app/page.tsx",
            dependencies: list[str] | None = None) -> dict:
    return {
        "title": title,
        "description": description,
        "code": code,
        "file_path": file_path,
        "template": "nextjs-developer",
        "dependencies": dependencies if dependencies is not None else ["react", "react-dom", "next"],
        "port": 3000,
        "has_additional_dependencies": False,
        "additional_dependencies": [],
        "install_dependencies_command": "",
    }


def _wuser(text: str) -> dict:
    return {"role": "user", "content": [{"type": "text", "text": text}]}


def _wassistant(text: str, obj: dict, *, plain: bool = False) -> dict:
    content = text if plain else [{"type": "text", "text": text}]
    return {"role": "assistant", "content": content, "object": obj}


def webdev_row(n: int, *, model_a: str, model_b: str, winner: str,
               conversation_a: list[dict], conversation_b: list[dict]) -> dict:
    return {
        "question_id": f"bbbb{n:028x}",
        "model_a": model_a,
        "model_b": model_b,
        "winner": winner,
        "conversation_a": conversation_a,
        "conversation_b": conversation_b,
        "turn": sum(1 for m in conversation_a if m["role"] == "user"),
        "anony": True,
        "language": "English",
        "tstamp": 1730000000.5 + 1800.25 * n,
    }


WEBDEV_ROWS = [
    # w1: winner model_a
    webdev_row(
        1, model_a="claude-3-5-sonnet-20241022", model_b="gpt-4o-2024-11-20", winner="model_a",
        conversation_a=[
            _wuser("Build a landing page for a small bakery."),
            _wassistant("Here is a simple landing page with a heading and a tagline.",
                        _object("Bakery landing page", "A centred heading and a short tagline for a bakery.",
                                _tsx("BakeryHome", "Sunrise Bakery", "Fresh bread every morning from six."))),
        ],
        conversation_b=[
            _wuser("Build a landing page for a small bakery."),
            _wassistant("This page shows only the bakery name.",
                        _object("Bakery name", "A page with the bakery name only.",
                                _tsx("Home", "Bakery", "Welcome."))),
        ],
    ),
    # w2: winner model_b, two turns
    webdev_row(
        2, model_a="gemini-exp-1121", model_b="claude-3-5-sonnet-20241022", winner="model_b",
        conversation_a=[
            _wuser("Make a counter app with one button."),
            _wassistant("A static page that describes a counter.",
                        _object("Counter", "Text describing a counter.",
                                _tsx("CounterInfo", "Counter", "Press the button to count."))),
            _wuser("The button should add one each time."),
            _wassistant("I added a note about the button.",
                        _object("Counter", "Text describing a counter button.",
                                _tsx("CounterInfo", "Counter", "The button adds one."))),
        ],
        conversation_b=[
            _wuser("Make a counter app with one button."),
            _wassistant("A client component that keeps the count in state.",
                        _object("Counter app", "A button that increases a number.", _counter_tsx())),
            _wuser("The button should add one each time."),
            _wassistant("It already adds one per click; here is the same component.",
                        _object("Counter app", "A button that adds one per click.", _counter_tsx())),
        ],
    ),
    # w3: tie
    webdev_row(
        3, model_a="gpt-4o-2024-11-20", model_b="qwen2.5-coder-32b-instruct", winner="tie",
        conversation_a=[
            _wuser("Create a page that says hello in large text."),
            _wassistant("A page with a large hello heading.",
                        _object("Hello page", "Large hello heading.",
                                _tsx("Hello", "Hello!", "Nice to see you."))),
        ],
        conversation_b=[
            _wuser("Create a page that says hello in large text."),
            _wassistant("A greeting page in plain HTML.",
                        _object("Hello page", "Large hello heading in HTML.",
                                _html("Hello!", "Nice to see you."), file_path="index.html",
                                dependencies=[])),
        ],
    ),
    # w4: tie (bothbad)
    webdev_row(
        4, model_a="llama-3.1-405b-instruct", model_b="deepseek-v2.5", winner="tie (bothbad)",
        conversation_a=[
            _wuser("Build a to-do list where I can add items."),
            _wassistant("A heading for a to-do list.",
                        _object("Todo", "A heading only.", _tsx("Todo", "To-do", "Nothing yet."))),
        ],
        conversation_b=[
            _wuser("Build a to-do list where I can add items."),
            _wassistant("A placeholder page.",
                        _object("Placeholder", "Placeholder text.", _tsx("Page", "Coming soon", "Check back later."))),
        ],
    ),
    # w5: winner model_b; conversation_a's assistant content is a plain string, not a list of parts
    webdev_row(
        5, model_a="gpt-4o-mini-2024-07-18", model_b="claude-3-5-haiku-20241022", winner="model_b",
        conversation_a=[
            _wuser("Show a weather card for Paris."),
            _wassistant("A card with the city name.",
                        _object("Weather card", "City name only.", _tsx("Weather", "Paris", "Weather unavailable.")),
                        plain=True),
        ],
        conversation_b=[
            _wuser("Show a weather card for Paris."),
            _wassistant("A card with the city, temperature and sky.",
                        _object("Weather card", "City, temperature and sky for Paris.",
                                _tsx("Weather", "Paris", "18 degrees and partly cloudy."),
                                dependencies=["react", "react-dom", "next", "lucide-react"])),
        ],
    ),
]


# --------------------------------------------------------------------------
# 3. openr1/{default,extended}/train-00000-of-00001.parquet  (schema of open-r1/OpenR1-Math-220k)
# --------------------------------------------------------------------------

OPENR1_SCHEMA = pa.schema([
    ("problem", pa.string()),
    ("solution", pa.string()),
    ("answer", pa.string()),
    ("problem_type", pa.string()),
    ("question_type", pa.string()),
    ("source", pa.string()),
    ("uuid", pa.string()),
    ("is_reasoning_complete", pa.list_(pa.bool_())),
    ("generations", pa.list_(pa.string())),
    ("correctness_math_verify", pa.list_(pa.bool_())),
    ("correctness_llama", pa.list_(pa.bool_())),
    ("finish_reasons", pa.list_(pa.string())),
    ("correctness_count", pa.int64()),
    ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
])


def trace(reasoning: str, final: str, ans: str) -> str:
    """A complete generation: think block, then a final text ending in \\boxed{ans}."""
    return "<think>\n" + reasoning + "\n</think>\n\n" + final + " " + boxed(ans)


def truncated(reasoning: str) -> str:
    """A generation cut off by the length limit: no </think>, no answer, mid-sentence."""
    return "<think>\n" + reasoning


def _verdicts(mv: list, llama: list | None) -> list[bool]:
    # Math-Verify first; the LLM verdict where Math-Verify is null.
    out = []
    for i, v in enumerate(mv):
        if v is None:
            v = llama[i] if llama is not None and i < len(llama) else None
        out.append(bool(v))
    return out


def openr1_row(uid: str, *, problem: str, solution: str, answer: str, problem_type: str,
               generations: list[str], complete: list[bool], math_verify: list,
               llama: list | None, finish_reasons: list[str] | None,
               message_from: int | None = None) -> dict:
    verdicts = _verdicts(math_verify, llama)
    if message_from is None:
        correct = [i for i, ok in enumerate(verdicts) if ok]
        message_from = correct[0] if correct else 0
    return {
        "problem": problem,
        "solution": solution,
        "answer": answer,
        "problem_type": problem_type,
        "question_type": "math-word-problem",
        "source": "olympiads",
        "uuid": uid,
        "is_reasoning_complete": complete,
        "generations": generations,
        "correctness_math_verify": math_verify,
        "correctness_llama": llama,
        "finish_reasons": finish_reasons,
        "correctness_count": sum(verdicts),
        "messages": [
            {"role": "user", "content": problem},
            {"role": "assistant", "content": generations[message_from]},
        ],
    }


def _uuid(label: str) -> str:
    return "00000000-0000-4000-8000-0000000000" + label


OPENR1_DEFAULT = [
    # d1: exactly one correct; llama null
    openr1_row(
        _uuid("d1"),
        problem="Find the sum of the first 10 positive integers.",
        solution="The sum is 10 times 11 divided by 2, which is 55. " + boxed("55"),
        answer="55", problem_type="Algebra",
        generations=[
            trace("Use n(n+1)/2 with n = 10: 10 * 11 / 2 = 55.", "The sum is", "55"),
            trace("Pair the numbers into five pairs of 10.", "So the sum is", "50"),
        ],
        complete=[True, True], math_verify=[True, False], llama=None,
        finish_reasons=["stop", "stop"],
    ),
    # d2: both correct; finish_reasons null
    openr1_row(
        _uuid("d2"),
        problem="Solve for x: 2x + 6 = 14.",
        solution="Subtract 6 to get 2x = 8, then divide by 2. " + boxed("4"),
        answer="4", problem_type="Algebra",
        generations=[
            trace("2x = 14 - 6 = 8, so x = 4.", "Therefore x =", "4"),
            trace("Try x = 4: 2 * 4 + 6 = 14, which works.", "The solution is", "4"),
        ],
        complete=[True, True], math_verify=[True, True], llama=None,
        finish_reasons=None,
    ),
    # d3: both wrong
    openr1_row(
        _uuid("d3"),
        problem="What is the remainder when 2^10 is divided by 7?",
        solution="2^3 = 8 leaves 1, so 2^9 leaves 1 and 2^10 leaves 2. " + boxed("2"),
        answer="2", problem_type="Number Theory",
        generations=[
            trace("2^10 = 1024 and 1024 = 7 * 146 + 3, I think.", "The remainder is", "3"),
            trace("Powers of 2 mod 7 cycle 2, 4, 1; ten is one more than nine, so maybe 4.", "The remainder is", "4"),
        ],
        complete=[True, True], math_verify=[False, False], llama=None,
        finish_reasons=["stop", "stop"],
    ),
    # d4: Math-Verify undecided on trace 0, the LLM judge says true
    openr1_row(
        _uuid("d4"),
        problem="Simplify (x^2 - 9)/(x - 3) for x not equal to 3.",
        solution="Factor the numerator as (x - 3)(x + 3) and cancel. " + boxed("x+3"),
        answer="x+3", problem_type="Algebra",
        generations=[
            trace("x^2 - 9 = (x - 3)(x + 3), cancel x - 3.", "The simplified form is", "3 + x"),
            trace("Divide each term by x - 3.", "The simplified form is", "x - 3"),
        ],
        complete=[True, True], math_verify=[None, False], llama=[True, False],
        finish_reasons=["stop", "stop"],
    ),
    # d5: trace 1 truncated by the length limit
    openr1_row(
        _uuid("d5"),
        problem="How many positive divisors does 36 have?",
        solution="36 = 2^2 * 3^2, so it has (2 + 1)(2 + 1) divisors. " + boxed("9"),
        answer="9", problem_type="Number Theory",
        generations=[
            trace("36 = 2^2 * 3^2, so the count is 3 * 3 = 9.", "The number of divisors is", "9"),
            truncated("List them: 1, 2, 3, 4, 6, 9, 12, 18, 36. Let me double-check whether 36 also has the divisor"),
        ],
        complete=[True, False], math_verify=[True, False], llama=None,
        finish_reasons=["stop", "length"],
    ),
    # d6: Japanese problem text
    openr1_row(
        _uuid("d6"),
        problem="りんごが3個、みかんが5個あります。果物は全部で何個ありますか。",
        solution="3個と5個を合わせると8個です。" + boxed("8"),
        answer="8", problem_type="Algebra",
        generations=[
            trace("3 + 5 を計算すると7になると思います。", "答えは", "7"),
            trace("3 + 5 = 8 です。", "果物は全部で", "8"),
        ],
        complete=[True, True], math_verify=[False, True], llama=None,
        finish_reasons=["stop", "stop"],
    ),
]


def _long_reasoning(target_chars: int = 120_000) -> str:
    lines = ["The odd numbers 1, 3, ..., 99 are the first 50 odd numbers; check the partial sums one by one."]
    total = len(lines[0])
    k = 0
    while total < target_chars:
        k += 1
        m = (k - 1) % 50 + 1
        line = (f"Step {k}: adding the odd number {2 * m - 1} gives the partial sum "
                f"S_{m} = {m * m}, which equals {m} squared as expected.")
        lines.append(line)
        total += 1 + len(line)
    lines.append("Every partial sum is a perfect square, so S_50 = 50^2 = 2500.")
    return "\n".join(lines)


OPENR1_EXTENDED = [
    # e1: four traces, two correct
    openr1_row(
        _uuid("e1"),
        problem="A rectangle has perimeter 20 and length 6. What is its area?",
        solution="The width is 20/2 - 6 = 4, so the area is 6 * 4. " + boxed("24"),
        answer="24", problem_type="Geometry",
        generations=[
            trace("Half the perimeter is 10, so the width is 4; area 24.", "The area is", "24"),
            trace("Width is 20 - 6 = 14? No, use 20 - 2 * 6 = 8 and halve... area 20.", "The area is", "20"),
            trace("2(6 + w) = 20 gives w = 4, and 6 * 4 = 24.", "The area equals", "24"),
            trace("Area is length squared, 6 * 6 = 36.", "The area is", "36"),
        ],
        complete=[True, True, True, True], math_verify=[True, False, True, False], llama=None,
        finish_reasons=["stop", "stop", "stop", "stop"],
    ),
    # e2: three traces, all correct; llama list holds a null while Math-Verify decided everything
    openr1_row(
        _uuid("e2"),
        problem="Compute 7 * 8 - 6.",
        solution="7 * 8 = 56 and 56 - 6 = 50. " + boxed("50"),
        answer="50", problem_type="Algebra",
        generations=[
            trace("7 * 8 = 56, minus 6 is 50.", "The result is", "50"),
            trace("Multiplication first: 56 - 6 = 50.", "So the value is", "50"),
            trace("56 minus 6 leaves 50.", "The answer is", "50"),
        ],
        complete=[True, True, True], math_verify=[True, True, True], llama=[True, None, True],
        finish_reasons=None,
    ),
    # e3: three traces, all wrong
    openr1_row(
        _uuid("e3"),
        problem="What is the smallest prime number greater than 90?",
        solution="91 = 7 * 13, 93 = 3 * 31, 95 = 5 * 19, but 97 is prime. " + boxed("97"),
        answer="97", problem_type="Number Theory",
        generations=[
            trace("91 looks prime.", "The smallest prime above 90 is", "91"),
            trace("91 is 7 * 13, so try 93; it seems prime.", "The answer is", "93"),
            trace("Skip to 99, it ends in 9.", "The prime is", "99"),
        ],
        complete=[True, True, True], math_verify=[False, False, False], llama=None,
        finish_reasons=["stop", "stop", "stop"],
    ),
    # e4: four traces; trace 2 truncated; trace 3 correct and very long (~120,000 chars of reasoning)
    openr1_row(
        _uuid("e4"),
        problem="Find the sum 1 + 3 + 5 + ... + 99.",
        solution="There are 50 odd numbers and their sum is 50^2. " + boxed("2500"),
        answer="2500", problem_type="Algebra",
        generations=[
            trace("The sum of the first n odd numbers is n^2 and n = 50.", "The sum is", "2500"),
            trace("There are 50 terms averaging 51.", "The sum is", "2550"),
            truncated("Add them in order: 1 + 3 = 4, 4 + 5 = 9, 9 + 7 = 16, and the running total keeps being a"),
            trace(_long_reasoning(), "The sum of the first 50 odd numbers is", "2500"),
        ],
        complete=[True, True, False, True], math_verify=[True, False, False, True], llama=None,
        finish_reasons=["stop", "stop", "length", "stop"],
    ),
    # e5: Chinese problem text
    openr1_row(
        _uuid("e5"),
        problem="一个长方形的长是8厘米,宽是5厘米,它的面积是多少平方厘米?",
        solution="面积等于长乘宽,8乘5得40。" + boxed("40"),
        answer="40", problem_type="Geometry",
        generations=[
            trace("周长是 2 × (8 + 5) = 26。", "面积是", "26"),
            trace("面积 = 8 × 5 = 40。", "所以面积是", "40"),
            trace("8 + 5 = 13。", "面积是", "13"),
        ],
        complete=[True, True, True], math_verify=[False, True, False], llama=None,
        finish_reasons=["stop", "stop", "stop"],
    ),
    # e6: three traces but only two Math-Verify verdicts -> must be an error naming row and field
    openr1_row(
        _uuid("e6"),
        problem="If f(x) = 3x - 1, find f(4).",
        solution="f(4) = 3 * 4 - 1 = 11. " + boxed("11"),
        answer="11", problem_type="Algebra",
        generations=[
            trace("3 * 4 = 12 and 12 - 1 = 11.", "So f(4) =", "11"),
            trace("3 * 4 = 12.", "So f(4) =", "12"),
            trace("Substitute 4: 12 - 1 = 11.", "Hence f(4) =", "11"),
        ],
        complete=[True, True, True], math_verify=[True, False], llama=None,
        finish_reasons=["stop", "stop", "stop"],
    ),
]


# --------------------------------------------------------------------------
# 4. openmathreasoning/cot_sample.parquet  (schema of nvidia/OpenMathReasoning, split cot)
# --------------------------------------------------------------------------

OMR_SCHEMA = pa.schema([
    ("expected_answer", pa.string()),
    ("problem_type", pa.string()),
    ("problem_source", pa.string()),
    ("generation_model", pa.string()),
    ("pass_rate_72b_tir", pa.string()),
    ("problem", pa.string()),
    ("generated_solution", pa.string()),
    ("inference_mode", pa.string()),
])


def omr_row(pass_rate: str | None, problem: str, reasoning: str, final: str, answer: str,
            problem_type: str = "has_answer_extracted") -> dict:
    return {
        "expected_answer": answer,
        "problem_type": problem_type,
        "problem_source": "aops_c4_high_school_math",
        "generation_model": "DeepSeek-R1",
        "pass_rate_72b_tir": pass_rate,
        "problem": problem,
        "generated_solution": trace(reasoning, final, answer),
        "inference_mode": "cot",
    }


OMR_ROWS = [
    omr_row("0.03125", "How many ways can 4 distinct books be arranged on a shelf?",
            "Arrangements of 4 distinct items: 4! = 24.", "The number of arrangements is", "24"),
    omr_row("0.0", "What is the last digit of 7^2024?",
            "Last digits of powers of 7 cycle 7, 9, 3, 1 with period 4, and 2024 is a multiple of 4.",
            "The last digit is", "1"),
    omr_row("0.1", "Find the greatest common divisor of 84 and 120.",
            "84 = 2^2 * 3 * 7 and 120 = 2^3 * 3 * 5, so the gcd is 2^2 * 3 = 12.", "The gcd is", "12"),
    omr_row("0.125", "Solve x^2 - 5x + 6 = 0 and give the larger root.",
            "The quadratic factors as (x - 2)(x - 3), so the roots are 2 and 3.", "The larger root is", "3"),
    omr_row("0.5", "What is the area of a circle with radius 3?",
            "Area is pi r^2 = 9 pi.", "The area is", "9\\pi"),
    omr_row("1.0", "Evaluate 15 + 27.",
            "15 + 27 = 42.", "The sum is", "42"),
    omr_row("n/a", "Prove that for positive reals a and b, a + b >= 2 sqrt(ab), and find when equality holds.",
            "(sqrt(a) - sqrt(b))^2 >= 0 expands to a + b - 2 sqrt(ab) >= 0, with equality when a = b.",
            "Equality holds when", "a = b", problem_type="converted_proof"),
    omr_row("n/a", "Find the number of positive integers n below 100 for which n^2 + 1 is divisible by 5.",
            "n^2 = -1 mod 5 means n = 2 or 3 mod 5; there are 20 + 20 = 40 such n below 100.",
            "The count is", "40", problem_type="no_answer_extracted"),
    omr_row(None, "What is the sum of the interior angles of a hexagon in degrees?",
            "The interior angle sum is (n - 2) * 180 = 4 * 180 = 720.", "The sum is", "720"),
    omr_row("abc", "How many edges does a cube have?",
            "A cube has 12 edges: 4 on top, 4 on the bottom and 4 vertical.", "A cube has", "12"),
    omr_row("0.09375", "1から10までの整数の和を求めなさい。",
            "1 + 2 + ... + 10 = 10 × 11 ÷ 2 = 55。", "和は", "55"),
    omr_row("0.0625", "一个等差数列的首项是2,公差是3,求第10项。",
            "第10项 = 2 + 9 × 3 = 29。", "第10项是", "29"),
]


# --------------------------------------------------------------------------
# 5. numina/numina_cot.jsonl  (schema of AI-MO/NuminaMath-CoT)
# --------------------------------------------------------------------------

def numina_row(source: str, problem: str, solution: str) -> dict:
    return {
        "source": source,
        "problem": problem,
        "solution": solution,
        "messages": [
            {"role": "user", "content": problem},
            {"role": "assistant", "content": solution},
        ],
    }


NUMINA_ROWS = [
    numina_row("cn_k12", "Given that the arithmetic sequence a_n has a_1 = 3 and common difference 2, find a_5.",
               "By the formula a_n = a_1 + (n - 1)d, we have a_5 = 3 + 4 * 2 = 11.\n\nTherefore, a_5 = "
               + boxed("11") + "."),
    numina_row("olympiads", "Find all real x such that |x - 2| = 5.",
               "Either x - 2 = 5 or x - 2 = -5, so x = 7 or x = -3.\n\nThe solutions are "
               + boxed("7 \\text{ and } -3") + "."),
    numina_row("synthetic_math", "A triangle has sides 5, 12 and 13. What is its area?",
               "Since 5^2 + 12^2 = 13^2, the triangle is right-angled with legs 5 and 12.\n"
               "Its area is 5 * 12 / 2 = 30.\n\nThe area is " + boxed("30") + "."),
    numina_row("orca_math", "Tom has 12 marbles and gives away 5. How many marbles does he have left?",
               "Tom starts with 12 marbles and gives away 5, so he has 12 - 5 = 7 marbles left."),
]


# --------------------------------------------------------------------------
# 6. limo/limo.jsonl  (schema of GAIR/LIMO)
# --------------------------------------------------------------------------

LIMO_ROWS = [
    {
        "question": "Find the number of ordered pairs of positive integers (a, b) with a + b = 10.",
        "solution": (
            "We need positive integers a and b that add up to 10.\n\n"
            "Once a is chosen, b = 10 - a is fixed, so it is enough to count the choices for a.\n\n"
            "Since b must be positive, a can be at most 9, and since a is positive it is at least 1.\n\n"
            "So a takes the values 1, 2, ..., 9, which gives 9 ordered pairs.\n\n"
            "Let me double-check with a small case: for a + b = 3 the pairs are (1, 2) and (2, 1), "
            "which is 3 - 1 = 2 pairs, matching the pattern n - 1.\n\n"
            "**Final Answer**\n" + boxed("9")
        ),
        "answer": "9",
    },
    {
        "question": "What is the remainder when 3^100 is divided by 8?",
        "solution": (
            "Look at powers of 3 modulo 8.\n\n"
            "3^1 = 3, 3^2 = 9 which is 1 modulo 8.\n\n"
            "So the powers alternate: odd exponents give 3 and even exponents give 1.\n\n"
            "The exponent 100 is even, so 3^100 = (3^2)^50, which is 1^50 = 1 modulo 8.\n\n"
            "Hmm, let me verify with 3^4 = 81 = 10 * 8 + 1, which indeed leaves 1.\n\n"
            "**Final Answer**\n" + boxed("1")
        ),
        "answer": "1",
    },
    {
        "question": "A square has a diagonal of length 10. What is its area?",
        "solution": (
            "Let the side of the square be s. By the Pythagorean theorem the diagonal is s * sqrt(2).\n\n"
            "So s * sqrt(2) = 10, which gives s^2 * 2 = 100 and s^2 = 50.\n\n"
            "The area of the square is s^2, so it is 50.\n\n"
            "Another way: the area of any rhombus is half the product of its diagonals, "
            "and both diagonals of this square are 10, giving 100 / 2 = 50 again.\n\n"
            "**Final Answer**\n" + boxed("50")
        ),
        "answer": "50",
    },
]


# --------------------------------------------------------------------------
# 7. helpsteer3/helpsteer3_ties.jsonl  (schema of nvidia/HelpSteer3, preference subset)
# --------------------------------------------------------------------------

H2_CONTEXT = [{"role": "user", "content": "Write a one-line reminder to drink water."}]

HELPSTEER3_ROWS = [
    # h1: -2 (response1 better)
    {
        "domain": "general", "language": "english",
        "context": [{"role": "user", "content": "How long should I boil an egg for a firm yolk?"}],
        "response1": "Boil it for about ten minutes, then cool it in cold water.",
        "response2": "Eggs can be cooked in many ways.",
        "overall_preference": -2,
        "individual_preference": [
            {"score": -2, "reasoning": "@Response 1 answers the question with a time; @Response 2 does not."},
            {"score": -2, "reasoning": "@Response 1 is specific and useful, @Response 2 is vague."},
            {"score": -1, "reasoning": "@Response 1 is slightly better because it gives a time."},
        ],
    },
    # h2: 0 (tie)
    {
        "domain": "general", "language": "english",
        "context": H2_CONTEXT,
        "response1": "Time for a glass of water!",
        "response2": "Remember to drink some water now.",
        "overall_preference": 0,
        "individual_preference": [
            {"score": 0, "reasoning": "Both responses are short, friendly reminders."},
            {"score": 0, "reasoning": "Neither response is clearly better than the other."},
        ],
    },
    # h3: 0 (tie), same context as h2, different responses
    {
        "domain": "general", "language": "english",
        "context": H2_CONTEXT,
        "response1": "Stay hydrated: drink a glass of water.",
        "response2": "A quick sip of water keeps you going.",
        "overall_preference": 0,
        "individual_preference": [
            {"score": 1, "reasoning": "@Response 2 is a little warmer in tone."},
            {"score": -1, "reasoning": "@Response 1 is a little more direct."},
        ],
    },
    # h4: +2 (response2 better), three-message context
    {
        "domain": "general", "language": "english",
        "context": [
            {"role": "user", "content": "I want to start running."},
            {"role": "assistant", "content": "Great idea! How many days a week can you train?"},
            {"role": "user", "content": "Three days. What should my first week look like?"},
        ],
        "response1": "Just run as far as you can each day.",
        "response2": "Alternate one minute of running with two minutes of walking for twenty minutes, three times this week.",
        "overall_preference": 2,
        "individual_preference": [
            {"score": 2, "reasoning": "@Response 2 gives a safe, concrete plan; @Response 1 risks injury."},
            {"score": 2, "reasoning": "@Response 2 fits the three-day schedule the user gave."},
            {"score": 3, "reasoning": "@Response 2 is much better and actually answers the question."},
        ],
    },
    # h5: 0 (tie), Japanese
    {
        "domain": "general", "language": "japanese",
        "context": [{"role": "user", "content": "雨の日におすすめの過ごし方を一つ教えてください。"}],
        "response1": "家で好きな本をゆっくり読むのはいかがでしょうか。",
        "response2": "映画を一本見て、温かいお茶を飲むのがおすすめです。",
        "overall_preference": 0,
        "individual_preference": [
            {"score": 0, "reasoning": "どちらの回答も具体的で、質の差はほとんどありません。"},
            {"score": 0, "reasoning": "両方とも質問に適切に答えています。"},
        ],
    },
]


def main() -> None:
    write_jsonl("arena/arena_battles.jsonl", ARENA_ROWS)
    write_json("webdev_arena/webdev_battles.json", WEBDEV_ROWS)
    write_parquet("openr1/default/train-00000-of-00001.parquet", OPENR1_DEFAULT, OPENR1_SCHEMA)
    write_parquet("openr1/extended/train-00000-of-00001.parquet", OPENR1_EXTENDED, OPENR1_SCHEMA)
    write_parquet("openmathreasoning/cot_sample.parquet", OMR_ROWS, OMR_SCHEMA)
    write_jsonl("numina/numina_cot.jsonl", NUMINA_ROWS)
    write_jsonl("limo/limo.jsonl", LIMO_ROWS)
    write_jsonl("helpsteer3/helpsteer3_ties.jsonl", HELPSTEER3_ROWS)


if __name__ == "__main__":
    main()
