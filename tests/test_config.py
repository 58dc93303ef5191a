import json

import pytest

from apv_hub import APVConfig, ConfigError


def test_paper_preset_is_the_released_model():
    cfg = APVConfig.preset("paper")
    assert (cfg.deter, cfg.hidden, cfg.stoch, cfg.classes, cfg.cnn_depth) == (
        1024,
        1024,
        32,
        32,
        48,
    )
    assert cfg.encoder_kernels == (4, 4, 4, 4) and cfg.decoder_kernels == (5, 5, 6, 6)
    assert (cfg.kl_balance, cfg.free_nats, cfg.kl_scale) == (0.8, 0.0, 0.1)
    assert (cfg.lr, cfg.adam_eps, cfg.grad_clip, cfg.weight_decay) == (3e-4, 1e-5, 100.0, 1e-6)
    assert (cfg.batch_size, cfg.seq_len) == (16, 25)


@pytest.mark.parametrize("name", ["tiny", "small", "paper"])
def test_json_round_trip(name, tmp_path):
    cfg = APVConfig.preset(name, kl_scale=0.5)
    cfg.save(tmp_path / "config.json")
    assert APVConfig.load(tmp_path / "config.json") == cfg


def test_unknown_field_is_named(tmp_path):
    data = APVConfig.preset("tiny").to_dict() | {"detr": 3, "hiden": 4}
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="detr, hiden"):
        APVConfig.load(tmp_path / "config.json")


def test_missing_field_is_named(tmp_path):
    data = APVConfig.preset("tiny").to_dict()
    del data["deter"], data["stoch"]
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="deter, stoch"):
        APVConfig.load(tmp_path / "config.json")


def test_bad_values_and_presets_are_refused():
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        APVConfig.preset("huge")
    with pytest.raises(ConfigError, match="kl_balance"):
        APVConfig(kl_balance=1.5)
    with pytest.raises(ConfigError, match="act"):
        APVConfig(act="gelu6")


def test_a_file_written_before_a_field_existed_loads_with_the_value_it_meant(tmp_path):
    data = APVConfig.preset("tiny", layer_norm_eps=1e-3, gru_bias=True).to_dict()
    del data["layer_norm_eps"], data["gru_bias"]
    (tmp_path / "config.json").write_text(json.dumps(data))
    loaded = APVConfig.load(tmp_path / "config.json")
    assert (loaded.layer_norm_eps, loaded.gru_bias) == (1e-5, False)
