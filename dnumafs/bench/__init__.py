"""`make bench` (`python -m dnumafs.bench`): the model's speed and memory, and the file
system's through a real mount, measured, with the aims beside them.

The model rows time Machine calls in this process. The file-system rows mount dnumafs with
`dnumafs mount` (a daemon in its own process, as a user runs it) and drive it only through its
files, as the seed's dnuma-test script drove the debugfs files; reads are compared with LXCFS's
/proc/meminfo (the established FUSE daemon for such files, mounted here in a temp dir) and the
real sysfs file in the same run, as ratios, since absolute times depend on the machine (a FUSE
request is a round trip between two processes). Figures are medians of several runs.

model.py has the model's rows, fs.py the rows through real mounts, report.py the rows' type and
the table; __main__.py runs them.
"""
