"""ESD x_t source: the trajectory bank vs the ESD reference code's sampling (``xt_source=reference``).

    python benchmarks/esd_bank_vs_reference.py steps  [--repeats 3] [--steps 4]
    python benchmarks/esd_bank_vs_reference.py stream [--requests 3]
    python benchmarks/esd_bank_vs_reference.py {steps,stream} --quick      # smoke run

``steps``: speed, one process. One module with the default config's method and trainable set
(``esd-x``, 25 DDIM steps, guidance 3, 64 bank trajectories, batch 16) serves the config's
first request; ``--repeats`` rounds alternate ``--steps`` training steps (loss + backward) of
each source from the same weights and seeds. A bank step is charged its share of the bank
build (build time / the config's 100 steps per request). Prints wall and process CPU seconds
per step and the reference / bank ratio of the medians (CPU time is the steadier figure on a
shared machine).

``stream``: quality and request time. The default stream config
(``configs/tinyworld/esd_styles_sequential.yaml``, its steps, batch and seed) with its first
``--requests`` requests, served sequentially through the real CLI with each source into fresh
run folders (bank first), evaluated only after the last request (``--stream.evaluate_every``
= the number of requests; the base evaluation is cached and shared). Prints each source's
per-request train seconds, the reference / bank ratio of their sums, and UA / IRA / CRA after
the last request on the config's evaluation (16 styles x 12 objects, one image per prompt,
DPM-Solver++ 8 steps, guidance 4, evaluation seed of the config).

Measured (RESULTS.md): ``steps --steps 2 --repeats 2`` at load ~12 gave 18.4x CPU per step;
whole default requests through the CLI on a quieter machine (one thread, two runs each) gave
7.0x (bank 18 s, reference 126-127 s of training), the figure to quote; a 3-request stream at
batch 4 is in RESULTS.md with its UA / IRA / CRA.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from _common import QUICK_OBJECTS, QUICK_STYLES, REPO, machine_line, median, parser, quiet_lightning, setup_torch, table

SOURCES = ("bank", "reference")
CONFIG = REPO / "configs/tinyworld/esd_styles_sequential.yaml"
DEFAULT_REQUESTS = ["Abstractionism", "Byzantine", "Cartoon", "Ukiyo-e", "Van Gogh", "Neon Lines"]


def run_steps(args) -> None:
    """Per-step time of each source on one warm module (bank build amortized over a request)."""
    import torch

    from lightning_unlearn.methods.esd import ESD
    from lightning_unlearn.requests import Request
    from lightning_unlearn.unlearning_module import UnlearningModule

    ddim, trajectories, batch, request_steps = (4, 2, 2, 3) if args.quick else (25, 64, 16, 100)
    steps = 1 if args.quick else args.steps
    repeats = 1 if args.quick else args.repeats
    method = ESD(negative_guidance=1.0, ddim_steps=ddim, start_guidance=3.0, xt_source="bank",
                 bank_trajectories=trajectories)
    torch.manual_seed(0)
    module = UnlearningModule(method=method, trainable="esd-x", lr=5e-4)
    request = Request(DEFAULT_REQUESTS[0], "style")
    caption = DEFAULT_REQUESTS[0]
    wall, cpu = time.perf_counter(), time.process_time()
    module.begin_request(0, request, [caption])  # builds the bank
    bank_wall, bank_cpu = time.perf_counter() - wall, time.process_time() - cpu
    start = {k: v.clone() for k, v in module.trainable_state().items()}

    print(machine_line())
    print(f"ESD request {caption!r}: bank of {trajectories} x {ddim} x_t built in {bank_wall:.2f} s "
          f"({bank_cpu:.2f} s CPU), charged / {request_steps} steps; batch {batch}, {steps} step(s) x "
          f"{repeats} round(s) per source, alternating\n")
    times: dict[str, dict[str, list[float]]] = {s: {"wall": [], "cpu": []} for s in SOURCES}
    for rnd in range(repeats):
        for source in SOURCES:
            module.method.xt_source = source
            module.load_trainable_state(start)
            for step in range(steps):
                seeds = torch.arange(batch) + 1000 * (rnd * steps + step)
                module.unet.zero_grad(set_to_none=True)
                wall, cpu = time.perf_counter(), time.process_time()
                module.method.loss(module, {"seed": seeds, "caption": [caption] * batch}).backward()
                times[source]["wall"].append(time.perf_counter() - wall)
                times[source]["cpu"].append(time.process_time() - cpu)
    rows = []
    for source in SOURCES:
        share = (bank_wall / request_steps, bank_cpu / request_steps) if source == "bank" else (0.0, 0.0)
        rows.append([source, median(times[source]["wall"]) + share[0], median(times[source]["cpu"]) + share[1]])
    print(table(["x_t source", "step wall s (median)", "step CPU s (median)"], rows))
    print(f"\nreference / bank per step: {rows[1][1] / rows[0][1]:.2f}x wall, {rows[1][2] / rows[0][2]:.2f}x CPU")


def stream_args(run_dir: Path, cache_dir: Path, source: str, requests: list[str], quick: bool) -> list[str]:
    args = [
        "unlearn", "--config", str(CONFIG), f"--data.requests=[{', '.join(requests)}]",
        f"--stream.run_dir={run_dir}", f"--model.method.init_args.xt_source={source}", "--trainer.logger=false",
        "--stream.semantic_analysis=false", f"--stream.evaluation.cache_dir={cache_dir}",
        f"--stream.evaluate_every={len(requests)}",
    ]
    if quick:
        args += [
            "--data.steps_per_request=2", "--data.batch_size=2", "--model.method.init_args.ddim_steps=4",
            "--model.method.init_args.bank_trajectories=2", "--stream.evaluation.steps=3",
            f"--data.styles=[{', '.join(QUICK_STYLES)}]", f"--data.objects=[{', '.join(QUICK_OBJECTS)}]",
        ]
    return args


def run_stream(args) -> None:
    """A short sequential stream with each source: request times and the final UA / IRA / CRA."""
    from lightning_unlearn.cli import main as cli_main
    from lightning_unlearn.run_folder import RunFolder

    requests = (QUICK_STYLES[:2] if args.quick else DEFAULT_REQUESTS[: args.requests])
    print(machine_line())
    rows, train = [], {}
    with tempfile.TemporaryDirectory(prefix="esd_bank_vs_reference_") as root:
        for source in SOURCES:
            run_dir = Path(root) / source
            cli_main(stream_args(run_dir, Path(root) / "eval_cache", source, requests, args.quick))
            results = RunFolder(run_dir).read_results()
            served = [r for r in results if r["train_steps"]]  # results.json starts with the base's row
            train[source] = [r["train_seconds"] for r in served]
            last = results[-1]
            rows.append([source, sum(train[source]), " / ".join(f"{s:.1f}" for s in train[source]),
                         last["UA"], last["IRA"], last["CRA"]])
    print(f"\nESD stream {requests} (sequential, same seed), evaluated after the last request\n")
    print(table(["x_t source", "train s (sum)", "per request s", "UA", "IRA", "CRA"], rows))
    print(f"\nreference / bank train time: {rows[1][1] / rows[0][1]:.2f}x; "
          f"UA, IRA, CRA reference - bank: {', '.join(f'{rows[1][i] - rows[0][i]:+.1f}' for i in (3, 4, 5))} points")


def main() -> None:
    p = parser(__doc__, repeats=3)
    p.add_argument("what", choices=("steps", "stream"), help="per-step speed, or a short stream's time and quality")
    p.add_argument("--steps", type=int, default=4, help="steps: training steps per source and round (default %(default)s)")
    p.add_argument("--requests", type=int, default=3, help="stream: the config's first N requests (default %(default)s)")
    args = p.parse_args()
    setup_torch(args.threads)
    quiet_lightning()
    run_steps(args) if args.what == "steps" else run_stream(args)


if __name__ == "__main__":
    main()
