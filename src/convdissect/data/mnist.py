"""MNIST held whole in memory as uint8 tensors on the training device; batches are slices."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch

from convdissect.errors import UserInputError

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

# The four IDX files torchvision's MNIST(root) reads from <root>/MNIST/raw, with their sizes.
IDX_FILES = {
    "train-images-idx3-ubyte": 47_040_016,
    "train-labels-idx1-ubyte": 60_008,
    "t10k-images-idx3-ubyte": 7_840_016,
    "t10k-labels-idx1-ubyte": 10_008,
}
# IDX headers: magic number 0x0000080d (unsigned bytes, d dimensions), then d big-endian sizes.
IMAGES_MAGIC, LABELS_MAGIC = 0x803, 0x801

log = logging.getLogger(__name__)


def normalise(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 28, 28] -> float [N, 1, 28, 28] with MNIST's mean and std."""
    return ((images_uint8.float() / 255.0 - MNIST_MEAN) / MNIST_STD).unsqueeze(1)


def _missing_data_error(raw_dir: Path, why: str) -> UserInputError:
    return UserInputError(
        f"MNIST not usable in {raw_dir} ({why}); put the four IDX files "
        f"{', '.join(IDX_FILES)} there (uncompressed), or point paths.data_dir / "
        "CONVDISSECT_DATA_DIR at a folder holding MNIST/raw/"
    )


def ensure_mnist(data_dir: str | Path, download: bool = True) -> None:
    """Check that the four IDX files are there and whole, downloading them (torchvision) when
    they are missing and download is on."""
    from torchvision.datasets import MNIST

    raw_dir = Path(data_dir) / "MNIST" / "raw"
    if not all((raw_dir / name).exists() for name in IDX_FILES):
        if not download:
            raise _missing_data_error(raw_dir, "files missing and data.download=false")
        try:
            MNIST(str(data_dir), train=True, download=True)
        except Exception as err:  # offline: URLError, socket errors, HTTP errors ...
            raise _missing_data_error(
                raw_dir, f"files missing and the download failed: {' '.join(str(err).split())}"
            ) from None
    for name, size in IDX_FILES.items():
        actual = (raw_dir / name).stat().st_size
        if actual != size:
            raise _missing_data_error(raw_dir, f"{name} has {actual} bytes, expected {size}: truncated or not MNIST")


def read_idx(path: Path, magic: int, dims: tuple[int, ...]) -> torch.Tensor:
    """A uint8 IDX file as a tensor, after checking its magic number and dims (a file of the right
    size can still hold something else)."""
    raw = path.read_bytes()
    header = 4 + 4 * len(dims)
    found_magic = int.from_bytes(raw[:4], "big")
    found_dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(len(dims)))
    if found_magic != magic:
        why = f"{path.name} has magic number {found_magic:#010x}, expected {magic:#010x}: not an MNIST IDX file"
        raise _missing_data_error(path.parent, why)
    if found_dims != dims:
        raise _missing_data_error(path.parent, f"{path.name} has dims {list(found_dims)}, expected {list(dims)}")
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(dims)


def load_mnist(data_dir: str | Path, download: bool = True) -> dict[str, torch.Tensor]:
    """MNIST's uint8 images and labels on the CPU, checked:
    {"train_images", "train_labels", "test_images", "test_labels"}."""
    ensure_mnist(data_dir, download)
    raw_dir = Path(data_dir) / "MNIST" / "raw"
    out = {}
    for split, prefix, n in (("train", "train", 60_000), ("test", "t10k", 10_000)):
        out[f"{split}_images"] = read_idx(raw_dir / f"{prefix}-images-idx3-ubyte", IMAGES_MAGIC, (n, 28, 28))
        labels = read_idx(raw_dir / f"{prefix}-labels-idx1-ubyte", LABELS_MAGIC, (n,)).long()
        if labels.max() > 9:
            why = f"{prefix}-labels-idx1-ubyte holds the label {int(labels.max())}, expected 0 to 9"
            raise _missing_data_error(raw_dir, why)
        out[f"{split}_labels"] = labels
    return out


class TensorBatches:
    """An epoch of batches sliced from in-memory tensors, in a seeded order.

    Each call to iter() is one epoch; epoch e uses permutation seed + e, the same on every rank,
    and each rank takes its own strided share of it (so ranks see distinct data). With
    current_epoch (the trainer's counter), each epoch asks it when it starts: a resumed run's
    loader is built before the counter is restored, so a count fixed then would replay the
    shuffle from epoch 0. Without it, epochs count up from 0.
    """

    def __init__(
        self,
        images,
        labels,
        batch_size,
        shuffle,
        seed=0,
        rank=0,
        world_size=1,
        drop_last=False,
        current_epoch: Callable[[], int] | None = None,
    ):
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch, self.current_epoch = 0, current_epoch

    def _indices(self) -> torch.Tensor:
        n = len(self.labels)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        usable = n - n % self.world_size  # equal share per rank
        return order[self.rank : usable : self.world_size].to(self.images.device)

    def __len__(self) -> int:
        n = len(self.labels) // self.world_size
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        if self.current_epoch is not None:
            self.epoch = self.current_epoch()
        idx = self._indices()
        self.epoch += 1
        for b in range(len(self)):
            sel = idx[b * self.batch_size : (b + 1) * self.batch_size]
            yield normalise(self.images[sel]), self.labels[sel]


class MNISTDataModule(L.LightningDataModule):
    """MNIST as tensors on the training device: seeded 55k/5k train/val split, 10k test."""

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 64,
        eval_batch_size: int = 1000,
        val_size: int = 5000,
        seed: int = 0,
        download: bool = True,
    ):
        super().__init__()
        if batch_size < 1 or eval_batch_size < 1:
            raise UserInputError(f"data.batch_size={batch_size}, data.eval_batch_size={eval_batch_size}: must be >= 1")
        if not 0 < val_size < 60_000:
            raise UserInputError(f"data.val_size={val_size}: must be between 1 and 59999")
        self.data_dir, self.download = data_dir, download
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_size, self.seed = val_size, seed
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._device = torch.device("cpu")

    def prepare_data(self):
        ensure_mnist(self.data_dir, self.download)  # download once, on rank 0

    def setup(self, stage=None):
        if self.splits:
            return
        raw = load_mnist(self.data_dir, self.download)
        gen = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(raw["train_labels"]), generator=gen)
        train_idx, val_idx = order[self.val_size :], order[: self.val_size]
        self.splits = {
            "train": (raw["train_images"][train_idx], raw["train_labels"][train_idx]),
            "val": (raw["train_images"][val_idx], raw["train_labels"][val_idx]),
            "test": (raw["test_images"], raw["test_labels"]),
        }

    def _split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A split's uint8 images and labels, on the trainer's device (the model is there by now)."""
        self.setup()
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        if device != self._device:  # moved once, then every batch is a slice on the device
            self.splits = {k: (x.to(device), y.to(device)) for k, (x, y) in self.splits.items()}
            self._device = device
        return self.splits[name]

    def _batches(self, split: str, shuffle: bool) -> TensorBatches:
        images, labels = self._split(split)
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        return TensorBatches(
            images,
            labels,
            self.batch_size if shuffle else self.eval_batch_size,
            shuffle=shuffle,
            seed=self.seed,
            rank=rank,
            world_size=world,
            drop_last=shuffle,
            current_epoch=(lambda: self.trainer.current_epoch) if self.trainer else None,
        )

    def train_dataloader(self):
        batches = self._batches("train", shuffle=True)
        if len(batches) == 0:  # drop_last: no full batch, so no training step at all
            n = len(batches.labels) // batches.world_size
            raise UserInputError(
                f"data.batch_size={self.batch_size}: more than the {n} training images (per process); allowed 1 to {n}"
            )
        return batches

    def val_dataloader(self):
        return self._batches("val", shuffle=False)

    def test_dataloader(self):
        return self._batches("test", shuffle=False)

    def tensors(self, split: str, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first n normalised images [n, 1, 28, 28] and labels of a split (for dissection)."""
        images, labels = self._split(split)
        return normalise(images[:n]), labels[:n]
