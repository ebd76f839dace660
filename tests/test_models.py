"""Contract tests over every registered model: adding a model adds it here."""

import io

import pytest
import torch

from robustbench_karp.models import MODELS, Normalize, create_model

SHAPES = [(1, 8), (1, 28), (3, 32)]  # (channels, size): digits, MNIST, CIFAR


@pytest.mark.parametrize("channels,size", SHAPES)
@pytest.mark.parametrize("name", MODELS.names())
def test_model_contract(name, channels, size):
    if name == "wrn-28-10" and size > 8:
        size = 8  # same code path, 36M parameters: keep the CPU test quick
    model = create_model(name, in_channels=channels, num_classes=7, input_size=size,
                         mean=[0.5] * channels, std=[0.25] * channels)
    model.train()
    x = torch.rand(3, channels, size, size)
    logits = model(x)
    assert logits.shape == (3, 7) and torch.isfinite(logits).all()
    logits.square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no finite gradient for {missing}"
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", MODELS.names())
def test_normalization_is_inside_and_not_in_checkpoints(name):
    model = create_model(name, in_channels=1, num_classes=10, input_size=8, mean=[0.3], std=[0.4]).eval()
    state = model.state_dict()
    assert not any(k.startswith("normalize.") for k in state)  # non-persistent buffers
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    other = create_model(name, in_channels=1, num_classes=10, input_size=8, mean=[0.3], std=[0.4]).eval()
    other.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(model(x), other(x))
    assert torch.allclose(model.normalize(x), (x - 0.3) / 0.4)


def test_normalize_module_is_the_only_normalization():
    n = Normalize([0.1, 0.2, 0.3], [1.0, 2.0, 4.0])
    x = torch.ones(1, 3, 2, 2)
    assert torch.allclose(n(x)[0, :, 0, 0], torch.tensor([0.9, 0.4, 0.175]))
    assert dict(n.named_buffers()).keys() == {"mean", "std"} and n.state_dict() == {}


def test_stn_starts_as_identity_warp():
    model = create_model("stn", in_channels=1, num_classes=10, input_size=28, mean=[0.0], std=[1.0]).eval()
    stn = model.backbone
    x = torch.rand(2, 1, 28, 28)
    theta = stn.localization(x).view(-1, 2, 3)
    assert torch.allclose(theta, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(2, 2, 3))


def test_unknown_model_lists_valid_names():
    with pytest.raises(KeyError, match="valid: .*resnet18.*smallcnn"):
        create_model("resnet19", in_channels=1, num_classes=10, input_size=8, mean=[0], std=[1])
