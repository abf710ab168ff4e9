"""What several test files share: composed configs, the tiny and fast settings, a Python process in
the checkout, the report page's parser and the explainable HandNet's short run. Test files import
from here (or use conftest's fixtures), never from one another."""

import itertools
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf, open_dict

from convdissect.analysis.contributions import blank_image
from convdissect.config import compose_for
from convdissect.data.mnist import MNISTDataModule
from convdissect.dissection import dissect
from convdissect.handnet.net import HandNet
from convdissect.train import train

CHECKOUT = Path(__file__).resolve().parents[1]  # where the tests run train.py, dissect.py and scripts/ from


def run_python(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python ARGS...` from the checkout (train.py, dissect.py, scripts/...), its output captured."""
    return subprocess.run([sys.executable, *args], cwd=CHECKOUT, capture_output=True, text=True, timeout=timeout)


def compose_cfg(config_name: str = "train", overrides: list[str] = (), output_dir: Path | None = None) -> DictConfig:
    """A config as the Hydra app would see it, with paths.output_dir pointed at output_dir."""
    GlobalHydra.instance().clear()  # a test may have left Hydra initialised
    return compose_for(config_name, overrides, output_dir or "unused")


# A real but tiny run: small widths, a few batches, no progress bar, one thread (tiny batches run
# fastest on one; on a busy machine torch's default two can be 4x slower).
TINY = [
    "model.widths=[4,8,8,8]",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=8",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.enable_progress_bar=false",
    "~callbacks.progress_bar",
    "data.eval_batch_size=200",
    "threads=1",
]
TINY_TWO_EPOCHS = TINY + ["trainer.max_epochs=2", "+callbacks.model_checkpoint.save_top_k=-1"]

# A short pruning run of the tiny net: the full net until epoch 1, pruned at the start of epochs 1
# and 2, one final epoch; every epoch's checkpoint kept. Both kinds of criterion are mixed, so fc4's
# weight_noise falls back to activation_variance.
PRUNE_TARGET = [2, 4, 4, 4]
PRUNE = TINY + [
    "callbacks=pruning",  # group choices apply before TINY's deletion of the progress bar
    "trainer.max_epochs=3",
    f"callbacks.pruning.target_widths=[{','.join(map(str, PRUNE_TARGET))}]",
    "callbacks.pruning.iterations=2",
    "callbacks.pruning.pretrain_epochs=1",
    "callbacks.pruning.calibration_size=200",
    "callbacks.pruning.eval_size=400",
    "+callbacks.model_checkpoint.save_top_k=-1",
    "callbacks.pruning.criterion={activation_variance:1,weight_noise:1}",
    "trainer.log_every_n_steps=1",  # the learning rate at every step
]

# Few null draws, ablation images and fidelity images: the claims' machinery runs, in seconds.
FAST_NULLS = [
    "fidelity.images=200",
    "claims.untrained_seeds=2",
    "claims.bootstrap=200",
    "claims.shuffles=20",
    "claims.ablation_images=500",
    "claims.reference_grids=50",
]
# t-SNE points of a test report (a dissection's default is 500; t-SNE is quadratic in them)
PROJECTION_POINTS = 60
# A whole dissection with its report, in seconds.
REPORT_FAST = [
    "n_images=300",
    "superstimulus.steps=8",
    f"report.projection_points={PROJECTION_POINTS}",
    "report.dissection_rows=4",
    *FAST_NULLS,
]

# A zoo net's short run (tests/test_any_net.py): 80 steps of tiny training: 40 before one pruning step, 40 retraining after it.
ZOO_QUICK = [o for o in TINY if not o.startswith("model.")] + [
    "callbacks=pruning",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=40",
    "callbacks.pruning.iterations=1",
    "callbacks.pruning.pretrain_epochs=1",
    "callbacks.pruning.calibration_size=200",
    "callbacks.pruning.eval_size=400",
]


class Page(HTMLParser):
    """The page's section ids, <img> sources and figure captions."""

    def __init__(self, text: str):
        super().__init__()
        self.sections, self.images, self.captions, self._in_caption = [], [], 0, False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs["id"])
        elif tag == "img":
            self.images.append(attrs["src"])
        elif tag == "figcaption":
            self.captions += 1


# The HandNet fine-tuned in a short real run: a small family, one epoch of 3 steps (its best
# checkpoint is the last), its explanation's round trip checked on 300 test images (not all 10k).
HANDNET_FINETUNE = [
    "+experiment=handnet_finetune",
    "model.n_orientations=4",
    "model.edges=false",
    "model.extra_detectors=2",
    "trainer.enable_progress_bar=false",
    "~callbacks.progress_bar",
    "data.eval_batch_size=200",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "callbacks.explanation.roundtrip_images=300",
    "threads=1",
]

# The explainable HandNet in a short real run: K=1 burst per unit, at most EXPLAINABLE_TERMS readout terms.
EXPLAINABLE_TERMS = 3
HANDNET_QUIET = [
    "trainer.limit_test_batches=2",
    "trainer.enable_progress_bar=false",
    "~callbacks.progress_bar",
    "data.eval_batch_size=200",
    "threads=1",
]
EXPLAINABLE_RUN = [
    "+experiment=handnet_explainable",
    "model.n_orientations=4",
    "model.edges=false",
    "model.extra_detectors=5",
    "model.n_bursts=1",
    f"model.terms={EXPLAINABLE_TERMS}",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=60",
    "trainer.limit_val_batches=1",
    "callbacks.explanation.roundtrip_images=300",
    "callbacks.handnet_schedule.shrink_every=5",
    *HANDNET_QUIET,
]


def short_run(out, overrides: list[str]):
    """A real short run into out: its output dir, metrics and the saved state_dict."""
    cfg = compose_cfg("train", overrides, out)
    metrics = train(cfg)
    (out / ".hydra").mkdir()
    OmegaConf.save(cfg, out / ".hydra" / "config.yaml")
    return out, metrics, torch.load(out / "model_state.pt", weights_only=True)


def check_round_trip(run, data_dir, tmp_path) -> None:
    """The learned recipe file rebuilds the trained net (its spec loaded with its state_dict) exactly,
    and train.py on that file tests to the same accuracy without a step."""
    out, metrics, state = run
    assert metrics["explanation/roundtrip_agreement"] == 1.0 and metrics["explanation/checked_images"] == 300
    spec = OmegaConf.to_container(OmegaConf.load(out / ".hydra" / "config.yaml").model, resolve=True)
    trained = HandNet(**{k: v for k, v in spec.items() if k != "_target_"})
    trained.load_state_dict(state)  # a smaller state_dict (units removed) loads into the net of its spec
    rebuilt = HandNet(recipes=str(out / "learned_recipes.yaml"))
    x, _ = MNISTDataModule(data_dir=data_dir).tensors("val", 400)
    with torch.no_grad():
        assert torch.equal(trained(x), rebuilt(x))
    again = train(
        compose_cfg(
            "train",
            ["+experiment=handnet_handcrafted", f"model.recipes={out / 'learned_recipes.yaml'}", *HANDNET_QUIET],
            tmp_path,
        )
    )
    assert again["steps"] == 0 and again["test/acc"] == metrics["test/acc"]


def conductance_drivers(net, images: torch.Tensor, n_steps: int = 32) -> torch.Tensor:
    """[C2, C1] Captum's LayerConductance of conv1's pooled output for each conv2 channel's pooled,
    ReLU'd output summed over cells: integrated gradients from the blank image, summed over the
    images and cells. An outside reference for dissect's signed contributions (issue 23)."""
    from captum.attr import LayerConductance  # dev-only: the package does not depend on captum

    first = torch.nn.Sequential(net.conv1, torch.nn.ReLU(), torch.nn.MaxPool2d(2))
    rows = []
    for k in range(net.conv2.out_channels):

        def unit(x, k=k):
            return torch.nn.functional.max_pool2d(torch.relu(net.conv2(first(x))), 2)[:, k].sum(dim=(1, 2))

        conductance = LayerConductance(unit, first).attribute(images, baselines=blank_image(images), n_steps=n_steps)
        rows.append(conductance.sum(dim=(0, 2, 3)).detach())
    return torch.stack(rows)


def train_zoo_run(out, model, widths: list[int] | None = None):
    """A short real run (ZOO_QUICK) of `model` (a model config's name, or a model node: a class by its
    dotted path) pruned to `widths` (None: not pruned), its config saved as the Hydra app saves it: (out, metrics)."""
    if widths is None:
        overrides = [o for o in ZOO_QUICK if "pruning" not in o]
    else:
        overrides = ZOO_QUICK + [f"callbacks.pruning.target_widths=[{','.join(map(str, widths))}]"]
    if isinstance(model, str):
        overrides.append(f"model={model}")
    cfg = compose_cfg("train", overrides, out)
    if isinstance(model, dict):  # a class by its dotted path, in place of the model config
        with open_dict(cfg):
            cfg.model = OmegaConf.create(model)
    metrics = train(cfg)
    (out / ".hydra").mkdir()
    OmegaConf.save(cfg, out / ".hydra" / "config.yaml")
    return out, metrics


def dissect_zoo_run(run_dir, out_dir, net=None, report: bool = True) -> dict:
    """dissect.py's path on a run's model_state.pt (its config composed, the dissect function run), or
    on `net` (the run's net, changed) in its place."""
    overrides = [f"ckpt_path={run_dir / 'model_state.pt'}", *REPORT_FAST, "threads=1"]
    return dissect(compose_cfg("dissect", overrides + ["report.enabled=false"] * (not report), out_dir), net)


def hand_conv_fidelity(layer, fit: tuple, scored: tuple, k: int, kept: torch.Tensor, activation=torch.relu) -> float:
    """Unit k rebuilt cell by cell from the weights `kept` [Cin, kh, kw] keeps, each other weight reading
    its input's mean map over the fit images (at the conv's dilated offsets); Pearson r on the scored images
    of its output through `activation` with the real one's, after removing each cell's mean over the images."""
    inputs, outputs = scored
    mean = fit[0].mean(dim=0, keepdim=True).expand(len(inputs), -1, -1, -1)
    simulated = torch.full_like(outputs[:, k], float(layer.bias[k]))
    for j, a, b in itertools.product(*(range(n) for n in kept.shape)):
        x = inputs[:, j : j + 1] if kept[j, a, b] else mean[:, j : j + 1]
        w = torch.zeros_like(layer.weight[k : k + 1, :1])
        w[0, 0, a, b] = layer.weight[k, j, a, b]
        simulated += F.conv2d(x, w, stride=layer.stride, padding=layer.padding, dilation=layer.dilation)[:, 0]
    return centred_pearson(activation(simulated), activation(outputs[:, k]))


def centred_pearson(s: torch.Tensor, r: torch.Tensor) -> float:
    s, r = s - s.mean(dim=0), r - r.mean(dim=0)
    return float((s * r).sum() / (s.square().sum() * r.square().sum()).sqrt())
