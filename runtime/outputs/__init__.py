"""Where fixes go: the fix schema, JSON lines, UDP, MAVLink GPS_INPUT, NMEA, track files."""
