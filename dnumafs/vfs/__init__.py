"""The file tree contract (tree), the kernel's number parser (kstrtox) and the FUSE adapter
(fuse_ops). Only fuse_ops imports fusepy, so the tree can be built and tested without FUSE."""
