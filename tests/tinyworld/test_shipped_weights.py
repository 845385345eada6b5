"""The shipped tiny-world weights do what their cards claim."""

import json

import torch

from datamodules.tinyworld_images import HeldOutImages
from lightning_unlearn.evaluation import EvaluationSettings, Evaluator, score
from lightning_unlearn.tinyworld.backbone import TINY_WEIGHTS_DIR, TinyWorldBackbone
from lightning_unlearn.tinyworld.classifier import TinyWorldClassifier
from lightning_unlearn.tinyworld.concepts import tiny_vocabulary


def test_classifier_reads_held_out_renders():
    clf = TinyWorldClassifier.load()
    hits_s = hits_o = n = 0
    for batch in HeldOutImages(batch_size=128, num_batches=4, seed=99):
        s_logits, o_logits = clf(batch["image"])
        hits_s += int((s_logits.argmax(1) == batch["style"]).sum())
        hits_o += int((o_logits.argmax(1) == batch["object"]).sum())
        n += len(batch["style"])
    assert hits_s / n >= 0.98 and hits_o / n >= 0.98


def test_base_unet_samples_are_recognised_as_the_card_says():
    card = json.loads((TINY_WEIGHTS_DIR / "tiny_unet.json").read_text())
    backbone = TinyWorldBackbone()
    settings = EvaluationSettings(steps=card["sample_accuracy"]["ddim_steps"], guidance=card["sample_accuracy"]["guidance"])
    evaluator = Evaluator(backbone, TinyWorldClassifier.load(), tiny_vocabulary(), settings)
    torch.manual_seed(0)
    metrics = score(evaluator.counts(evaluator.sample(backbone.unet)), tiny_vocabulary(), [], {"style"})
    assert metrics["style_acc"] >= 90.0 and metrics["object_acc"] >= 90.0
    assert card["sample_accuracy"]["sample_style_acc"] >= 0.9 and card["sample_accuracy"]["sample_object_acc"] >= 0.9
