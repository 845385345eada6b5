"""Resume bookkeeping overhead: per-request time with mid-request checkpoints vs without.

    python benchmarks/resume_overhead.py [--repeats 3] [--steps 20] [--every 5 1] [--quick] [--threads N]

Serves the same short tiny-world stream (3 style requests, ESD) into fresh run folders with
``--stream.checkpoint_every_n_steps`` unset and set to each ``--every`` value, alternating the
variants ``--repeats`` times, and prints the medians per request of

- ``train``: the request's fit (including the checkpoints saved during it),
- ``commit``: saving the request's weights, manifest, results and ledger atomically (fsync'ed),
  timed separately on the same trainable state,

and the ratio of ``train + commit`` to the training alone of the run without checkpoints (no
resume bookkeeping at all). The stream cannot run without its ledger and atomic commits, so
``commit`` is timed on its own: it is their whole cost.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from _common import QUICK_OBJECTS, QUICK_STYLES, REPO, machine_line, median, parser, quiet_lightning, setup_torch, table

REQUESTS = "[Van Gogh, Cartoon, Monet]"


def stream_args(run_dir: Path, steps: int, every: int | None) -> list[str]:
    args = [
        "unlearn", "--config", str(REPO / "configs/tinyworld/esd_styles_sequential.yaml"),
        f"--data.requests={REQUESTS}", f"--stream.run_dir={run_dir}",
        f"--data.steps_per_request={steps}", "--data.batch_size=8",
        "--model.method.init_args.ddim_steps=10", "--model.method.init_args.bank_trajectories=16",
        "--stream.evaluation.steps=4", "--stream.semantic_analysis=false", "--trainer.logger=false",
        f"--data.styles=[{', '.join(QUICK_STYLES)}]", f"--data.objects=[{', '.join(QUICK_OBJECTS)}]",
    ]
    if every is not None:
        args.append(f"--stream.checkpoint_every_n_steps={every}")
    return args


def commit_seconds(run_dir: Path, repeats: int = 5) -> float:
    """Median time of one request's atomic commit (weights + manifest + results + ledger)."""
    from lightning_unlearn.atomic_io import save_weights, write_json
    from lightning_unlearn.ledger import read_ledger
    from lightning_unlearn.run_folder import MANIFEST_FILE, WEIGHTS_FILE, RunFolder

    run = RunFolder(run_dir)
    ledger = read_ledger(run.path)
    weights = run.verified_weights(ledger["completed"][0])
    rows = run.read_results()
    times = []
    with tempfile.TemporaryDirectory(dir=run_dir) as scratch:
        out = RunFolder(scratch)  # the same writes as a commit, into a scratch folder
        for _ in range(repeats):
            started = time.perf_counter()
            sha = save_weights(weights, out.path / WEIGHTS_FILE)
            write_json({"sha256": sha, "keys": len(weights)}, out.path / MANIFEST_FILE)
            out.write_results(rows)
            out.write_ledger(ledger)
            times.append(time.perf_counter() - started)
    return median(times)


def main() -> None:
    p = parser(__doc__, repeats=3)
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per request")
    p.add_argument("--every", type=int, nargs="+", default=[5, 1], help="checkpoint intervals to compare")
    args = p.parse_args()
    if args.quick:
        args.repeats, args.steps, args.every = 1, 4, [2]
    setup_torch(args.threads)
    print(machine_line())

    from lightning_unlearn.cli import _quiet
    from lightning_unlearn.cli import main as cli_main
    from lightning_unlearn.run_folder import RunFolder

    _quiet()
    quiet_lightning()
    variants: list[int | None] = [None, *args.every]
    train: dict[int | None, list[float]] = {v: [] for v in variants}
    commit: dict[int | None, list[float]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="resume_overhead_") as root:
        for repeat in range(args.repeats):
            for every in variants:
                run = Path(root) / f"{every}-{repeat}"
                cli_main(stream_args(run, args.steps, every))
                rows = RunFolder(run).read_results()[1:]
                train[every] += [r["train_seconds"] for r in rows]
                commit[every].append(commit_seconds(run))

    bare = median(train[None])  # training alone: no checkpoints, no commit
    rows = []
    for every in variants:
        t, c = median(train[every]), median(commit[every])
        label = "none" if every is None else f"every {every} steps ({(args.steps - 1) // every} per request)"
        rows.append([label, t, c, t + c, f"{(t + c) / bare:.3f}"])
    print(f"\n{len(REQUESTS.split(','))} requests x {args.steps} steps, {args.repeats} runs per variant; "
          "medians per request (seconds)\n")
    print(table(["mid-request checkpoints", "train", "commit", "train + commit",
                 "ratio to training without bookkeeping"], rows))


if __name__ == "__main__":
    main()
