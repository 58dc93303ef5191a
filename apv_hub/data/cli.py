"""What every builder script in ``dataset_scripts/`` shares: output and hub options, the run."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from apv_hub.data.corpus import (
    BuildResult,
    CorpusCard,
    SourceItem,
    build_corpus,
    push_corpus_to_hub,
)


def build_parser(description: str) -> argparse.ArgumentParser:
    """A parser with ``--out``, ``--min-frames``, ``--shard-videos``, ``--push-to-hub``, ..."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    out = parser.add_argument_group("output")
    out.add_argument("--out", required=True, help="corpus folder (re-running resumes it)")
    out.add_argument(
        "--min-frames",
        type=int,
        default=25,
        help="skip videos with fewer frames (25: one clip of the default length)",
    )
    out.add_argument("--shard-videos", type=int, default=200, help="videos per parquet shard")
    out.add_argument(
        "--push-to-hub",
        metavar="REPO_ID",
        help="upload the corpus to this Hub dataset repo when done",
    )
    out.add_argument("--private", action="store_true", help="create the Hub repo as private")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def run_build(
    args: argparse.Namespace,
    items: Sequence[SourceItem],
    card: CorpusCard,
    close: Callable[[], None] | None = None,
) -> BuildResult:
    """Build (or resume) the corpus, print the summary, push it if asked."""
    try:
        result = build_corpus(
            items,
            args.out,
            card,
            min_frames=args.min_frames,
            shard_videos=args.shard_videos,
            progress=not args.no_progress,
        )
    finally:
        if close is not None:
            close()
    print(result.summary())
    if args.push_to_hub:
        print(push_corpus_to_hub(args.out, args.push_to_hub, private=args.private or None))
    return result
