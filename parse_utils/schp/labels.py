"""Dataset settings of the SCHP parsers: label names, network input size, palette.

The parser's output indices are only meaningful together with the dataset the checkpoint was
trained on, so the dataset (not the checkpoint) is the single source of these facts.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ATR_LABELS",
    "DATASETS",
    "LIP_LABELS",
    "PASCAL_LABELS",
    "SCHPDataset",
    "dataset_from_filename",
    "label_palette",
]

LIP_LABELS: tuple[str, ...] = (
    "Background", "Hat", "Hair", "Glove", "Sunglasses", "Upper-clothes", "Dress", "Coat",
    "Socks", "Pants", "Jumpsuits", "Scarf", "Skirt", "Face", "Left-arm", "Right-arm",
    "Left-leg", "Right-leg", "Left-shoe", "Right-shoe",
)
ATR_LABELS: tuple[str, ...] = (
    "Background", "Hat", "Hair", "Sunglasses", "Upper-clothes", "Skirt", "Pants", "Dress",
    "Belt", "Left-shoe", "Right-shoe", "Face", "Left-leg", "Right-leg", "Left-arm", "Right-arm",
    "Bag", "Scarf",
)
PASCAL_LABELS: tuple[str, ...] = (
    "Background", "Head", "Torso", "Upper Arms", "Lower Arms", "Upper Legs", "Lower Legs",
)


@dataclass(frozen=True)
class SCHPDataset:
    """What a checkpoint trained on one dataset expects and produces."""

    name: str
    labels: tuple[str, ...]
    input_size: tuple[int, int]  # (height, width) of the network input

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def aspect_ratio(self) -> float:
        return self.input_size[1] / self.input_size[0]


DATASETS: dict[str, SCHPDataset] = {
    "lip": SCHPDataset("lip", LIP_LABELS, (473, 473)),
    "atr": SCHPDataset("atr", ATR_LABELS, (512, 512)),
    "pascal": SCHPDataset("pascal", PASCAL_LABELS, (512, 512)),
}


def dataset_from_filename(path: str | Path) -> str:
    """Pick the dataset the way the reference does: first of 'lip', 'atr', 'pascal' in the name.

    Only the file name is searched, not the parent folders, so that a folder such as
    '/home/philip' cannot turn an ATR checkpoint into a LIP one. For the Human-Toolkit
    names (schp-lip.pth, schp-atr.pth) this agrees with the reference.
    """
    name = Path(path).name
    for dataset in ("lip", "atr", "pascal"):
        if dataset in name:
            return dataset
    raise ValueError(
        f"cannot tell the SCHP dataset from the file name {name!r}: "
        "it must contain 'lip', 'atr' or 'pascal' (e.g. schp-lip.pth, schp-atr.pth)"
    )


def label_palette(num_classes: int) -> list[int]:
    """PASCAL-VOC colour map (bit-interleaved), 3 values per label, as the reference's 'P' images."""
    palette: list[int] = []
    for label in range(num_classes):
        rgb = [0, 0, 0]
        value, bit = label, 7
        while value:
            for channel in range(3):
                rgb[channel] |= ((value >> channel) & 1) << bit
            value >>= 3
            bit -= 1
        palette.extend(rgb)
    return palette
