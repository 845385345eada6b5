"""The report's robustness section: present for runs that were attacked, absent otherwise."""

from __future__ import annotations

import json
import shutil

from lightning_unlearn.attacks.trend import NO_ATTACK, stream_trend
from lightning_unlearn.cli import main
from lightning_unlearn.report.writer import write_report
from lightning_unlearn.run_folder import RunFolder

TINY_ATTACKS = [
    "--stream.attacks.names=[relearn, prompt]", "--stream.attacks.images=2", "--stream.attacks.relearn.budgets=[1]",
    "--stream.attacks.relearn.batch_size=2", "--stream.attacks.prompt.iterations=1", "--stream.attacks.prompt.candidates=2",
]


def test_attacked_runs_get_a_robustness_section(stream_run, copy_run, tmp_path):
    """With targets=all_erased the section also pairs the first request's concept, attacked after its own
    request and after the last one, pooled as the trend module computes it."""
    plain = write_report([stream_run], tmp_path / "plain").markdown.read_text()
    assert "Robustness to adversarial recovery" not in plain
    attacked = copy_run(stream_run, tmp_path / "attacked")
    # The copy leaves tensorboard/ behind; the attack reads the run's settings from its config.yaml.
    shutil.copy(RunFolder(stream_run).config_path(), attacked / "config.yaml")
    main(["attack", str(attacked), *TINY_ATTACKS, "--stream.attacks.targets=all_erased"])
    files = write_report([attacked], tmp_path / "report")
    text = files.markdown.read_text()
    assert "Robustness to adversarial recovery" in text
    assert any(f.name == "attacks.png" for f in files.figures)
    rows = json.loads((attacked / "results.json").read_text())
    line = next(line for line in text.splitlines() if line.startswith("| 2 | Cartoon"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2] == f"{rows[2]['relearn_asr']:.1f} [{rows[2]['relearn_asr_low']:.1f}, {rows[2]['relearn_asr_high']:.1f}]"
    assert cells[3].startswith(f"{rows[2]['prompt_asr']:.1f} [")
    trend = stream_trend(attacked)
    assert trend.last_request == 2 and [t.attack for t in trend.trends] == [NO_ATTACK, "prompt", "relearn@1"]
    assert "earlier erasures after their own request vs after request 2" in text
    for row in trend.trends:
        assert row.concepts == [rows[1]["concept"]]
        line = next(line for line in text.splitlines() if line.startswith(f"| {row.attack} |"))
        assert [c.strip() for c in line.strip("|").split("|")][2:5] == [
            row.own.estimate().text(), row.last.estimate().text(), row.change.text()]
