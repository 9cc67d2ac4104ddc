"""Resource quantities parse to exact numbers with the Kubernetes grammar."""

from __future__ import annotations

from fractions import Fraction

import pytest

from kopflet.api import (
    compare_quantities,
    cpu_millis,
    cpu_nanos,
    is_quantity,
    memory_bytes,
    parse_quantity,
)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("100m", Fraction(1, 10)),
        ("1.5", Fraction(3, 2)),
        ("64Mi", 64 * 2**20),
        ("1G", 10**9),
        ("2e3", 2000),
        ("1E3", 1000),
        ("1E", 10**18),
        ("1Ki", 1024),
        ("0.5Gi", 2**29),
        (".5", Fraction(1, 2)),
        ("250u", Fraction(1, 4000)),
        ("3n", Fraction(3, 10**9)),
        ("12k", 12000),
        ("-1", -1),
        ("+7", 7),
        ("1e-3", Fraction(1, 1000)),
        (2, 2),
    ],
)
def test_quantity_parses_exactly(text: str | int, value: Fraction | int) -> None:
    assert parse_quantity(text) == value
    assert is_quantity(text)


@pytest.mark.parametrize("text", ["", "1K", "1kb", "Mi", "1.2.3", "1 Mi", "1e", "abc", "0x10"])
def test_malformed_quantity_is_refused(text: str) -> None:
    assert not is_quantity(text)
    with pytest.raises(ValueError, match="not a quantity"):
        parse_quantity(text)


def test_booleans_are_not_quantities() -> None:
    assert not is_quantity(True)


def test_conversions_round_up_to_whole_units() -> None:
    assert cpu_millis("0.0001") == 1
    assert cpu_millis("1.5") == 1500
    assert cpu_nanos("250m") == 250_000_000
    assert memory_bytes("1.5Ki") == 1536
    assert memory_bytes("0.5") == 1


def test_quantities_compare_across_suffixes() -> None:
    assert compare_quantities("1", "1000m") == 0
    assert compare_quantities("1Gi", "1G") == 1
    assert compare_quantities("500m", 1) == -1
