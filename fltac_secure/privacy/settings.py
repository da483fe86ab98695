"""The DP settings of one task slot, resolved from the plan and validated at the edge.

A slot's guarantee depends on its own data size ``n``: the sample rate is
``min(privacy.sample_rate, privacy.max_batch_size / n)`` and delta must be below ``1/n`` (a delta of ``1/n`` allows
"release one random example in the clear").  So settings are resolved per slot
once its data size is known, and every impossible value is refused with a
PrivacyError naming the plan key and the fix - never trained around.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from fltac_secure.errors import PrivacyError
from fltac_secure.plan.protection import DP_SGD_LEARNING_RATE, DP_SGD_REFERENCE_BATCH
from fltac_secure.privacy.accounting import (
    ACCOUNTANTS,
    epsilon_of,
    noise_for_target,
    sample_rate,
)

if TYPE_CHECKING:
    from fltac_secure.plan import Plan


@dataclass(frozen=True)
class SlotPrivacy:
    """Resolved DP-SGD settings of one slot (all the accountant and the optimizer need)."""

    data_size: int
    sample_rate: float
    steps_per_round: int
    planned_rounds: int
    noise_multiplier: float
    max_grad_norm: float
    delta: float
    accountant: str
    target_epsilon: float | None
    """The slot's budget: a round that would spend more is not trained (None: no budget)."""
    noise_source: str
    """"given" (privacy.noise_multiplier) or "target" (derived from privacy.target_epsilon)."""
    learning_rate: float
    """The slot's learning rate (``Plan.dp_learning_rate`` at its expected batch)."""

    @property
    def expected_batch_size(self) -> int:
        """Expected Poisson batch size q * n (what the mean loss is divided by)."""
        return expected_batch(self.sample_rate, self.data_size)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def expected_batch(rate: float, data_size: int) -> int:
    """Expected Poisson batch ``q * n``, at least 1."""
    return max(1, round(rate * data_size))


def learning_rate_text(plan: Plan) -> str:
    """How the plan sets the DP learning rate, for reports: ``"lr 0.3"`` or ``"lr 4 x batch/256"``."""
    p = plan.privacy
    if p.learning_rate is not None or p.optimizer != "sgd":
        return f"lr {plan.dp_learning_rate(1):g}"
    return f"lr {DP_SGD_LEARNING_RATE:g} x batch/{DP_SGD_REFERENCE_BATCH}"


def check_privacy_section(plan: Plan) -> None:
    """Validate the plan's privacy section for DP use (data-independent checks)."""
    p = plan.privacy
    if not p.dp:
        raise PrivacyError("privacy.dp is false; set privacy.dp: true to train with DP-SGD")
    if p.accountant not in ACCOUNTANTS:
        raise PrivacyError(f"privacy.accountant = {p.accountant!r} is unknown; use one of {sorted(ACCOUNTANTS)}")
    if p.noise_multiplier is None and p.target_epsilon is None:
        raise PrivacyError("privacy.dp is on but neither privacy.noise_multiplier nor privacy.target_epsilon "
                           "is set; set one of them")
    if p.noise_multiplier is not None and not (math.isfinite(p.noise_multiplier) and p.noise_multiplier > 0):
        raise PrivacyError(
            f"privacy.noise_multiplier = {p.noise_multiplier} must be a finite number > 0 (0 adds no noise: "
            "epsilon would be infinite); set it > 0, or set privacy.target_epsilon instead"
        )
    if p.target_epsilon is not None and not (math.isfinite(p.target_epsilon) and p.target_epsilon > 0):
        raise PrivacyError(f"privacy.target_epsilon = {p.target_epsilon} must be a finite number > 0")
    if not (math.isfinite(p.max_grad_norm) and p.max_grad_norm > 0):
        raise PrivacyError(f"privacy.max_grad_norm = {p.max_grad_norm} must be a finite number > 0")
    if not 0 < p.delta < 1:
        raise PrivacyError(f"privacy.delta = {p.delta} must be in (0, 1)")


def resolve_slot(plan: Plan, data_size: int, *, steps_per_round: int | None = None) -> SlotPrivacy:
    """The DP settings of a slot with ``data_size`` examples under ``plan`` (validated).

    Noise: ``privacy.noise_multiplier`` if given, else the smallest noise whose
    epsilon after ``rounds * privacy.local_steps`` steps stays within
    ``privacy.target_epsilon``.  With both given, the target is a budget and
    the first round must fit in it.
    """
    check_privacy_section(plan)
    p = plan.privacy
    if isinstance(data_size, bool) or not isinstance(data_size, int) or data_size < 1:
        raise PrivacyError(f"a DP task slot needs a positive integer data size, got {data_size!r}")
    if p.delta >= 1.0 / data_size:
        raise PrivacyError(
            f"privacy.delta = {p.delta:g} is not below 1/n = {1.0 / data_size:.3g} for a slot with "
            f"{data_size} examples; lower privacy.delta (the usual choice is well below 1/n)"
        )
    steps = p.local_steps if steps_per_round is None else int(steps_per_round)
    if steps < 1:
        raise PrivacyError(f"steps per round must be at least 1, got {steps}")
    rate = sample_rate(p.sample_rate, p.max_batch_size, data_size)
    if p.noise_multiplier is not None:
        noise, source = float(p.noise_multiplier), "given"
        if p.target_epsilon is not None:
            first = epsilon_of([(noise, rate, steps)], p.delta, p.accountant)
            if first > p.target_epsilon:
                raise PrivacyError(
                    f"privacy.target_epsilon = {p.target_epsilon} cannot be met within one round: at "
                    f"privacy.noise_multiplier = {noise} one round of {steps} steps already spends epsilon "
                    f"{first:.3g}; raise the noise or the target, or lower privacy.local_steps"
                )
    else:
        assert p.target_epsilon is not None  # check_privacy_section guarantees one of them
        noise = noise_for_target(p.target_epsilon, p.delta, rate, plan.rounds * steps, p.accountant)
        source = "target"
    return SlotPrivacy(data_size=data_size, sample_rate=rate, steps_per_round=steps, planned_rounds=plan.rounds,
                       noise_multiplier=noise, max_grad_norm=float(p.max_grad_norm), delta=float(p.delta),
                       accountant=p.accountant, target_epsilon=p.target_epsilon, noise_source=source,
                       learning_rate=plan.dp_learning_rate(expected_batch(rate, data_size)))
