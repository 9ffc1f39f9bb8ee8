"""Sweeps: a sweep YAML expanded into validated training tasks, and what each asks the scheduler for.

``expand`` (``load_sweep``: recipes × grid × folds × seeds → tasks; a search's trials as tasks),
``schema`` (the sweep YAML's keys, its sweep-wide and per-recipe levels, the command line's
``key=value`` items), ``tasks`` (``Sweep``, ``Task``, stable task ids, a task's overrides and run
directory), ``table`` (the sweep directory's ``tasks.json``/``tasks.csv``, and whether a re-run is
still the same sweep), ``arrays`` (tasks grouped into job arrays, the GPU/CPU-hour bill),
``resources`` (the ``slurm:`` block: partitions, GPUs, time, setup lines, sbatch options) and
``search`` (the ``search:`` block, its space, the driver's files). Inside the package:
resources, search → tasks → schema, table, arrays → expand (which re-exports the names of
tasks, table, arrays and ``describe``).

May import: ``brainmri.config``, ``brainmri.rundir``, ``brainmri.atomic`` and itself; never
models, training, results, use, cli or jobs (the job side, ``jobs/``, runs the tasks).
"""
