"""The paper's findings, checked: ``python train.py findings`` (see :mod:`.cli`).

One job a module, each importing only those before it:

- :mod:`.rules`: verdicts from numbers and their intervals (the rules printed next to them);
- :mod:`.paper`: the paper's statements and numbers, as data;
- :mod:`.data`: a study's finished runs, replicates aggregated;
- :mod:`.claims`: the five findings and the regularizer table, checked;
- :mod:`.render`: ``findings.md`` and the report's findings section;
- :mod:`.cli`: the command.
"""
