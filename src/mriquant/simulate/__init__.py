"""MR image simulation from anatomy: images made from label maps and tissue fractions.

- :mod:`mriquant.simulate.brainweb`: signal equations and a BrainWeb-style simulator (partial volume, bias
  field, Rician noise) of the BrainWeb crisp anatomical models;
- :mod:`mriquant.simulate.render`: images rendered from labels or class fractions, e.g. a head atlas in a
  scan's own contrast (used by the atlas skull stripper at run time) or a T1-like image of a FreeSurfer label
  map (to register label maps without images).

Run-time code (skull stripping) and build-time code (:mod:`mriquant.training`) use it; so does
:mod:`mriquant.testing`. It depends on :mod:`mriquant.core` only.
"""
