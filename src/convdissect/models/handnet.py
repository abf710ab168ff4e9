"""HandNet (docs/measures.md, "The nets"): a ConvNet of parametric lines and bursts, hand-built from readable
recipes (conf/handnet/recipes.yaml), and explained from its parameters alone.

conv1 (LineConv2d: line/edge detectors) -> relu -> maxpool(4) -> conv3 (BurstConv2d: "pattern at
position" detectors on the 7x7 map, 5x5 grids, no padding) -> relu -> maxpool(3) -> readout
(one Linear from the conv3 units to the 10 digits) -> log_softmax.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from convdissect.config import REPO_ROOT
from convdissect.conventions import (
    CENTRE,
    ORIENTATION_NAMES,
    clock_from_xy,
    edge_side,
    format_distance,
    orientation_bin,
    parse_clock,
    stroke_label,
    unit_name,
    xy_from_clock,
)
from convdissect.data.mnist import MNIST_MEAN, MNIST_STD
from convdissect.data.probes import stroke_images
from convdissect.dissect.selectivity import position_pattern
from convdissect.errors import UserInputError
from convdissect.models.parametric import canonical_line
from convdissect.models.parametric_layers import MIN_SIGMA, BurstConv2d, LineConv2d

INIT_MODES = ("hand", "random")
# Burst amplitudes and readout weights below this share of their unit's (digit's) largest are
# left out of the explanation: the net is kept sparse, so the rest is small.
EXPLAIN_REL_THRESHOLD = 0.25
MAX_TERMS = 8
# Named positions (and angles) within this distance (degrees) are called by their name.
NAME_TOLERANCE_CELLS = 0.5
NAME_TOLERANCE_DEG = 5.0
# Random initialisation: burst amplitudes ~ N(0, this) (hand-built units use the recipe's amplitude).
RANDOM_BURST_STD = 0.3
# conv1's max pooling: one cell of conv3's grid spans this many pixels.
CELL_PIXELS = 4


# ---------------------------------------------------------------------------- recipes


@dataclass(frozen=True)
class Part:
    """One part of a digit recipe: a pattern (conv1 orientation name) at a position."""

    position: str
    pattern: str

    @property
    def label(self) -> str:
        return f"{self.position}({self.pattern})"


@dataclass
class Recipes:
    positions: dict[str, tuple[float, float]]  # name -> (x, y) in grid cells, y up
    clock_distance: float
    conv1: dict
    conv3: dict
    stroke: dict  # the synthetic stroke the thresholds are shares of: thickness, length (pixels)
    gain: float
    digits: dict[int, list[tuple[Part, float]]]  # digit -> [(part, +1 or -1)]

    @property
    def detectors(self) -> list[Part]:
        """Every distinct part, in order of first appearance: the hand-built conv3 units."""
        return list(dict.fromkeys(part for parts in self.digits.values() for part, _ in parts))

    def xy(self, position: str) -> tuple[float, float]:
        if position in self.positions:
            return self.positions[position]
        return xy_from_clock(position, self.clock_distance)


def _position_xy(name: str, spec) -> tuple[float, float]:
    if not isinstance(spec, dict) or "clock" not in spec:
        raise UserInputError(f"recipes position {name!r}: expected {{clock: \"12:00\", distance: 2}}, got {spec!r}")
    try:
        return xy_from_clock(spec["clock"], float(spec.get("distance", 0.0)))
    except UserInputError as err:
        raise UserInputError(f"recipes position {name!r}: {err}") from None


def _parse_part(digit: int, item, recipes: Recipes) -> tuple[Part, float]:
    """'top/horizontal', '"10:30"/vertical', '-centre/vertical' -> (Part, sign)."""
    where = f"recipe of digit {digit}, part {item!r}"
    if not isinstance(item, str):
        try:
            parse_clock(item)  # explains a clock YAML turned into a number (unquoted 10:30)
        except UserInputError as err:
            raise UserInputError(f"{where}: {err}; write parts as \"position/pattern\"") from None
        raise UserInputError(f"{where}: expected a string \"position/pattern\" such as \"top/horizontal\"")
    text = item.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    position, slash, pattern = text.lstrip("-").strip().partition("/")
    position, pattern = position.strip(), pattern.strip()
    if not slash:
        raise UserInputError(f"{where}: expected \"position/pattern\" such as \"top/horizontal\"")
    if pattern not in ORIENTATION_NAMES.values():
        raise UserInputError(f"{where}: unknown pattern {pattern!r}; allowed {list(ORIENTATION_NAMES.values())}")
    if position == "center":
        position = CENTRE
    if position not in recipes.positions and position != CENTRE:
        try:
            parse_clock(position)
        except UserInputError:
            allowed = sorted(recipes.positions) + [CENTRE]
            raise UserInputError(
                f"{where}: unknown position {position!r}; allowed {allowed} or a quoted clock position such as \"10:30\""
            ) from None
    return Part(position, pattern), sign


def load_recipes(path: str | Path) -> Recipes:
    """Read and check a recipe file (see conf/handnet/recipes.yaml); bad entries raise UserInputError."""
    path = Path(path)
    if not path.is_absolute():
        path = REPO_ROOT / path
    if not path.is_file():
        raise UserInputError(f"model.recipes={str(path)!r}: no such file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserInputError(f"recipes file {path}: not valid YAML ({' '.join(str(err).split())})") from None
    if not isinstance(raw, dict):
        raise UserInputError(f"recipes file {path}: expected a mapping of settings and digits, got {type(raw).__name__}")
    try:
        recipes = Recipes(
            positions={name: _position_xy(name, spec) for name, spec in (raw.get("positions") or {}).items()},
            clock_distance=float(raw.get("clock_distance", 1.5)),
            conv1=dict(raw["conv1"]),
            conv3=dict(raw["conv3"]),
            stroke=dict(raw["stroke"]),
            gain=float(raw["readout"]["gain"]),
            digits={},
        )
        digits = raw["digits"]
    except (KeyError, TypeError) as err:
        raise UserInputError(f"recipes file {path}: missing or malformed entry {err}; see conf/handnet/recipes.yaml") from None
    if not isinstance(digits, dict) or sorted(digits) != list(range(10)):
        got = sorted(digits) if isinstance(digits, dict) else digits
        raise UserInputError(f"recipes file {path}: digits must have one recipe for each of 0..9, got {got}")
    for digit, parts in digits.items():
        if not isinstance(parts, list) or not parts:
            raise UserInputError(f"recipe of digit {digit}: expected a non-empty list of parts, got {parts!r}")
        recipes.digits[digit] = [_parse_part(digit, item, recipes) for item in parts]
        if all(sign < 0 for _, sign in recipes.digits[digit]):
            raise UserInputError(f"recipe of digit {digit}: needs at least one positive part")
    return recipes


# ---------------------------------------------------------------------------- the net


class HandNet(nn.Module):
    """Parametric lines -> bursts -> linear readout, built from a recipe file.

    n_orientations line kernels at k * 180° / n (and, with edges, two edge kernels per
    orientation, one for each side); one conv3 unit per distinct recipe part plus
    extra_detectors more (randomly initialised, unused by the hand-built readout); n_bursts
    bursts per (conv3 unit, conv1 channel) grid. init: hand (from the recipes) or random.
    line_sigma / burst_sigma override the recipe file's initial widths (null: the file's).
    """

    def __init__(
        self,
        recipes: str = "conf/handnet/recipes.yaml",
        n_orientations: int = 4,
        edges: bool = False,
        extra_detectors: int = 0,
        n_bursts: int = 1,
        init: str = "hand",
        line_sigma: float | None = None,
        burst_sigma: float | None = None,
        l1_readout: float = 0.0,
        l1_bursts: float = 0.0,
    ):
        super().__init__()
        if init not in INIT_MODES:
            raise UserInputError(f"model.init={init!r}: allowed {list(INIT_MODES)}")
        if n_orientations not in (4, 8):
            raise UserInputError(f"model.n_orientations={n_orientations}: allowed 4, 8")
        for key, value in (("extra_detectors", extra_detectors), ("n_bursts", n_bursts - 1)):
            if not isinstance(value, int) or value < 0:
                raise UserInputError(f"model.{key}={value!r}: must be an integer >= {0 if key == 'extra_detectors' else 1}")
        self.recipes = load_recipes(recipes)
        self.l1_readout, self.l1_bursts = l1_readout, l1_bursts

        angles = [k * 180.0 / n_orientations for k in range(n_orientations)]
        kinds, self.conv1_angles, signs = ["line"] * len(angles), list(angles), [1.0] * len(angles)
        if edges:  # both sides of each orientation
            for sign in (1.0, -1.0):
                kinds += ["edge"] * len(angles)
                self.conv1_angles += angles
                signs += [sign] * len(angles)
        detectors = self.recipes.detectors
        self.conv1 = LineConv2d(len(kinds), kinds=kinds)
        self.conv3 = BurstConv2d(len(kinds), len(detectors) + extra_detectors, n_bursts)
        self.readout = nn.Linear(self.conv3.bias.numel(), 10)
        self.widths = [len(kinds), len(detectors) + extra_detectors]

        c1, c3 = self.recipes.conv1, self.recipes.conv3
        line_sigma = c1["sigma"] if line_sigma is None else line_sigma
        burst_sigma = c3["sigma"] if burst_sigma is None else burst_sigma
        with torch.no_grad():
            self.conv1.sigma.fill_(line_sigma)
            self.conv3.reset_random(burst_sigma, RANDOM_BURST_STD)
            if init == "random":
                self.conv1.theta.uniform_(0.0, math.pi)
            else:
                self._build_by_hand(detectors, signs)

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
        full = F.conv2d(strokes.transpose(0, 1), self.conv1.kernels()[:, None], padding=self.conv1.size // 2, groups=len(strokes))
        self.conv1.bias.copy_(-r.conv1["threshold"] * full[0].amax(dim=(-2, -1)))
        n = len(detectors)
        # Recipe units read only their part's channel; every other burst starts silent (zero
        # amplitude, random place) so fine-tuning can grow it where the data needs it.
        self.conv3.amplitude[:n] = 0.0
        self.conv3.bias[:n] = 0.0
        for unit, part in enumerate(detectors):
            channel = self.conv1_angles.index(_pattern_angle(part.pattern))
            x, y = r.xy(part.position)
            self.conv3.mean_x[unit, channel, 0] = x
            self.conv3.mean_y[unit, channel, 0] = y
            self.conv3.amplitude[unit, channel, 0] = 1.0
        # Scale each unit so that its full stroke gives 1 above the threshold, 0 at it.
        probes = torch.cat([self._part_stroke(part) for part in detectors])
        full = self.features(probes).diagonal()[:, None, None]
        t = r.conv3["threshold"]
        self.conv3.amplitude[:n] /= (1.0 - t) * full
        self.conv3.bias[:n] = -t / (1.0 - t)
        # A digit's score: the share of its recipe that holds, each part counting alike: a
        # positive part holds as far as its unit reads, a negative one as far as its unit is
        # silent (1 - reading; the 1s make the bias). Recipes of any length compare fairly.
        self.readout.weight.zero_()
        for digit, parts in r.digits.items():
            for part, sign in parts:
                self.readout.weight[digit, detectors.index(part)] = sign * r.gain / len(parts)
            self.readout.bias[digit] = r.gain * sum(sign < 0 for _, sign in parts) / len(parts)

    def _part_stroke(self, part: Part) -> torch.Tensor:
        """The synthetic stroke a part stands for: its pattern, at its place."""
        x, y = self.recipes.xy(part.position)
        s = self.recipes.stroke
        return stroke_images(_pattern_angle(part.pattern), thickness=s["thickness"], center=(CELL_PIXELS * x, CELL_PIXELS * y), length=s["length"])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The conv3 units' pooled outputs [N, C3]."""
        # Raw intensity (background 0): zero padding then equals the background. The kernels
        # have zero mean, so the shift changes only the border.
        x = x + MNIST_MEAN / MNIST_STD
        x = F.max_pool2d(F.relu(self.conv1(x)), CELL_PIXELS)  # 28 -> 7
        return F.max_pool2d(F.relu(self.conv3(x)), 3).flatten(1)  # 7 -> 3 -> 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.readout(self.features(x)), dim=1)

    def penalty(self) -> torch.Tensor:
        """L1 sparsity: short digit recipes and few bursts per conv3 unit."""
        return self.l1_readout * self.readout.weight.abs().sum() + self.l1_bursts * self.conv3.amplitude.abs().sum()

    # ------------------------------------------------------------------------ explanations

    @torch.no_grad()
    def explain(self) -> dict:
        """Every unit described from its parameters: the labels.json dict (see the callback).

        Each unit also carries `sentence`, the line of explanation.md.
        """
        conv1 = self._explain_conv1()
        conv3 = self._explain_conv3(conv1)
        readout = self._explain_readout(conv3)
        return {"net": "handnet", "widths": list(self.widths), "units": conv1 + conv3 + readout}

    def _explain_conv1(self) -> list[dict]:
        c = self.conv1
        sigma = c.sigma.abs().clamp_min(MIN_SIGMA)
        thetas, offsets, amplitudes = canonical_line(c.theta, c.offset, c.amplitude, c.is_edge)
        units = []
        for i, kind in enumerate(c.kinds):
            theta = math.degrees(float(thetas[i])) % 180.0  # % guards rounding at exactly 180
            offset, amplitude = float(offsets[i]), float(amplitudes[i])
            label = stroke_label(kind, theta, amplitude)
            units.append({
                "layer": "conv1", "index": i + 1, "name": unit_name("conv1", i + 1), "label": label,
                "sentence": conv1_sentence(kind, theta, float(sigma[i]), offset, amplitude),
                "pattern": pattern_word(kind, theta, amplitude),
                "orientation_deg": round(theta, 2), "kind": kind,
                "side": edge_side(theta, amplitude) if kind == "edge" else None,
                "fit_r2": 1.0,  # the kernel is a member of the family by construction
                "secondary_orientation_deg": None,  # one line or edge: a single-peaked tuning curve
                "sigma": round(float(sigma[i]), 4), "offset": round(offset, 4),
                "amplitude": round(amplitude, 4), "bias": round(float(c.bias[i]), 4),
            })
        return units

    def _explain_conv3(self, conv1: list[dict]) -> list[dict]:
        c = self.conv3
        position_index, pattern_index = self.position_pattern_indices()
        amplitude = c.amplitude  # [out, in, bursts]
        units = []
        for k in range(amplitude.shape[0]):
            strongest = float(amplitude[k].abs().max())
            order = amplitude[k].flatten().abs().argsort(descending=True)[:MAX_TERMS]
            bursts = []
            for flat in order.tolist():
                j, b = divmod(flat, amplitude.shape[2])
                a = float(amplitude[k, j, b])
                if strongest == 0.0 or abs(a) < EXPLAIN_REL_THRESHOLD * strongest:
                    break
                x, y = float(c.mean_x[k, j, b]), float(c.mean_y[k, j, b])
                clock, distance = clock_from_xy(x, y)
                bursts.append({
                    "sign": "+" if a > 0 else "-", "clock": clock, "distance": round(distance, 3),
                    "input": conv1[j]["name"], "input_label": conv1[j]["label"],
                    "x": round(x, 3), "y": round(y, 3), "amplitude": round(a, 4),
                    "position": self._position_word(x, y), "pattern": conv1[j]["pattern"],
                })
            label = f"{bursts[0]['position']}({bursts[0]['pattern']})" if bursts else "silent"
            if bursts and bursts[0]["sign"] == "-":
                label = "not " + label
            units.append({
                "layer": "conv3", "index": k + 1, "name": unit_name("conv3", k + 1), "label": label,
                "sentence": "; ".join(burst_sentence(b) for b in bursts) or "no bursts (silent)",
                "bursts": bursts, "bias": round(float(c.bias[k]), 4),
                "position_index": position_index[k], "pattern_index": pattern_index[k],
            })
        return units

    def _explain_readout(self, conv3: list[dict]) -> list[dict]:
        units = []
        for digit in range(10):
            w = self.readout.weight[digit]
            strongest = float(w.abs().max())
            top = w.abs().argsort(descending=True)[:MAX_TERMS].tolist()
            keep = [k for k in top if strongest > 0 and abs(float(w[k])) >= EXPLAIN_REL_THRESHOLD * strongest]
            keep.sort(key=lambda k: -float(w[k]))
            terms = [{"weight": round(float(w[k]), 4), "unit": conv3[k]["name"], "label": conv3[k]["label"]} for k in keep]
            units.append({
                "layer": "fc", "index": digit + 1, "name": f"digit_{digit}", "label": recipe_sentence(digit, terms),
                "terms": terms, "bias": round(float(self.readout.bias[digit]), 4),
            })
        return units

    def _position_word(self, x: float, y: float) -> str:
        """A recipe position's name (top, middle, ...) where a burst sits on one, else its clock."""
        for name, (px, py) in self.recipes.positions.items():
            if math.hypot(x - px, y - py) <= NAME_TOLERANCE_CELLS:
                return name
        return clock_from_xy(x, y)[0]

    def position_pattern_indices(self) -> tuple[list[float | None], list[float | None]]:
        """Per conv3 unit, omega² of position and of pattern over line probes (docs/measures.md, "Claim 4"), measured
        as for a SimpleConvNet."""
        pp = position_pattern(self, "conv3")
        return tuple([None if math.isnan(v) else round(v, 4) for v in share.tolist()] for share in (pp.position_index, pp.pattern_index))


def _pattern_angle(pattern: str) -> float:
    return float(next(angle for angle, name in ORIENTATION_NAMES.items() if name == pattern))


# ---------------------------------------------------------------------------- sentences

_SHIFT_WORDS = {"upper": "up", "lower": "down"}


def pattern_word(kind: str, theta_deg: float, amplitude: float) -> str:
    """The short pattern name of a stroke detector, as recipes write it: 'horizontal',
    'diagonal /', 'dark vertical', 'left side of vertical', or '20°' off the four orientations."""
    gap = abs(theta_deg - orientation_bin(theta_deg)) % 180.0
    near = min(gap, 180.0 - gap) <= NAME_TOLERANCE_DEG
    base = ORIENTATION_NAMES[orientation_bin(theta_deg)] if near else f"{theta_deg % 180.0:.0f}°"
    if kind == "edge":
        return f"{edge_side(theta_deg, amplitude)} side of {base}"
    return base if amplitude >= 0 else f"dark {base}"


def conv1_sentence(kind: str, theta_deg: float, sigma: float, offset: float, amplitude: float) -> str:
    """'line at 45° (slope 1.00), width 0.3, shifted 0.2 to the lower right'."""
    text = f"{stroke_label(kind, theta_deg, amplitude)}, width {sigma:.2g}"
    if abs(offset) < 0.05:
        return f"{text}, centred"
    # A positive offset moves the line along its normal n = (-sin θ, cos θ); edge_side(θ, -1)
    # names the direction n (an edge's negative lobe lies on the -sign * n side).
    word = edge_side(theta_deg, -1.0 if offset > 0 else 1.0)
    word = _SHIFT_WORDS.get(word, "to the " + word.replace("-", " "))
    return f"{text}, shifted {abs(offset):.2g} {word}"


def burst_sentence(burst: dict) -> str:
    """'+burst at 12 o'clock, distance 2, on conv1_1 (horizontal line)'."""
    if burst["clock"] == CENTRE:
        where = "at the centre"
    else:
        clock = burst["clock"]
        clock = f"{clock.removesuffix(':00')} o'clock" if clock.endswith(":00") else clock
        where = f"at {clock}, distance {format_distance(burst['distance'])}"
    return f"{burst['sign']}burst {where}, on {burst['input']} ({burst['input_label']})"


def recipe_sentence(digit: int, terms: list[dict]) -> str:
    """'5 = 1.3 top(horizontal) + 0.9 middle(horizontal) - 0.4 centre(vertical)'."""
    if not terms:
        return f"{digit} = (nothing)"
    text = f"{digit} = {'-' if terms[0]['weight'] < 0 else ''}{abs(terms[0]['weight']):.2g} {terms[0]['label']}"
    for term in terms[1:]:
        text += f" {'-' if term['weight'] < 0 else '+'} {abs(term['weight']):.2g} {term['label']}"
    return text


# explanation.md's (and the dissection report's) section per labels.json layer
EXPLANATION_TITLES = {
    "conv1": "conv1: line detectors",
    "conv3": "conv3: pattern-at-position detectors (bursts on conv1 channels)",
    "fc": "readout: digit recipes",
}


def explanation_markdown(labels: dict) -> str:
    """explanation.md: one line per unit, grouped by layer."""
    lines = [f"# HandNet explained from its parameters (widths {labels['widths']})"]
    for layer, title in EXPLANATION_TITLES.items():
        lines += ["", f"## {title}", ""]
        for unit in labels["units"]:
            if unit["layer"] == layer:
                text = unit["label"] if layer == "fc" else unit["sentence"]
                lines.append(f"- **{unit['name']}**: {text}")
    return "\n".join(lines) + "\n"
