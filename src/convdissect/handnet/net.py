"""HandNet: a ConvNet of parametric lines and bursts, hand-built from readable recipes
(conf/handnet/recipes.yaml) or rebuilt exactly from a trained run's learned_recipes.yaml.

conv1 (LineConv2d: line/edge detectors) -> relu -> maxpool(cell_pixels=4) -> conv3 (BurstConv2d: K
bursts per unit, each reading one conv1 channel, on the 7x7 map, 5x5 grids of 4-pixel cells, no
padding) -> relu -> 3x3 max-pooled to final_pool x final_pool regions (1: one maximum) -> readout (one
Linear from the units x regions to the 10 digits, at most T terms per digit) -> log_softmax.
With cell_pixels=2, conv3 reads the 14x14 map with 10x10 grids of 2-pixel cells: the same 20 pixels,
finer burst positions, a 5x5 map.
Its explanation from its parameters is convdissect.handnet.explanation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from convdissect.conventions import ORIENTATION_NAMES
from convdissect.data.mnist import MNIST_MEAN, MNIST_STD
from convdissect.data.probes import IMAGE_SIZE, stroke_images
from convdissect.errors import UserInputError
from convdissect.handnet.layers import BurstConv2d, LineConv2d
from convdissect.handnet.recipes import RECIPE_CELL_PIXELS, Part, Recipes, check_pooling, load_recipes

INIT_MODES = ("hand", "random")
# learned: each burst learns which conv1 channel it reads (see handnet/schedule.py); all: each
# unit has n_bursts bursts on every conv1 channel, fixed (the dense HandNet).
BURST_CHANNELS = ("learned", "all")
# Random initialisation: burst amplitudes ~ N(0, this) (hand-built units use the recipe's amplitude).
RANDOM_BURST_STD = 0.3
# conv3's grid spans this many pixels whatever its cell size (5 cells of 4 pixels, 10 of 2): a
# finer cell_pixels changes only where bursts can sit, not how far a unit sees.
GRID_PIXELS = 20
# A fixed channel choice as logits: softmax at temperature 1 already puts ~all weight on it.
FIXED_LOGIT = 8.0


class SparseLinear(nn.Linear):
    """A Linear whose weights exist where `mask` is 1 (a buffer): the readout, at most `terms`
    weights per digit once the training schedule pruned it."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features)
        self.register_buffer("mask", torch.ones(out_features, in_features))

    def sparse_weight(self) -> torch.Tensor:
        """The weights that exist (pruned ones are 0)."""
        return self.weight * self.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.sparse_weight(), self.bias)


class HandNet(nn.Module):
    """Parametric lines -> bursts -> sparse linear readout, built from a recipe file.

    Hand recipes: n_orientations line kernels at k * 180° / n (and, with edges, two edge kernels
    per orientation, one for each side); one conv3 unit per distinct recipe part plus
    extra_detectors more (randomly initialised, unused by the hand-built readout); n_bursts
    bursts per conv3 unit (burst_channels=all: per unit and conv1 channel). init: hand (from the
    recipes) or random. line_sigma / burst_sigma override the recipe file's initial widths (like
    its positions, burst widths are in 4-pixel cells, scaled to the net's cells).
    cell_pixels: conv1's max-pool, the pixels per cell of conv3's grid: 4 (7x7 map, 5x5 grids) or 2
    (14x14 map, 10x10 grids: the same 20 pixels, finer burst positions); burst positions and widths
    are in these cells. final_pool: conv3's map is max-pooled to final_pool x final_pool regions
    (1: one maximum per unit; 2 or 3: conventions.REGION_NAMES, overlapping where the map does not
    divide evenly); the readout reads units x regions features, feature unit * regions + region.
    terms: at most this many readout weights per digit after training (null: all); a term is one
    (unit, region) weight. l1_readout, l1_bursts and group_readout weigh the sparsity penalties
    (see penalty()).
    Learned recipes (a run's learned_recipes.yaml) define every number themselves; the structure
    keys are then ignored.
    """

    def __init__(
        self,
        recipes: str = "conf/handnet/recipes.yaml",
        n_orientations: int = 4,
        edges: bool = False,
        extra_detectors: int = 0,
        n_bursts: int = 1,
        burst_channels: str = "learned",
        terms: int | None = None,
        init: str = "hand",
        line_sigma: float | None = None,
        burst_sigma: float | None = None,
        cell_pixels: int = 4,
        final_pool: int = 1,
        l1_readout: float = 0.0,
        l1_bursts: float = 0.0,
        group_readout: float = 0.0,
    ):
        super().__init__()
        _check_structure(init, burst_channels, n_orientations, extra_detectors, n_bursts)
        check_pooling(cell_pixels, final_pool)
        self.recipes = load_recipes(recipes)
        self.l1_readout, self.l1_bursts, self.group_readout = l1_readout, l1_bursts, group_readout
        self.learn_channels = burst_channels == "learned" and not self.recipes.learned
        if self.recipes.learned:
            self._build_from_learned(self.recipes)
            return

        kinds, self.conv1_angles, signs = _conv1_kinds(n_orientations, edges)
        detectors = self.recipes.detectors
        n_units = len(detectors) + extra_detectors
        self._check_terms(terms, n_units, final_pool**2)
        per_unit = n_bursts * len(kinds) if burst_channels == "all" else n_bursts
        self._make_layers(kinds, n_units, per_unit, burst_channels == "learned", cell_pixels, final_pool)
        self.terms = terms
        self._initialise(init, line_sigma, burst_sigma, burst_channels == "all", n_bursts, detectors, signs)

    @staticmethod
    def _check_terms(terms, n_units: int, regions: int) -> None:
        n = n_units * regions
        if terms is not None and (not isinstance(terms, int) or isinstance(terms, bool) or not 1 <= terms <= n):
            per_region = f" x {regions} regions" if regions > 1 else ""
            raise UserInputError(
                f"model.terms={terms!r}: must be null (all) or an integer from 1 to the "
                f"{n_units} conv3 units{per_region}"
            )

    @property
    def regions(self) -> int:
        """Readout features per conv3 unit: its maximum in each final-pool region."""
        return self.final_pool**2

    @property
    def recipe_cell(self) -> float:
        """One cell of the recipe file (RECIPE_CELL_PIXELS pixels) in the net's grid cells."""
        return RECIPE_CELL_PIXELS / self.cell_pixels

    def _make_layers(
        self, kinds: list[str], n_units: int, n_bursts: int, learn_channels: bool, cell_pixels: int, final_pool: int
    ) -> None:
        self.cell_pixels, self.final_pool = cell_pixels, final_pool
        self.conv1 = LineConv2d(len(kinds), kinds=kinds)
        self.conv3 = BurstConv2d(
            len(kinds), n_units, n_bursts, size=GRID_PIXELS // cell_pixels, learn_channels=learn_channels
        )
        self.readout = SparseLinear(n_units * self.regions, 10)
        self.widths = [len(kinds), n_units]
        # A smaller state_dict (units no digit reads were removed) loads into a net of its size.
        self.register_load_state_dict_pre_hook(HandNet._fit_state_dict_size)

    def _fit_state_dict_size(self, state_dict, prefix, *args) -> None:
        bias = state_dict.get(prefix + "conv3.bias")
        bursts = state_dict.get(prefix + "conv3.mean_x")
        if bias is None or bursts is None or (len(bias), bursts.shape[1]) == (self.widths[1], self.conv3.n_bursts):
            return
        learn = self.conv3.channel_logits is not None
        self.conv3 = BurstConv2d(
            self.widths[0], len(bias), bursts.shape[1], size=self.conv3.size, learn_channels=learn
        ).to(self.readout.weight.device)
        self.readout = SparseLinear(len(bias) * self.regions, 10).to(self.readout.weight.device)
        self.widths = [self.widths[0], len(bias)]

    def _initialise(
        self,
        init: str,
        line_sigma: float | None,
        burst_sigma: float | None,
        all_channels: bool,
        n_bursts: int,
        detectors: list[Part],
        signs: list[float],
    ) -> None:
        """Widths (the recipe file's unless given), random bursts, with burst_channels=all each unit's
        n_bursts on each channel in turn; then conv1's angles at random or the recipe units by hand."""
        c1, c3 = self.recipes.conv1, self.recipes.conv3
        line_sigma = c1["sigma"] if line_sigma is None else line_sigma
        burst_sigma = (c3["sigma"] if burst_sigma is None else burst_sigma) * self.recipe_cell
        n_kinds, n_units = self.widths
        with torch.no_grad():
            self.conv1.sigma.fill_(line_sigma)
            self.conv3.reset_random(burst_sigma, RANDOM_BURST_STD)
            if all_channels:
                self.conv3.fix_channels(torch.arange(n_kinds).repeat_interleave(n_bursts).expand(n_units, -1))
            if init == "random":
                self.conv1.theta.uniform_(0.0, math.pi)
            else:
                self._build_by_hand(detectors, signs)

    def _build_from_learned(self, r: Recipes) -> None:
        """Every number from a learned recipe file: the net that file explains, exactly."""
        n_units, n_bursts = len(r.units), len(r.units[0]["bursts"])
        kinds = [line["kind"] for line in r.lines]
        self._make_layers(kinds, n_units, n_bursts, False, r.cell_pixels, r.final_pool)  # learned: channels fixed
        self.terms = max(len(entry["terms"]) for entry in r.readout.values())
        with torch.no_grad():
            for key in ("theta", "sigma", "offset", "amplitude", "bias"):
                getattr(self.conv1, key).copy_(torch.tensor([line[key] for line in r.lines]))
            for name, key in (
                ("mean_x", "x"),
                ("mean_y", "y"),
                ("sigma_x", "sigma_x"),
                ("sigma_y", "sigma_y"),
                ("amplitude", "amplitude"),
            ):
                getattr(self.conv3, name).copy_(torch.tensor([[b[key] for b in u["bursts"]] for u in r.units]))
            self.conv3.bias.copy_(torch.tensor([u["bias"] for u in r.units]))
            self.conv3.fix_channels(torch.tensor([[b["channel"] for b in u["bursts"]] for u in r.units]))
            self.readout.weight.zero_()
            self.readout.mask.zero_()
            for digit, entry in r.readout.items():
                self.readout.bias[digit] = entry["bias"]
                for unit, region, weight in entry["terms"]:
                    self.readout.weight[digit, unit * self.regions + region] = weight
                    self.readout.mask[digit, unit * self.regions + region] = 1.0

    def _build_by_hand(self, detectors: list[Part], signs: list[float]) -> None:
        """Set conv1, the recipe units of conv3 and the readout from the recipe file.

        Thresholds are not guessed numbers: each detector's bias is a share (`threshold`) of what
        a synthetic stroke (recipes `stroke`) of its own pattern at its own place produces, so
        every detector reads "share of a full stroke there" on the same scale.
        """
        r = self.recipes
        self.conv1.theta.copy_(torch.deg2rad(torch.tensor(self.conv1_angles)))
        self.conv1.amplitude.copy_(torch.tensor(signs) * r.conv1["amplitude"])
        # A long stroke through the kernel's centre along its own orientation (both edge signs
        # see one of its boundaries at some offset, so the image's max response is used).
        strokes = stroke_images(self.conv1_angles, thickness=r.stroke["thickness"], raw=True) / MNIST_STD
        full = F.conv2d(
            strokes.transpose(0, 1), self.conv1.kernels()[:, None], padding=self.conv1.size // 2, groups=len(strokes)
        )
        self.conv1.bias.copy_(-r.conv1["threshold"] * full[0].amax(dim=(-2, -1)))
        n = len(detectors)
        # Recipe units read only their part's channel, with one burst; every other burst starts
        # silent (zero amplitude, random place) so fine-tuning can grow it where the data needs it.
        c3 = self.conv3
        c3.amplitude[:n] = 0.0
        c3.bias[:n] = 0.0
        for unit, part in enumerate(detectors):
            channel = self.conv1_angles.index(_pattern_angle(part.pattern))
            # learned channels: the first burst, set to that channel; all: the first on that channel
            if c3.channel_logits is None:
                burst = int((c3.channel[unit] == channel).nonzero()[0])
            else:
                burst = 0
                c3.channel_logits[unit, burst] = FIXED_LOGIT * F.one_hot(torch.tensor(channel), c3.in_channels)
            x, y = (self.recipe_cell * v for v in r.xy(part.position))
            c3.mean_x[unit, burst], c3.mean_y[unit, burst], c3.amplitude[unit, burst] = x, y, 1.0
        if c3.channel_logits is not None:
            c3.set_channel_mode("frozen")  # as built; training's schedule (handnet/schedule.py) frees it
        # Scale each unit so that its full stroke gives 1 above the threshold, 0 at it.
        probes = torch.cat([self._part_stroke(part) for part in detectors])
        full = self.pooled(probes).amax(-1).diagonal()[:, None]
        t = r.conv3["threshold"]
        c3.amplitude[:n] /= (1.0 - t) * full
        c3.bias[:n] = -t / (1.0 - t)
        # A digit's score: the share of its recipe that holds, each part counting alike: a
        # positive part holds as far as its unit reads, a negative one as far as its unit is
        # silent (1 - reading; the 1s make the bias). Recipes of any length compare fairly. The
        # recipes describe a centred digit, so a part reads its unit in the regions that hold the
        # grid centred on the image (their mean): read in the other regions too, where a centred
        # digit's part never falls, the unit would read near 0 and every negative part would hold.
        centred = self._centred_regions()
        self.readout.weight.zero_()
        for digit, parts in r.digits.items():
            for part, sign in parts:
                unit = detectors.index(part) * self.regions
                share = sign * r.gain / len(parts) / len(centred)
                self.readout.weight[digit, unit + centred] = share
            self.readout.bias[digit] = r.gain * sum(sign < 0 for _, sign in parts) / len(parts)

    def _centred_regions(self) -> torch.Tensor:
        """The final-pool regions that hold the middle of conv3's map (3x3, or 5x5 with cell_pixels=2),
        where the grid sits on the image centre: all of them with final_pool 1 or 2, the centre with 3."""
        side = IMAGE_SIZE // self.cell_pixels - self.conv3.size + 1
        middle = torch.zeros(1, 1, side, side)
        middle[..., side // 2, side // 2] = 1.0
        return F.adaptive_max_pool2d(middle, self.final_pool).flatten().nonzero().flatten()

    def _part_stroke(self, part: Part) -> torch.Tensor:
        """The synthetic stroke a part stands for: its pattern, at its place."""
        x, y = self.recipes.xy(part.position)
        s = self.recipes.stroke
        return stroke_images(
            _pattern_angle(part.pattern),
            thickness=s["thickness"],
            center=(RECIPE_CELL_PIXELS * x, RECIPE_CELL_PIXELS * y),
            length=s["length"],
        )

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Each conv3 unit's maximum in each final-pool region [N, C3, regions] (row by row from the top left)."""
        # Raw intensity (background 0): zero padding then equals the background. The kernels
        # have zero mean, so the shift changes only the border.
        x = x + MNIST_MEAN / MNIST_STD
        x = F.max_pool2d(F.relu(self.conv1(x)), self.cell_pixels)  # 28 -> 7 (14)
        return F.adaptive_max_pool2d(F.relu(self.conv3(x)), self.final_pool).flatten(2)  # 3x3 (5x5) -> regions

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What the readout reads [N, C3 * regions]: feature unit * regions + region."""
        return self.pooled(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.readout(self.features(x)), dim=1)

    def penalty(self) -> torch.Tensor:
        """Sparsity: L1 for short digit recipes and few strong bursts per conv3 unit; group lasso
        (the L2 norm of each unit's readout columns, all regions) for few units read at all."""
        weight = self.readout.sparse_weight()
        return (
            self.l1_readout * weight.abs().sum()
            + self.group_readout * weight.view(10, -1, self.regions).norm(dim=(0, 2)).sum()
            + self.l1_bursts * self.conv3.amplitude.abs().sum()
        )

    @torch.no_grad()
    def read_units(self) -> torch.Tensor:
        """Which conv3 units some digit reads, in any region [C3] (bool)."""
        return self.readout.sparse_weight().view(10, -1, self.regions).ne(0).any(2).any(0)

    @torch.no_grad()
    def remove_unread_units(self) -> int:
        """Remove the conv3 units that no digit reads in any region (pruned or zero weights, e.g. a
        unit that never fired and so never got a gradient); returns how many were removed."""
        read = self.read_units().nonzero().flatten()
        removed = self.widths[1] - len(read)
        if removed:
            self.conv3.keep(read)
            columns = (read[:, None] * self.regions + torch.arange(self.regions, device=read.device)).flatten()
            weight, bias = self.readout.weight[:, columns], self.readout.bias.clone()
            mask = self.readout.mask[:, columns]
            self.readout = SparseLinear(len(columns), 10).to(weight.device)
            self.readout.weight.copy_(weight)
            self.readout.bias.copy_(bias)
            self.readout.mask.copy_(mask)
            self.widths = [self.widths[0], len(read)]
        return removed


def _pattern_angle(pattern: str) -> float:
    return float(next(angle for angle, name in ORIENTATION_NAMES.items() if name == pattern))


def _check_structure(init: str, burst_channels: str, n_orientations: int, extra_detectors, n_bursts) -> None:
    """The structure keys of a hand-built HandNet, each against what is allowed."""
    if init not in INIT_MODES:
        raise UserInputError(f"model.init={init!r}: allowed {list(INIT_MODES)}")
    if burst_channels not in BURST_CHANNELS:
        raise UserInputError(f"model.burst_channels={burst_channels!r}: allowed {list(BURST_CHANNELS)}")
    if n_orientations not in (4, 8):
        raise UserInputError(f"model.n_orientations={n_orientations}: allowed 4, 8")
    for key, value, low in (("extra_detectors", extra_detectors, 0), ("n_bursts", n_bursts, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise UserInputError(f"model.{key}={value!r}: must be an integer >= {low}")


def _conv1_kinds(n_orientations: int, edges: bool) -> tuple[list[str], list[float], list[float]]:
    """conv1's kernels: a line at each of n_orientations angles k * 180° / n and, with edges, an edge
    on each side of each: (kinds, angles in degrees, signs)."""
    angles = [k * 180.0 / n_orientations for k in range(n_orientations)]
    kinds, conv1_angles, signs = ["line"] * len(angles), list(angles), [1.0] * len(angles)
    if edges:  # both sides of each orientation
        for sign in (1.0, -1.0):
            kinds += ["edge"] * len(angles)
            conv1_angles += angles
            signs += [sign] * len(angles)
    return kinds, conv1_angles, signs
