"""The shared training engine under every training script, one module per responsibility.

A run: ``cli`` (every flag, ``--config``; parsing only) → ``run`` (resume, device, run folder,
identity) → ``data`` (loaders from the flags, the synthetic default, mirroring) → a task of
``tasks`` or ``distill`` (what one step computes) → ``engine`` (the loop: optimiser of ``optim``,
AMP and torchrun of ``device``, ``ema``, checkpoints through ``saver`` and ``checkpoint``,
``validation``, ``tracking``). ``losses``, ``metrics`` (the official BatVision protocol) and
``identity`` (run fingerprints) serve them; ``experiments`` builds the experiment tables.
"""
