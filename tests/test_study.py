"""Study runner: config checks, runs in their own folders, finished runs skipped."""

import json
import re
from pathlib import Path

import pytest
import yaml

from lightning_unlearn import replicates
from lightning_unlearn.evaluation import EvaluationSettings
from lightning_unlearn.study import Study, StudyConfigError, SweepSpecError, is_finished, run_study

FAST = [
    "--config", "configs/tinyworld/esd_styles_sequential.yaml", "--data.requests=[Van Gogh]",
    "--data.steps_per_request=2", "--data.batch_size=2", "--model.method.init_args.ddim_steps=3",
    "--model.method.init_args.bank_trajectories=2", "--stream.evaluation.steps=4",
    "--data.styles=[Van Gogh, Cartoon, Monet]", "--data.objects=[circle, star, house]",
]


def write(path: Path, content: dict) -> Path:
    path.write_text(yaml.safe_dump(content))
    return path


@pytest.mark.parametrize("content, message", [
    ({"root": "x", "runs": [{"name": "a"}], "reprot": True}, r"unknown key\(s\) \['reprot'\]"),
    ({"root": "x", "runs": []}, "non-empty 'runs'"),
    ({"root": "x", "runs": [{"name": "a"}, {"name": "a"}]}, "appears twice"),
    ({"root": "x", "runs": [{"name": "../up"}]}, "must be a folder name"),
    ({"root": "x", "runs": [{"name": "a", "arg": []}]}, "run 0 must be a mapping"),
    ({"root": "x", "runs": [{"name": "a", "args": ["--stream.run_dir=y"]}]}, "without --stream.run_dir"),
])
def test_bad_study_configs_name_the_problem(tmp_path, content, message):
    with pytest.raises(StudyConfigError, match=message):
        Study.load(write(tmp_path / "study.yaml", content))


def test_shipped_study_configs_parse_and_name_existing_configs():
    paths = [*Path("configs/tinyworld").glob("study_*.yaml"), *Path("configs/tinyworld_dit").glob("study_*.yaml")]
    assert {"study_styles", "study_backbones", "study_backbones_esd_orders"} <= {p.stem for p in paths}
    for path in paths:
        study = Study.load(path)
        if path.stem in ("study_styles", "study_objects"):
            assert {"sequential", "simultaneous", "independent_ties", "projection_topk"} <= {r.name for r in study.runs}
        for run in study.runs:
            # a base config, then maybe a protocol overlay (a second --config) and callback overlays
            configs = [run.args[i + 1] for i, arg in enumerate(run.args) if arg == "--config"]
            configs += [arg.split("=", 1)[1] for arg in run.args
                        if arg.startswith("--trainer.callbacks+=") and arg.endswith(".yaml")]
            assert configs and run.args[0] == "--config", f"{path}: {run.name} does not start from a base config"
            for config in configs:
                assert Path(config).is_file(), f"{path}: {run.name} names a missing {config}"


def test_a_study_runs_each_stream_in_its_folder_and_skips_finished_ones(tmp_path, capfd):
    root = tmp_path / "study"
    study = Study.load(write(tmp_path / "study.yaml", {
        "root": str(root), "report": False,
        "runs": [{"name": "sequential", "args": FAST},
                 {"name": "independent", "args": [*FAST, "--stream.protocol=independent"]}],
    }))
    statuses = run_study(study)
    assert {n: s["status"] for n, s in statuses.items()} == {"sequential": "finished", "independent": "finished"}
    for name, protocol in (("sequential", "sequential"), ("independent", "independent")):
        assert is_finished(root / name)
        assert json.loads((root / name / "run.json").read_text())["protocol"] == protocol
        assert (root / name / "requests" / "01-van-gogh" / "weights.safetensors").is_file()
    assert json.loads((root / "study.json").read_text())["runs"]["independent"]["status"] == "finished"

    capfd.readouterr()
    again = run_study(study)
    assert {s["status"] for s in again.values()} == {"skipped (finished)"}
    assert "finished already, skipped" in capfd.readouterr().out


def test_a_study_root_that_is_a_file_is_named(tmp_path):
    (tmp_path / "root").write_text("a file")
    with pytest.raises(StudyConfigError, match=r"root .*root is or is inside the file .*root, not a folder"):
        Study.load(write(tmp_path / "study.yaml", {"root": str(tmp_path / "root"), "runs": [{"name": "a"}]}))


def test_failed_runs_end_the_study_with_one_error_line(tmp_path, cli_error):
    # The failing run is refused by the setting checks, so it costs one process start.
    config = write(tmp_path / "study.yaml", {
        "root": str(tmp_path / "study"), "report": False,
        "runs": [{"name": "broken", "args": [*FAST, "--data.steps_per_request=0"]}],
    })
    line = cli_error(["study", "--config", str(config)])
    assert line.startswith("error: study runs failed: broken (failed (exit 2))")
    assert not (tmp_path / "study" / "broken").exists()


@pytest.mark.parametrize("content, message", [
    ({"replicates": 0}, "replicates must be at least 1, got 0"),
    ({"replicates": -2}, "replicates must be at least 1, got -2"),
    ({"replicates": []}, "replicates is an empty list of seeds"),
    ({"replicates": [0, 3, 3]}, r"replicate seed\(s\) \[3\] appear more than once"),
    ({"replicates": [0, -1]}, "replicate seeds are integers >= 0, got -1"),
    ({"replicates": [0, "a"]}, "replicate seeds are integers >= 0, got 'a'"),
    ({"replicates": True}, "replicates must be a count .* or a list of seeds"),
    ({"replicates": 2.5}, "replicates must be a count .* or a list of seeds"),
    ({"replicates": 2, "shuffle_order": "yes"}, "shuffle_order must be true or false, got 'yes'"),
    ({"shuffle_order": True}, "shuffle_order: true needs replicates"),
    ({"replicates": 2, "common": ["--data.seed=3"]}, r"has replicates, which set its seeds, but .* \['--data.seed=3'\]"),
    ({"runs": [{"name": "a", "args": [], "replicates": [1, 1]}]}, r"run 'a': replicate seed\(s\) \[1\]"),
])
def test_bad_replicate_specs_are_named_before_any_run_starts(tmp_path, cli_error, content, message):
    root = tmp_path / "study"
    config = write(tmp_path / "study.yaml", {"root": str(root), "runs": [{"name": "a", "args": []}], **content})
    line = cli_error(["study", "--config", str(config)])
    assert re.search(message, line), line
    assert not root.exists()


def test_replicates_give_each_seed_its_folder_and_a_run_without_keeps_its_own():
    study = Study.load(write_yaml({"root": "r", "replicates": 2, "shuffle_order": True, "runs": [
        {"name": "a", "args": ["--x=1"]}, {"name": "b", "args": [], "replicates": None},
        {"name": "c", "args": [], "replicates": [5]}]}))
    a, b, c = study.runs
    assert [f for f, _ in a.jobs()] == ["a@seed0", "a@seed1"] and b.jobs() == [("b", [])]
    assert c.jobs() == [("c@seed5", ["--seed_everything=5", "--model.seed=5", "--data.seed=5",
                                     "--stream.evaluation.seed=1239", "--data.order_seed=5"])]
    assert replicates.EVALUATION_SEED_BASE == EvaluationSettings().seed  # seed 0 is the default run
    assert replicates.parse_replicate_name("a@seed12") == ("a", 12) and replicates.parse_replicate_name("a") is None


def write_yaml(content: dict) -> Path:
    import tempfile

    return write(Path(tempfile.mkdtemp()) / "study.yaml", content)


def test_replicates_run_resume_and_aggregate_per_run_and_request(tmp_path, capfd):
    root = tmp_path / "study"
    fast = [*FAST, "--data.requests=[Van Gogh, Cartoon]"]
    study = Study.load(write(tmp_path / "study.yaml", {
        "root": str(root), "report": True, "replicates": [0, 1], "shuffle_order": True,
        "runs": [{"name": "seq", "args": fast}],
    }))
    statuses = run_study(study)
    assert {n: s["status"] for n, s in statuses.items()} == {"seq@seed0": "finished", "seq@seed1": "finished"}
    orders = {}
    for seed in (0, 1):
        folder = root / f"seq@seed{seed}"
        assert is_finished(folder)
        orders[seed] = [r["concept"] for r in json.loads((folder / "run.json").read_text())["requests"]]
        config = yaml.safe_load((folder / "tensorboard" / "config.yaml").read_text())
        assert config["seed_everything"] == seed and config["model"]["seed"] == seed and config["data"]["seed"] == seed
        assert config["stream"]["evaluation"]["seed"] == 1234 + seed
    assert orders == {0: ["Van Gogh", "Cartoon"], 1: ["Cartoon", "Van Gogh"]}  # seeded shuffles

    rows = json.loads((root / "study_results.json").read_text())
    assert [(r["run"], r["request"], r["replicates"]) for r in rows] == [("seq", 0, 2), ("seq", 1, 2), ("seq", 2, 2)]
    assert rows[1]["concept"] == "varies" and rows[2]["interval"] == "t over replicates"
    per_seed = [json.loads((root / f"seq@seed{s}" / "results.json").read_text()) for s in (0, 1)]
    assert rows[2]["IRA"] == pytest.approx((per_seed[0][2]["IRA"] + per_seed[1][2]["IRA"]) / 2)
    header = (root / "study_results.csv").read_text().splitlines()[0].split(",")
    assert header[:6] == ["run", "request", "concept", "kind", "replicates", "interval"] and "IRA_hi" in header
    page = (root / "report" / "report.html").read_text()
    assert "Replicates" in page and "seq@seed1" in page

    capfd.readouterr()
    again = run_study(study)  # resumable: finished replicates are skipped
    assert {s["status"] for s in again.values()} == {"skipped (finished)"}
    assert "seq@seed0: finished already, skipped" in capfd.readouterr().out


# -- sweeps ------------------------------------------------------------------------------------
L2 = ["--config", "configs/tinyworld/ca_styles_sequential.yaml", "--trainer.callbacks+=configs/tinyworld/callbacks/l2_ca.yaml"]
WEIGHT = "--trainer.callbacks.init_args.weight"


def test_a_sweep_expands_to_one_run_per_setting_and_replicates_to_each():
    study = Study.load(write_yaml({"root": "r", "replicates": 2, "runs": [
        {"name": "base", "args": L2[:2]},
        {"name": "l2", "args": L2, "sweep": {WEIGHT: [7.05, 70.5, 705]}},
        {"name": "ties", "args": [*L2[:2], "--config", "configs/protocols/independent_ties.yaml"], "replicates": None,
         "sweep": {"--stream.merge.lambda_": [1.25, 2], "--stream.merge.top_k": [0.2, 0.8]}},
    ]}))
    assert [r.name for r in study.runs] == [
        "base", "l2@weight=7.05", "l2@weight=70.5", "l2@weight=705",
        "ties@lambda=1.25@top_k=0.2", "ties@lambda=1.25@top_k=0.8", "ties@lambda=2@top_k=0.2", "ties@lambda=2@top_k=0.8"]
    l2 = study.runs[3]
    assert l2.args == [*L2, f"{WEIGHT}=705"] and l2.sweep == "l2" and l2.setting == {WEIGHT: 705}
    assert [f for f, _ in l2.jobs()] == ["l2@weight=705@seed0", "l2@weight=705@seed1"]  # replicates x sweep
    assert replicates.parse_replicate_name("l2@weight=705@seed1") == ("l2@weight=705", 1)
    assert study.runs[4].args[-2:] == ["--stream.merge.lambda_=1.25", "--stream.merge.top_k=0.2"]
    assert study.runs[4].jobs() == [("ties@lambda=1.25@top_k=0.2", [])] and study.runs[0].sweep is None


@pytest.mark.parametrize("run, extra, message", [
    ({"sweep": {WEIGHT: []}}, {}, f"sweep option {WEIGHT} needs a non-empty list of values, got \\[\\]"),
    ({"sweep": {}}, {}, "sweep must map options to lists of values"),
    ({"sweep": [1, 10]}, {}, "sweep must map options to lists of values"),
    ({"sweep": {WEIGHT: 10}}, {}, "needs a non-empty list of values, got 10"),
    ({"sweep": {"weight": [1]}}, {}, "sweep option 'weight' is not a train.py unlearn setting"),
    ({"sweep": {"--config": ["a"]}}, {}, "sweep option '--config' is not a train.py unlearn setting"),
    ({"sweep": {"--data.seed": [1, 2]}}, {}, "sweep option --data.seed is set by the study itself"),
    ({"sweep": {WEIGHT: [1, "a/b"]}}, {}, "sweep value 'a/b' of .* must be a number"),
    ({"sweep": {WEIGHT: [1, 1.0, 2]}}, {}, r"lists \['1.0'\] more than once"),
    ({"sweep": {WEIGHT: [1, 10]}, "args": [*L2, f"{WEIGHT}=3"]}, {}, f"sweep option {WEIGHT} is also set by the run's args or common"),
    ({"sweep": {WEIGHT: [1, 10]}}, {"common": [f"{WEIGHT}=3"]}, "is also set by the run's args or common"),
    ({"sweep": {"--trainer.callbacks.init_args.wieght": [1, 10]}}, {},
     r"train.py unlearn refuses the sweep's setting \['--trainer.callbacks.init_args.wieght=1'\]: Option 'wieght' is not accepted"),
    ({"sweep": {"--data.no_such_option": [1, 2]}}, {}, "refuses the sweep's setting .*unrecognized arguments: --data.no_such_option=1"),
    ({"sweep": {"--model.lr": [0.001, "fast"]}}, {}, r"refuses the sweep's setting \['--model.lr=fast'\]: .*Expected a <class 'float'>"),
])
def test_bad_sweep_specs_are_named_before_any_run_starts(tmp_path, cli_error, run, extra, message):
    root = tmp_path / "study"
    config = write(tmp_path / "study.yaml", {"root": str(root), "runs": [{"name": "l2", "args": L2, **run}], **extra})
    line = cli_error(["study", "--config", str(config)])
    assert re.search(message, line), line
    assert line.startswith(f"error: {config}: run 'l2'") or "common" in str(extra)
    with pytest.raises(SweepSpecError):  # a StudyConfigError subclass
        Study.load(config)
    assert not root.exists()


@pytest.mark.parametrize("runs", [
    [{"name": "l2", "args": L2, "sweep": {WEIGHT: [1]}}, {"name": "l2", "args": L2}],
    [{"name": "l2", "args": L2}, {"name": "l2", "args": L2, "sweep": {WEIGHT: [1]}}],
    [{"name": "l2", "args": L2, "sweep": {WEIGHT: [1]}}, {"name": "l2", "args": L2, "sweep": {"--model.lr": [1]}}],
])
def test_a_sweep_name_may_not_be_another_runs_name(tmp_path, runs):
    with pytest.raises(StudyConfigError, match="run name 'l2' appears twice"):
        Study.load(write(tmp_path / "s.yaml", {"root": "r", "runs": runs}), check_options=False)


def test_a_study_with_a_two_value_sweep_runs_both_and_writes_the_trade_off(tmp_path, capfd):
    root = tmp_path / "study"
    args = [*FAST, "--trainer.callbacks+=configs/tinyworld/callbacks/l2_esd.yaml"]
    study = Study.load(write(tmp_path / "study.yaml", {
        "root": str(root), "report": True, "runs": [{"name": "l2", "args": args, "sweep": {WEIGHT: [1, 1000000]}}]}))
    statuses = run_study(study)
    assert {n: s["status"] for n, s in statuses.items()} == {"l2@weight=1": "finished", "l2@weight=1000000": "finished"}
    for weight in (1, 1000000):
        config = yaml.safe_load((root / f"l2@weight={weight}" / "tensorboard" / "config.yaml").read_text())
        assert config["trainer"]["callbacks"][-1]["init_args"]["weight"] == weight
    rows = json.loads((root / "sweeps.json").read_text())
    assert [(r["sweep"], r["run"], r["setting"], r["request"]) for r in rows] == [
        ("l2", "l2@weight=1", "weight=1", 1), ("l2", "l2@weight=1000000", "weight=1000000", 1)]
    results = {r["run"]: r for r in json.loads((root / "study_results.json").read_text()) if r["request"] == 1}
    for row in rows:
        assert row["IRA"] == results[row["run"]]["IRA"] and row["IRA_lo"] == results[row["run"]]["IRA_lo"]
        assert row["values"] == {WEIGHT: int(row["setting"].split("=")[1])}
    assert sum(r["best"] for r in rows) == (1 if any(r["UA"] >= 95 for r in rows) else 0)
    lines = (root / "sweeps.csv").read_text().splitlines()
    assert lines[0].split(",")[:8] == ["sweep", "run", "setting", "request", "concept", "kind", "replicates", "interval"]
    assert lines[0].split(",")[8:11] == ["UA", "UA_lo", "UA_hi"] and lines[0].endswith(",best") and len(lines) == 3
    out = capfd.readouterr().out
    assert "[study] sweep l2: " in out
    page = (root / "report" / "report.html").read_text()
    assert "Strength sweeps" in page and "weight=1000000" in page
