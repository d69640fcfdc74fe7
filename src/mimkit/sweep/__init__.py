"""``mimkit sweep``: which setting suits these images? A grid or a search over config keys, every trial
pretrained for the same budget and scored with the same protocol on the same held-out split.

    mimkit sweep --config configs/mae_fashion_mnist.yaml method.mask_ratio=0.5,0.75,0.9 --minutes 5
    mimkit sweep my_images/ method.name=mae,simmim,sit --minutes 10 --seeds 0,1
    mimkit sweep --config configs/mae_fashion_mnist.yaml "train.blr=1e-4:3e-3:log" --trials 12 --minutes 5

What was chosen, and why:

- **Optuna** keeps the search and its bookkeeping (pip install 'mimkit[sweep]'): a grid is Optuna's
  GridSampler, a search over ranges its TPE sampler (a good default for a few dozen trials over mixed
  choices and ranges, seeded), and both live in a local SQLite store (``<sweep>/optuna.db``) that needs no
  server and survives a kill (SQLite writes are transactions). The loop is Optuna's ask-and-tell, not
  ``study.optimize``: ``optimize`` marks a trial FAIL on Ctrl-C or SIGTERM, where a sweep must leave it to
  be resumed; :mod:`mimkit.sweep.study` says how a trial the store marks RUNNING is resumed, not repeated.
- **A trial is ordinary run directories** (one per seed, :mod:`mimkit.sweep.trial`), made by
  :func:`mimkit.pretrain.pretrain`, so every other command reads them, and a run resumes from its checkpoint
  as any run does. The first run that needs a held-out split draws it into ``<sweep>/split.json``
  (``data.split_file``); every other run reads that file.
- **The same budget**: ``--minutes`` (``train.max_minutes``: the schedule is fitted to it, and online kNN
  time is not counted) or ``--steps`` (``train.max_steps``). **The same protocol**: kNN and the linear probe
  on the frozen encoder always, fine-tuning at ``--finetune`` label fractions if asked, on the run's own
  test split (Fashion-MNIST's test set, or the held-out part of a folder).
- **Pruning** (MedianPruner): a trial whose online kNN (``online_knn.every``, reported to the store at each
  evaluation epoch) falls below the median of earlier trials at the same epoch is stopped, once
  :data:`~mimkit.sweep.study.PRUNE_STARTUP` trials have whole curves. The median rule asks for nothing but
  the curves the trainer already makes; Hyperband and successive halving would hand out the budgets
  themselves, against "every trial the same budget". Searches prune by default, grids do not (a grid's
  table is the answer; ``--prune`` asks for it).
- **Seeds** (``--seeds 0,1``): a trial runs every seed, its value is their mean and the table shows the
  spread (sample standard deviation); the pruner hears the first seed only.
- **One trial per GPU** (``--gpus 0,1``): trials run in worker processes, each seeing one GPU; on a CPU they
  run one after another in this process.
- **Bad input** is refused before any run directory exists: every grid point (a search: every choice and
  both ends of every range) is built, config and model, first (:func:`mimkit.sweep.space.check`).
"""

from mimkit.sweep.space import Axis, EvalSpec, SweepSpec, parse_setting

__all__ = ["Axis", "EvalSpec", "SweepSpec", "parse_setting"]
