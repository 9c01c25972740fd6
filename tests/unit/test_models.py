"""Tests of the architectures and their registry."""

from __future__ import annotations

import copy
import re

import pytest
import torch

from bidsapp_dl.errors import UsageError
from bidsapp_dl.models import (
    architectures,
    autoencoders,
    build_model,
    check_fit,
    cnn,
    default_architecture,
    fitting_architectures,
    list_models,
    n_parameters,
)
from bidsapp_dl.models.autoencoders import match_size

SPECS = {spec.name: spec for spec in architectures()}
CLASSES = {name: getattr(cnn, name, None) or getattr(autoencoders, name) for name in SPECS}
CASES = [(s.name, task, ndim) for s in SPECS.values() for task in s.tasks for ndim in s.dims]
CLINICADL_SHAPE = (1, 169, 208, 179)
TINY_3D = (1, 24, 28, 24)
TINY_2D = (1, 28, 24)


def smallest(name: str, ndim: int, channels: int = 1) -> tuple[int, ...]:
    """A non-cubic input whose smallest axis is exactly the architecture's minimum."""
    m = SPECS[name].min_size
    return (channels, m, m + 3, m + 1)[: ndim + 1]


def n_outputs(task: str) -> int:
    return 3 if task == "classification" else 1


def expected_shape(task: str, batch: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    return (batch, *shape) if task == "reconstruction" else (batch, n_outputs(task))


def test_registry_names_and_fields():
    assert set(SPECS) == {"Conv5_FC3", "Conv4_FC3", "Stride_Conv5_FC3", "ResNet3D", "SqueezeExcitationCNN",
                          "CNN2D", "AE_Conv5_FC3", "VAE"}
    for spec in SPECS.values():
        assert spec.tasks and set(spec.tasks) <= {"classification", "regression", "reconstruction"}
        assert spec.dims in ((2,), (3,), (2, 3))
        assert spec.description and spec.min_size > 1
    with pytest.raises(AttributeError):
        SPECS["VAE"].name = "other"


@pytest.mark.parametrize("name,task,ndim", CASES)
def test_forward_backward(name, task, ndim):
    shape = smallest(name, ndim)
    torch.manual_seed(0)
    model = build_model(name, task, shape, n_outputs(task), dropout=0.2)
    assert n_parameters(model) > 0
    x = torch.rand(2, *shape)
    out = model(x)
    assert out.shape == expected_shape(task, 2, shape)
    assert out.dtype == torch.float32
    loss = out.pow(2).mean()
    if hasattr(model, "regularization"):
        loss = loss + model.regularization()
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name,ndim", sorted({(n, d) for n, _, d in CASES}))
def test_min_size_is_enough_and_tight(name, ndim):
    task, m = SPECS[name].tasks[0], SPECS[name].min_size
    cubic, smaller, one_short = (1, *[m] * ndim), (1, *[m - 1] * ndim), (1, m + 4, *[m - 1] * (ndim - 1))
    check_fit(name, task, cubic)
    # training on a one-sample batch: the last batch of an epoch can hold a single sample
    model = build_model(name, task, cubic, n_outputs(task))
    assert model(torch.rand(1, *cubic)).shape == expected_shape(task, 1, cubic)
    for refused in (smaller, one_short):
        with pytest.raises(UsageError, match=f"needs at least {m} voxels along every spatial axis"):
            check_fit(name, task, refused)
    # below the minimum the last BatchNorm is left one value per channel
    cls = CLASSES[name]
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        model = cls(smaller) if task == "reconstruction" else cls(smaller, 2)
        model(torch.rand(1, *smaller))


@pytest.mark.parametrize("name", list(SPECS))
def test_same_seed_same_weights(name):
    spec = SPECS[name]
    task, shape = spec.tasks[0], smallest(name, spec.dims[-1])

    def weights(seed):
        torch.manual_seed(seed)
        return build_model(name, task, shape, n_outputs(task)).state_dict()

    first, again, other = weights(7), weights(7), weights(8)
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_fit_checks_and_listing_leave_the_rng_alone():
    torch.manual_seed(3)
    state = torch.get_rng_state()
    check_fit("VAE", "reconstruction", TINY_3D)
    fitting_architectures("classification", TINY_2D)
    list_models(TINY_3D)
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("shape", [TINY_3D, TINY_2D, (3, 28, 24)])
@pytest.mark.parametrize("name,task", sorted({(n, t) for n, t, _ in CASES}))
def test_tiny_inputs_work_or_are_refused(name, task, shape):
    try:
        check_fit(name, task, shape)
    except UsageError as err:
        assert name in str(err)
        return
    model = build_model(name, task, shape, n_outputs(task))
    out = model(torch.rand(2, *shape))
    assert out.shape == expected_shape(task, 2, shape)


@pytest.mark.parametrize("shape", [(1, 25, 31, 27), (1, 33, 17, 50), (1, 25, 31), (3, 19, 26)])
@pytest.mark.parametrize("name", ["AE_Conv5_FC3", "VAE"])
def test_reconstruction_keeps_odd_shapes(name, shape):
    model = build_model(name, "reconstruction", shape, 0)
    x = torch.rand(2, *shape)
    assert model(x).shape == x.shape
    model.eval()
    assert model(x).shape == x.shape


def test_match_size_crops_and_pads():
    x = torch.arange(2 * 4 * 5, dtype=torch.float32).reshape(1, 2, 4, 5)
    y = match_size(x, (3, 7))
    assert y.shape == (1, 2, 3, 7)
    assert torch.equal(y[..., :5], x[..., :3, :])
    assert torch.equal(y[..., 5:], torch.zeros(1, 2, 3, 2))


def test_vae_regularization_and_eval_determinism():
    shape = (1, 25, 31, 27)
    torch.manual_seed(0)
    model = build_model("VAE", "reconstruction", shape, 0)
    with pytest.raises(RuntimeError, match="forward"):
        model.regularization()
    x = torch.rand(2, *shape)
    model(x)
    kl = model.regularization()
    assert kl.dim() == 0 and kl.item() > 0
    kl.backward()
    assert model.mean.weight.grad.abs().sum() > 0
    assert model.log_var.weight.grad.abs().sum() > 0
    # training samples the latent vector; eval decodes its mean
    assert not torch.equal(model(x), model(x))
    model.eval()
    with torch.no_grad():
        first, second = model(x), model(x)
    assert torch.equal(first, second)
    assert model.regularization().item() > 0
    model.train()
    model(x)
    clone = copy.deepcopy(model)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), clone.state_dict().values()))


@pytest.mark.parametrize("name", [n for n, s in SPECS.items() if 3 in s.dims])
def test_channels_last_3d(name):
    spec = SPECS[name]
    task, shape = spec.tasks[0], smallest(name, 3)
    torch.manual_seed(0)
    model = build_model(name, task, shape, n_outputs(task)).eval()
    fast = copy.deepcopy(model).to(memory_format=torch.channels_last_3d)
    x = torch.rand(2, *shape)
    with torch.no_grad():
        expected = model(x)
        got = fast(x.contiguous(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_autoencoder_encoder_loads_into_conv5():
    ae = build_model("AE_Conv5_FC3", "reconstruction", TINY_3D, 0)
    net = build_model("Conv5_FC3", "classification", TINY_3D, 2)
    net.features.load_state_dict(ae.encoder.state_dict(), strict=True)
    assert torch.equal(net.features[0][0].weight, ae.encoder[0][0].weight)


def test_clinicadl_conv5_fc3_size():
    torch.manual_seed(0)
    model = build_model("Conv5_FC3", "classification", CLINICADL_SHAPE, 2)
    first_linear = next(m for m in model.classifier if isinstance(m, torch.nn.Linear))
    # ClinicaDL: 169x208x179 -> 6x7x6 after 5 halvings, 128 channels, Linear(32256, 1300)
    assert first_linear.in_features == 128 * 6 * 7 * 6 == 32256
    conv = sum(c_in * c_out * 27 + 3 * c_out for c_in, c_out in
               zip((1, 8, 16, 32, 64), (8, 16, 32, 64, 128)))
    fc = 32256 * 1300 + 1300 + 1300 * 50 + 50 + 50 * 2 + 2
    assert n_parameters(model) == conv + fc == 42_293_972


def _listed(message: str) -> set[str]:
    match = re.search(r"fit \w+ on \([\d, ]+\): (.*)$", message)
    assert match, message
    return set(match.group(1).split(", "))


@pytest.mark.parametrize("name,task,shape,fits", [
    ("AE_Conv5_FC3", "classification", TINY_3D,
     {"Conv5_FC3", "Conv4_FC3", "ResNet3D", "SqueezeExcitationCNN"}),
    ("Conv5_FC3", "reconstruction", TINY_2D, {"AE_Conv5_FC3", "VAE"}),
    ("CNN2D", "regression", TINY_3D, {"Conv5_FC3", "Conv4_FC3", "ResNet3D", "SqueezeExcitationCNN"}),
    ("ResNet3D", "classification", TINY_2D, {"Conv5_FC3", "Conv4_FC3", "CNN2D"}),
    ("Conv5_FC3", "classification", (1, 16, 40, 40), {"Conv4_FC3"}),
    ("Stride_Conv5_FC3", "regression", (1, 50, 50, 32),
     {"Conv5_FC3", "Conv4_FC3", "ResNet3D", "SqueezeExcitationCNN"}),
])
def test_misfits_list_what_fits(name, task, shape, fits):
    with pytest.raises(UsageError) as info:
        check_fit(name, task, shape)
    assert info.value.exit_code == 64
    assert _listed(str(info.value)) == fits == set(fitting_architectures(task, shape))


def test_misfit_reasons():
    with pytest.raises(UsageError, match="2-D inputs"):
        check_fit("CNN2D", "classification", TINY_3D)
    with pytest.raises(UsageError, match="3-D inputs"):
        check_fit("ResNet3D", "classification", TINY_2D)
    with pytest.raises(UsageError, match="for reconstruction, not classification"):
        check_fit("VAE", "classification", TINY_3D)
    with pytest.raises(UsageError, match="at least 33 voxels"):
        check_fit("Stride_Conv5_FC3", "classification", (1, 50, 50, 32))
    with pytest.raises(UsageError, match="no architecture fits"):
        check_fit("VAE", "reconstruction", (1, 8, 40, 40))


@pytest.mark.parametrize("typed,meant", [("conv5_fc3", "Conv5_FC3"), ("Conv5FC3", "Conv5_FC3"),
                                         ("resnet3d", "ResNet3D"), ("AE_Conv5", "AE_Conv5_FC3")])
def test_unknown_name_suggests(typed, meant):
    with pytest.raises(UsageError) as info:
        check_fit(typed, "classification", TINY_3D)
    message = str(info.value)
    assert f"did you mean {meant}" in message
    assert all(name in message for name in SPECS)


def test_unknown_name_without_close_match():
    with pytest.raises(UsageError) as info:
        check_fit("xyz", "classification", TINY_3D)
    assert "did you mean" not in str(info.value) and "VAE" in str(info.value)


@pytest.mark.parametrize("kwargs,match", [
    ({"task": "segmentation"}, "unknown task"),
    ({"input_shape": (1, 24)}, "expected"),
    ({"input_shape": (1, 24, 0, 24)}, "positive"),
    ({"input_shape": (1, 2, 24, 28, 24)}, "expected"),
    ({"input_shape": (1, 24.0, 28, 24)}, "expected"),
    ({"task": "regression", "n_outputs": 2}, "n_outputs must be 1"),
    ({"n_outputs": 0}, "at least one output"),
    ({"dropout": 1.0}, "dropout"),
    ({"dropout": -0.1}, "dropout"),
])
def test_bad_arguments(kwargs, match):
    args = {"name": "Conv4_FC3", "task": "classification", "input_shape": TINY_3D, "n_outputs": 2, **kwargs}
    with pytest.raises(UsageError, match=match):
        build_model(**args)


def test_default_architecture():
    assert default_architecture("classification", 3) == "Conv5_FC3"
    assert default_architecture("regression", 3) == "Conv5_FC3"
    assert default_architecture("classification", 2) == "CNN2D"
    assert default_architecture("reconstruction", 3) == "AE_Conv5_FC3"
    assert default_architecture("reconstruction", 2) == "AE_Conv5_FC3"
    for task in ("classification", "regression", "reconstruction"):
        check_fit(default_architecture(task, 3), task, CLINICADL_SHAPE)
        check_fit(default_architecture(task, 2), task, (3, 169, 208))
    with pytest.raises(UsageError):
        default_architecture("classification", 4)
    with pytest.raises(UsageError):
        default_architecture("segment", 3)


def test_list_models_counts_parameters():
    table = list_models(TINY_3D)
    rows = {line.split()[0]: line for line in table.splitlines()[1:]}
    assert set(rows) == set(SPECS)
    for name in ("Conv5_FC3", "ResNet3D", "VAE"):
        task = SPECS[name].tasks[0]
        model = build_model(name, task, TINY_3D, 2)
        assert f" {n_parameters(model):,} " in rows[name]
    for name in ("Stride_Conv5_FC3", "CNN2D"):
        assert re.search(r"\s-\s", rows[name]), rows[name]
    assert "parameters" in table.splitlines()[0]
    plain = list_models()
    assert all(name in plain for name in SPECS) and "parameters" not in plain

