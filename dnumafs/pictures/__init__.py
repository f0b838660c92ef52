"""Pictures of a mounted machine and of a trace: `dnumafs map` (map.py: every pfn by node and
state, from proc/kpageflags and the page_nid debugfs file) and `dnumafs plot` (plot.py: a
`dnumafs play --trace` over model time). Written directly: SVG as text (svg.py) and PNG with
zlib and numpy (png.py), so nothing needs a display or an imaging library."""
