"""State a callback carries from request to request survives a stream that resumes between them.

Inverse-EWC's running Fisher (and the trajectory regularizer's running drift) is built by requests
1..k and used by request k+1. A stream stopped after a commit and re-run in a new process must
serve request k+1 exactly as an uninterrupted stream does: with the same running state, not an
empty one (which silently turns the penalty off for that request).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from lightning_unlearn.cli import main

REQUESTS = ["Van Gogh", "Cartoon", "Picasso"]
FAST = [
    "--data.steps_per_request=3", "--data.batch_size=2",
    "--model.method.init_args.ddim_steps=3", "--model.method.init_args.bank_trajectories=2",
    "--stream.evaluate_every=3", "--stream.evaluation.steps=4", "--stream.semantic_analysis=false",
    "--trainer.logger=false", "--data.styles=[Van Gogh, Cartoon, Picasso, Monet]", "--data.objects=[star, heart, house]",
]


def serve(run: Path, requests: list[str], overlay: str) -> dict:
    main(["unlearn", "--config", "configs/tinyworld/esd_styles_sequential.yaml", f"--trainer.callbacks+={overlay}",
          f"--data.requests=[{', '.join(requests)}]", f"--stream.run_dir={run}", *FAST])
    return json.loads((run / "ledger.json").read_text())


@pytest.mark.parametrize("overlay", ["configs/tinyworld/callbacks/inverse_ewc_esd.yaml",
                                     "configs/tinyworld/callbacks/trajectory_esd.yaml"])
def test_a_stream_resumed_between_requests_carries_the_callbacks_running_state(tmp_path, overlay):
    whole = serve(tmp_path / "whole", REQUESTS, overlay)
    # The same stream served as a deployed model would be: one request, then the rest in a new run.
    serve(tmp_path / "resumed", REQUESTS[:1], overlay)
    first = json.loads((tmp_path / "resumed" / "ledger.json").read_text())["completed"][0]
    (key, record), = first["carried_states"].items()
    state = load_file(str(tmp_path / "resumed" / record["file"]))
    assert int(state["requests_seen"][0]) == 1 and any(k.startswith("ema.") for k in state)
    resumed = serve(tmp_path / "resumed", REQUESTS, overlay)
    assert [e["sha256"] for e in resumed["completed"]] == [e["sha256"] for e in whole["completed"]]
    assert [e["carried_states"][key]["sha256"] for e in resumed["completed"]] == \
        [e["carried_states"][key]["sha256"] for e in whole["completed"]]


def test_a_changed_carried_state_is_refused_like_changed_weights(tmp_path, cli_error):
    overlay = "configs/tinyworld/callbacks/inverse_ewc_esd.yaml"
    ledger = serve(tmp_path / "run", REQUESTS[:1], overlay)
    (record,) = ledger["completed"][0]["carried_states"].values()
    path = tmp_path / "run" / record["file"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    line = cli_error(["unlearn", "--config", "configs/tinyworld/esd_styles_sequential.yaml",
                      f"--trainer.callbacks+={overlay}", f"--data.requests=[{', '.join(REQUESTS)}]",
                      f"--stream.run_dir={tmp_path / 'run'}", *FAST])
    assert "does not match" in line and record["file"] in line
