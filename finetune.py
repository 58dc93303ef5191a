"""Fine-tune an APV agent: ``accelerate launch finetune.py --pretrained ... --env ... --out ...``.

A thin entry point over `apv_hub.training.finetune.main` (also installed as ``apv-finetune``);
``python finetune.py --help`` lists every option.
"""

from apv_hub.training.finetune import main

if __name__ == "__main__":
    main()
