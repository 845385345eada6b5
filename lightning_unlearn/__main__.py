"""``python -m lightning_unlearn SUBCOMMAND ...``: the command line of the checkout's ``train.py``
and of the ``lightning-unlearn`` console script, for any install. The study runner starts its
runs this way, so that they need neither the checkout nor a console script on PATH."""

from lightning_unlearn.cli import main

if __name__ == "__main__":
    main()
