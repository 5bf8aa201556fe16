"""The shared training engine under every training script.

``engine`` (fit / validate loop, the :class:`~training.engine.Task` plug-in point), ``losses``,
``metrics`` (the official BatVision protocol), ``checkpoint`` (the checkpoint format, atomic
saves, weights-only loading), ``cli`` (the shared flags and the start of a run), ``data``
(datasets and loaders from the flags, the synthetic default, mirror augmentation), ``device``
(device, seeds, torchrun), ``tracking`` (tqdm, ``metrics.json``, optional W&B, pictures) and
``distill`` (knowledge distillation terms and task).
"""
