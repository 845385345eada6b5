"""Protocols: plans on a known stream, and every protocol end to end through the CLI."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lightning_unlearn.cli import main
from lightning_unlearn.protocols import MergeSettings, plan_request
from lightning_unlearn.requests import Request

FAST = [
    "--data.steps_per_request=4", "--data.batch_size=4",
    "--model.method.init_args.ddim_steps=4", "--model.method.init_args.bank_trajectories=4",
    "--stream.evaluation.steps=8", "--trainer.enable_model_summary=false",
    "--data.styles=[Van Gogh, Cartoon, Monet, Pop Art]", "--data.objects=[circle, star, house]",
]

A, B, C = Request("Van Gogh", "style"), Request("Cartoon", "style"), Request("Monet", "style")


def test_plans_say_what_each_protocol_trains_from_and_scores():
    stream = [A, B, C]
    seq = plan_request(stream, 2, "sequential")
    assert (seq.erasing, seq.already_erased, seq.from_base, seq.scored_erased) == ((C,), (A, B), False, (A, B, C))
    sim = plan_request(stream, 2, "simultaneous")
    assert (sim.erasing, sim.already_erased, sim.from_base, sim.scored_erased) == ((A, B, C), (), True, (A, B, C))
    ind = plan_request(stream, 1, "independent")
    assert (ind.erasing, ind.already_erased, ind.from_base, ind.scored_erased) == ((B,), (), True, (B,))
    assert plan_request(stream, 1, "independent", merging=True).scored_erased == (A, B)
    with pytest.raises(ValueError, match="needs protocol 'independent'"):
        plan_request(stream, 0, "sequential", merging=True)
    with pytest.raises(ValueError, match="protocol must be one of"):
        plan_request(stream, 0, "parallel")


def run(run_dir: Path, *extra: str) -> list[dict]:
    main(["unlearn", "--config", "configs/tinyworld/esd_styles_sequential.yaml",
          "--data.requests=[Van Gogh, Cartoon]", f"--stream.run_dir={run_dir}", *FAST, *extra])
    return json.loads((run_dir / "results.json").read_text())


def test_sequential_records_drift_and_semantics(tmp_path):
    rows = run(tmp_path / "seq")
    drift = json.loads((tmp_path / "seq/requests/02-cartoon/drift.json").read_text())
    # Request 2 starts from request 1's weights: its drift from the base exceeds its own step.
    assert drift["to_base"]["total"] > drift["to_previous"]["total"] > 0
    assert any(k.endswith("attn2.to_k.weight") for k in drift["to_base"]["layers"])
    assert rows[2]["drift_to_base"] == pytest.approx(drift["to_base"]["total"])
    semantic = json.loads((tmp_path / "seq/requests/02-cartoon/semantic.json").read_text())
    concepts = {r["concept"]: r for r in semantic["concepts"]}
    assert set(concepts) == {"Monet", "Pop Art", "circle", "star", "house"}  # retained: not Van Gogh, not Cartoon
    for r in concepts.values():
        assert -1 <= r["similarity"] <= 1 and r["k_change"] > 0 and r["v_change"] > 0
    # The drop is measured from request 1's model (the start of request 2).
    before = json.loads((tmp_path / "seq/requests/01-van-gogh/metrics.json").read_text())
    assert concepts["Monet"]["accuracy_before"] == before["per_style"]["Monet"]


def test_simultaneous_restarts_from_base_and_stops_at_the_check_or_cap(tmp_path):
    rows = run(tmp_path / "sim", "--stream.protocol=simultaneous", "--stream.simultaneous.check_every_n_steps=2",
               "--stream.simultaneous.max_steps=6", "--stream.simultaneous.ua_target=100", "--model.lr=1e-12")
    # A target out of reach (UA 100 with a learning rate that moves nothing): every request trains
    # to the cap, checked at steps 2, 4 and 6 (the cap).
    assert [r["train_steps"] for r in rows[1:]] == [6, 6] and rows[-1]["cumulative_steps"] == 12
    record = json.loads((tmp_path / "sim/requests/02-cartoon/simultaneous.json").read_text())
    assert [c["step"] for c in record["checks"]] == [2, 4, 6] and record["reached"] is False
    manifest = json.loads((tmp_path / "sim/requests/02-cartoon/manifest.json").read_text())
    assert manifest["erasing"] == ["Van Gogh", "Cartoon"]
    drift = json.loads((tmp_path / "sim/requests/02-cartoon/drift.json").read_text())
    assert drift["to_base"]["total"] == pytest.approx(drift["to_previous"]["total"])  # started from the base

    reached = run(tmp_path / "sim0", "--stream.protocol=simultaneous", "--stream.simultaneous.check_every_n_steps=2",
                  "--stream.simultaneous.max_steps=6", "--stream.simultaneous.ua_target=0")
    assert [r["train_steps"] for r in reached[1:]] == [2, 2]  # any UA meets a 0% target at the first check


def test_independent_with_ties_merge_evaluates_the_merge_of_the_task_vectors(tmp_path):
    rows = run(tmp_path / "ind", "--stream.protocol=independent", "--stream.merge.method=ties",
               "--stream.merge.lambda_=1.5", "--stream.merge.top_k=0.5")
    folder = tmp_path / "ind/requests"
    first, second = (load_file(str(folder / d / "weights.safetensors")) for d in ("01-van-gogh", "02-cartoon"))
    drift = json.loads((folder / "02-cartoon/drift.json").read_text())
    assert drift["to_base"]["total"] == pytest.approx(drift["to_previous"]["total"])  # trained from the base
    from lightning_unlearn.tinyworld.backbone import TinyWorldBackbone

    unet = dict(TinyWorldBackbone().unet.named_parameters())
    base = {k: unet[k].detach() for k in first}
    expected = MergeSettings("ties", 1.5, 0.5).merge(base, [first, second])
    merged = load_file(str(folder / "02-cartoon/merged.safetensors"))
    assert merged.keys() == expected.keys()
    for k in merged:
        torch.testing.assert_close(merged[k], expected[k], rtol=0, atol=0)
    ledger = json.loads((tmp_path / "ind/ledger.json").read_text())
    assert ledger["completed"][1]["merged"] == "requests/02-cartoon/merged.safetensors"
    metrics = json.loads((folder / "02-cartoon/metrics.json").read_text())
    # The merged model is scored on both concepts: UA averages Van Gogh's and Cartoon's.
    assert metrics["UA"] == pytest.approx(
        ((100 - metrics["per_style"]["Van Gogh"]) + (100 - metrics["per_style"]["Cartoon"])) / 2)
    run_json = json.loads((tmp_path / "ind/run.json").read_text())
    assert run_json["protocol"] == "independent" and run_json["merge"]["method"] == "ties"
    assert run_json["merge"]["trim_scope"] == "global"


def test_merging_needs_the_independent_protocol(tmp_path, cli_error):
    line = cli_error(["unlearn", "--config", "configs/tinyworld/esd_styles_sequential.yaml", "--data.requests=[Van Gogh]",
                      f"--stream.run_dir={tmp_path / 'bad'}", *FAST, "--stream.merge.method=ties"])
    assert "needs protocol 'independent'" in line
    assert not (tmp_path / "bad").exists()  # refused before the run folder is made


def test_a_run_folder_in_use_by_another_process_is_refused(tmp_path, cli_error):
    import subprocess
    import sys

    folder = tmp_path / "busy"
    folder.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
        "print('locked', flush=True); time.sleep(60)"), str(folder / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        line = cli_error(["unlearn", "--config", "configs/tinyworld/esd_styles_sequential.yaml",
                          "--data.requests=[Van Gogh, Cartoon]", f"--stream.run_dir={folder}", *FAST])
        assert "in use by another process" in line
        assert not (folder / "ledger.json").exists()
    finally:
        holder.kill()
        holder.wait()


def test_the_ties_trim_scope_is_a_command_line_option_and_its_help_says_the_trim_is_global(tmp_path, capsys):
    from lightning_unlearn.datamodules.concept_stream import ConceptStreamDataModule
    from lightning_unlearn.stream import UnlearnCLI
    from lightning_unlearn.unlearning_module import UnlearningModule

    with pytest.raises(SystemExit) as exit_info:
        main(["unlearn", "--stream.merge.help", "MergeSettings"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--stream.merge.trim_scope {global,per_tensor}" in out
    assert "TIES keeps the top_k over all tensors (official TIES) or per_tensor" in out
    cli = UnlearnCLI(UnlearningModule, ConceptStreamDataModule, run=False, args=[
        "--config", "configs/tinyworld/esd_styles_sequential.yaml", f"--stream.run_dir={tmp_path / 'run'}",
        "--stream.protocol=independent", "--stream.merge.method=ties", "--stream.merge.trim_scope=per_tensor"])
    assert cli.config_init.stream.merge == MergeSettings("ties", trim_scope="per_tensor")
    assert not (tmp_path / "run").exists()


def test_concepts_erased_before_the_stream_are_already_erased_in_every_plan_and_scored():
    from lightning_unlearn.protocols import plan_request
    from lightning_unlearn.requests import Request

    before, requests = (Request("Van Gogh", "style"),), [Request("Cartoon", "style"), Request("Monet", "style")]
    sequential = plan_request(requests, 1, "sequential", erased_before=before)
    assert sequential.already_erased == (before[0], requests[0]) and sequential.scored_erased == (before[0], *requests)
    simultaneous = plan_request(requests, 1, "simultaneous", erased_before=before)
    assert simultaneous.already_erased == before and simultaneous.erasing == tuple(requests)
    assert plan_request(requests, 1, "independent", erased_before=before).scored_erased == (requests[1],)
    assert plan_request(requests, 1, "independent", True, erased_before=before).scored_erased == (before[0], *requests)
    assert plan_request(requests, 1, "sequential") == plan_request(requests, 1, "sequential", erased_before=())


def test_a_stream_from_a_deployed_model_protects_and_scores_its_earlier_erasures(tmp_path):
    # --data.unlearned names what the starting model (an export of an earlier run) has erased:
    # gradient projection protects it like an earlier request, and UA is read over it too.
    run = tmp_path / "deployed"
    main(["unlearn", "--config", "configs/tinyworld/esd_styles_sequential.yaml", "--data.requests=[Cartoon]",
          "--data.unlearned=[Van Gogh]", "--trainer.callbacks+=configs/callbacks/projection_update.yaml",
          f"--stream.run_dir={run}", *FAST])
    record = json.loads((run / "requests" / "01-cartoon" / "projection_update.json").read_text())
    assert "Van Gogh" in record["protected"]
