"""Map readers (PNG/JPEG mosaics, GeoTIFF), map imagery onboard, tile sets and the `skyloc tiles` command."""
