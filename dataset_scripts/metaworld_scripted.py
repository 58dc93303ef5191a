"""Meta-world videos from the scripted policies, rendered by the real environment.

    MUJOCO_GL=egl python dataset_scripts/metaworld_scripted.py --tasks drawer-open-v3 reach-v3 \
        --episodes 10 --out data/metaworld
"""

from apv_hub.data.cli import build_parser, run_build
from apv_hub.data.corpus import CorpusCard
from apv_hub.data.rollouts import metaworld_items, metaworld_tasks

DESCRIPTION = """Videos of Meta-world (v3, MT1) tasks solved by the scripted expert policies that
ship with the `metaworld` package, rendered by MuJoCo from the `corner` camera (flipped upright).
Each episode draws one of MT1's 50 object/goal variations. Frame 0 is the reset observation; the
`actions` (4-dim end-effector deltas and gripper), `rewards` and `success` columns are per frame,
with `actions[t]` the action that led to frame t."""


def main(argv: list[str] | None = None) -> None:
    parser = build_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--tasks",
        nargs="+",
        required=True,
        help="Meta-world task names (e.g. reach-v3), or MT50 for all of them",
    )
    parser.add_argument("--episodes", type=int, default=10, help="episodes per task")
    parser.add_argument("--max-steps", type=int, default=500, help="steps per episode")
    parser.add_argument("--seed", type=int, default=0, help="seeds every episode")
    parser.add_argument("--size", type=int, default=64, help="frame height and width")
    parser.add_argument(
        "--action-noise",
        type=float,
        default=0.0,
        help="std of Gaussian noise added to the scripted actions",
    )
    parser.add_argument("--crf", type=int, default=15, help="H.264 quality (lower: better)")
    args = parser.parse_args(argv)
    items, close = metaworld_items(
        metaworld_tasks(args.tasks),
        args.episodes,
        args.max_steps,
        args.seed,
        args.size,
        args.action_noise,
        args.crf,
    )
    card = CorpusCard(
        pretty_name="Meta-world scripted-policy videos",
        description=DESCRIPTION,
        license="mit",
        license_note="Meta-world is released under the MIT licence; these videos were rendered "
        "from it by apv-hub and carry the same terms.",
    )
    run_build(args, items, card, close)


if __name__ == "__main__":
    main()
