"""Read a source's rows from local files (jsonl, json, csv, parquet; optionally .gz) or the Hub.

Pure functions, no Dagster. Bad rows never raise: they come back as `RowIssue`s (malformed JSON,
bytes that are not UTF-8, CSV rows with missing or extra columns, rows that are not objects).
Configuration mistakes (no file, unknown format, unreachable hub dataset) raise `SourceLoadError`
naming the source.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
import gzip
import io
import json
from pathlib import Path
import sys
import time
import zlib
from typing import Any, Callable, Iterable, Iterator

import pyarrow as pa

from partitions.registry import RegistryError, SourceSpec
from partitions.shards import RowFingerprint, ShardError, count_rows, file_pieces
from resources.reasons import Reason

from ..common.accounting import RowIssue, raw_preview

JSON_FIELD_META = b"posttrain.json"
RESERVED = ("source_file", "source_row")
PROGRESS_EVERY = 50_000

csv.field_size_limit(sys.maxsize)  # real prompt CSVs have fields > 131,072 chars


#: the longest JSON Lines row parsed (a longer one is counted `row_too_large`)
MAX_ROW_BYTES = 16 * 1024 * 1024


class NonFinite:
    """What `_loads` makes of NaN, Infinity, -Infinity and a number too large for a float (1e400): not
    JSON numbers, and `metadata` must stay valid JSON, so the row becomes a `non_finite_number` reject."""

    made = 0  # how many were ever made: a reader walks a parsed row for them only when this moved

    def __init__(self, token: str):
        self.token = token
        NonFinite.made += 1

    def __repr__(self) -> str:  # what previews and shard fingerprints write: the token as it was
        return self.token

    __str__ = __repr__


def _parse_float(text: str):
    value = float(text)
    return value if value not in (float("inf"), float("-inf")) else NonFinite(text)


def _loads(text: str) -> Any:
    return json.loads(text, parse_constant=NonFinite, parse_float=_parse_float)


def non_finite_issue(row: Any, name: str, row_no: int) -> RowIssue | None:
    """The `non_finite_number` reject of a parsed JSON row holding a NonFinite, else None."""
    hit = non_finite_path(row)
    if hit is None:
        return None
    return RowIssue(reason=Reason.NON_FINITE_NUMBER, source_file=name, source_row=row_no, field=hit[0],
                    detail=f"{hit[1]} is not a JSON number (NaN, Infinity or too large for a float)",
                    raw=raw_preview(json.dumps(row, default=lambda v: v.token, ensure_ascii=False)))


def non_finite_path(value: Any, path: str = "") -> tuple[str, str] | None:
    """(where, token) of the first NonFinite in a parsed row, else None."""
    if isinstance(value, NonFinite):
        return path or "<row>", value.token
    if isinstance(value, dict):
        for k, v in value.items():
            if (hit := non_finite_path(v, f"{path}.{k}" if path else str(k))) is not None:
                return hit
    elif isinstance(value, list):
        for i, v in enumerate(value):
            if (hit := non_finite_path(v, f"{path}[{i}]")) is not None:
                return hit
    return None


class SourceLoadError(RuntimeError):
    """The source cannot be read at all (as opposed to a bad row, which is a RowIssue)."""


@dataclass
class LoadedRows:
    files: list[str] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    source_files: list[str] = field(default_factory=list)
    source_rows: list[int] = field(default_factory=list)
    issues: list[RowIssue] = field(default_factory=list)
    rows_read: int = 0  # rows seen in the files = loaded + rejected
    blank_lines: int = 0  # empty lines in JSONL files (no data, not rows)
    # a shard's reads: a running hash over every row read (bad ones too), in order (partitions/shards.py)
    fingerprint: RowFingerprint | None = None
    # file -> its `source_file` name (its path under the glob's root; SourceSpec.relative_name)
    names: dict = field(default_factory=dict)
    # a JSON Lines row longer than this is a `row_too_large` reject, not parsed (RawRecordsConfig.max_row_bytes)
    max_row_bytes: int = MAX_ROW_BYTES

    def name_of(self, path: Path) -> str:
        return self.names.get(path, path.name)


def lone_surrogate_path(value: Any, path: str = "") -> str | None:
    """Where `value` holds text that is not valid Unicode (a byte that was not UTF-8), else None."""
    if isinstance(value, str):
        if value.isascii():
            return None
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "<row>"
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            p = lone_surrogate_path(v, f"{path}.{k}" if path else str(k))
            if p:
                return p
    elif isinstance(value, list):
        for i, v in enumerate(value):
            p = lone_surrogate_path(v, f"{path}[{i}]")
            if p:
                return p
    return None


def _open_binary(path: Path):
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def _read_jsonl(path: Path, out: LoadedRows, limit: int | None, offset: int = 0) -> Iterator[tuple[int, Any]]:
    name = out.name_of(path)
    with _open_binary(path) as fh:
        n = 0  # data rows (non-blank lines) seen, skipped ones included
        for lineno, raw in enumerate(fh):
            if not raw.strip():  # counted by the shard whose next row follows it
                if n >= offset and (limit is None or n < offset + limit):
                    out.blank_lines += 1
                continue
            if limit is not None and n >= offset + limit:
                break
            n += 1
            if n <= offset:  # another shard's row: not read, not parsed
                continue
            out.rows_read += 1
            if out.fingerprint is not None:
                out.fingerprint.add(raw.rstrip(b"\r\n"))
            if len(raw) > out.max_row_bytes:  # not decoded, not parsed
                out.issues.append(RowIssue(
                    reason=Reason.ROW_TOO_LARGE, source_file=name, source_row=lineno,
                    detail=f"line {lineno + 1}: {len(raw):,} bytes > max_row_bytes={out.max_row_bytes:,}",
                    raw=raw_preview(raw[:2000])))
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                out.issues.append(RowIssue(
                    reason=Reason.INVALID_UTF8, source_file=name, source_row=lineno,
                    detail=f"byte 0x{raw[exc.start]:02x} at offset {exc.start} of line {lineno + 1} is not UTF-8",
                    raw=raw_preview(raw)))
                continue
            made = NonFinite.made
            try:
                row = _loads(text)
            except json.JSONDecodeError as exc:
                out.issues.append(RowIssue(
                    reason=Reason.MALFORMED_JSON, source_file=name, source_row=lineno,
                    detail=f"line {lineno + 1}: {exc.msg} at column {exc.colno}", raw=raw_preview(text)))
                continue
            if NonFinite.made != made and (issue := non_finite_issue(row, name, lineno)) is not None:
                out.issues.append(issue)
                continue
            yield lineno, row


def _read_json(path: Path, out: LoadedRows, limit: int | None, offset: int = 0) -> Iterator[tuple[int, Any]]:
    with _open_binary(path) as fh:
        text = fh.read().decode("utf-8", "surrogateescape")
    made = NonFinite.made
    try:
        data = _loads(text)
    except json.JSONDecodeError as exc:
        # a .json file that is really JSON Lines
        if exc.msg == "Extra data":
            yield from _read_jsonl(path, out, limit, offset)
            return
        raise SourceLoadError(f"{path.name}: not valid JSON: {exc}") from None
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        # an object keyed by id (e.g. oasst2_ja_edited: message_id -> message): one row per value,
        # the key kept as `message_id` unless the value has that field
        data = [v if "message_id" in v else {"message_id": k, **v} for k, v in data.items()]
    elif isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise SourceLoadError(f"{path.name}: a JSON file must hold a list of rows "
                                  "(or an object with exactly one list, or an object of row objects keyed by id)")
        data = lists[0]
    if not isinstance(data, list):
        raise SourceLoadError(f"{path.name}: a JSON file must hold a list of rows")
    stop = offset + limit if limit else None
    walk = NonFinite.made != made  # the file held NaN / Infinity / an overflow somewhere
    for i, row in enumerate(data[offset:stop], start=offset):
        out.rows_read += 1
        if out.fingerprint is not None:
            out.fingerprint.add_value(row)
        if walk and (issue := non_finite_issue(row, out.name_of(path), i)) is not None:
            out.issues.append(issue)
            continue
        yield i, row


def _read_csv(path: Path, out: LoadedRows, limit: int | None, offset: int = 0) -> Iterator[tuple[int, Any]]:
    name = out.name_of(path)
    with _open_binary(path) as fh:
        text = fh.read().decode("utf-8-sig", "surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise SourceLoadError(f"{name}: CSV header unreadable: {exc}") from None
    width = len(header)
    i = -1
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise SourceLoadError(f"{name}: CSV unreadable near line {reader.line_num}: {exc}") from None
        if not values:  # blank line
            continue
        i += 1
        if limit is not None and i >= offset + limit:
            break
        if i < offset:  # another shard's row
            continue
        out.rows_read += 1
        if out.fingerprint is not None:
            out.fingerprint.add_value(values)
        if len(values) < width:
            missing = header[len(values):]
            out.issues.append(RowIssue(
                reason=Reason.CSV_MISSING_COLUMN, source_file=name, source_row=i, field=missing[0],
                detail=f"line {reader.line_num}: {len(values)} of {width} columns; missing {', '.join(missing)}",
                raw=raw_preview(values)))
            continue
        if len(values) > width:
            out.issues.append(RowIssue(
                reason=Reason.CSV_EXTRA_COLUMNS, source_file=name, source_row=i,
                detail=f"line {reader.line_num}: {len(values)} columns, header has {width} (unquoted comma?)",
                raw=raw_preview(values)))
            continue
        yield i, dict(zip(header, values))


def _read_parquet(path: Path, out: LoadedRows, limit: int | None, offset: int = 0) -> Iterator[tuple[int, Any]]:
    """Only the row groups that hold rows [offset, offset + limit) are read (the footer says where
    each starts); rows before `offset` in the first of them are skipped unconverted."""
    import pyarrow.parquet as pq

    # pre_buffer off: it caches every row group read until the file is closed (memory ~ file size)
    pf = pq.ParquetFile(path, pre_buffer=False)
    stop = pf.metadata.num_rows if limit is None else offset + limit
    groups, pos = [], None
    start = 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if start + n > offset and start < stop:
            groups.append(g)
            pos = start if pos is None else pos
        start += n
    if not groups:
        return
    for batch in pf.iter_batches(batch_size=10_000, row_groups=groups):
        b0, pos = pos, pos + batch.num_rows
        lo, hi = max(offset - b0, 0), min(stop - b0, batch.num_rows)
        if hi > lo:  # rows of other shards in this batch are sliced off, not converted
            for k, row in enumerate(batch.slice(lo, hi - lo).to_pylist()):
                out.rows_read += 1
                if out.fingerprint is not None:
                    out.fingerprint.add_value(row)
                yield b0 + lo + k, row
        if pos >= stop:
            return


READERS = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv, "parquet": _read_parquet}


def _iter_hub(spec: SourceSpec, out: LoadedRows) -> Iterator[tuple[str, int, Any]]:
    """Rows of a Hugging Face dataset through `datasets.load_dataset` (needs network or cache), as
    (part, row, value): every (config, split) of the loader in order (LoaderSpec.hub_parts), part =
    '<config>/<split>'. Loader offset / limit apply per part, as per file; a shard reads only its
    range of the parts' rows (the split slice syntax)."""
    import datasets

    from partitions.registry import hub_rows, hub_part_label

    lo = spec.loader
    parts = lo.hub_parts()
    if spec.shard is not None:  # only the shard's rows: each part's piece of the range
        rng = spec.shard
        pieces = file_pieces(len(parts), lambda i: hub_rows(spec, *parts[i]), rng.start, rng.stop)
        plan = [(parts[i], off, n, True) for i, off, n in pieces]
    else:
        plan = [(p, lo.offset, lo.limit, False) for p in parts]
    for (config, split), offset, limit, sliced in plan:
        name = f"{split}[{offset}:{offset + limit}]" if sliced else split
        try:
            ds = datasets.load_dataset(lo.hub, config, split=name, revision=lo.revision)
        except Exception as exc:  # noqa: BLE001 - every failure becomes one clear message
            raise SourceLoadError(
                f"source {spec.key!r}: cannot load hub dataset {lo.hub!r} (config={config!r}, "
                f"split={name!r}): {type(exc).__name__}: {exc}") from None
        label = hub_part_label(config, split)
        if sliced:
            rows = range(len(ds))
            base = offset
        else:
            stop = len(ds) if limit is None else min(offset + limit, len(ds))
            rows, base = range(min(offset, stop), stop), 0
        for i in rows:
            out.rows_read += 1
            row = ds[i]
            if out.fingerprint is not None:
                out.fingerprint.add_value(row)
            yield label, base + i, row


def _shard_streams(spec: SourceSpec, paths: list[Path], out: LoadedRows) -> list[tuple[str, Iterator]]:
    """The readers of one shard: rows [start, stop) of the files' rows in order, each file read from
    its own offset (rows of other shards are skipped unparsed); the files before the range's end
    are counted (cached), the last one never is."""
    rng = spec.shard
    pieces = file_pieces(len(paths), lambda i: count_rows(paths[i], spec.file_format(paths[i])),
                         rng.start, rng.stop)
    return [(paths[i], READERS[spec.file_format(paths[i])](paths[i], out, n, off)) for i, off, n in pieces]


def iter_rows(spec: SourceSpec, out: LoadedRows, log: Callable[[str], None] | None = None,
              limit: int | None = None, fingerprint: RowFingerprint | None = None) -> Iterator[tuple[str, int, dict]]:
    """The source's (or one shard's: `spec.shard`) good rows one at a time as (source_file, source_row,
    row); bad rows become issues and the counts go to `out` as the rows are read (nothing is kept but
    the issues). A shard's reads are fingerprinted into `out.fingerprint` (`fingerprint`, else a new one)."""
    limit = limit or spec.loader.limit
    if spec.shard is not None:
        out.fingerprint = fingerprint or RowFingerprint()
        if limit:  # the first `limit` rows of the shard
            from dataclasses import replace

            spec = replace(spec, shard=replace(spec.shard, stop=min(spec.shard.stop, spec.shard.start + limit)))
    if spec.loader.hub:
        from partitions.registry import hub_part_label

        streams = [(None, _iter_hub(spec, out))]
        parts = spec.loader.hub_parts()
        out.files = [spec.loader.hub] if len(parts) == 1 else [f"{spec.loader.hub} {hub_part_label(c, s)}"
                                                               for c, s in parts]
    else:
        try:
            paths = spec.resolved_paths()
            out.names = {p: spec.relative_name(p) for p in paths}
            if spec.shard is not None:
                opened = _shard_streams(spec, paths, out)
            else:
                opened = [(p, READERS[spec.file_format(p)](p, out, limit, spec.loader.offset)) for p in paths]
        except RegistryError as exc:
            raise SourceLoadError(str(exc)) from None
        except (OSError, EOFError, zlib.error, ShardError) as exc:
            raise SourceLoadError(f"source {spec.key!r}: cannot count the rows of its files: "
                                  f"{type(exc).__name__}: {exc}") from None
        # a file's rows are named by its path under the glob's root: two configs' train-00000-of-00001
        # files are default/train-00000-of-00001.parquet and extended/train-00000-of-00001.parquet
        streams = [(out.names[p], stream) for p, stream in opened]
        out.files = [str(p) for p, _ in opened]
    t0 = time.monotonic()
    for name, stream in streams:
        try:
            for item in stream:
                fname, row_no, row = (name, *item) if name is not None else item
                if not isinstance(row, dict):
                    out.issues.append(RowIssue(
                        reason=Reason.NOT_AN_OBJECT, source_file=fname, source_row=row_no,
                        detail=f"row is a {type(row).__name__}, expected an object", raw=raw_preview(row)))
                    continue
                bad = lone_surrogate_path(row)
                if bad:
                    out.issues.append(RowIssue(
                        reason=Reason.INVALID_UTF8, source_file=fname, source_row=row_no, field=bad,
                        detail="text holds bytes that are not UTF-8", raw=raw_preview(row)))
                    continue
                if log and out.rows_read % PROGRESS_EVERY == 0:
                    dt = max(time.monotonic() - t0, 1e-9)
                    log(f"{spec.key}: read {out.rows_read:,} rows ({out.rows_read / dt:,.0f} rows/s)")
                yield fname, row_no, row
        except SourceLoadError as exc:
            raise SourceLoadError(f"source {spec.key!r}: {exc}") from None
        except (OSError, EOFError, zlib.error) as exc:  # a truncated or corrupt .gz too: name the file
            raise SourceLoadError(f"source {spec.key!r}: cannot read {name or spec.loader.hub}: "
                                  f"{type(exc).__name__}: {exc}") from None
    rng = spec.shard
    if rng is not None and out.rows_read == 0 and rng.index > 0:
        raise SourceLoadError(f"source {rng.parent!r}: shard {rng.key!r} (rows {rng.start:,} to {rng.stop - 1:,}) "
                              f"is past the end of the source's rows: its files have fewer rows than when the "
                              f"shard was added (rows removed or a file replaced?)")


def load_rows(spec: SourceSpec, log: Callable[[str], None] | None = None,
              limit: int | None = None, fingerprint: RowFingerprint | None = None) -> LoadedRows:
    """Every row of a source (or of one shard), with its file and row number; bad rows come back as issues."""
    out = LoadedRows()
    for fname, row_no, row in iter_rows(spec, out, log, limit, fingerprint):
        out.rows.append(row)
        out.source_files.append(fname)
        out.source_rows.append(row_no)
    return out


def rows_from_generator(table: pa.Table, label: str) -> LoadedRows:
    """The rows of a synthetic source: its generator's table (e.g. magpie_instructions), one raw row
    per generated row, `source_file` = the generator asset's file, `source_row` = the row's position."""
    out = LoadedRows(files=[label])
    for i, row in enumerate(table.to_pylist()):
        out.rows.append(row)
        out.source_files.append(label)
        out.source_rows.append(i)
    out.rows_read = len(out.rows)
    return out


# ---------------------------------------------------------------- raw rows <-> Arrow


def _column_kinds(values: list[Any]) -> tuple[frozenset, bool]:
    """The Python types of a column's non-null values, and whether its ints all fit int64."""
    kinds = frozenset(type(v) for v in values if v is not None)
    fits = int not in kinds or all(v is None or not isinstance(v, int) or -(2**63) <= v < 2**63
                                   for v in values)
    return kinds, fits


def _type_of_kinds(kinds: frozenset, ints_fit: bool = True) -> pa.DataType | None:
    """Native Arrow type for a homogeneous scalar column; None means 'store as JSON text'."""
    if not kinds:
        return pa.string()
    if kinds == {str}:
        return pa.string()
    if kinds == {bool}:
        return pa.bool_()
    if kinds == {int}:
        return pa.int64() if ints_fit else None
    if kinds == {float}:
        return pa.float64()
    return None


def _column_type(values: list[Any]) -> pa.DataType | None:
    """Native Arrow type for a homogeneous scalar column; None means 'store as JSON text'."""
    return _type_of_kinds(*_column_kinds(values))


def _raw_field(name: str, typ: pa.DataType | None) -> pa.Field:
    col = name if name not in RESERVED else f"{name}_raw"
    if typ is None:
        return pa.field(col, pa.string(), metadata={JSON_FIELD_META: b"1"})
    return pa.field(col, typ)


def _raw_array(values: list[Any], typ: pa.DataType | None) -> pa.Array:
    if typ is None:
        return pa.array([None if v is None else json.dumps(v, ensure_ascii=False) for v in values], pa.string())
    return pa.array(values, typ)


def rows_to_table(loaded: LoadedRows) -> pa.Table:
    """`raw_records`: the rows as loaded (top-level keys become columns) + source_file/source_row.

    Nested or mixed-type columns are stored as JSON text and tagged in the field metadata so that
    `table_to_rows` gives back the original values.
    """
    names: dict[str, None] = {}
    for row in loaded.rows:
        for k in row:
            names.setdefault(k, None)
    arrays: list[pa.Array] = [pa.array(loaded.source_files, pa.string()),
                              pa.array(loaded.source_rows, pa.int64())]
    fields: list[pa.Field] = [pa.field("source_file", pa.string()), pa.field("source_row", pa.int64())]
    for name in names:
        values = [row.get(name) for row in loaded.rows]
        typ = _column_type(values)
        arrays.append(_raw_array(values, typ))
        fields.append(_raw_field(name, typ))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


RAW_BATCH_ROWS = 20_000


class RawBatches:
    """`rows_to_table` for a source of any size: rows are added one at a time, converted to Arrow
    every `batch_rows` rows and spilled to Arrow IPC files in `spill_dir` (local disk), so memory
    holds one batch. A column's type can only be known once every row has been seen (a column
    that is int in the first batch and text in a later one is JSON text; a column first seen in
    a later batch is null before), so `finish()` unifies the columns seen across all batches with
    the same rule as `rows_to_table`, and `batches()` reads the spill back converted to that one
    schema: the same table as `rows_to_table` over all rows, in row groups."""

    def __init__(self, spill_dir: str, batch_rows: int = RAW_BATCH_ROWS):
        import pyarrow.ipc  # noqa: F401

        self.spill_dir = Path(spill_dir)
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        self.batch_rows = max(1, int(batch_rows))
        self.names: dict[str, None] = {}  # column names in order of first appearance
        self.kinds: dict[str, frozenset] = {}
        self.ints_fit: dict[str, bool] = {}
        self.num_rows = 0
        self._rows: list[dict] = []
        self._files: list[str] = []
        self._row_nos: list[int] = []
        self._segments: list[Path] = []  # one IPC file per spilled batch
        self.schema: pa.Schema | None = None

    def add(self, source_file: str, source_row: int, row: dict) -> None:
        self._rows.append(row)
        self._files.append(source_file)
        self._row_nos.append(source_row)
        if len(self._rows) >= self.batch_rows:
            self._flush()

    def add_all(self, rows: Iterable[tuple[str, int, dict]]) -> "RawBatches":
        for f, r, row in rows:
            self.add(f, r, row)
        return self

    def _flush(self) -> None:
        import pyarrow.ipc as ipc

        if not self._rows:
            return
        arrays = [pa.array(self._files, pa.string()), pa.array(self._row_nos, pa.int64())]
        fields = [pa.field("source_file", pa.string()), pa.field("source_row", pa.int64())]
        names: dict[str, None] = {}
        for row in self._rows:
            for k in row:
                names.setdefault(k, None)
        for name in names:
            values = [row.get(name) for row in self._rows]
            kinds, fits = _column_kinds(values)
            self.names.setdefault(name, None)
            self.kinds[name] = self.kinds.get(name, frozenset()) | kinds
            self.ints_fit[name] = self.ints_fit.get(name, True) and fits
            typ = _type_of_kinds(kinds, fits)
            arrays.append(_raw_array(values, typ))
            fields.append(_raw_field(name, typ))
        batch = pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))
        path = self.spill_dir / f"batch-{len(self._segments):06d}.arrow"
        with ipc.new_file(str(path), batch.schema) as writer:
            writer.write_batch(batch)
        self._segments.append(path)
        self.num_rows += batch.num_rows
        self._rows, self._files, self._row_nos = [], [], []

    def finish(self) -> pa.Schema:
        """The unified schema of every row added (call once, after the last `add`)."""
        self._flush()
        fields = [pa.field("source_file", pa.string()), pa.field("source_row", pa.int64())]
        fields += [_raw_field(n, _type_of_kinds(self.kinds[n], self.ints_fit[n])) for n in self.names]
        self.schema = pa.schema(fields)
        return self.schema

    def _unify(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        assert self.schema is not None, "finish() first"
        if batch.schema.equals(self.schema, check_metadata=True):
            return batch
        arrays = []
        for f in self.schema:
            if f.name not in batch.schema.names:  # first seen in another batch: null here
                arrays.append(pa.nulls(batch.num_rows, f.type))
                continue
            have = batch.schema.field(f.name)
            col = batch.column(f.name)
            want_json = bool(f.metadata and f.metadata.get(JSON_FIELD_META) == b"1")
            have_json = bool(have.metadata and have.metadata.get(JSON_FIELD_META) == b"1")
            if want_json == have_json and have.type == f.type:
                arrays.append(col)
            elif want_json:  # native values in this batch, mixed across batches: JSON text as rows_to_table
                arrays.append(_raw_array(col.to_pylist(), None))
            else:  # this batch's values were all null (typed string): the column's type
                assert col.null_count == len(col), f"column {f.name}: non-null {have.type} != {f.type}"
                arrays.append(pa.nulls(batch.num_rows, f.type))
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The spilled rows in order, in the unified schema, one batch at a time."""
        import pyarrow.ipc as ipc

        for path in self._segments:
            with pa.memory_map(str(path)) as src:
                reader = ipc.open_file(src)
                for i in range(reader.num_record_batches):
                    yield self._unify(reader.get_batch(i))

    def head(self, n: int) -> pa.Table:
        """The first `n` rows in the unified schema (for the preview)."""
        out, rows = [], 0
        for batch in self.batches():
            out.append(batch.slice(0, n - rows))
            rows += out[-1].num_rows
            if rows >= n:
                break
        return pa.Table.from_batches(out, schema=self.schema)

    def close(self) -> None:
        import shutil

        shutil.rmtree(self.spill_dir, ignore_errors=True)


def stream_raw_table(rows: Iterable[tuple[str, int, dict]], spill_dir: str,
                     batch_rows: int = RAW_BATCH_ROWS) -> RawBatches:
    """All `rows` into a RawBatches (spilled, unified): `.schema`, `.num_rows`, `.batches()`."""
    raw = RawBatches(spill_dir, batch_rows).add_all(rows)
    raw.finish()
    return raw


def table_to_rows(table: pa.Table) -> Iterator[tuple[str, int, dict]]:
    """Inverse of `rows_to_table`: (source_file, source_row, original row) per row."""
    return batches_to_rows(table.schema, table.to_batches(max_chunksize=10_000))


def batches_to_rows(schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> Iterator[tuple[str, int, dict]]:
    """`table_to_rows` over record batches of a `raw_records` schema (read lazily, batch by batch)."""
    json_cols = {f.name for f in schema
                 if f.metadata and f.metadata.get(JSON_FIELD_META) == b"1"}
    data_cols = [n for n in schema.names if n not in RESERVED]
    for batch in batches:
        cols = {n: batch.column(n).to_pylist() for n in batch.schema.names}
        for i in range(batch.num_rows):
            row = {}
            for n in data_cols:
                v = cols[n][i]
                if n in json_cols and v is not None:
                    v = json.loads(v)
                key = n[:-4] if n.endswith("_raw") and n[:-4] in RESERVED else n
                row[key] = v
            yield cols["source_file"][i], cols["source_row"][i], row
