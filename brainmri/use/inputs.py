"""Inputs for prediction: files and folders of images and DICOM slices, decoded to grey-scale PIL images.

``collect_inputs(paths)`` expands files and folders (recursively) with the loader's rules: hidden
files and files that are neither images (``brainmri.data.files.IMAGE_EXTENSIONS``) nor DICOM are junk and
ignored inside folders; a file named explicitly in an unknown format is reported. ``decode_input``
turns one file into a grey-scale (mode ``L``) PIL image, or raises :class:`InputError` with one line
saying why (unreadable, truncated, DICOM without pixel data, compressed DICOM without a decoder).

DICOM: the modality LUT (rescale slope/intercept) and the VOI LUT or window centre/width are applied
with pydicom (``apply_modality_lut``, ``apply_voi_lut``); the windowed range is mapped to 0–255 (a
slice without window tags is stretched from its min to its max); MONOCHROME1 is inverted so that
high signal is bright, as in the training images. Knows nothing about models.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from brainmri.data.files import IMAGE_EXTENSIONS, load_pil

DICOM_EXTENSIONS = {".dcm", ".dicom", ".dic", ".ima"}


class InputError(ValueError):
    """One input file cannot be used; the message is one line naming the reason."""


@dataclass
class Collected:
    files: list[Path]  # in a stable order: arguments in the given order, folders sorted
    skipped: list[dict]  # {"path", "error"} for inputs that are not usable before decoding


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_EXTENSIONS:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


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


def _voi_range(ds) -> tuple[float, float] | None:
    """The output range of pydicom's VOI transform for ``ds`` (None: the file has no VOI tags)."""
    if ds.get("VOILUTSequence"):
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    # as pydicom.pixels.processing.apply_windowing: the stored range, through the rescale if any
    bits = int(ds.BitsStored)
    if ds.get("ModalityLUTSequence"):
        lo, hi = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(ds.PixelRepresentation) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    if ds.get("RescaleSlope") is not None and ds.get("RescaleIntercept") is not None:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        lo, hi = lo * slope + intercept, hi * slope + intercept
    return lo, hi


def read_dicom(path: str | Path) -> Image.Image:
    """One DICOM slice as a grey-scale PIL image (see the module docstring for the intensity rules)."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder

    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError) as e:
        raise InputError(f"unreadable DICOM: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        kind = getattr(ds, "Modality", None) or ds.get("SOPClassUID", "unknown SOP class")
        raise InputError(f"DICOM without pixel data ({kind}): nothing to predict")
    meta = getattr(ds, "file_meta", None)
    ts = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    if ts is not None and ts.is_compressed:
        try:
            decoder = get_decoder(ts)
        except NotImplementedError:  # a syntax pydicom has no decoder for at all
            decoder = None
        if decoder is None or not decoder.is_available:
            need = ", ".join(d.split(" - ")[0] for d in decoder.missing_dependencies) if decoder else "a decoder"
            raise InputError(f"compressed transfer syntax {ts.name} ({ts}) cannot be decoded here: "
                             f"install {need or 'a pydicom pixel-data plugin'}")
    try:
        arr = ds.pixel_array
    except Exception as e:  # pydicom raises many types for malformed pixel data
        raise InputError(f"cannot decode DICOM pixel data: {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if frames > 1:
        raise InputError(f"multi-frame DICOM ({frames} frames): predict single slices")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        # colour DICOM: pydicom returns RGB (YBR converted); reduce to grey like any colour image
        return Image.fromarray(np.asarray(arr, dtype=np.uint8)).convert("L")
    values = apply_modality_lut(arr, ds).astype(np.float64)
    window = _voi_range(ds)
    if window is not None:
        values = np.asarray(apply_voi_lut(values, ds), dtype=np.float64)
        lo, hi = window
    else:
        lo, hi = float(values.min()), float(values.max())
    scaled = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    grey = np.clip(np.rint(np.clip(scaled, 0.0, 1.0) * 255.0), 0, 255).astype(np.uint8)
    if photometric == "MONOCHROME1":  # minimum value is white: invert to the training images' polarity
        grey = 255 - grey
    return Image.fromarray(grey, mode="L")


def decode_input(path: str | Path) -> Image.Image:
    """Any prediction input as a grey-scale PIL image; :class:`InputError` (one line) when unusable."""
    path = Path(path)
    if _is_dicom(path):
        return read_dicom(path)
    try:
        return load_pil(path, 1)
    except Exception as e:  # PIL raises many types for broken files
        raise InputError(f"unreadable image: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
