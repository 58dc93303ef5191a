"""dm_control locomotion videos from a uniformly random policy.

    MUJOCO_GL=egl python dataset_scripts/dmc_random.py --tasks walker-walk quadruped-walk \
        --episodes 10 --out data/dmc
"""

from apv_hub.data.cli import build_parser, run_build
from apv_hub.data.corpus import CorpusCard
from apv_hub.data.rollouts import DMC_LOCOMOTION, dmc_items

DESCRIPTION = """Videos of DeepMind Control Suite tasks driven by a uniformly random policy,
rendered at 64x64 by MuJoCo (camera 2 for quadruped, 0 otherwise, as in APV and DreamerV2), one
frame per action of the action-repeated control. Frame 0 is the reset observation; `actions`
and `rewards` (summed over the repeat) are per frame, `actions[t]` leading to frame t."""


def main(argv: list[str] | None = None) -> None:
    parser = build_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--tasks", nargs="+", default=list(DMC_LOCOMOTION), help="<domain>-<task> names"
    )
    parser.add_argument("--episodes", type=int, default=10, help="episodes per task")
    parser.add_argument(
        "--max-steps",
        type=int,
        default=500,
        help="actions per episode (500 x repeat 2 = the 1000-step episode)",
    )
    parser.add_argument("--action-repeat", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="seeds every episode")
    parser.add_argument("--size", type=int, default=64, help="frame height and width")
    parser.add_argument("--crf", type=int, default=15, help="H.264 quality (lower: better)")
    args = parser.parse_args(argv)
    items = dmc_items(
        args.tasks,
        args.episodes,
        args.max_steps,
        args.seed,
        args.action_repeat,
        args.size,
        args.crf,
    )
    card = CorpusCard(
        pretty_name="dm_control random-policy videos",
        description=DESCRIPTION,
        license="apache-2.0",
        license_note="dm_control is released under the Apache 2.0 licence; these videos were "
        "rendered from it by apv-hub.",
    )
    run_build(args, items, card)


if __name__ == "__main__":
    main()
