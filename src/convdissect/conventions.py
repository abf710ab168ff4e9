"""The one vocabulary of the project: angles, orientations, edge sides, clock positions, unit names.

Geometry everywhere: x (or u) points right, y (or v) points UP, so row 0 of an image or weight
grid is its top. An angle θ is the direction of a stroke, counter-clockwise from the x axis:
0° is horizontal "-", 45° is "/", 90° is vertical "|", 135° is "\\". A stroke's normal is
n = (-sin θ, cos θ) (for 0° it points up, for 90° left); the signed distance across the
stroke is d = -x sin θ + y cos θ - offset, positive on the n side.

Sign conventions of the stroke detectors (the parametric line family):
- a `line` kernel with amplitude > 0 fires on a bright stroke, with amplitude < 0 on a dark
  stroke ("dark line");
- an `edge` kernel's odd profile is positive on the n side when amplitude > 0. Its `side` is the
  boundary of a bright stroke it fires on: the bright stroke lies on its positive lobe, so the
  kernel sits on the stroke's boundary facing its negative lobe. A vertical edge whose positive
  lobe lies right of its centre line is the "left side of a vertical line".

Clock positions (conv3 bursts) are directions from a grid's centre: 12 o'clock is up, 3 right,
6 down, 9 left, in half-hour steps ("7:30"); the distance is in grid cells.
"""

from __future__ import annotations

import math

from convdissect.errors import UserInputError

ORIENTATION_NAMES = {0: "horizontal", 45: "diagonal /", 90: "vertical", 135: "diagonal \\"}
ANGLE_SYMBOLS = {0: "-", 45: "/", 90: "|", 135: "\\"}
# Within this many degrees of 0° or 90° a stroke is called plainly "horizontal"/"vertical".
AXIS_TOLERANCE_DEG = 5.0
CENTRE = "centre"
# Distances below this (grid cells) are the centre itself, with no clock direction.
CENTRE_RADIUS = 0.25


def orientation_bin(theta_deg: float) -> int:
    """The nearest of 0, 45, 90, 135 for an angle in degrees (any range; period 180)."""
    return int(round((theta_deg % 180.0) / 45.0)) % 4 * 45


def orientation_name(theta_deg: float) -> str:
    """'horizontal', 'diagonal /', 'vertical' or 'diagonal \\' for the nearest of 0/45/90/135."""
    return ORIENTATION_NAMES[orientation_bin(theta_deg)]


def edge_side(theta_deg: float, sign: float) -> str:
    """The side word of an edge detector at θ whose amplitude has this sign (see module doc).

    The kernel fires on the boundary facing its negative lobe, which lies at -sign * n.
    Words follow the orientation: left/right (near-vertical), upper/lower (near-horizontal),
    upper-left/lower-right ("/"), upper-right/lower-left ("\\").
    """
    t = math.radians(theta_deg)
    s = -1.0 if sign >= 0 else 1.0
    sx, sy = -s * math.sin(t), s * math.cos(t)  # direction of the negative lobe
    bin_ = orientation_bin(theta_deg)
    if bin_ == 0:
        return "upper" if sy > 0 else "lower"
    if bin_ == 90:
        return "right" if sx > 0 else "left"
    if bin_ == 45:
        return "upper-left" if sy - sx > 0 else "lower-right"
    return "upper-right" if sx + sy > 0 else "lower-left"


def line_phrase(theta_deg: float) -> str:
    """'horizontal line', 'vertical line', or 'line at 20° (slope 0.36)'."""
    t = theta_deg % 180.0
    if min(t, 180.0 - t) <= AXIS_TOLERANCE_DEG:
        return "horizontal line"
    if abs(t - 90.0) <= AXIS_TOLERANCE_DEG:
        return "vertical line"
    return f"line at {t:.0f}° (slope {math.tan(math.radians(t)):.2f})"


def stroke_label(kind: str, theta_deg: float, sign: float) -> str:
    """Human label of a stroke detector: 'vertical line', 'dark horizontal line',
    'left side of a vertical line'."""
    if kind == "line":
        phrase = line_phrase(theta_deg)
        return phrase if sign >= 0 else f"dark {phrase}"
    if kind == "edge":
        return f"{edge_side(theta_deg, sign)} side of a {line_phrase(theta_deg)}"
    raise ValueError(f"kind={kind!r}: allowed 'line', 'edge'")


def unit_name(layer: str, index: int) -> str:
    """unit_name('conv2', 3) -> 'conv2_3'; index is already 1-based."""
    if index < 1:
        raise ValueError(f"unit index {index} of {layer}: indices are 1-based")
    return f"{layer}_{index}"


def parse_unit_name(name: str) -> tuple[str, int]:
    """'conv2_3' -> ('conv2', 3) (1-based index)."""
    layer, _, index = name.rpartition("_")
    if not layer or not index.isdigit() or int(index) < 1:
        raise ValueError(f"unit name {name!r}: expected LAYER_INDEX with a 1-based index, e.g. 'conv2_3'")
    return layer, int(index)


def parse_clock(value: str | int) -> float:
    """A clock position -> hours on the dial in [0, 12) (12:00 -> 0.0, 7:30 -> 7.5).

    Accepts '7:30', '12:00', '3' and the ints 1..12 (a YAML '3'). Raises UserInputError (a
    ValueError) naming the bad value; an int such as 630 is what YAML 1.1 makes of an unquoted
    10:30 (sexagesimal), so the message says to quote it.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise UserInputError(f"clock position {value!r}: expected a string like '7:30'")
    if isinstance(value, int):
        if 1 <= value <= 12:
            return float(value % 12)
        hours, minutes = divmod(value, 60)
        hint = f" (YAML 1.1 reads an unquoted {hours}:{minutes:02d} as the number {value}; quote it: '{hours}:{minutes:02d}')"
        raise UserInputError(f"clock position {value!r} is not a clock time{hint if value >= 60 else ''}")
    text = value.strip()
    hour_text, colon, minute_text = text.partition(":")
    if not hour_text.isdigit() or (colon and not minute_text.isdigit()):
        raise UserInputError(f"clock position {value!r}: expected 'H' or 'H:MM', e.g. '7:30' or '12'")
    hour = int(hour_text)
    minutes = int(minute_text) if colon else 0
    if not 1 <= hour <= 12:
        raise UserInputError(f"clock position {value!r}: hour must be 1..12")
    if minutes not in (0, 30):
        raise UserInputError(f"clock position {value!r}: minutes must be 00 or 30 (half-hour steps)")
    return (hour % 12) + minutes / 60.0


def format_clock(hours: float) -> str:
    """Hours on the dial -> '7:30', '12:00' (rounded to the nearest half hour)."""
    half_hours = int(round(hours * 2.0)) % 24
    hour, half = divmod(half_hours, 2)
    return f"{hour or 12}:{'30' if half else '00'}"


def clock_from_xy(x: float, y: float) -> tuple[str, float]:
    """A position in grid cells from the centre (x right, y up) -> (clock string, distance).

    The direction is rounded to the nearest half hour; near the centre the clock is 'centre'.
    """
    distance = math.hypot(x, y)
    if distance < CENTRE_RADIUS:
        return CENTRE, distance
    clockwise_from_up = math.degrees(math.atan2(x, y)) % 360.0
    return format_clock(clockwise_from_up / 30.0), distance


def xy_from_clock(clock: str | int, distance: float) -> tuple[float, float]:
    """(clock string, distance in grid cells) -> position (x right, y up) from the centre."""
    if isinstance(clock, str) and clock.strip().lower() in (CENTRE, "center"):
        return 0.0, 0.0
    angle = math.radians(parse_clock(clock) * 30.0)
    return distance * math.sin(angle), distance * math.cos(angle)


def format_distance(distance: float, tol: float = 0.05) -> str:
    """'2', '2√2', '√2', else one decimal ('2.2')."""
    if abs(distance - round(distance)) < tol:
        return str(int(round(distance)))
    multiple = distance / math.sqrt(2.0)
    if abs(multiple - round(multiple)) < tol / math.sqrt(2.0):
        k = int(round(multiple))
        return "√2" if k == 1 else f"{k}√2"
    return f"{distance:.1f}"


def format_burst(sign: float, clock: str, distance: float) -> str:
    """'+[7:30, 2√2]' (the article's notation); a burst at the centre is '+[centre]'."""
    mark = "+" if sign >= 0 else "-"
    if clock == CENTRE:
        return f"{mark}[{CENTRE}]"
    return f"{mark}[{clock}, {format_distance(distance)}]"


# The regions of a map max-pooled to n x n (HandNet's final_pool), row by row from the top left:
# "upper-left" is the image's upper-left part, where the unit's grid sits up and left of the centre.
REGION_NAMES = {
    1: ("whole image",),
    2: ("upper-left", "upper-right", "lower-left", "lower-right"),
    3: ("upper-left", "top", "upper-right", "left", CENTRE, "right", "lower-left", "bottom", "lower-right"),
}


def angle_gap(a: float, b: float) -> float:
    """Distance between two stroke orientations in degrees (period 180)."""
    gap = abs(a - b) % 180.0
    return min(gap, 180.0 - gap)
