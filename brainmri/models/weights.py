"""Pretrained weights: where they live, fetching them once, reading state dicts.

``fetch_weights(url)`` puts a weights file into the local torch cache
(``$TORCH_HOME/hub/checkpoints/<file name of the URL>``) at most once per machine: the download
runs under a file lock, so parallel ranks and sweep tasks wait for the first one and then read
its file. A ``-<sha256 prefix>`` suffix in the file name (torchvision's convention) is checked by
torch.hub's downloader. Offline, a missing file is a ``WeightsError`` saying where to put it.
Knows nothing about architectures (``brainmri.models.registry.pretrained_source`` says which URL an
architecture uses).

Example:
    >>> fetch_weights("https://download.pytorch.org/models/resnet50-11ad3fa6.pth")
    PosixPath('/home/me/.cache/torch/hub/checkpoints/resnet50-11ad3fa6.pth')
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
from filelock import FileLock

DOWNLOAD_TIMEOUT_S = 60  # per socket operation: a dead network fails instead of hanging


class WeightsError(RuntimeError):
    """Pretrained weights were asked for but cannot be loaded; the message says how to fix it."""


def cache_path(url: str, filename: str | None = None) -> Path:
    """Where the file of ``url`` lives in the local torch cache (torchvision's own location): the URL's
    file name, or ``filename`` where URLs share one (every Hugging Face hub file is ``model.safetensors``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / (filename or os.path.basename(urlparse(url).path))


def hub_file(hub_id: str, filename: str) -> tuple[str, str]:
    """(download URL, cache file name) of file ``filename`` of Hugging Face hub repository ``hub_id``;
    the cache name carries the repository, since every hub file is called ``model.safetensors``."""
    return f"https://huggingface.co/{hub_id}/resolve/main/{filename}", f"{hub_id.replace('/', '--')}--{filename}"


def _missing(url: str, path: Path, reason: str) -> WeightsError:
    return WeightsError(
        f"model.pretrained=true but the weights {path.name} are not in the local torch cache ({path}) and "
        f"cannot be downloaded ({reason}). Download {url} on a machine with network access and copy it "
        f"there (or set TORCH_HOME), or pass model.weights=/path/to/file.pth, or set model.pretrained=false "
        f"to train from random initialisation."
    )


def fetch_weights(url: str, filename: str | None = None) -> Path:
    """The cached file of ``url`` (named ``filename`` if given), downloaded first if absent (once: other
    processes wait on a lock)."""
    path = cache_path(url, filename)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.is_file():  # another process downloaded it while we waited
            return path
        match = torch.hub.HASH_REGEX.search(path.name)
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        try:
            # writes a temporary file beside ``path``, checks the sha256 prefix, then renames it
            torch.hub.download_url_to_file(url, str(path), hash_prefix=match.group(1) if match else None,
                                           progress=False)
        except RuntimeError as e:  # torch.hub: invalid hash value
            raise WeightsError(f"downloaded {url} but its content does not match the hash in its name: {e}") from None
        except (OSError, ValueError) as e:  # URLError, HTTPError, timeouts, bad URLs
            raise _missing(url, path, f"{type(e).__name__}: {e}") from None
        finally:
            socket.setdefaulttimeout(previous)
    return path


def load_state_dict(path: str | Path, key: str = "model.weights") -> dict[str, torch.Tensor]:
    """A state dict from a ``.pth`` or ``.safetensors`` file or a brainmri checkpoint (``weights_only``)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{key}: file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"{key}: cannot read {path}: {e}") from e
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a brainmri checkpoint
    if not isinstance(state, dict):
        raise WeightsError(f"{key}: {path} does not hold a state_dict")
    return state
