"""DriftRecorder: L2 norms of theta - base and theta - request start, total and per tensor."""

import pytest
import torch

from lightning_unlearn.callbacks.drift import DriftRecorder, l2_norms


def test_l2_norms_on_known_tensors():
    current = {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([[0.0, 4.0]])}
    reference = {"a": torch.zeros(2), "b": torch.zeros(1, 2)}
    norms = l2_norms(current, reference)
    assert norms["layers"] == {"a": 3.0, "b": 4.0} and norms["total"] == pytest.approx(5.0)


def test_drift_after_two_requests_separates_base_from_previous(module, make_data, serve):
    drift = DriftRecorder()
    records = []

    class Keep(DriftRecorder):  # records every request's drift as the runner would write it
        def on_request_end(self, trainer, pl_module):
            super().on_request_end(trainer, pl_module)
            records.append(self.request_records()["drift"])

    serve(module, make_data(["Van Gogh", "Cartoon"], steps=2), [Keep(name="keep")])
    first, second = records
    assert first["to_previous"]["total"] > 0 and first["to_base"]["total"] == pytest.approx(first["to_previous"]["total"])
    base = module.base_state()
    final = {k: v.detach().cpu() for k, v in module.trainable_state().items()}
    assert second["to_base"]["total"] == pytest.approx(l2_norms(final, base)["total"], rel=1e-6)
    assert second["to_previous"]["total"] > 0 and second["to_base"]["total"] != pytest.approx(second["to_previous"]["total"])
    assert set(second["to_base"]["layers"]) == set(module.trainable_keys)
    assert drift.request_records() == {}  # nothing before a request has ended
