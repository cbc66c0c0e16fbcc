"""`python -m resources "SQL"`: query the DuckDB catalogue (read-only) and print the result.

    python -m resources "SELECT source, count(*) FROM merged_prompts GROUP BY 1"
    python -m resources --views          list the catalogue's views
"""

import argparse
import os
import sys

from .storage import StorageResource


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m resources", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sql", nargs="?")
    ap.add_argument("--views", action="store_true", help="list the views")
    args = ap.parse_args(argv)
    catalog = StorageResource().catalog()
    if not os.path.exists(catalog.path):
        print(f"error: no catalogue at {catalog.path}; run `make demo` first", file=sys.stderr)
        return 2
    import duckdb

    con = duckdb.connect(catalog.path, read_only=True)
    try:
        if args.views or not args.sql:
            rel = con.sql("SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY 1")
        else:
            rel = con.sql(args.sql)
        if rel is not None:
            rel.show(max_width=200, max_rows=50)
    except duckdb.Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        con.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
