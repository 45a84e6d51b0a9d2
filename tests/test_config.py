import json
import re
from pathlib import Path

import pytest
import yaml

from sora.config import ConfigError, SoraConfig, load_config

REQUIRED_KEYS = [
    "split.mode", "split.seed", "split.rating_threshold", "text.model", "graph.item_knn_k", "graph.item_edges",
    "graph.user_edges", "model.use_text", "model.use_transformer", "model.dim", "train.max_epochs", "train.seed",
    "train.device", "registry.model_name", "registry.promotion_margin",
]


def test_every_documented_key_exists():
    d = SoraConfig().to_dict()
    for key in REQUIRED_KEYS:
        section, name = key.split(".")
        assert name in d[section], key


def test_overrides_are_typed():
    cfg = SoraConfig().with_overrides(["train.max_epochs=3", "model.use_text=false", "split.rating_threshold=null",
                                       "eval.ks=5,10"])
    assert cfg.train.max_epochs == 3 and cfg.model.use_text is False
    assert cfg.split.rating_threshold is None and cfg.eval.ks == (5, 10)
    assert SoraConfig().train.max_epochs != 3  # defaults untouched


@pytest.mark.parametrize("bad", ["train.nope=1", "nosection.x=1", "train.max_epochs=abc", "model.use_text=maybe",
                                 "train.max_epochs"])
def test_bad_overrides_are_rejected(bad):
    with pytest.raises(ConfigError):
        SoraConfig().with_overrides([bad])


def test_yaml_round_trip(tmp_path):
    cfg = SoraConfig().with_overrides(["model.dim=32", "split.mode=temporal"])
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(path)
    assert again.to_dict() == cfg.to_dict()
    cfg.save(tmp_path / "c.json")
    assert SoraConfig.load(tmp_path / "c.json").to_dict() == cfg.to_dict()


@pytest.mark.parametrize("bad,key", [
    ("split.ratios=[0.8,0.2]", "split.ratios"),
    ("split.ratios=[0.5,0.2,0.2]", "split.ratios"),
    ("split.ratios=[1.0,0.0,0.0]", "split.ratios"),
    ("train.max_epochs=-3", "train.max_epochs"),
    ("train.batch_size=0", "train.batch_size"),
    ("train.max_epochs=true", "train.max_epochs"),
    ("train.lr=yes", "train.lr"),
    ("train.lr=.nan", "train.lr"),
    ("train.max_epochs=2.5", "train.max_epochs"),
    ("split.mode=sideways", "split.mode"),
    ("train.loss=hinge", "train.loss"),
    ("train.device=gpu", "train.device"),
    ("graph.user_edges=all", "graph.user_edges"),
    ("graph.item_edges=text,magic", "graph.item_edges"),
    ("graph.item_edges=", "graph.item_edges"),
    ("model.dropout=1.5", "model.dropout"),
    ("train.edge_dropout=-0.1", "train.edge_dropout"),
    ("validation.max_duplicate_ratio=2", "validation.max_duplicate_ratio"),
    ("model.dim=0", "model.dim"),
    ("model.dim=15", "model.dim"),
    ("eval.ks=0", "eval.ks"),
    ("eval.ks=[]", "eval.ks"),
    ("serve.port=70000", "serve.port"),
    ("serve.max_k=0", "serve.max_k"),
    ("serve.poll_interval_s=-1", "serve.poll_interval_s"),
    ("registry.model_name=", "registry.model_name"),
    ("registry.challenger_alias=champion", "registry.challenger_alias"),
    ("validation.rating_min=9", "validation.rating_min"),
    ("data.item_text_template={title", "data.item_text_template"),
    ("drift.rating_js_warn=0.5", "drift.rating_js_warn"),
    ("text.model=[1, 2]", "text.model"),
])
def test_invalid_values_name_the_key(bad, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        SoraConfig().with_overrides([bad])


def test_scalar_for_a_list_key_is_a_one_element_list():
    assert SoraConfig().with_overrides(["eval.ks=10"]).eval.ks == (10,)
    assert SoraConfig().with_overrides(["eval.ks=[5, 20]"]).eval.ks == (5, 20)


def test_strings_with_fixed_values_accept_every_documented_value():
    for mode in ("random", "temporal", "cold-item", "leave-last-out"):
        assert SoraConfig().with_overrides([f"split.mode={mode}"]).split.mode == mode
    cfg = SoraConfig().with_overrides(["train.loss=bpr", "train.device=cpu", "graph.user_edges=knn",
                                       "graph.item_edges=text,cooccur", "split.rating_threshold=4",
                                       "data.item_text_template={title}. {text}"])
    assert cfg.graph.item_edges == "text,cooccur" and cfg.split.rating_threshold == 4.0
    assert cfg.data.item_text_template == "{title}. {text}"
    assert SoraConfig().with_overrides(["graph.item_edges=none"]).graph.item_edges == "none"


def test_from_dict_and_load_validate(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.max_epochs"):
        SoraConfig.from_dict({"train": {"max_epochs": 0}})
    with pytest.raises(ConfigError, match="section"):
        SoraConfig.from_dict({"train": 3})
    with pytest.raises(ConfigError, match="mapping"):
        SoraConfig.from_dict([1, 2])
    path = tmp_path / "bad.yaml"
    path.write_text("split:\n  ratios: [0.8, 0.2]\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "bad.yaml" in str(err.value) and "split.ratios" in str(err.value)
    path.write_text("split: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(path)


def test_validate_catches_values_set_in_code():
    cfg = SoraConfig()
    cfg.train.batch_size = 0
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        cfg.validate()
    cfg = SoraConfig()
    cfg.model.use_text = 1  # not a bool
    with pytest.raises(ConfigError, match=r"model\.use_text"):
        cfg.validate()
    assert SoraConfig().validate() == SoraConfig()


@pytest.mark.parametrize("old,check", [
    ("model.use_item_edges=false", lambda c: c.graph.item_edges == "none"),
    ("model.use_user_edges=false", lambda c: c.graph.user_edges == "none"),
    ("model.use_item_edges=true", lambda c: c.graph.item_edges == SoraConfig().graph.item_edges),
    ("eval.ease_lambda=50", lambda c: c.graph.ease_lambda == 50.0),
])
def test_deprecated_keys_set_the_canonical_one_with_a_warning(old, check, caplog):
    with pytest.warns(DeprecationWarning, match=old.split("=")[0].replace(".", r"\.")):
        cfg = SoraConfig().with_overrides([old])
    assert check(cfg)
    assert "deprecated" in caplog.text
    keys = {f"{s}.{k}" for s, sec in cfg.to_dict().items() for k in sec}
    assert not keys & {"model.use_item_edges", "model.use_user_edges", "eval.ease_lambda"}  # one key per concept
    assert cfg.model.use_item_edges and cfg.model.use_user_edges  # still readable by old code


def test_old_config_files_still_load():
    old = SoraConfig().to_dict()
    old["model"].update(use_item_edges=False, use_user_edges=True)
    old["eval"]["ease_lambda"] = 300.0
    with pytest.warns(DeprecationWarning):
        cfg = SoraConfig.from_dict(old)
    assert cfg.graph.item_edges == "none" and cfg.graph.user_edges == "given"
    old["eval"]["ease_lambda"], old["graph"]["ease_lambda"] = 10.0, 20.0  # both spellings: the canonical wins
    with pytest.warns(DeprecationWarning, match="ignored"):
        assert SoraConfig.from_dict(old).graph.ease_lambda == 20.0


def test_every_default_section_is_typed_and_valid():
    cfg = SoraConfig()
    assert cfg.drift.item_popularity_js_warn <= cfg.drift.item_popularity_js_fail
    assert SoraConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()


def test_every_number_has_a_range():
    """Every numeric key is declared with its range, so nonsense values fail on load, not mid-run."""
    unbounded = {"validation.rating_min", "validation.rating_max", "split.rating_threshold"}  # any rating scale
    defaults = SoraConfig()
    checked = []
    for section, sec in SoraConfig.model_fields.items():
        for name, field in sec.annotation.model_fields.items():
            key = f"{section}.{name}"
            if key in unbounded or not re.search(r"\b(int|float)\b", str(field.annotation)):
                continue
            default = getattr(getattr(defaults, section), name)
            value = [-10**9] * len(default) if isinstance(default, tuple) else -10**9
            with pytest.raises(ConfigError, match=rf"^{re.escape(key)} must be (>|in )"):
                SoraConfig.from_dict({section: {name: value}})
            checked.append(key)
    assert {"train.lr", "model.dim", "split.ratios", "eval.ks", "drift.rating_js_warn", "serve.port"} <= set(checked)


def test_config_saved_before_pydantic_loads_unchanged(tmp_path):
    """A model's config.json written by the dataclass version loads, and its keys dump back to the same JSON
    (same values and number types: the checkpoint fingerprint of a resolved config stays the same)."""
    saved_path = Path(__file__).parent / "fixtures" / "config_before_pydantic.json"
    saved = json.loads(saved_path.read_text())
    cfg = SoraConfig.load(saved_path)
    assert cfg.split.mode == "cold-item" and cfg.eval.ks == (5, 10, 20) and cfg.graph.ease_lambda == 300.0
    assert cfg.resolved() is cfg  # saved resolved: nothing left to fill
    again = cfg.to_dict()
    assert json.dumps({s: {k: again[s][k] for k in keys} for s, keys in saved.items()}, sort_keys=True) == \
        json.dumps(saved, sort_keys=True)


def test_sections_read_the_documented_value_forms():
    """Strings for numbers, ``a,b`` for lists, whole floats for ints; never a boolean as a number."""
    cfg = SoraConfig.from_dict({"train": {"max_epochs": "3", "lr": 1, "head_decays": "1.0, 0.9"},
                                "model": {"dim": 32.0}, "registry": {"model_name": 123}})
    assert cfg.train.max_epochs == 3 and cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.head_decays == (1.0, 0.9) and cfg.model.dim == 32 and cfg.registry.model_name == "123"
    for bad, message in ((["eval.ks=[true]"], "eval.ks must be an int, got the boolean true"),
                         (["text.model=yes"], "text.model must be a str, got the boolean true"),
                         (["train.lr=1e400"], "train.lr must be a finite number"),
                         (["registry.model_name=' '"], "registry.model_name may not be empty"),
                         (["train.loss=hinge"], "train.loss must be one of softmax, bpr; got 'hinge'"),
                         (["model.dropout=1.5"], r"model.dropout must be in \[0,1\]; got 1.5"),
                         (["split.ratios=[0.8,0.2]"], r"split.ratios needs 3 values, got 2: \[0.8, 0.2\]"),
                         (["train.nope=1"], "unknown config key 'train.nope'; train has: loss, ")):
        with pytest.raises(ConfigError, match=f"^{message}"):
            SoraConfig().with_overrides(bad)


def test_config_show_prints_every_key_with_its_default(capsys):
    from sora.cli import main

    assert main(["config", "show"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown == SoraConfig().to_dict() and list(shown) == list(SoraConfig.model_fields)
    assert shown["train"]["head_decays"] == [1.0, 0.95, 0.9, 0.8, 0.7] and shown["serve"]["port"] == 3000


def test_a_bad_set_exits_2_naming_the_key(capsys):
    from sora.cli import main

    assert main(["config", "show", "--set", "train.max_epochs=0"]) == 2
    assert "train.max_epochs must be >= 1; got 0" in capsys.readouterr().err


def test_null_keys_resolve_by_training_mode():
    """AUTO keys: set training keeps its short-history values, causal training gets the SASRec-shaped ones."""
    from sora.config import AUTO, AUTO_COLD_ITEM
    from sora.training.train import tuning_trials

    plain = SoraConfig()
    assert all(plain.to_dict()[k.split(".")[0]][k.split(".")[1]] is None for k in AUTO)
    for mode, causal in (("random", False), ("cold-item", False), ("leave-last-out", True)):
        r = plain.with_overrides([f"split.mode={mode}"]).resolved()
        for key, values in AUTO.items():
            section, name = key.split(".")
            expected = AUTO_COLD_ITEM.get(key, values[causal]) if mode == "cold-item" else values[causal]
            assert getattr(getattr(r, section), name) == expected, (mode, key)
    assert SoraConfig().resolved().tune.grid == ("train.temperature=1.0,0.2",)
    # a cold-item split also tries the position std on valid: 2 × 2 trainings
    cold = plain.with_overrides(["split.mode=cold-item"]).resolved()
    assert tuning_trials(cold) == [[f"train.temperature={t}", f"model.position_std={s}"]
                                   for t in ("1.0", "0.2") for s in ("0.1", "1.0")]
    assert plain.with_overrides(["split.mode=cold-item", "train.causal=true"]).resolved().tune.grid == ()
    # train.causal decides, not the split mode alone; a value set by the user is kept in either mode
    forced = plain.with_overrides(["train.causal=true"]).resolved()
    assert forced.model.history_len == 50 and forced.train.lr == 1e-3
    kept = plain.with_overrides(["split.mode=leave-last-out", "model.history_len=20", "tune.grid=[]"]).resolved()
    assert kept.model.history_len == 20 and kept.model.transformer_layers == 2 and kept.tune.grid == ()
    # resolving is idempotent and survives a save/load round trip (a model's config.json holds values)
    again = SoraConfig.from_dict(kept.to_dict())
    assert again.resolved().to_dict() == kept.to_dict() and again.resolved() is again


def test_train_reports_every_value_chosen_on_valid():
    """`sora train`'s "chosen on valid" line names each key the grid tried, at the winner's value."""
    from types import SimpleNamespace

    from sora.cli.model import _tuned_values

    cfg = SoraConfig().with_overrides(["split.mode=cold-item", "train.temperature=1.0", "model.position_std=1.0"])
    tuning = [{"overrides": [f"train.temperature={t}", f"model.position_std={s}"]} for t in (0.2, 1.0) for s in (0.1, 1.0)]
    assert _tuned_values(SimpleNamespace(config=cfg, meta={"tuning": tuning})) == \
        "model.position_std=1.0 train.temperature=1.0"
    # no grid (causal training): the temperature it trained with
    assert _tuned_values(SimpleNamespace(config=SoraConfig(), meta={})) == f"train.temperature={SoraConfig().train.temperature}"


def test_config_show_resolved(capsys):
    from sora.cli import main

    assert main(["config", "show", "--json", "--resolved", "--set", "split.mode=leave-last-out"]) == 0
    import json

    shown = json.loads(capsys.readouterr().out)
    assert shown["model"]["history_len"] == 50 and shown["train"]["temperature"] == 1.0
    assert main(["config", "show", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["history_len"] is None
