"""MNIST (or FashionMNIST, KMNIST: the same IDX files) held whole in memory as uint8 tensors on the
training device; batches are slices."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch

from convdissect.errors import UserInputError

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

# The four IDX files torchvision's MNIST(root) reads from <root>/MNIST/raw, with MNIST's sizes.
IDX_FILES = {
    "train-images-idx3-ubyte": 47_040_016,
    "train-labels-idx1-ubyte": 60_008,
    "t10k-images-idx3-ubyte": 7_840_016,
    "t10k-labels-idx1-ubyte": 10_008,
}
# MD5 sums of MNIST's four uncompressed IDX files (torchvision.datasets.MNIST.resources lists those of the
# .gz downloads; its download unpacks them into these). FashionMNIST and KMNIST are not verified: no copy
# of their unpacked files was at hand to take the sums from; their IDX headers and sizes are still checked.
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
# IDX headers: magic number 0x0000080d (unsigned bytes, d dimensions), then d big-endian sizes.
IMAGES_MAGIC, LABELS_MAGIC = 0x803, 0x801

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dataset:
    """A data set in torchvision's layout: the four IDX files of IDX_FILES in <data_dir>/<folder>/raw."""

    folder: str  # also the torchvision.datasets class that downloads it
    mean: float  # of its training pixels in [0, 1]
    std: float
    # MNIST's files are checked against their known sizes; the others take their image counts from the files.
    exact_sizes: bool = False
    md5: dict[str, str] | None = None  # {file: MD5 sum}, checked on first use unless data.verify=false


DATASETS = {
    "mnist": Dataset("MNIST", MNIST_MEAN, MNIST_STD, exact_sizes=True, md5=MNIST_MD5),
    "fashion_mnist": Dataset("FashionMNIST", 0.2860, 0.3530),
    "kmnist": Dataset("KMNIST", 0.1918, 0.3483),
}


def dataset_spec(name: str) -> Dataset:
    if name not in DATASETS:
        raise UserInputError(f"data.dataset={name!r}: allowed {list(DATASETS)}")
    return DATASETS[name]


def normalise(images_uint8: torch.Tensor, mean: float = MNIST_MEAN, std: float = MNIST_STD) -> torch.Tensor:
    """uint8 [N, 28, 28] -> float [N, 1, 28, 28] with the data set's mean and std (MNIST's by default)."""
    return ((images_uint8.float() / 255.0 - mean) / std).unsqueeze(1)


def _missing_data_error(raw_dir: Path, why: str, folder: str = "MNIST") -> UserInputError:
    return UserInputError(
        f"{folder} not usable in {raw_dir} ({why}); put the four IDX files "
        f"{', '.join(IDX_FILES)} there (uncompressed), or point paths.data_dir / "
        f"CONVDISSECT_DATA_DIR at a folder holding {folder}/raw/"
    )


# (path, size, mtime) of the files whose MD5 matched in this process: hashed once, not per run or test.
_VERIFIED: set[tuple[str, int, int]] = set()


def verify_md5(raw_dir: Path, sums: dict[str, str], folder: str) -> None:
    """Each file's MD5 against the known sum: a file of the right size and header can still hold other
    images or labels (a shifted label file trains to 26%)."""
    for file, expected in sums.items():
        path = (raw_dir / file).resolve()
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key in _VERIFIED:
            continue
        digest = hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
        if digest.hexdigest() != expected:
            raise UserInputError(
                f"{folder} not usable in {raw_dir} ({file} has MD5 {digest.hexdigest()}, expected {expected}: "
                f"changed or not {folder}'s); data.verify=false uses the files as they are (your own data set)"
            )
        _VERIFIED.add(key)


def ensure_mnist(data_dir: str | Path, download: bool = True, name: str = "mnist", verify: bool = True) -> None:
    """Check that the data set's four IDX files are there (and MNIST's whole and, with verify, the known
    files), downloading them (torchvision) when they are missing and download is on."""
    import torchvision.datasets

    folder = dataset_spec(name).folder
    raw_dir = Path(data_dir) / folder / "raw"
    if not all((raw_dir / file).exists() for file in IDX_FILES):
        if not download:
            raise _missing_data_error(raw_dir, "files missing and data.download=false", folder)
        try:
            getattr(torchvision.datasets, folder)(str(data_dir), train=True, download=True)
        except Exception as err:  # offline: URLError, socket errors, HTTP errors ...
            raise _missing_data_error(
                raw_dir, f"files missing and the download failed: {' '.join(str(err).split())}", folder
            ) from None
    if not dataset_spec(name).exact_sizes:
        return
    for file, size in IDX_FILES.items():
        actual = (raw_dir / file).stat().st_size
        if actual != size:
            raise _missing_data_error(raw_dir, f"{file} has {actual} bytes, expected {size}: truncated or not MNIST")
    if verify and dataset_spec(name).md5:
        verify_md5(raw_dir, dataset_spec(name).md5, folder)


def read_idx(path: Path, magic: int, dims: tuple[int | None, ...], folder: str = "MNIST") -> torch.Tensor:
    """A uint8 IDX file as a tensor, after checking its magic number and dims (a file of the right
    size can still hold something else); a dim None takes the file's."""
    raw = path.read_bytes()
    header = 4 + 4 * len(dims)
    found_magic = int.from_bytes(raw[:4], "big")
    found_dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(len(dims)))
    if found_magic != magic:
        why = f"{path.name} has magic number {found_magic:#010x}, expected {magic:#010x}: not an IDX file of {folder}"
        raise _missing_data_error(path.parent, why, folder)
    if any(want is not None and found != want for found, want in zip(found_dims, dims)):
        expected = [found if want is None else want for found, want in zip(found_dims, dims)]
        raise _missing_data_error(path.parent, f"{path.name} has dims {list(found_dims)}, expected {expected}", folder)
    n_values = torch.Size(found_dims).numel()
    if len(raw) - header != n_values:
        why = f"{path.name} holds {len(raw) - header} values after its header, expected {n_values}"
        raise _missing_data_error(path.parent, why, folder)
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(found_dims)


def load_mnist(
    data_dir: str | Path, download: bool = True, name: str = "mnist", verify: bool = True
) -> dict[str, torch.Tensor]:
    """A data set's uint8 images and labels on the CPU, checked:
    {"train_images", "train_labels", "test_images", "test_labels"}."""
    ensure_mnist(data_dir, download, name, verify)
    spec = dataset_spec(name)
    raw_dir = Path(data_dir) / spec.folder / "raw"
    out = {}
    for split, prefix, n in (("train", "train", 60_000), ("test", "t10k", 10_000)):
        n = n if spec.exact_sizes else None
        images = read_idx(raw_dir / f"{prefix}-images-idx3-ubyte", IMAGES_MAGIC, (n, 28, 28), spec.folder)
        labels = read_idx(raw_dir / f"{prefix}-labels-idx1-ubyte", LABELS_MAGIC, (len(images),), spec.folder).long()
        if labels.max() > 9:
            why = f"{prefix}-labels-idx1-ubyte holds the label {int(labels.max())}, expected 0 to 9"
            raise _missing_data_error(raw_dir, why, spec.folder)
        out[f"{split}_images"], out[f"{split}_labels"] = images, labels
    return out


# The shifts' random stream is its own (seed + epoch + this), so an epoch's order is the same with and without.
SHIFT_STREAM = 2**32


def shift_images(images: torch.Tensor, shifts: torch.Tensor, n: int) -> torch.Tensor:
    """uint8 images [B, H, W], each moved by its own (rows, columns) in shifts [B, 2], all within [-n, n]
    (down and right positive), the pixels moved in black: one gather on the images' device, no
    per-image loop and no wait for the device."""
    b, h, w = images.shape
    padded = torch.nn.functional.pad(images, (n, n, n, n))
    rows = (n - shifts[:, 0]).view(b, 1, 1) + torch.arange(h, device=images.device).view(1, h, 1)
    cols = (n - shifts[:, 1]).view(b, 1, 1) + torch.arange(w, device=images.device).view(1, 1, w)
    return padded[torch.arange(b, device=images.device).view(b, 1, 1), rows, cols]


class TensorBatches:
    """An epoch of batches sliced from in-memory tensors, in a seeded order.

    Each call to iter() is one epoch; epoch e uses permutation seed + e, the same on every rank,
    and each rank takes its own strided share of it (so ranks see distinct data). With
    current_epoch (the trainer's counter), each epoch asks it when it starts: a resumed run's
    loader is built before the counter is restored, so a count fixed then would replay the
    shuffle from epoch 0. Without it, epochs count up from 0. With resume_at (the batches of the
    epoch a run resumed mid-epoch has already trained), the epoch starts after them. With random_shift
    N, each image of a batch is moved by its own random whole-pixel shift in [-N, N] along each axis.
    With targets, asked like current_epoch when an epoch's first batch is drawn and giving one row per
    image or None (a teacher's outputs, computed once the fit has started), a batch is (images, labels,
    those rows).
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
        resume_at: Callable[[], int] | None = None,
        mean: float = MNIST_MEAN,
        std: float = MNIST_STD,
        random_shift: int = 0,
        targets: Callable[[], torch.Tensor | None] | None = None,
    ):
        self.images, self.labels, self.targets = images, labels, targets
        self.random_shift = random_shift
        self.mean, self.std = mean, std
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch, self.current_epoch, self.resume_at = 0, current_epoch, resume_at

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
        start = self.resume_at() if self.resume_at is not None else 0
        idx = self._indices()
        targets = self.targets() if self.targets is not None else None
        shifts = self._shifts(len(idx)) if self.random_shift else None
        self.epoch += 1
        for b in range(start, len(self)):
            sel = idx[b * self.batch_size : (b + 1) * self.batch_size]
            images = self.images[sel]
            if shifts is not None:
                images = shift_images(
                    images, shifts[b * self.batch_size : (b + 1) * self.batch_size], self.random_shift
                )
            batch = normalise(images, self.mean, self.std), self.labels[sel]
            yield batch if targets is None else (*batch, targets[sel])

    def _shifts(self, n: int) -> torch.Tensor:
        """The epoch's shifts [n, 2], drawn at once and moved to the device once."""
        gen = torch.Generator().manual_seed(self.seed + self.epoch + SHIFT_STREAM)
        shifts = torch.randint(-self.random_shift, self.random_shift + 1, (n, 2), generator=gen)
        return shifts.to(self.images.device)


class MNISTDataModule(L.LightningDataModule):
    """MNIST (or data.dataset=fashion_mnist | kmnist) as tensors on the training device: seeded
    55k/5k train/val split, 10k test; training batches randomly shifted by up to random_shift pixels."""

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 64,
        eval_batch_size: int = 1000,
        val_size: int = 5000,
        seed: int = 0,
        download: bool = True,
        dataset: str = "mnist",
        verify: bool = True,
        random_shift: int = 0,
    ):
        super().__init__()
        self.spec, self.dataset = dataset_spec(dataset), dataset
        if isinstance(random_shift, bool) or not isinstance(random_shift, int) or not 0 <= random_shift <= 27:
            raise UserInputError(f"data.random_shift={random_shift!r}: allowed a whole number of pixels, 0 to 27")
        self.random_shift = random_shift
        if batch_size < 1 or eval_batch_size < 1:
            raise UserInputError(f"data.batch_size={batch_size}, data.eval_batch_size={eval_batch_size}: must be >= 1")
        if not 0 < val_size < 60_000:
            raise UserInputError(f"data.val_size={val_size}: must be between 1 and 59999")
        self.data_dir, self.download, self.verify = data_dir, download, verify
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_size, self.seed = val_size, seed
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._device = torch.device("cpu")
        # One row per training image (the split's order), handed out with its batches: a teacher's outputs,
        # set by the module when it caches them (model.distill.cache).
        self.train_targets: torch.Tensor | None = None

    def prepare_data(self):
        ensure_mnist(self.data_dir, self.download, self.dataset, self.verify)  # download once, on rank 0

    def setup(self, stage=None):
        if self.splits:
            return
        raw = load_mnist(self.data_dir, self.download, self.dataset, self.verify)
        if self.val_size >= len(raw["train_labels"]):
            raise UserInputError(
                f"data.val_size={self.val_size}: must be below the {len(raw['train_labels'])} training images "
                f"of {self.spec.folder}"
            )
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
            resume_at=self._trained_in_resumed_epoch if self.trainer and shuffle else None,
            mean=self.spec.mean,
            std=self.spec.std,
            random_shift=self.random_shift if shuffle else 0,  # training batches only
            targets=(lambda: self.train_targets) if shuffle else None,
        )

    def _trained_in_resumed_epoch(self) -> int:
        """The batches of the current epoch a run resumed mid-epoch has trained (else 0): Lightning restores
        its loop's progress but not a plain loader's position, and would train the epoch's first batches again."""
        fit_loop = self.trainer.fit_loop
        if not fit_loop.restarting:  # a fresh epoch: nothing to skip, Lightning's state left alone
            return 0
        fit_loop.update_restart_stage()  # from the restored progress (Lightning does it again after the loader starts)
        return fit_loop.epoch_loop.batch_progress.current.processed if fit_loop.restarted_mid_epoch else 0

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
        return normalise(images[:n], self.spec.mean, self.spec.std), labels[:n]
