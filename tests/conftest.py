"""Root of the test tree.

Its being here puts ``tests/`` on ``sys.path`` (pytest's default import
mode), so the unit and integration modules import the one transport
contract, ``tests/transport_contract.py``.
"""
