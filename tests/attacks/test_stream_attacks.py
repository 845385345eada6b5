"""``--stream.attacks``: attacks.json per request (in the ledger), ASR columns, resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path

from lightning_unlearn.cli import main
from lightning_unlearn.run_folder import ATTACK_COLUMNS
from lightning_unlearn.verify import verify

CONFIG = "configs/tinyworld/esd_styles_sequential.yaml"
FAST = [
    "--data.steps_per_request=3", "--data.batch_size=4",
    "--model.method.init_args.ddim_steps=4", "--model.method.init_args.bank_trajectories=4",
    "--stream.evaluation.steps=6", "--stream.evaluation.seeds_per_prompt=1", "--stream.semantic_analysis=false", "--trainer.enable_model_summary=false",
    "--data.styles=[Van Gogh, Cartoon, Monet, Pop Art]", "--data.objects=[circle, star, house]",
    "--trainer.logger=false", "--stream.progress=false",
]
TINY_ATTACKS = [
    "--stream.attacks.names=[relearn, embedding, prompt]", "--stream.attacks.images=2",
    "--stream.attacks.relearn.budgets=[1, 2]", "--stream.attacks.relearn.batch_size=2",
    "--stream.attacks.embedding.steps=1", "--stream.attacks.embedding.batch_size=2",
    "--stream.attacks.prompt.iterations=1", "--stream.attacks.prompt.candidates=2",
]


def stream(run_dir: Path, requests: str, *extra: str) -> None:
    main(["unlearn", "--config", CONFIG, f"--data.requests={requests}", f"--stream.run_dir={run_dir}", *FAST, *extra])


def attack_records(run_dir: Path) -> dict[str, list]:
    """Each request's attacks.json targets, without timings (the only thing a re-run may change)."""
    out = {}
    for path in sorted((run_dir / "requests").glob("*/attacks.json")):
        record = json.loads(path.read_text())
        out[path.parent.name] = [{k: v for k, v in t.items() if k != "seconds"} for t in record["targets"]]
    return out


def test_stream_attacks_every_request_records_it_and_resumes_to_the_same_result(tmp_path):
    whole = tmp_path / "whole"
    stream(whole, "[Van Gogh, Cartoon]", *TINY_ATTACKS, "--stream.attacks.targets=all_erased")
    ledger = json.loads((whole / "ledger.json").read_text())
    for entry in ledger["completed"]:
        assert (whole / entry["attacks"]).is_file() and len(entry["attacks_sha256"]) == 64
    records = attack_records(whole)
    assert [t["concept"] for t in records["01-van-gogh"]] == ["Van Gogh"]
    assert [t["concept"] for t in records["02-cartoon"]] == ["Van Gogh", "Cartoon"]  # every concept erased so far
    latest = records["02-cartoon"][1]["attacks"]
    assert set(latest) == {"relearn", "embedding", "prompt"}
    assert [p["steps"] for p in latest["relearn"]["curve"]] == [0, 1, 2]
    assert latest["prompt"]["images"] == 3 * 1 and len(latest["prompt"]["prefix"].split()) == 3
    header = (whole / "results.csv").read_text().splitlines()[0].split(",")
    assert header[-len(ATTACK_COLUMNS):] == list(ATTACK_COLUMNS)
    rows = json.loads((whole / "results.json").read_text())
    assert "relearn_asr" not in rows[0]  # the base model is not attacked
    assert rows[2]["prompt_asr"] == latest["prompt"]["asr"] and rows[2]["attack_images"] == 3
    # Attacks worked on copies: the committed weights still match the ledger.
    assert verify(whole) == 0

    # Served in two starts (the second extends the first): the same attacks, the same results.
    split = tmp_path / "split"
    stream(split, "[Van Gogh]", *TINY_ATTACKS, "--stream.attacks.targets=all_erased")
    first = (split / "requests" / "01-van-gogh" / "attacks.json").read_bytes()
    stream(split, "[Van Gogh, Cartoon]", *TINY_ATTACKS, "--stream.attacks.targets=all_erased")
    # A committed request's attacks.json is never redone.
    assert (split / "requests" / "01-van-gogh" / "attacks.json").read_bytes() == first
    assert attack_records(split) == records
    for name in ("01-van-gogh", "02-cartoon"):
        weights = f"requests/{name}/weights.safetensors"
        assert (split / weights).read_bytes() == (whole / weights).read_bytes()


def test_bad_attack_options_are_refused_before_any_file(tmp_path, cli_error):
    run = tmp_path / "run"
    line = cli_error(["unlearn", "--config", CONFIG, "--data.requests=[Van Gogh]", f"--stream.run_dir={run}",
                      "--stream.attacks.names=[relearn, promt]"])
    assert "unknown attack 'promt' (did you mean 'prompt'?)" in line
    line = cli_error(["unlearn", "--config", CONFIG, "--data.requests=[Van Gogh]", f"--stream.run_dir={run}",
                      "--stream.attacks.names=[relearn]", "--stream.attacks.relearn.budgets=[5, 0]"])
    assert "--stream.attacks.relearn.budgets must be >= 1, got 0" in line
    line = cli_error(["unlearn", "--config", CONFIG, "--data.requests=[Van Gogh]", f"--stream.run_dir={run}",
                      "--stream.attacks.embedding.steps=0"])
    assert "--stream.attacks.embedding.steps must be >= 1, got 0" in line
    assert not run.exists()


def test_attack_subcommand_attacks_an_existing_run_once(tmp_path, cli_error):
    run = tmp_path / "run"
    stream(run, "[Van Gogh]")
    assert not (run / "requests" / "01-van-gogh" / "attacks.json").exists()
    main(["attack", str(run), *TINY_ATTACKS[1:]])  # names default to all three
    path = run / "requests" / "01-van-gogh" / "attacks.json"
    record = json.loads(path.read_text())
    assert set(record["targets"][0]["attacks"]) == {"relearn", "embedding", "prompt"}
    assert json.loads((run / "ledger.json").read_text())["completed"][0]["attacks"] == "requests/01-van-gogh/attacks.json"
    assert "relearn_asr" in json.loads((run / "results.json").read_text())[1]
    assert verify(run) == 0
    before = path.read_bytes()
    main(["attack", str(run), *TINY_ATTACKS[1:]])  # resumable: an attacked request is not attacked again
    assert path.read_bytes() == before
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no ledger.json" in cli_error(["attack", str(empty)])
    assert "did you mean 'relearn'" in cli_error(["attack", str(run), "--stream.attacks.names=[relern]"])
    (empty / "ledger.json").write_text(json.dumps({"stream": [{"concept": "Van Gogh", "kind": "style"}], "completed": []}))
    assert "has no committed request yet: nothing to attack" in cli_error(["attack", str(empty)])
