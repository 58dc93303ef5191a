"""Checkpoints: local round trip, the local Hub server, offline use, and damaged files."""

import json
import shutil

import pytest
import torch

from apv_hub import APVConfig, APVVideoModel, CheckpointError
from apv_hub.weights import load_tensors

CONTEXT = torch.randint(
    0, 256, (2, 4, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(3)
)


def outputs(model: APVVideoModel) -> torch.Tensor:
    """Deterministic outputs: latent modes throughout."""
    _, post, _ = model.observe(CONTEXT, sample=False)
    return torch.cat(
        [model.rssm.get_feat(post).flatten(), model.predict(CONTEXT, 3).float().flatten()]
    )


@pytest.fixture
def trained_model() -> APVVideoModel:
    torch.manual_seed(0)
    model = APVVideoModel(
        APVConfig.preset("tiny"), training={"data": ["synthetic/moving-squares"], "steps": 1}
    )
    # Perturb away from the initialisation so a load that silently re-initialises is caught.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model


def test_save_load_round_trip_is_bit_identical(trained_model, tmp_path):
    trained_model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    loaded = APVVideoModel.from_pretrained(tmp_path / "ckpt")
    assert loaded.config == trained_model.config
    assert loaded.training_info == trained_model.training_info
    for name, tensor in trained_model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    assert torch.equal(outputs(loaded), outputs(trained_model))


def test_model_card_states_architecture_and_training(trained_model, tmp_path):
    trained_model.save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    total = trained_model.num_parameters()["total"]
    assert f"{total:,} parameters" in card
    assert "synthetic/moving-squares" in card and "Gradient steps: 1" in card
    assert "@inproceedings{seo2022reinforcement" in card
    assert "library_name: apv-hub" in card


def test_push_to_local_hub_then_load_from_fresh_cache_and_offline(
    trained_model, local_hub, tmp_path, run_python
):
    trained_model.push_to_hub("apv/tiny-test")
    loaded = APVVideoModel.from_pretrained("apv/tiny-test", cache_dir=tmp_path / "cache")
    assert torch.equal(outputs(loaded), outputs(trained_model))

    # A brand-new process with its own cache downloads, then another one loads offline.
    expected = outputs(trained_model)
    torch.save(expected, tmp_path / "expected.pt")
    code = f"""
import torch
from tests.test_video_model_hub import outputs
from apv_hub import APVVideoModel
model = APVVideoModel.from_pretrained("apv/tiny-test")
assert torch.equal(outputs(model), torch.load({str(tmp_path / "expected.pt")!r})), "outputs differ"
print("card mentions repo:", 'from_pretrained("apv/tiny-test")' in open(
    __import__("huggingface_hub").hf_hub_download("apv/tiny-test", "README.md")).read())
"""
    env = {"HF_HOME": str(tmp_path / "fresh-home")}
    online = run_python(code, env)
    assert online.returncode == 0, online.stderr
    assert "card mentions repo: True" in online.stdout
    offline = run_python(code, {**env, "HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 0, offline.stderr
    # Offline with an empty cache fails clearly instead of hanging or guessing.
    empty = run_python(code, {"HF_HOME": str(tmp_path / "empty-home"), "HF_HUB_OFFLINE": "1"})
    assert empty.returncode != 0 and "not in the local cache" in empty.stderr


def test_revision_selects_an_older_commit(trained_model, local_hub, tmp_path):
    first = trained_model.push_to_hub("apv/tiny-revisions")
    old = outputs(trained_model)
    with torch.no_grad():
        trained_model.decoder.stem.bias.add_(1.0)
    trained_model.push_to_hub("apv/tiny-revisions")
    sha = first.oid
    at_first = APVVideoModel.from_pretrained("apv/tiny-revisions", revision=sha, cache_dir=tmp_path)
    latest = APVVideoModel.from_pretrained("apv/tiny-revisions", cache_dir=tmp_path)
    assert torch.equal(outputs(at_first), old)
    assert not torch.equal(outputs(latest), old)


def test_unknown_repo_id_is_a_clear_error(local_hub, tmp_path):
    with pytest.raises(CheckpointError, match="no Hub repository 'apv/does-not-exist'"):
        APVVideoModel.from_pretrained("apv/does-not-exist", cache_dir=tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoint folder"):
        APVVideoModel.from_pretrained(str(tmp_path / "missing" / "folder"))


def test_tampered_weights_are_refused(trained_model, tmp_path):
    trained_model.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # flip bits inside the last tensor's data
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="failed its integrity check"):
        APVVideoModel.from_pretrained(tmp_path)


def test_truncated_weights_are_refused(trained_model, tmp_path):
    trained_model.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        APVVideoModel.from_pretrained(tmp_path)


def test_mismatched_checkpoint_names_keys_and_shapes(trained_model, tmp_path):
    trained_model.save_pretrained(tmp_path / "tiny")
    APVVideoModel(APVConfig.preset("tiny", deter=48)).save_pretrained(tmp_path / "other")
    # Weights of one architecture under the config of another.
    shutil.copy(tmp_path / "other" / "model.safetensors", tmp_path / "tiny" / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"shape of rssm\.gru\.linear\.weight: checkpoint"):
        APVVideoModel.from_pretrained(tmp_path / "tiny")
    tensors, _ = load_tensors(tmp_path / "other" / "model.safetensors")
    assert tensors["rssm.gru.linear.weight"].shape[0] == 3 * 48


def test_config_json_with_unknown_field_is_refused(trained_model, tmp_path):
    trained_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["determ"] = 5
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config\.json: unknown APVConfig field.*determ"):
        APVVideoModel.from_pretrained(tmp_path)
