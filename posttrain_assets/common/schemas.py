"""Arrow types shared by several stages' tables."""

import pyarrow as pa

#: a conversation: [{role, content}, ...]
MESSAGE_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
