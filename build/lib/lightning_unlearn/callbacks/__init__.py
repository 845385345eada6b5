"""Lightning callbacks that plug into any unlearning stream (regularizers, drift, ...)."""

if __name__ == "callbacks":
    # Reached only through the repository root on sys.path (an old class path such as
    # "callbacks.x.Y"): a second copy of these modules would fail the project's isinstance checks.
    raise ImportError("import lightning_unlearn.callbacks (class paths: lightning_unlearn.callbacks.<module>.<Class>), not callbacks")
