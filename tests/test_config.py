import pytest

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
