"""The decode loop: prefill, then rounds of propose -> verify -> accept -> commit.

No I/O here: no HTTP, no metrics. The engine returns statistics; callers report them.
"""
