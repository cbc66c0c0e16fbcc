"""attribute_labelled_sft and steerlm_sft: SFT rows labelled with the attribute model's predictions,
then rendered in the two SteerLM training formats. Pure (Arrow in, Arrow out); the predictor and
the checkpoint store are passed in.

Labelling (NeMo's attribute_annotate): predictions are clamped to [0, 4] and rounded; an attribute
the model has no head for (no training row had it) stays null and out of the label string.

Resumable by row key: predictions are committed to a checkpoint in chunks (`chunk_rows`), keyed by
(model version, row id, hash of the text); a run that dies part-way re-predicts only the rows whose
chunk was not committed. The checkpoints live under the storage root (`_checkpoints/...`) and are
cheap (9 floats per row); a new model version never reads another version's."""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from typing import Callable, Optional, Sequence

import numpy as np
import pyarrow as pa

from resources.reasons import Reason

from ..common import asset_names as A
from ..common.accounting import RowIssue
from ..common.inputs import input_items, input_table
from ..common.schemas import MESSAGE_TYPE
from .attributes import (ATTRIBUTES, SCALE_MAX, AttributeMappingError, clamp_round, label_string, llmjp_text,
                         parse_label_string, steerlm_text)
from .training_data import render

#: tables attribute_labelled_sft can read (config input_asset): each has an id, an instruction, a response
#: (their columns: common/inputs.py)
INPUT_ASSETS = (A.SFT_RECORDS, A.EVOLVED_INSTRUCTIONS, A.MAGPIE_INSTRUCTIONS)

LABELLED_SCHEMA = pa.schema([
    ("id", pa.string()),  # the input row's id (all_prompt_id / evolved id / magpie uuid)
    ("source", pa.string()),
    ("input_asset", pa.string()),
    ("messages", MESSAGE_TYPE),  # the conversation, the labelled reply last
    ("attributes", pa.list_(pa.int64())),  # 9 predicted values clamped to [0, 4] and rounded; null = no head
    ("raw_attributes", pa.list_(pa.float64())),  # the model's raw outputs
    ("label_string", pa.string()),
    ("model_version", pa.string()),
])
STEERLM_SCHEMA = pa.schema([
    ("id", pa.string()), ("source", pa.string()), ("label_string", pa.string()), ("model_version", pa.string()),
    ("steerlm_text", pa.string()),  # NeMo's <extra_id_*> SteerLM format
    ("llmjp_text", pa.string()),  # the llm-jp-sft format (the seed's build_sft_data)
    ("messages", MESSAGE_TYPE),
])


def row_key(version: str, rid: str, text: str) -> str:
    return f"{version}:{rid}:{hashlib.blake2b(text.encode(), digest_size=8).hexdigest()}"


class Checkpoint:
    """Committed predictions of one (asset, partition, model version) in a ParquetStore folder:
    one Parquet file per chunk (key, raw 9 values), written atomically."""

    def __init__(self, store, folder: str):
        self.store, self.folder = store, folder

    def load(self) -> dict[str, list[float]]:
        import pyarrow.fs as pafs

        done: dict[str, list[float]] = {}
        for info in self.store.fs.get_file_info(pafs.FileSelector(self.folder, allow_not_found=True)):
            if info.type == pafs.FileType.File and info.base_name.endswith(".parquet"):
                t = self.store.read(info.path)
                done.update(zip(t["key"].to_pylist(), t["raw"].to_pylist()))
        return done

    def commit(self, keys: list[str], raw: np.ndarray) -> None:
        name = hashlib.blake2b("\x1f".join(keys).encode(), digest_size=8).hexdigest()
        values = [[None if np.isnan(v) else float(v) for v in row] for row in raw]
        self.store.write(pa.table({"key": keys, "raw": pa.array(values, pa.list_(pa.float64()))}),
                         f"{self.folder}/chunk-{name}.parquet")


def conversations(table: pa.Table, source: str, asset: str) -> tuple[list[tuple[str, list[dict]]], list[RowIssue]]:
    """(id, conversation ending with the reply) per labellable row; rows with no reply are removed."""
    spec = input_table(asset, INPUT_ASSETS)
    items, issues = input_items(table, source, asset, INPUT_ASSETS)
    messages = (table[spec.messages].to_pylist() if spec.messages and spec.messages in table.column_names
                else None)
    out = []
    for it in items:
        if it.response is None:
            issues.append(RowIssue(reason=Reason.NO_RESPONSE, outcome="removed", source_row=it.index, source_file=asset,
                                   field="response", detail=f"id {it.id!r}: nothing to label"))
            continue
        conv = messages[it.index] if messages and messages[it.index] else None
        if not conv or conv[-1]["role"] != "assistant":
            conv = [{"role": "user", "content": it.instruction}, {"role": "assistant", "content": it.response}]
        out.append((it.id, [{"role": m["role"], "content": m["content"]} for m in conv]))
    return out, issues


def label(rows: list[tuple[str, list[dict]]], source: str, asset: str, predictor, checkpoint: Optional[Checkpoint],
          *, chunk_rows: int = 256, log: Callable[[str], None] = lambda m: None) -> tuple[pa.Table, dict]:
    """Predict (or take from the checkpoint) each row's attributes; returns (table, stats)."""
    version = predictor.version
    texts = [render(conv[:-1], conv[-1]["content"]) for _, conv in rows]
    keys = [row_key(version, rid, t) for (rid, _), t in zip(rows, texts)]
    done = checkpoint.load() if checkpoint else {}
    todo = [i for i, k in enumerate(keys) if k not in done]
    resumed = len(rows) - len(todo)
    if resumed:
        log(f"{source}: {resumed}/{len(rows)} rows already labelled by model {version} (checkpoint); "
            f"predicting {len(todo)}")
    t0 = time.monotonic()
    for start in range(0, len(todo), chunk_rows):
        idx = todo[start:start + chunk_rows]
        raw = np.asarray(predictor.predict([texts[i] for i in idx], [rows[i][1][-1]["content"] for i in idx]),
                         dtype=np.float64)
        if checkpoint:
            checkpoint.commit([keys[i] for i in idx], raw)
        done.update({keys[i]: [None if np.isnan(v) else float(v) for v in r] for i, r in zip(idx, raw)})
        n = start + len(idx)
        log(f"{source}: labelled {n}/{len(todo)} ({n / max(time.monotonic() - t0, 1e-9):.1f} rows/s)")
    seconds = time.monotonic() - t0
    out = []
    for (rid, conv), k in zip(rows, keys):
        raw = done[k]
        attrs = [None if v is None else clamp_round(v) for v in raw]
        out.append({"id": rid, "source": source, "input_asset": asset, "messages": conv, "attributes": attrs,
                    "raw_attributes": raw, "label_string": label_string(dict(zip(ATTRIBUTES, attrs))),
                    "model_version": version})
    table = pa.Table.from_pylist(out, schema=LABELLED_SCHEMA)
    return table, {"predicted": len(todo), "from_checkpoint": resumed, "label_seconds": round(seconds, 2),
                   "rows_per_s": round(len(todo) / seconds, 1) if seconds and todo else None}


def histograms(table: pa.Table) -> dict[str, dict[str, int]]:
    """Per attribute: rows per 0-4 value (the seed's `-v` statistics)."""
    out = {a: Counter() for a in ATTRIBUTES}
    for attrs in table["attributes"].to_pylist():
        for a, v in zip(ATTRIBUTES, attrs):
            if v is not None:
                out[a][str(v)] += 1
    return {a: {str(v): c[str(v)] for v in range(SCALE_MAX + 1)} for a, c in out.items() if c}


def steerlm_rows(labelled: pa.Table, *, steerlm_system: Optional[str] = None,
                 llmjp_system: Optional[str] = None) -> pa.Table:
    """Both training formats of each labelled conversation (the labels on its last assistant turn)."""
    out = []
    kw_s = {} if steerlm_system is None else {"system": steerlm_system}
    kw_j = {} if llmjp_system is None else {"system": llmjp_system}
    for r in labelled.to_pylist():
        conv = [dict(m) for m in r["messages"] if m["role"] != "system"]
        conv[-1]["labels"] = parse_label_string(r["label_string"])
        out.append({"id": r["id"], "source": r["source"], "label_string": r["label_string"],
                    "model_version": r["model_version"], "steerlm_text": steerlm_text(conv, **kw_s),
                    "llmjp_text": llmjp_text(conv, **kw_j), "messages": r["messages"]})
    return pa.Table.from_pylist(out, schema=STEERLM_SCHEMA)


def chosen_labels(spec: str, default: Optional[int] = None) -> dict[str, int]:
    """`toxicity=0,humor=0` (+ `default` for every other attribute) -> a full label mapping."""
    labels = {a: default for a in ATTRIBUTES} if default is not None else {}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        name, sep, value = part.partition("=")
        if not sep:
            name, sep, value = part.partition(":")
        if name.strip() not in ATTRIBUTES or not value.strip().isdigit() or int(value) > SCALE_MAX:
            raise AttributeMappingError(f"label {part!r}: expected <attribute>=<0-{SCALE_MAX}> with an attribute "
                                        f"of {', '.join(ATTRIBUTES)}")
        labels[name.strip()] = int(value)
    return {a: labels[a] for a in ATTRIBUTES if labels.get(a) is not None}


def inference_inputs(prompts: Sequence[list[dict]], labels: dict[str, int], fmt: str = "steerlm",
                     system: Optional[str] = None) -> list[str]:
    """The seed's add_label: each prompt conversation (ending with a user turn) + an assistant turn that
    carries the chosen labels and no text yet, rendered up to where the model starts answering."""
    out = []
    for conv in prompts:
        conv = [dict(m) for m in conv if m["role"] != "system"] + [{"role": "assistant", "content": "",
                                                                     "labels": labels}]
        if fmt == "steerlm":
            out.append(steerlm_text(conv, **({} if system is None else {"system": system})))
        elif fmt == "llmjp":
            out.append(llmjp_text(conv, **({} if system is None else {"system": system})))
        else:
            raise ValueError(f"format must be steerlm or llmjp, got {fmt!r}")
    return out
