"""Inference inputs with chosen attribute labels (the seed's add_label): each prompt of a JSONL file
rendered in a SteerLM format up to the assistant's answer, with the label string the model should
follow.

    python -m posttrain_assets.steerlm.add_label --input prompts.jsonl --output steer.jsonl \\
        --labels toxicity=0,humor=0 --default 4 [--format steerlm|llmjp] [--field prompt]

Each input row has `messages` ([{role, content}], ending with a user turn) or a text field (`--field`,
default `prompt`); each output row is the input row plus `label_string` and `text`."""

import argparse
import json
import sys

from .attributes import label_string
from .labelling import chosen_labels, inference_inputs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--labels", default="", help="attribute=value pairs, e.g. toxicity=0,humor=0")
    ap.add_argument("--default", type=int, default=None, help="the value of every attribute not in --labels")
    ap.add_argument("--format", default="steerlm", choices=("steerlm", "llmjp"))
    ap.add_argument("--field", default="prompt")
    args = ap.parse_args(argv)
    labels = chosen_labels(args.labels, args.default)
    rows = []
    with open(args.input, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            conv = row.get("messages") or ([{"role": "user", "content": row[args.field]}] if isinstance(
                row.get(args.field), str) else None)
            if not conv:
                print(f"{args.input}: row {n}: no `messages` and no text field {args.field!r}", file=sys.stderr)
                return 2
            rows.append((row, conv))
    texts = inference_inputs([c for _, c in rows], labels, args.format)
    with open(args.output, "w", encoding="utf-8") as fh:
        for (row, _), text in zip(rows, texts):
            fh.write(json.dumps({**row, "label_string": label_string(labels), "text": text}, ensure_ascii=False) + "\n")
    print(f"{len(rows)} rows -> {args.output} (labels {label_string(labels)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
