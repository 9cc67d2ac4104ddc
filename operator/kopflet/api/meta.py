"""Object metadata, label selectors and conditions: the shapes every kind shares."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, NewType

from kopflet.api._codec import Model

#: ``metadata.uid`` of any object.
UID = NewType("UID", str)
#: RFC 3339 time as the API server writes it (``2025-01-31T12:00:00Z``).
Timestamp = NewType("Timestamp", str)

ConditionStatus = Literal["True", "False", "Unknown"]
SelectorOperator = Literal["In", "NotIn", "Exists", "DoesNotExist"]


def format_timestamp(moment: datetime) -> Timestamp:
    """Second precision in UTC, the format of ``metav1.Time``."""
    return Timestamp(moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))


def parse_timestamp(value: Timestamp | str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass(frozen=True, kw_only=True)
class OwnerReference(Model):
    api_version: str
    kind: str
    name: str
    uid: UID
    controller: bool | None = None
    block_owner_deletion: bool | None = None


@dataclass(frozen=True, kw_only=True)
class ObjectMeta(Model):
    """The ``metadata`` fields the controller and the agent read or write.

    Server-managed bookkeeping (``managedFields``, ``selfLink``) is not modelled and
    is dropped by ``from_dict``; never send a rendered model as a full replacement
    (PUT) of an object: patch the fields you own.
    """

    name: str | None = None
    generate_name: str | None = None
    namespace: str | None = None
    uid: UID | None = None
    resource_version: str | None = None
    generation: int | None = None
    creation_timestamp: Timestamp | None = None
    deletion_timestamp: Timestamp | None = None
    deletion_grace_period_seconds: int | None = None
    labels: Mapping[str, str] | None = None
    annotations: Mapping[str, str] | None = None
    owner_references: tuple[OwnerReference, ...] | None = None
    finalizers: tuple[str, ...] | None = None


@dataclass(frozen=True, kw_only=True)
class LabelSelectorRequirement(Model):
    key: str
    operator: SelectorOperator
    values: tuple[str, ...] | None = None

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "Exists":
            return present
        if self.operator == "DoesNotExist":
            return not present
        inside = present and labels[self.key] in (self.values or ())
        return inside if self.operator == "In" else not inside

    def to_selector_string(self) -> str:
        if self.operator == "Exists":
            return self.key
        if self.operator == "DoesNotExist":
            return f"!{self.key}"
        verb = "in" if self.operator == "In" else "notin"
        return f"{self.key} {verb} ({','.join(sorted(self.values or ()))})"


@dataclass(frozen=True, kw_only=True)
class LabelSelector(Model):
    """``metav1.LabelSelector``: every ``matchLabels`` pair and every expression must hold."""

    match_labels: Mapping[str, str] | None = None
    match_expressions: tuple[LabelSelectorRequirement, ...] | None = None

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        pairs = (self.match_labels or {}).items()
        return all(labels.get(k) == v for k, v in pairs) and all(
            e.matches(labels) for e in self.match_expressions or ()
        )

    def to_selector_string(self) -> str:
        """The query form (``app=web,tier in (a,b)``), as in a Workload's ``status.selector``."""
        terms = [f"{k}={v}" for k, v in sorted((self.match_labels or {}).items())]
        terms += [e.to_selector_string() for e in self.match_expressions or ()]
        return ",".join(terms)


def selector_string(labels: Mapping[str, str]) -> str:
    """An equality selector for a plain label map (a ProxyService's ``spec.selector``)."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


@dataclass(frozen=True, kw_only=True)
class Condition(Model):
    """``metav1.Condition``."""

    type: str
    status: ConditionStatus
    observed_generation: int | None = None
    last_transition_time: Timestamp | None = None
    reason: str | None = None
    message: str | None = None


def find_condition(conditions: Iterable[Condition] | None, type_: str) -> Condition | None:
    return next((c for c in conditions or () if c.type == type_), None)


def set_condition(
    conditions: Iterable[Condition] | None, new: Condition, *, now: datetime
) -> tuple[Condition, ...]:
    """Replace the condition of ``new.type``, keeping ``lastTransitionTime`` unless the
    status flips: readers rely on it to tell how long a state has lasted."""
    old = find_condition(conditions, new.type)
    if old is not None and old.status == new.status and old.last_transition_time:
        moment = old.last_transition_time
    else:
        moment = new.last_transition_time or format_timestamp(now)
    updated = Condition(
        type=new.type,
        status=new.status,
        observed_generation=new.observed_generation,
        last_transition_time=moment,
        reason=new.reason,
        message=new.message,
    )
    others = tuple(c for c in conditions or () if c.type != new.type)
    return (
        (*others, updated)
        if old is None
        else tuple(updated if c.type == new.type else c for c in conditions or ())
    )


__all__ = [
    "UID",
    "Condition",
    "ConditionStatus",
    "LabelSelector",
    "LabelSelectorRequirement",
    "ObjectMeta",
    "OwnerReference",
    "SelectorOperator",
    "Timestamp",
    "find_condition",
    "format_timestamp",
    "parse_timestamp",
    "selector_string",
    "set_condition",
]
