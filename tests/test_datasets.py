"""data=fashion_mnist and data=kmnist: the same IDX reader on small files written here, each data set's
own normalisation, one-line errors for missing or short files."""

import struct
from pathlib import Path

import pytest
import torch

from convdissect.config import instantiate
from convdissect.data.mnist import DATASETS, IDX_FILES, IMAGES_MAGIC, LABELS_MAGIC, MNISTDataModule
from convdissect.errors import UserInputError
from convdissect.train import train
from tests.helpers import TINY, compose_cfg

NEW_SETS = {"fashion_mnist": "FashionMNIST", "kmnist": "KMNIST"}


def write_idx(path: Path, magic: int, values: torch.Tensor) -> None:
    """An uncompressed IDX file: magic number, big-endian dims, then the uint8 values."""
    header = struct.pack(f">I{values.dim()}I", magic, *values.shape)
    path.write_bytes(header + values.to(torch.uint8).numpy().tobytes())


def class_images(labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Learnable 28x28 images: a bright 5x5 block at a place set by the label, over noise."""
    images = torch.randint(0, 60, (len(labels), 28, 28), generator=gen, dtype=torch.uint8)
    for i, label in enumerate(labels.tolist()):
        row, col = 2 + 5 * (label // 4), 2 + 6 * (label % 4)
        images[i, row : row + 5, col : col + 5] = 255
    return images


def write_dataset(data_dir: Path, folder: str, n_train: int = 600, n_test: int = 200) -> Path:
    raw = data_dir / folder / "raw"
    raw.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = torch.randint(0, 10, (n,), generator=gen)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", IMAGES_MAGIC, class_images(labels, gen))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", LABELS_MAGIC, labels)
    return raw


@pytest.mark.parametrize("name", NEW_SETS)
def test_each_data_set_is_read_and_normalised_with_its_own_mean_and_std(name, tmp_path):
    raw = write_dataset(tmp_path, NEW_SETS[name])
    cfg = compose_cfg("train", [f"data={name}", f"data.data_dir={tmp_path}", "data.val_size=100"])
    dm = instantiate(cfg.data)
    images, labels = dm.tensors("test")
    stored = (raw / "t10k-labels-idx1-ubyte").read_bytes()[8:]
    assert labels.tolist() == list(stored) and images.shape == (200, 1, 28, 28)
    mean, std = {"fashion_mnist": (0.2860, 0.3530), "kmnist": (0.1918, 0.3483)}[name]
    white = images[0, 0][images[0, 0] == images[0, 0].max()]  # the 255 block
    torch.testing.assert_close(white, torch.full_like(white, (1.0 - mean) / std))
    batch, _ = next(iter(dm.train_dataloader()))
    assert batch.max().item() == pytest.approx((1.0 - mean) / std)
    assert len(dm.splits["train"][1]) == 500 and len(dm.splits["val"][1]) == 100


@pytest.mark.parametrize("name", NEW_SETS)
def test_missing_files_are_one_line_naming_the_folder_and_the_files(name, tmp_path):
    dm = MNISTDataModule(data_dir=str(tmp_path), download=False, dataset=name)
    with pytest.raises(UserInputError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / NEW_SETS[name] / "raw") in message
    assert all(file in message for file in IDX_FILES)


def test_a_short_file_and_an_unknown_data_set_are_clear_errors(tmp_path):
    raw = write_dataset(tmp_path, "KMNIST")
    images = raw / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-28])  # one image short of its header's count
    with pytest.raises(UserInputError, match="train-images-idx3-ubyte holds 470372 values after its header"):
        MNISTDataModule(data_dir=str(tmp_path), dataset="kmnist", val_size=100).setup()
    with pytest.raises(UserInputError, match=r"data.dataset='emnist': allowed \['mnist', 'fashion_mnist', 'kmnist'\]"):
        MNISTDataModule(dataset="emnist")
    with pytest.raises(UserInputError, match="data.val_size=600: must be below the 600 training images of KMNIST"):
        write_dataset(tmp_path / "other", "KMNIST")
        MNISTDataModule(data_dir=str(tmp_path / "other"), dataset="kmnist", val_size=600).setup()


def test_mnist_stays_the_default():
    assert compose_cfg("train").data.dataset == "mnist"
    assert MNISTDataModule().spec == DATASETS["mnist"] and DATASETS["mnist"].exact_sizes


@pytest.mark.slow
def test_a_short_run_trains_on_a_written_data_set(tmp_path, one_thread):
    write_dataset(tmp_path / "data", "FashionMNIST")
    overrides = TINY + ["data=fashion_mnist", f"data.data_dir={tmp_path / 'data'}", "data.val_size=100"]
    metrics = train(compose_cfg("train", overrides + ["trainer.max_epochs=8", "threads=1"], tmp_path / "run"))
    assert metrics["test/acc"] > 0.5  # chance is 0.1: the blocks were learnt
