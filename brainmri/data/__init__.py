"""Data: image files, caches, near-duplicates, the split, datasets and transforms.

Owns everything between a data root on disk and a batch of tensors: the folder scan and the
loader's file rules (``files``), where caches live (``cachedir``), the decoded-image cache
(``cache``), fingerprints, near-duplicate bands and groups (``leakage``), the data-set audit
(``audit``, with the shortcut audit), synthetic phantoms (``phantoms``), the stand-alone
decode-time preprocessing (``preprocess``: grey decode, head mask, head crop, background zeroing;
numpy and PIL only, copied into exported model folders), decoding and torchvision v2 transforms
(``transforms``), the grouped split and its record (``split``), and datasets and loaders
(``datasets``).

May import: ``brainmri.config``, ``brainmri.atomic``, ``brainmri.rundir`` and itself; never
models, training, results, use, sweeps or jobs. ``files``, ``cachedir``, ``leakage``, ``audit``,
``split`` and ``preprocess`` import no torch (``preprocess`` imports nothing of brainmri either).
"""
