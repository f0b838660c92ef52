"""dnumafs: a model of Linux's NUMA page allocator with dynamic NUMA, shown as Linux's files.

dnumafs.mm is the model (no FUSE in it), dnumafs.files turns it into a tree of sysfs, debugfs
and procfs attributes, dnumafs.vfs serves such a tree through FUSE, and dnumafs.cli is the
command line.
"""

__version__ = "0.1.0"
