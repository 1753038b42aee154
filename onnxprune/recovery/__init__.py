"""Recovery: repairing a pruned model without training (data-driven steps, data-free repair, least squares)."""
