"""The kernel's library helpers the files need (lib/kstrtox.c, lib/bitmap.c, the sysctl
integer parser), kept free of numpy so that the command line can import them cheaply."""
