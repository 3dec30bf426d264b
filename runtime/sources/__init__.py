"""Frame sources: image folders, video files, live cameras and streams (`open_source` in open.py)."""
