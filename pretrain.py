"""Pre-train an APV video model: ``python pretrain.py --help`` (also ``accelerate launch``)."""

import sys

from apv_hub.training.commands import pretrain_main

if __name__ == "__main__":
    sys.exit(pretrain_main())
