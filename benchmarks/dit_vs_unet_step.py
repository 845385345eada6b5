"""Per-step cost of unlearning the tiny DiT (flow matching) vs the tiny UNet (epsilon), one run.

    python benchmarks/dit_vs_unet_step.py [--repeats 3] [--steps 20] [--batch-size 16]
    python benchmarks/dit_vs_unet_step.py --quick        # smoke run

For each method (ESD with the default stream's x_t bank, esd-x; Concept Ablation, kv-xattn) and
backbone (``tinyworld``, ``tinyworld-dit`` with 8 blocks, ``tinyworld-dit-12``) one module serves
its first style request (``begin_request``: the bank / anchor images are built once, not timed).
Then, ``--repeats`` rounds, the three backbones alternating within a round, each takes ``--steps`` training steps
(the method's loss, backward, AdamW) on the same seeds; the first steps of a round are dropped as
warm-up and the median over the kept steps of all rounds is reported, with DiT / UNet ratios
measured in the same run (so the machine's load touches all alike).
"""

from __future__ import annotations

import time

from _common import machine_line, median, parser, quiet_lightning, setup_torch, table

WARMUP = 2
BACKBONES = ("tinyworld", "tinyworld-dit", "tinyworld-dit-12")
DITS = {"tinyworld-dit": "DiT", "tinyworld-dit-12": "DiT-12"}
"""Each DiT and the name its ratio to the UNet is printed under."""


def main() -> None:
    p = parser(__doc__, repeats=3)
    p.add_argument("--steps", type=int, default=20, help="timed training steps per round")
    p.add_argument("--batch-size", type=int, default=16, help="training batch (the default stream's)")
    args = p.parse_args()
    setup_torch(args.threads)
    quiet_lightning()
    steps = WARMUP + 3 if args.quick else WARMUP + args.steps
    batch = 2 if args.quick else args.batch_size
    repeats = 1 if args.quick else args.repeats

    import torch

    from lightning_unlearn.methods import ESD, ConceptAblation
    from lightning_unlearn.protocols import plan_request
    from lightning_unlearn.requests import Request
    from lightning_unlearn.unlearning_module import UnlearningModule

    def method(name: str):
        if name == "ESD":
            return ESD(ddim_steps=4 if args.quick else 25, bank_trajectories=2 if args.quick else 64), "esd-x"
        return ConceptAblation(images_per_anchor=2 if args.quick else 64, ddim_steps=4 if args.quick else 25), "kv-xattn"

    print(machine_line())
    rows, ratios = [], {}
    request = [Request("Van Gogh", "style")]
    captions = ["a painting in Van Gogh style"] * batch
    for name in ("ESD", "CA"):
        modules, times = {}, {b: [] for b in BACKBONES}
        for backbone in BACKBONES:
            torch.manual_seed(0)
            loss_fn, trainable = method(name)
            module = UnlearningModule(method=loss_fn, trainable=trainable, backbone=backbone, lr=5e-4)
            module.begin_request(plan_request(request, 0, "sequential"), captions)
            optimizer = torch.optim.AdamW([p for p in module.unet.parameters() if p.requires_grad], lr=5e-4)
            modules[backbone] = (module, optimizer)
        for _ in range(repeats):
            for backbone in BACKBONES:
                module, optimizer = modules[backbone]
                for step in range(steps):
                    seeds = torch.arange(step * batch, (step + 1) * batch)
                    started = time.perf_counter()
                    loss = module.method.loss(module.method_context, {"caption": captions, "seed": seeds})
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    if step >= WARMUP:
                        times[backbone].append(time.perf_counter() - started)
        for backbone in BACKBONES:
            module = modules[backbone][0]
            params = sum(p.numel() for p in module.unet.parameters())
            trained = sum(p.numel() for p in module.unet.parameters() if p.requires_grad)
            rows.append((name, backbone, module.backbone.objective.name, f"{params / 1e6:.2f} M", f"{trained / 1e3:.0f} k",
                         median(times[backbone]) * 1000, len(times[backbone])))
        for dit, label in DITS.items():
            ratios[f"{name}: {label}"] = median(times[dit]) / median(times["tinyworld"])
    print(table(["method", "backbone", "objective", "params", "trained", "step ms (median)", "steps timed"], rows))
    for name, ratio in ratios.items():
        print(f"{name} / UNet per step = {ratio:.2f}")


if __name__ == "__main__":
    main()
