"""mrw.replay: reissue a trace against an engine, under knobs, while metering energy."""
