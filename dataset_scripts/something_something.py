"""Something-Something-v2: webm files plus a label JSON, as a reproducible random subset.

    python dataset_scripts/something_something.py --videos 20bn-something-something-v2 \
        --labels something-something-v2-train.json --count 1500 --seed 0 --out data/ssv2-1.5k
"""

from apv_hub.data.cli import build_parser, run_build
from apv_hub.data.corpus import CorpusCard
from apv_hub.data.sources import read_ssv2_annotations, select_ssv2, ssv2_items

DESCRIPTION = """Something-Something-v2 (Goyal et al., 2017): short webm clips of people doing
basic actions with everyday objects; the original webm bytes are kept. `label` is the class (the
template without brackets, one of 174), `episode` and `key` the video id. The subset is drawn
from the annotations sorted by id with the seed below, after any label filter."""


def main(argv: list[str] | None = None) -> None:
    parser = build_parser(__doc__.splitlines()[0])
    parser.add_argument("--videos", required=True, help="folder of <id>.webm files")
    parser.add_argument(
        "--labels", required=True, help="label JSON: a list of {id, label, template, placeholders}"
    )
    parser.add_argument(
        "--count",
        type=int,
        default=None,
        help="random subset size (the APV paper: 1500); default: all",
    )
    parser.add_argument(
        "--label",
        action="append",
        default=None,
        dest="classes",
        help="keep only this class (repeatable), e.g. 'Pushing something from left to right'",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random subset")
    args = parser.parse_args(argv)
    annotations = select_ssv2(
        read_ssv2_annotations(args.labels), args.count, args.classes, args.seed
    )
    card = CorpusCard(
        pretty_name="Something-Something-v2 subset",
        description=DESCRIPTION,
        license_note="Something-Something-v2 is distributed by Qualcomm under its own licence "
        "(research use; no redistribution): do not publish this corpus beyond those terms.",
    )
    run_build(args, ssv2_items(args.videos, annotations), card)


if __name__ == "__main__":
    main()
