"""Tests of the Dataset over stored tensors, the augmentations, samplers and loaders."""

from __future__ import annotations

import copy
import pickle
import random

import numpy as np
import pandas as pd
import pytest
import torch

from bidsapp_dl.data import AUGMENTATIONS, Augment, TensorDataset, make_loader, read_npy_header
from bidsapp_dl.errors import DataError, UsageError
from bidsapp_dl.extract.modes import make_extractor
from bidsapp_dl.extract.roi import RoiExtractor


def coded(image_id: int, shape: tuple[int, int, int], dtype=np.float32) -> np.ndarray:
    """Voxel (x, y, z) of image ``image_id`` holds image_id*1e6 + x*1e4 + y*1e2 + z."""
    x, y, z = (np.arange(n) for n in shape)
    code = image_id * 1_000_000 + x[:, None, None] * 10_000 + y[None, :, None] * 100 + z
    return code.astype(dtype)


def store(root, volumes: list[np.ndarray], labels=None, names=None) -> pd.DataFrame:
    """Save volumes as .npy under ``root`` and return their table (paths relative to root)."""
    rows = []
    for k, volume in enumerate(volumes):
        rel = f"sub-{k:02d}/anat/sub-{k:02d}_desc-tensor_T1w.npy"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        np.save(root / rel, volume)
        rows.append({"participant_id": f"sub-{k:02d}", "tensor": rel})
    table = pd.DataFrame(rows)
    if labels is not None:
        table["label"] = labels
    return table


def dataset(root, table, mode="image", task="classification", **kwargs) -> TensorDataset:
    extractor = mode if not isinstance(mode, str) else make_extractor(mode)
    return TensorDataset(root, table, extractor, task, **kwargs)


@pytest.fixture
def patches(tmp_path) -> TensorDataset:
    """16³, 16x16x24 and 16³ volumes in 8³ patches: 8, 12 and 8 samples."""
    shapes = [(16, 16, 16), (16, 16, 24), (16, 16, 16)]
    table = store(tmp_path, [coded(k, s) for k, s in enumerate(shapes)], ["CN", "AD", "CN"])
    return dataset(tmp_path, table, make_extractor("patch", patch_size=8, stride=8))


# the Dataset -----------------------------------------------------------------------------------
def test_image_mode_serves_each_whole_image_with_its_class(tmp_path):
    table = store(tmp_path, [coded(k, (6, 7, 8)) for k in range(3)], ["AD", "CN", "AD"])
    ds = dataset(tmp_path, table)
    assert len(ds) == ds.n_images == 3 and ds.sample_shape == (1, 6, 7, 8)
    assert ds.label_code == {"AD": 0, "CN": 1}
    for i, code in enumerate([0, 1, 0]):
        item = ds[i]
        image = item["image"]
        assert image.dtype == torch.float32 and image.shape == (1, 6, 7, 8)
        assert image.is_contiguous() and image.numpy().flags.writeable
        assert np.array_equal(image[0].numpy(), coded(i, (6, 7, 8)))
        assert item["label"].dtype == torch.int64 and int(item["label"]) == code
        assert (item["image_index"], item["sample_index"]) == (i, 0)
    assert np.array_equal(ds.sample_labels(), [0, 1, 0])
    given = dataset(tmp_path, table, label_code={"CN": 0, "AD": 1})
    assert [int(given[i]["label"]) for i in range(3)] == [1, 0, 1]


def test_patch_mode_maps_every_index_to_its_image_and_voxels(patches):
    ds = patches
    assert len(ds) == 28 and list(ds.samples_per_image) == [8, 12, 8]
    images = np.repeat([0, 1, 2], [8, 12, 8])
    samples = np.concatenate([np.arange(8), np.arange(12), np.arange(8)])
    assert np.array_equal(ds.image_of(np.arange(28)), images)
    assert np.array_equal(ds.sample_of(np.arange(28)), samples)
    for i in range(28):
        k, s = int(images[i]), int(samples[i])
        assert (ds.image_of(i), ds.sample_of(i)) == (k, s)
        item = ds[i]
        assert (item["image_index"], item["sample_index"]) == (k, s)
        grid = (2, 2, 3) if k == 1 else (2, 2, 2)
        x, y, z = (8 * v for v in np.unravel_index(s, grid))
        shape = (16, 16, 24) if k == 1 else (16, 16, 16)
        expected = coded(k, shape)[x:x + 8, y:y + 8, z:z + 8]
        assert np.array_equal(item["image"][0].numpy(), expected)
        assert int(item["label"]) == (0 if k == 1 else 1)
    assert np.array_equal(ds.sample_labels(), np.where(images == 1, 0, 1))
    assert ds[-1]["sample_index"] == 7 and ds[-1]["image_index"] == 2
    for bad in (28, -29):
        with pytest.raises(IndexError):
            ds[bad]
    with pytest.raises(IndexError):
        ds.image_of(np.array([0, 28]))


@pytest.mark.parametrize("channels", ["single", "rgb"])
def test_slice_mode_single_and_rgb(tmp_path, channels):
    table = store(tmp_path, [coded(k, (16, 12, 10)) for k in range(2)], ["a", "b"])
    extractor = make_extractor("slice", axis=2, discarded_slices=(1, 1), channels=channels)
    ds = dataset(tmp_path, table, extractor)
    n_channels = 3 if channels == "rgb" else 1
    assert len(ds) == 16 and ds.sample_shape == (n_channels, 16, 12)
    for i in range(16):
        k, s = divmod(i, 8)
        image = ds[i]["image"]
        assert image.shape == (n_channels, 16, 12) and image.is_contiguous()
        for c in range(n_channels):
            assert np.array_equal(image[c].numpy(), coded(k, (16, 12, 10))[:, :, 1 + s])
        image[0] += 1  # an rgb view of the map is read-only; the sample must not be
        assert not np.array_equal(image[0].numpy(), ds[i]["image"][0].numpy())


def test_roi_mode_serves_masked_boxes(tmp_path):
    shape = (12, 12, 12)
    left, right = np.zeros(shape, bool), np.zeros(shape, bool)
    left[1:5, 2:6, 3:7] = True
    left[1, 2, 3] = False  # a voxel of the box outside the mask is zeroed
    right[7:11, 6:10, 2:6] = True
    table = store(tmp_path, [coded(k, shape) for k in range(2)], [1.5, 2.5])
    ds = dataset(tmp_path, table, RoiExtractor({"right": right, "left": left}), "regression")
    assert len(ds) == 4 and ds.sample_shape == (1, 4, 4, 4)
    for i, (k, box, mask) in enumerate([(0, (1, 2, 3), left), (0, (7, 6, 2), right),
                                        (1, (1, 2, 3), left), (1, (7, 6, 2), right)]):
        x, y, z = box
        cut = (slice(x, x + 4), slice(y, y + 4), slice(z, z + 4))
        item = ds[i]
        assert np.array_equal(item["image"][0].numpy(), coded(k, shape)[cut] * mask[cut])
        assert item["label"].dtype == torch.float32 and float(item["label"]) == [1.5, 2.5][k]
    assert ds[0]["image"][0, 0, 0, 0] == 0


def test_float16_tensors_become_float32(tmp_path):
    x, y, z = np.indices((8, 8, 8))
    volume = (x * 64 + y * 8 + z).astype(np.float16)  # exact in float16 (< 2048)
    table = store(tmp_path, [volume], ["a"])
    assert read_npy_header(tmp_path / table["tensor"][0]) == ((8, 8, 8), np.dtype(np.float16))
    image = dataset(tmp_path, table)[0]["image"]
    assert image.dtype == torch.float32
    assert np.array_equal(image[0].numpy(), volume.astype(np.float32))


def test_regression_and_reconstruction_targets(tmp_path):
    volumes = [coded(k, (8, 8, 8)) for k in range(2)]
    table = store(tmp_path, volumes, ["71.5", 60])
    ds = dataset(tmp_path, table, task="regression")
    assert [float(ds[i]["label"]) for i in range(2)] == [71.5, 60.0]
    with pytest.raises(UsageError):
        ds.sample_labels()
    recon = dataset(tmp_path, table.drop(columns="label"), task="reconstruction")
    item = recon[1]
    assert torch.equal(item["label"], item["image"])
    assert np.array_equal(item["label"][0].numpy(), volumes[1])
    table["label"] = ["old", 3]
    with pytest.raises(DataError, match="'old'"):
        dataset(tmp_path, table, task="regression")


def test_bad_labels_are_data_errors_naming_image_and_label(tmp_path):
    table = store(tmp_path, [coded(k, (8, 8, 8)) for k in range(3)], ["AD", "MCI", "CN"])
    with pytest.raises(DataError, match=r"sub-01_desc-tensor_T1w\.npy.*'MCI'"):
        dataset(tmp_path, table, label_code={"AD": 0, "CN": 1})
    table["label"] = ["AD", None, "CN"]
    with pytest.raises(DataError, match="sub-01.*no label"):
        dataset(tmp_path, table)
    with pytest.raises(DataError, match="'label' column"):
        dataset(tmp_path, table.drop(columns="label"))
    with pytest.raises(UsageError, match="unknown task"):
        dataset(tmp_path, table, task="segmentation")


def test_mixed_sample_shapes_are_refused_naming_two_images(tmp_path):
    table = store(tmp_path, [coded(0, (8, 8, 8)), coded(1, (8, 8, 8)), coded(2, (8, 9, 8))],
                  ["a", "a", "b"])
    with pytest.raises(DataError, match=r"sub-00_desc.*\(1, 8, 8, 8\).*sub-02_desc.*\(1, 8, 9, 8\)"):
        dataset(tmp_path, table)
    # different volumes are fine when their samples agree
    assert len(dataset(tmp_path, table, make_extractor("patch", patch_size=4, stride=4))) == 24
    table.loc[0, "tensor"] = "../outside.npy"
    with pytest.raises(DataError, match="relative"):
        dataset(tmp_path, table)


def counting_load(monkeypatch) -> list:
    calls = []
    real = np.load

    def load(*args, **kwargs):
        calls.append(kwargs.get("mmap_mode"))
        return real(*args, **kwargs)

    monkeypatch.setattr(np, "load", load)
    return calls


def test_volumes_are_memory_mapped_once_per_process(patches, monkeypatch):
    calls = counting_load(monkeypatch)
    ds = TensorDataset(patches.root, pd.DataFrame({"tensor": [str(p.relative_to(patches.root))
                                                              for p in patches.paths]}),
                       patches.extractor, "reconstruction")
    assert calls == []  # shapes come from the headers
    for _ in range(2):
        for i in range(len(ds)):
            ds[i]
    assert calls == ["r"] * 3
    volume = ds.volume(1)
    assert isinstance(volume, np.memmap) and not volume.flags.writeable
    assert not np.shares_memory(ds[9]["image"].numpy(), volume)
    # a worker process maps the files again, and pickling carries no mapped data
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._volumes == {} and len(pickle.dumps(ds)) < 20_000
    ds._pid = -1
    ds[0]
    assert calls == ["r"] * 4
    ds._max_open = 2  # a bounded number of open maps (file descriptors)
    for i in range(len(ds)):
        assert np.array_equal(ds[i]["image"], patches[i]["image"])
        assert len(ds._volumes) <= 2


def test_image_mode_reads_whole_volumes_and_keeps_no_map(tmp_path, monkeypatch):
    """A sample that is the whole volume is read from the file into the sample's own array:
    nothing stays mapped (no file pages held, whatever the number of images), the values are
    those of the map, for float32, float16, Fortran-ordered and big-endian files."""
    volumes = [coded(0, (6, 7, 8)), coded(1, (6, 7, 8)).astype(np.float16),
               np.asfortranarray(coded(2, (6, 7, 8))), coded(3, (6, 7, 8)).astype(">f4")]
    table = store(tmp_path, volumes, ["AD", "CN", "AD", "CN"])
    calls = counting_load(monkeypatch)
    ds = dataset(tmp_path, table)
    for _ in range(2):
        for i, volume in enumerate(volumes):
            image = ds[i]["image"]
            assert image.dtype == torch.float32 and image.shape == (1, 6, 7, 8)
            assert image.is_contiguous() and image.numpy().flags.writeable
            assert np.array_equal(image[0].numpy(), volume.astype(np.float32))
    assert calls == [None] * 8 and ds._volumes == {}
    # a sample is an array of its own: changing it changes nothing that is read later
    first = ds[0]["image"]
    first += 1.0
    assert np.array_equal(ds[0]["image"][0].numpy(), volumes[0])
    # other modes still map each volume once
    patches = dataset(tmp_path, table.iloc[[0, 2]].reset_index(drop=True),
                      make_extractor("patch", patch_size=3, stride=3))
    for i in range(len(patches)):
        patches[i]
    assert calls[10:] == ["r", "r"] and len(patches._volumes) == 2


def test_cache_loads_each_volume_once_and_gives_the_same_samples(patches, monkeypatch):
    calls = counting_load(monkeypatch)
    table = pd.DataFrame({"tensor": [str(p.relative_to(patches.root)) for p in patches.paths],
                          "label": ["CN", "AD", "CN"]})
    cached = TensorDataset(patches.root, table, patches.extractor, "classification", cache=True)
    assert calls == [None] * 3
    for i in range(len(cached)):
        a, b = cached[i], patches[i]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert calls.count(None) == 3  # the "r" ones are the maps of the uncached dataset
    assert not isinstance(cached.volume(0), np.memmap)
    assert len(pickle.loads(pickle.dumps(cached))._volumes) == 3


# augmentations ---------------------------------------------------------------------------------
SMOOTH = torch.linspace(0, 1, 12 * 10 * 8).reshape(1, 12, 10, 8) ** 2 + 0.1


@pytest.mark.parametrize("name", [n for n in AUGMENTATIONS if n != "flip"])
@pytest.mark.parametrize("sample", [SMOOTH, SMOOTH[:, :, :, 3].repeat(3, 1, 1).double()],
                         ids=["3d", "2d-rgb-float64"])
def test_each_augmentation_keeps_shape_and_dtype_changes_values_and_is_seeded(name, sample):
    augment = Augment([name])
    before = sample.clone()
    torch.manual_seed(1)
    first = augment(sample)
    assert first.shape == sample.shape and first.dtype == sample.dtype
    assert not torch.allclose(first, sample, atol=1e-6)
    assert torch.equal(sample, before)  # the input is left as it was
    torch.manual_seed(1)
    assert torch.equal(augment(sample), first)
    torch.manual_seed(2)
    assert not torch.allclose(augment(sample), first, atol=1e-6)


def test_flip_mirrors_left_right_half_the_time():
    augment = Augment(["flip"])
    outcomes = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out = augment(SMOOTH)
        assert out.shape == SMOOTH.shape and out.dtype == SMOOTH.dtype
        flipped = torch.equal(out, SMOOTH.flip(1))
        assert flipped or torch.equal(out, SMOOTH)
        torch.manual_seed(seed)
        assert torch.equal(augment(SMOOTH), out)
        outcomes.add(flipped)
    assert outcomes == {True, False}
    along_z = {torch.equal(Augment(["flip"], flip_axis=2)(SMOOTH), SMOOTH.flip(3)) for _ in range(12)}
    assert along_z == {True, False}


def test_affine_is_a_small_rigid_like_motion_even_on_elongated_samples():
    # f(x, y, z) = y, on a sample three times longer in y: after the transform, the slope along
    # x is at most sin(5 deg) x 1.05 (a rotation mixing axes in [-1, 1] units would shear it)
    ramp = torch.arange(40, dtype=torch.float64).reshape(1, 1, 40, 1).expand(1, 12, 40, 10)
    slopes = []
    for seed in range(10):
        out = Augment(["affine"], generator_seed=seed)(ramp)[0]
        slopes.append(float(out[7, 20, 5] - out[5, 20, 5]) / 2)
        along_y = float(out[6, 21, 5] - out[6, 19, 5]) / 2
        assert 0.94 <= along_y <= 1.06
    assert max(map(abs, slopes)) <= np.sin(np.deg2rad(5)) * 1.05 + 1e-9
    assert max(map(abs, slopes)) > 0.02


def test_blur_is_a_normalised_separable_gaussian():
    impulse = torch.zeros(1, 15, 15, 15, dtype=torch.float64)
    impulse[0, 7, 7, 7] = 1
    out = Augment(["blur"], generator_seed=0)(impulse)[0]
    assert float(out.sum()) == pytest.approx(1.0)
    profile = out[7, 7, :] / out[7, 7, :].sum()
    assert torch.allclose(out, torch.einsum("i,j,k->ijk", profile, profile, profile) * out.sum())
    assert torch.allclose(profile, profile.flip(0))
    sigma = (-0.5 / np.log(float(profile[8] / profile[7]))) ** 0.5
    assert 0.25 <= sigma <= 1.0


def test_private_and_explicit_generators_ignore_the_global_state():
    names = list(AUGMENTATIONS)
    torch.manual_seed(0)
    a = Augment(names, generator_seed=7)(SMOOTH)
    torch.manual_seed(99)
    assert torch.equal(Augment(names, generator_seed=7)(SMOOTH), a)
    g = torch.Generator().manual_seed(4)
    b = Augment(names)(SMOOTH, generator=g)
    torch.manual_seed(5)
    assert torch.equal(Augment(names)(SMOOTH, generator=torch.Generator().manual_seed(4)), b)
    assert not torch.equal(a, b)


def test_unknown_augmentation_suggests_a_name():
    with pytest.raises(UsageError, match=r"did you mean 'noise'.*|.*'noise'.*did you mean"):
        Augment(["nosie"])
    with pytest.raises(UsageError, match="choose among"):
        Augment(["zzz"])
    assert Augment(["Noise", "noise", "blur"]).names == ("noise", "blur")


def test_dataset_augments_only_when_asked(patches):
    assert np.array_equal(patches[3]["image"][0].numpy(),
                          coded(0, (16, 16, 16))[0:8, 8:16, 8:16])
    table = pd.DataFrame({"tensor": [str(p.relative_to(patches.root)) for p in patches.paths],
                          "label": ["CN", "AD", "CN"]})
    noisy = TensorDataset(patches.root, table, patches.extractor, "classification",
                          augment=Augment(["noise", "affine"]))
    assert not torch.equal(noisy[(3, 11)]["image"], patches[3]["image"])
    torch.manual_seed(0)
    first = noisy[(3, 11)]["image"]
    assert torch.equal(noisy[(3, 11)]["image"], first)
    assert not torch.equal(noisy[(3, 12)]["image"], first)


# samplers and loaders --------------------------------------------------------------------------
@pytest.fixture
def small(tmp_path) -> TensorDataset:
    """10 images of 4³ in image mode, 7 CN and 3 AD, augmented."""
    labels = ["CN"] * 7 + ["AD"] * 3
    table = store(tmp_path, [coded(k, (4, 4, 4)) for k in range(10)], labels)
    return dataset(tmp_path, table, augment=Augment(["noise", "flip"]))


def batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(b["image_index"], b["image"]) for b in loader]


def same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1])
                                    for x, y in zip(a, b))


def test_loader_batches_shapes_and_random_permutation(small):
    loader = make_loader(small, 4, train=True, seed=3)
    got = list(loader)
    assert [len(b["image_index"]) for b in got] == [4, 4, 2]
    assert got[0]["image"].shape == (4, 1, 4, 4, 4) and got[0]["image"].dtype == torch.float32
    assert got[0]["label"].shape == (4,) and got[0]["label"].dtype == torch.int64
    order = torch.cat([b["image_index"] for b in got])
    assert sorted(order.tolist()) == list(range(10)) and order.tolist() != list(range(10))
    assert len(list(make_loader(small, 4, train=True, drop_last=True))) == 2


def test_evaluation_loader_is_sequential_and_never_augments(small, patches):
    loader = make_loader(patches, 5, train=False, sampler="weighted")
    items = [(int(k), int(s)) for b in loader for k, s in zip(b["image_index"], b["sample_index"])]
    assert items == [(patches.image_of(i), patches.sample_of(i)) for i in range(len(patches))]
    assert torch.equal(next(iter(loader))["image"][0], patches[0]["image"])
    with pytest.raises(UsageError, match="augment"):
        make_loader(small, 4, train=False)


def test_same_seed_and_epoch_give_the_same_batches_with_0_and_2_workers(small):
    runs = {e: batches(make_loader(small, 4, train=True, seed=5, epoch=e)) for e in range(3)}
    assert same(runs[1], batches(make_loader(small, 4, train=True, seed=5, epoch=1)))
    assert not torch.equal(torch.cat([b[0] for b in runs[0]]), torch.cat([b[0] for b in runs[1]]))
    assert not same(batches(make_loader(small, 4, train=True, seed=6, epoch=1)), runs[1])
    # a run that resumes at epoch 2 with workers, then a persistent loader reused over epochs
    assert same(batches(make_loader(small, 4, train=True, seed=5, epoch=2, num_workers=2)), runs[2])
    loader = make_loader(small, 4, train=True, seed=5, num_workers=2)
    for epoch in (0, 1, 2):
        loader.sampler.set_epoch(epoch)
        assert same(batches(loader), runs[epoch])
    # augmentation really happened, and differs between epochs for the same sample
    first = {int(k): img for b in runs[0] for k, img in zip(*b)}
    second = {int(k): img for b in runs[1] for k, img in zip(*b)}
    assert not torch.equal(first[0], torch.from_numpy(coded(0, (4, 4, 4)))[None])
    assert not torch.equal(first[0], second[0])


def test_weighted_sampler_balances_classes(tmp_path):
    table = store(tmp_path, [coded(0, (2, 2, 2))] * 100, ["CN"] * 90 + ["AD"] * 10)
    ds = dataset(tmp_path, table)
    ad = ds.label_code["AD"]
    labels = ds.sample_labels()

    def minority(sampler: str) -> float:
        draws = np.concatenate([list(make_loader(ds, 10, train=True, sampler=sampler, seed=0,
                                                 epoch=e).sampler) for e in range(20)])
        assert len(draws) == 2000
        return float(np.mean(labels[draws] == ad))

    assert 0.4 <= minority("weighted") <= 0.6
    assert minority("random") == pytest.approx(0.1)


def test_weighted_sampler_needs_classes_and_sampler_names_are_checked(tmp_path):
    table = store(tmp_path, [coded(k, (4, 4, 4)) for k in range(3)], [1.0, 2.0, 3.0])
    for task in ("regression", "reconstruction"):
        ds = dataset(tmp_path, table, task=task)
        with pytest.raises(UsageError, match="weighted"):
            make_loader(ds, 2, train=True, sampler="weighted")
    with pytest.raises(UsageError, match="did you mean 'random'"):
        make_loader(ds, 2, train=True, sampler="randon")


class _Draws(torch.utils.data.Dataset):
    """Each item: numbers drawn from random, numpy and torch in the process that serves it."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i):
        return torch.tensor([random.random(), np.random.rand(), torch.rand(1).item()])


def test_workers_seed_random_numpy_and_torch_reproducibly():
    def draws(seed: int) -> torch.Tensor:
        return torch.cat(list(make_loader(_Draws(), 2, train=True, seed=seed, num_workers=2)))

    a = draws(0)
    assert torch.equal(a, draws(0))
    assert not torch.equal(a, draws(1))
    for column in (0, 1, 2):  # workers do not share one stream
        assert len(set(a[:, column].tolist())) == 8


def test_seed_worker_seeds_random_and_numpy_from_torch():
    from bidsapp_dl.data import seed_worker

    torch.manual_seed(2**40 + 17)
    seed_worker(0)
    got = (random.random(), np.random.rand())
    random.seed(17)
    np.random.seed(17)
    assert got == (random.random(), np.random.rand())


def test_large_samples_are_read_by_threads_giving_the_same_batches(small, monkeypatch):
    """A ThreadLoader (chosen for large samples) gives the DataLoader's batches, augmentation
    included, epoch after epoch, also when left in the middle of an epoch."""
    import bidsapp_dl.data.loader as loader_module

    expected = {e: batches(make_loader(small, 4, train=True, seed=5, epoch=e, num_workers=2))
                for e in range(3)}
    assert isinstance(make_loader(small, 4, train=True, num_workers=2), torch.utils.data.DataLoader)
    monkeypatch.setattr(loader_module, "THREADS_FROM_BYTES", small[0]["image"].numel() * 4)
    for workers in (1, 3):  # fewer batches in flight than in an epoch, and more
        threaded = make_loader(small, 4, train=True, seed=5, num_workers=workers)
        assert isinstance(threaded, loader_module.ThreadLoader) and len(threaded) == 3
        for epoch in (0, 1, 2):
            threaded.sampler.set_epoch(epoch)
            next(iter(threaded))  # an iteration given up after one batch changes nothing
            assert same(batches(threaded), expected[epoch])
    single = batches(make_loader(small, 1, train=True, seed=5, epoch=1, num_workers=2))
    assert len(single) == 10 and same(single, batches(make_loader(small, 1, train=True, seed=5,
                                                                 epoch=1)))
    plain = copy.copy(small)  # pickled and restored: its own lock and maps
    plain.augment = None
    evaluation = make_loader(plain, 3, train=False, num_workers=2)
    assert isinstance(evaluation, loader_module.ThreadLoader) and len(evaluation) == 4
    got = list(evaluation)
    assert torch.cat([b["image_index"] for b in got]).tolist() == list(range(10))
    assert all(torch.equal(b["image"][j], plain[3 * i + j]["image"])
               for i, b in enumerate(got) for j in range(len(b["image"])))
