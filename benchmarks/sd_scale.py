"""One ESD request on an SD-1.5-shaped model: fp32 vs bf16 vs bf16 + 8-bit AdamW + checkpointing,
and full trainable sets vs LoRA adapters.

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
folder's load). "Trained state" is exact, from the tensors: the trained parameters, their
gradients and the optimizer's state (what LoRA shrinks; the frozen UNet, its reference copy and
the activations are the same either way). Step time is the median over the optimizer steps after the first two (warm-up);
the request time is bank build + all steps, and the last column projects a 1000-step request
(the reference's ESD length) from them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine_line, median, quiet_lightning, table  # also puts the repository on sys.path

SETTINGS: dict[str, dict] = {
    "fp32": dict(precision="32-true", reference_dtype="float32", optimizer="adamw", checkpointing=False),
    "bf16": dict(precision="bf16-mixed", reference_dtype="bfloat16", optimizer="adamw", checkpointing=False),
    "bf16 + AdamW8bit + ckpt": dict(precision="bf16-mixed", reference_dtype="bfloat16", optimizer="adamw8bit",
                                    checkpointing=True),
}

SIZES = {
    "full": dict(unet=dict(block_out_channels=(320, 640, 1280, 1280), sample_size=64, cross_attention_dim=768,
                           attention_head_dim=8, layers_per_block=2),
                 text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)),
    "reduced": dict(unet=dict(block_out_channels=(32, 64, 128, 128), sample_size=16, cross_attention_dim=64,
                              attention_head_dim=8, layers_per_block=2),
                    text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)),
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


def build_pipeline_folder(size: str, out: Path) -> None:
    """An SD-1.5-shaped pipeline with random weights, saved by diffusers itself."""
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
    vae = AutoencoderKL(block_out_channels=(8, 16, 16, 16), latent_channels=4, norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    write_char_tokenizer(out / "_tokenizer")  # a CLIP BPE tokenizer over characters: no download
    tokenizer = CLIPTokenizer.from_pretrained(out / "_tokenizer", model_max_length=77)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, bos_token_id=0,
                                                eos_token_id=1, pad_token_id=1, **shape["text"]))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
                            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
                            ).save_pretrained(out / "pipeline")


def measure(setting: str, trainable: str, folder: Path, args) -> dict:
    """Serve one ESD request under ``setting``, training ``trainable``, in this process; returns its figures."""
    import resource

    import torch
    from lightning.pytorch import Callback, Trainer

    from lightning_unlearn.datamodules.concept_stream import ConceptStreamDataModule
    from lightning_unlearn.methods import ESD
    from lightning_unlearn.protocols import plan_request
    from lightning_unlearn.unlearning_module import UnlearningModule

    quiet_lightning()
    cfg = SETTINGS[setting]
    cuda = args.device.startswith("cuda")
    if cfg["optimizer"] == "adamw8bit":
        import bitsandbytes

        # min_8bit_size=4096 is bitsandbytes' default: SD's cross-attention weights are all above it.
        def optimizer(params):
            return bitsandbytes.optim.AdamW8bit(params, lr=1e-5, weight_decay=0.0)
    else:
        def optimizer(params):
            return torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)

    from lightning_unlearn.lora import LoraSettings

    module = UnlearningModule(
        method=ESD(ddim_steps=args.ddim_steps, bank_trajectories=args.bank_trajectories,
                   bank_batch=args.bank_trajectories),
        pretrained=str(folder), trainable=trainable, optimizer=optimizer,
        lora=LoraSettings(rank=args.lora_rank, alpha=float(args.lora_rank)) if trainable == "lora" else None,
        reference_dtype=cfg["reference_dtype"], gradient_checkpointing=cfg["checkpointing"],
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
    step = median(timer.seconds[2:] if len(timer.seconds) > 2 else timer.seconds)
    peak = (torch.cuda.max_memory_allocated() if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    state = [v for s in trainer.optimizers[0].state.values() for v in s.values() if torch.is_tensor(v)]
    state_dtypes = sorted({str(v.dtype) for v in state if v.ndim > 0})
    trained = [p for group in trainer.optimizers[0].param_groups for p in group["params"]]
    trained_bytes = sum(t.numel() * t.element_size() for t in [*trained, *state])
    trained_bytes += sum(p.numel() * p.element_size() for p in trained)  # their gradients
    return {"setting": setting if len(args.trainable) == 1 else f"{setting}, {trainable}"
            + (f" r{args.lora_rank}" if trainable == "lora" else ""),
            "trainable": trainable, "trained_mib": trained_bytes / 2**20, "step_s": step, "bank_s": bank_seconds, "request_s": request_seconds,
            "steps": len(timer.seconds), "peak_gib": peak / 2**30, "optimizer_state": state_dtypes,
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
    p.add_argument("--settings", nargs="*", default=list(SETTINGS), help=f"subset of {list(SETTINGS)}")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: reduced size, 3 steps, 1 short trajectory; numbers mean nothing")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--_measure", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_folder", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_trainable", default=None, help=argparse.SUPPRESS)
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
        build_pipeline_folder(args.size, Path(tmp))
        results = []
        for setting, trainable in ((s, t) for s in args.settings for t in args.trainable):
            cmd = [sys.executable, __file__, "--_measure", setting, "--_trainable", trainable,
                   "--_folder", str(Path(tmp) / "pipeline"),
                   "--size", args.size, "--device", args.device, "--steps", str(args.steps),
                   "--bank-trajectories", str(args.bank_trajectories), "--ddim-steps", str(args.ddim_steps),
                   "--trainable", *args.trainable, "--lora-rank", str(args.lora_rank)]
            cmd += ["--threads", str(args.threads)] if args.threads else []
            done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode != 0 or not lines:
                raise SystemExit(f"{setting} failed:\n{done.stderr[-3000:]}")
            results.append(json.loads(lines[-1][len("RESULT "):]))

    import torch

    base = results[0]
    where = (torch.cuda.get_device_name(args.device) if gpu else f"CPU ({os.cpu_count()} cores)")
    memory = "CUDA max_memory_allocated" if gpu else "peak RSS of the process"
    trains = "; ".join(f"{r['trainable']} trains {r['trainable_params'] / 1e6:.3f} M"
                       for r in {r["trainable"]: r for r in results}.values())
    print(f"{machine_line()}\ndevice: {where}; size {args.size}: UNet {base['unet_params'] / 1e6:.1f} M parameters, "
          f"{trains}; batch 1, {args.steps} steps, bank {args.bank_trajectories} trajectories x {args.ddim_steps} "
          f"DDIM steps; memory = {memory}\n")
    headers = ["setting", "step (s)", "bank (s)", f"request: bank + {args.steps} steps (s)",
               f"projected {PROJECTED_STEPS}-step request (s)", "peak memory (GiB)", "trained state (MiB)",
               "step / first", "request / first", "memory / first", "trained state / first", "optimizer state"]
    rows = []
    for r in results:
        projected = r["bank_s"] + PROJECTED_STEPS * r["step_s"]
        rows.append([r["setting"], r["step_s"], r["bank_s"], r["request_s"], projected, r["peak_gib"], r["trained_mib"],
                     r["step_s"] / base["step_s"], r["request_s"] / base["request_s"], r["peak_gib"] / base["peak_gib"],
                     r["trained_mib"] / base["trained_mib"],
                     "+".join(d.replace("torch.", "") for d in r["optimizer_state"])])
    print(table(headers, rows))


if __name__ == "__main__":
    main()
