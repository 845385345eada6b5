"""``--model.unet_weights``: UNet weights saved by other tools, for both worlds, and named refusals."""

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

from lightning_unlearn.tinyworld.unet import build_tiny_unet
from lightning_unlearn.unet_weights import UnetWeightsError, load_unet_weights
from lightning_unlearn.unlearning_module import UnlearningModule


@pytest.fixture(scope="module")
def other_sd_unet(tiny_sd_folder, tmp_path_factory):
    """The fixture's UNet with perturbed weights, as diffusers' save_pretrained writes it."""
    unet = UNet2DConditionModel.from_pretrained(tiny_sd_folder, subfolder="unet")
    torch.manual_seed(1)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.01 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("other") / "unet"
    unet.save_pretrained(folder)
    return unet, folder


def _state(module):
    return {k: v.clone() for k, v in module.unet.state_dict().items()}


def test_a_diffusers_unet_folder_and_a_full_state_dict_load_into_a_real_model(tiny_sd_folder, other_sd_unet, tmp_path):
    unet, folder = other_sd_unet
    expected = unet.state_dict()
    for source in (folder, folder.parent):  # the UNet folder, or a pipeline-like folder holding unet/
        module = UnlearningModule(pretrained=str(tiny_sd_folder), unet_weights=str(source))
        loaded = _state(module)
        assert all(torch.equal(loaded[k], expected[k]) for k in expected)
        # The loaded weights are the stream's base: anchors and drift compare against them.
        assert all(torch.equal(v, expected[k]) for k, v in module.base_state().items())
    full = tmp_path / "full.safetensors"
    save_file({k: v.contiguous() for k, v in expected.items()}, str(full))
    loaded = _state(UnlearningModule(pretrained=str(tiny_sd_folder), unet_weights=str(full)))
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_a_partial_state_dict_replaces_only_its_keys(tiny_sd_folder, other_sd_unet, tmp_path):
    unet, _ = other_sd_unet
    trained = {k: v.contiguous() for k, v in unet.state_dict().items() if ".attn2.to_k." in k or ".attn2.to_v." in k}
    path = tmp_path / "kv.safetensors"
    save_file(trained, str(path))
    base = _state(UnlearningModule(pretrained=str(tiny_sd_folder)))
    loaded = _state(UnlearningModule(pretrained=str(tiny_sd_folder), unet_weights=str(path)))
    assert trained and all(torch.equal(loaded[k], v) for k, v in trained.items())
    assert all(torch.equal(loaded[k], base[k]) for k in base if k not in trained)
    assert any(not torch.equal(base[k], v) for k, v in trained.items())


def test_the_tiny_world_takes_a_folder_and_a_partial_file(tmp_path):
    unet = build_tiny_unet()
    torch.manual_seed(2)
    unet.save_pretrained(tmp_path / "tiny-unet")
    module = UnlearningModule(unet_weights=str(tmp_path / "tiny-unet"))
    assert all(torch.equal(v, unet.state_dict()[k]) for k, v in module.unet.state_dict().items())
    key = "mid_block.attentions.0.transformer_blocks.0.attn2.to_v.weight"
    save_file({key: torch.zeros_like(unet.state_dict()[key])}, str(tmp_path / "one.safetensors"))
    module = UnlearningModule(unet_weights=str(tmp_path / "one.safetensors"))
    assert float(module.unet.state_dict()[key].abs().sum()) == 0.0


def test_bad_weights_are_refused_by_name(tiny_sd_folder, tmp_path):
    unet = UNet2DConditionModel.from_pretrained(tiny_sd_folder, subfolder="unet")
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    with pytest.raises(UnetWeightsError, match="do not exist"):
        load_unet_weights(unet, tmp_path / "nowhere.safetensors")
    pickled = tmp_path / "model.ckpt"
    pickled.write_bytes(b"not opened")
    with pytest.raises(UnetWeightsError, match=r"pickled checkpoint, which is never unpickled; convert it"):
        load_unet_weights(unet, pickled)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text("{}")
    (legacy / "diffusion_pytorch_model.bin").write_bytes(b"not opened")
    with pytest.raises(UnetWeightsError, match="only pickled weights"):
        load_unet_weights(unet, legacy)
    (tmp_path / "weights.npz").write_text("x")
    with pytest.raises(UnetWeightsError, match="not a safetensors file"):
        load_unet_weights(unet, tmp_path / "weights.npz")
    key = "conv_in.weight"
    save_file({key: torch.zeros(3, 3)}, str(tmp_path / "shape.safetensors"))
    with pytest.raises(UnetWeightsError, match=r"conv_in.weight has shape \(3, 3\)"):
        load_unet_weights(unet, tmp_path / "shape.safetensors")
    save_file({"text_model.embeddings.weight": torch.zeros(2)}, str(tmp_path / "keys.safetensors"))
    with pytest.raises(UnetWeightsError, match="'text_model.embeddings.weight', which this UNet lacks"):
        load_unet_weights(unet, tmp_path / "keys.safetensors")
    # A tiny-world UNet folder is another architecture: its config says so before any key does.
    build_tiny_unet().save_pretrained(tmp_path / "tiny")
    with pytest.raises(UnetWeightsError, match="is a different UNet: its in_channels is 12"):
        load_unet_weights(unet, tmp_path / "tiny")
    assert all(torch.equal(v, before[k]) for k, v in unet.state_dict().items())  # refusals changed nothing


@pytest.mark.parametrize("content", [b"step,UA\n1,99\n", b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":"])
def test_a_text_or_truncated_file_given_as_unet_weights_is_named_by_its_path(tmp_path, cli_error, content):
    weights = tmp_path / "unet.safetensors"
    weights.write_bytes(content)
    run = tmp_path / "run"
    line = cli_error(["unlearn", "--config", "configs/tinyworld/esd_styles_sequential.yaml", f"--stream.run_dir={run}",
                      f"--model.unet_weights={weights}"])
    assert line.startswith(f"error: {weights} is not a readable safetensors file (") and line.endswith(")")
    assert not run.exists()
