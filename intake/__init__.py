"""The website's events in: parsing, validation and their application to the records.

An edge package: it imports ``core`` and ``models`` and writes no audit row; ``flows`` and
``psync`` call it and write the audit events it returns, in the same transaction, through
the one audit writer (``flows.common.write_audit``). ``intake.lines`` is the entry point;
one module per job holds its events and the store that applies them.
"""
