import math

import torch
import pytest

from lightning_unlearn.cli import main  # noqa: F401  (imports Lightning at collection: its log handler binds the session's stderr)
from lightning_unlearn.errors import SettingsError
from lightning_unlearn.evaluation import UnlearningScores, score
from lightning_unlearn.intervals import mean_of_proportions, wilson
from lightning_unlearn.requests import ConceptVocabulary, Request

VOCAB = ConceptVocabulary(styles=["A", "B", "C"], objects=["x", "y"])


def _counts(style_ok, object_ok):
    """One image per (style, object) cell; hits given as 3x2 0/1 lists."""
    metric = UnlearningScores(3, 2)
    s = torch.tensor([0, 0, 1, 1, 2, 2])
    o = torch.tensor([0, 1, 0, 1, 0, 1])
    sp = torch.where(torch.tensor(style_ok).flatten().bool(), s, (s + 1) % 3)
    op = torch.where(torch.tensor(object_ok).flatten().bool(), o, 1 - o)
    metric.update(sp, op, s, o)
    return metric.compute()


def test_ua_ira_cra_on_hand_made_counts():
    counts = _counts([[0, 1], [1, 1], [1, 0]], [[1, 1], [1, 0], [0, 1]])
    m = score(counts, VOCAB, [Request("A", "style")], {"style"})
    assert m["UA"] == 50.0  # A's images: one of two still classified as A
    assert m["UA_latest"] == 50.0
    assert m["IRA"] == 75.0  # B and C rows: 3 of 4 style hits
    assert m["CRA"] == 50.0  # B and C rows: 2 of 4 object hits
    m2 = score(counts, VOCAB, [Request("A", "style"), Request("C", "style")], {"style"})
    assert m2["UA"] == 50.0 and m2["UA_latest"] == 50.0
    assert m2["IRA"] == 100.0 and m2["CRA"] == 50.0
    assert m2["per_style"] == {"A": 50.0, "B": 100.0, "C": 50.0}


def test_base_row_and_object_stream():
    counts = _counts([[1, 1], [1, 1], [1, 1]], [[1, 0], [1, 0], [1, 0]])
    base = score(counts, VOCAB, [], {"object"})
    assert math.isnan(base["UA"]) and base["IRA"] == 50.0 and base["CRA"] == 100.0
    m = score(counts, VOCAB, [Request("y", "object")], {"object"})
    assert m["UA"] == 100.0 and m["IRA"] == 100.0 and m["CRA"] == 100.0


def test_every_headline_metric_carries_its_95_percent_interval_from_the_counts():
    counts = _counts([[0, 1], [1, 1], [1, 0]], [[1, 1], [1, 0], [0, 1]])
    m = score(counts, VOCAB, [Request("A", "style")], {"style"})
    # UA: 1 miss of 2 images (Wilson of the misses); IRA: 3 of 4 style hits; CRA: 2 of 4 object hits.
    assert (m["UA_lo"], m["UA_hi"]) == wilson(1, 2)
    assert (m["IRA_lo"], m["IRA_hi"]) == wilson(3, 4) and (m["CRA_lo"], m["CRA_hi"]) == wilson(2, 4)
    assert (m["style_acc_lo"], m["style_acc_hi"]) == wilson(4, 6)
    assert m["UA_lo"] <= m["UA"] <= m["UA_hi"]
    base = score(counts, VOCAB, [], {"style"})
    assert all(math.isnan(base[k]) for k in ("UA", "UA_lo", "UA_hi", "UA_latest_lo"))
    # Extra entries in the counts (another engineer's class histogram) are ignored.
    assert score({**counts, "style_pred_hist": torch.ones(3)}, VOCAB, [Request("A", "style")], {"style"}) == m


def test_a_mixed_stream_gets_the_mean_of_both_kinds_wilson_bounds_on_ira():
    counts = _counts([[0, 1], [1, 1], [1, 0]], [[1, 1], [1, 0], [0, 1]])
    erased = [Request("A", "style"), Request("y", "object")]
    m = score(counts, VOCAB, erased, {"style", "object"})
    assert m["IRA"] == 75.0  # B-x, C-x: style 2 of 2, object 1 of 2
    assert (m["IRA_lo"], m["IRA_hi"]) == mean_of_proportions([2, 1], 2)
    assert m["IRA_lo"] < m["IRA"] < m["IRA_hi"]  # one image per cell still gives a width
    assert math.isnan(m["CRA"]) and math.isnan(m["CRA_lo"])
    assert math.isnan(m["CRA"]) and math.isnan(m["CRA_lo"])


def test_vocabulary_subset_selects_classifier_columns_by_name():
    import pytest
    from torch import nn

    from lightning_unlearn.evaluation import VocabularySubset

    class Fixed(nn.Module):
        def forward(self, images):
            n = images.shape[0]
            return torch.arange(4.0).expand(n, 4), torch.tensor([5.0, 0.0, 1.0]).expand(n, 3)

    vocab = ConceptVocabulary(styles=["d", "b"], objects=["z", "x"])
    sub = VocabularySubset(Fixed(), ["a", "b", "c", "d"], ["x", "y", "z"], vocab)
    s, o = sub(torch.zeros(2, 3, 4, 4))
    assert s[0].tolist() == [3.0, 1.0] and o[0].tolist() == [1.0, 5.0]
    with pytest.raises(SettingsError, match="--data.styles names 'q', which the classifier does not know"):
        VocabularySubset(Fixed(), ["a"], ["x"], ConceptVocabulary(styles=["q"], objects=["x"]))


def test_a_clip_classifier_with_pickled_weights_is_refused_before_any_file(tiny_clip_folder, tmp_path, cli_error):
    import shutil

    import pytest

    from lightning_unlearn.backbone import ModelPathError
    from lightning_unlearn.evaluation import ClipZeroShotClassifier, EvaluationSettings

    # As transformers < 5 saved it with safe_serialization=False: pytorch_model.bin, no model.safetensors.
    pickled = tmp_path / "clip-bin"
    shutil.copytree(tiny_clip_folder, pickled)
    (pickled / "model.safetensors").unlink()
    torch.save({"logit_scale": torch.zeros(())}, pickled / "pytorch_model.bin")
    with pytest.raises(ModelPathError, match=r"pytorch_model\.bin is a pickled checkpoint .* never unpickled; convert"):
        EvaluationSettings(classifier=str(pickled))
    with pytest.raises(ModelPathError, match="never unpickled"):
        ClipZeroShotClassifier(pickled, VOCAB)
    with pytest.raises(ModelPathError, match="does not exist"):
        EvaluationSettings(classifier=str(tmp_path / "nowhere"))
    run = tmp_path / "run"
    line = cli_error(["unlearn", "--config", "configs/tinyworld/esd_styles_sequential.yaml", f"--stream.run_dir={run}",
                      f"--stream.evaluation.classifier={pickled}", "--data.requests=[Van Gogh]"])
    assert str(pickled / "pytorch_model.bin") in line and "convert it once" in line
    assert not run.exists()
    # The safetensors folder itself still loads.
    assert ClipZeroShotClassifier(tiny_clip_folder, VOCAB)(torch.zeros(1, 3, 16, 16))[0].shape == (1, 3)


def _grid_counts(num_styles: int, num_objects: int, object_pred) -> dict:
    """Counts of one image per (style, object) cell, the style head always right and the object
    head predicting ``object_pred(style, object)``."""
    from lightning_unlearn.evaluation import UnlearningScores

    metric = UnlearningScores(num_styles, num_objects, sync_on_compute=False)
    style = torch.arange(num_styles).repeat_interleave(num_objects)
    obj = torch.arange(num_objects).repeat(num_styles)
    metric.update(style, torch.tensor([object_pred(s, o) for s, o in zip(style.tolist(), obj.tolist())]), style, obj)
    return metric.compute()


def test_a_checkpoint_drawing_one_object_for_every_prompt_is_flagged_collapsed():
    from lightning_unlearn.evaluation import score
    from lightning_unlearn.requests import ConceptVocabulary, Request

    vocabulary = ConceptVocabulary(styles=[f"s{i}" for i in range(4)], objects=[f"o{i}" for i in range(12)])
    erased = [Request("o0", "object")]
    heart = 3
    collapsed = score(_grid_counts(4, 12, lambda s, o: heart), vocabulary, erased, {"object"})
    # Every object but "heart" at 0% and UA high: UA means nothing here, and the row says so.
    assert collapsed["UA"] == 100.0 and collapsed["object_top_share"] == 1.0 and collapsed["object_entropy"] == 0.0
    assert collapsed["collapsed"] is True and collapsed["style_top_share"] == 0.25
    healthy = score(_grid_counts(4, 12, lambda s, o: o), vocabulary, erased, {"object"})
    assert healthy["collapsed"] is False and healthy["object_top_share"] == pytest.approx(1 / 11)
    assert healthy["object_entropy"] == pytest.approx(math.log(11) / math.log(12))
    # A collapsed head of the other kind does not void UA of the erased kind.
    assert score(_grid_counts(4, 12, lambda s, o: heart), vocabulary, [Request("s0", "style")], {"style"})["collapsed"] is False


def test_few_retained_classes_are_not_mistaken_for_a_collapse_and_old_counts_are_not_measured():
    from lightning_unlearn.evaluation import score
    from lightning_unlearn.requests import ConceptVocabulary, Request

    vocabulary = ConceptVocabulary(styles=["a", "b"], objects=["x", "y", "z"])
    # Two objects left: a correct model already puts half of the images in each.
    counts = _grid_counts(2, 3, lambda s, o: o)
    assert score(counts, vocabulary, [Request("x", "object")], {"object"})["collapsed"] is False
    old = {k: counts[k] for k in ("style_hits", "object_hits", "count")}  # an evaluation cache of format 1
    scored = score(old, vocabulary, [Request("x", "object")], {"object"})
    assert scored["collapsed"] is None and math.isnan(scored["object_top_share"])
