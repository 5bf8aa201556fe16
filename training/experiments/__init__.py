"""The experiment table behind ``run_experiments.py``: presets, runs reused only when their
identity matches, test scores under two metric protocols, tables, goal checks and pictures.

A preset (:data:`presets.PRESETS`) lists experiments. Each experiment is one training script run
with a config file of the preset's ``config_dir`` (e.g. ``configs/synthetic/student.yaml``) plus
its own flags, once per seed; the preset adds the sizes every run shares (image size, batch,
epochs, depth range, world). The runner calls the repository's command lines (``train_*.py``,
``evaluate.py``) in child processes and prints each one, so any run can be repeated by hand.

Reuse. Before a run is trained, the runner computes the identity that run would record
(:func:`training.run.expected_identity`, by the training scripts' own resolution of their
arguments: the resolved flags, the data's fingerprint and, for distillation, the teacher
checkpoint's fingerprint) and compares it with the identity in the run folder's
``last_model.pth``: equal and finished, the run is reused; equal and cut short, it is resumed;
different or not recorded, it is trained afresh with ``--overwrite`` or, with
``--on_mismatch stop``, the runner stops with one line listing the differences. A student whose
teacher was retrained has another teacher fingerprint, so it is retrained too. A test evaluation
is reused only while its ``metrics.json`` records the fingerprints of the checkpoint and of the
test split now on disk, and the metrics of every protocol of :data:`training.metrics.PROTOCOLS`.

Modules, each building on those before it:

- :mod:`.presets`: the rows (:class:`~.presets.Experiment`) and presets, and the command line's
  overrides of them;
- :mod:`.runs`: each run's command line, the reuse decision, launching scripts, and training
  several runs at once;
- :mod:`.scoring`: test evaluations, costs, the depth-prior reference rows and the summary over
  seeds;
- :mod:`.report`: goal checks, ``results.csv``, ``results.md``, the chart and the pictures;
- :mod:`.main`: ``run_experiments.py``'s flags and the table from runs to pictures.
"""
