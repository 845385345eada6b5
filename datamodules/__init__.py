"""Lightning DataModules: rendered tiny-world images, and the stream of unlearning requests."""
