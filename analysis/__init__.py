"""mrw.analysis: read run directories into tables and figures. Never talks to an engine."""
