"""Test environments: one imgtool.yaml naming VMs and networks (spec), and what `up` must do about it (plan)."""
