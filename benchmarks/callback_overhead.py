"""Regularizer overhead: median training-step time with each callback, as a ratio to the plain step.

    python benchmarks/callback_overhead.py [--repeats 3] [--steps 30] [--batch-size 16]
    python benchmarks/callback_overhead.py --quick        # smoke run

One tiny-world ESD module (esd-x, AdamW lr 5e-4, the default stream's x_t bank) serves its
first style request once (the bank is built once and shared). Then, ``--repeats`` rounds, each
variant -- plain, L1, L2, top-k, projection (gradient), projection (update), projection + top-k
-- trains ``--steps`` optimizer steps from the same request-start weights on a fresh Trainer
with the same seeds, the variants alternating within a round. A step is timed from
``on_train_batch_start`` to ``on_train_batch_end`` of a timer callback listed last (so it
covers forward, backward, the optimizer and every regularizer hook); the first steps of each
fit are dropped as warm-up, and the median over all kept steps of all rounds is reported.

Per-request work is reported apart: the request-start hooks (top-k's importance gradient,
projection's protected directions) and, for top-k, the importance as a fraction of a whole
request = bank build + importance + ``--request-steps`` steps at the top-k step time.
"""

from __future__ import annotations

import time
from typing import Any

from _common import machine_line, median, parser, quiet_lightning, setup_torch, table

WARMUP = 3


def main() -> None:
    p = parser(__doc__, repeats=3)
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per timed fit")
    p.add_argument("--batch-size", type=int, default=16, help="training batch (the default stream's)")
    p.add_argument("--request-steps", type=int, default=100, help="steps of a whole request (for the top-k fraction)")
    args = p.parse_args()
    setup_torch(args.threads)
    quiet_lightning()
    steps = 6 if args.quick else args.steps
    batch = 4 if args.quick else args.batch_size
    repeats = 1 if args.quick else args.repeats

    from lightning.pytorch import Callback, Trainer, seed_everything

    from lightning_unlearn.callbacks.anchor import AnchorRegularizer
    from lightning_unlearn.callbacks.base import request_callbacks
    from lightning_unlearn.callbacks.gradient_projection import GradientProjection
    from lightning_unlearn.callbacks.selective_finetuning import SelectiveFineTuning
    from lightning_unlearn.datamodules.concept_stream import ConceptStreamDataModule
    from lightning_unlearn.methods import ESD
    from lightning_unlearn.protocols import plan_request
    from lightning_unlearn.serving import attach_datamodule
    from lightning_unlearn.unlearning_module import UnlearningModule

    class StepTimer(Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self._t = 0.0

        def on_train_batch_start(self, trainer: Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
            self._t = time.perf_counter()

        def on_train_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            self.times.append(time.perf_counter() - self._t)

    variants = {
        "plain": lambda: [],
        "L1 (anchor)": lambda: [AnchorRegularizer(kind="l1", weight=50.0)],
        "L2 (anchor)": lambda: [AnchorRegularizer(kind="l2", weight=25000.0)],
        "top-k": lambda: [SelectiveFineTuning(top_k=0.05, importance_batches=2 if args.quick else 8)],
        "projection gradient": lambda: [GradientProjection(mode="gradient")],
        "projection update": lambda: [GradientProjection(mode="update")],
        "projection + top-k": lambda: [GradientProjection(mode="update"),
                                       SelectiveFineTuning(top_k=0.05, importance_batches=2 if args.quick else 8)],
    }

    method = ESD(ddim_steps=6 if args.quick else 25, bank_trajectories=4 if args.quick else 64,
                 start_guidance=3.0, xt_source="bank")
    module = UnlearningModule(method=method, trainable="esd-x", lr=5e-4)
    # A request after two others, so "protect the unlearned" has directions to protect.
    data = ConceptStreamDataModule(requests=["Abstractionism", "Byzantine", "Cartoon"], batch_size=batch,
                                   steps_per_request=steps)
    index = 2
    plan = plan_request(data.requests, index, "sequential")
    data.begin_request(plan)
    request = plan.request
    seed_everything(index, verbose=False)
    started = time.perf_counter()
    module.begin_request(plan, data.erase_captions(request))
    bank_seconds = time.perf_counter() - started
    start_state = {k: v.clone() for k, v in module.trainable_state().items()}

    print(machine_line())
    print(f"ESD request {request.concept!r}: x_t bank built in {bank_seconds:.2f} s; "
          f"{steps} steps x batch {batch} per fit, {repeats} round(s), first {WARMUP} steps dropped\n")

    step_times: dict[str, list[float]] = {name: [] for name in variants}
    start_hooks: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, make in variants.items():
            module.load_trainable_state(start_state)
            module.unet.zero_grad(set_to_none=True)
            timer = StepTimer()
            trainer = Trainer(
                max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, accelerator="cpu", devices=1, num_sanity_val_steps=0,
                limit_val_batches=0, callbacks=[*make(), timer],
            )
            attach_datamodule(trainer, data)  # the hooks below run before any fit, as in serve_request
            seed_everything(index, verbose=False)
            started = time.perf_counter()
            for callback in request_callbacks(trainer):
                callback.on_request_start(trainer, module)
            start_hooks[name].append(time.perf_counter() - started)
            trainer.fit(module, datamodule=data)
            for callback in request_callbacks(trainer):
                callback.on_request_end(trainer, module)
            step_times[name].extend(timer.times[WARMUP:] or timer.times)

    plain = median(step_times["plain"])
    rows = []
    for name in variants:
        step = median(step_times[name])
        rows.append([name, 1000 * step, step / plain, 100 * (step / plain - 1), median(start_hooks[name])])
    print(table(["callback", "step ms (median)", "ratio to plain", "overhead %", "request-start s"], rows))

    importance = median(start_hooks["top-k"])
    request_seconds = bank_seconds + importance + args.request_steps * median(step_times["top-k"])
    print(f"\ntop-k importance: {importance:.2f} s = {100 * importance / request_seconds:.1f}% of a "
          f"{args.request_steps}-step request ({request_seconds:.1f} s: bank {bank_seconds:.1f} s + importance + steps)")


if __name__ == "__main__":
    main()
