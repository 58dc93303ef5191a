"""Pre-train an APV video model: ``python pretrain.py --help`` (also ``accelerate launch``)."""

from apv_hub.training.pretrain import main

if __name__ == "__main__":
    main()
