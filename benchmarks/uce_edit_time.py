"""Time of one UCE request before evaluation: preparation and the closed-form edit.

    python benchmarks/uce_edit_time.py [--concept "Van Gogh"]

One module with ``configs/tinyworld/uce_styles_sequential.yaml``'s method defaults serves the
concept as request 1 of a sequential stream: ``begin_request`` (plan, reference copy, method
context) and ``apply_method_edit`` (token states of every erased / preserved caption, one d x d
solve, every cross-attention K/V rewritten), first with the text states uncached (as a stream's
first request), then again with them cached (as later requests, which share most captions).
Prints wall and process CPU seconds of each. Compare with an ESD request's ``train_seconds`` in
a run's ``results.csv`` (docs/results.md, "The default job": about 22 s per request on 2 idle cores).
"""

from __future__ import annotations

import argparse
import time

from lightning_unlearn.methods import UCE
from lightning_unlearn.protocols import plan_request
from lightning_unlearn.requests import Request
from lightning_unlearn.unlearning_module import UnlearningModule


def timed(action) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    action()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concept", default="Van Gogh", help="a tiny-world style to erase")
    args = parser.parse_args()
    module = UnlearningModule(method=UCE(), trainable="kv-xattn")
    plan = plan_request([Request(args.concept, "style")], 0, "sequential")
    for label in ("uncached text states", "cached text states"):
        base = {k: v.clone() for k, v in module.trainable_state().items()}
        prepare = timed(lambda: module.begin_request(plan, []))
        edit = timed(module.apply_method_edit)
        module.load_trainable_state(base)
        print(f"{label}: begin_request {prepare[0]:.2f} s wall / {prepare[1]:.2f} s CPU, "
              f"edit {edit[0]:.2f} s wall / {edit[1]:.2f} s CPU")


if __name__ == "__main__":
    main()
