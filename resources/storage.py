"""Parquet storage for every asset, the rejects sidecar, and the DuckDB catalogue.

Layout under the storage root (a local folder or any pyarrow/fsspec URI such as s3://bucket/x):

    <root>/<asset>/source=<key>/data.parquet     partitioned assets (hive style)
    <root>/<asset>/data.parquet                  unpartitioned (global) assets
    <root>/_rejects/<asset>/source=<key>/data.parquet   rejected / removed rows with reasons

Writes are atomic: a temp file beside the target, then a rename. The DuckDB catalogue holds one
view per asset over its Parquet glob (so new partitions show up without a refresh) and a
`rejects` view over all rejects files.
"""


import logging
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Optional

import dagster as dg
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

log = logging.getLogger("posttrain.storage")

DEFAULT_ROOT_ENV = "POSTTRAIN_STORAGE"
CATALOG_ENV = "POSTTRAIN_CATALOG"
REJECTS_DIR = "_rejects"
PARTITION_DIM = "source"
DATA_FILE = "data.parquet"
#: a rejects file waiting for its asset's data to be committed (StorageResource.write_rejects)
PENDING = ".pending"
# schemes DuckDB reads itself (through its httpfs / azure extensions)
DUCKDB_REMOTE_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "http", "https", "hf")
#: rows per Parquet row group of a streamed write (batches are buffered up to this, or ROW_GROUP_BYTES)
ROW_GROUP_ROWS = 50_000
ROW_GROUP_BYTES = 64 << 20
#: rows per batch handed out by PartitionReader.iter_batches
READ_BATCH_ROWS = 20_000


def default_storage_root() -> str:
    return os.environ.get(DEFAULT_ROOT_ENV) or os.path.abspath("storage")


class UnsafePartitionKeyError(ValueError):
    """A partition key that is not a registry key (KEY_RE): it could name a path outside the storage root
    (Dagster accepts `g/../../../other/x` as a dynamic partition key)."""


#: the registry's key pattern (partitions/registry.py KEY_RE; shard keys `<key>.sNNNN` match it too)
PARTITION_KEY_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


def check_partition_key(key: str) -> str:
    if not isinstance(key, str) or not PARTITION_KEY_RE.match(key) or ".." in key:
        raise UnsafePartitionKeyError(f"partition key {key!r} is not a source key ({PARTITION_KEY_RE.pattern}, no "
                                      f"'..'): refused before it names a path")
    return key


class MissingPartitionError(FileNotFoundError):
    pass


class CorruptPartitionError(OSError):
    """A Parquet file that exists but cannot be read (truncated, overwritten, not Parquet)."""


class StorageWriteError(OSError):
    """A write that failed (no space left, no permission); the previous file is unchanged."""


@dataclass
class TableStream:
    """A table too big to hold: its schema and its record batches, produced lazily and consumed
    once by `ParquetStore.write_stream` / the IO manager (an asset returns it instead of a
    pa.Table). Every batch must have `schema`'s column names and types (a batch whose types
    differ only in field metadata is cast). `on_done(rows_written)` may return more output
    metadata, added after the write (e.g. counts known only once the stream has run): the
    producing asset's code after its `yield Output(stream)` runs once the file is written."""

    schema: pa.Schema
    batches: Iterable[pa.RecordBatch]
    on_done: Optional[Callable[[int], dict]] = None
    row_group_rows: Optional[int] = None  # rows per Parquet row group (None: ROW_GROUP_ROWS)
    rows_written: int = field(default=0, init=False)

    @classmethod
    def from_table(cls, table: pa.Table, batch_rows: int = ROW_GROUP_ROWS) -> "TableStream":
        return cls(table.schema, table.to_batches(max_chunksize=batch_rows))

    def to_table(self) -> pa.Table:
        """Consume the stream into one table (tests, small partitions)."""
        return pa.Table.from_batches(list(self._checked()), schema=self.schema)

    def _checked(self) -> Iterator[pa.RecordBatch]:
        for i, batch in enumerate(self.batches):
            if isinstance(batch, pa.Table):
                batches = batch.to_batches()
            else:
                batches = [batch]
            for b in batches:
                if not b.schema.equals(self.schema, check_metadata=False):
                    if b.schema.names != self.schema.names or b.schema.types != self.schema.types:
                        raise ValueError(f"streamed batch {i}: schema differs from the stream's "
                                         f"(got {b.schema}, expected {self.schema})")
                    b = pa.RecordBatch.from_arrays(b.columns, schema=self.schema)
                self.rows_written += b.num_rows
                yield b


class PartitionReader:
    """A stored partition read lazily: its schema and row count from the Parquet footer, its rows
    batch by batch (`iter_batches`), or all at once (`read`). What the IO manager hands an input
    annotated `PartitionReader` instead of a pa.Table."""

    def __init__(self, store: "ParquetStore", path: str):
        self.store, self.path = store, path
        self._file = store.open_parquet(path)

    @property
    def schema(self) -> pa.Schema:
        return self._file.schema_arrow

    @property
    def num_rows(self) -> int:
        return self._file.metadata.num_rows

    @property
    def column_names(self) -> list[str]:
        return self.schema.names

    def iter_batches(self, batch_rows: int = READ_BATCH_ROWS,
                     columns: Optional[list[str]] = None) -> Iterator[pa.RecordBatch]:
        try:
            yield from self._file.iter_batches(batch_size=batch_rows, columns=columns)
        except (pa.ArrowException, OSError) as exc:
            raise CorruptPartitionError(f"unreadable Parquet file at {self.store.uri(self.path)} "
                                        f"({type(exc).__name__}: {exc})") from None

    def read(self, columns: Optional[list[str]] = None, filters=None) -> pa.Table:
        """All rows (of `columns`; those matching `filters`, pyarrow.parquet's DNF list or
        expression: row groups are read one at a time and filtered, so memory holds the result)."""
        if columns is None and filters is None:
            return self.store.read(self.path)
        try:
            return pq.read_table(self.path, filesystem=self.store.fs, columns=columns, filters=filters)
        except (pa.ArrowException, OSError) as exc:
            raise CorruptPartitionError(f"unreadable Parquet file at {self.store.uri(self.path)} "
                                        f"({type(exc).__name__}: {exc})") from None


class ParquetStore:
    """Plain helper (no Dagster) over a root URI: paths, atomic writes, reads."""

    def __init__(self, root: str):
        self.root_uri = root
        self.scheme = root.split("://", 1)[0] if "://" in root else "file"
        if self.scheme == "file":
            local = root[len("file://"):] if root.startswith("file://") else root
            self.fs: pafs.FileSystem = pafs.LocalFileSystem()
            self.base = os.path.abspath(local)
        else:
            try:
                self.fs, self.base = pafs.FileSystem.from_uri(root)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
                import fsspec  # any fsspec filesystem (memory://, gcs via gcsfs, ...)

                fs, path = fsspec.core.url_to_fs(root)
                self.fs = pafs.PyFileSystem(pafs.FSSpecHandler(fs))
                self.base = path
        self.base = self.base.rstrip("/")

    @property
    def is_local(self) -> bool:
        return self.scheme == "file"

    # ---------------------------------------------------------------- paths
    def asset_dir(self, asset: str) -> str:
        return f"{self.base}/{asset}"

    def path(self, asset: str, partition: Optional[str]) -> str:
        """The file of an asset (partition): a partition key must be a source key, and the path must
        stay under the storage root (UnsafePartitionKeyError otherwise)."""
        if partition is None:
            out = f"{self.asset_dir(asset)}/{DATA_FILE}"
        else:
            out = f"{self.asset_dir(asset)}/{PARTITION_DIM}={check_partition_key(partition)}/{DATA_FILE}"
        if ".." in out[len(self.base):].split("/"):
            raise UnsafePartitionKeyError(f"{out!r} leaves the storage root {self.base!r}")
        return out

    def rejects_path(self, asset: str, partition: Optional[str]) -> str:
        return self.path(f"{REJECTS_DIR}/{asset}", partition)

    def uri(self, path: str) -> str:
        """A path of this store as DuckDB / a user would address it."""
        if self.is_local:
            return path
        return f"{self.scheme}://{path}"

    def glob(self, asset: str, partitioned: bool) -> str:
        return self.uri(f"{self.asset_dir(asset)}/*/{DATA_FILE}" if partitioned else self.path(asset, None))

    # ---------------------------------------------------------------- io
    def _atomic(self, path: str, write_tmp) -> None:
        """write_tmp(tmp) writes a temp file beside `path`, then it is moved over `path` (deleted on failure)."""
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        try:
            write_tmp(tmp)
            self.fs.move(tmp, path)
        except BaseException as exc:
            try:
                self.fs.delete_file(tmp)
            except (OSError, FileNotFoundError):
                pass
            if isinstance(exc, OSError):
                err = StorageWriteError(f"cannot write {self.uri(path)}: {exc}; the file there before "
                                        "(if any) is unchanged")
                err.errno = exc.errno  # ENOSPC, EACCES, ... as the OS said
                raise err from exc
            raise

    def write(self, table: pa.Table, path: str) -> None:
        self._atomic(path, lambda tmp: pq.write_table(table, tmp, filesystem=self.fs, compression="zstd"))

    def write_stream(self, stream: TableStream, path: str, row_group_rows: Optional[int] = None,
                     row_group_bytes: int = ROW_GROUP_BYTES) -> int:
        """Write a TableStream as Parquet row groups of up to `row_group_rows` rows (or
        `row_group_bytes`), atomically like `write`: a temp file, then a rename. Holds one row
        group's batches at a time. Returns the rows written; an empty stream gives an empty file
        with the schema."""
        row_group_rows = max(1, row_group_rows or stream.row_group_rows or ROW_GROUP_ROWS)
        def write_tmp(tmp: str) -> None:
            with pq.ParquetWriter(tmp, stream.schema, filesystem=self.fs, compression="zstd") as writer:
                buf: list[pa.RecordBatch] = []
                rows = size = 0

                def flush() -> None:
                    nonlocal buf, rows, size
                    if buf:
                        writer.write_table(pa.Table.from_batches(buf, schema=stream.schema),
                                           row_group_size=row_group_rows)
                    buf, rows, size = [], 0, 0

                for batch in stream._checked():
                    if batch.num_rows == 0:
                        continue
                    buf.append(batch)
                    rows += batch.num_rows
                    size += batch.nbytes
                    if rows >= row_group_rows or size >= row_group_bytes:
                        flush()
                flush()

        self._atomic(path, write_tmp)
        return stream.rows_written

    def write_bytes(self, path: str, data: bytes) -> None:
        """A file of any kind (a model artifact), written atomically like the tables."""
        def write_tmp(tmp: str) -> None:
            with self.fs.open_output_stream(tmp) as fh:
                fh.write(data)

        self._atomic(path, write_tmp)

    def read_bytes(self, path: str) -> bytes:
        """Raises FileNotFoundError when there is no such file."""
        if not self.exists(path):
            raise FileNotFoundError(self.uri(path))
        with self.fs.open_input_stream(path) as fh:
            return fh.read()

    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type == pafs.FileType.File

    def read(self, path: str) -> pa.Table:
        if not self.exists(path):
            raise MissingPartitionError(f"no Parquet file at {self.uri(path)}")
        try:
            return pq.read_table(path, filesystem=self.fs)
        except (pa.ArrowException, OSError) as exc:
            raise CorruptPartitionError(f"unreadable Parquet file at {self.uri(path)} "
                                        f"({type(exc).__name__}: {exc})") from None

    def open_parquet(self, path: str) -> pq.ParquetFile:
        """The Parquet file at `path`, its footer read (rows stay on disk until asked for)."""
        if not self.exists(path):
            raise MissingPartitionError(f"no Parquet file at {self.uri(path)}")
        try:
            # pre_buffer off: with it, the reader keeps every row group it has read cached until it is
            # closed (measured: +160 MB per 1M GSM8K rows read batch by batch), so memory grows with
            # the partition; without it one row group's column chunks at a time
            return pq.ParquetFile(self.fs.open_input_file(path), pre_buffer=False)
        except (pa.ArrowException, OSError) as exc:
            raise CorruptPartitionError(f"unreadable Parquet file at {self.uri(path)} "
                                        f"({type(exc).__name__}: {exc})") from None

    def delete_dir(self, path: str) -> None:
        if self.fs.get_file_info(path).type == pafs.FileType.Directory:
            self.fs.delete_dir(path)

    def partitions(self, asset: str) -> list[str]:
        sel = pafs.FileSelector(self.asset_dir(asset), allow_not_found=True)
        prefix = f"{PARTITION_DIM}="
        out = []
        for info in self.fs.get_file_info(sel):
            name = info.base_name
            if info.type == pafs.FileType.Directory and name.startswith(prefix):
                if self.exists(f"{info.path}/{DATA_FILE}"):
                    out.append(name[len(prefix):])
        return sorted(out)


class Catalog:
    """DuckDB file with one view per asset (and `rejects`) over the Parquet files."""

    def __init__(self, path: str, store: ParquetStore):
        self.path = path
        self.store = store

    def _connect(self, read_only: bool = False, attempts: int = 40):
        import duckdb

        for i in range(attempts):
            try:
                return duckdb.connect(self.path, read_only=read_only)
            except duckdb.IOException as exc:  # another process holds the write lock
                if "lock" not in str(exc).lower() or i == attempts - 1:
                    raise
                time.sleep(0.25)
        raise AssertionError("unreachable")

    def view_sql(self, name: str, glob: str, hive: bool = True) -> str:
        quoted = glob.replace("'", "''")
        return (f'CREATE OR REPLACE VIEW "{name}" AS SELECT * FROM read_parquet(\'{quoted}\', '
                f"union_by_name=true, hive_partitioning={'true' if hive else 'false'})")

    def register(self, views: dict[str, str], hive: bool = True) -> bool:
        """Create or replace views {name: parquet glob}. Returns False (and logs) when it cannot."""
        if not (self.store.is_local or self.store.scheme in DUCKDB_REMOTE_SCHEMES):
            log.warning("catalogue skipped: DuckDB cannot read %s:// storage", self.store.scheme)
            return False
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        try:
            con = self._connect()
        except Exception as exc:  # noqa: BLE001 - the data is written; the view can wait
            log.warning("catalogue %s not updated (%s); views will be added on the next write",
                        self.path, exc)
            return False
        try:
            for name, glob in views.items():
                con.execute(self.view_sql(name, glob, hive))
        finally:
            con.close()
        return True

    def query(self, sql: str) -> list[tuple]:
        con = self._connect(read_only=True)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()


def view_name(asset_key: dg.AssetKey) -> str:
    return "__".join(asset_key.path)


class StorageResource(dg.ConfigurableResource):
    """Where tables live. `root`: local folder or URI (s3://…, gs://…, memory://…);
    `catalog_path`: the DuckDB catalogue file (default `<root>/catalog.duckdb` for a local root,
    `./catalog.duckdb` otherwise)."""

    root: str = ""  # "" = $POSTTRAIN_STORAGE, else ./storage under the working directory
    catalog_path: Optional[str] = None

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """At each step start: stop when an earlier run still writes the same asset partitions."""
        if context.dagster_run is not None and context.instance is not None:
            from .run_guard import check_partition_free

            check_partition_free(context.instance, context.dagster_run)

    def store(self) -> ParquetStore:
        return ParquetStore(self.root or default_storage_root())

    def catalog(self) -> Catalog:
        store = self.store()
        path = self.catalog_path or os.environ.get(CATALOG_ENV)
        if not path:
            path = os.path.join(store.base, "catalog.duckdb") if store.is_local else os.path.abspath("catalog.duckdb")
        return Catalog(path, store)

    def write_rejects(self, asset_key: dg.AssetKey, partition: Optional[str], table: pa.Table) -> str:
        """Always written (also when empty) so that a re-run replaces the previous rejects. Staged
        (`<rejects file>.pending`) until the IO manager has committed the asset's data, then moved into
        place (commit_rejects): a failed data write never leaves new rejects beside old data. Returns
        the rejects file's URI."""
        store = self.store()
        path = store.rejects_path(view_name(asset_key), partition)
        store.write(table, path + PENDING)
        return store.uri(path)

    def publish_rejects(self, asset_key: dg.AssetKey, partition: Optional[str]) -> bool:
        """The staged rejects put in place now, without the data: for a stage that fails the partition
        on purpose (too many failed requests) and whose rejects say why."""
        return self.commit_rejects(view_name(asset_key), partition)

    def commit_rejects(self, asset: str, partition: Optional[str]) -> bool:
        """The staged rejects of an asset partition whose data was just committed, moved into place."""
        store = self.store()
        path = store.rejects_path(asset, partition)
        if not store.exists(path + PENDING):
            return False
        store.fs.move(path + PENDING, path)
        # every asset's rejects, per source partition and of the global steps (the export's): each row
        # names its source and asset itself (no hive columns: the depths differ)
        self.catalog().register({"rejects": store.uri(f"{store.base}/{REJECTS_DIR}/**/{DATA_FILE}")}, hive=False)
        return True


class ParquetIOManager(dg.ConfigurableIOManager):
    """Arrow tables <-> Parquet, one file per asset and partition, catalogued in DuckDB.

    Loading a partitioned upstream into an unpartitioned (fan-in) step returns one table of all
    requested partitions with a `source` column.

    Streaming: an asset may return a `TableStream` (written batch by batch as row groups), and an
    input annotated `PartitionReader` gets one partition lazily (schema + row count, rows read
    batch by batch) instead of a pa.Table.
    """

    storage: dg.ResourceDependency[StorageResource]

    def _asset_and_partition(self, context) -> tuple[str, Optional[str]]:
        asset = view_name(context.asset_key)
        partition = context.partition_key if context.has_asset_partitions else None
        return asset, partition

    def handle_output(self, context: dg.OutputContext, obj: pa.Table) -> None:
        if obj is None:
            self.storage.commit_rejects(*self._asset_and_partition(context))
            return
        if not isinstance(obj, (pa.Table, TableStream)):
            raise TypeError(f"{context.asset_key.to_user_string()}: expected a pyarrow.Table or "
                            f"TableStream, got {type(obj).__name__}")
        store = self.storage.store()
        asset, partition = self._asset_and_partition(context)
        path = store.path(asset, partition)
        extra: dict[str, Any] = {}
        if isinstance(obj, TableStream):
            rows = store.write_stream(obj, path)
            if obj.on_done is not None:
                extra = obj.on_done(rows) or {}
        else:
            store.write(obj, path)
        self.storage.commit_rejects(asset, partition)  # the data is in place: now its rejects
        self.storage.catalog().register({asset: store.glob(asset, partition is not None)})
        context.add_output_metadata({"path": dg.MetadataValue.path(store.uri(path)), **extra})

    @staticmethod
    def _read(store: ParquetStore, asset: str, key: Optional[str]) -> pa.Table:
        try:
            return store.read(store.path(asset, key))
        except CorruptPartitionError as exc:
            where = f"partition {PARTITION_DIM}={key!r}" if key is not None else "(unpartitioned)"
            raise CorruptPartitionError(f"{asset} {where}: {exc}; materialise {asset} for it again "
                                        "to rewrite the file") from None

    @staticmethod
    def _wants_reader(context: dg.InputContext) -> bool:
        dagster_type = getattr(context, "dagster_type", None)
        return getattr(dagster_type, "typing_type", None) is PartitionReader

    @staticmethod
    def _reader(store: ParquetStore, asset: str, key: Optional[str]) -> PartitionReader:
        try:
            return PartitionReader(store, store.path(asset, key))
        except CorruptPartitionError as exc:
            where = f"partition {PARTITION_DIM}={key!r}" if key is not None else "(unpartitioned)"
            raise CorruptPartitionError(f"{asset} {where}: {exc}; materialise {asset} for it again "
                                        "to rewrite the file") from None

    def load_input(self, context: dg.InputContext) -> pa.Table:
        store = self.storage.store()
        asset = view_name(context.asset_key)
        lazy = self._wants_reader(context)
        if not context.has_asset_partitions:
            return (self._reader if lazy else self._read)(store, asset, None)
        keys = list(context.asset_partition_keys)
        fan_in = not context.has_partition_key or len(keys) != 1
        if not fan_in:
            return (self._reader if lazy else self._read)(store, asset, keys[0])
        if lazy:
            raise TypeError(f"{asset}: a PartitionReader input reads one partition, not {len(keys)}")
        tables = []
        for key in keys:
            try:
                t = self._read(store, asset, key)
            except MissingPartitionError:
                raise MissingPartitionError(
                    f"{asset}: partition {PARTITION_DIM}={key!r} has not been materialised; "
                    f"materialise it first (or remove the source)") from None
            if PARTITION_DIM not in t.column_names:
                t = t.append_column(PARTITION_DIM, pa.array([key] * t.num_rows, pa.string()))
            tables.append(t)
        if not tables:
            return pa.table({PARTITION_DIM: pa.array([], pa.string())})
        return pa.concat_tables(tables, promote_options="default")
