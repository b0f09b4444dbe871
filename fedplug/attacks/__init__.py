"""Byzantine clients as plug-ins (section `attack`, docs/robustness.md): one file per attack.

Only `schemas` is imported when attacks are off; `attack.type` imports the one attack chosen.
"""
