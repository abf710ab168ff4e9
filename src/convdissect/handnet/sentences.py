"""How a HandNet's explanation words and prints its numbers: pattern and position names, each
unit's sentence, and numbers to SIGNIFICANT digits (the rounded learned recipes use the same)."""

from __future__ import annotations

import math

from convdissect.conventions import (
    CENTRE,
    ORIENTATION_NAMES,
    clock_from_xy,
    edge_side,
    format_distance,
    orientation_bin,
    stroke_label,
)

# Numbers in explanation.md have this many significant digits; the rounded net uses the same.
SIGNIFICANT = 3
# Named positions (and angles) within this distance (recipe cells, 4 pixels; degrees) are called by their name.
NAME_TOLERANCE_CELLS = 0.5
NAME_TOLERANCE_DEG = 5.0


def rounded(value: float) -> float:
    """A number as explanation.md prints it."""
    return float(f"{value:.{SIGNIFICANT}g}")


def fmt(value: float) -> str:
    return f"{value:.{SIGNIFICANT}g}"


def position_word(positions: dict[str, tuple[float, float]], x: float, y: float) -> str:
    """A recipe position's name (top, middle, ...) where a burst sits on one, else its clock
    (x, y in the recipe file's 4-pixel cells)."""
    for name, (px, py) in positions.items():
        if math.hypot(x - px, y - py) <= NAME_TOLERANCE_CELLS:
            return name
    return clock_from_xy(x, y)[0]


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


def burst_place(burst: dict) -> str:
    """'at 12 o'clock, distance 2', 'at the centre'."""
    if burst["clock"] == CENTRE:
        return "at the centre"
    clock = burst["clock"]
    clock = f"{clock.removesuffix(':00')} o'clock" if clock.endswith(":00") else clock
    return f"at {clock}, distance {format_distance(burst['distance'])}"


def burst_sentence(burst: dict) -> str:
    """'+burst at 12 o'clock, distance 2, on conv1_1 (horizontal line)'."""
    return f"{burst['sign']}burst {burst_place(burst)}, on {burst['input']} ({burst['input_label']})"


def recipe_sentence(digit: int, terms: list[dict]) -> str:
    """'5 = 1.3 top(horizontal) + 0.9 middle(horizontal) - 0.4 centre(vertical)'."""
    if not terms:
        return f"{digit} = (nothing)"
    text = f"{digit} = {'-' if terms[0]['weight'] < 0 else ''}{abs(terms[0]['weight']):.2g} {terms[0]['label']}"
    for term in terms[1:]:
        text += f" {'-' if term['weight'] < 0 else '+'} {abs(term['weight']):.2g} {term['label']}"
    return text
