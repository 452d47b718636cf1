"""Engine adapters: one module per engine behind one interface (see base.py)."""
