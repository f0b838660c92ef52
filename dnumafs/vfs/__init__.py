"""The file tree contract (tree), the operations on its paths (fuse_ops), the FUSE protocol
and mount (session) and the page cache's notices (pagecache). The tree needs no FUSE: it can
be built and tested without a mount."""
