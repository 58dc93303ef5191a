"""Any folder of videos (mp4, webm, avi, mkv; searched recursively), original bytes kept.

python dataset_scripts/video_folder.py --root my_videos --out data/my_videos
"""

from apv_hub.data.cli import build_parser, run_build
from apv_hub.data.corpus import CorpusCard
from apv_hub.data.sources import VIDEO_EXTENSIONS, folder_items


def main(argv: list[str] | None = None) -> None:
    parser = build_parser(__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="folder to search")
    parser.add_argument("--source-name", default="folder", help="the source column's value")
    parser.add_argument("--extensions", nargs="+", default=list(VIDEO_EXTENSIONS))
    parser.add_argument("--description", default=None, help="what these videos are (card)")
    parser.add_argument("--license", default="other", help="Hub licence id for the card")
    args = parser.parse_args(argv)
    card = CorpusCard(
        pretty_name=f"Video folder: {args.source_name}",
        description=args.description
        or f"Every {'/'.join(args.extensions)} file under `{args.root}`; `task` is the file's "
        "folder relative to it, `key` its relative path. The original file bytes are stored.",
        license=args.license,
        license_note="The videos keep the licence of wherever they came from.",
    )
    run_build(args, folder_items(args.root, args.source_name, args.extensions), card)


if __name__ == "__main__":
    main()
