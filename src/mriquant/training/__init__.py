"""Build time: what produces the artefacts mriquant ships, never imported by a run.

- :mod:`mriquant.training.deep` (``mriquant train``) with :mod:`~mriquant.training.options`,
  :mod:`~mriquant.training.deep_cases` (training cases registered to MNI152) and
  :mod:`~mriquant.training.deep_augment` (augmented and synthetic samples): the dual-task network's weights;
- :mod:`mriquant.training.skullstrip` with :mod:`~mriquant.training.synth` (synthetic heads): the skull-strip
  U-Net's weights;
- :mod:`mriquant.training.atlas`: probabilistic atlases for ``segment --method atlas``;
- :mod:`mriquant.training.heads`: the head-atlas library of the atlas skull stripper.

Run-time code lives below (``models`` holds the network definitions and weight loading inference uses); the
import-linter contracts in ``pyproject.toml`` keep run time from importing this package (only the ``train``
subcommand of :mod:`mriquant.cli` does).
"""
