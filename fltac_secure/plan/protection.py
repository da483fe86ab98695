"""The plan's protection sections: differential privacy, secure aggregation, compression.

Part of the plan (``schema.Plan``), so identical at every site and in the plan
hash; split out of ``schema.py`` only to keep files short.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fltac_secure.plan.base import Strict

# The DP recipe's defaults (privacy section), chosen by measurement: benchmarks/results/dp.md.
DP_SGD_LEARNING_RATE = 4.0
"""DP-SGD learning rate at an expected batch of DP_SGD_REFERENCE_BATCH; a slot's default scales with its batch."""
DP_SGD_REFERENCE_BATCH = 256
DP_SAMPLE_RATE = 0.5
DP_MAX_BATCH = 256
DP_LOCAL_STEPS = 10


class Privacy(Strict):
    dp: bool = Field(default=False, description="Train every task slot with DP-SGD (Opacus).")
    noise_multiplier: float | None = Field(
        default=None, ge=0, description="Gaussian noise std / clipping norm. Give this or target_epsilon."
    )
    target_epsilon: float | None = Field(
        default=None, gt=0, description="Privacy budget per task slot over all planned rounds; noise is derived from it."
    )
    max_grad_norm: float = Field(default=1.0, gt=0, description="Per-example gradient clipping norm.")
    optimizer: Literal["sgd", "adamw"] = Field(
        default="sgd",
        description="Optimizer under DP. sgd (DP-SGD): a coordinate moves in proportion to its noisy gradient, "
        "so noise stays small where the signal is. adamw normalises every coordinate, turning the noise-dominated "
        "ones into +-learning_rate steps of pure noise (kept for comparison).",
    )
    learning_rate: float | None = Field(
        default=None, gt=0, lt=100,
        description=f"Learning rate under DP; a value set here applies to every slot. Default (null), sgd: per slot "
        f"{DP_SGD_LEARNING_RATE:g} x expected batch / {DP_SGD_REFERENCE_BATCH} (linear scaling: the step's noise then "
        "has the same size at every batch, and small slots, whose batches are mostly noise, take small steps; "
        "measured, benchmarks/results/dp.md); adamw: training.learning_rate.",
    )
    sample_rate: float = Field(
        default=DP_SAMPLE_RATE, gt=0, le=1,
        description="Poisson sampling rate under DP: each step sees each example of the slot with this "
        "probability. Large batches keep the noise small next to the summed gradient; capped by max_batch_size.",
    )
    max_batch_size: int = Field(
        default=DP_MAX_BATCH, ge=1, le=65536,
        description="Cap on the expected Poisson batch (compute): a slot of n examples samples at "
        "min(sample_rate, max_batch_size / n).",
    )
    local_steps: int = Field(
        default=DP_LOCAL_STEPS, ge=1, le=100000,
        description="DP steps per task slot per round (replaces training.local_steps under DP). Measured on the "
        "reduced bench-4task at epsilon 8, seed 0: 10 steps 0.818 mean accuracy, 3 steps 0.745-0.776 "
        "(benchmarks/results/dp_tune_steps10.md, dp.md). At large sampling rates the noise per unit of signal "
        "barely depends on the steps (benchmarks/results/dp_noise.md), so more steps mostly buy training.",
    )
    delta: float = Field(default=1e-5, gt=0, lt=1, description="Target delta (must be < 1/n for every slot's n).")
    accountant: Literal["rdp", "prv"] = Field(default="rdp", description="Privacy accountant.")
    share_task_names: bool = Field(
        default=False, description="Let sites send task names with their sketches (off: the aggregator never learns them)."
    )

    @model_validator(mode="after")
    def _dp_settings(self) -> "Privacy":
        if self.dp and self.noise_multiplier is None and self.target_epsilon is None:
            raise ValueError("dp is on but neither noise_multiplier nor target_epsilon is set; set one of them")
        return self


class SecureAggregation(Strict):
    """Masked sums inside each cluster (Bonawitz et al. 2017, hardened against an active aggregator).

    See ``fltac_secure/secagg/README.md`` for the protocol and the threat model.
    """

    enabled: bool = Field(
        default=False,
        description="Sum each cluster's adapters under pairwise masks, so the aggregator learns the cluster mean and "
        "never one site's adapter.",
    )
    threshold: float = Field(
        default=2 / 3, ge=0.5, lt=1,
        description="Shares needed to unmask, as a fraction of the cluster's member sites: t = floor(threshold x n) + 1 "
        "(capped at n). 2/3 is Bonawitz et al.'s bound against an actively malicious aggregator; at least 1/2.",
    )  # fmt: skip
    min_cluster_size: int = Field(
        default=2, ge=2, le=100000,
        description="Fewest member sites for a secure sum (a one-member sum is that member's adapter). A smaller "
        "cluster is not summed that round: its members keep their own adapters and send nothing.",
    )  # fmt: skip
    clip: float = Field(
        default=8.0, gt=0, le=2.0**20,
        description="Adapter entries are clipped to +-clip before encoding (trained adapters stay far inside 8).",
    )  # fmt: skip
    ring_bits: Literal[32, 64] = Field(
        default=32, description="Width of the ring the masked vectors live in: 32 keeps the upload at float32 size."
    )
    fractional_bits: int | None = Field(
        default=None, ge=1, le=62,
        description="Fixed-point fractional bits (precision 2^-f per member). Default (null): the most that let every "
        "roster site sum in the ring without wrapping.",
    )  # fmt: skip


class Compression(Strict):
    """Quantised updates (``fltac_secure.learning.compress``): fewer upload bytes per slot and round.

    Each site sends its update (trained vector minus the round's start vector) stochastically rounded to
    ``bits`` per number, unbiased, with one float32 scale per block; the aggregator adds it to the start it
    sent.  Quantising a DP result is post-processing (no privacy cost).  The rounding noise comes from the
    operating system, never from the plan's seeds.
    """

    bits: Literal[32, 16, 8, 4, 2] = Field(
        default=32,
        description="Bits per number of each uploaded update: 32 is off (float32 vectors, as without this section); "
        "16, 8, 4 or 2 quantise (8 bits: about a quarter of the float32 bytes, plus 4 bytes per block).",
    )
    block_size: int = Field(
        default=256, ge=8, le=1 << 20,
        description="Numbers sharing one float32 scale (their max |x|): smaller blocks follow the update's range "
        "more closely (less rounding noise) for 32 / block_size more bits per number.",
    )  # fmt: skip
    error_feedback: bool = Field(
        default=False,
        description="Each site keeps what rounding left out (per slot, across rounds, in its workspace) and adds "
        "it to its next update, so quantisation errors do not accumulate (Karimireddy et al. 2019).",
    )
    secure_clip: float = Field(
        default=0.1, gt=0, le=2.0**20,
        description="With secure aggregation on: update entries are clipped to +-secure_clip, the one scale every "
        "member of a cluster quantises on (their integers must share a grid to be summed; a scale per member would "
        "have to be revealed). The step is secure_clip / (2^(bits-1) - 1 - sites): the finest grid on which "
        "the sites' masked sum fits bits-bit ring elements, so a masked upload is no wider than a plain one (8 bits "
        "and 10 sites: 117 steps; 4 bits need at most 6 sites). Default 0.1: AdamW moves an entry about "
        "learning_rate per step, 0.1 after 20 steps at 5e-3. Clipped entries are counted in the site's log.",
    )  # fmt: skip

    trim_head: bool = Field(
        default=False,
        description="Send only the head rows a slot's task uses: a task with k labels uploads and downloads its LoRA "
        "part and head rows 0..k-1 (weight and bias); rows k and up stay at the initial head, which both ends "
        "regenerate from the plan. Sketches are still taken on the full-length vector (the unused rows at the common "
        "initial values add nothing after centering), so slots of tasks with different label counts stay "
        "comparable. Each site declares its slots' label counts in JOIN, and the wire length tells them too: the "
        "aggregator learns each slot's number of labels, not its task name. FL-TAC and oracle, simulated and "
        "networked: the FedIT baselines send their shared adapter whole. With secure_aggregation a cluster's masked "
        "vector is its wire part at K_c, the largest label count among its member slots (a member submits zeros on "
        "the rows its task does not use, and checks the announced length against the plan and its own count); each "
        "row of the sum is divided by the weight of the members using it. Every head row must be used by at least "
        "min_cluster_size members of the cluster (each member signs its width into its key advert and checks it, "
        "lonely_rows), else the member leaves that cluster, so the sum never reveals one member's row.",
    )

    download_bits: Literal[32, 16, 8, 4, 2] = Field(
        default=32,
        description="Bits per number of the vectors each ROUND_START hands out: 32 is off (float32, as before). "
        "Below 32 the aggregator sends each slot its global adapter as the difference from the plan's initial "
        "adapter (which every site regenerates), stochastically rounded to these bits with one float32 scale per "
        "block_size numbers: unbiased, so the site starts from the global adapter plus zero-mean noise. The "
        "rounding draws come from a random key the aggregator makes at round 0 and keeps in its checkpoint (never "
        "from the plan, so no site can predict them), per round and slot, so a ROUND_START sent again after a "
        "restart is the same bytes. The aggregator keeps the exact means: the noise does not add up over rounds, "
        "and FINAL hands out the exact float32 adapters. FL-TAC and oracle (simulated and networked); the FedIT "
        "baselines send their shared adapter whole.",
    )

    @property
    def enabled(self) -> bool:
        """Uploads are quantised (``bits`` < 32)."""
        return self.bits < 32

    @property
    def download(self) -> bool:
        """ROUND_START vectors are quantised (``download_bits`` < 32)."""
        return self.download_bits < 32
