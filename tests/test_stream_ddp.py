"""DDP: a 2-process stream equals a 1-process stream with the same global batch, and DDP with
one process equals a plain run bit for bit (one global sample order for every world size).

``train.py unlearn`` runs as a subprocess (``strategy=ddp`` inside pytest would re-launch
pytest in the child), on the CPU with gloo, twice on the tiny world with selective fine-tuning
and update projection stacked: 2 processes x batch 2, and 1 process x batch 4. A probe callback
(``tests/ddp_probe.py``) records in every process the request served, the seeds of every batch,
and the regularizers' masks and projection factors.

Tolerance: the two runs see the same samples (per-sample draws, our in-order sampler) and the
same importance batches, so they differ only in float32 summation order (two half-batch means
averaged by DDP's all-reduce vs one mean; importance sums all-reduced): ~1e-6 on the weights
after 3 AdamW steps. We allow 5e-5, a tenth of one AdamW step at lr 5e-4 (Adam's step is about
lr per element whatever the gradient's scale, so a different batch or draw shows up as ~1e-3).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
STEPS = 3
WEIGHT_TOLERANCE = 5e-5

ARGS = [
    "--config", "configs/tinyworld/esd_styles_sequential.yaml",
    "--data.requests=[Van Gogh, Cartoon]", f"--data.steps_per_request={STEPS}",
    "--model.method.init_args.ddim_steps=4", "--model.method.init_args.bank_trajectories=4",
    "--stream.evaluation.steps=4", "--data.styles=[Van Gogh, Cartoon, Monet]", "--data.objects=[circle, star]",
    "--trainer.accelerator=cpu", "--trainer.enable_model_summary=false",
    "--trainer.callbacks+=configs/callbacks/topk.yaml", "--trainer.callbacks.init_args.importance_batches=2",
    "--trainer.callbacks+=configs/callbacks/projection_update.yaml",
    "--trainer.callbacks+=ddp_probe.RankProbe",
]


def run_stream(folder: Path, *extra: str, args: list[str] = ARGS) -> Path:
    probe = folder / "probe"
    probe.mkdir(parents=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "DDP_PROBE_DIR": str(probe),
           "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)])}
    done = subprocess.run(
        [sys.executable, "train.py", "unlearn", *args, f"--stream.run_dir={folder / 'run'}", *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return folder


@pytest.mark.slow
def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    ddp = run_stream(tmp_path / "ddp", "--trainer.strategy=ddp", "--trainer.devices=2", "--data.batch_size=2")
    one = run_stream(tmp_path / "one", "--trainer.devices=1", "--data.batch_size=4")

    for k, concept in enumerate(["Van Gogh", "Cartoon"]):
        ranks = [json.loads((ddp / "probe" / f"rank{r}-request{k}.json").read_text()) for r in (0, 1)]
        single = json.loads((one / "probe" / f"rank0-request{k}.json").read_text())
        # Every rank serves the same request; together they cover exactly the one-process batches.
        assert [p["world_size"] for p in ranks] == [2, 2]
        assert {p["module_request"] for p in ranks} | {p["data_request"] for p in ranks} == {concept}
        assert len(ranks[0]["batches"]) == len(ranks[1]["batches"]) == len(single["batches"]) == STEPS
        for step, batch in enumerate(single["batches"]):
            shards = [p["batches"][step]["seed"] for p in ranks]
            assert not set(shards[0]) & set(shards[1])
            assert sorted(shards[0] + shards[1]) == batch["seed"]
        # Masks and projection: identical on both ranks (bit for bit), and equal to one process's.
        rank0, rank1 = (load_file(str(ddp / "probe" / f"rank{r}-request{k}.safetensors")) for r in (0, 1))
        alone = load_file(str(one / "probe" / f"rank0-request{k}.safetensors"))
        assert set(rank0) == set(rank1) == set(alone) and any(".mask." in key for key in rank0)
        if k == 1:  # the second request protects the first one's erasure (protect_unlearned)
            assert any(key.endswith(".basis") for key in rank0)
        for key in rank0:
            assert torch.equal(rank0[key], rank1[key]), f"{key} differs between ranks"
            if ".mask." in key:
                assert torch.equal(rank0[key], alone[key]), f"{key}: DDP selected other elements"
            else:
                torch.testing.assert_close(rank0[key], alone[key])

    for name in ("01-van-gogh", "02-cartoon"):
        a = load_file(str(ddp / "run" / "requests" / name / "weights.safetensors"))
        b = load_file(str(one / "run" / "requests" / name / "weights.safetensors"))
        assert set(a) == set(b)
        worst = max(float((a[key] - b[key]).abs().max()) for key in a)
        assert worst <= WEIGHT_TOLERANCE, f"{name}: weights differ by {worst:.2e}"
        metrics_a = json.loads((ddp / "run" / "requests" / name / "metrics.json").read_text())
        metrics_b = json.loads((one / "run" / "requests" / name / "metrics.json").read_text())
        for key in ("UA", "UA_latest", "IRA", "CRA", "style_acc", "object_acc"):
            assert metrics_a[key] == pytest.approx(metrics_b[key], abs=1e-9), key
    # Evaluation and the run folder are rank 0's alone: one results table, one row per request.
    rows = json.loads((ddp / "run" / "results.json").read_text())
    assert [r["concept"] for r in rows] == ["base", "Van Gogh", "Cartoon"]
    assert [r["cumulative_steps"] for r in rows] == [0, STEPS, 2 * STEPS]


def test_ddp_with_one_process_equals_a_plain_run_bit_for_bit(tmp_path):
    """``--trainer.strategy=ddp --trainer.devices=1`` (a one-GPU SLURM allocation) trains on the
    plain run's batches, in order: Lightning's shuffling sampler must not replace ours. With one
    process DDP's all-reduce averages one gradient, so the weights are identical, bit for bit."""
    # The ESD stream alone (no regularizers), one request of 3 steps x batch 2.
    args = [a for a in ARGS if not a.startswith(("--trainer.callbacks", "--data.requests"))]
    args += ["--data.requests=[Van Gogh]", "--data.batch_size=2", "--trainer.callbacks+=ddp_probe.RankProbe"]
    ddp = run_stream(tmp_path / "ddp", "--trainer.strategy=ddp", "--trainer.devices=1", args=args)
    plain = run_stream(tmp_path / "plain", args=args)

    seen = [json.loads((run / "probe" / "rank0-request0.json").read_text()) for run in (ddp, plain)]
    assert seen[0]["world_size"] == 1 and seen[0]["batches"] == seen[1]["batches"]
    seeds = [s for batch in seen[1]["batches"] for s in batch["seed"]]
    assert seeds == sorted(seeds)  # the request's samples in order
    a, b = (load_file(str(run / "run" / "requests" / "01-van-gogh" / "weights.safetensors")) for run in (ddp, plain))
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs between DDP with one process and a plain run"


EVALUATION_ARGS = [
    "--config", "configs/tinyworld/esd_styles_sequential.yaml",
    "--data.requests=[Van Gogh]", "--data.styles=[Van Gogh, Cartoon, Monet]", "--data.objects=[circle, star, house]",
    "--model.method.init_args.ddim_steps=4", "--model.method.init_args.bank_trajectories=2", "--data.batch_size=2",
    # 9 prompts in batches of 2: 5 batches, 3 on rank 0 and 2 on rank 1; a UA check's 3 prompts: 2 batches.
    "--stream.evaluation.steps=2", "--stream.evaluation.batch_size=2",
    "--stream.protocol=simultaneous", "--stream.simultaneous.max_steps=2", "--stream.simultaneous.check_every_n_steps=1",
    # lr 0: the weights stay the base's exactly, so any difference comes from the evaluation's split.
    "--model.optimizer=torch.optim.SGD", "--model.optimizer.lr=0", "--stream.semantic_analysis=false",
    "--trainer.accelerator=cpu", "--trainer.callbacks+=ddp_probe.RankProbe",
]


@pytest.mark.slow
def test_two_processes_evaluate_their_shares_and_equal_one_process_bit_for_bit(tmp_path):
    """Every rank samples and scores its share of the evaluation (after the request, and the
    simultaneous protocol's UA checks); the summed counts give rank 0 the one-process files
    bit for bit: ``metrics.json``, ``grid.png``, the results' metric columns, the UA checks.

    Training is held still (SGD at lr 0) so both runs evaluate identical weights: with training,
    DDP's gradient all-reduce changes the weights by float rounding (see the test above)."""
    ddp = run_stream(tmp_path / "ddp", "--trainer.strategy=ddp", "--trainer.devices=2", args=EVALUATION_ARGS)
    one = run_stream(tmp_path / "one", args=EVALUATION_ARGS)

    # Both ranks sampled during the UA checks (each check's 3 prompts: a batch of 2 on rank 0, of 1
    # on rank 1), together exactly what one process sampled.
    calls = [json.loads((ddp / "probe" / f"rank{r}-request0.json").read_text())["sampling_calls"] for r in (0, 1)]
    alone = json.loads((one / "probe" / "rank0-request0.json").read_text())["sampling_calls"]
    assert calls[0] and calls[1], calls
    assert sum(calls[0]) + sum(calls[1]) == sum(alone)
    for name in ("00-base", "01-van-gogh"):
        for file in ("metrics.json", "grid.png"):
            a = (ddp / "run" / "requests" / name / file).read_bytes()
            assert a == (one / "run" / "requests" / name / file).read_bytes(), f"{name}/{file} differs"
        # Summed over both ranks: every image counted (the base evaluation, before the first fit
        # starts rank 1, is rank 0's alone).
        assert json.loads((ddp / "run" / "requests" / name / "metrics.json").read_text())["images"] == 9
    checks = [json.loads((run / "run" / "requests" / "01-van-gogh" / "simultaneous.json").read_text())
              for run in (ddp, one)]
    assert checks[0] == checks[1] and [c["images"] for c in checks[0]["checks"]] == [3, 3]
    rows = [json.loads((run / "run" / "results.json").read_text()) for run in (ddp, one)]
    metric_columns = ("UA", "UA_latest", "IRA", "CRA", "style_acc", "object_acc")
    # Compared as JSON text: the base row's UA is NaN, which never equals itself as a float.
    columns = [json.dumps([[r[k] for k in metric_columns] for r in run_rows]) for run_rows in rows]
    assert columns[0] == columns[1]
