"""Training: the engine and everything one training run needs.

``engine`` (the loop on accelerate), ``phases`` (what a phase trains, prepared for the loop),
``policy`` (epoch-end decisions), ``record`` (the run's books), ``checkpoint`` (what a checkpoint
holds, RNG and position), ``resume`` (which run a config belongs to, may it continue), ``signals``
(stop flags), ``accel`` (the accelerator, the training forward), ``features`` (frozen-backbone
feature cache), ``tracking`` (logging, W&B), ``evaluate`` (model + loader → a split's predictions,
metrics and files) and ``regularise`` (MixUp/CutMix, soft-target loss, weight EMA, TTA).

May import: ``brainmri.config``, ``brainmri.rundir``, ``brainmri.atomic``, ``brainmri.optim``,
``brainmri.data``, ``brainmri.models``, ``brainmri.results.metrics`` and ``.wandb_results``;
never ``use``, ``sweep``, ``cli`` or ``jobs``.
"""
