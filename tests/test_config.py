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
    with pytest.raises(ConfigError, match="unknown APVConfig preset 'huge'"):
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


# The strict config base, the override grammar and the generated flags -------------------------


def test_types_are_strict_and_errors_name_the_dotted_key():
    from apv_hub.config import AgentConfig

    for data, message in [
        ({"deter": "200"}, "deter takes an integer, got '200'"),
        ({"lr": "0.0003"}, "lr takes a number, got '0.0003'"),
        ({"gru_layer_norm": "false"}, "gru_layer_norm takes true or false"),
        ({"gru_layer_norm": 1}, "gru_layer_norm takes true or false"),
        ({"deter": 2.5}, "deter takes an integer, got 2.5"),
        ({"kl_scale": float("nan")}, "kl_scale must be a finite number"),
        ({"encoder_kernels": "4,4"}, "encoder_kernels takes a list"),
    ]:
        with pytest.raises(ConfigError, match=message):
            APVConfig.from_dict(data)
    assert APVConfig.from_dict({"deter": 64.0}).deter == 64  # JSON 64.0 / 1e5 style integers
    with pytest.raises(ConfigError, match=r"world_model\.kl_balance must lie in \[0, 1\]"):
        AgentConfig.from_dict({"world_model": {"kl_balance": 2.0}})
    with pytest.raises(ConfigError, match=r"unknown WorldModelConfig field\(s\) world_model\.klb"):
        AgentConfig.from_dict({"world_model": {"klb": 2.0}})
    data = AgentConfig.preset("tiny").to_dict()
    del data["behavior"]["horizon"]
    with pytest.raises(ConfigError, match=r"missing BehaviorConfig field\(s\) behavior\.horizon"):
        AgentConfig.from_dict(data, complete=True)


def test_files_that_are_not_config_objects_are_named(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match=f"{bad} is not valid JSON"):
        APVConfig.load(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError, match=f"{bad} holds a JSON list"):
        APVConfig.load(bad)
    bad.write_text(json.dumps({**APVConfig().to_dict(), "deter": "200"}))
    with pytest.raises(ConfigError, match=f"{bad}: deter takes an integer"):
        APVConfig.load(bad)


def test_the_override_grammar():
    from apv_hub.config_base import parse_assignment
    from apv_hub.training.configs import FinetuneConfig

    assert parse_assignment("a.b=1e-4") == ("a.b", 1e-4)
    assert parse_assignment("a=[4, 4]") == ("a", [4, 4])
    assert parse_assignment("a=true") == ("a", True)
    assert parse_assignment("a=null") == ("a", None)
    assert parse_assignment("a=metaworld/reach-v3") == ("a", "metaworld/reach-v3")  # bare
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_assignment("novalue")
    config = FinetuneConfig.preset("tiny", env="dmc/walker-walk")
    text = {
        "agent.video.encoder_kernels": "4,4,4",  # a bare comma list sets a list field
        "agent.world_model.free_nats": 1,
        "env_options.episode_length": 30,  # open dicts take new keys
        "total_env_steps": 1e3,
    }
    changed = config.override(text, from_text=True)
    assert changed.agent.video.encoder_kernels == (4, 4, 4)
    assert changed.agent.world_model.free_nats == 1.0 and changed.total_env_steps == 1000
    assert changed.env_options == {"episode_length": 30}
    with pytest.raises(ConfigError, match=r"did you mean agent\.behavior\.horizon\?"):
        config.override({"horizon": 3})
    with pytest.raises(ConfigError, match="agent.world_model.free_nats is a float, not a section"):
        config.override({"agent.world_model.free_nats.x": 3})


def test_one_override_string_means_the_same_to_both_trainers(tmp_path):
    from apv_hub.training.commands import (
        finetune_parser,
        new_finetune_config,
        new_pretrain_config,
        pretrain_parser,
        resolve_run,
    )
    from apv_hub.training.configs import FinetuneConfig, PretrainConfig

    common = ["--set", "seed=3", "--set", "log_every=1e3", "--set", "precision=fp32"]
    pre_args = pretrain_parser().parse_args(
        ["--data", "sample", "--out", str(tmp_path / "p"), *common]
        + ["--set", "model.encoder_kernels=4,4,4,4", "--steps", "7"]
    )
    pre, _, _ = resolve_run(pre_args, PretrainConfig, new_pretrain_config(None))
    ft_args = finetune_parser().parse_args(
        ["--env", "dmc/walker-walk", "--out", str(tmp_path / "f"), *common]
        + ["--set", "agent.video.encoder_kernels=4,4,4,4", "--steps", "7"]
    )
    ft, _, _ = resolve_run(ft_args, FinetuneConfig, new_finetune_config(None))
    for config in (pre, ft):
        assert (config.seed, config.log_every, config.precision) == (3, 1000, "fp32")
    assert pre.model.encoder_kernels == ft.agent.video.encoder_kernels == (4, 4, 4, 4)
    # A generated flag and --set of its key are the same thing.
    assert pre.steps == 7 and ft.total_env_steps == 7


@pytest.mark.parametrize("which", ["pretrain", "finetune"])
def test_every_flag_sets_its_field_with_the_field_type(which, tmp_path):
    from apv_hub.cli import config_assignments
    from apv_hub.training import commands
    from apv_hub.training.configs import FinetuneConfig, PretrainConfig

    config_class, flags, parser = {
        "pretrain": (PretrainConfig, commands.PRETRAIN_FLAGS, commands.pretrain_parser()),
        "finetune": (FinetuneConfig, commands.FINETUNE_FLAGS, commands.finetune_parser()),
    }[which]
    samples = {"int": "3", "float": "0.5", "str": "metaworld/reach-v3", "bool": None}
    for flag, key in flags.items():
        kind = next(k for name, k, _, _ in config_class.fields_help() if name == key)
        base = kind.split("[")[-1].split("]")[0].split(" ")[0]
        value = samples[base]
        args = parser.parse_args([flag] if value is None else [flag, value])
        parsed = config_assignments(args)[key]
        expected = {"int": 3, "float": 0.5, "str": "metaworld/reach-v3", "bool": True}[base]
        assert parsed == ([expected] if "list[" in kind else expected), (flag, kind, parsed)
