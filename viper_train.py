"""Train a VIPER reward model: ``python viper_train.py --help`` (also ``accelerate launch``)."""

import sys

from apv_hub.training.commands import viper_train_main

if __name__ == "__main__":
    sys.exit(viper_train_main())
