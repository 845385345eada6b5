"""Lightning callbacks that plug into any unlearning stream (regularizers, drift, ...)."""
