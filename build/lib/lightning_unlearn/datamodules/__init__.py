"""Lightning DataModules: rendered tiny-world images, and the stream of unlearning requests."""

if __name__ == "datamodules":
    # Reached only through the repository root on sys.path (an old class path such as
    # "datamodules.x.Y"): a second copy of these modules would fail the project's isinstance checks.
    raise ImportError("import lightning_unlearn.datamodules (class paths: lightning_unlearn.datamodules.<module>.<Class>), not datamodules")
