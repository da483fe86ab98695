"""Privacy accounting for one task slot: a serialisable history over Opacus's accountants.

Each task slot of a site is its own data set, so it gets its own accountant:
the (epsilon, delta) guarantee is per slot, at the sample level.  The
accountant's whole state is its *history* - a list of ``(noise_multiplier,
sample_rate, steps)`` - exactly what Opacus's RDP and PRV accountants compose.
Keeping only that list (JSON floats round-trip exactly) lets a site persist its
spending and recompute the same epsilon after a restart, instead of summing
per-round epsilons by hand (which over- or under-counts: DP composition is not
additive in epsilon).

Consecutive steps with the same noise and sample rate are merged into one
entry, as Opacus does, so a round-by-round history gives bit-for-bit the same
epsilon as the planned ``[(sigma, q, rounds * steps)]`` from which the noise
was derived: the achieved epsilon never exceeds the target because of
floating-point drift.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from typing import Any

from opacus.accountants import IAccountant, PRVAccountant, RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from fltac_secure.errors import PrivacyError

ACCOUNTANTS: dict[str, type[IAccountant]] = {"rdp": RDPAccountant, "prv": PRVAccountant}
"""Registry of accountants a plan may name (``privacy.accountant``)."""

MAX_SENSIBLE_NOISE = 100.0
"""Largest noise multiplier we derive: beyond it the noise swamps any batch's signal.

A target that needs more noise than this cannot be met in a useful way; it is
refused as a configuration error rather than silently training on noise."""

Entry = tuple[float, float, int]
"""One history entry: (noise_multiplier, sample_rate, steps)."""


def _check_mechanism(mechanism: str) -> str:
    if mechanism not in ACCOUNTANTS:
        raise PrivacyError(f"privacy.accountant = {mechanism!r} is unknown; use one of {sorted(ACCOUNTANTS)}")
    return mechanism


def _check_entry(entry: Sequence[Any]) -> Entry:
    """A validated history entry (refuses NaN, negatives, rates outside (0, 1], steps < 1)."""
    if len(entry) != 3:
        raise PrivacyError(f"accountant history entry {entry!r} must be [noise_multiplier, sample_rate, steps]")
    noise, rate, steps = entry
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise PrivacyError(f"accountant history entry {entry!r}: steps must be a positive integer")
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (noise, rate)):
        raise PrivacyError(f"accountant history entry {entry!r}: noise and sample rate must be numbers")
    noise, rate = float(noise), float(rate)
    if not math.isfinite(noise) or noise < 0:
        raise PrivacyError(f"accountant history entry {entry!r}: noise multiplier must be finite and >= 0")
    if not (math.isfinite(rate) and 0 < rate <= 1):
        raise PrivacyError(f"accountant history entry {entry!r}: sample rate must be in (0, 1]")
    return noise, rate, steps


def merge(history: Iterable[Entry], entry: Entry) -> list[Entry]:
    """``history`` with ``entry`` appended, merged into the last entry when noise and rate match."""
    out = list(history)
    noise, rate, steps = _check_entry(entry)
    if out and out[-1][0] == noise and out[-1][1] == rate:
        out[-1] = (noise, rate, out[-1][2] + steps)
    else:
        out.append((noise, rate, steps))
    return out


def epsilon_of(history: Sequence[Entry], delta: float, mechanism: str) -> float:
    """Epsilon spent by ``history`` at ``delta`` under ``mechanism`` (0 for no steps, inf for zero noise)."""
    _check_mechanism(mechanism)
    if not 0 < delta < 1:
        raise PrivacyError(f"privacy.delta = {delta!r} must be in (0, 1)")
    if not history:
        return 0.0
    if any(noise == 0 for noise, _, _ in history):
        return math.inf
    return _epsilon_cached(tuple((float(n), float(q), int(s)) for n, q, s in history), float(delta), mechanism)


@functools.lru_cache(maxsize=1024)
def _epsilon_cached(history: tuple[Entry, ...], delta: float, mechanism: str) -> float:
    """Opacus's epsilon for a history (~0.1 s for RDP here; a round's preview is reused after it is charged)."""
    accountant = ACCOUNTANTS[mechanism]()
    accountant.history = list(history)
    return float(accountant.get_epsilon(delta=delta))


class SlotAccountant:
    """The privacy accountant of one task slot (see module doc); state = its history."""

    def __init__(self, mechanism: str, history: Iterable[Sequence[Any]] = ()) -> None:
        self.mechanism = _check_mechanism(mechanism)
        self._history: list[Entry] = []
        for entry in history:
            self._history = merge(self._history, _check_entry(entry))

    @property
    def history(self) -> list[Entry]:
        """A copy of the composed history, oldest first."""
        return list(self._history)

    @property
    def steps(self) -> int:
        """Total DP-SGD steps accounted so far."""
        return sum(s for _, _, s in self._history)

    def step(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Account ``steps`` more steps of the subsampled Gaussian mechanism."""
        self._history = merge(self._history, (noise_multiplier, sample_rate, steps))

    def epsilon(self, delta: float) -> float:
        """Epsilon spent so far at ``delta``."""
        return epsilon_of(self._history, delta, self.mechanism)

    def epsilon_after(self, noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
        """Epsilon that would be spent after ``steps`` more steps (the cost of a planned round)."""
        return epsilon_of(merge(self._history, (noise_multiplier, sample_rate, steps)), delta, self.mechanism)

    def to_json(self) -> dict[str, Any]:
        """JSON-able state; ``from_json`` restores it exactly."""
        return {"mechanism": self.mechanism, "history": [[n, q, s] for n, q, s in self._history]}

    @classmethod
    def from_json(cls, data: Any) -> SlotAccountant:
        """Restore from ``to_json`` output, refusing anything malformed."""
        if not isinstance(data, dict) or set(data) != {"mechanism", "history"}:
            raise PrivacyError("accountant state must be an object with exactly 'mechanism' and 'history'")
        if not isinstance(data["history"], list):
            raise PrivacyError("accountant state 'history' must be a list of [noise, rate, steps]")
        return cls(data["mechanism"], data["history"])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SlotAccountant) and (self.mechanism, self._history) == (
            other.mechanism, other._history)

    def __repr__(self) -> str:
        return f"SlotAccountant({self.mechanism!r}, {self._history!r})"


def sample_rate(rate: float, max_batch: int, data_size: int) -> float:
    """Poisson sampling rate of a slot of ``data_size`` examples: ``min(rate, max_batch / n)``.

    ``rate`` is ``privacy.sample_rate`` (a large fraction of the slot: large batches keep the noise
    small next to the summed gradient), ``max_batch`` is ``privacy.max_batch_size`` (bounds the
    compute of one step on a large slot).
    """
    if data_size < 1:
        raise PrivacyError(f"a DP task slot needs at least one example, got data size {data_size}")
    if not (0 < rate <= 1):
        raise PrivacyError(f"privacy.sample_rate = {rate} must be in (0, 1]")
    if max_batch < 1:
        raise PrivacyError(f"privacy.max_batch_size = {max_batch} must be at least 1")
    return min(float(rate), max_batch / data_size)


def noise_for_target(target_epsilon: float, delta: float, rate: float, steps: int, mechanism: str) -> float:
    """The smallest noise (within Opacus's search tolerance) whose epsilon after ``steps`` is <= target.

    Raises PrivacyError naming ``privacy.target_epsilon`` when even
    ``MAX_SENSIBLE_NOISE`` spends more than the target.
    """
    _check_mechanism(mechanism)
    if epsilon_of([(MAX_SENSIBLE_NOISE, rate, steps)], delta, mechanism) > target_epsilon:
        raise PrivacyError(
            f"privacy.target_epsilon = {target_epsilon} cannot be met: even noise multiplier "
            f"{MAX_SENSIBLE_NOISE:g} spends more over {steps} steps at sample rate {rate:.4g}; raise "
            "privacy.target_epsilon, use more data per slot, or fewer rounds / training.local_steps"
        )
    try:
        noise = float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=rate,
                                           steps=steps, accountant=mechanism, epsilon_tolerance=0.01))
    except ValueError as exc:  # opacus: "The privacy budget is too low."
        raise PrivacyError(f"privacy.target_epsilon = {target_epsilon} cannot be met ({exc})") from exc
    # Opacus returns the upper end of its bisection; confirm the invariant on our own accountant.
    if epsilon_of([(noise, rate, steps)], delta, mechanism) > target_epsilon:
        raise PrivacyError(f"derived noise {noise} overshoots privacy.target_epsilon = {target_epsilon}")
    return noise
