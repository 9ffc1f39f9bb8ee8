"""Sweeps: a sweep YAML expanded into validated training tasks, and what each asks the scheduler for.

``expand`` (recipes × grid × seeds → tasks with stable ids, the sweep directory's task table; a
search's trials as tasks), ``resources`` (the ``slurm:`` block: partitions, GPUs, time, setup
lines, sbatch options) and ``search`` (the ``search:`` block, its space, the driver's files).

May import: ``brainmri.config``, ``brainmri.rundir``, ``brainmri.atomic`` and itself; never
models, training, results, use, cli or jobs (the job side, ``jobs/``, runs the tasks).
"""
