"""Pretraining recipes: the LightningModules that train a world's models from scratch.

Kept apart from the worlds they train (``lightning_unlearn.tinyworld`` holds the models and
their loaders only), so unlearning never imports training recipes and a new world's recipes
have an obvious home. ``python train.py pretrain --config configs/tinyworld/pretrain.yaml``
(``tiny_unet.TinyUNetPretraining``) and ``.../pretrain_classifier.yaml``
(``classifier.ClassifierPretraining``); their data is ``lightning_unlearn.datamodules.tinyworld_images``.
"""
