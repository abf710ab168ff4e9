"""The in-memory MNIST datamodule on the real files, and its clear errors."""

import shutil

import pytest
import torch

from convdissect.data.mnist import IDX_FILES, MNIST_MEAN, MNIST_STD, MNISTDataModule, TensorBatches
from convdissect.errors import UserInputError


@pytest.fixture(scope="module")
def dm(data_dir):
    dm = MNISTDataModule(data_dir=data_dir, batch_size=64, seed=3)
    dm.setup()
    return dm


def test_split_sizes(dm):
    assert [len(dm.splits[s][1]) for s in ("train", "val", "test")] == [55_000, 5_000, 10_000]
    assert dm.splits["train"][0].dtype == torch.uint8


def test_normalisation(dm):
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (64, 1, 28, 28) and y.shape == (64,)
    images = dm.splits["train"][0]
    raw = images[:2000].float() / 255
    assert abs(raw.mean().item() - MNIST_MEAN) < 0.01
    full, _ = dm.tensors("train", 2000)
    assert abs(full.mean().item()) < 0.03 and abs(full.std().item() - 1) < 0.03
    assert torch.allclose(full[0, 0], (raw[0] - MNIST_MEAN) / MNIST_STD)


def test_split_and_order_are_seeded(data_dir, dm):
    other = MNISTDataModule(data_dir=data_dir, batch_size=64, seed=3)
    other.setup()
    assert torch.equal(other.splits["val"][1], dm.splits["val"][1])
    first = [y for _, (_, y) in zip(range(3), other.train_dataloader())]
    again = [y for _, (_, y) in zip(range(3), MNISTDataModule(data_dir=data_dir, seed=3).train_dataloader())]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    reseeded = MNISTDataModule(data_dir=data_dir, seed=4)
    reseeded.setup()
    assert not torch.equal(reseeded.splits["val"][1], dm.splits["val"][1])


def test_epochs_reshuffle_and_cover_the_split():
    labels = torch.arange(100)
    batches = TensorBatches(torch.zeros(100, 28, 28, dtype=torch.uint8), labels, 10, shuffle=True, seed=0)
    epoch1 = torch.cat([y for _, y in batches])
    epoch2 = torch.cat([y for _, y in batches])
    assert len(batches) == 10
    assert sorted(epoch1.tolist()) == list(range(100)) and not torch.equal(epoch1, epoch2)


def test_a_resumed_run_continues_the_shuffle():
    images, labels = torch.zeros(50, 28, 28, dtype=torch.uint8), torch.arange(50)
    fresh = TensorBatches(images, labels, 10, shuffle=True, seed=0)
    next(iter(fresh))  # epoch 0
    second_epoch = [y for _, y in fresh]
    resumed = [y for _, y in TensorBatches(images, labels, 10, shuffle=True, seed=0, current_epoch=lambda: 1)]
    assert all(torch.equal(a, b) for a, b in zip(second_epoch, resumed))


def test_ranks_get_distinct_shares():
    images, labels = torch.zeros(101, 28, 28, dtype=torch.uint8), torch.arange(101)
    shares = [torch.cat([y for _, y in TensorBatches(images, labels, 8, True, 0, rank, 2)]) for rank in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == 50
    assert not set(shares[0].tolist()) & set(shares[1].tolist())


def test_targets_ride_with_their_images_in_every_share_and_epoch():
    """The labels are the images' indices, so each batch's targets must be its labels x 10."""
    images, labels = torch.zeros(101, 28, 28, dtype=torch.uint8), torch.arange(101)
    cached = {"rows": None}
    for rank, resume_at in ((0, 0), (1, 0), (1, 2)):
        batches = TensorBatches(
            images,
            labels,
            8,
            True,
            0,
            rank,
            2,
            drop_last=True,
            resume_at=lambda skip=resume_at: skip,
            targets=lambda: cached["rows"],
        )
        assert all(len(batch) == 2 for batch in batches)  # none cached yet
        cached["rows"] = labels * 10.0
        for _ in range(2):  # epochs
            seen = [(y, rows) for _, y, rows in batches]
            assert len(seen) == len(batches) - resume_at
            assert all(torch.equal(rows, y * 10.0) for y, rows in seen)
        cached["rows"] = None


def test_missing_data_dir_is_one_clear_error(tmp_path):
    with pytest.raises(UserInputError) as err:
        MNISTDataModule(data_dir=str(tmp_path / "nowhere"), download=False).prepare_data()
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "nowhere") in message
    assert all(name in message for name in IDX_FILES)


def test_failed_download_is_one_clear_error(tmp_path):
    # Offline machines (these) fail the download; online ones would fetch MNIST, so skip there.
    dm = MNISTDataModule(data_dir=str(tmp_path), download=True)
    try:
        dm.prepare_data()
    except UserInputError as err:
        assert "download failed" in str(err) and "\n" not in str(err)
        assert "train-images-idx3-ubyte" in str(err)
    else:
        pytest.skip("MNIST downloaded: this machine is online")


def test_truncated_file_is_one_clear_error(tmp_path, data_dir):
    raw = tmp_path / "MNIST" / "raw"
    shutil.copytree(f"{data_dir}/MNIST/raw", raw)
    with open(raw / "t10k-labels-idx1-ubyte", "r+b") as f:
        f.truncate(5000)
    with pytest.raises(UserInputError, match="t10k-labels-idx1-ubyte has 5000 bytes"):
        MNISTDataModule(data_dir=str(tmp_path)).setup()


def test_bad_batch_size():
    with pytest.raises(UserInputError, match="data.batch_size=0"):
        MNISTDataModule(batch_size=0)


@pytest.mark.parametrize(
    "offset,byte,match",
    [
        (
            3,
            2,
            r"t10k-labels-idx1-ubyte has magic number 0x00000802, expected 0x00000801",
        ),  # right size, another IDX type
        (7, 7, r"t10k-labels-idx1-ubyte has dims \[9991\], expected \[10000\]"),  # 10000 = 0x2710 -> 0x2707
        (8 + 99, 200, r"t10k-labels-idx1-ubyte holds the label 200, expected 0 to 9"),
    ],
)
def test_idx_content_is_checked_not_only_the_size(offset, byte, match, tmp_path, data_dir):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in IDX_FILES:
        if name != "t10k-labels-idx1-ubyte":
            (raw / name).symlink_to(f"{data_dir}/MNIST/raw/{name}")
    shutil.copy(f"{data_dir}/MNIST/raw/t10k-labels-idx1-ubyte", raw / "t10k-labels-idx1-ubyte")
    with open(raw / "t10k-labels-idx1-ubyte", "r+b") as f:
        f.seek(offset)
        f.write(bytes([byte]))
    with pytest.raises(UserInputError, match=match):  # verify=False: past the MD5 check, to the reader's
        MNISTDataModule(data_dir=str(tmp_path), verify=False).setup()
