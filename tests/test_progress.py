"""The stream's live view: plain lines in a log, one redrawn line in a terminal, Lightning's
per-fit banners gone, and the user's own choice (Lightning's bar, --stream.progress=false) wins."""

from __future__ import annotations

import io
import logging
import re
from types import SimpleNamespace

import pytest

from lightning_unlearn.cli import main
from lightning_unlearn.progress import LightningBannerFilter, StreamProgress, format_duration
from tests.test_cli_stream import FAST

STREAM = ["unlearn", "--config", "configs/tinyworld/esd_styles_sequential.yaml", "--data.requests=[Van Gogh, Cartoon]",
          "--data.steps_per_request=10", *[a for a in FAST if not a.startswith("--data.steps_per_request")]]

# The display's own lines (the stream logs "request i/N (...)" and "  UA ..." itself when it is off).
DISPLAY_LINE = re.compile(r"^(stream: requests |request \d+/\d+ \S.*(: step |done: |preparing ))")


def test_a_log_gets_plain_lines_for_every_request_and_no_lightning_banners(tmp_path, capfd):
    main([*STREAM, f"--stream.run_dir={tmp_path / 'run'}"])
    err = capfd.readouterr().err
    assert "\r" not in err and "\x1b[" not in err  # a log file reads top to bottom
    assert "`Trainer.fit` stopped" not in err and "GPU available" not in err and "TPU available" not in err
    lines = err.splitlines()
    assert any(line.startswith("stream: requests 1-2 of 2, 10 steps each on cpu") for line in lines)
    for i, concept in ((1, "Van Gogh"), (2, "Cartoon")):
        start = [line for line in lines if line.startswith(f"request {i}/2 {concept}: preparing (step 0/10)")]
        steps = [line for line in lines if line.startswith(f"request {i}/2 {concept}: step ")]
        done = [line for line in lines if line.startswith(f"request {i}/2 {concept} done: UA ")]
        assert len(start) == 1 and len(done) == 1, err
        # ~every 10% of 10 steps: 1..9 (the last step's line is the request's end line)
        assert [int(re.search(r"step (\d+)/10", line).group(1)) for line in steps] == list(range(1, 10))
        assert re.search(r"IRA \d+\.\d  CRA \d+\.\d  \(10 steps, \d+s train, \d+s eval\) \| elapsed \d+:\d\d, ETA ",
                         done[0]), done[0]
    first_request = [line for line in lines if line.startswith("request 1/2")]
    assert all("ETA estimating..." in line for line in first_request[:-1])  # nothing finished yet
    assert re.search(r"ETA \d+:\d\d$", first_request[-1])  # once request 1 is done: an estimate
    assert all(re.search(r"ETA \d+:\d\d", line) for line in lines if line.startswith("request 2/2"))
    # The display replaces the stream's own announcements instead of doubling them.
    assert not any(line.startswith("request 1/2 (sequential)") or line.startswith("  UA ") for line in lines)


@pytest.mark.parametrize("switch", ["--stream.progress=false", "--trainer.enable_progress_bar=true"])
def test_the_users_choice_turns_the_display_off(tmp_path, capfd, caplog, switch):
    with caplog.at_level(logging.INFO):
        main([*STREAM, "--data.steps_per_request=2", f"--stream.run_dir={tmp_path / 'run'}", switch])
    captured = capfd.readouterr()
    err = captured.err
    assert not [line for line in err.splitlines() if DISPLAY_LINE.match(line.split("\r")[-1])], err
    assert "ETA" not in err
    # ...and the stream says what it did the way it did before the display.
    assert "request 1/2 (sequential): unlearn style Van Gogh" in caplog.text
    assert re.search(r"UA \d+\.\d .* IRA \d+\.\d  CRA \d+\.\d", caplog.text)
    if switch.startswith("--trainer"):
        assert "Epoch 0/" in captured.out  # Lightning's own bar (on stdout) is what the user asked for


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _trainer(step: int) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, is_global_zero=True)


def test_a_terminal_gets_one_line_redrawn_with_carriage_returns_and_throttled():
    out, clock = Tty(), FakeClock()
    view = StreamProgress(stream=out, min_interval=0.25, clock=clock)
    assert view.interactive
    view.start_stream(3, 0, 100, [True, True, True])
    view.start_request(0, "Van Gogh", 100, start_step=0)
    draws = view.lines
    for step in range(1, 11):  # ten steps in 0.1 s: within one throttle interval, no redraw
        clock.now += 0.01
        view.on_train_batch_end(_trainer(step), None, None, None, step)
    assert view.lines == draws
    clock.now += 0.25
    view.on_train_batch_end(_trainer(11), None, None, None, 11)
    assert view.lines == draws + 1
    assert out.getvalue().rsplit("\r", 1)[1].startswith("request 1/3 Van Gogh: step 11/100 | elapsed 0:00, ETA estimating...")
    assert "\n" not in out.getvalue().split("stream: requests 1-3 of 3, 100 steps each\n", 1)[1]  # redrawn in place
    clock.now += 100.0  # steps 11..100 take 100 s
    view.on_train_batch_end(_trainer(100), None, None, None, 100)
    view.end_request({"UA": 90.0, "UA_latest": 90.0, "IRA": 80.0, "CRA": 70.0, "train_steps": 100,
                      "train_seconds": 100.0, "eval_seconds": 20.0})
    text = out.getvalue()
    # The request's end is a permanent line, started on a blanked status line.
    end = text.rsplit("\r", 1)[1]
    assert end.startswith("request 1/3 Van Gogh done: UA 90.0  UA_latest 90.0  IRA 80.0  CRA 70.0")
    # 2 requests left: 200 steps at 1 s + 2 evaluations at 20 s
    assert view.eta_seconds() == pytest.approx(240.0)
    assert end.rstrip().endswith("ETA 4:00")
    view.start_request(1, "Cartoon", 100, start_step=100)
    clock.now += 1.0
    view.on_train_batch_end(_trainer(150), None, None, None, 150)
    status = out.getvalue().rsplit("\r", 1)[1]
    assert status.startswith("request 2/3 Cartoon: step 50/100")
    assert "ETA 3:10" in status and "last UA 90.0 IRA 80.0 CRA 70.0" in status
    view.finish()
    assert out.getvalue().endswith("\r")  # the terminal is left on a blank line


def test_a_log_stream_is_plain_and_coarse():
    out, clock = io.StringIO(), FakeClock()
    view = StreamProgress(stream=out, clock=clock, log_seconds=30.0)
    assert not view.interactive
    view.start_stream(1, 0, 1000, [True])
    view.start_request(0, "Monet", 1000, start_step=0)
    for step in range(1, 1001):
        clock.now += 0.001
        view.on_train_batch_end(_trainer(step), None, None, None, step)
    clock.now += 31.0  # a stall: a line after 30 s even between two 10% marks
    view.on_train_batch_end(_trainer(1000), None, None, None, 1000)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 + 9 + 1  # stream, request start, 10%..90%, the stall
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_the_banner_filter_drops_only_lightnings_per_fit_info_lines():
    def passes(message: str, level: int = logging.INFO) -> bool:
        return LightningBannerFilter().filter(logging.LogRecord("x", level, "", 0, message, None, None))

    assert not passes("`Trainer.fit` stopped: `max_steps=100` reached.")
    assert not passes("GPU available: False, used: False")
    assert not passes("TPU available: False, using: 0 TPU cores")
    assert passes("`Trainer.fit` stopped: `max_steps=100` reached.", logging.WARNING)  # never hide a warning
    assert passes("`Trainer.fit` stopped: No training batches.")
    assert passes("request 1/12 (sequential): unlearn style Van Gogh")


def test_durations_read_at_a_glance():
    assert format_duration(59.6) == "1:00"
    assert format_duration(3725) == "1:02:05"
    assert format_duration(-3) == "0:00"
