"""lightning-unlearn entry point: ``python train.py {pretrain,unlearn} --config CONFIG [--help]``."""

from lightning_unlearn.cli import main

if __name__ == "__main__":
    main()
