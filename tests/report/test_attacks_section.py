"""The report's robustness section: present for runs that were attacked, absent otherwise."""

from __future__ import annotations

import json
import shutil

from lightning_unlearn.cli import main
from lightning_unlearn.report.writer import write_report
from lightning_unlearn.run_folder import RunFolder

TINY_ATTACKS = [
    "--stream.attacks.names=[relearn, prompt]", "--stream.attacks.images=2", "--stream.attacks.relearn.budgets=[1]",
    "--stream.attacks.relearn.batch_size=2", "--stream.attacks.prompt.iterations=1", "--stream.attacks.prompt.candidates=2",
]


def test_attacked_runs_get_a_robustness_section(stream_run, copy_run, tmp_path):
    plain = write_report([stream_run], tmp_path / "plain").markdown.read_text()
    assert "Robustness to adversarial recovery" not in plain
    attacked = copy_run(stream_run, tmp_path / "attacked")
    # The copy leaves tensorboard/ behind; the attack reads the run's settings from its config.yaml.
    shutil.copy(RunFolder(stream_run).config_path(), attacked / "config.yaml")
    main(["attack", str(attacked), *TINY_ATTACKS])
    files = write_report([attacked], tmp_path / "report")
    text = files.markdown.read_text()
    assert "Robustness to adversarial recovery" in text
    assert any(f.name == "attacks.png" for f in files.figures)
    rows = json.loads((attacked / "results.json").read_text())
    line = next(line for line in text.splitlines() if line.startswith("| 2 | Cartoon"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2] == f"{rows[2]['relearn_asr']:.1f} [{rows[2]['relearn_asr_low']:.1f}, {rows[2]['relearn_asr_high']:.1f}]"
    assert cells[3].startswith(f"{rows[2]['prompt_asr']:.1f} [")
