"""Workload: N replicas of an Instance template, rolled out by a strategy."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from kopflet.api._codec import Model
from kopflet.api.constants import API_VERSION
from kopflet.api.instance import InstanceSpec
from kopflet.api.meta import Condition, LabelSelector, ObjectMeta
from kopflet.api.probes import IntOrString

StrategyType = Literal["RollingUpdate", "Recreate"]

#: Core defaults, also the schema defaults.
DEFAULT_MAX_SURGE: IntOrString = "25%"
DEFAULT_MAX_UNAVAILABLE: IntOrString = "25%"
DEFAULT_PROGRESS_DEADLINE_SECONDS = 600


@dataclass(frozen=True, kw_only=True)
class InstanceTemplate(Model):
    """Like a Pod template: ``metadata`` carries only labels and annotations."""

    spec: InstanceSpec
    metadata: ObjectMeta | None = None


@dataclass(frozen=True, kw_only=True)
class RollingUpdate(Model):
    max_surge: IntOrString | None = None
    max_unavailable: IntOrString | None = None


@dataclass(frozen=True, kw_only=True)
class WorkloadStrategy(Model):
    type: StrategyType | None = None
    rolling_update: RollingUpdate | None = None


@dataclass(frozen=True, kw_only=True)
class WorkloadSpec(Model):
    selector: LabelSelector
    template: InstanceTemplate
    replicas: int | None = None
    strategy: WorkloadStrategy | None = None
    min_ready_seconds: int | None = None
    progress_deadline_seconds: int | None = None

    def rolling_limits(self) -> tuple[int, int]:
        """``(max_surge, max_unavailable)`` as instance counts for the current replicas.

        Core rounding: surge rounds up, unavailable rounds down, and if both come
        out 0 one instance may be unavailable so that a rollout can progress.
        """
        replicas = 1 if self.replicas is None else self.replicas
        rolling = (self.strategy.rolling_update if self.strategy else None) or RollingUpdate()
        surge = scaled_value(
            DEFAULT_MAX_SURGE if rolling.max_surge is None else rolling.max_surge,
            total=replicas,
            round_up=True,
        )
        unavailable = scaled_value(
            DEFAULT_MAX_UNAVAILABLE if rolling.max_unavailable is None else rolling.max_unavailable,
            total=replicas,
            round_up=False,
        )
        if surge == 0 and unavailable == 0:
            unavailable = 1
        return surge, unavailable


def scaled_value(value: IntOrString, *, total: int, round_up: bool) -> int:
    """An absolute count or a percentage (``"25%"``) of ``total``."""
    if isinstance(value, int):
        return value
    if not value.endswith("%"):
        raise ValueError(f"not a percentage: {value!r}")
    exact = int(value[:-1]) * total / 100
    return math.ceil(exact) if round_up else math.floor(exact)


@dataclass(frozen=True, kw_only=True)
class WorkloadStatus(Model):
    """Written by the controller. ``selector`` is the string form the ``scale``
    subresource reports; ``ready_summary`` (``"2/3"``) feeds the READY column."""

    observed_generation: int | None = None
    replicas: int | None = None
    ready_replicas: int | None = None
    available_replicas: int | None = None
    updated_replicas: int | None = None
    unavailable_replicas: int | None = None
    selector: str | None = None
    ready_summary: str | None = None
    conditions: tuple[Condition, ...] | None = None


@dataclass(frozen=True, kw_only=True)
class Workload(Model):
    metadata: ObjectMeta
    spec: WorkloadSpec
    status: WorkloadStatus | None = None
    api_version: str = API_VERSION
    kind: str = "Workload"
