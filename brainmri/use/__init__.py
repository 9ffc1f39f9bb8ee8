"""Use a trained run: prediction, Grad-CAM, evaluation on another data root, export.

``inputs`` (files, folders, DICOM → grey PIL), ``predict`` (inputs → probabilities, CSV),
``explain`` (Grad-CAM and its contact sheet), ``external`` (evaluate on an external set) and
``export`` (ONNX, TorchScript, model card).

May import: everything below it (``config``, ``rundir``, ``data``, ``models``, ``train``,
``results``); never ``sweep``, ``cli`` or ``jobs``.
"""
