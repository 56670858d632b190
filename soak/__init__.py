"""Reliability soak for tavrida: faults, load and hostile input, with figures.

``python -m soak --url ...`` runs the scenarios of :mod:`soak.scenarios`,
:mod:`soak.hostile`, :mod:`soak.secrets` and :mod:`soak.poison` at soak sizes and prints a table
and a verdict; tests/integration/reliability/ runs the same at CI sizes.
Not part of the installed package.
"""
