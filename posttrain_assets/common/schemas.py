"""Arrow types shared by several stages' tables."""

import pyarrow as pa

#: a conversation: [{role, content}, ...]
MESSAGE_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


def with_answer(messages, text: str) -> list[dict]:
    """A prompt conversation + one assistant turn: one side's whole conversation (preference rows)."""
    return list(messages or []) + [{"role": "assistant", "content": text}]
