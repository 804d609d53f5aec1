"""The audit hash chain without a database: it links, verifies, and catches every kind of tampering."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetwarden.store import audit


def _chain(n: int) -> list[audit.ChainEntry]:
    entries: list[audit.ChainEntry] = []
    for i in range(n):
        prev = entries[-1] if entries else None
        entries.append(
            audit.make_entry(
                prev,
                1_700_000_000.0 + i * 0.25,
                f"user{i % 3}",
                "incident.status",
                f"incident:{i}",
                {"from": "open", "to": "closed", "n": i, "ratio": i / 7},
            )
        )
    return entries


def test_chain_links_and_verifies() -> None:
    chain = _chain(6)
    assert [e.seq for e in chain] == [1, 2, 3, 4, 5, 6]
    assert chain[0].prev_hash == audit.GENESIS
    assert all(b.prev_hash == a.hash for a, b in zip(chain, chain[1:], strict=False))
    assert len({e.hash for e in chain}) == 6
    assert audit.verify_chain(chain) == (True, None)
    assert audit.verify_chain([]) == (True, None)


def test_edited_entry_is_detected() -> None:
    chain = _chain(5)
    chain[2] = dataclasses.replace(chain[2], actor="mallory")
    assert audit.verify_chain(chain) == (False, 3)


def test_edit_with_recomputed_hash_breaks_the_next_link() -> None:
    chain = _chain(5)
    e = chain[2]
    forged = dataclasses.replace(e, details={**e.details, "to": "open"})
    forged = dataclasses.replace(
        forged,
        hash=audit.entry_hash(
            forged.prev_hash,
            forged.seq,
            forged.ts,
            forged.actor,
            forged.action,
            forged.subject,
            forged.details,
        ),
    )
    chain[2] = forged
    assert audit.verify_chain(chain) == (False, 4)


def test_deleted_entry_is_detected() -> None:
    chain = _chain(5)
    del chain[1]
    assert audit.verify_chain(chain) == (False, 3)


def test_deleted_first_entry_is_detected() -> None:
    assert audit.verify_chain(_chain(3)[1:]) == (False, 2)


def test_reordered_entries_are_detected() -> None:
    chain = _chain(5)
    chain[1], chain[2] = chain[2], chain[1]
    assert audit.verify_chain(chain)[0] is False
    # swapping the contents but keeping the seq numbers in place is caught too
    a, b = _chain(5)[1], _chain(5)[2]
    swapped = _chain(5)
    swapped[1] = dataclasses.replace(b, seq=2)
    swapped[2] = dataclasses.replace(a, seq=3)
    assert audit.verify_chain(swapped) == (False, 2)


def test_truncation_needs_an_anchor() -> None:
    chain = _chain(5)
    head = (chain[-1].seq, chain[-1].hash)
    # dropping the newest entries leaves a valid shorter chain: the documented blind spot
    assert audit.verify_chain(chain[:3]) == (True, None)
    assert audit.verify_chain(chain[:3], anchor=head) == (False, 5)
    assert audit.verify_chain(chain, anchor=head) == (True, None)
    assert audit.verify_chain(chain, anchor=(5, "f" * 64)) == (False, 5)


def test_rows_and_mappings_verify_like_entries() -> None:
    chain = _chain(3)
    as_dicts = [dataclasses.asdict(e) for e in chain]
    assert audit.verify_chain(as_dicts) == (True, None)
    as_dicts[1]["subject"] = "incident:99"
    assert audit.verify_chain(as_dicts) == (False, 2)


def test_details_are_normalised_to_their_stored_form() -> None:
    d = audit.normalize_details(
        {"t": (1, 2), 3: "x", "arr": np.array([1, 2]), "f": np.float64(0.5), "s": {"b"}}
    )
    assert d == {"t": [1, 2], "3": "x", "arr": [1, 2], "f": 0.5, "s": ["b"]}
    with pytest.raises(ValueError):
        audit.normalize_details({"x": math.nan})
    with pytest.raises(TypeError):
        audit.normalize_details(["not", "a", "mapping"])  # type: ignore[arg-type]


def test_canonical_json_ignores_key_order() -> None:
    assert audit.canonical_json({"b": 1, "a": [1.5, "é"]}) == audit.canonical_json({"a": [1.5, "é"], "b": 1})
    assert audit.canonical_json({"a": 1}) == '{"a":1}'


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=4e9, allow_nan=False),
            st.text(min_size=1, max_size=8),
            st.dictionaries(
                st.text(max_size=5),
                st.one_of(
                    st.integers(),
                    st.floats(allow_nan=False, allow_infinity=False),
                    st.text(max_size=5),
                    st.booleans(),
                    st.none(),
                ),
                max_size=4,
            ),
        ),
        min_size=1,
        max_size=8,
    ),
    st.data(),
)
def test_any_single_field_edit_is_caught(rows, data) -> None:
    chain: list[audit.ChainEntry] = []
    for ts, actor, details in rows:
        chain.append(audit.make_entry(chain[-1] if chain else None, ts, actor, "act", "subj", details))
    assert audit.verify_chain(chain) == (True, None)
    i = data.draw(st.integers(0, len(chain) - 1))
    name = data.draw(st.sampled_from(["ts", "actor", "action", "subject", "details"]))
    e = chain[i]
    new = {
        "ts": e.ts + 1.0,
        "actor": e.actor + "x",
        "action": e.action + "x",
        "subject": e.subject + "x",
        "details": {**e.details, "__tampered__": True},
    }[name]
    chain[i] = dataclasses.replace(e, **{name: new})
    assert audit.verify_chain(chain) == (False, e.seq)
