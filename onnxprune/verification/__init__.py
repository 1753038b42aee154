"""Verification: validity and fidelity of the pruned model against the original."""
