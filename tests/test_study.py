"""Study runner: config checks, runs in their own folders, finished runs skipped."""

import json
from pathlib import Path

import pytest
import yaml

from lightning_unlearn.study import Study, StudyConfigError, is_finished, run_study

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
    for path in Path("configs/tinyworld").glob("study_*.yaml"):
        study = Study.load(path)
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
