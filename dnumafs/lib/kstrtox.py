"""The kernel's integer parsing (lib/kstrtox.c), so the files accept exactly what Linux accepts."""
from __future__ import annotations

import errno

ULLONG_MAX = (1 << 64) - 1

_DIGITS = {c: v for v, c in enumerate(b"0123456789abcdef")}
_DIGITS.update({c: v for v, c in enumerate(b"ABCDEF", start=10)})


def digit_value(c: int) -> int:
    """The value of one digit character, 16 for anything that is no digit of any base."""
    return _DIGITS.get(c, 16)


def parse_integer_fixup_radix(s: bytes, i: int, base: int) -> tuple[int, int]:
    """_parse_integer_fixup_radix(): base 0 means `0x` plus a hex digit is hex, another
    leading `0` octal, else decimal. Returns the base and where the digits start."""
    if base != 0:
        return base, i
    if s[i:i + 1] != b"0":
        return 10, i
    if s[i + 1:i + 2] in (b"x", b"X") and digit_value(s[i + 2] if i + 2 < len(s) else 0) < 16:
        return 16, i + 2
    return 8, i


def parse_integer(s: bytes, i: int, base: int) -> tuple[int, int, bool]:
    """_parse_integer(): as many digits of base as there are from i. Returns the value, where
    the digits end and whether the value overflowed 2**64-1. Like the kernel, it stops growing
    the value once it overflows (a long run of digits must not cost quadratic time) but still
    consumes the digits."""
    value = 0
    overflow = False
    while i < len(s):
        digit = digit_value(s[i])
        if digit >= base:
            break
        if not overflow:
            value = value * base + digit
            overflow = value > ULLONG_MAX
        i += 1
    return value, i, overflow


def kstrtoull(data: bytes, base: int = 0) -> int:
    """Parse one written value as kstrtoull(s, base) does, base 0 or 10.

    Base 0 (the debugfs files): `0x`/`0X` followed by a hex digit means hex, another leading
    `0` means octal, anything else decimal. Base 10 (hugetlb's nr_hugepages): decimal only, so
    `010` is ten and `0x10` is refused. One optional leading `+`, one optional trailing
    newline, nothing else: no spaces, no sign `-`, no second newline, no NUL (the file system
    has already cut a C string at its NUL, see vfs.tree.FileSystem).

    Raises OSError(EINVAL) for an empty value, no digits or trailing garbage, and
    OSError(ERANGE) for a value above 2**64-1 (overflow is reported before garbage, as the
    kernel parses all digits before it looks at what follows).
    """
    if base not in (0, 10):
        raise ValueError(f"base {base} is not supported")
    s = bytes(data)
    i = 1 if s[:1] == b"+" else 0
    base, i = parse_integer_fixup_radix(s, i, base)
    value, end, overflow = parse_integer(s, i, base)
    if end == i:
        raise OSError(errno.EINVAL, "not a number")
    if overflow:
        raise OSError(errno.ERANGE, "number above 2^64-1")
    if s[end:end + 1] == b"\n":
        end += 1
    if end != len(s):
        raise OSError(errno.EINVAL, "trailing characters after the number")
    return value


def kstrtobool(buf: bytes) -> bool:
    """kstrtobool() (lib/kstrtox.c): decided by the first character (1/y/t true, 0/n/f false,
    either case), or for o/O by the second (on, off)."""
    first, second = buf[:1].lower(), buf[1:2].lower()
    if first in (b"1", b"y", b"t") or (first == b"o" and second == b"n"):
        return True
    if first in (b"0", b"n", b"f") or (first == b"o" and second == b"f"):
        return False
    raise OSError(errno.EINVAL, f"{buf!r} is not a boolean")
