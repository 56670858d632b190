"""Reliability soak for tavrida: faults, load and hostile input, with figures.

``python -m soak --url ...`` runs the scenarios of :mod:`soak.scenarios`,
:mod:`soak.hostile` and :mod:`soak.secrets` at soak sizes and prints a table
and a verdict; tests/integration/reliability/ runs the same at CI sizes.
Not part of the installed package.
"""
