"""``--lora``: a LoRA from a local .safetensors file merged into the model at start (issue 16).
The test LoRAs are built here, on tiny-sd's own layer names, in both key layouts."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from server.app import DiffusionServer
from server.config import ServerConfig
from server.models.lora import LoraError, merge_lora
from server.models.tiny import load_tiny

Q = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"  # a linear (64, 64)
TE_Q = "text_model.encoder.layers.0.self_attn.q_proj"


def _weight(pipe, component: str, path: str) -> torch.Tensor:
    modules = dict(pipe.components[component].named_modules())
    module = modules.get(path) or modules[path.removeprefix("text_model.")]  # transformers versions differ
    return module.weight.detach().clone()


def _kohya(tmp_path, rank: int = 2, alpha: float = 1.0):
    g = torch.Generator().manual_seed(0)
    te = (32, 32)  # tiny-sd's CLIP width
    tensors = {
        f"lora_unet_{Q.replace('.', '_')}.lora_down.weight": torch.randn(rank, 64, generator=g),
        f"lora_unet_{Q.replace('.', '_')}.lora_up.weight": torch.randn(64, rank, generator=g),
        f"lora_unet_{Q.replace('.', '_')}.alpha": torch.tensor(alpha),
        "lora_unet_conv_in.lora_down.weight": torch.randn(rank, 4, 3, 3, generator=g),
        "lora_unet_conv_in.lora_up.weight": torch.randn(32, rank, 1, 1, generator=g),
        f"lora_te_{TE_Q.replace('.', '_')}.lora_down.weight": torch.randn(rank, te[1], generator=g),
        f"lora_te_{TE_Q.replace('.', '_')}.lora_up.weight": torch.randn(te[0], rank, generator=g),
    }
    path = tmp_path / "tiny-lora.safetensors"
    save_file(tensors, str(path))
    return path, tensors


def test_a_kohya_lora_adds_scale_alpha_over_rank_up_times_down(tmp_path):
    path, t = _kohya(tmp_path, rank=2, alpha=1.0)
    pipe, fresh = load_tiny("tiny-sd"), load_tiny("tiny-sd")
    assert merge_lora(pipe, path, scale=0.5) == 3
    key = Q.replace(".", "_")
    expected = _weight(fresh, "unet", Q) + 0.5 * 0.5 * (t[f"lora_unet_{key}.lora_up.weight"]
                                                       @ t[f"lora_unet_{key}.lora_down.weight"])
    torch.testing.assert_close(_weight(pipe, "unet", Q), expected)
    conv = (t["lora_unet_conv_in.lora_up.weight"].flatten(1)
            @ t["lora_unet_conv_in.lora_down.weight"].flatten(1)).reshape(32, 4, 3, 3)
    torch.testing.assert_close(_weight(pipe, "unet", "conv_in"), _weight(fresh, "unet", "conv_in") + 0.5 * conv)
    assert not torch.equal(_weight(pipe, "text_encoder", TE_Q), _weight(fresh, "text_encoder", TE_Q))


def test_a_diffusers_peft_lora_is_read_too(tmp_path):
    down, up = torch.ones(4, 64), torch.full((64, 4), 0.01)
    path = tmp_path / "peft.safetensors"
    save_file({f"unet.{Q}.lora_A.weight": down, f"unet.{Q}.lora_B.weight": up}, str(path))
    pipe, fresh = load_tiny("tiny-sd"), load_tiny("tiny-sd")
    assert merge_lora(pipe, path) == 1
    torch.testing.assert_close(_weight(pipe, "unet", Q), _weight(fresh, "unet", Q) + up @ down)


@pytest.mark.parametrize(("tensors", "words"), [
    ({"lora_unet_no_such_layer.lora_down.weight": torch.ones(1, 4),
      "lora_unet_no_such_layer.lora_up.weight": torch.ones(4, 1)}, "another kind of model"),
    ({f"unet.{Q}.lora_A.weight": torch.ones(2, 32), f"unet.{Q}.lora_B.weight": torch.ones(64, 2)},
     "does not fit"),
    ({f"unet.{Q}.lora_A.weight": torch.ones(2, 64)}, "half of its LoRA pair"),
    ({"something.else": torch.ones(1)}, "no LoRA weights"),
])
def test_a_lora_for_another_model_is_refused_with_a_reason(tmp_path, tensors, words):
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(LoraError, match=words):
        merge_lora(load_tiny("tiny-sd"), path)
    with pytest.raises(LoraError, match="local .safetensors"):
        merge_lora(load_tiny("tiny-sd"), tmp_path / "missing.safetensors")


def test_the_server_merges_the_lora_into_its_model_only(tmp_path):
    path, _ = _kohya(tmp_path)
    server = DiffusionServer(ServerConfig(model="tiny-sd", port=0, lora=str(path)))
    pipe = server._default_loader("tiny-sd")
    assert not torch.equal(_weight(pipe, "unet", Q), _weight(load_tiny("tiny-sd"), "unet", Q))


def test_the_command_line_takes_a_lora_and_its_scale():
    from server.__main__ import parse_args

    args = parse_args(["--model", "tiny-sd", "--lora", "lcm.safetensors", "--lora-scale", "0.8"])
    assert (args.lora, args.lora_scale) == ("lcm.safetensors", 0.8)
