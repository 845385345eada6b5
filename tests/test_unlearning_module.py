"""The module's optimizer comes from the CLI; its checkpoints refuse other models' weights."""

import pytest
import torch

from lightning_unlearn.datamodules.concept_stream import ConceptStreamDataModule
from lightning_unlearn.stream import UnlearnCLI
from lightning_unlearn.tinyworld.concepts import tiny_vocabulary
from lightning_unlearn.unlearning_module import UnlearningModule


def _cli(*extra: str) -> UnlearnCLI:
    return UnlearnCLI(UnlearningModule, ConceptStreamDataModule, run=False,
                      args=["--config", "configs/tinyworld/esd_styles_sequential.yaml", *extra])


def test_default_optimizer_is_adamw_without_weight_decay_and_the_cli_swaps_it():
    model = _cli().model
    opt = model.configure_optimizers()
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["lr"] == 5e-4 and opt.defaults["weight_decay"] == 0.0
    trainable = {id(p) for p in model.unet.parameters() if p.requires_grad}
    assert {id(p) for g in opt.param_groups for p in g["params"]} == trainable
    sgd = _cli("--model.optimizer=torch.optim.SGD", "--model.optimizer.lr=0.01", "--model.optimizer.momentum=0.9").model
    opt = sgd.configure_optimizers()
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["lr"] == 0.01 and opt.defaults["momentum"] == 0.9


def test_loading_weights_of_another_model_is_refused():
    model = UnlearningModule(trainable="kv-xattn")
    with pytest.raises(ValueError, match="has keys this UNet lacks"):
        model.load_trainable_state({"text_model.encoder.weight": torch.zeros(2)}, source="other.safetensors")
    key = model.trainable_keys[0]
    with pytest.raises(ValueError, match=f"{key} has shape"):
        model.load_trainable_state({key: torch.zeros(3, 3)}, source="other.safetensors")


# -- precision and memory options ------------------------------------------------------------

from lightning_unlearn.methods import ESD, ConceptAblation  # noqa: E402
from lightning_unlearn.protocols import plan_request  # noqa: E402
from lightning_unlearn.requests import Request  # noqa: E402

VAN_GOGH = Request("Van Gogh", "style")
CAPTION = "a painting in Van Gogh style"


def _train(module: UnlearningModule, steps: int = 3) -> float:
    """A few AdamW steps on the method's loss; the largest change of a trainable weight."""
    opt = torch.optim.AdamW([p for p in module.unet.parameters() if p.requires_grad], lr=1e-3)
    before = {k: v.clone() for k, v in module.trainable_state().items()}
    for i in range(steps):
        batch = {"caption": [CAPTION] * 2, "seed": torch.tensor([2 * i, 2 * i + 1])}
        loss = module.method.loss(module.method_context, batch)
        assert torch.isfinite(loss) and loss > 0
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = module.trainable_state()
    return max(float((after[k] - before[k]).abs().max()) for k in before)


@pytest.mark.parametrize(
    "method, dtype",
    [
        (lambda: ESD(ddim_steps=3, bank_trajectories=2, bank_batch=2), "bfloat16"),
        (lambda: ESD(ddim_steps=3, bank_trajectories=2, bank_batch=2), "float16"),
        (lambda: ESD(ddim_steps=3, xt_source="online"), "bfloat16"),
        (lambda: ConceptAblation(images_per_anchor=2, ddim_steps=2, sample_batch=2), "bfloat16"),
    ],
    ids=["esd-bank-bf16", "esd-bank-fp16", "esd-online-bf16", "concept-ablation-bf16"],
)
def test_a_low_precision_reference_serves_a_request_for_an_fp32_unet(method, dtype, tmp_path):
    module = UnlearningModule(method=method(), trainable="kv-xattn", reference_dtype=dtype)
    module.begin_request(plan_request([VAN_GOGH], 0, "sequential"), [CAPTION], cache_dir=tmp_path)
    assert {p.dtype for p in module.reference_unet.parameters()} == {getattr(torch, dtype)}
    assert {p.dtype for p in module.unet.parameters()} == {torch.float32}
    bank = getattr(module.method, "bank", None)
    if bank is not None:  # the bank's targets come back in fp32, close to an fp32 reference's
        assert bank["target"].dtype == torch.float32 and torch.isfinite(bank["target"]).all()
    if isinstance(module.method, ConceptAblation):
        assert module.method.latents.dtype == torch.float32 and torch.isfinite(module.method.latents).all()
    assert _train(module) > 1e-5, "training changed no trainable weight"


def test_bf16_reference_predicts_close_to_the_fp32_one():
    module = UnlearningModule(method=ESD(ddim_steps=3, bank_trajectories=2, bank_batch=2), reference_dtype="bfloat16")
    module.begin_request(plan_request([VAN_GOGH], 0, "sequential"), [CAPTION])
    from lightning_unlearn.sampling import TextCondition, predict_noise

    x = torch.randn(2, *module.backbone.latent_shape, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500, 100])
    cond = TextCondition.from_captions(module.backbone, [CAPTION, ""])
    with torch.no_grad():
        ref, full = predict_noise(module.reference_unet, x, t, cond), predict_noise(module.unet, x, t, cond)
    assert ref.dtype == torch.float32
    # bf16 keeps 8 bits of mantissa: a few percent of the prediction's scale, no more.
    assert float((ref - full).abs().max()) < 0.1 * float(full.abs().max())
    with pytest.raises(ValueError, match="reference_dtype must be one of"):
        UnlearningModule(reference_dtype="int8")


def test_gradient_checkpointing_recomputes_and_gives_the_same_loss_and_gradients():
    module = UnlearningModule(method=ESD(ddim_steps=3, bank_trajectories=2, bank_batch=2), trainable="esd-x")
    module.begin_request(plan_request([VAN_GOGH], 0, "sequential"), [CAPTION])
    module.train()
    batch = {"caption": [CAPTION] * 2, "seed": torch.tensor([3, 4])}
    calls = []
    # A block downstream of trainable cross-attention (upstream ones need no backward at all).
    block = module.unet.up_blocks[0].resnets[0]
    forward = block.forward

    def counted(*args, **kwargs):  # forward hooks do not fire in checkpoint's recomputation
        calls.append(1)
        return forward(*args, **kwargs)

    block.forward = counted

    def loss_and_grads():
        module.unet.zero_grad(set_to_none=True)
        calls.clear()
        loss = module.method.loss(module.method_context, batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in module.unet.named_parameters() if p.grad is not None}
        return loss.detach(), grads, len(calls)

    plain_loss, plain_grads, plain_calls = loss_and_grads()
    module.unet.enable_gradient_checkpointing()
    ckpt_loss, ckpt_grads, ckpt_calls = loss_and_grads()
    del block.forward
    assert ckpt_calls > plain_calls, "checkpointing did not recompute the block in backward"
    assert plain_grads and set(ckpt_grads) == set(plain_grads)
    torch.testing.assert_close(ckpt_loss, plain_loss)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[name], grad, rtol=1e-4, atol=1e-7)

    switched = UnlearningModule(method=ESD(ddim_steps=2, bank_trajectories=1), gradient_checkpointing=True)
    assert switched.unet.is_gradient_checkpointing
    switched.begin_request(plan_request([VAN_GOGH], 0, "sequential"), [CAPTION])
    assert not switched.reference_unet.is_gradient_checkpointing  # forward-only: nothing to save


def test_attention_is_torch_sdpa_not_xformers(tiny_sd_folder):
    import sys

    from diffusers.models.attention_processor import AttnProcessor2_0

    from lightning_unlearn.backbone import DiffusersBackbone

    for unet in (UnlearningModule().unet, DiffusersBackbone(tiny_sd_folder).unet):
        processors = unet.attn_processors
        kinds = {type(p) for p in processors.values()}
        assert processors and kinds == {AttnProcessor2_0}, kinds
    assert "xformers" not in sys.modules


# -- request state: the plan is the one owner; methods see a MethodContext ---------------------


def test_begin_request_keeps_the_plan_and_gives_the_method_a_narrow_context(tmp_path):
    from dataclasses import FrozenInstanceError

    from lightning_unlearn.methods import MethodContext
    from lightning_unlearn.protocols import RequestPlan

    seen: list[MethodContext] = []

    class Recording(ESD):
        def prepare_request(self, context: MethodContext) -> None:
            seen.append(context)

    module = UnlearningModule(method=Recording(), trainable="kv-xattn", seed=3)
    assert (module.plan, module.current_request, module.erasing, module.request_index) == (None, None, (), -1)
    with pytest.raises(RuntimeError, match="call begin_request first"):
        module.method_context
    cartoon, picasso = Request("Cartoon", "style"), Request("Picasso", "style")
    plan = plan_request([VAN_GOGH, cartoon, picasso], 2, "sequential")
    vocabulary = ConceptStreamDataModule(requests=["Van Gogh"]).vocabulary
    module.begin_request(plan, [CAPTION], vocabulary=vocabulary, cache_dir=tmp_path)
    # The module reads the plan it was given, not copies of its fields.
    assert module.plan is plan and module.current_request is picasso and module.request_index == 2
    assert module.erasing is plan.erasing and module.already_erased is plan.already_erased == (VAN_GOGH, cartoon)
    with pytest.raises(AttributeError):
        module.current_request = cartoon  # read-only: the plan is the one owner

    [context] = seen
    assert context is module.method_context
    assert context.unet is module.unet and context.reference_unet is module.reference_unet
    assert context.backbone is module.backbone and context.device == module.device
    assert (context.request, context.erasing, context.already_erased) == (picasso, (picasso,), (VAN_GOGH, cartoon))
    assert context.captions == (CAPTION,) and context.vocabulary is vocabulary and context.cache_dir == tmp_path
    assert (context.seed, context.run_seed, context.reference_dtype) == (module.request_seed, 3, "float32")
    assert context.seed == 3 * 10_007 + 2
    with pytest.raises(FrozenInstanceError):
        context.seed = 0
    with pytest.raises(TypeError):
        context.base_state["x"] = torch.zeros(1)  # a read-only view of the module's base

    # base_unet() holds the pretrained values even after training moved the current ones.
    key = module.trainable_keys[0]
    with torch.no_grad():
        module.unet.get_parameter(key).add_(1.0)
    base = context.base_unet()
    assert not base.get_parameter(key).requires_grad and base is not module.unet
    torch.testing.assert_close(base.get_parameter(key), module.base_state()[key], rtol=0, atol=0)
    assert not torch.equal(base.get_parameter(key), module.unet.get_parameter(key))

    # Every default: the tiny world's vocabulary, no cache folder.
    module.begin_request(plan_request([VAN_GOGH], 0, "sequential"), [CAPTION])
    assert seen[-1].vocabulary == tiny_vocabulary() and seen[-1].cache_dir is None

    wrong = RequestPlan(0, VAN_GOGH, (VAN_GOGH, cartoon), (), True, (VAN_GOGH, cartoon))
    with pytest.raises(ValueError, match="must be the last concept erased"):
        module.begin_request(wrong, [CAPTION])
    module.clear_request()
    assert module.plan is None and module.request_captions == []
