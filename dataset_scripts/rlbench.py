"""RLBench demonstrations in RLBench's own folder layout (PNG frames per camera per episode).

    python dataset_scripts/rlbench.py --root rlbench_data --cameras front_rgb wrist_rgb \
        --out data/rlbench

Layout read: <root>/<task>/variation<N>/episodes/episode<M>/<camera>/<i>.png
"""

from apv_hub.data.cli import build_parser, run_build
from apv_hub.data.corpus import CorpusCard
from apv_hub.data.sources import RLBENCH_CAMERAS, RLBENCH_FPS, rlbench_items

DESCRIPTION = """RLBench (James et al., 2020) demonstrations as written by RLBench's dataset
generator, one video per task, variation, episode and camera, encoded to H.264 mp4 from the PNG
frames. `key` is `<task>/variation<N>/episode<M>/<camera>`."""


def main(argv: list[str] | None = None) -> None:
    parser = build_parser(__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="RLBench dataset folder")
    parser.add_argument(
        "--cameras",
        nargs="+",
        default=list(RLBENCH_CAMERAS),
        choices=RLBENCH_CAMERAS,
        help="cameras to keep",
    )
    parser.add_argument("--tasks", nargs="+", default=None, help="task folders (default: all)")
    parser.add_argument("--fps", type=float, default=RLBENCH_FPS)
    parser.add_argument("--crf", type=int, default=15, help="H.264 quality (lower: better)")
    args = parser.parse_args(argv)
    card = CorpusCard(
        pretty_name="RLBench demonstration videos",
        description=DESCRIPTION,
        license_note="RLBench and the CoppeliaSim scenes it renders come with their own terms "
        "(see github.com/stepjam/RLBench); check them before sharing this corpus.",
    )
    run_build(args, rlbench_items(args.root, args.cameras, args.tasks, args.fps, args.crf), card)


if __name__ == "__main__":
    main()
