"""Builders on fixtures in each source's native layout, bad input, resume, the Hub round trip."""

from __future__ import annotations

import hashlib
import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

from apv_hub.data import (
    ClipDataset,
    CorpusCard,
    SourceItem,
    build_corpus,
    load_video_corpus,
    push_corpus_to_hub,
)
from apv_hub.data.sources import folder_items, npz_items, rlbench_items, select_ssv2, ssv2_items
from apv_hub.data.video import VideoError
from tests.data_helpers import (
    CODEC_TOLERANCE,
    nearest_frames,
    ramp_frames,
    write_png_folder,
    write_video,
)

CARD = CorpusCard(pretty_name="fixture", description="test fixture", command="pytest")
SCRIPTS = Path(__file__).resolve().parent.parent / "dataset_scripts"


def assert_clips_match(corpus, sources: dict[str, np.ndarray], length: int = 6, stride: int = 2):
    """Clips from the corpus are the source frames [start::stride] within codec tolerance."""
    height, width = next(iter(sources.values())).shape[1:3]
    clips = ClipDataset(
        corpus, length=length, stride=stride, size=(height, width), seed=3, num_clips=8
    )
    keys = corpus["key"]
    seen = set()
    for i in range(8):
        item = clips[i]
        source = sources[keys[item["row"]]]
        decoded = item["frames"].numpy().transpose(0, 2, 3, 1)
        best, err = nearest_frames(decoded, source)
        expected = item["start"] + stride * np.arange(length)
        np.testing.assert_array_equal(best, expected)
        assert err.max() < CODEC_TOLERANCE
        seen.add(item["row"])
    assert len(seen) > 1


def test_folder_builder_keeps_bytes_decodes_containers_and_skips_bad_files(tmp_path):
    root = tmp_path / "videos"
    frames = ramp_frames(30)
    good = {
        "a.mp4": write_video(root / "a.mp4", frames),
        "sub/b.webm": write_video(root / "sub/b.webm", frames, "libvpx"),
        "sub/c.avi": write_video(root / "sub/c.avi", frames, "mpeg4"),
        "sub/deep/d.mkv": write_video(root / "sub/deep/d.mkv", frames, "libvpx-vp9"),
        # Variable frame rate: gaps of 50 and 150 ms.
        "vfr.mkv": write_video(
            root / "vfr.mkv",
            frames,
            pts_ms=[int(t) for t in np.cumsum([0] + [50, 150] * 14 + [50])],
        ),
    }
    gray = write_video(root / "gray.mp4", frames, pix_fmt="gray")
    odd = write_video(root / "odd.mp4", ramp_frames(30, 47, 63), pix_fmt="yuv444p")
    (root / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    (root / "empty.webm").write_bytes(b"")
    truncated = write_video(tmp_path / "t.avi", frames, "mpeg4").read_bytes()
    (root / "truncated.avi").write_bytes(truncated[: len(truncated) // 2])
    write_video(root / "short.mp4", frames[:5])
    (root / "notes.txt").write_text("not a video")

    result = build_corpus(folder_items(root), tmp_path / "corpus", CARD, min_frames=10)

    assert result.added == 7
    assert result.skipped.total == 4
    assert result.skipped.counts == {"cannot open": 2, "empty file": 1, "too short": 1}
    corpus = load_video_corpus(tmp_path / "corpus")
    rows = {r["key"]: r for r in corpus}
    assert set(rows) == {*good, "gray.mp4", "odd.mp4"}
    for key, path in {**good, "gray.mp4": gray, "odd.mp4": odd}.items():
        assert rows[key]["video"] == path.read_bytes(), key
        assert rows[key]["num_frames"] == 30
        assert rows[key]["format"] == path.suffix[1:]
    assert rows["sub/deep/d.mkv"]["task"] == "sub/deep"
    assert (rows["odd.mp4"]["height"], rows["odd.mp4"]["width"]) == (47, 63)
    card = (tmp_path / "corpus" / "README.md").read_text()
    assert card.startswith("---\n") and "- Videos: 7" in card and "4 videos skipped" in card
    # Grayscale decodes to three equal channels; odd sizes and every container give clips.
    gray_clip = ClipDataset(
        corpus.filter(lambda r: r["key"] == "gray.mp4"), length=4, size=(48, 64)
    )[0]["frames"].int()
    assert (gray_clip[:, 0] - gray_clip[:, 1]).abs().max() <= 2
    odd_clip = ClipDataset(corpus.filter(lambda r: r["key"] == "odd.mp4"), length=4, size=32)
    assert odd_clip[0]["frames"].shape == (4, 3, 32, 32)
    colour = corpus.filter(lambda r: r["key"] in good)
    assert_clips_match(colour, dict.fromkeys(good, frames))


def test_rlbench_builder_reads_native_layout_with_camera_subset(tmp_path):
    root = tmp_path / "rlbench"
    sources = {}
    for task in ("open_drawer", "reach_target"):
        for episode in range(2):
            for c, camera in enumerate(("front_rgb", "wrist_rgb", "overhead_rgb")):
                frames = ramp_frames(12 + episode, seed=episode * 10 + c)
                folder = root / task / "variation0" / "episodes" / f"episode{episode}" / camera
                write_png_folder(folder, frames)
                sources[f"{task}/variation0/episode{episode}/{camera}"] = frames
    # A grayscale camera and an episode with an unreadable frame.
    gray = ramp_frames(12, seed=99)
    write_png_folder(root / "open_drawer/variation1/episodes/episode0/front_rgb", gray, "L")
    write_png_folder(root / "open_drawer/variation1/episodes/episode0/wrist_rgb", gray)
    (root / "open_drawer/variation1/episodes/episode0/wrist_rgb/5.png").write_bytes(b"broken")

    items = rlbench_items(root, cameras=["front_rgb", "wrist_rgb"])
    result = build_corpus(items, tmp_path / "corpus", CARD)

    assert result.added == 9 and result.skipped.counts == {"unreadable frame": 1}
    corpus = load_video_corpus(tmp_path / "corpus")
    assert set(corpus["camera"]) == {"front_rgb", "wrist_rgb"}
    row = corpus.filter(lambda r: r["key"] == "reach_target/variation0/episode1/wrist_rgb")[0]
    assert (row["task"], row["camera"], row["episode"], row["source"]) == (
        "reach_target",
        "wrist_rgb",
        1,
        "rlbench",
    )
    assert row["num_frames"] == 13
    colour = corpus.filter(lambda r: "variation0" in r["key"])
    assert_clips_match(colour, sources, length=5)
    with pytest.raises(ValueError, match="unknown RLBench camera"):
        rlbench_items(root, cameras=["front_depth"])


def test_npz_builder_keeps_rewards_and_actions(tmp_path):
    root = tmp_path / "npz"
    root.mkdir()
    sources, rewards, actions = {}, {}, {}
    rng = np.random.default_rng(0)
    for i in range(3):
        n = 20 + i
        name = f"20220101T00000{i}-{i:032x}-{n}.npz"
        sources[name] = ramp_frames(n, 64, 64, seed=i)
        rewards[name] = rng.normal(size=n).astype(np.float32)
        actions[name] = rng.uniform(-1, 1, size=(n, 4)).astype(np.float32)
        flags = np.zeros(n, bool)
        np.savez(
            root / name,
            image=sources[name],
            reward=rewards[name],
            action=actions[name],
            is_first=flags,
            is_last=flags,
            is_terminal=flags,
        )
    np.savez(root / "gray-0-20.npz", image=ramp_frames(20, 64, 64)[..., 0])
    np.savez(root / "noimage-0-20.npz", reward=np.zeros(20))
    (root / "corrupt-0-20.npz").write_bytes(b"PK\x03\x04 not a zip")

    result = build_corpus(npz_items(root, source="triped-walk"), tmp_path / "corpus", CARD)

    assert result.added == 4
    assert result.skipped.counts == {"no image key": 1, "unreadable npz": 1}
    corpus = load_video_corpus(tmp_path / "corpus")
    for row in corpus.filter(lambda r: r["key"] in sources):
        np.testing.assert_array_equal(np.asarray(row["rewards"], np.float32), rewards[row["key"]])
        np.testing.assert_array_equal(np.asarray(row["actions"], np.float32), actions[row["key"]])
        assert row["source"] == "triped-walk"
    assert corpus.filter(lambda r: r["key"] == "gray-0-20.npz")[0]["actions"] is None
    assert_clips_match(corpus.filter(lambda r: r["key"] in sources), sources)


def _ssv2_fixture(root: Path) -> tuple[list[dict], dict[str, np.ndarray]]:
    classes = ["Pushing [something] from left to right", "Opening [something]", "Holding [x]"]
    annotations, sources = [], {}
    for i in range(9):
        vid = str(1000 + i)
        template = classes[i % 3]
        annotations.append(
            {"id": vid, "label": template.lower(), "template": template, "placeholders": ["x"]}
        )
        if i != 5:  # the annotation of video 1005 has no file
            sources[vid] = ramp_frames(16 + i, seed=i)
            write_video(root / f"{vid}.webm", sources[vid], "libvpx", fps=12)
    return annotations, sources


def test_something_something_builder_subsets_reproducibly(tmp_path):
    annotations, sources = _ssv2_fixture(tmp_path / "webm")
    labels_json = tmp_path / "train.json"
    labels_json.write_text(json.dumps(annotations))

    subset = select_ssv2(annotations, count=5, seed=7)
    assert [a["id"] for a in subset] == [a["id"] for a in select_ssv2(annotations, 5, seed=7)]
    assert len({a["id"] for a in subset}) == 5
    pushing = select_ssv2(annotations, labels=["Pushing something from left to right"])
    assert [a["id"] for a in pushing] == ["1000", "1003", "1006"]

    result = build_corpus(ssv2_items(tmp_path / "webm", annotations), tmp_path / "c", CARD)
    assert result.added == 8 and result.skipped.counts == {"missing file": 1}
    corpus = load_video_corpus(tmp_path / "c")
    row = corpus.filter(lambda r: r["key"] == "1003")[0]
    assert row["label"] == "Pushing something from left to right" and row["episode"] == 1003
    assert row["video"] == (tmp_path / "webm" / "1003.webm").read_bytes()
    assert_clips_match(corpus, sources, length=5)

    # The script: a label filter plus a count, straight from the command line.
    _run_script(
        "something_something.py",
        "--videos",
        str(tmp_path / "webm"),
        "--labels",
        str(labels_json),
        "--label",
        "Opening something",
        "--count",
        "2",
        "--seed",
        "1",
        "--min-frames",
        "1",
        "--no-progress",
        "--out",
        str(tmp_path / "s"),
    )
    scripted = load_video_corpus(tmp_path / "s")
    assert len(scripted) == 2 and set(scripted["label"]) == {"Opening something"}
    assert "--count 2" in (tmp_path / "s" / "README.md").read_text()


def _run_script(name: str, *args: str) -> None:
    argv = sys.argv
    sys.argv = [str(SCRIPTS / name), *args]
    try:
        runpy.run_path(str(SCRIPTS / name), run_name="__main__")
    finally:
        sys.argv = argv


@pytest.mark.parametrize("script", sorted(p.name for p in SCRIPTS.glob("*.py")))
def test_every_script_has_help(script, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _run_script(script, "--help")
    assert exit_info.value.code == 0
    assert "--push-to-hub" in capsys.readouterr().out


def test_interrupted_build_resumes_without_duplicates_or_losses(tmp_path):
    root = tmp_path / "npz"
    root.mkdir()
    for i in range(7):
        np.savez(root / f"ep{i}.npz", image=ramp_frames(10, 32, 32, seed=i))
    items = npz_items(root)
    loads: list[str] = []

    def counted(item: SourceItem, interrupt: bool = False) -> SourceItem:
        def load():
            if interrupt:
                raise KeyboardInterrupt
            loads.append(item.key)
            return item.load()

        return SourceItem(item.key, load)

    out = tmp_path / "corpus"
    with pytest.raises(KeyboardInterrupt):
        build_corpus([counted(it, i == 3) for i, it in enumerate(items)], out, CARD, shard_videos=2)
    assert sorted(load_video_corpus(out)["key"]) == ["ep0.npz", "ep1.npz", "ep2.npz"]
    # A shard left half-written by a killed process is not part of the corpus.
    (out / "data" / "train-00009.tmp").write_bytes(b"partial")

    loads.clear()
    result = build_corpus([counted(it) for it in items], out, CARD, shard_videos=2)

    assert loads == ["ep3.npz", "ep4.npz", "ep5.npz", "ep6.npz"]
    assert (result.added, result.already_present) == (4, 3)
    keys = load_video_corpus(out)["key"]
    assert sorted(keys) == [f"ep{i}.npz" for i in range(7)]
    assert not list((out / "data").glob("*.tmp"))
    with pytest.raises(ValueError, match="duplicate item keys"):
        build_corpus([items[0], items[0]], out, CARD)


def test_record_rejects_per_frame_columns_of_wrong_length(tmp_path):
    from apv_hub.data import VideoRecord

    with pytest.raises(VideoError, match="rewards has 3 entries for 10 frames"):
        VideoRecord.from_frames(
            "k", ramp_frames(10, 32, 32), 10.0, "test", rewards=np.zeros(3, np.float32)
        )


def test_push_to_hub_and_load_back_by_repo_id_from_fresh_cache(tmp_path, local_hub, run_python):
    root = tmp_path / "npz"
    root.mkdir()
    for i in range(3):
        np.savez(root / f"ep{i}.npz", image=ramp_frames(12, 32, 32, seed=i))
    build_corpus(npz_items(root), tmp_path / "corpus", CARD, shard_videos=2)
    local = load_video_corpus(tmp_path / "corpus")
    digests = {r["key"]: hashlib.sha256(r["video"]).hexdigest() for r in local}

    push_corpus_to_hub(tmp_path / "corpus", "apv/fixture-corpus")

    code = """
import hashlib, json
import datasets
from apv_hub.data import ClipDataset, load_video_corpus
corpus = load_video_corpus("apv/fixture-corpus")
clip = ClipDataset(corpus, length=4, size=32)[0]["frames"]
plain = datasets.load_dataset("apv/fixture-corpus", split="train")
print(json.dumps({"digests": {r["key"]: hashlib.sha256(r["video"]).hexdigest() for r in corpus},
                  "clip": list(clip.shape), "plain": sorted(plain["key"])}))
"""
    proc = run_python(code, env={"HF_HOME": str(tmp_path / "fresh-hf-home")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["digests"] == digests
    assert out["clip"] == [4, 3, 32, 32]
    assert out["plain"] == sorted(digests)
