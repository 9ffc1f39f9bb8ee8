"""The job side (installed as ``brainmri.jobs``): what runs a sweep task under submitit.

``train_job`` (the checkpointable submitit job: trains one task, requeues on pre-emption),
``local_task`` (the process around a ``--cluster local`` task, recording how it ended),
``submit`` (submitting tasks as job arrays and reading their states back) and ``search`` (the
search driver: the one writer of a search's Optuna study, keeping its trials running).

May import: everything in ``brainmri`` except ``brainmri.cli``.
"""
