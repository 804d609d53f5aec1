"""Event schemas and the columnar batch that carries them.

Every event kind FleetWarden handles is declared here once, as an Arrow schema whose
fields carry a one-line doc.  Field names follow the ecosystem: Zeek's ``conn.log`` and
``dns.log`` names for network records, ECS-style names for the rest.  Records travel in
:class:`EventBatch` objects (an Arrow table plus its kind) so one Python call handles
thousands of records; nothing on the hot path builds a Python object per record.

Every string field also declares its longest acceptable value (``max_len``, in characters,
shown in its doc as "at most N characters").  Devices, logs and brokers are attacker-controlled:
a megabyte-long ``device_id`` would otherwise be copied into per-device state, hashed, stored
and printed.  The readers refuse a record holding a longer value like any other bad record,
with one vectorised check per batch (:func:`overlong`, applied by
:func:`fleetwarden.sources.drop_overlong`).  The limits are a priori: generous for every
legitimate value the ecosystem produces, small enough that no single value costs memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "KINDS",
    "SCHEMAS",
    "EventBatch",
    "field_docs",
    "max_lengths",
    "overlong",
    "required_fields",
    "schema_for",
    "time_windows",
]


def _f(
    name: str, type_: pa.DataType, doc: str, required: bool = False, max_len: int | None = None
) -> pa.Field:
    meta = {b"doc": doc.encode(), b"required": b"1" if required else b"0"}
    if pa.types.is_string(type_):
        if max_len is None:  # pragma: no cover - a schema mistake, caught at import
            raise TypeError(f"string field {name!r} needs a max_len")
        meta[b"doc"] = f"{doc} (at most {max_len:,} characters)".encode()
        meta[b"max_len"] = str(max_len).encode()
    return pa.field(name, type_, nullable=True, metadata=meta)


# Length limits, in characters (why each is what it is):
# how far ahead of the receiving clock a LIVE event may be dated (a device's or gateway's clock skew):
# one event dated far ahead would move a long-lived session's event time and age every device's
# context out of its windows at once (live sources refuse it; files carry their own time)
MAX_AHEAD_S = 300.0
_ID = 128  # identifiers: inventory device ids, Zeek uids (18 chars), UUIDs (36), serials
_IP = 64  # an IPv6 address with a zone index: 39 + "%" + an interface name (IFNAMSIZ 16)
_MAC = 32  # a MAC (17 chars) or an EUI-64 (23 chars), any separator
_TOKEN = 32  # enumerations: proto, conn_state, qtype/rcode names, signature, attestation states
_NAME = 256  # free-form names: accounts (an e-mail address is at most 254), vendors, models, metrics
_LABEL = 256  # ground-truth labels and scenario steps
_DNS_NAME = 1024  # RFC 1035 caps a name at 255 bytes; escaped binary labels (\xNN) take up to 4x
_DNS_ANSWERS = 65_536  # every answer of one DNS message (at most 64 KiB on the wire), comma-joined
_TEXT = 4096  # free text sent by a device or an operator: commands, arguments, reasons (PATH_MAX)
_DIGEST = 128  # a SHA-256 in hex is 64 characters; room for a "sha256:" prefix or base64


_S = pa.string()
_F64 = pa.float64()
_I64 = pa.int64()
_I32 = pa.int32()
_B = pa.bool_()

# Columns every kind may carry: who the record belongs to in the inventory and, for
# labelled data (IoT-23, the simulator's scenarios), the ground truth.
_COMMON = [
    _f("device_id", _S, "inventory id of the device this record belongs to, when known", max_len=_ID),
    _f(
        "label",
        _S,
        "ground-truth label when the data is labelled (Benign/Malicious or a scenario)",
        max_len=_LABEL,
    ),
    _f("detailed_label", _S, "finer ground truth: attack family or scenario step", max_len=_LABEL),
]

FLOW = pa.schema(
    [
        _f("ts", _F64, "time of the first packet, seconds since the epoch", required=True),
        _f("uid", _S, "unique id of the connection (Zeek's uid)", max_len=_ID),
        _f("id.orig_h", _S, "originator's IP address", required=True, max_len=_IP),
        _f("id.orig_p", _I32, "originator's port (ICMP: type)"),
        _f("id.resp_h", _S, "responder's IP address", required=True, max_len=_IP),
        _f("id.resp_p", _I32, "responder's port (ICMP: code)"),
        _f("proto", _S, "transport protocol: tcp, udp or icmp", required=True, max_len=_TOKEN),
        _f("service", _S, "application protocol detected on the connection (dns, http, ssl…)", max_len=_NAME),
        _f("duration", _F64, "seconds between first and last packet"),
        _f("orig_bytes", _I64, "payload bytes sent by the originator"),
        _f("resp_bytes", _I64, "payload bytes sent by the responder"),
        _f("conn_state", _S, "Zeek connection state (S0, S1, SF, REJ, RSTO, OTH…)", max_len=_TOKEN),
        _f("local_orig", _B, "originator is inside the monitored network"),
        _f("local_resp", _B, "responder is inside the monitored network"),
        _f("missed_bytes", _I64, "bytes missed in content gaps"),
        _f("history", _S, "Zeek connection history string (ShADadFf…)", max_len=_NAME),
        _f("orig_pkts", _I64, "packets sent by the originator"),
        _f("orig_ip_bytes", _I64, "IP-level bytes sent by the originator"),
        _f("resp_pkts", _I64, "packets sent by the responder"),
        _f("resp_ip_bytes", _I64, "IP-level bytes sent by the responder"),
        _f("orig_l2_addr", _S, "originator's link-layer (MAC) address", max_len=_MAC),
        _f("resp_l2_addr", _S, "responder's link-layer (MAC) address", max_len=_MAC),
        *_COMMON,
    ]
)

DNS = pa.schema(
    [
        _f("ts", _F64, "time of the query, seconds since the epoch", required=True),
        _f("uid", _S, "uid of the connection that carried the query", max_len=_ID),
        _f("id.orig_h", _S, "client IP address", required=True, max_len=_IP),
        _f("id.orig_p", _I32, "client port"),
        _f("id.resp_h", _S, "resolver IP address", required=True, max_len=_IP),
        _f("id.resp_p", _I32, "resolver port"),
        _f("proto", _S, "transport protocol: udp or tcp", max_len=_TOKEN),
        _f("trans_id", _I32, "DNS transaction id"),
        _f("query", _S, "queried domain name", required=True, max_len=_DNS_NAME),
        _f("qtype_name", _S, "query type (A, AAAA, TXT, NULL…)", max_len=_TOKEN),
        _f("rcode_name", _S, "response code (NOERROR, NXDOMAIN…); null when unanswered", max_len=_TOKEN),
        _f("answers", _S, "answers, comma separated", max_len=_DNS_ANSWERS),
        _f("rejected", _B, "the resolver rejected the query"),
        *_COMMON,
    ]
)

AUTH = pa.schema(
    [
        _f("ts", _F64, "time of the attempt, seconds since the epoch", required=True),
        _f(
            "user",
            _S,
            "account that tried to log in (device identity or operator)",
            required=True,
            max_len=_NAME,
        ),
        _f("src_ip", _S, "address the attempt came from", max_len=_IP),
        _f("src_country", _S, "ISO country code of src_ip, when known", max_len=_TOKEN),
        _f("src_lat", _F64, "latitude of src_ip, when known"),
        _f("src_lon", _F64, "longitude of src_ip, when known"),
        _f("service", _S, "where the login happened: ssh, telnet, web, api, console, vpn", max_len=_TOKEN),
        _f("success", _B, "the attempt succeeded", required=True),
        _f("reason", _S, "why it failed (bad password, unknown user, locked…)", max_len=_TEXT),
        _f(
            "action",
            _S,
            "what the record is: null or login (a login attempt), disconnect, publish (a refused or "
            "allowed publish), conflict (a client id taken over)",
            max_len=_TOKEN,
        ),
        _f("client_id", _S, "protocol client id of the session (MQTT client identifier)", max_len=_NAME),
        _f("src_port", _I32, "source port of the session"),
        _f("topic", _S, "topic or resource the action was on (MQTT topic)", max_len=_TEXT),
        *_COMMON,
    ]
)

TELEMETRY = pa.schema(
    [
        _f("ts", _F64, "time of the reading, seconds since the epoch", required=True),
        _f("metric", _S, "what was measured (temperature, cpu, flow_rate…)", required=True, max_len=_NAME),
        _f("value", _F64, "the reading", required=True),
        _f("unit", _S, "unit of the reading", max_len=_TOKEN),
        *_COMMON,
    ]
)

FIRMWARE_REPORT = pa.schema(
    [
        _f("ts", _F64, "time of the report, seconds since the epoch", required=True),
        _f("version", _S, "firmware version the device reports", required=True, max_len=_ID),
        _f("image_sha256", _S, "SHA-256 of the running image, hex", max_len=_DIGEST),
        _f("signature", _S, "signature status: valid, invalid, unsigned or unknown", max_len=_TOKEN),
        *_COMMON,
    ]
)

PROVISION = pa.schema(
    [
        _f("ts", _F64, "time of the enrolment request, seconds since the epoch", required=True),
        _f("serial", _S, "hardware serial number claimed by the device", max_len=_ID),
        _f("vendor", _S, "vendor claimed by the device", max_len=_NAME),
        _f("model", _S, "model claimed by the device", max_len=_NAME),
        _f("pubkey_sha256", _S, "SHA-256 of the public key (or CSR) presented, hex", max_len=_DIGEST),
        _f("attestation", _S, "attestation result: ok, failed or missing", max_len=_TOKEN),
        _f("src_ip", _S, "address the request came from", max_len=_IP),
        *_COMMON,
    ]
)

COMMAND = pa.schema(
    [
        _f("ts", _F64, "time the command was sent, seconds since the epoch", required=True),
        _f("operator", _S, "account or system that sent the command", max_len=_NAME),
        _f("command", _S, "command name (write_register, reboot, set_point…)", required=True, max_len=_TEXT),
        _f("args", _S, "arguments, as sent", max_len=_TEXT),
        _f("src_ip", _S, "address the command came from", max_len=_IP),
        *_COMMON,
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    "flow": FLOW,
    "dns": DNS,
    "auth": AUTH,
    "telemetry": TELEMETRY,
    "firmware_report": FIRMWARE_REPORT,
    "provision": PROVISION,
    "command": COMMAND,
}
KINDS = tuple(SCHEMAS)

# Kinds whose records are about a device that must be named in the record itself.
_DEVICE_REQUIRED = {"telemetry", "firmware_report", "provision", "command"}


def schema_for(kind: str) -> pa.Schema:
    try:
        return SCHEMAS[kind]
    except KeyError:
        raise ValueError(f"unknown event kind {kind!r}; known kinds: {', '.join(KINDS)}") from None


def required_fields(kind: str) -> list[str]:
    schema = schema_for(kind)
    names = [f.name for f in schema if f.metadata and f.metadata.get(b"required") == b"1"]
    if kind in _DEVICE_REQUIRED:
        names.append("device_id")
    return names


def field_docs(kind: str) -> dict[str, str]:
    return {f.name: f.metadata[b"doc"].decode() for f in schema_for(kind)}


def max_lengths(kind: str) -> dict[str, int]:
    """The longest value, in characters, each string field of ``kind`` accepts."""
    schema_for(kind)  # names the known kinds when ``kind`` is not one
    return dict(_MAX_LENGTHS[kind])


def _max_lengths(schema: pa.Schema) -> list[tuple[str, int]]:
    return [(f.name, int(f.metadata[b"max_len"])) for f in schema if f.metadata and b"max_len" in f.metadata]


_MAX_LENGTHS = {kind: _max_lengths(schema) for kind, schema in SCHEMAS.items()}


def overlong(kind: str, columns: Mapping[str, pa.Array | pa.ChunkedArray]) -> tuple[np.ndarray, list[str]]:
    """Rows of ``columns`` (typed columns of one ``kind``, all of one length) holding a string longer
    than its field's ``max_len``: their indices, ascending, and for each the problem in words
    ("field device_id is 1048576 characters, at most 128"; the first such field in schema order).

    Vectorised: a column whose longest value (in bytes, read off the Arrow offsets) fits is passed
    without looking at its characters, so a clean batch costs one length pass per string column.
    """
    found: dict[int, str] = {}
    for name, limit in _MAX_LENGTHS[kind]:
        arr = columns.get(name)
        if arr is None or len(arr) == 0 or arr.null_count == len(arr):
            continue
        longest = pc.max(pc.binary_length(arr)).as_py()
        if longest is None or longest <= limit:  # bytes >= characters: nothing can be over
            continue
        chars = pc.utf8_length(arr)
        over = pc.fill_null(pc.greater(chars, limit), False)
        if isinstance(over, pa.ChunkedArray):
            over = over.combine_chunks()
        rows = np.flatnonzero(over.to_numpy(zero_copy_only=False))
        if not len(rows):
            continue
        lengths = pc.take(chars, pa.array(rows)).to_pylist()
        for row, n in zip(rows.tolist(), lengths, strict=True):
            if row not in found:
                found[row] = f"field {name} is {n} characters, at most {limit}"
    rows = np.fromiter(sorted(found), dtype=np.int64, count=len(found))
    return rows, [found[r] for r in rows.tolist()]


@dataclass(frozen=True)
class EventBatch:
    """A batch of records of one kind, held as an Arrow table with the kind's full schema.

    Build one with :meth:`from_columns` (missing optional columns become nulls) or
    :meth:`from_table`; read columns as Arrow (``batch["id.orig_h"]``) or numpy
    (``batch.np("orig_bytes")``).
    """

    kind: str
    table: pa.Table

    def __post_init__(self) -> None:
        expected = schema_for(self.kind)
        if not self.table.schema.equals(expected, check_metadata=False):
            raise ValueError(f"{self.kind} batch does not match the {self.kind} schema")

    # construction -------------------------------------------------------------------
    @classmethod
    def from_columns(cls, kind: str, columns: Mapping[str, Any], length: int | None = None) -> EventBatch:
        """Build a batch from column name -> sequence (numpy array, list or Arrow array).

        Unknown column names are an error (they signal a mapping mistake upstream);
        missing optional columns are filled with nulls.
        """
        schema = schema_for(kind)
        unknown = set(columns) - set(schema.names)
        if unknown:
            raise ValueError(f"unknown {kind} field(s): {', '.join(sorted(unknown))}")
        if length is None:
            length = len(next(iter(columns.values()))) if columns else 0
        arrays = []
        for field in schema:
            if field.name in columns:
                arrays.append(_to_arrow(columns[field.name], field, length))
            else:
                arrays.append(pa.nulls(length, type=field.type))
        return cls(kind, pa.Table.from_arrays(arrays, schema=schema))

    @classmethod
    def from_table(cls, kind: str, table: pa.Table) -> EventBatch:
        """Conform an Arrow table whose columns are a subset of the kind's fields."""
        return cls.from_columns(kind, {n: table.column(n) for n in table.column_names}, table.num_rows)

    @classmethod
    def empty(cls, kind: str) -> EventBatch:
        return cls(kind, schema_for(kind).empty_table())

    @classmethod
    def concat(cls, batches: Iterable[EventBatch]) -> EventBatch:
        batches = list(batches)
        if not batches:
            raise ValueError("cannot concatenate zero batches")
        kinds = {b.kind for b in batches}
        if len(kinds) != 1:
            raise ValueError(f"cannot concatenate batches of different kinds: {sorted(kinds)}")
        table = pa.concat_tables([b.table for b in batches])
        return cls(batches[0].kind, table.combine_chunks())

    # access -----------------------------------------------------------------------
    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, name: str) -> pa.ChunkedArray:
        return self.table.column(name)

    def np(self, name: str, fill: Any = None) -> np.ndarray:
        """Column as numpy; nulls replaced by ``fill`` (default: 0, NaN, '' or False by type)."""
        col = self.table.column(name)
        if fill is None:
            fill = _default_fill(col.type)
        if col.null_count:
            col = pc.fill_null(col, fill)
        if pa.types.is_string(col.type):
            return np.asarray(col.to_numpy(zero_copy_only=False), dtype=object)
        return col.to_numpy()

    def slice(self, offset: int, length: int | None = None) -> EventBatch:
        return EventBatch(self.kind, self.table.slice(offset, length))

    def filter(self, mask: np.ndarray | pa.Array) -> EventBatch:
        return EventBatch(self.kind, self.table.filter(pa.array(mask, type=pa.bool_())))

    def sort_by_time(self) -> EventBatch:
        return EventBatch(self.kind, self.table.sort_by("ts"))

    def to_pylist(self) -> list[dict[str, Any]]:
        return self.table.to_pylist()


def time_windows(
    by_kind: Mapping[str, EventBatch], seconds: float, origin: float | None = None
) -> Iterator[EventBatch]:
    """The records of per-kind batches (each sorted by ``ts``) in windows of ``seconds`` of event time,
    ``[origin + k * seconds, origin + (k + 1) * seconds)`` (``origin`` None: the earliest record), in
    time order: one batch per kind per window, kinds in :data:`KINDS` order; empty windows are
    skipped.  How a replay or a live backlog hands events to the engine, a window at a time."""
    ts = {k: b.np("ts") for k, b in by_kind.items() if len(b)}
    if not ts:
        return
    if origin is None:
        origin = min(float(v[0]) for v in ts.values())
    windows = np.unique(np.concatenate([np.floor((v - origin) / seconds) for v in ts.values()]))
    for w in windows:
        lo, hi = origin + w * seconds, origin + (w + 1) * seconds
        for kind in KINDS:
            if kind not in ts:
                continue
            a, b = np.searchsorted(ts[kind], [lo, hi], side="left")
            if b > a:
                yield by_kind[kind].slice(int(a), int(b - a))


def _default_fill(type_: pa.DataType) -> Any:
    if pa.types.is_string(type_):
        return ""
    if pa.types.is_floating(type_):
        return float("nan")
    if pa.types.is_boolean(type_):
        return False
    return 0


def _to_arrow(values: Any, field: pa.Field, length: int) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    try:
        if isinstance(values, pa.Array):
            arr = values if values.type == field.type else pc.cast(values, field.type)
        else:
            arr = pa.array(values, type=field.type, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
        raise ValueError(f"field {field.name!r}: cannot read values as {field.type}: {exc}") from None
    if len(arr) != length:
        raise ValueError(f"field {field.name!r} has {len(arr)} values, expected {length}")
    return arr
