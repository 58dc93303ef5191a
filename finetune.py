"""Fine-tune an APV agent: ``accelerate launch finetune.py --pretrained ... --env ... --out ...``.

A thin entry point over `apv_hub.training.commands.finetune_main` (also installed as
``apv-finetune``); ``python finetune.py --help`` lists every option.
"""

import sys

from apv_hub.training.commands import finetune_main

if __name__ == "__main__":
    sys.exit(finetune_main())
