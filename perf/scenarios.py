"""perf/scenarios.yaml: named load runs (rate, duration, endpoint mix), timed actions and expectations."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.policy.units import Duration

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AttackPlan(_Strict):
    """One stream of requests: a target file hit round-robin at a constant rate (requests per second)."""

    name: Name
    targets: str
    rate: Annotated[float, Field(gt=0, le=100_000)]


class Action(_Strict):
    """A POST made `at` seconds into the run, e.g. the fake provider's fault knob."""

    at: Duration
    post: Annotated[str, Field(pattern=r"^https?://")]
    body: Annotated[dict[str, Any], Field(alias="json")] = {}  # sent as the JSON body
    label: str = "action"


class FailFast(_Strict):
    fast: Duration | None = None  # failures must answer within this (p95)


class Expect(_Strict):
    breakers_open: tuple[str, ...] = ()  # each must be seen open in /api/ops/metrics during the run
    may_fail: dict[str, FailFast] = {}  # attacks whose failures are expected (judged on failing fast)
    rate_limited: tuple[str, ...] = ()  # attacks that must get 429s (each with Retry-After), nothing else
    unaffected: tuple[str, ...] = ()  # attacks that must get no 429 at all
    sheds: tuple[str, ...] = ()  # attacks absorbing an overload: 503s expected, nothing else; no SLO judged


class UpstreamKnobs(_Strict):
    """The demo upstream's capacity knob (`python -m upstream_app --capacity N --service-time S`)."""

    capacity: Annotated[int, Field(ge=1, le=100_000)] | None = None
    service_time: Duration = 0.0


class Variant(_Strict):
    """One of several runs of a scenario, each with its own policy changes (e.g. admission off, then on)."""

    name: Name
    description: str = ""
    policy_overrides: dict[str, Any] = {}
    judged: bool = True  # False: reported for comparison, its misses do not fail the run


class ScenarioSpec(_Strict):
    description: str = ""
    duration: Duration
    policy: str | None = None
    redis: bool | None = None
    policy_overrides: dict[str, Any] = {}
    attacks: Annotated[tuple[AttackPlan, ...], Field(min_length=1)]
    actions: tuple[Action, ...] = ()
    expect: Expect = Expect()
    upstream: UpstreamKnobs = UpstreamKnobs()
    variants: tuple[Variant, ...] = ()

    @model_validator(mode="after")
    def _names(self) -> ScenarioSpec:
        names = [a.name for a in self.attacks]
        if len(set(names)) != len(names):
            raise ValueError(f"attack names must be unique, got {names}")
        named = (
            set(self.expect.may_fail) | set(self.expect.rate_limited) | set(self.expect.unaffected)
            | set(self.expect.sheds)
        )
        unknown = sorted(named - set(names))
        if unknown:
            raise ValueError(f"expect names unknown attacks {unknown} (attacks: {names})")
        return self


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`changes` over `base`, nested mappings merged key by key (neither is modified)."""
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


class Defaults(_Strict):
    policy: str = "policies.yaml"
    redis: bool = True


class ScenarioFile(_Strict):
    defaults: Defaults = Defaults()
    scenarios: Annotated[dict[Name, ScenarioSpec], Field(min_length=1)]


@dataclass(frozen=True)
class Scenario:
    """A scenario ready to run, defaults applied."""

    name: str
    description: str
    duration: float
    policy: str
    redis: bool
    policy_overrides: dict[str, Any]
    attacks: tuple[AttackPlan, ...]
    actions: tuple[Action, ...]
    expect: dict[str, Any]
    upstream: UpstreamKnobs = UpstreamKnobs()
    variants: tuple[Variant, ...] = ()
    judged: bool = True

    def variant(self, variant: Variant) -> Scenario:
        """The scenario as one of its variants runs it: the variant's policy changes over the scenario's."""
        overrides = merged(self.policy_overrides, variant.policy_overrides)
        return replace(self, policy_overrides=overrides, variants=(), judged=variant.judged)

    def adjusted(self, *, duration: float | None = None, rate_scale: float = 1.0) -> Scenario:
        """A copy with another duration and/or every rate scaled (actions keep their times)."""
        attacks = tuple(a.model_copy(update={"rate": a.rate * rate_scale}) for a in self.attacks)
        return replace(self, duration=duration or self.duration, attacks=attacks)

    def describe(self) -> str:
        mix = ", ".join(f"{a.name} {a.rate:g}/s" for a in self.attacks)
        knobs = self.upstream
        capacity = (
            f", upstream capacity {knobs.capacity} x {knobs.service_time * 1000:g}ms"
            if knobs.capacity is not None else ""
        )
        variants = f", runs: {', '.join(v.name for v in self.variants)}" if self.variants else ""
        return f"{self.duration:g}s of {mix}" + (", redis" if self.redis else "") + capacity + variants


class Scenarios:
    """The scenarios of one file, by name."""

    def __init__(self, spec: ScenarioFile) -> None:
        self._spec = spec

    def names(self) -> list[str]:
        return list(self._spec.scenarios)

    def get(self, name: str) -> Scenario:
        """The named scenario; KeyError naming the known ones."""
        spec = self._spec.scenarios.get(name)
        if spec is None:
            raise KeyError(f"unknown scenario {name!r} (known: {', '.join(self.names())})")
        defaults = self._spec.defaults
        return Scenario(
            name=name,
            description=spec.description,
            duration=spec.duration,
            policy=spec.policy or defaults.policy,
            redis=defaults.redis if spec.redis is None else spec.redis,
            policy_overrides=dict(spec.policy_overrides),
            attacks=spec.attacks,
            actions=spec.actions,
            expect=spec.expect.model_dump(mode="json"),
            upstream=spec.upstream,
            variants=spec.variants,
        )


def load_scenarios(path: Path | str) -> Scenarios:
    """Read and validate a scenarios file; ValueError with every problem."""
    try:
        data = yaml.safe_load(Path(path).read_text())
        return Scenarios(ScenarioFile.model_validate(data))
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: YAML error: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"{path}: {problems}") from None
