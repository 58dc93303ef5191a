"""APV / ContextWM npz episode folders (e.g. the released RLBench and Triped-walk videos).

    python dataset_scripts/apv_npz.py --root triped_walk --source-name triped-walk \
        --out data/triped

Each <timestamp>-<uuid>-<length>.npz holds image [T, 64, 64, 3] uint8 and optionally reward [T]
and action [T, A]; they become the video and the per-frame columns.
"""

from apv_hub.data.cli import build_parser, run_build
from apv_hub.data.corpus import CorpusCard
from apv_hub.data.sources import NPZ_FPS, npz_items

DESCRIPTION = """Episodes in the npz format of DreamerV2, APV and ContextWM (one file per
episode, `image` uint8 [T, H, W, 3] plus `reward`, `is_first`, `is_last`, `is_terminal` and
sometimes `action`), encoded to H.264 mp4. `key` is the file's path relative to the root."""


def main(argv: list[str] | None = None) -> None:
    parser = build_parser(__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="folder of *.npz files (recursive)")
    parser.add_argument("--source-name", default="npz", help="the source column's value")
    parser.add_argument(
        "--task", default=None, help="the task column's value (default: each file's folder)"
    )
    parser.add_argument("--fps", type=float, default=NPZ_FPS)
    parser.add_argument("--crf", type=int, default=15, help="H.264 quality (lower: better)")
    args = parser.parse_args(argv)
    card = CorpusCard(
        pretty_name=f"npz episodes: {args.source_name}",
        description=DESCRIPTION,
        license_note="Released episode data keeps the terms of its release (APV: "
        "github.com/younggyoseo/apv; ContextWM: github.com/thuml/ContextWM).",
    )
    items = npz_items(args.root, args.source_name, args.task, args.fps, args.crf)
    run_build(args, items, card)


if __name__ == "__main__":
    main()
