"""Every request callback and protocol says what it is in words, from one place (its class's
``describe`` of its settings), and a recorded class path with its settings gives the same label."""

from __future__ import annotations

import pytest

from lightning_unlearn.callbacks.anchor import AnchorRegularizer
from lightning_unlearn.callbacks.base import configured_labels, is_recorder, label_of, recorded_label
from lightning_unlearn.callbacks.drift import DriftRecorder
from lightning_unlearn.callbacks.gradient_projection import GradientProjection
from lightning_unlearn.callbacks.inverse_ewc import InverseEWC
from lightning_unlearn.callbacks.replay import Replay
from lightning_unlearn.callbacks.selective_finetuning import SelectiveFineTuning
from lightning_unlearn.callbacks.trajectory import TrajectoryRegularizer
from lightning_unlearn.protocols import MergeSettings, SimultaneousSettings, protocol_label, recorded_protocol_label

LABELS = [
    (AnchorRegularizer(kind="l2", weight=705.0, reference="previous"), "L2 to previous, w=705"),
    (AnchorRegularizer(kind="l1", weight=0.016, reference="base"), "L1 to base, w=0.016"),
    (SelectiveFineTuning(top_k=0.05), "top-k 5%"),
    (GradientProjection(mode="update", similarity_threshold=0.3), "projection (update, cos ≥ 0.3)"),
    (GradientProjection(mode="gradient", similarity_threshold=None, top_n=3, protect_unlearned=False),
     "projection (gradient, 3 most similar, unlearned concepts not protected)"),
    (GradientProjection(mode="update", basis="reference_bank"), "projection (update, reference bank of 200)"),
    (GradientProjection(mode="update", basis="template"), "projection (update, cos ≥ 0.3, + template words)"),
    (InverseEWC(kind="l2", weight=1.6), "inverse-EWC L2, w=1.6, decay 0.7"),
    (TrajectoryRegularizer(kind="l1", weight=1.6, decay=0.5, temperature=2.0), "trajectory L1, w=1.6, decay 0.5, T=2"),
    (Replay(weight=1.0, batch=2, prompts="both"), "replay w=1, 2 prompts/step (concepts and pairs)"),
    (DriftRecorder(), "drift recorder"),
    (AnchorRegularizer(kind="l2", weight=1.6, name="anchor"), "anchor: L2 to previous, w=1.6"),
]


@pytest.mark.parametrize("callback, label", LABELS, ids=[label for _, label in LABELS])
def test_each_callback_labels_itself_and_its_recorded_settings_give_the_same_label(callback, label):
    assert callback.label == label
    entry = callback.run_info_entry()
    assert entry["label"] == label and recorded_label(entry) == label
    # What an older run folder's config.yaml records (class path, init_args) describes it alike.
    assert label_of(entry["class"], {**entry["settings"], "name": callback.name}) == label


def test_labels_from_a_config_fill_defaults_and_skip_what_is_no_request_callback():
    callbacks = [
        {"class_path": "lightning_unlearn.callbacks.selective_finetuning.SelectiveFineTuning"},  # defaults
        {"class_path": "lightning_unlearn.progress.StreamProgress"},
        {"class_path": "callbacks.drift.DriftRecorder"},  # an old class path: never imported
        {"class_path": "lightning_unlearn.callbacks.anchor.AnchorRegularizer", "init_args": {"weight": 705}},
    ]
    assert configured_labels(callbacks) == ["top-k 5%", "L2 to previous, w=705"]
    assert label_of("os.system", {}) == "system" and recorded_label("selft_0.05") == "selft_0.05"
    assert is_recorder({"class": "lightning_unlearn.callbacks.drift.DriftRecorder"}) and is_recorder("DriftRecorder")


def test_protocol_labels():
    assert protocol_label("sequential") == "sequential"
    assert protocol_label("independent", MergeSettings()) == "independent, merged: TIES λ=1.0, top 20%"
    assert MergeSettings(method="ties", lambda_=0.5, top_k=0.1, trim_scope="per_tensor").label == \
        "TIES λ=0.5, top 10%, top-k per tensor"
    assert MergeSettings(method="task_arithmetic", lambda_=0.3).label == "task arithmetic λ=0.3"
    assert MergeSettings(method="uniform").label == "uniform average"
    assert protocol_label("simultaneous", simultaneous=SimultaneousSettings()) == \
        "simultaneous, until UA ≥ 99 (checked every 50 steps, at most 1000)"
    # An older run.json: made from the recorded settings; a recorded label wins.
    assert recorded_protocol_label({"protocol": "independent", "merge": {"method": "uniform"}}) == \
        "independent, merged: uniform average"
    assert recorded_protocol_label({"protocol": "sequential", "protocol_label": "x"}) == "x"
    assert recorded_protocol_label({}) is None
