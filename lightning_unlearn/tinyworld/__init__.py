"""The tiny world: its concepts, renderer, text encoder, UNet, backbone and classifier.

It builds on the generic modules (``backbone``, ``prompts``, ``requests``) and nothing generic
imports it; the layers that choose a world (the unlearning module, the stream and CLI, the
datamodules) do. Its pretraining recipes live in ``lightning_unlearn.pretraining``.
"""
