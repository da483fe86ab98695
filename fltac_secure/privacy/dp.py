"""DP-SGD on each task slot's adapter and head (Opacus), with per-slot accounting and budgets.

Threat answered: the adapter (and its sketch) a site sends leaks its training
examples (membership inference, reconstruction).  DP-SGD bounds what any one
example can change: per-example gradients are clipped to ``max_grad_norm``,
Gaussian noise of std ``noise_multiplier * max_grad_norm`` is added to their
sum, and batches are Poisson-sampled (each example independently with rate
``q = min(privacy.sample_rate, privacy.max_batch_size / n)``), which is what the
RDP/PRV accountants assume.  All later messages (the adapter, its sketch, the
clustering on sketches) are post-processing, so the slot's (epsilon, delta)
covers the whole protocol at no extra cost.

The recipe (the privacy section's defaults, chosen by measurement in
``benchmarks/dp.py``): plain SGD rather than AdamW (Adam's per-coordinate
normalisation turns noise-dominated coordinates into full-size steps of pure
noise), large Poisson batches (the noise added per step is fixed, so a
larger batch shrinks it relative to the summed gradient; at large rates the
noise per unit of signal barely depends on the number of steps, so 10 steps
per round train better than 3 at the same budget), a learning rate that
scales with the slot's expected batch (``Plan.dp_learning_rate``: with the
mean over the expected batch, each step's noise then has the same size at
every batch, and a small slot, whose batches are mostly noise, takes small
steps), LoRA A frozen (FFA-LoRA: no noise-times-noise term in B @ A), and no noise on
head rows a task does not use (``unused_head_rows_hook``).

Accounting lives in a ``DPTrainer``, one per site, built on that site's
``PrivacyLedger`` (required: the workspace ledger in the roles, an explicitly
in-memory one in the simulator and tests).  Whoever runs the site keeps the
trainer for the run and passes it to every ``rounds.client_round``; nothing is
looked up in a process-global registry, so no miss can silently restart a
site's epsilon from zero.

Opacus + peft traps (see docs/environment.md) and their fixes here:
1. Opacus hooks only modules trainable at wrap time: every ``lora_*`` and head
   parameter is made trainable, the model is wrapped *once* (cached per
   model), and each slot gets its own DP optimizer over that slot's parameters
   only (``set_slot`` then train).
2. The model must be in train mode and return a logits tensor:
   ``SlotModel.forward`` does, and ``wrap_model`` calls ``train()`` first.

Randomness: the Poisson sampler and the noise draw from a generator seeded
from the OS CSPRNG (``secrets``), never from the plan's seeds - every site and
the aggregator know those, and seeded noise could simply be subtracted.
Noise uses Opacus's ``secure_mode`` sampler (sum of 4 Gaussians) against
floating-point attacks on the Gaussian mechanism.  ``insecure_seed`` makes a
run reproducible for tests and benchmarks only, and says so in the log.
"""

from __future__ import annotations

import logging
import math
import secrets
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch import Tensor, nn

from fltac_secure.errors import DataError, PrivacyError
from fltac_secure.learning.seeding import derive_seed
from fltac_secure.privacy.ledger import PrivacyLedger, RoundEntry
from fltac_secure.privacy.settings import SlotPrivacy, check_privacy_section, resolve_slot

if TYPE_CHECKING:
    from fltac_secure.learning.model import SlotModel
    from fltac_secure.learning.train import EncodedDataset
    from fltac_secure.plan import Plan

log = logging.getLogger(__name__)

_WRAPPED: weakref.WeakKeyDictionary[nn.Module, GradSampleModule] = weakref.WeakKeyDictionary()


def wrap_model(model: SlotModel) -> GradSampleModule:
    """The model's one GradSampleModule (created on first call; hooks off until DP training runs)."""
    gsm = _WRAPPED.get(model)
    if gsm is not None:
        return gsm
    model.train()  # trap 2: peft/Opacus need train mode to see activations
    for p in model.adapter_parameters():  # trap 1: hook every slot's modules, not just the active one
        p.requires_grad_(True)
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean", strict=True)
    gsm.disable_hooks()  # plain (non-DP) training and evaluation pay nothing
    _WRAPPED[model] = gsm
    return gsm


def make_dp_optimizer(optimizer: torch.optim.Optimizer, *, noise_multiplier: float, max_grad_norm: float,
                      expected_batch_size: int, generator: torch.Generator | None) -> DPOptimizer:
    """Wrap ``optimizer`` (over one slot's parameters) for clipping + noise, mean over the expected batch."""
    return DPOptimizer(optimizer, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                       expected_batch_size=expected_batch_size, loss_reduction="mean", generator=generator,
                       secure_mode=noise_multiplier > 0)


def make_inner_optimizer(plan: Plan, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """The optimizer DP-SGD wraps: plain SGD (the default recipe) or AdamW, at learning rate ``lr``
    (the slot's ``SlotPrivacy.learning_rate``)."""
    wd = plan.training.weight_decay
    if plan.privacy.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd)
    return torch.optim.AdamW(params, lr=lr, weight_decay=wd)


def unused_head_rows_hook(named: dict[str, nn.Parameter], lo: int, hi: int) -> Any:
    """A DPOptimizer step hook that zeroes the noisy gradient of head rows outside ``[lo, hi)``.

    Those logits are masked, so every per-example gradient there is exactly 0 and clipping is
    unchanged; the hook drops the noise Opacus added to them, so they are never updated and stay
    at their start values (dropping part of the mechanism's output is post-processing).
    """
    rows = [n for n in ("head.weight", "head.bias") if n in named]
    width = int(named[rows[0]].shape[0]) if rows else 0
    unused = torch.ones(width, dtype=torch.bool)
    unused[lo:hi] = False

    def hook(optimizer: DPOptimizer) -> None:
        if not bool(unused.any()):
            return
        for name in rows:
            grad = named[name].grad
            if grad is not None:
                grad[unused] = 0.0

    return hook


def dp_step(gsm: GradSampleModule, optimizer: DPOptimizer, features: dict[str, Tensor], labels: Tensor,
            label_range: tuple[int, int], params: Iterable[nn.Parameter]) -> float:
    """One DP-SGD step on a (possibly empty) Poisson batch; returns the batch loss (nan if empty).

    An empty batch still takes a step (noise only): the accountant counted it.
    """
    optimizer.zero_grad(set_to_none=True)
    if labels.numel() == 0:
        for p in params:
            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)
        optimizer.step()
        return math.nan
    logits = gsm(**features, label_range=label_range)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def _generator(insecure_seed: int | None, *parts: int | str) -> torch.Generator:
    if insecure_seed is None:
        return torch.Generator().manual_seed(secrets.randbits(63))
    return torch.Generator().manual_seed(derive_seed("dp-insecure", insecure_seed, *parts, bits=63))


class DPTrainer:
    """DP-SGD training of one site's slots on a SlotModel, one accountant per slot, all in ``ledger``.

    ``ledger`` (required): the site's ``PrivacyLedger`` - ``PrivacyLedger.open(workspace, ...)``
    in the roles, ``PrivacyLedger.in_memory(...)`` in the simulator and tests.  The
    accounting lives here: the caller keeps one trainer per site for the whole run
    and passes it to every ``rounds.client_round`` (``dp=``).  ``train_slot``
    mirrors ``learning.train.train_slot`` so the round logic can call either.
    """

    def __init__(self, model: SlotModel, plan: Plan, *, ledger: PrivacyLedger,
                 insecure_seed: int | None = None) -> None:
        check_privacy_section(plan)
        if not isinstance(ledger, PrivacyLedger):
            raise PrivacyError("a DPTrainer needs the site's privacy ledger: PrivacyLedger.open(workspace, ...) "
                               "(persistent), or PrivacyLedger.in_memory(...) in the simulator and tests")
        self.model = model
        self.plan = plan
        p = plan.privacy
        self.ledger = ledger
        if ledger.delta != p.delta or ledger.accountant != p.accountant:
            raise PrivacyError(f"privacy ledger (delta {ledger.delta:g}, {ledger.accountant}) does not match "
                               f"privacy.delta = {p.delta:g} / privacy.accountant = {p.accountant}")
        self.insecure_seed = insecure_seed
        if insecure_seed is not None:
            log.warning("DP noise and sampling are SEEDED (insecure_seed): reproducible, NOT private; "
                        "tests and benchmarks only")
        self.gsm = wrap_model(model)
        self._settings: dict[tuple[int, int | None], SlotPrivacy] = {}

    def settings(self, slot: str, data_size: int, *, steps: int | None = None) -> SlotPrivacy:
        """The validated DP settings of ``slot`` with ``data_size`` examples (cached: deriving noise is slow)."""
        key = (data_size, steps)
        if key not in self._settings:
            self._settings[key] = resolve_slot(self.plan, data_size, steps_per_round=steps)
        return self._settings[key]

    def epsilon(self, slot: str) -> float:
        """Epsilon spent so far by ``slot`` (0 if it never trained)."""
        rec = self.ledger.slots.get(slot)
        return rec.accountant.epsilon(self.ledger.delta) if rec else 0.0

    def train_slot(self, slot: str, data: EncodedDataset, seed: int, *, round: int,
                   label_range: tuple[int, int] | None = None, steps: int | None = None) -> dict[str, Any]:
        """Charge the round to ``slot``'s budget, then train it with DP-SGD; or stop on budget.

        Returns ``{"steps", "loss", "first_loss", "last_loss", "epsilon", "delta",
        "noise_multiplier", "sample_rate", "stopped_on_budget"}``; a stopped slot
        reports ``steps = 0`` and its epsilon so far and does not change the model.
        """
        n = len(data)
        if n == 0:
            raise DataError(f"no training data for slot {slot!r}")
        cfg = self.settings(slot, n, steps=steps)
        rec = self.ledger.slot(slot, data_size=n, target_epsilon=cfg.target_epsilon)
        spent = rec.accountant.epsilon(cfg.delta)
        if rec.stopped is not None:
            return self._stopped(slot, cfg, spent, round, None)
        nxt = rec.accountant.epsilon_after(cfg.noise_multiplier, cfg.sample_rate, cfg.steps_per_round, cfg.delta)
        if cfg.target_epsilon is not None and nxt > cfg.target_epsilon:
            return self._stopped(slot, cfg, spent, round, nxt)
        acc = type(rec.accountant)(rec.accountant.mechanism, rec.accountant.history)
        acc.step(cfg.noise_multiplier, cfg.sample_rate, cfg.steps_per_round)
        # Charge before training: a crash mid-round over-counts, never under-counts.
        self.ledger.charge(slot, RoundEntry(round=round, steps=cfg.steps_per_round, sample_rate=cfg.sample_rate,
                                            noise_multiplier=cfg.noise_multiplier,
                                            max_grad_norm=cfg.max_grad_norm, epsilon=nxt), acc)
        losses = self._run(slot, data, seed, round, cfg, label_range)
        real = [x for x in losses if not math.isnan(x)]
        if real and not all(np.isfinite(real)):
            raise FloatingPointError(f"DP training of slot {slot!r} diverged; lower the learning rate")
        return {"steps": cfg.steps_per_round, "loss": float(np.mean(real)) if real else math.nan,
                "first_loss": real[0] if real else math.nan, "last_loss": real[-1] if real else math.nan,
                "epsilon": nxt, "delta": cfg.delta, "noise_multiplier": cfg.noise_multiplier,
                "sample_rate": cfg.sample_rate, "stopped_on_budget": False}

    def _stopped(self, slot: str, cfg: SlotPrivacy, spent: float, round: int, nxt: float | None) -> dict[str, Any]:
        if nxt is not None:
            log.warning("privacy budget: slot %r stops before round %d: epsilon spent %.4g, the next round would "
                        "reach %.4g > privacy.target_epsilon = %g; it keeps its last adapter and stops "
                        "contributing", slot, round, spent, nxt, cfg.target_epsilon)
            self.ledger.stop(slot, round=round, epsilon=spent, next_epsilon=nxt)
        return {"steps": 0, "loss": math.nan, "first_loss": math.nan, "last_loss": math.nan, "epsilon": spent,
                "delta": cfg.delta, "noise_multiplier": cfg.noise_multiplier, "sample_rate": cfg.sample_rate,
                "stopped_on_budget": True}

    def _run(self, slot: str, data: EncodedDataset, seed: int, round: int, cfg: SlotPrivacy,
             label_range: tuple[int, int] | None) -> list[float]:
        """The DP-SGD steps of one round (hooks on only while they run)."""
        model = self.model
        model.set_slot(slot)
        lo, hi = label_range if label_range is not None else model.label_range(slot)
        if int(data.labels.min()) < lo or int(data.labels.max()) >= hi:
            raise DataError(f"labels of {data.task!r} fall outside slot {slot!r}'s label range [{lo}, {hi})")
        named = model.slot_parameters(slot)
        params = list(named.values())
        inner = make_inner_optimizer(self.plan, params, cfg.learning_rate)
        gen = _generator(self.insecure_seed, "dp", seed, slot, round)
        opt = make_dp_optimizer(inner, noise_multiplier=cfg.noise_multiplier, max_grad_norm=cfg.max_grad_norm,
                                expected_batch_size=cfg.expected_batch_size, generator=gen)
        opt.attach_step_hook(unused_head_rows_hook(named, lo, hi))
        sampler = UniformWithReplacementSampler(num_samples=len(data), sample_rate=cfg.sample_rate,
                                                generator=gen, steps=cfg.steps_per_round)
        was_training = model.training
        self.gsm.train()
        self.gsm.enable_hooks()
        losses: list[float] = []
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derive_seed("dropout", seed, bits=63))
                for indices in sampler:
                    idx = torch.as_tensor(indices, dtype=torch.long)
                    feats = data.batch(idx) if len(idx) else {}
                    losses.append(dp_step(self.gsm, opt, feats, data.labels.index_select(0, idx), (lo, hi), params))
        finally:
            opt.zero_grad(set_to_none=True)
            self.gsm.disable_hooks()
            model.train(was_training)
        return losses
