"""Video corpora as Hugging Face datasets, decoded with decord (or PyAV), and random clips for
training.

- ``corpus``: the schema (FEATURES), the resumable builder (build_corpus), the dataset card,
  ``load_video_corpus`` (folder or Hub repo id), ``push_corpus_to_hub``, the shipped sample.
- ``sources``: folders of videos, RLBench, APV/ContextWM npz, Something-Something-v2.
- ``rollouts``: Meta-world scripted policies and dm_control random policies, rendered.
- ``clips``: ClipDataset, seeded map-style clips over a weighted mixture of corpora, and
  StreamingClipDataset, clips from streamed corpora that do not fit on disk.
"""

from apv_hub.data.clips import ClipDataset, StreamingClipDataset
from apv_hub.data.corpus import (
    FEATURES,
    BuildResult,
    CorpusCard,
    SourceItem,
    VideoRecord,
    build_corpus,
    load_video_corpus,
    push_corpus_to_hub,
    sample_corpus_path,
)
from apv_hub.data.report import SkipReport
from apv_hub.data.video import VideoError, VideoInfo, decode_frames, encode_video, probe_video

__all__ = [
    "FEATURES",
    "BuildResult",
    "ClipDataset",
    "CorpusCard",
    "SkipReport",
    "SourceItem",
    "StreamingClipDataset",
    "VideoError",
    "VideoInfo",
    "VideoRecord",
    "build_corpus",
    "decode_frames",
    "encode_video",
    "load_video_corpus",
    "probe_video",
    "push_corpus_to_hub",
    "sample_corpus_path",
]
