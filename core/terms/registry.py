"""The registry of loss units: the one place the spec's `loss` block, the presets and the loss come from.

A `TermUnit` declares, in its own module, everything about one method ingredient:
its name, the spec fields it adds to `loss` (pydantic types with defaults and
validation), how to read its weight from a validated `loss`, the factory of its
`Term`, and the presets it contributes. `LossSpec`, the `method` choices and the
JSON schema served in OpenAPI are all derived from the registered units, so adding
a method is one new module plus one line in `core/terms/__init__.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import create_model

from core.strict import StrictModel
from core.terms.base import Term, WeightedSum


@dataclass(frozen=True)
class TermSizes:
    """What a factory may need to know about the two networks (e.g. FitNet's regressor shape)."""

    student_channels: int
    teacher_channels: int


@dataclass(frozen=True)
class TermUnit:
    """One registered unit. Without a `factory` it only adds settings (the oracle's teacher input).

    - `fields`: spec field name -> (annotation, pydantic FieldInfo); the names are public and must be unique.
    - `weight`: the unit's coefficient in a validated `loss` (0 = the term is off).
    - `factory`: builds the `Term` from the validated `loss` and the networks' `TermSizes`.
    - `presets`: method name -> plain dict of loss settings (merged under the spec's explicit `loss`).
    - `new`: a unit added after specs were already stored (every unit but the first six). Its fields
      stay out of a spec's identity while they hold their defaults, so adding a unit never changes
      the identity of an existing spec (a run folder written before the unit existed still resumes).
    """

    name: str
    fields: dict[str, tuple[Any, Any]]
    weight: Callable[[Any], float] | None = None
    factory: Callable[[Any, TermSizes], Term] | None = None
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    new: bool = True


_UNITS: dict[str, TermUnit] = {}


def register(unit: TermUnit) -> TermUnit:
    """Add a unit; its name, fields and presets must not clash with a registered unit's."""
    if unit.name in _UNITS:
        raise ValueError(f"a loss unit named '{unit.name}' is already registered")
    taken_fields = {name for other in _UNITS.values() for name in other.fields}
    taken_presets = {name for other in _UNITS.values() for name in other.presets}
    if clash := (set(unit.fields) & taken_fields) | (set(unit.presets) & taken_presets):
        raise ValueError(f"unit '{unit.name}' redefines {sorted(clash)}")
    if (unit.weight is None) != (unit.factory is None):
        raise ValueError(f"unit '{unit.name}' needs both a weight and a factory, or neither")
    _UNITS[unit.name] = unit
    return unit


def unregister(name: str) -> None:
    """Remove a unit (tests that register a toy term clean up with this)."""
    _UNITS.pop(name, None)


def units() -> list[TermUnit]:
    """The registered units, in registration order (the order of the terms in the loss and history)."""
    return list(_UNITS.values())


def loss_spec_model() -> type[StrictModel]:
    """A fresh `LossSpec` model: the union of the units' fields, unknown keys refused."""
    fields = {name: spec for unit in _UNITS.values() for name, spec in unit.fields.items()}
    return create_model(  # type: ignore[call-overload,no-any-return]
        "LossSpec",
        __base__=StrictModel,
        __doc__="Loss terms and their settings; every field left out keeps the preset's value.",
        **fields,
    )


def presets() -> dict[str, dict[str, Any]]:
    """Every unit's presets, by method name (plain dicts of loss settings)."""
    return {name: settings for unit in _UNITS.values() for name, settings in unit.presets.items()}


def term_weights(loss: Any) -> dict[str, float]:
    """The terms a validated (preset-merged) `loss` turns on, by name, with their positive weights."""
    weights = {
        unit.name: float(unit.weight(loss))
        for unit in _UNITS.values()
        if unit.weight is not None and all(hasattr(loss, name) for name in unit.fields)  # a LossSpec built before
    }
    return {name: weight for name, weight in weights.items() if weight > 0}


def build_terms(loss: Any, student_channels: int, teacher_channels: int) -> WeightedSum:
    """The weighted sum of the terms `loss` turns on; the channel counts size the FitNet regressor."""
    sizes = TermSizes(student_channels, teacher_channels)
    active = term_weights(loss)
    return WeightedSum([
        (active[unit.name], unit.factory(loss, sizes))
        for unit in _UNITS.values()
        if unit.name in active and unit.factory is not None
    ])


def identity_loss(loss_dump: dict[str, Any]) -> dict[str, Any]:
    """A dumped (JSON-mode) `loss` without the fields of `new` units that hold their defaults."""
    identity = dict(loss_dump)
    for unit in _UNITS.values():
        if not unit.new:
            continue
        for name, (_, info) in unit.fields.items():
            default = info.get_default(call_default_factory=True)
            default = default.model_dump(mode="json") if isinstance(default, StrictModel) else default
            if name in identity and identity[name] == default:
                del identity[name]
    return identity
