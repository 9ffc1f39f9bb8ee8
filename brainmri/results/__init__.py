"""Results: metrics, collecting finished runs, comparison tables, reports and W&B read-back.

``metrics`` (scikit-learn does the math; the one ECE), the collector by concept — ``runs``
(run dirs, offline W&B files, the API), ``selection`` (val-based choice, data provenance,
``compare``), ``stats`` (intervals, corrected t, McNemar, Holm, calibration), ``ensembles``,
``cost`` — returning the typed records of ``comparison`` (``collect`` re-exports their public
names); the writers, which only draw: ``tables`` (the frames), ``report`` (Markdown, CSV),
``report_latex``, ``report_plots``, ``report_html`` (one self-contained page), ``search`` (a
search sweep's trials: the search view), ``wandb_report``; ``wandb_offline`` (reads
``run-*.wandb``) and ``wandb_results`` (what a finished run shows in W&B).

May import: ``brainmri.config``, ``brainmri.rundir``, ``brainmri.atomic``, ``brainmri.data``
(bands) and itself; never ``train``, ``use``, ``sweep``, ``cli`` or ``jobs``.
"""
