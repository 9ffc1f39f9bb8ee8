"""Results: metrics, collecting finished runs, comparison tables, reports and W&B read-back.

``metrics`` (scikit-learn does the math), ``collect`` (run dirs, offline W&B files, the API →
one comparison with val-based selection and paired tests), ``report`` (Markdown, CSV, LaTeX,
plots), ``report_html`` (one self-contained page), ``search`` (a search sweep's trials: the search
view), ``wandb_offline`` (reads ``run-*.wandb``),
``wandb_results`` (what a finished run shows in W&B) and ``wandb_report`` (a W&B report).

May import: ``brainmri.config``, ``brainmri.rundir``, ``brainmri.atomic``, ``brainmri.data``
(bands) and itself; never ``train``, ``use``, ``sweep``, ``cli`` or ``jobs``.
"""
