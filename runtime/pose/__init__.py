"""Where the camera is and how it looks: camera models, attitude geometry, pose from EXIF/XMP, telemetry CSV and MAVLink."""
