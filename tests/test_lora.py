"""LoRA requests (--model.trainable=lora): settings, the run folder a LoRA stream writes (adapter +
fused weights), resume, merging of adapters, and which callbacks are refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lightning_unlearn.cli import main
from lightning_unlearn.lora import (
    LoraSettings, add_request_adapter, adapter_state, adapter_update, effective_weights, fuse_request_adapter,
    load_adapter, merge_adapters, target_weight_names,
)
from lightning_unlearn.merging import merge_ties
from lightning_unlearn.protocols import MergeSettings
from lightning_unlearn.tinyworld.unet import build_tiny_unet

REPO = Path(__file__).resolve().parents[1]
# Two requests on a 3 x 2 corner of the world, 2-step banks and evaluation: seconds per request.
SMALL = [
    "--data.requests=[Van Gogh, Cartoon]", "--data.steps_per_request=4", "--data.batch_size=2",
    "--stream.evaluation.steps=2", "--stream.evaluate_every=2", "--stream.semantic_analysis=false",
    "--trainer.logger=false",
    "--data.styles=[Van Gogh, Cartoon, Monet]", "--data.objects=[circle, star]",
]
ESD = ["unlearn", "--config", "configs/tinyworld/esd_styles_sequential.yaml", "--config", "configs/trainable/lora.yaml",
       "--model.method.init_args.ddim_steps=2", "--model.method.init_args.bank_trajectories=2", *SMALL]
CA = ["unlearn", "--config", "configs/tinyworld/ca_styles_sequential.yaml", "--config", "configs/trainable/lora.yaml",
      "--model.method.init_args.images_per_anchor=2", "--model.method.init_args.ddim_steps=2", *SMALL]


def request_files(run: Path, name: str) -> tuple[dict, dict, dict]:
    folder = run / "requests" / name
    return (load_file(str(folder / "weights.safetensors")), *load_adapter(folder / "adapter.safetensors",
                                                                          folder / "adapter.json"))


def fused_base() -> dict[str, torch.Tensor]:
    from lightning_unlearn.tinyworld.backbone import TinyWorldBackbone

    unet = TinyWorldBackbone().unet
    return {k: v.detach() for k, v in unet.named_parameters() if k.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))}


# -- settings ------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--model.lora.rank=0"], "--model.lora.rank must be >= 1, got 0"),
    (["--model.lora.alpha=-1"], "--model.lora.alpha must be a finite number > 0"),
    (["--model.lora.targets=[attn2.to_kv]"], "--model.lora.targets: 'attn2.to_kv' matches no linear layer"),
    (["--model.trainable=kv-xattn", "--model.lora.rank=8"], "--model.lora configures LoRA adapters: it needs --model.trainable=lora"),
])
def test_bad_lora_settings_are_named_errors_before_any_file(tmp_path, cli_error, args, message):
    line = cli_error([*ESD, f"--stream.run_dir={tmp_path / 'run'}", *args])
    assert message in line
    assert not (tmp_path / "run" / "ledger.json").exists()


def test_callbacks_without_lora_support_are_refused_at_start(tmp_path, cli_error):
    line = cli_error([*ESD, f"--stream.run_dir={tmp_path / 'run'}", "--trainer.callbacks+=configs/callbacks/l2.yaml"])
    assert "--model.trainable=lora trains adapter factors, and AnchorRegularizer acts element by element" in line
    assert not (tmp_path / "run" / "ledger.json").exists()


# -- the adapter helpers -------------------------------------------------------------------------
def test_an_adapter_fuses_into_exactly_its_effective_update():
    torch.manual_seed(0)
    unet = build_tiny_unet()
    settings = LoraSettings(rank=2, alpha=6.0)
    names = target_weight_names(unet, settings)
    assert names and all(n.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) for n in names)
    before = {k: v.detach().clone() for k, v in effective_weights(unet, names).items()}
    trained = add_request_adapter(unet, settings)
    assert trained == sorted(n for n, p in unet.named_parameters() if p.requires_grad)
    assert len(trained) == 2 * len(names)
    torch.testing.assert_close(effective_weights(unet, names), before)  # B starts at zero
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if ".lora_B." in name:
                param.normal_()
    state = adapter_state(unet)
    update = adapter_update(state, settings)
    expected = {k: before[k] + update[k] for k in names}
    torch.testing.assert_close(effective_weights(unet, names), expected)
    fuse_request_adapter(unet)
    assert not any("lora" in n for n, _ in unet.named_parameters())
    fused = {n: p.detach() for n, p in unet.named_parameters() if n in names}
    torch.testing.assert_close(fused, expected)


# -- streams through train.py unlearn ------------------------------------------------------------
# ESD with the callbacks that support LoRA stacked (drift from the config, replay, projection last).
SUPPORTED = ["--trainer.callbacks+=configs/callbacks/replay.yaml", "--trainer.callbacks+=configs/callbacks/projection_update.yaml"]


@pytest.mark.parametrize("stream", [[*ESD, *SUPPORTED], CA], ids=["esd+replay+projection", "concept-ablation"])
def test_a_lora_stream_saves_each_request_as_its_adapter_and_as_fused_weights(tmp_path, capsys, stream):
    run = tmp_path / "run"
    main([*stream, f"--stream.run_dir={run}"])
    base = fused_base()
    w1, a1, s1 = request_files(run, "01-van-gogh")
    w2, a2, s2 = request_files(run, "02-cartoon")
    assert set(w1) == set(base) and s1 == LoraSettings()
    assert all(".lora_A.weight" in k or ".lora_B.weight" in k for k in a1) and len(a1) == 2 * len(base)
    # Sequential: request 1's adapter on the base, request 2's fresh adapter on request 1's fused weights.
    u1, u2 = adapter_update(a1, s1), adapter_update(a2, s2)
    assert all(float(u.norm()) > 0 for u in u1.values())
    torch.testing.assert_close(w1, {k: base[k] + u1[k] for k in base}, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(w2, {k: w1[k] + u2[k] for k in base}, atol=1e-6, rtol=1e-5)
    ledger = json.loads((run / "ledger.json").read_text())
    assert [e["adapter"] for e in ledger["completed"]] == ["requests/01-van-gogh/adapter.safetensors",
                                                            "requests/02-cartoon/adapter.safetensors"]
    manifest = json.loads((run / "requests" / "02-cartoon" / "manifest.json").read_text())
    assert manifest["trainable"] == "lora" and manifest["lora"]["rank"] == 4 and manifest["keys"] == len(base)
    rows = json.loads((run / "results.json").read_text())
    assert [r["concept"] for r in rows] == ["base", "Van Gogh", "Cartoon"]
    if stream is not CA:  # the supported callbacks ran on the adapter and recorded it
        records = {p.stem for p in (run / "requests" / "02-cartoon").glob("*.json")}
        assert {"drift", "replay", "projection_update"} <= records, records
        drift = json.loads((run / "requests" / "02-cartoon" / "drift.json").read_text())
        assert drift["to_previous"]["total"] > 0  # drift reads the fused effective weights
    capsys.readouterr()
    with pytest.raises(SystemExit) as verified:  # the adapters are in the ledger, verified with the weights
        main(["verify", str(run)])
    assert verified.value.code == 0
    assert "OK  weights, adapter, metrics" in capsys.readouterr().out


def outcome(run: Path) -> dict:
    files = {str(p.relative_to(run)): p.read_bytes() for p in sorted((run / "requests").rglob("*"))
             if p.name in ("weights.safetensors", "adapter.safetensors", "adapter.json", "metrics.json")}
    rows = [{k: v for k, v in r.items() if k not in ("train_seconds", "eval_seconds")}
            for r in json.loads((run / "results.json").read_text())]
    return {"files": files, "rows": rows}


def test_a_lora_stream_killed_mid_request_resumes_to_the_uninterrupted_result(tmp_path):
    """Request 2 is killed after step 3 with a checkpoint at step 2 (its adapter factors and
    their optimizer state); the re-run loads request 1's fused weights (resume between
    requests), attaches a fresh adapter and restores the factors (resume mid-request)."""
    uninterrupted = tmp_path / "uninterrupted"
    main([*ESD, f"--stream.run_dir={uninterrupted}"])
    run = tmp_path / "run"
    checkpointed = [f"--stream.run_dir={run}", "--stream.checkpoint_every_n_steps=2"]
    hook = ["--trainer.callbacks+=sigkill_hooks.SigkillAtStep", "--trainer.callbacks.request=2",
            "--trainer.callbacks.step=3", f"--trainer.callbacks.marker={tmp_path / 'killed'}"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "OMP_NUM_THREADS": str(torch.get_num_threads()),
           "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "train.py", *ESD[0:], *checkpointed, *hook], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    record = json.loads((run / "checkpoints" / "request-02.json").read_text())
    assert record["steps_done"] == 2
    checkpoint = torch.load(next((run / "checkpoints").glob("request-02-step-*.ckpt")), weights_only=True)
    assert checkpoint["trainable_keys"] and all(".lora_" in k for k in checkpoint["trainable_keys"])
    main([*ESD, *checkpointed])
    assert outcome(run) == outcome(uninterrupted)


# -- merging -------------------------------------------------------------------------------------
def test_ties_merge_of_adapters_equals_the_ties_merge_of_their_fused_weights():
    torch.manual_seed(0)
    settings = LoraSettings(rank=2, alpha=2.0)
    base = {"a.attn2.to_k.weight": torch.randn(8, 6), "a.attn2.to_v.weight": torch.randn(8, 6)}
    adapters = []
    for _ in range(3):
        state = {}
        for key in base:
            stem = key.removesuffix(".weight")
            state[f"{stem}.lora_A.weight"] = torch.randn(2, 6)
            state[f"{stem}.lora_B.weight"] = torch.randn(8, 2)
        adapters.append((state, settings))
    merge = MergeSettings(method="ties", lambda_=1.5, top_k=0.3)
    merged = merge_adapters(base, adapters, merge)
    # The fused checkpoint of adapter i is base + s B_i A_i: TIES of those is TIES of the updates.
    fused = [{k: base[k] + settings.scale * state[f"{k.removesuffix('.weight')}.lora_B.weight"]
              @ state[f"{k.removesuffix('.weight')}.lora_A.weight"] for k in base} for state, _ in adapters]
    torch.testing.assert_close(merged, merge_ties(base, fused, lambda_=1.5, top_k=0.3), atol=1e-6, rtol=0)
    assert not torch.equal(merged["a.attn2.to_k.weight"], base["a.attn2.to_k.weight"])


def test_independent_lora_requests_with_a_ties_merge_merge_the_adapters(tmp_path):
    run = tmp_path / "run"
    main([*ESD, "--config", "configs/protocols/independent_ties.yaml", f"--stream.run_dir={run}"])
    base = fused_base()
    adapters = [request_files(run, name)[1:] for name in ("01-van-gogh", "02-cartoon")]
    for name, (state, settings) in zip(("01-van-gogh", "02-cartoon"), adapters):
        fused = load_file(str(run / "requests" / name / "weights.safetensors"))  # each from the base
        update = adapter_update(state, settings)
        torch.testing.assert_close(fused, {k: base[k] + update[k] for k in base}, atol=1e-6, rtol=1e-5)
    merged = load_file(str(run / "requests" / "02-cartoon" / "merged.safetensors"))
    expected = merge_adapters(base, adapters, MergeSettings(method="ties", lambda_=2.0, top_k=0.2))
    torch.testing.assert_close(merged, expected, atol=1e-5, rtol=1e-4)
