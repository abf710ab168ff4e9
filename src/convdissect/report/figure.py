"""One figure of the report: what it shows (ReportFigure) and how it is saved."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class ReportFigure:
    section: str  # a key of SECTIONS
    name: str  # file stem, e.g. conv2_3_dissection_digit5
    title: str
    caption: str


def save_figure(fig, path: Path, dpi: int):
    """Render once: the PNG for the page and an HWC uint8 array for TensorBoard."""
    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    path.write_bytes(buffer.getvalue())
    return np.asarray(Image.open(buffer).convert("RGB"))
