"""Tests for valleys.data: built-in datasets, user-data adapters and their error paths."""

from __future__ import annotations

import gzip
import random
import socket
import struct
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from valleys import data
from valleys.data import (
    Dataset,
    from_tensors,
    from_torch_dataset,
    gaussian_mixture,
    load_digits,
    load_idx,
    load_image_folder,
    load_mnist1d,
    read_idx,
    teacher_student,
)

# ------------------------------------------------------------------------------------------------
# Fixtures and helpers
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every network access fail loudly."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    requests = pytest.importorskip("requests")
    monkeypatch.setattr(requests, "get", refuse)
    monkeypatch.setattr(requests.Session, "request", refuse)


def _assert_same(a: Dataset, b: Dataset) -> None:
    for attr in ("X_train", "y_train", "X_test", "y_test"):
        assert torch.equal(getattr(a, attr), getattr(b, attr)), attr


# ------------------------------------------------------------------------------------------------
# Dataset container
# ------------------------------------------------------------------------------------------------


def test_dataset_properties_and_to() -> None:
    ds = from_tensors(
        torch.randn(6, 2, 3), torch.tensor([0, 1, 2, 0, 1, 2]), test=(torch.randn(2, 2, 3),
                                                                      torch.tensor([1, 0]))
    )
    assert ds.train[0] is ds.X_train and ds.test[1] is ds.y_test
    assert ds.n_train == 6 and ds.n_test == 2 and ds.input_shape == (2, 3)
    assert ds.num_classes == 3
    d64 = ds.to(dtype=torch.float64)
    assert d64.X_train.dtype == torch.float64 and d64.X_test.dtype == torch.float64
    assert d64.y_train.dtype == torch.int64  # labels are not cast
    assert ds.X_train.dtype == torch.float32  # the original is untouched
    assert "X_train=(6, 2, 3) float32" in repr(ds)
    with pytest.raises(TypeError, match="floating torch dtype"):
        ds.to(dtype=torch.int32)


def test_dataset_is_frozen() -> None:
    ds = from_tensors(torch.randn(3, 2), torch.randn(3, 1))
    with pytest.raises(AttributeError):
        ds.name = "other"  # type: ignore[misc]
    assert ds.X_test is None and ds.n_test == 0 and ds.num_classes is None


def test_to_casts_float_targets() -> None:
    ds = teacher_student(n_train=5, n_test=3).to(dtype=torch.float64)
    assert ds.y_train.dtype == torch.float64 and ds.y_test.dtype == torch.float64


# ------------------------------------------------------------------------------------------------
# digits
# ------------------------------------------------------------------------------------------------


def test_digits_shapes_split_and_standardization() -> None:
    ds = load_digits()
    assert ds.n_train + ds.n_test == 1797
    assert ds.n_test == round(1797 * 0.2)
    assert ds.input_shape == (64,) and ds.num_classes == 10
    assert ds.y_train.dtype == torch.int64 and ds.X_train.dtype == torch.float32
    assert torch.isfinite(ds.X_train).all() and torch.isfinite(ds.X_test).all()
    mean = ds.X_train.double().mean(0)
    std = ds.X_train.double().std(0, correction=0)
    assert mean.abs().max() < 1e-5
    constant = std < 1e-6
    # digits has always-blank pixels: they stay at 0 instead of becoming NaN.
    assert constant.any() and (~constant).sum() > 50
    assert torch.allclose(std[~constant], torch.ones_like(std[~constant]), atol=1e-4)
    # The test split is transformed with the *train* statistics, so it is not exactly centred.
    assert ds.X_test.double().mean(0).abs().max() > 1e-3
    stats = ds.info["standardization"]
    assert stats["mean"].shape == (64,) and (stats["std"] > 0).all()


def test_digits_determinism_and_options() -> None:
    a, b, c = load_digits(seed=1), load_digits(seed=1), load_digits(seed=2)
    _assert_same(a, b)
    assert not torch.equal(a.y_train, c.y_train)
    raw = load_digits(standardize=False, flatten=False, one_hot=True, test_fraction=0.5,
                      dtype=torch.float64)
    assert raw.input_shape == (1, 8, 8) and raw.X_train.dtype == torch.float64
    assert raw.X_train.min() == 0 and raw.X_train.max() == 16
    assert raw.y_train.shape == (raw.n_train, 10) and raw.y_train.dtype == torch.float64
    assert torch.equal(raw.y_train.sum(1), torch.ones(raw.n_train, dtype=torch.float64))
    assert raw.n_test in (898, 899)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_digits_rejects_bad_test_fraction(bad: float) -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits(test_fraction=bad)


def test_loader_argument_types() -> None:
    with pytest.raises(TypeError, match="test_fraction must be a real number"):
        load_digits(test_fraction="0.2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        load_digits(seed=-1)
    with pytest.raises(TypeError, match="seed must be an integer"):
        load_digits(seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="floating torch dtype"):
        load_digits(dtype=torch.int64)


# ------------------------------------------------------------------------------------------------
# MNIST-1D
# ------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_network")
def test_mnist1d_offline_generation(capsys: pytest.CaptureFixture[str]) -> None:
    random.seed(123)
    np.random.seed(123)  # noqa: NPY002 (checking that the global state is restored)
    py_before, np_before = random.random(), np.random.random()  # noqa: NPY002
    random.seed(123)
    np.random.seed(123)  # noqa: NPY002

    ds = load_mnist1d(num_samples=200, seed=3)
    assert capsys.readouterr().out == ""
    assert ds.name == "mnist1d" and ds.num_classes == 10
    assert ds.X_train.shape == (160, 40) and ds.X_test.shape == (40, 40)
    assert ds.y_train.dtype == torch.int64 and set(ds.y_train.tolist()) <= set(range(10))
    assert torch.isfinite(ds.X_train).all()
    assert ds.X_train.mean(0).abs().max() < 1e-5
    assert ds.info["t"].shape == (40,)
    # The package reseeds the global generators; load_mnist1d hands back the caller's state.
    assert random.random() == py_before and np.random.random() == np_before  # noqa: NPY002


@pytest.mark.usefixtures("no_network")
def test_mnist1d_determinism_and_options() -> None:
    a = load_mnist1d(num_samples=100, seed=0, standardize=False)
    b = load_mnist1d(num_samples=100, seed=0, standardize=False)
    c = load_mnist1d(num_samples=100, seed=1, standardize=False)
    _assert_same(a, b)
    assert not torch.equal(a.X_train, c.X_train)
    oh = load_mnist1d(num_samples=100, seed=0, one_hot=True, test_fraction=0.3,
                      standardize=False)
    assert oh.n_train == 70 and oh.n_test == 30
    # Same generator output regardless of split: the first 70 samples of the 80/20 split.
    assert torch.equal(oh.X_train, torch.cat([a.X_train, a.X_test])[:70])
    assert torch.equal(oh.y_train.argmax(1), torch.cat([a.y_train, a.y_test])[:70])


def test_mnist1d_argument_errors() -> None:
    with pytest.raises(ValueError, match="multiple of 10"):
        load_mnist1d(num_samples=105)
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1"):
        load_mnist1d(num_samples=0)
    with pytest.raises(ValueError, match="test_fraction"):
        load_mnist1d(num_samples=100, test_fraction=1.0)
    with pytest.raises(ValueError, match="both splits need at least one sample"):
        load_mnist1d(num_samples=10, test_fraction=0.01)


# ------------------------------------------------------------------------------------------------
# Synthetic problems
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["tanh", "relu", "linear"])
def test_teacher_student_targets_match_teacher(activation: str) -> None:
    ds = teacher_student(n_train=50, n_test=20, input_dim=7, teacher_width=5, output_dim=3,
                         activation=activation, dtype=torch.float64, seed=4)
    assert ds.X_train.shape == (50, 7) and ds.y_train.shape == (50, 3)
    assert ds.X_test.shape == (20, 7) and ds.y_test.shape == (20, 3)
    assert ds.num_classes is None and ds.y_train.dtype == torch.float64
    t = ds.info["teacher"]
    assert t["W1"].shape == (5, 7) and t["W2"].shape == (3, 5) and t["activation"] == activation
    act = {"tanh": torch.tanh, "relu": torch.relu, "linear": lambda z: z}[activation]
    for X, y in (ds.train, ds.test):
        torch.testing.assert_close(act(X @ t["W1"].T) @ t["W2"].T, y)


def test_teacher_student_noise_and_determinism() -> None:
    a = teacher_student(n_train=40, n_test=10, seed=1)
    _assert_same(a, teacher_student(n_train=40, n_test=10, seed=1))
    b = teacher_student(n_train=40, n_test=10, seed=2)
    assert not torch.equal(a.info["teacher"]["W1"], b.info["teacher"]["W1"])
    # Independent streams: the teacher and the training set do not depend on n_test.
    c = teacher_student(n_train=40, n_test=99, seed=1)
    assert torch.equal(a.X_train, c.X_train) and torch.equal(a.y_train, c.y_train)
    noisy = teacher_student(n_train=40, n_test=10, seed=1, noise=0.5)
    assert torch.equal(noisy.X_train, a.X_train)
    resid = noisy.y_train - a.y_train
    assert 0.2 < resid.std() < 1.0
    with pytest.raises(ValueError, match="unknown teacher activation"):
        teacher_student(activation="swish")
    with pytest.raises(ValueError, match="noise must be >= 0"):
        teacher_student(noise=-1.0)
    with pytest.raises(ValueError, match="n_train must be an integer >= 1"):
        teacher_student(n_train=0)


@pytest.mark.parametrize("layout", ["random", "circle", "simplex"])
def test_gaussian_mixture(layout: str) -> None:
    ds = gaussian_mixture(n_train=90, n_test=30, input_dim=3, num_classes=4, separation=5.0,
                          std=0.1, layout=layout, seed=7)
    assert ds.X_train.shape == (90, 3) and ds.y_train.shape == (90,) and ds.num_classes == 4
    assert torch.bincount(ds.y_train, minlength=4).tolist() in ([23, 23, 22, 22],
                                                               [22, 23, 23, 22])
    means = ds.info["means"]
    assert means.shape == (4, 3)
    # With a tiny cluster std every point sits next to its class mean.
    nearest = torch.cdist(ds.X_train, means).argmin(1)
    if layout != "random":
        assert torch.equal(nearest, ds.y_train)
    dist = torch.pdist(means)
    if layout == "simplex":
        torch.testing.assert_close(dist, torch.full_like(dist, 5.0))
    if layout == "circle":
        assert torch.isclose(dist.min(), torch.tensor(5.0))
    _assert_same(ds, gaussian_mixture(n_train=90, n_test=30, input_dim=3, num_classes=4,
                                      separation=5.0, std=0.1, layout=layout, seed=7))


def test_gaussian_mixture_options_and_errors() -> None:
    a = gaussian_mixture(n_train=20, n_test=10, seed=0)
    b = gaussian_mixture(n_train=20, n_test=10, seed=1)
    assert not torch.equal(a.X_train, b.X_train)
    oh = gaussian_mixture(n_train=20, n_test=10, seed=0, one_hot=True, standardize=True)
    assert oh.y_train.shape == (20, 3) and torch.equal(oh.y_train.argmax(1), a.y_train)
    assert oh.X_train.mean(0).abs().max() < 1e-5
    with pytest.raises(ValueError, match="unknown layout"):
        gaussian_mixture(layout="grid")
    with pytest.raises(ValueError, match="needs input_dim >= 2"):
        gaussian_mixture(input_dim=1, layout="circle")
    with pytest.raises(ValueError, match="needs input_dim >= 4"):
        gaussian_mixture(input_dim=2, num_classes=5, layout="simplex")
    with pytest.raises(ValueError, match="std must be > 0"):
        gaussian_mixture(std=0.0)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        gaussian_mixture(num_classes=1)


# ------------------------------------------------------------------------------------------------
# from_tensors / from_torch_dataset
# ------------------------------------------------------------------------------------------------


def test_from_tensors_accepts_and_normalizes() -> None:
    X, y = torch.randn(5, 3), torch.tensor([0, 2, 1, 2, 0], dtype=torch.int32)
    ds = from_tensors(X, y, name="mine", dtype=torch.float64)
    assert ds.name == "mine" and ds.num_classes == 3 and ds.y_train.dtype == torch.int64
    assert ds.X_train.dtype == torch.float64
    assert from_tensors(X, y.long()).X_train is X  # no copy when nothing changes
    assert from_tensors(X, y, num_classes=10).num_classes == 10
    reg = from_tensors(X, torch.randn(5, 2))
    assert reg.num_classes is None


@pytest.mark.parametrize(
    ("X", "y", "kwargs", "exc", "match"),
    [
        (np.zeros((3, 2)), torch.zeros(3), {}, TypeError, r"torch.as_tensor\(X\)"),
        (torch.zeros(3, 2), [0, 1, 2], {}, TypeError, r"y must be a torch.Tensor"),
        (torch.zeros(3, 2), torch.zeros(4), {}, ValueError, "same number of samples"),
        (torch.zeros(0, 2), torch.zeros(0), {}, ValueError, "empty"),
        (torch.zeros(3, 2, dtype=torch.uint8), torch.zeros(3), {}, TypeError, "/ 255"),
        (torch.tensor([[0.0], [float("nan")]]), torch.zeros(2), {}, ValueError, "NaN"),
        (torch.zeros(2, 1), torch.tensor([0.0, float("inf")]), {}, ValueError, "y contains"),
        (torch.zeros(2, 1), torch.tensor([True, False]), {}, TypeError, r"y.long\(\)"),
        (torch.zeros(2, 1), torch.tensor([0, -1]), {}, ValueError, ">= 0"),
        (torch.zeros(2, 1), torch.tensor([[0], [1]]), {}, ValueError, "shape \\(n,\\)"),
        (torch.zeros(2, 1), torch.tensor([0, 5]), {"num_classes": 3}, ValueError, "up to 5"),
        (torch.zeros(2, 1), torch.zeros(2, 4), {"num_classes": 3}, ValueError, "4 columns"),
        (torch.zeros(2, 1), torch.zeros(2), {"test": (torch.zeros(1, 2), torch.zeros(1))},
         ValueError, "per-sample shape"),
        (torch.zeros(2, 1), torch.zeros(2), {"test": (torch.zeros(1, 1), torch.zeros(1).long())},
         ValueError, "do not match training targets"),
        (torch.zeros(2, 1), torch.zeros(2), {"test": torch.zeros(1, 1)}, TypeError, "pair"),
        (torch.zeros(2, 1), torch.zeros(2), {"dtype": torch.int8}, TypeError, "floating"),
    ],
)
def test_from_tensors_errors(X, y, kwargs, exc, match) -> None:
    with pytest.raises(exc, match=match):
        from_tensors(X, y, **kwargs)


def test_from_tensors_test_split_validated() -> None:
    with pytest.raises(ValueError, match="test data: X contains NaN"):
        from_tensors(torch.zeros(2, 1), torch.zeros(2),
                     test=(torch.full((1, 1), float("nan")), torch.zeros(1)))


def test_from_torch_dataset_tensor_dataset_and_loader() -> None:
    X, y = torch.randn(10, 3), torch.arange(10) % 4
    ds = from_torch_dataset(TensorDataset(X, y), test=TensorDataset(X[:3], y[:3]))
    assert torch.equal(ds.X_train, X) and torch.equal(ds.y_train, y) and ds.num_classes == 4
    assert ds.n_test == 3
    loaded = from_torch_dataset(DataLoader(TensorDataset(X, y), batch_size=3))
    assert torch.equal(loaded.X_train, X) and torch.equal(loaded.y_train, y)
    unbatched = from_torch_dataset(DataLoader(TensorDataset(X, y), batch_size=None))
    assert torch.equal(unbatched.X_train, X)
    shuffled = from_torch_dataset(DataLoader(TensorDataset(X, y), batch_size=4, shuffle=True))
    assert shuffled.n_train == 10
    assert sorted(shuffled.X_train[:, 0].tolist()) == sorted(X[:, 0].tolist())


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, items: list) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


class _NoLenDataset(torch.utils.data.Dataset):
    def __getitem__(self, i: int):
        return torch.zeros(2), 0


def test_from_torch_dataset_map_style_items() -> None:
    items = [(np.full((2, 2), i, dtype=np.float32), i % 3) for i in range(6)]
    ds = from_torch_dataset(_ListDataset(items), name="lst")
    assert ds.X_train.shape == (6, 2, 2) and ds.y_train.dtype == torch.int64
    assert ds.y_train.tolist() == [0, 1, 2, 0, 1, 2] and ds.name == "lst"
    floats = from_torch_dataset(_ListDataset([(torch.ones(3), torch.tensor([0.5]))] * 4))
    assert floats.y_train.shape == (4, 1) and floats.num_classes is None


@pytest.mark.parametrize(
    ("source", "exc", "match"),
    [
        (_ListDataset([]), ValueError, "empty"),
        (TensorDataset(torch.zeros(0, 2), torch.zeros(0)), ValueError, "empty"),
        (DataLoader(TensorDataset(torch.zeros(0, 2), torch.zeros(0)), batch_size=2), ValueError,
         "empty"),
        (_ListDataset([torch.zeros(2)] * 3), TypeError, "not an \\(x, y\\) pair"),
        (_ListDataset([(torch.zeros(2), 0, "extra")] * 3), TypeError, "has 3 elements"),
        (_ListDataset([{"x": torch.zeros(2), "y": 0}]), TypeError, "not an \\(x, y\\) pair"),
        (TensorDataset(torch.zeros(3, 2)), TypeError, "exactly \\(inputs, targets\\)"),
        (_ListDataset([(torch.zeros(2), 0), (torch.zeros(3), 1)]), ValueError, "share shapes"),
        (_ListDataset([(object(), 0)]), TypeError, "could not convert x"),
        (42, TypeError, "expected a torch.utils.data.Dataset or DataLoader"),
        (_NoLenDataset(), TypeError, "without __len__"),
    ],
)
def test_from_torch_dataset_errors(source, exc, match) -> None:
    with pytest.raises(exc, match=match):
        from_torch_dataset(source)


# ------------------------------------------------------------------------------------------------
# Image folders
# ------------------------------------------------------------------------------------------------


def _write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def image_root(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    arrays = {}
    # Class names out of alphabetical order on purpose; one image in a nested folder.
    for cls, names in (("zebra", ["a.png", "b.PNG"]), ("ant", ["x.png", "sub/y.png"])):
        for name in names:
            arr = rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
            _write_png(tmp_path / "imgs" / cls / name, arr)
            arrays[f"{cls}/{name}"] = arr
    (tmp_path / "imgs" / "ant" / "notes.txt").write_text("not an image")
    (tmp_path / "imgs" / ".hidden").mkdir()
    return tmp_path / "imgs", arrays


def test_image_folder_round_trip(image_root: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, arrays = image_root
    ds = load_image_folder(root)
    assert ds.info["classes"] == ["ant", "zebra"]
    assert ds.info["class_to_idx"] == {"ant": 0, "zebra": 1}
    assert ds.X_train.shape == (4, 3, 4, 5) and ds.X_train.dtype == torch.float32
    assert ds.y_train.tolist() == [0, 0, 1, 1] and ds.num_classes == 2 and ds.X_test is None
    assert ds.name == "imgs"
    for i, rel in enumerate(ds.info["files"]):
        expected = torch.from_numpy(arrays[Path(rel).as_posix()]).permute(2, 0, 1) / 255.0
        torch.testing.assert_close(ds.X_train[i], expected.float())
    assert 0.0 <= ds.X_train.min() and ds.X_train.max() <= 1.0


def test_image_folder_grayscale_resize_split(
    image_root: tuple[Path, dict[str, np.ndarray]],
) -> None:
    root, _ = image_root
    gray = load_image_folder(root, grayscale=True, size=(6, 3), dtype=torch.float64)
    assert gray.X_train.shape == (4, 1, 6, 3) and gray.X_train.dtype == torch.float64
    split = load_image_folder(root, test_fraction=0.25, seed=1, one_hot=True)
    assert split.n_train == 3 and split.n_test == 1 and split.y_train.shape == (3, 2)
    square = load_image_folder(root, size=2)
    assert square.input_shape == (3, 2, 2)


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        load_image_folder(tmp_path / "file.png")
    (tmp_path / "empty_root").mkdir()
    with pytest.raises(ValueError, match="no class directories"):
        load_image_folder(tmp_path / "empty_root")
    (tmp_path / "no_images" / "cat").mkdir(parents=True)
    (tmp_path / "no_images" / "cat" / "readme.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"no images .* \['cat'\]"):
        load_image_folder(tmp_path / "no_images")
    mixed = tmp_path / "mixed"
    _write_png(mixed / "a" / "1.png", np.zeros((4, 4), dtype=np.uint8))
    _write_png(mixed / "b" / "2.png", np.zeros((5, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"differ in size.*size=\(H, W\)"):
        load_image_folder(mixed)
    assert load_image_folder(mixed, size=(5, 4)).input_shape == (3, 5, 4)
    broken = tmp_path / "broken"
    (broken / "a").mkdir(parents=True)
    (broken / "a" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="could not read image"):
        load_image_folder(broken)
    with pytest.raises(ValueError, match="size must be"):
        load_image_folder(mixed, size=(1, 2, 3))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# IDX files
# ------------------------------------------------------------------------------------------------


def _idx_bytes(array: np.ndarray, code: int, be_dtype: str) -> bytes:
    header = struct.pack(">BBBB", 0, 0, code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(be_dtype).tobytes()


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path: Path, compress: bool) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 3, 4), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7, dtype=np.uint8)
    suffix = ".gz" if compress else ""
    img_path, lbl_path = tmp_path / f"img.idx3{suffix}", tmp_path / f"lbl.idx1{suffix}"
    for path, blob in ((img_path, _idx_bytes(images, 0x08, ">u1")),
                       (lbl_path, _idx_bytes(labels, 0x08, ">u1"))):
        path.write_bytes(gzip.compress(blob) if compress else blob)
    X, y = load_idx(img_path, lbl_path)
    assert X.dtype == torch.uint8 and torch.equal(X, torch.from_numpy(images))
    assert y.dtype == torch.int64 and y.tolist() == labels.tolist()
    X_only, none = load_idx(str(img_path))
    assert none is None and torch.equal(X_only, X)
    ds = from_tensors(X.float() / 255, y)
    assert ds.input_shape == (3, 4)


def test_idx_gzip_detected_by_magic_and_wider_dtypes(tmp_path: Path) -> None:
    values = np.arange(-6, 6, dtype=np.float64).reshape(3, 4) / 3
    path = tmp_path / "floats.idx"  # no .gz suffix: detected by the gzip magic bytes
    path.write_bytes(gzip.compress(_idx_bytes(values, 0x0E, ">f8")))
    out = read_idx(path)
    assert out.dtype == torch.float64 and torch.equal(out, torch.from_numpy(values))
    ints = np.array([-70000, 3, 70000], dtype=np.int32)
    (tmp_path / "i32.idx").write_bytes(_idx_bytes(ints, 0x0C, ">i4"))
    assert read_idx(tmp_path / "i32.idx").tolist() == ints.tolist()
    shorts = np.array([[-300, 2]], dtype=np.int16)
    (tmp_path / "i16.idx").write_bytes(_idx_bytes(shorts, 0x0B, ">i2"))
    assert read_idx(tmp_path / "i16.idx").tolist() == shorts.tolist()


def test_idx_errors(tmp_path: Path) -> None:
    good = _idx_bytes(np.zeros((2, 2), dtype=np.uint8), 0x08, ">u1")
    cases = {
        "bad_magic.idx": (b"\x12\x34" + good[2:], "bad magic number"),
        "bad_code.idx": (good[:2] + b"\x07" + good[3:], "unknown IDX type code"),
        "short.idx": (b"\x00\x00", "too short"),
        "truncated_header.idx": (good[:6], "truncated"),
        "truncated_data.idx": (good[:-1], "truncated or corrupt"),
        "trailing.idx": (good + b"\x00", "truncated or corrupt"),
        "fake.idx.gz": (good, "could not be decompressed"),
    }
    for name, (blob, match) in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(ValueError, match=match):
            read_idx(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_idx(tmp_path / "nope.idx")
    (tmp_path / "img.idx").write_bytes(good)
    (tmp_path / "lbl3.idx").write_bytes(_idx_bytes(np.zeros(3, dtype=np.uint8), 0x08, ">u1"))
    with pytest.raises(ValueError, match=r"2 images .* but 3 labels"):
        load_idx(tmp_path / "img.idx", tmp_path / "lbl3.idx")
    (tmp_path / "lbl_f.idx").write_bytes(_idx_bytes(np.zeros(2), 0x0D, ">f4"))
    with pytest.raises(ValueError, match="1-D array of integers"):
        load_idx(tmp_path / "img.idx", tmp_path / "lbl_f.idx")


def test_public_api_listed() -> None:
    for name in data.__all__:
        assert hasattr(data, name), name
