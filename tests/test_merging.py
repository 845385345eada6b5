"""Model merging on hand-made task vectors, checked against results worked out by hand."""

import pytest
import torch

from lightning_unlearn.errors import SettingsError
from lightning_unlearn.merging import merge_task_arithmetic, merge_ties, merge_uniform, task_vectors, trim_top_k
from lightning_unlearn.protocols import MergeSettings

BASE = {"w": torch.tensor([1.0, 1.0, 1.0, 1.0]), "b": torch.tensor([0.0, 0.0])}
# task vectors: tau1 = w [ 3, -1, 0.5, 0], b [ 2, 0]
#               tau2 = w [ 1,  2, -2,  0], b [-1, 0]
#               tau3 = w [-1,  1, -0.5, 4], b [-3, 0]
TAUS = [
    {"w": torch.tensor([3.0, -1.0, 0.5, 0.0]), "b": torch.tensor([2.0, 0.0])},
    {"w": torch.tensor([1.0, 2.0, -2.0, 0.0]), "b": torch.tensor([-1.0, 0.0])},
    {"w": torch.tensor([-1.0, 1.0, -0.5, 4.0]), "b": torch.tensor([-3.0, 0.0])},
]
CKPTS = [{k: BASE[k] + t[k] for k in BASE} for t in TAUS]


def close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], torch.tensor(b[k]), rtol=0, atol=1e-6)


def test_task_vectors_are_differences_from_the_base():
    close(task_vectors(BASE, CKPTS)[1], {"b": [-1.0, 0.0], "w": [1.0, 2.0, -2.0, 0.0]})
    assert set(task_vectors(BASE, CKPTS, keys=["w"])[0]) == {"w"}


def test_uniform_and_task_arithmetic():
    close(merge_uniform(BASE, CKPTS), {"w": [2.0, 1 + 2 / 3, 1 - 2 / 3, 1 + 4 / 3], "b": [-2 / 3, 0.0]})
    # sum tau: w [3, 2, -2, 4], b [-2, 0]; lambda 0.5
    close(merge_task_arithmetic(BASE, CKPTS, lambda_=0.5), {"w": [2.5, 2.0, 0.0, 3.0], "b": [-1.0, 0.0]})


def test_trim_keeps_the_top_k_magnitudes_over_the_whole_task_vector():
    # tau1 has 6 entries; top 0.5 -> 3 largest |.|: w0=3, b0=2, then w1=-1
    close(trim_top_k(TAUS[0], 0.5), {"w": [3.0, -1.0, 0.0, 0.0], "b": [2.0, 0.0]})
    close(trim_top_k(TAUS[0], 0.5, scope="per_tensor"), {"w": [3.0, -1.0, 0.0, 0.0], "b": [2.0, 0.0]})


def test_ties_by_hand():
    # top_k 0.5 of 6 entries = 3 per task; ties go to the earlier position (keys in order w, b):
    #   tau1 |.| w 3 1 .5 0, b 2 0 -> keep 3, 2, 1        -> w [ 3, -1,  0, 0], b [ 2, 0]
    #   tau2 |.| w 1 2 2 0,  b 1 0 -> keep 2, 2, first 1  -> w [ 1,  2, -2, 0], b [ 0, 0]
    #   tau3 |.| w 1 1 .5 4, b 3 0 -> keep 4, 3, first 1  -> w [-1,  0,  0, 4], b [-3, 0]
    # elected sign of the sum: w0 +3, w1 +1, w2 -2, w3 +4, b0 -1
    # disjoint mean over agreeing non-zeros: w0 (3+1)/2 = 2, w1 2, w2 -2, w3 4, b0 -3
    # base + 1.5 * that: w [4, 4, -2, 7], b [-4.5, 0]
    merged = merge_ties(BASE, CKPTS, lambda_=1.5, top_k=0.5, keys=["w", "b"])
    close(merged, {"w": [4.0, 4.0, -2.0, 7.0], "b": [-4.5, 0.0]})


def test_ties_with_everything_kept_and_an_exact_sign_tie():
    base = {"w": torch.zeros(3)}
    ckpts = [{"w": torch.tensor([1.0, 2.0, -1.0])}, {"w": torch.tensor([-1.0, 4.0, -3.0])}]
    # signs: w0 sum 0 -> no winner -> 0; w1 mean(2, 4) = 3; w2 mean(-1, -3) = -2
    close(merge_ties(base, ckpts, lambda_=1.0, top_k=1.0), {"w": [0.0, 3.0, -2.0]})


def test_mismatched_checkpoints_are_named():
    with pytest.raises(KeyError, match="lacks"):
        merge_uniform(BASE, [CKPTS[0], {"w": CKPTS[1]["w"]}])
    with pytest.raises(ValueError, match="shapes"):
        merge_uniform(BASE, [CKPTS[0], {"w": torch.zeros(3), "b": torch.zeros(2)}])


# A task vector whose "small" tensor changed far less than its "big" one: the global trim (official
# TIES) spends every kept place on "big"; the per-tensor trim keeps the top half of each tensor.
UNEVEN = [
    {"big": torch.tensor([10.0, -9.0, 8.0, 7.0]), "small": torch.tensor([0.1, -0.4, 0.3, 0.2])},
    {"big": torch.tensor([6.0, 5.0, -4.0, 3.0]), "small": torch.tensor([-0.3, 0.1, 0.2, 0.4])},
]
UNEVEN_BASE = {"big": torch.zeros(4), "small": torch.ones(4)}


def test_global_and_per_tensor_trims_differ_and_per_tensor_keeps_the_top_k_of_each_tensor():
    # 8 entries, top 0.5: global keeps the 4 largest overall, all in "big"; per tensor 2 of 4 in each.
    close(trim_top_k(UNEVEN[0], 0.5), {"big": [10.0, -9.0, 8.0, 7.0], "small": [0.0, 0.0, 0.0, 0.0]})
    close(trim_top_k(UNEVEN[0], 0.5, scope="per_tensor"), {"big": [10.0, -9.0, 0.0, 0.0], "small": [0.0, -0.4, 0.3, 0.0]})
    for top_k in (0.25, 0.5, 0.75):
        for tau in UNEVEN:
            trimmed = trim_top_k(tau, top_k, scope="per_tensor")
            for key, values in tau.items():
                kept = int((trimmed[key] != 0).sum())
                assert kept == round(top_k * values.numel())
                # What it keeps are that tensor's largest magnitudes.
                kept_magnitudes = trimmed[key].abs()[trimmed[key] != 0].sort().values
                assert torch.equal(kept_magnitudes, values.abs().topk(kept).values.sort().values)
    with pytest.raises(ValueError, match="trim scope must be one of"):
        trim_top_k(UNEVEN[0], 0.5, scope="tensor")


def test_merge_settings_pass_the_trim_scope_and_default_to_the_global_trim():
    checkpoints = [{k: UNEVEN_BASE[k] + t[k] for k in t} for t in UNEVEN]
    default = MergeSettings("ties", 1.0, 0.5).merge(UNEVEN_BASE, checkpoints)
    assert MergeSettings().trim_scope == "global"
    # Bit-identical to the TIES merge before the option existed (the global trim).
    for k, v in merge_ties(UNEVEN_BASE, checkpoints, lambda_=1.0, top_k=0.5).items():
        assert torch.equal(default[k], v)
    assert torch.equal(default["small"], UNEVEN_BASE["small"])  # the global trim left "small" untouched
    per_tensor = MergeSettings("ties", 1.0, 0.5, trim_scope="per_tensor").merge(UNEVEN_BASE, checkpoints)
    # Per tensor, "small" takes part: tau1 |.| .1 .4 .3 .2 -> keeps [0, -.4, .3, 0];
    #   tau2 |.| .3 .1 .2 .4 -> keeps [-.3, 0, 0, .4]; no overlap, so each entry is the one kept value:
    #   elected signs: -, -, +, +; disjoint means: -.3, -.4, .3, .4
    close({"small": per_tensor["small"]}, {"small": [0.7, 0.6, 1.3, 1.4]})
    with pytest.raises(SettingsError, match="trim_scope must be one of global, per_tensor"):
        MergeSettings(trim_scope="tensor")
