"""The commands of qrsu, and the engine they share.

Commands (each ``python -m pipelines.NAME --help``):

==================  ===========================================================================================
``build_dataset``   build dataset configs into a data dir, without TensorFlow
``export``          a built split as Parquet
``train``           train one model on one config, epoch by epoch, into a workdir (resumable)
``evaluate``        a trained run's accuracy per class and by lag, on its own config or a longer one
``predict``         classify sequences typed as strings with a trained run
``experiment``      the leaderboard: every family on every level under one protocol, on Ray workers
``lengthgen``       length generalisation: family x training recipe x length, and Pascanu et al. 2013
``replicate``       the 1997 paper's Experiment 6 with its own LSTM and protocol
``factors``         from the 1997 protocol to today's training, one factor at a time, on Ray workers
==================  ===========================================================================================

``pipelines.engine``, what they share, from the bottom up:

* ``errors``: what a command does with a user error (one line, an exit code, no traceback);
  ``flags``: argument types; ``locks``: one writer per folder;
* ``config``: a training run's settings (``TrainConfig``), their flags and what a resume may change; the
  dataset config is resolved there once, into a ``qrsu_data.splits.SplitSpec`` passed down from then on;
* ``sharding``: the device mesh; ``state``: the train state and the pure train step; ``threaded_step``: the
  CPU gradient threads; ``step``: how a step runs (one jitted program, or the threads); ``model``: the model
  and optimizer of a config; ``evaluator``: every example of a split once;
* ``session``: one run set up (data, mesh, model, optimizer, state, evaluator, step), used by ``train`` and
  the grid; ``loop``: the training loop, with periodic actions; ``checkpoints``, ``workdir``, ``reporting``:
  what a ``train`` run keeps;
* ``solving``: a grid's run, trained until solved on validation or out of budget; ``trials``: 1997-style
  trials side by side in one program (``replicate``, ``factors``); ``leaderboard``: the tables and plots;
* ``study``: a study's output folder (its settings, a record per finished run, one writer); ``pool``: the
  runs of a study on Ray workers, one per core or over a cluster; ``tuning``: a (family, level)'s Optuna
  search and final seeds; ``grid``: the families, budgets and plans of ``experiment`` and ``lengthgen``.

Imports point ``pipelines -> qrsu_models -> qrsu_data``, and inside ``pipelines`` from the commands to the
engine, never back.
"""
