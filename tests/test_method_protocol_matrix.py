"""Every method under every protocol with the regularizer callbacks, through the CLI.

The default suite runs each method x protocol once with every regularizer stacked (L1 and L2
anchors, top-k, projection in both modes, drift); the ``slow`` grid runs each callback alone.
What each regularizer guarantees is proven in tests/callbacks/; here the claim is that they all
compose with both methods and all three protocols on one training path.
"""

import json
import math
from pathlib import Path

import pytest
from safetensors.torch import load_file

from lightning_unlearn.cli import main

METHODS = {
    "esd": ["--config", "configs/tinyworld/esd_styles_sequential.yaml",
            "--model.method.init_args.ddim_steps=3", "--model.method.init_args.bank_trajectories=2"],
    "ca": ["--config", "configs/tinyworld/ca_styles_sequential.yaml",
           "--model.method.init_args.images_per_anchor=2", "--model.method.init_args.ddim_steps=3"],
}
PROTOCOLS = {
    "sequential": [],
    "simultaneous": ["--stream.protocol=simultaneous", "--stream.simultaneous.check_every_n_steps=2",
                     "--stream.simultaneous.max_steps=2"],
    "independent+ties": ["--stream.protocol=independent", "--stream.merge.method=ties"],
}
CALLBACKS = ["l1", "l2", "topk", "projection_gradient", "projection_update"]
SMALL = [
    "--data.requests=[Van Gogh, Cartoon]", "--data.steps_per_request=2", "--data.batch_size=2",
    "--data.styles=[Van Gogh, Cartoon, Monet]", "--data.objects=[circle, star]",
    "--stream.evaluation.steps=3", "--stream.evaluate_every=2", "--stream.semantic_analysis=false",
]


def serve(run_dir: Path, method: str, protocol: str, callbacks: list[str]) -> None:
    stack = [f"--trainer.callbacks+=configs/callbacks/{name}.yaml" for name in callbacks]
    main(["unlearn", *METHODS[method], *PROTOCOLS[protocol], *SMALL, *stack, f"--stream.run_dir={run_dir}"])
    ledger = json.loads((run_dir / "ledger.json").read_text())
    assert [e["concept"] for e in ledger["completed"]] == ["Van Gogh", "Cartoon"]
    for entry in ledger["completed"]:
        assert load_file(str(run_dir / entry["weights"]))
    final = json.loads((run_dir / "results.json").read_text())[-1]
    assert all(math.isfinite(final[k]) for k in ("UA", "IRA", "CRA"))
    described = json.loads((run_dir / "run.json").read_text())
    assert described["method"] == {"esd": "ESD", "ca": "ConceptAblation"}[method]
    assert len(described["callbacks"]) == 1 + len(callbacks)  # the config's DriftRecorder + the stack


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_and_protocol_with_all_regularizers_stacked(tmp_path, method, protocol):
    serve(tmp_path / "run", method, protocol, CALLBACKS)


@pytest.mark.slow
@pytest.mark.parametrize("callback", CALLBACKS)
@pytest.mark.parametrize("protocol", list(PROTOCOLS))
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_protocol_and_single_regularizer(tmp_path, method, protocol, callback):
    serve(tmp_path / "run", method, protocol, [callback])
