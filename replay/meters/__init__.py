"""Energy and resource meters: one module per source behind one interface."""
