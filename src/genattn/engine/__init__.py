"""Training, evaluation and checkpoints.

Entry points (import them from their modules): ``genattn.engine.train.train``, ``genattn.engine.test.test``,
``genattn.engine.evaluate.evaluate``. Helpers: ``checkpoint`` (atomic files, RNG states), ``schedule``
(warmup + step learning rate), ``distributed`` (torchrun setup, collectives), ``logger`` (log.json),
``preemption`` (mid-epoch checkpoint intervals, stopping on SIGTERM).
"""
