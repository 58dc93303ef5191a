"""apv-convert: published checkpoints -> APVVideoModel, with refusal of unsafe pickles, outputs
equal to independent references of the original code, named mismatches, the command and the Hub.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from apv_hub import APVVideoModel
from apv_hub.convert import (
    ConversionError,
    convert_apv_release,
    convert_contextwm,
    load_pickled_arrays,
    load_torch_state_dict,
    main,
)
from tests.convert_fixtures import (
    Sizes,
    contextwm_reference,
    contextwm_state_dict,
    numpy1_pickle,
    release_variables,
    tf_reference,
    write_release_run,
)

SIZES = Sizes()
FRAMES = torch.randint(
    0, 256, (2, 3, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class RunsCode:
    """Unpickling this creates ``marker`` through os.system: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def model_outputs(model: APVVideoModel, frames: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        embed, post, prior = model.observe(frames, sample=False)
        mean = model.decoder(model.rssm.get_feat(post))
    return {
        "embed": embed,
        "deter": post["deter"],
        "prior": prior["logits"],
        "post": post["logits"],
        "mean": mean,
    }


def assert_close(ours: torch.Tensor, reference, name: str) -> None:
    reference = torch.as_tensor(np.asarray(reference), dtype=torch.float32)
    torch.testing.assert_close(ours.float(), reference, rtol=1e-4, atol=2e-5, msg=name)


# (a) nothing but arrays is unpickled --------------------------------------------------------------


def test_a_pickle_that_runs_code_is_refused_and_the_code_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    write_release_run(tmp_path / "run")
    (tmp_path / "run" / "rssm_variables.pkl").write_bytes(
        pickle.dumps([np.ones(3, np.float32), RunsCode(marker)])
    )
    with pytest.raises(ConversionError, match=r"refused to unpickle the global \w+\.system"):
        load_pickled_arrays(tmp_path / "run" / "rssm_variables.pkl")
    with pytest.raises(ConversionError, match=r"rssm_variables\.pkl: refused"):
        convert_apv_release(tmp_path / "run", stoch=SIZES.stoch)
    assert not marker.exists()
    # The control: plain unpickling of the same file does run it.
    pickle.loads((tmp_path / "run" / "rssm_variables.pkl").read_bytes())
    assert marker.exists()


def test_a_torch_file_that_runs_code_is_refused_by_weights_only_load(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"wm.rssm.img_in.weight": torch.zeros(2), "x": RunsCode(marker)}, tmp_path / "v.pt")
    with pytest.raises(
        ConversionError, match=r"v\.pt: refused by torch\.load\(weights_only=True\)"
    ):
        load_torch_state_dict(tmp_path / "v.pt")
    with pytest.raises(ConversionError, match="refused"):
        convert_contextwm(tmp_path / "v.pt")
    assert not marker.exists()


@pytest.mark.parametrize(
    "value, reason",
    [
        (["a string", np.ones(2, np.float32)], "item 0 is str"),
        ([np.ones(2, np.float32), {"kernel": np.ones(2)}], "item 1 is dict"),
        ([np.array([1, "a"], dtype=object)], "item 0 is an array of object"),
        ({"kernel": np.ones(2)}, "holds a dict, not the list of arrays"),
    ],
)
def test_pickles_of_anything_but_numeric_arrays_are_refused(tmp_path, value, reason):
    (tmp_path / "x.pkl").write_bytes(pickle.dumps(value))
    with pytest.raises(ConversionError, match=reason):
        load_pickled_arrays(tmp_path / "x.pkl")


def test_array_pickles_of_numpy_1_and_2_and_every_protocol_load(tmp_path):
    arrays = (np.arange(6, dtype=np.float32).reshape(2, 3), np.float32(2.5), np.ones(2, np.float16))
    blobs = [numpy1_pickle(arrays)] + [pickle.dumps(arrays, protocol=p) for p in (2, 4, 5)]
    assert b"numpy.core.multiarray" in blobs[0]
    for i, blob in enumerate(blobs):
        (tmp_path / f"{i}.pkl").write_bytes(blob)
        loaded = load_pickled_arrays(tmp_path / f"{i}.pkl")
        assert [a.tolist() for a in loaded] == [np.asarray(a).tolist() for a in arrays]


def test_truncated_pickle_is_a_conversion_error(tmp_path):
    (tmp_path / "x.pkl").write_bytes(pickle.dumps([np.ones(100, np.float32)])[:50])
    with pytest.raises(ConversionError, match="not a readable pickle"):
        load_pickled_arrays(tmp_path / "x.pkl")


# (b) the release: outputs equal the TensorFlow semantics ------------------------------------------


def test_release_files_follow_the_documented_variable_order():
    counts = {part: len(spec) for part, spec in release_variables(SIZES).items()}
    assert counts == {"encoder": 8, "rssm": 14, "decoder": 10}


def test_release_conversion_computes_what_the_release_computes(tmp_path):
    arrays = write_release_run(tmp_path / "run", SIZES, seed=3)
    model = convert_apv_release(tmp_path / "run", stoch=SIZES.stoch)
    cfg = model.config
    assert (cfg.cnn_depth, cfg.deter, cfg.hidden, cfg.stoch, cfg.classes) == (4, 16, 12, 3, 5)
    assert (cfg.encoder_kernels, cfg.decoder_kernels, cfg.image_size) == (
        (4,) * 4,
        (5, 5, 6, 6),
        64,
    )
    assert (cfg.layer_norm_eps, cfg.gru_bias, cfg.kl_scale, cfg.seq_len) == (1e-3, True, 0.1, 25)

    ours = model_outputs(model, FRAMES)
    ref = tf_reference(arrays, FRAMES.permute(0, 1, 3, 4, 2).numpy(), SIZES)
    # Our embedding flattens (c, h, w) where TensorFlow flattens (h, w, c): same features.
    assert_close(ours["embed"], ref["embed"].transpose(0, 1, 4, 2, 3).reshape(2, 3, -1), "embed")
    for key in ("deter", "prior", "post"):
        assert_close(ours[key], ref[key], key)
    assert_close(ours["mean"], ref["mean"].transpose(0, 1, 4, 2, 3), "decoder mean")
    # The two flatten orders differ at this size (2x2 maps), so obs_out's reorder is exercised.
    assert not np.allclose(ref["embed"].reshape(2, 3, -1), ours["embed"].numpy(), atol=1e-3)


def test_release_dmc_settings_and_sizes_are_read_off_the_files(tmp_path):
    sizes = Sizes(depth=2, deter=10, hidden=7, stoch=4, classes=2, enc_kernels=(4, 4, 4, 4))
    write_release_run(tmp_path / "run", sizes)
    model = convert_apv_release(
        tmp_path / "run", stoch=4, pretrain_config="dmc_vision_pretrain", data="Triped-walk"
    )
    cfg = model.config
    assert (cfg.deter, cfg.hidden, cfg.classes, cfg.kl_scale, cfg.free_nats, cfg.seq_len) == (
        10, 7, 2, 1.0, 1.0, 50,
    )  # fmt: skip
    assert model.training_info["data"] == "Triped-walk"


# (c) ContextWM ------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["agent-file", "module-files"])
def test_contextwm_conversion_computes_what_contextwm_computes(tmp_path, layout):
    state = contextwm_state_dict(SIZES, seed=5)
    if layout == "agent-file":
        torch.save(state, tmp_path / "variables.pt")
        source = tmp_path / "variables.pt"
    else:
        for part, prefix in (
            ("encoder", "wm.encoder."),
            ("rssm", "wm.rssm."),
            ("decoder", "wm.heads.decoder."),
        ):
            module = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            torch.save(module, tmp_path / f"{part}_variables.pt")
        source = tmp_path
    model = convert_contextwm(source, stoch=SIZES.stoch)
    assert model.config.kl_scale == 1.0  # ContextWM's *_pretrain configs
    ours = model_outputs(model, FRAMES)
    ref = contextwm_reference(state, FRAMES, SIZES)
    for key in ("embed", "deter", "prior", "post", "mean"):
        assert_close(ours[key], ref[key], key)


# (d) mismatches are named -------------------------------------------------------------------------


def rewrite(folder: Path, part: str, edit) -> None:
    path = folder / f"{part}_variables.pkl"
    arrays = list(load_pickled_arrays(path))
    path.write_bytes(pickle.dumps(tuple(edit(arrays))))


@pytest.mark.parametrize(
    "part, edit, message",
    [
        ("rssm", lambda a: a[:-1], r"holds 13 arrays, expected 14 \(gru/dense/kernel"),
        (
            "rssm",
            lambda a: a + [a[8], a[9], a[4], a[5]],
            "an ensemble of 2 prior heads",
        ),
        ("encoder", lambda a: a[:-1], "encoder_variables.pkl holds 7 arrays"),
        (
            "rssm",
            lambda a: a[:6] + [np.zeros((a[6].shape[0] + 1, a[6].shape[1]), np.float32)] + a[7:],
            r"rssm_variables\.pkl\[6\] img_in/kernel has shape \(66, 12\)",
        ),
        (
            "rssm",
            lambda a: a[:12] + [np.zeros((a[12].shape[0], 13), np.float32)] + a[13:],
            r"rssm_variables\.pkl\[12\] obs_out/kernel: shape \(13, 144\), expected \(12, 144\)",
        ),
        (
            "decoder",
            lambda a: a[:-2] + [np.zeros((5, 128), np.float32), a[-1]],
            r"decoder_variables\.pkl\[8\] convin/kernel: shape \(128, 5\), expected \(128, 31\)",
        ),
        (
            "encoder",
            lambda a: [a[0][:, :, :, :3]] + a[1:],
            r"encoder_variables\.pkl\[1\] conv0/bias: shape \(4,\), expected \(3,\)",
        ),
    ],
)
def test_release_mismatches_name_the_variable(tmp_path, part, edit, message):
    write_release_run(tmp_path / "run")
    rewrite(tmp_path / "run", part, edit)
    with pytest.raises(ConversionError, match=message):
        convert_apv_release(tmp_path / "run", stoch=SIZES.stoch)


def test_release_folder_without_its_files_says_which(tmp_path):
    write_release_run(tmp_path / "run")
    (tmp_path / "run" / "decoder_variables.pkl").unlink()
    with pytest.raises(ConversionError, match="lacks decoder_variables.pkl"):
        convert_apv_release(tmp_path / "run")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("wm.rssm.obs_dist.bias"), r"missing tensor\(s\) rssm\.obs_dist\.bias"),
        (
            lambda s: s.update({"wm.encoder.res0.stack.0.weight": torch.zeros(3)}),
            r"variables\.pt: wm\.encoder\.res0\.stack\.0\.weight .*ContextWM's ResNet encoder",
        ),
        (
            lambda s: s.update({"wm.rssm.img_out_1.weight": torch.zeros(3)}),
            "an ensemble of prior heads",
        ),
        (
            lambda s: s.update({"wm.heads.decoder.convin.weight": torch.zeros(128, 30)}),
            r"wm\.heads\.decoder\.convin\.weight: shape \(128, 30\), expected \(128, 31\)",
        ),
        (
            lambda s: s.update({"wm.rssm.img_in.weight": torch.full((12, 65), float("nan"))}),
            "wm.rssm.img_in.weight holds non-finite values",
        ),
        (
            lambda s: s.update({"wm.encoder.conv0.weight": torch.zeros(4, 3)}),
            r"wm\.encoder\.conv0\.weight has shape \(4, 3\), expected 4-D",
        ),
    ],
)
def test_contextwm_mismatches_name_the_key(tmp_path, edit, message):
    state = contextwm_state_dict(SIZES)
    edit(state)
    torch.save(state, tmp_path / "variables.pt")
    with pytest.raises(ConversionError, match=message):
        convert_contextwm(tmp_path / "variables.pt", stoch=SIZES.stoch)


# (e) the command ----------------------------------------------------------------------------------


def test_command_writes_a_loadable_checkpoint_whose_card_names_source_and_licence(tmp_path, capsys):
    arrays = write_release_run(tmp_path / "run", seed=7)
    out = tmp_path / "converted"
    argv = [str(tmp_path / "run"), "--format", "apv-release", "--out", str(out), "--stoch", "3"]
    assert main([*argv, "--data", "RLBench videos of the APV release"]) == 0
    assert "checkpoint: " + str(out) in capsys.readouterr().out
    loaded = APVVideoModel.from_pretrained(out)
    ours = model_outputs(loaded, FRAMES)
    ref = tf_reference(arrays, FRAMES.permute(0, 1, 3, 4, 2).numpy(), SIZES)
    assert_close(ours["post"], ref["post"], "post")

    card = (out / "README.md").read_text()
    assert "## Converted from" in card and "https://github.com/younggyoseo/apv" in card
    assert "Licence of the source: not stated in the release's README" in card
    assert "drive.google.com/drive/folders/1cDjLreFqw-LCJ48Bt80Dh1Ypo1LHqWP1" in card
    assert "Data: RLBench videos of the APV release" in card
    assert "apv-convert " in card and "--format apv-release" in card
    import hashlib

    digest = hashlib.sha256((tmp_path / "run" / "rssm_variables.pkl").read_bytes()).hexdigest()
    assert digest in card

    # An existing folder is not overwritten silently; a broken source fails with its reason.
    assert main(argv) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    (tmp_path / "run" / "rssm_variables.pkl").write_bytes(pickle.dumps([RunsCode(tmp_path / "x")]))
    assert main([*argv, "--overwrite"]) == 1
    assert "refused to unpickle" in capsys.readouterr().err
    assert main([*argv, "--private"]) == 2  # --private without --push-to-hub
    assert "--private and --revision need --push-to-hub" in capsys.readouterr().err


# (f) the Hub --------------------------------------------------------------------------------------


def test_command_pushes_to_the_hub_and_the_repo_loads(tmp_path, local_hub):
    from huggingface_hub import HfApi, hf_hub_download

    state = contextwm_state_dict(SIZES, seed=2)
    torch.save(state, tmp_path / "variables.pt")
    argv = [str(tmp_path / "variables.pt"), "--format", "contextwm", "--out", str(tmp_path / "c")]
    repo = "apv-test/converted-contextwm"
    assert (
        main([*argv, "--stoch", "3", "--push-to-hub", repo, "--private", "--revision", "v1"]) == 0
    )
    assert HfApi().repo_info(repo).private
    loaded = APVVideoModel.from_pretrained(repo, revision="v1")
    ref = contextwm_reference(state, FRAMES, SIZES)
    assert_close(model_outputs(loaded, FRAMES)["post"], ref["post"], "post")
    card = Path(hf_hub_download(repo, "README.md", revision="v1")).read_text()
    assert "https://github.com/thuml/ContextWM" in card and "Licence of the source" in card


def test_model_card_conversion_commands_parse_and_push_where_the_card_says():
    import re
    import shlex

    from apv_hub.convert import build_parser

    cards = Path(__file__).resolve().parent.parent / "model_cards"
    for name in ("rlbench-99", "triped-walk"):
        text = (cards / f"{name}.md").read_text()
        blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
        [command] = [shlex.split(b.replace("\\\n", " ")) for b in blocks if "apv-convert" in b]
        args = build_parser().parse_args(command[1:])
        assert (args.format, args.push_to_hub) == ("apv-release", f"apv/{name}")


def test_a_converted_model_stacks_under_a_world_model_for_fine_tuning(tmp_path):
    from apv_hub import APVWorldModel, WorldModelConfig

    write_release_run(tmp_path / "run")
    video = convert_apv_release(tmp_path / "run", stoch=SIZES.stoch)
    world = APVWorldModel.from_video_model(video, WorldModelConfig(), action_dim=2)
    for name, tensor in video.rssm.state_dict().items():
        assert torch.equal(world.af_rssm.state_dict()[name], tensor), name
    assert world.rssm.gru.linear.bias is not None  # the config's GRU bias reaches both RSSMs
