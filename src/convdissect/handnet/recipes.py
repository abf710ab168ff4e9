"""The HandNet's recipe files: their schema and parser.

Two kinds share one schema (see conf/handnet/recipes.yaml):
- hand recipes: positions, thresholds and, per digit, a list of parts "position/pattern" from
  which HandNet builds its net by hand;
- learned recipes (learned_recipes.yaml, written by a trained run): the same file extended with
  every number of the net, `lines` (conv1), `units` (conv3 bursts and channels) and, per digit,
  `{bias, terms: [{unit, weight}]}`. When present they define the net, whatever the model
  config's structure keys say.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from convdissect.analysis.families import KINDS
from convdissect.config import REPO_ROOT
from convdissect.conventions import (
    CENTRE,
    ORIENTATION_NAMES,
    REGION_NAMES,
    parse_clock,
    parse_unit_name,
    xy_from_clock,
)
from convdissect.errors import UserInputError

LINE_KEYS = ("theta", "sigma", "offset", "amplitude", "bias")  # theta in radians
BURST_KEYS = ("x", "y", "sigma_x", "sigma_y", "amplitude")
# The HandNet's pooling: conv1's max-pool (pixels per conv3 grid cell) and the final pool's regions per side.
CELL_PIXELS_ALLOWED = (2, 4)
FINAL_POOL_ALLOWED = tuple(REGION_NAMES)
# Hand recipe positions and widths are in cells of this many pixels, whatever the net's cell_pixels.
RECIPE_CELL_PIXELS = 4


def check_pooling(cell_pixels, final_pool, prefix: str = "model.") -> None:
    """cell_pixels and final_pool are among the allowed integers (one-line UserInputError otherwise;
    a float such as 4.0 equals an allowed value but is no pooling size)."""
    for key, value, allowed in (
        ("cell_pixels", cell_pixels, CELL_PIXELS_ALLOWED),
        ("final_pool", final_pool, FINAL_POOL_ALLOWED),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value not in allowed:
            raise UserInputError(f"{prefix}{key}={value!r}: allowed {', '.join(map(str, allowed))}")


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
    positions: dict[str, tuple[float, float]]  # name -> (x, y) in cells of RECIPE_CELL_PIXELS pixels, y up
    clock_distance: float
    conv1: dict
    conv3: dict
    stroke: dict  # the synthetic stroke the thresholds are shares of: thickness, length (pixels)
    gain: float
    digits: dict[int, list[tuple[Part, float]]]  # digit -> [(part, +1 or -1)]; hand recipes only
    # Learned recipes only: conv1 lines [{kind, theta, sigma, offset, amplitude, bias}], conv3 units
    # [{bias, bursts: [{channel (0-based), x, y, sigma_x, sigma_y, amplitude}]}] and the readout
    # {digit: {bias, terms: [(unit index, region index, weight)]}}, and the net's pooling.
    lines: list[dict] = field(default_factory=list)
    units: list[dict] = field(default_factory=list)
    readout: dict[int, dict] = field(default_factory=dict)
    cell_pixels: int = 4
    final_pool: int = 1

    @property
    def learned(self) -> bool:
        return bool(self.lines)

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
        raise UserInputError(f'recipes position {name!r}: expected {{clock: "12:00", distance: 2}}, got {spec!r}')
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
            raise UserInputError(f'{where}: {err}; write parts as "position/pattern"') from None
        raise UserInputError(f'{where}: expected a string "position/pattern" such as "top/horizontal"')
    text = item.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    position, slash, pattern = text.lstrip("-").strip().partition("/")
    position, pattern = position.strip(), pattern.strip()
    if not slash:
        raise UserInputError(f'{where}: expected "position/pattern" such as "top/horizontal"')
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
                f'{where}: unknown position {position!r}; allowed {allowed} or a quoted clock position such as "10:30"'
            ) from None
    return Part(position, pattern), sign


def load_recipes(path: str | Path) -> Recipes:
    """Read and check a recipe file, hand or learned; bad entries raise UserInputError."""
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
        raise UserInputError(
            f"recipes file {path}: expected a mapping of settings and digits, got {type(raw).__name__}"
        )
    learned = "lines" in raw
    try:
        recipes = Recipes(
            positions={name: _position_xy(name, spec) for name, spec in (raw.get("positions") or {}).items()},
            clock_distance=float(raw.get("clock_distance", 1.5)),
            conv1=dict(raw.get("conv1") or {}) if learned else dict(raw["conv1"]),
            conv3=dict(raw.get("conv3") or {}) if learned else dict(raw["conv3"]),
            stroke=dict(raw.get("stroke") or {}) if learned else dict(raw["stroke"]),
            gain=float((raw.get("readout") or {}).get("gain", 1.0)) if learned else float(raw["readout"]["gain"]),
            digits={},
        )
        digits = raw["digits"]
    except (KeyError, TypeError, ValueError) as err:
        raise UserInputError(
            f"recipes file {path}: missing or malformed entry {err}; see conf/handnet/recipes.yaml"
        ) from None
    if not isinstance(digits, dict) or sorted(digits) != list(range(10)):
        got = sorted(digits) if isinstance(digits, dict) else digits
        raise UserInputError(f"recipes file {path}: digits must have one recipe for each of 0..9, got {got}")
    if learned:
        _parse_learned(raw, recipes, path)
        return recipes
    for digit, parts in digits.items():
        if not isinstance(parts, list) or not parts:
            raise UserInputError(f"recipe of digit {digit}: expected a non-empty list of parts, got {parts!r}")
        recipes.digits[digit] = [_parse_part(digit, item, recipes) for item in parts]
        if all(sign < 0 for _, sign in recipes.digits[digit]):
            raise UserInputError(f"recipe of digit {digit}: needs at least one positive part")
    return recipes


def _numbers(entry, keys: tuple[str, ...], where: str) -> dict:
    if not isinstance(entry, dict):
        raise UserInputError(f"{where}: expected a mapping with {list(keys)}, got {entry!r}")
    try:
        values = {key: float(entry[key]) for key in keys}
    except KeyError as err:
        raise UserInputError(f"{where}: missing {err}; needs {list(keys)}") from None
    except (TypeError, ValueError):
        raise UserInputError(f"{where}: {list(keys)} must be numbers, got {entry!r}") from None
    if not all(math.isfinite(v) for v in values.values()):
        raise UserInputError(f"{where}: numbers must be finite, got {values}")
    for key, value in values.items():  # a width: 0 divides by zero, a negative one acts as its absolute
        if key.startswith("sigma") and value <= 0:
            raise UserInputError(f"{where}: {key}={value}: allowed a number > 0")
    return values


def _index(name, layer: str, count: int, where: str) -> int:
    """'conv1_3' -> 2 (0-based), checked against the layer's width."""
    try:
        got_layer, index = parse_unit_name(str(name))
    except (UserInputError, ValueError):
        got_layer, index = None, 0
    if got_layer != layer or not 1 <= index <= count:
        raise UserInputError(f"{where}: {name!r} is not one of {layer}_1..{layer}_{count}")
    return index - 1


def _parse_learned(raw: dict, recipes: Recipes, path: Path) -> None:
    """The learned numbers: lines, units and each digit's {bias, terms}."""
    lines, units = raw.get("lines"), raw.get("units")
    if not isinstance(lines, list) or not lines or not isinstance(units, list) or not units:
        raise UserInputError(f"learned recipes {path}: `lines` and `units` must be non-empty lists")
    for i, line in enumerate(lines, 1):
        where = f"learned recipes {path}, conv1_{i}"
        kind = line.get("kind") if isinstance(line, dict) else None
        if kind not in KINDS:
            raise UserInputError(f"{where}: kind={kind!r}; allowed {list(KINDS)}")
        recipes.lines.append({"kind": kind, **_numbers(line, LINE_KEYS, where)})
    for k, unit in enumerate(units, 1):
        where = f"learned recipes {path}, conv3_{k}"
        bursts = unit.get("bursts") if isinstance(unit, dict) else None
        if not isinstance(bursts, list) or not bursts:
            raise UserInputError(f"{where}: expected {{bias, bursts: [...]}} with at least one burst")
        parsed = []
        for b, burst in enumerate(bursts, 1):
            channel = _index(
                burst.get("input") if isinstance(burst, dict) else None,
                "conv1",
                len(lines),
                f"{where}, burst {b} input",
            )
            parsed.append({"channel": channel, **_numbers(burst, BURST_KEYS, f"{where}, burst {b}")})
        recipes.units.append({"bias": _numbers(unit, ("bias",), where)["bias"], "bursts": parsed})
    if len({len(u["bursts"]) for u in recipes.units}) != 1:
        raise UserInputError(f"learned recipes {path}: every conv3 unit needs the same number of bursts")
    # files written before the pooling keys existed: the dataclass's defaults, the net they were
    recipes.cell_pixels = raw.get("cell_pixels", recipes.cell_pixels)
    recipes.final_pool = raw.get("final_pool", recipes.final_pool)
    check_pooling(recipes.cell_pixels, recipes.final_pool, f"learned recipes {path}: ")
    regions = REGION_NAMES[recipes.final_pool]
    for digit, entry in raw["digits"].items():
        where = f"learned recipes {path}, digit {digit}"
        terms = entry.get("terms") if isinstance(entry, dict) else None
        if not isinstance(terms, list):
            raise UserInputError(f"{where}: expected {{bias, terms: [{{unit, weight}}, ...]}}, got {entry!r}")
        read = [
            (
                _index(t.get("unit") if isinstance(t, dict) else None, "conv3", len(units), f"{where} term"),
                _region(t, regions, f"{where} term"),
                _numbers(t, ("weight",), f"{where} term")["weight"],
            )
            for t in terms
        ]
        if len({(unit, region) for unit, region, _ in read}) != len(read):
            raise UserInputError(f"{where}: a unit appears twice in one region among its terms")
        recipes.readout[digit] = {"bias": _numbers(entry, ("bias",), where)["bias"], "terms": read}


def _region(term, regions: tuple[str, ...], where: str) -> int:
    """A term's region name -> its index in REGION_NAMES[final_pool] (one region: none needed)."""
    name = term.get("region", regions[0] if len(regions) == 1 else None) if isinstance(term, dict) else None
    if name not in regions:
        raise UserInputError(f"{where}: region={name!r}; allowed {list(regions)}")
    return regions.index(name)
