"""The kernel's sysctl integer parser (kernel/sysctl.c), for the files under /proc/sys."""
from __future__ import annotations

import errno

from .kstrtox import parse_integer, parse_integer_fixup_radix

INT_MAX = (1 << 31) - 1
TMPBUFLEN = 22                      # proc_get_long() looks at most at 21 characters
SPACES = b" \t\n\v\f\r\xa0"         # the kernel's isspace() (0xa0 is a space in its ctype)
SEPARATORS = b" \t\n"               # proc_wspace_sep: what may follow a number


def _skip_spaces(s: bytes, i: int) -> int:
    while i < len(s) and s[i] in SPACES:
        i += 1
    return i


def proc_dointvec_minmax(data: bytes, lo: int, hi: int) -> int:
    """One int written to a sysctl, as proc_dointvec_minmax() takes it: whitespace around it
    skipped, base 0 (`0x3`, `03`), an optional `-` but no `+`; EINVAL for anything else, a
    number of 21 characters or more, or a value outside [lo, hi].

    The kernel stops at a second value and returns a short write, which makes the writer
    send the rest again as a new value; here a second value is refused with EINVAL.
    """
    s = bytes(data)
    i = _skip_spaces(s, 0)
    if i == len(s):
        raise OSError(errno.EINVAL, "no value")
    tmp = s[i:i + TMPBUFLEN - 1]
    j = 0
    neg = tmp[:1] == b"-" and len(s) - i > 1
    if neg:
        j = 1
    if not tmp[j:j + 1].isdigit():
        raise OSError(errno.EINVAL, "not a number")
    base, j = parse_integer_fixup_radix(tmp, j, 0)
    value, end, overflow = parse_integer(tmp, j, base)
    if overflow or end == TMPBUFLEN - 1:
        raise OSError(errno.EINVAL, "number too long")
    if end < len(tmp) and tmp[end] not in SEPARATORS:
        raise OSError(errno.EINVAL, "trailing characters after the number")
    if value > INT_MAX + neg:
        raise OSError(errno.EINVAL, "not an int")
    value = -value if neg else value
    if _skip_spaces(s, i + end) != len(s):
        raise OSError(errno.EINVAL, "more than one value")
    if not lo <= value <= hi:
        raise OSError(errno.EINVAL, f"value outside {lo}..{hi}")
    return value
