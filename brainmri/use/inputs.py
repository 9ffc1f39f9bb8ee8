"""Inputs for prediction: files and folders of images and DICOM slices, decoded to grey-scale PIL images.

``collect_inputs(paths)`` expands files and folders (recursively) with the loader's rules: hidden
files and files that are neither images (``brainmri.data.files.IMAGE_EXTENSIONS``) nor DICOM are junk and
ignored inside folders; a file named explicitly in an unknown format is reported. ``decode_input``
turns one file into a grey-scale (mode ``L``) PIL image, or raises :class:`InputError` with one line
saying why (unreadable, truncated, DICOM without pixel data, compressed DICOM without a decoder).

DICOM slices are decoded by ``brainmri.data.dicom`` (the decoder training uses): the modality LUT
(rescale slope/intercept) and the VOI LUT or window centre/width applied with pydicom, the windowed
range mapped to 0–255 (a slice without window tags stretched from its min to its max), MONOCHROME1
inverted so that high signal is bright. Knows nothing about models.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from brainmri.data import dicom
from brainmri.data.dicom import DICOM_EXTENSIONS  # noqa: F401  (where prediction's readers look it up)
from brainmri.data.files import IMAGE_EXTENSIONS, load_pil


class InputError(ValueError):
    """One input file cannot be used; the message is one line naming the reason."""


@dataclass
class Collected:
    files: list[Path]  # in a stable order: arguments in the given order, folders sorted
    skipped: list[dict]  # {"path", "error"} for inputs that are not usable before decoding


def _is_dicom(path: Path) -> bool:
    return dicom.is_dicom(path)


def _usable(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS or _is_dicom(path)


def collect_inputs(paths: list[str | Path]) -> Collected:
    """Expand ``paths`` (files and folders) into the files to predict."""
    files: list[Path] = []
    skipped: list[dict] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            files.append(p)

    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                rel = f.relative_to(p).parts
                if f.is_file() and not any(part.startswith(".") for part in rel) and _usable(f):
                    add(f)
        elif p.is_file():
            if _usable(p):
                add(p)
            else:
                suffix = p.suffix or "(no extension)"
                skipped.append({"path": str(p), "error": f"unknown format {suffix}: not an image "
                                f"({', '.join(sorted(IMAGE_EXTENSIONS))}) or a DICOM file"})
        else:
            skipped.append({"path": str(p), "error": "no such file or folder"})
    return Collected(files, skipped)


# ------------------------------------------------------------------------------------------- DICOM


def read_dicom(path: str | Path, window: str = "file") -> Image.Image:
    """One DICOM slice as a grey-scale PIL image (``brainmri.data.dicom``: the decoder training uses;
    ``window``: the run's ``data.dicom.window``)."""
    try:
        return dicom.read_dicom(path, window)
    except dicom.DicomError as e:
        raise InputError(str(e).replace("no image", "nothing to predict")) from None


def decode_input(path: str | Path, window: str = "file") -> Image.Image:
    """Any prediction input as a grey-scale PIL image; :class:`InputError` (one line) when unusable.
    ``window``: how DICOM slices are windowed (the run's ``data.dicom.window``)."""
    path = Path(path)
    if _is_dicom(path):
        return read_dicom(path, window)
    try:
        return load_pil(path, 1)
    except Exception as e:  # PIL raises many types for broken files
        raise InputError(f"unreadable image: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
