"""The job side (installed as ``brainmri.jobs``): what runs a sweep task under submitit.

``train_job`` (the checkpointable submitit job: trains one task, requeues on pre-emption),
``local_task`` (the process around a ``--cluster local`` task, recording how it ended),
``submit`` (submitting tasks as job arrays and reading their states back) and ``search`` (the
search driver: the one writer of a search's Optuna study, keeping its trials running), with its
parts ``search_study`` (the Optuna studies on the sweep's journal, and the check that a re-run is the
same study), ``search_trials`` (the trial table, ``trials.json``) and ``search_confirm`` (the best
configurations re-run over other seeds).

May import: everything in ``brainmri`` except ``brainmri.cli``.
"""
