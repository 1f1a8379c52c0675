"""A Human-Toolkit-style folder with random weights, for running the whole product on CPU.

The files have the published names, formats and key layouts and are read by the real loaders;
only the numbers are random, so the parses (and the try-on images) are meaningless.
"""
from __future__ import annotations

import os
from pathlib import Path



def write_human_toolkit(folder: str | os.PathLike, *, tiny: bool = True, seed: int = 0) -> Path:
    """Write DWPose/, DensePose/ and SCHP/ under `folder`; returns the folder.

    `tiny` shrinks what can be shrunk (the SCHP and DensePose writers decide what that means);
    the DWPose ONNX models are small synthetic graphs either way.
    """
    from parse_utils.densepose.synthetic import write_densepose_checkpoint
    from parse_utils.dwpose.synthetic import write_dwpose_models
    from parse_utils.schp.synthetic import write_schp_checkpoint

    root = Path(folder)
    (root / "DWPose").mkdir(parents=True, exist_ok=True)
    (root / "DensePose").mkdir(parents=True, exist_ok=True)
    (root / "SCHP").mkdir(parents=True, exist_ok=True)
    write_dwpose_models(root / "DWPose", seed=seed)
    write_densepose_checkpoint(root / "DensePose", tiny=tiny, seed=seed + 1, detectable=True)
    write_schp_checkpoint(root / "SCHP" / "schp-lip.pth", tiny=tiny, seed=seed + 2)
    write_schp_checkpoint(root / "SCHP" / "schp-atr.pth", tiny=tiny, seed=seed + 3)
    return root
