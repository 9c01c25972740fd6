"""Tests of the saliency maps, their placement on the voxel grid and their NIfTI output."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bidsapp_dl.errors import DataError, UsageError
from bidsapp_dl.evaluate.interpret import METHODS, saliency, save_nifti, to_volume
from bidsapp_dl.extract.modes import ImageExtractor, PatchExtractor, SliceExtractor
from bidsapp_dl.extract.roi import RoiExtractor
from bidsapp_dl.models import build_model

TINY = {3: (1, 24, 28, 24), 2: (1, 28, 24)}
ARCHITECTURES = {3: "Conv4_FC3", 2: "CNN2D"}


class RegionNet(nn.Module):
    """Score of class k: channel k of a convolution summed over region k (a known answer).

    The convolution has kernel and stride ``stride`` and weight ``signs[k] / stride**ndim``, so
    each input voxel feeds exactly one activation voxel: the gradient of score k is non-zero
    exactly on region k, upsampled to the input grid.
    """

    def __init__(self, masks: torch.Tensor, signs: tuple[float, ...] = (1.0, -1.0), stride: int = 1):
        super().__init__()
        ndim = masks.dim() - 1
        conv = (nn.Conv2d if ndim == 2 else nn.Conv3d)(1, len(signs), stride, stride=stride)
        with torch.no_grad():
            conv.weight.copy_(torch.tensor(signs).reshape(-1, 1, *[1] * ndim).expand_as(conv.weight)
                              / stride**ndim)
            conv.bias.zero_()
        self.conv = conv
        self.register_buffer("masks", masks.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.conv(x) * self.masks).flatten(2).sum(-1)


def corner_masks(shape: tuple[int, ...]) -> torch.Tensor:
    """Region 0: the low corner; region 1: the high corner (a quarter of each axis)."""
    masks = torch.zeros(2, *shape)
    masks[(0, *(slice(0, max(n // 4, 1)) for n in shape))] = 1
    masks[(1, *(slice(n - max(n // 4, 1), n) for n in shape))] = 1
    return masks


def assert_clean(model: nn.Module) -> None:
    """No gradient left on the parameters, no hook left on any module, eval mode."""
    assert all(p.grad is None for p in model.parameters())
    for module in model.modules():
        assert not module._forward_hooks
        assert not module._forward_pre_hooks
        assert not module._backward_hooks
        assert not module.training


def tiny_model(ndim: int, n_outputs: int = 3) -> nn.Module:
    torch.manual_seed(0)
    task = "classification" if n_outputs > 1 else "regression"
    return build_model(ARCHITECTURES[ndim], task, TINY[ndim], n_outputs)


def reference_grad_cam(model: nn.Module, x: torch.Tensor, layer: nn.Module, target: int) -> np.ndarray:
    """Grad-CAM written out step by step, to check the library against."""
    model.eval()
    seen = []
    handle = layer.register_forward_hook(lambda m, a, out: seen.append(out))
    out = model(x)
    handle.remove()
    (grad,) = torch.autograd.grad(out[:, target].sum(), seen[0])
    dims = tuple(range(2, x.dim()))
    cam = torch.relu((grad.mean(dim=dims, keepdim=True) * seen[0]).sum(1, keepdim=True))
    mode = "trilinear" if x.dim() == 5 else "bilinear"
    cam = F.interpolate(cam, size=x.shape[2:], mode=mode, align_corners=False)[:, 0].detach()
    peak = cam.flatten(1).amax(1).reshape(-1, *[1] * (cam.dim() - 1))
    for p in model.parameters():
        p.grad = None
    return (cam / peak).numpy()


# saliency: known answers


@pytest.mark.parametrize("shape", [(8, 12), (8, 12, 16)], ids=["2d", "3d"])
@pytest.mark.parametrize("stride", [1, 2])
def test_gradients_are_exactly_the_region_the_score_reads(shape, stride):
    coarse = tuple(n // stride for n in shape)
    masks = corner_masks(coarse)
    model = RegionNet(masks, stride=stride)
    x = torch.randn(3, 1, *shape)
    for target in (0, 1):
        maps = saliency(model, x, "gradients", target=target)
        region = masks[target].numpy()
        for axis in range(len(shape)):
            region = region.repeat(stride, axis=axis)
        assert maps.shape == (3, *shape) and maps.dtype == np.float32
        np.testing.assert_array_equal(maps, np.broadcast_to(region, maps.shape))
    assert_clean(model)


@pytest.mark.parametrize("shape", [(8, 12), (8, 12, 16)], ids=["2d", "3d"])
def test_grad_cam_weights_channels_by_their_mean_gradient(shape):
    model = RegionNet(corner_masks(shape), signs=(2.0, -1.0))
    x = torch.rand(2, 1, *shape) + 0.1
    # class 0 reads channel 0 = 2x > 0: the map is x scaled to a maximum of 1
    maps = saliency(model, x, "grad-cam", target=0)
    expected = (x[:, 0] / x[:, 0].flatten(1).amax(1).reshape(-1, *[1] * len(shape))).numpy()
    np.testing.assert_allclose(maps, expected, rtol=1e-6)
    # class 1 reads channel 1 = -x < 0 everywhere: ReLU leaves nothing, and zero stays zero
    maps = saliency(model, x, "grad-cam", target=1)
    assert np.isfinite(maps).all() and not maps.any()
    assert_clean(model)


def test_grad_cam_highlights_the_explained_feature_through_a_coarse_layer():
    shape = (16, 16, 16)
    model = RegionNet(corner_masks((8, 8, 8)), stride=2)
    x = torch.zeros(1, 1, *shape)
    x[0, 0, :4, :4, :4] = 1.0  # read by class 0 (channel x), region 0 of the coarse grid
    x[0, 0, 12:, 12:, 12:] = -1.0  # read by class 1 (channel -x), region 1
    near = {0: (slice(0, 5),) * 3, 1: (slice(11, 16),) * 3}
    for target, feature in ((0, (slice(0, 4),) * 3), (1, (slice(12, 16),) * 3)):
        maps = saliency(model, x, "grad-cam", target=target)[0]
        assert maps.shape == shape and maps.max() == 1
        assert maps[feature].min() > 0.4 and maps[feature].max() == 1
        # trilinear upsampling spreads a coarse voxel by one fine voxel, no further
        support = np.zeros(shape, dtype=bool)
        support[near[target]] = True
        np.testing.assert_array_equal(maps > 0, support)


def test_target_none_explains_each_samples_predicted_class():
    shape = (6, 8, 10)
    masks = corner_masks(shape)
    model = RegionNet(masks)
    # sample 0: score 0 > 0 > score 1, predicted class 0; sample 1 the opposite
    x = torch.stack([torch.ones(1, *shape), -torch.ones(1, *shape)])
    assert model(x).argmax(1).tolist() == [0, 1]
    maps = saliency(model, x, "gradients")
    np.testing.assert_array_equal(maps[0], masks[0].numpy())
    np.testing.assert_array_equal(maps[1], masks[1].numpy())
    # grad-cam: class 1 of sample 1 reads -x = +1, visible only when the right class is explained
    cams = saliency(model, x, "grad-cam")
    assert cams[0].max() == 1 and cams[1].max() == 1
    assert not saliency(model, x, "grad-cam", target=0)[1].any()


@pytest.mark.parametrize("method", METHODS)
def test_target_none_on_a_built_model_matches_explicit_targets(method):
    model = tiny_model(2)
    torch.manual_seed(1)
    x = torch.randn(6, *TINY[2])
    model.eval()
    with torch.no_grad():
        predicted = model(x).argmax(1)
    maps = saliency(model, x, method)
    for i, cls in enumerate(predicted.tolist()):
        np.testing.assert_allclose(maps[i], saliency(model, x[i:i + 1], method, target=cls)[0],
                                   rtol=1e-4, atol=1e-6)
    assert_clean(model)


def test_single_output_model_explains_the_output():
    model = RegionNet(corner_masks((6, 8))[:1], signs=(1.0,))
    x = torch.randn(2, 1, 6, 8)
    maps = saliency(model, x, "gradients")
    np.testing.assert_array_equal(maps[0], corner_masks((6, 8))[0].numpy())
    assert saliency(model, x, "gradients", target=0).shape == (2, 6, 8)
    with pytest.raises(UsageError, match="single output"):
        saliency(model, x, "gradients", target=1)


# saliency: built architectures


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("ndim", [2, 3])
def test_built_models_shapes_normalisation_and_no_side_effects(ndim, method):
    model = tiny_model(ndim)
    model.train()
    torch.manual_seed(2)
    x = torch.randn(3, *TINY[ndim])
    before = x.clone()
    maps = saliency(model, x, method)
    assert maps.shape == (3, *TINY[ndim][1:]) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0
    np.testing.assert_allclose(maps.reshape(3, -1).max(1), 1.0, rtol=1e-6)
    assert torch.equal(x, before) and x.grad is None
    assert_clean(model)
    # eval mode makes each sample's map independent of the rest of its batch
    alone = saliency(model, x[1:2], method)
    np.testing.assert_allclose(alone[0], maps[1], rtol=1e-4, atol=1e-6)


def test_regression_model_saliency():
    model = tiny_model(3, n_outputs=1)
    maps = saliency(model, torch.randn(2, *TINY[3]), "gradients")
    assert maps.shape == (2, *TINY[3][1:]) and maps.max() == 1


def test_grad_cam_default_layer_is_the_last_convolution():
    model = tiny_model(2)
    x = torch.randn(2, *TINY[2])
    last = [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1]
    np.testing.assert_allclose(saliency(model, x, "grad-cam", target=1),
                               reference_grad_cam(model, x, last, 1), rtol=1e-4, atol=1e-6)
    assert_clean(model)


def test_grad_cam_layer_chosen_by_module_or_name():
    model = tiny_model(2)
    x = torch.randn(2, *TINY[2])
    first = model.features[0][0][0]
    expected = reference_grad_cam(model, x, first, 2)
    by_name = saliency(model, x, "grad-cam", target=2, layer="features.0.0.0")
    by_module = saliency(model, x, "grad-cam", target=2, layer=first)
    np.testing.assert_allclose(by_name, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(by_module, by_name)
    assert not np.allclose(by_name, saliency(model, x, "grad-cam", target=2), atol=1e-3)
    with pytest.raises(UsageError, match="did you mean 'features.0.0.0'"):
        saliency(model, x, "grad-cam", layer="feature.0.0.0")
    with pytest.raises(UsageError, match="not a module"):
        saliency(model, x, "grad-cam", layer=nn.Conv2d(1, 1, 1))


# saliency: errors


def test_unknown_method_and_bad_arguments():
    model = RegionNet(corner_masks((6, 8)))
    x = torch.randn(1, 1, 6, 8)
    with pytest.raises(UsageError, match="did you mean 'grad-cam'"):
        saliency(model, x, "gradcam")
    with pytest.raises(UsageError, match="out of range"):
        saliency(model, x, "gradients", target=2)
    with pytest.raises(UsageError, match="class index"):
        saliency(model, x, "gradients", target=0.5)
    with pytest.raises(UsageError, match=r"\(B, C, H, W\)"):
        saliency(model, x[0], "gradients")
    with pytest.raises(UsageError, match="no Conv2d or Conv3d"):
        saliency(nn.Sequential(nn.Flatten(), nn.Linear(48, 2)), x, "grad-cam")


class Failing(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x):
        self.conv(x)
        raise RuntimeError("broken model")


def test_hooks_removed_when_the_forward_pass_fails():
    model = Failing()
    with pytest.raises(RuntimeError, match="broken model"):
        saliency(model, torch.randn(1, 1, 6, 8), "grad-cam")
    assert_clean(model)
    reg = RegionNet(corner_masks((6, 8)))
    with pytest.raises(UsageError):
        saliency(reg, torch.randn(1, 1, 6, 8), "grad-cam", target=5)
    assert_clean(reg)


# to_volume


def test_to_volume_image_mode_is_the_map_itself():
    shape = (4, 5, 6)
    m = np.random.default_rng(0).random(shape)
    out = to_volume([m], [0], ImageExtractor(), shape)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, m.astype(np.float32))
    with pytest.raises(DataError, match="expects"):
        to_volume([m[:3]], [0], ImageExtractor(), shape)
    with pytest.raises(IndexError):
        to_volume([m], [1], ImageExtractor(), shape)
    with pytest.raises(UsageError, match="one index per map"):
        to_volume([m, m], [0], ImageExtractor(), shape)


def test_to_volume_patches_overlaps_averaged_uncovered_zero():
    # patches of 4 every 2 voxels along x (origins 0, 2, 4); x = 8 and z = 4 are not covered
    shape = (9, 4, 5)
    extractor = PatchExtractor(patch_size=4, stride=2)
    assert extractor.grid_shape(shape) == (3, 1, 1)
    maps = [np.full((4, 4, 4), v) for v in (1.0, 2.0, 3.0)]
    out = to_volume(maps, [0, 1, 2], extractor, shape)
    along_x = [1, 1, 1.5, 1.5, 2.5, 2.5, 3, 3, 0]
    expected = np.zeros(shape, dtype=np.float32)
    expected[:, :, :4] = np.array(along_x)[:, None, None]
    np.testing.assert_array_equal(out, expected)
    # a subset: patches 0 and 2 touch at x = 4 without overlapping
    out = to_volume([maps[0], maps[2]], [0, 2], extractor, shape)
    np.testing.assert_array_equal(out[:, 0, 0], [1, 1, 1, 1, 3, 3, 3, 3, 0])
    with pytest.raises(DataError):
        to_volume([np.ones((3, 3, 3))], [0], extractor, shape)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_to_volume_slices_land_at_their_position(axis):
    shape = (5, 6, 7)
    extractor = SliceExtractor(axis=axis, discarded_slices=(1, 2))
    plane = extractor.sample_shape(shape)[1:]
    rng = np.random.default_rng(axis)
    indices = list(range(extractor.n_samples(shape)))
    maps = [rng.random(plane) + 0.1 for _ in indices]
    out = to_volume(maps, indices, extractor, shape)
    moved = np.moveaxis(out, axis, 0)
    for i, m in zip(indices, maps):
        np.testing.assert_allclose(moved[1 + i], m.astype(np.float32))
        # the sample really is that slice of the volume, so the map sits where its voxels were
        volume = np.arange(np.prod(shape)).reshape(shape)
        np.testing.assert_array_equal(extractor.extract(volume, i)[0], np.moveaxis(volume, axis, 0)[1 + i])
    assert not moved[0].any() and not moved[-2:].any()


def test_to_volume_roi_boxes_including_a_padded_one():
    shape = (10, 10, 10)
    inner = np.zeros(shape, dtype=bool)
    inner[2:5, 3:7, 1:4] = True
    corner = np.zeros(shape, dtype=bool)
    corner[:2, :2, :2] = True
    rng = np.random.default_rng(3)
    extractor = RoiExtractor({"a": inner})
    assert extractor.roi_box(0) == ((2, 5), (3, 7), (1, 4))
    m = rng.random((3, 4, 3)) + 0.1
    out = to_volume([m], [0], extractor, shape)
    expected = np.zeros(shape, dtype=np.float32)
    expected[2:5, 3:7, 1:4] = m
    np.testing.assert_array_equal(out, expected)
    # a 6-voxel box centred on the corner ROI starts 2 voxels before the border
    padded = RoiExtractor({"a": inner, "b": corner}, box_shape=6)
    assert padded.roi_box(1) == ((-2, 4),) * 3
    m = rng.random((6, 6, 6)) + 0.1
    out = to_volume([m], [1], padded, shape)
    expected = np.zeros(shape, dtype=np.float32)
    expected[:4, :4, :4] = m[2:, 2:, 2:]
    np.testing.assert_array_equal(out, expected)
    with pytest.raises(DataError):
        to_volume([m], [1], padded, (10, 10, 9))


# save_nifti


@pytest.mark.parametrize("name", ["map.nii.gz", "map.nii"])
@pytest.mark.parametrize("affine,codes", [
    (np.array([[-2.0, 0, 0, 90.5], [0, 2.0, 0, -126.25], [0, 0, 1.5, -72], [0, 0, 0, 1]]), ("L", "A", "S")),
    (np.array([[0, 0, 2.0, -10], [-1.5, 0, 0, 20], [0, 3.0, 0, 5.5], [0, 0, 0, 1]]), ("P", "S", "R")),
])
def test_save_nifti_round_trip(tmp_path, name, affine, codes):
    volume = np.random.default_rng(4).random((4, 5, 6)).astype(np.float64)
    path = tmp_path / "sub" / name
    save_nifti(volume, affine, path)
    image = nib.load(path)
    assert isinstance(image, nib.Nifti1Image) and image.get_data_dtype() == np.float32
    np.testing.assert_array_equal(image.get_fdata(dtype=np.float32), volume.astype(np.float32))
    np.testing.assert_array_equal(image.affine, affine)
    sform, sform_code = image.get_sform(coded=True)
    qform, qform_code = image.get_qform(coded=True)
    assert int(sform_code) == int(qform_code) == 2
    np.testing.assert_allclose(qform, affine, atol=1e-5)
    assert nib.aff2axcodes(image.affine) == codes
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    assert os.listdir(path.parent) == [name]


def test_save_nifti_replaces_and_rejects(tmp_path):
    path = tmp_path / "map.nii.gz"
    save_nifti(np.zeros((2, 3, 4)), np.eye(4), path)
    save_nifti(np.ones((2, 3, 4)), np.eye(4), path)
    assert nib.load(path).get_fdata().min() == 1
    with pytest.raises(UsageError, match=".nii"):
        save_nifti(np.ones((2, 3, 4)), np.eye(4), tmp_path / "map.npy")
    with pytest.raises(DataError, match="3-D"):
        save_nifti(np.ones((2, 3)), np.eye(4), path)
    with pytest.raises(DataError, match="4x4"):
        save_nifti(np.ones((2, 3, 4)), np.eye(3), path)
    assert sorted(os.listdir(tmp_path)) == ["map.nii.gz"]
