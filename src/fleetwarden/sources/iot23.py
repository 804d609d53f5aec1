"""IoT-23 labelled flows: the CSV variant and the original ``conn.log.labeled``, to flow batches.

The CSV variant (as in ``shared/data/iot23``) has a header row of Zeek ``conn.log`` field
names plus ``label`` and ``detailed-label``; an empty cell, like Zeek's ``-``, is null.
It is read with the same columnar machinery as Zeek TSV (:mod:`fleetwarden.sources.zeek`):
``pyarrow.csv`` per block, a line-by-line pass only for blocks holding damaged lines.
The original ``conn.log.labeled`` files are Zeek TSV whose last column packs
``tunnel_parents label detailed-label`` with spaces; :mod:`~fleetwarden.sources.zeek`
unpacks that column, and this module hands such files over to it.

Label values are kept as written (IoT-23 mixes ``benign`` and ``Benign``): consumers that
need a binary label should compare case-insensitively.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from fleetwarden.core.events import EventBatch
from fleetwarden.sources import DEFAULT_BATCH, ReadStats, SourceError
from fleetwarden.sources.zeek import (
    Batcher,
    BlockReader,
    Plan,
    chain_first,
    deliver,
    make_columns,
    parse_delimited,
    read_tsv,
)

__all__ = ["REQUIRED_COLUMNS", "read"]

REQUIRED_COLUMNS = ("ts", "id.orig_h", "id.resp_h", "proto")


def read(
    path: str | Path,
    *,
    skip_bad: bool = False,
    stats: ReadStats | None = None,
    batch_size: int = DEFAULT_BATCH,
) -> Iterator[EventBatch]:
    """Yield flow batches (with ``label``/``detailed_label``) from an IoT-23 CSV or conn.log.labeled."""
    path = Path(path)
    stats = stats if stats is not None else ReadStats()
    reader = BlockReader(path)
    blocks = iter(reader)
    batcher = Batcher(batch_size, stats)
    try:
        data = next(blocks, None)
        if data is None:
            return
        if data[:1] == b"#":
            source = (reader, chain_first(data, blocks))
            yield from read_tsv(path, skip_bad=skip_bad, stats=stats, batch_size=batch_size, source=source)
            return
        nl = data.find(b"\n")
        plan = _plan(path, data if nl == -1 else data[:nl])
        reader.line = 2
        rest = data[nl + 1 :] if nl != -1 else b""
        for block in chain_first(rest, blocks):
            if not block:
                continue
            parsed = parse_delimited(block, reader.line, plan)
            reader.line += parsed.n_lines
            yield from deliver(parsed, "flow", batcher, path, skip_bad, stats)
    except SourceError as exc:
        yield from batcher.flush()
        # a missing required column is never skippable: nothing in the file can be read
        if not skip_bad or exc.where == "line 1":
            raise
        stats.skip(exc)
        return
    yield from batcher.flush()


def _plan(path: Path, header_raw: bytes) -> Plan:
    try:
        header = header_raw.rstrip(b"\r").decode("utf-8")
    except UnicodeDecodeError:
        raise SourceError(path, "line 1", "header row is not UTF-8 text") from None
    sep = next((c for c in (",", "|", "\t", ";") if c in header), ",")
    names = [n.strip().strip('"') for n in header.split(sep)]
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise SourceError(
            path,
            "line 1",
            f"header row lacks required column(s): {', '.join(missing)} (found: {header[:200]!r})",
        )
    dupes = sorted({n for n in names if names.count(n) > 1 and n})
    if dupes:
        raise SourceError(path, "line 1", f"header row repeats column(s): {', '.join(dupes)}")
    return Plan(
        kind="flow",
        sep=sep,
        columns=make_columns(names, "flow"),
        nulls=("", "-"),
        empty="(empty)",
        escapes=False,
        quoting=True,
    )
