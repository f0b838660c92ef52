"""The kernel's kstrtoull() (lib/kstrtox.c), so the files accept exactly what Linux accepts."""
from __future__ import annotations

import errno

ULLONG_MAX = (1 << 64) - 1

_DIGITS = {c: v for v, c in enumerate(b"0123456789abcdef")}
_DIGITS.update({c: v for v, c in enumerate(b"ABCDEF", start=10)})


def kstrtoull(data: bytes, base: int = 0) -> int:
    """Parse one written value as kstrtoull(s, base) does, base 0 or 10.

    Base 0 (the debugfs files): `0x`/`0X` followed by a hex digit means hex, another leading
    `0` means octal, anything else decimal. Base 10 (hugetlb's nr_hugepages, sysctls):
    decimal only, so `010` is ten and `0x10` is refused. One optional leading `+`, one optional trailing newline, nothing
    else: no spaces, no sign `-`, no second newline. A NUL byte ends a C string, where the
    kernel would stop reading; a write that has one carries something else, so it is refused.

    Raises OSError(EINVAL) for an empty value, no digits or trailing garbage, and
    OSError(ERANGE) for a value above 2**64-1 (overflow is reported before garbage, as the
    kernel parses all digits before it looks at what follows).
    """
    s = bytes(data)
    i = 0
    if s[:1] == b"+":
        i = 1
    # _parse_integer_fixup_radix()
    if base not in (0, 10):
        raise ValueError(f"base {base} is not supported")
    base = 10 if base == 0 and s[i:i + 1] != b"0" else base
    if base == 0:
        if s[i + 1:i + 2] in (b"x", b"X") and s[i + 2:i + 3] and _DIGITS.get(s[i + 2], 16) < 16:
            base = 16
            i += 2
        else:
            base = 8
    # _parse_integer(): as many digits of the base as there are.
    # Like the kernel, stop growing the value once it overflows (a long run of digits must
    # not cost quadratic time) but still consume the digits.
    start = i
    value = 0
    overflow = False
    while i < len(s):
        digit = _DIGITS.get(s[i], 16)
        if digit >= base:
            break
        if not overflow:
            value = value * base + digit
            overflow = value > ULLONG_MAX
        i += 1
    if i == start:
        raise OSError(errno.EINVAL, "not a number")
    if overflow:
        raise OSError(errno.ERANGE, "number above 2^64-1")
    if s[i:i + 1] == b"\n":
        i += 1
    if i != len(s):
        raise OSError(errno.EINVAL, "trailing characters after the number")
    return value
