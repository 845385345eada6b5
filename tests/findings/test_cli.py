"""``train.py findings`` end to end on a tiny study: runs, judges, writes findings.md, findings.json
and the report with the findings first; resumes; refuses bad input before any work."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from lightning_unlearn.cli import main
from lightning_unlearn.findings.cli import PROFILES
from lightning_unlearn.findings.paper import BEYOND_PAPER, DOMAINS, METHODS, SETTINGS
from lightning_unlearn.findings.rules import VERDICTS
from lightning_unlearn.study import Study

TINY = [
    "--config", "configs/tinyworld/esd_styles_sequential.yaml", "--data.requests=[Van Gogh, Cartoon]",
    "--data.steps_per_request=2", "--data.batch_size=2", "--model.method.init_args.ddim_steps=3",
    "--model.method.init_args.bank_trajectories=2", "--stream.evaluation.steps=4",
    "--data.styles=[Van Gogh, Cartoon, Monet, Picasso]", "--data.objects=[circle, star, house]",
]


def test_findings_runs_a_study_judges_it_and_resumes(tmp_path, capfd):
    root = tmp_path / "study"
    config = tmp_path / "findings.yaml"
    config.write_text(yaml.safe_dump({"root": str(root), "runs": [
        {"name": "esd_styles_sequential", "args": TINY},
        {"name": "esd_styles_simultaneous", "args": [*TINY, "--config", "configs/protocols/simultaneous.yaml",
                                                     "--stream.simultaneous.check_every_n_steps=2",
                                                     "--stream.simultaneous.max_steps=4"]},
    ]}))
    main(["findings", "--config", str(config)])
    out = capfd.readouterr().out
    for number in range(1, 6):
        assert re.search(rf"\[findings\] {number}\. .*: ({'|'.join(VERDICTS)})$", out, re.M), out
    record = json.loads((root / "findings.json").read_text())
    assert [f["number"] for f in record["findings"]] == [1, 2, 3, 4, 5]
    cost = record["findings"][1]["checks"][0]
    assert cost["ours"].startswith("8 / 4 = 2.000x")  # 2 requests x 4 capped steps vs 2 x 2
    assert record["findings"][4]["verdict"] == "not run"  # no regularizer runs in this study
    text = (root / "findings.md").read_text()
    assert "Rule (difference): holds if the 95% interval of the difference lies above 0" in text
    assert "esd_styles_sequential (2 requests, 1 replicate(s), 3 image(s) a prompt" in text
    page = (root / "report" / "report.html").read_text()
    assert page.index("Findings: the paper") < page.index(">Runs<")

    main(["findings", "--config", str(config)])
    assert capfd.readouterr().out.count("finished already, skipped") == 2


def test_no_run_judges_without_training_and_needs_the_folder(tmp_path, cli_error):
    config = tmp_path / "f.yaml"
    config.write_text(yaml.safe_dump({"root": str(tmp_path / "none"), "runs": [{"name": "ca_styles_sequential", "args": TINY}]}))
    assert "--no-run: the study folder" in cli_error(["findings", "--config", str(config), "--no-run"])
    assert not (tmp_path / "none").exists()
    (tmp_path / "none").mkdir()
    main(["findings", "--config", str(config), "--no-run"])
    record = json.loads((tmp_path / "none" / "findings.json").read_text())
    assert record["unfinished"] == ["ca_styles_sequential"] and {f["verdict"] for f in record["findings"]} == {"not run"}


def test_a_bad_profile_is_named(cli_error):
    assert "--profile 'quik' is not a findings profile; choose one of ['full', 'quick']" in cli_error(
        ["findings", "--profile", "quik"])


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_shipped_profiles_name_their_runs_as_the_findings_read_them(profile):
    study = Study.load(Path("configs") / f"{PROFILES[profile]}.yaml")
    names = {run.name for run in study.runs}
    for method in ("ca",):
        for domain in DOMAINS:
            assert {f"{method}_{domain}_{s}" for s in SETTINGS} <= names
    for name in names:
        method, domain, setting = name.split("_", 2)
        assert method in METHODS and domain in DOMAINS and (setting in SETTINGS or setting in BEYOND_PAPER), name
    for run in study.runs:
        assert run.args[:2] == ["--config", f"configs/tinyworld/{run.name.split('_')[0]}_{run.name.split('_')[1]}_sequential.yaml"]
        for i, arg in enumerate(run.args):
            path = run.args[i + 1] if arg == "--config" else arg.split("=", 1)[1] if arg.startswith("--trainer.callbacks+=") else None
            assert path is None or Path(path).is_file(), (run.name, path)
