"""Kubernetes resource quantities (``100m``, ``1.5``, ``64Mi``, ``1G``, ``2e3``) as exact numbers.

The API server checks quantities with the same grammar (CEL ``isQuantity`` in the
CRDs), so a quantity read from an object parses; the checks here guard objects built
in code and the unit tests.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import TypeAlias

#: What a quantity field holds on the wire: ``cpu: 1`` is as valid as ``cpu: "1"``.
QuantityValue: TypeAlias = int | str

_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_GRAMMAR = re.compile(
    r"(?P<sign>[+-]?)(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?:(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])|[eE](?P<exponent>[+-]?[0-9]+))?"
)


def parse_quantity(value: QuantityValue) -> Fraction:
    """The exact value of a quantity; ``ValueError`` if it is not one."""
    if isinstance(value, bool):
        raise ValueError(f"not a quantity: {value!r}")
    if isinstance(value, int):
        return Fraction(value)
    match = _GRAMMAR.fullmatch(value)
    if match is None:
        raise ValueError(f"not a quantity: {value!r}")
    number = Fraction(match["number"])
    if match["sign"] == "-":
        number = -number
    suffix = match["suffix"]
    if suffix in _BINARY:
        return number * Fraction(1024) ** _BINARY[suffix]
    exponent = _DECIMAL[suffix or ""] if match["exponent"] is None else int(match["exponent"])
    return number * Fraction(10) ** exponent


def is_quantity(value: object) -> bool:
    if not isinstance(value, int | str) or isinstance(value, bool):
        return False
    try:
        parse_quantity(value)
    except ValueError:
        return False
    return True


def cpu_millis(value: QuantityValue) -> int:
    """CPU in millicores, rounded up like the kubelet does (``0.0001`` is ``1m``)."""
    return math.ceil(parse_quantity(value) * 1000)


def cpu_nanos(value: QuantityValue) -> int:
    """CPU in billionths of a core: Docker's ``NanoCpus``."""
    return math.ceil(parse_quantity(value) * 1_000_000_000)


def memory_bytes(value: QuantityValue) -> int:
    """Memory in whole bytes, rounded up (``1.5Ki`` is 1536, ``0.5`` is 1)."""
    return math.ceil(parse_quantity(value))


def compare_quantities(left: QuantityValue, right: QuantityValue) -> int:
    """-1, 0 or 1 as ``left`` is less than, equal to or greater than ``right``."""
    a, b = parse_quantity(left), parse_quantity(right)
    return (a > b) - (a < b)
