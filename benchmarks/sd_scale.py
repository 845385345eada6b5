"""One ESD request on an SD-1.5-shaped model: fp32 vs bf16 vs bf16 + compile (+ channels-last, fused AdamW, CUDA graphs) vs bf16 + 8-bit AdamW + checkpointing; full trainable sets vs LoRA adapters.

    python benchmarks/sd_scale.py                                  # CPU: reduced size
    python benchmarks/sd_scale.py --size full --device cuda        # GPU: SD 1.5's shapes
    python benchmarks/sd_scale.py --settings fp32 --trainable kv-xattn lora   # LoRA vs full K/V

Builds a ``UNet2DConditionModel`` with SD 1.5's config (block_out_channels 320/640/1280/1280,
2 layers per block, cross-attention dim 768, 8 heads, 64 x 64 x 4 latents; 860 M parameters)
and a CLIP ViT-L/14-shaped text encoder (768 wide, 12 layers, 77 tokens) from their configs
with random weights (nothing downloads), saves them as a diffusers pipeline folder with
``save_pretrained``, and serves one ESD request (esd-x) through the project's own path:
``UnlearningModule(pretrained=folder)`` (DiffusersBackbone), ``begin_request`` (frozen
reference + the x_t bank of guided DDIM trajectories), and ``Trainer.fit`` on the
``ConceptStreamDataModule`` (batch 1), as ``train.py unlearn`` does, without evaluation.
The VAE is a small stand-in: an ESD request never runs it (evaluation does).

``--size reduced`` (the CPU default) keeps the architecture and shrinks it: channels
32/64/128/128, 16 x 16 latents, a 64-wide 2-layer text encoder.

Each setting runs in its own process, so peak memory is that setting's alone: CUDA
``max_memory_allocated`` on a GPU; on the CPU the process's peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, which includes Python, torch and the model
folder's load). Step time is the median over the optimizer steps after the first two (warm-up);
the request time is bank build + all steps, and the last column projects a 1000-step request
(the reference's ESD length) from them.

FLOPs and MFU: the fp32 process counts one training step's FLOPs (forward and backward of the
trained UNet on a bank sample, ``torch.utils.flop_counter.FlopCounterMode``: matmuls,
convolutions and attention; the bank's sampling is outside the step). Achieved TFLOP/s =
step FLOPs / step time; MFU = achieved / the device's dense bf16 peak (``--peak-tflops``; known
for H100/H200/A100 by name; unknown on a CPU unless given), the same yardstick for every row.
Compiled settings (``--model.compile``) leave out their first steps (compilation) with the warm-up.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from _common import (  # also puts the repository on sys.path
    machine_line, measure_in_own_process, median, quiet_lightning, table,
)

SETTINGS: dict[str, dict] = {
    "fp32": dict(precision="32-true", reference_dtype="float32", optimizer="adamw", checkpointing=False),
    "bf16": dict(precision="bf16-mixed", reference_dtype="bfloat16", optimizer="adamw", checkpointing=False),
    "bf16 + AdamW8bit + ckpt": dict(precision="bf16-mixed", reference_dtype="bfloat16", optimizer="adamw8bit",
                                    checkpointing=True),
    "bf16 + compile": dict(precision="bf16-mixed", reference_dtype="bfloat16", optimizer="adamw", checkpointing=False,
                           compile="default"),
    "bf16 + compile + channels-last + fused": dict(precision="bf16-mixed", reference_dtype="bfloat16",
                                                   optimizer="adamw-fused", checkpointing=False, compile="default",
                                                   channels_last=True),
    "bf16 + CUDA graphs + channels-last + fused": dict(precision="bf16-mixed", reference_dtype="bfloat16",
                                                       optimizer="adamw-fused", checkpointing=False,
                                                       compile="reduce-overhead", channels_last=True),
}
DEFAULT_SETTINGS = ["fp32", "bf16", "bf16 + AdamW8bit + ckpt", "bf16 + compile"]
WARMUP_STEPS = 2
"""Steps left out of the median (allocator warm-up; compilation for the compiled settings)."""

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "RTX 4090": 165.0, "RTX 3090": 71.0}
"""Dense bf16 tensor-core peaks (vendor data sheets, SXM parts), matched in the CUDA device name."""


def peak_tflops(device_name: str, given: float | None) -> float | None:
    """The MFU yardstick: ``given``, else the known dense bf16 peak of ``device_name``, else ``None``."""
    if given:
        return given
    return next((peak for name, peak in PEAK_BF16_TFLOPS.items() if name in device_name), None)


def count_flops(fn) -> int:
    """FLOPs ``fn()`` runs, counted by ``torch.utils.flop_counter.FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())

SIZES = {
    "full": dict(unet=dict(block_out_channels=(320, 640, 1280, 1280), sample_size=64, cross_attention_dim=768,
                           attention_head_dim=8, layers_per_block=2),
                 text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
                 vae=dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32)),
    "reduced": dict(unet=dict(block_out_channels=(32, 64, 128, 128), sample_size=16, cross_attention_dim=64,
                              attention_head_dim=8, layers_per_block=2),
                    text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
                    vae=dict(block_out_channels=(32, 64, 128, 128), layers_per_block=2, norm_num_groups=32)),
}
PROJECTED_STEPS = 1000


def write_char_tokenizer(folder: Path) -> None:
    """A CLIP tokenizer whose vocabulary is the printable characters, with no merges."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in (chr(i) for i in range(33, 127)):
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")


def build_pipeline_folder(size: str, out: Path, sized_vae: bool = False) -> None:
    """An SD-1.5-shaped pipeline with random weights, saved by diffusers itself; the VAE is a
    small stand-in unless ``sized_vae`` (SD 1.5's VAE config at full size, a quarter as wide reduced)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    shape = SIZES[size]
    unet = UNet2DConditionModel(
        in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        **shape["unet"],
    )
    vae_shape = shape["vae"] if sized_vae else dict(block_out_channels=(8, 16, 16, 16), norm_num_groups=8)
    vae = AutoencoderKL(latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, **vae_shape)
    write_char_tokenizer(out / "_tokenizer")  # a CLIP BPE tokenizer over characters: no download
    tokenizer = CLIPTokenizer.from_pretrained(out / "_tokenizer", model_max_length=77)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, bos_token_id=0,
                                                eos_token_id=1, pad_token_id=1, **shape["text"]))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
                            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
                            ).save_pretrained(out / "pipeline")


def add_shared_arguments(p, settings: dict, default: list[str]) -> None:
    """The options both SD benchmarks take: settings, MFU yardstick, threads, pipeline folder."""
    import argparse

    p.add_argument("--settings", nargs="*", default=default,
                   help=f"subset of {list(settings)} (default: {default}); the first is the ratios' base")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's dense bf16 peak for MFU (default: known H100/H200/A100... by name; none on a CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--folder", default=None,
                   help="keep the random pipeline in FOLDER/SIZE and reuse it (default: a temporary folder)")
    p.add_argument("--_measure", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_folder", default=None, help=argparse.SUPPRESS)


def pipeline_root(folder: str | None, size: str, tmp: str) -> Path:
    """Where the random pipeline lives: ``folder`` (built there once, reused by later runs of
    either SD benchmark at the same size), else the temporary ``tmp``."""
    root = Path(folder) / size if folder else Path(tmp)
    if not (root / "pipeline" / "model_index.json").is_file():
        build_pipeline_folder(size, root, sized_vae=True)  # the evaluation benchmark needs the sized VAE
    return root


def measure(setting: str, trainable: str, folder: Path, args) -> dict:
    """Serve one ESD request under ``setting``, training ``trainable``, in this process; returns its figures."""
    import resource

    import torch
    from lightning.pytorch import Callback, Trainer

    from lightning_unlearn.datamodules.concept_stream import ConceptStreamDataModule
    from lightning_unlearn.lora import LoraSettings
    from lightning_unlearn.methods import ESD
    from lightning_unlearn.protocols import plan_request
    from lightning_unlearn.unlearning_module import UnlearningModule

    quiet_lightning()
    cfg = SETTINGS[setting]
    cuda = args.device.startswith("cuda")
    if cfg["optimizer"] == "adamw-fused":
        def optimizer(params):
            return torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0, fused=True)
    elif cfg["optimizer"] == "adamw8bit":
        import bitsandbytes

        # min_8bit_size=4096 is bitsandbytes' default: SD's cross-attention weights are all above it.
        def optimizer(params):
            return bitsandbytes.optim.AdamW8bit(params, lr=1e-5, weight_decay=0.0)
    else:
        def optimizer(params):
            return torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)

    module = UnlearningModule(
        method=ESD(ddim_steps=args.ddim_steps, bank_trajectories=args.bank_trajectories,
                   bank_batch=args.bank_trajectories),
        pretrained=str(folder), trainable=trainable, optimizer=optimizer,
        lora=LoraSettings(rank=args.lora_rank, alpha=float(args.lora_rank)) if trainable == "lora" else None,
        reference_dtype=cfg["reference_dtype"], gradient_checkpointing=cfg["checkpointing"],
        compile=cfg.get("compile", "off"), channels_last=cfg.get("channels_last", False),
    )
    data = ConceptStreamDataModule(requests=["Van Gogh"], styles=["Van Gogh", "Monet"], objects=["Cats"],
                                   batch_size=1, steps_per_request=args.steps)

    class StepTimer(Callback):
        def __init__(self) -> None:
            self.seconds: list[float] = []

        def on_train_batch_start(self, *_) -> None:
            if cuda:
                torch.cuda.synchronize()
            self._start = time.perf_counter()

        def on_train_batch_end(self, *_) -> None:
            if cuda:
                torch.cuda.synchronize()
            self.seconds.append(time.perf_counter() - self._start)

    timer = StepTimer()
    trainer = Trainer(accelerator="gpu" if cuda else "cpu", devices=1, precision=cfg["precision"],
                      max_steps=args.steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=[timer])
    module.to(trainer.strategy.root_device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    request = data.requests[0]
    with trainer.precision_plugin.forward_context():
        module.begin_request(plan_request(data.requests, 0, "sequential"), data.erase_captions(request),
                             vocabulary=data.vocabulary)
    if cuda:
        torch.cuda.synchronize()
    bank_seconds = time.perf_counter() - started
    trainer.fit(module, datamodule=data)
    request_seconds = time.perf_counter() - started
    step = median(timer.seconds[WARMUP_STEPS:] if len(timer.seconds) > WARMUP_STEPS else timer.seconds)
    peak = (torch.cuda.max_memory_allocated() if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    flops = None
    if setting == "fp32":  # eager, full precision: the step's FLOPs (the same in every setting)
        batch = {"seed": torch.tensor([12345]), "caption": [data.erase_captions(request)[0]]}

        def one_step() -> None:
            module.method.loss(module.method_context, batch).backward()

        module.to(trainer.strategy.root_device).train()
        flops = count_flops(one_step)
        module.unet.zero_grad(set_to_none=True)
    state = [v for s in trainer.optimizers[0].state.values() for v in s.values() if torch.is_tensor(v)]
    state_dtypes = sorted({str(v.dtype) for v in state if v.ndim > 0})
    # The trained state, exact from the tensors: parameters, their gradients and the optimizer's state.
    trained = [p for group in trainer.optimizers[0].param_groups for p in group["params"]]
    trained_bytes = 2 * sum(p.numel() * p.element_size() for p in trained) + sum(v.numel() * v.element_size() for v in state)
    label = setting if len(args.trainable) == 1 else f"{setting}, {trainable}" + (f" r{args.lora_rank}" if trainable == "lora" else "")
    return {"setting": label, "trainable": trainable, "trained_mib": trained_bytes / 2**20, "step_s": step, "bank_s": bank_seconds, "request_s": request_seconds,
            "steps": len(timer.seconds), "peak_gib": peak / 2**30, "optimizer_state": state_dtypes, "step_flops": flops,
            "unet_params": sum(p.numel() for p in module.unet.parameters()),
            "trainable_params": sum(p.numel() for p in module.unet.parameters() if p.requires_grad)}


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default=None,
                   help="model size (default: full on CUDA, reduced on CPU)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps of the request (default 50 GPU, 12 CPU)")
    p.add_argument("--bank-trajectories", type=int, default=None, help="ESD bank trajectories (default 16 GPU, 2 CPU)")
    p.add_argument("--ddim-steps", type=int, default=None,
                   help="DDIM steps of each trajectory (default 50 GPU, 10 CPU)")
    p.add_argument("--trainable", nargs="+", default=["esd-x"], choices=["esd-x", "esd-u", "kv-xattn", "lora"],
                   help="what the request trains, one run per value: esd-x (cross-attention, 3 %% of SD), esd-u "
                        "(the rest, 97 %%), kv-xattn (cross-attention K/V), lora (a LoRA adapter on the K/V)")
    p.add_argument("--lora-rank", type=int, default=4, help="rank of the LoRA adapter (alpha = rank)")
    p.add_argument("--_trainable", default=None, help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: reduced size, 3 steps, 1 short trajectory; numbers mean nothing")
    add_shared_arguments(p, SETTINGS, DEFAULT_SETTINGS)
    args = p.parse_args()
    gpu = args.device.startswith("cuda")
    if args.quick:
        args.size, args.steps, args.bank_trajectories, args.ddim_steps = "reduced", 3, 1, 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    args.size = args.size or ("full" if gpu else "reduced")
    args.steps = args.steps or (50 if gpu else 12)
    args.bank_trajectories = args.bank_trajectories or (16 if gpu else 2)
    args.ddim_steps = args.ddim_steps or (50 if gpu else 10)

    if args._measure:  # child process: one setting
        print("RESULT " + json.dumps(measure(args._measure, args._trainable, Path(args._folder), args)), flush=True)
        return

    with tempfile.TemporaryDirectory(prefix="sd_scale_") as tmp:
        root = pipeline_root(args.folder, args.size, tmp)
        results = []
        child = ["--_folder", str(root / "pipeline"), "--size", args.size, "--device", args.device,
                 "--steps", str(args.steps), "--bank-trajectories", str(args.bank_trajectories),
                 "--ddim-steps", str(args.ddim_steps), "--trainable", *args.trainable, "--lora-rank", str(args.lora_rank)]
        child += ["--threads", str(args.threads)] if args.threads else []
        for setting in args.settings:
            for trainable in args.trainable:
                results.append(measure_in_own_process(__file__, setting, [*child, "--_trainable", trainable]))

    import torch

    base = results[0]
    where = (torch.cuda.get_device_name(args.device) if gpu else f"CPU ({os.cpu_count()} cores)")
    flops = next((r["step_flops"] for r in results if r["step_flops"]), None)
    peak = peak_tflops(where, args.peak_tflops)
    memory = "CUDA max_memory_allocated" if gpu else "peak RSS of the process"
    print(f"{machine_line()}\ndevice: {where}; size {args.size}: UNet {base['unet_params'] / 1e6:.1f} M parameters, "
          + "; ".join(f"{r['trainable']} trains {r['trainable_params'] / 1e6:.3f} M" for r in {r["trainable"]: r for r in results}.values())
          + f"; batch 1, {args.steps} steps, bank "
          f"{args.bank_trajectories} trajectories x {args.ddim_steps} DDIM steps; memory = {memory}\n")
    headers = ["setting", "step (s)", "bank (s)", f"request: bank + {args.steps} steps (s)",
               f"projected {PROJECTED_STEPS}-step request (s)", "peak memory (GiB)", "step / fp32", "request / fp32",
               "memory / fp32", "optimizer state", "step TFLOP/s", "MFU %",
               "trained state (MiB)", "trained state / first"]
    rows = []
    for r in results:
        projected = r["bank_s"] + PROJECTED_STEPS * r["step_s"]
        achieved = flops / r["step_s"] / 1e12 if flops else float("nan")
        rows.append([r["setting"], r["step_s"], r["bank_s"], r["request_s"], projected, r["peak_gib"],
                     r["step_s"] / base["step_s"], r["request_s"] / base["request_s"], r["peak_gib"] / base["peak_gib"],
                     "+".join(d.replace("torch.", "") for d in r["optimizer_state"]), achieved,
                     100 * achieved / peak if peak else float("nan"), r["trained_mib"], r["trained_mib"] / base["trained_mib"]])
    print(table(headers, rows))
    if flops:
        print(f"\none training step: {flops / 1e12:.3f} TFLOP counted (forward + backward of the trained UNet, "
              f"FlopCounterMode); MFU against {f'{peak:.0f} TFLOP/s (dense bf16)' if peak else 'no known peak'}")


if __name__ == "__main__":
    main()
