"""brainmri: batch training and honest comparison of brain-tumour MRI classifiers.

Floors, from the bottom: ``atomic`` (durable writes), ``locks`` (file locks naming their holder),
``version`` (the code version), ``models``, ``optim`` → ``rundir`` (the run directory), ``config``
(the one schema), ``data`` → ``results``, ``sweep`` → ``train`` → ``use`` and the job side
(``jobs/``, installed as ``brainmri.jobs``) → ``cli``. A module imports only from floors below its
own; each package's docstring says what it owns.
"""
