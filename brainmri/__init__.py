"""brainmri: batch training and honest comparison of brain-tumour MRI classifiers.

Floors, from the bottom: ``atomic`` (durable writes) → ``rundir`` (the run directory) →
``models``, ``optim`` → ``config`` (the one schema) → ``data`` → ``results`` → ``train`` →
``sweep`` → ``use`` → the job side (``jobs/``, installed as ``brainmri.jobs``) → ``cli``.
A package imports only from floors below it; each package's docstring says what it owns.
"""
