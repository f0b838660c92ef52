"""The shared formats: the kernel's `%*pbl` and `%*pb` bitmap printers, meminfo lines."""
from __future__ import annotations

import pytest

from dnumafs.files.format import meminfo_kb, parse_indexed_name
from dnumafs.lib.bitmap import bitmap_list, bitmap_mask


@pytest.mark.parametrize("bits, text", [
    ([], ""),
    ([0], "0"),
    ([0, 1], "0-1"),
    ([0, 1, 2, 4], "0-2,4"),
    ([4, 2, 0, 1, 2], "0-2,4"),
    ([1, 3, 5], "1,3,5"),
    (range(8, 64), "8-63"),
])
def test_bitmap_list(bits, text):
    assert bitmap_list(bits) == text


@pytest.mark.parametrize("bits, nr_bits, text", [
    ([0, 1], 2, "3"),            # the spec's 2 CPUs
    ([0, 1, 2, 3], 8, "0f"),     # first word as wide as 8 bits need
    ([], 4, "0"),
    ([4, 5, 6, 7], 8, "f0"),
    ([0], 32, "00000001"),
    ([32], 33, "1,00000000"),
    ([0], 64, "00000000,00000001"),
    ([63], 64, "80000000,00000000"),
    ([255], 256, "80000000," + ",".join(["00000000"] * 7)),
    ([0, 35], 36, "8,00000001"),
])
def test_bitmap_mask(bits, nr_bits, text):
    assert bitmap_mask(bits, nr_bits) == text


def test_meminfo_kb():
    # `%-16s%8lu kB`, as show_val_kb(): the key padded to 16 columns, the number to 8.
    assert meminfo_kb("MemTotal", 1) == "MemTotal:              4 kB"
    assert meminfo_kb("MemAvailable", 1 << 20) == "MemAvailable:    4194304 kB"
    assert meminfo_kb("MemFree", 10 ** 8) == "MemFree:        400000000 kB"


@pytest.mark.parametrize("name, prefix, n", [
    ("node0", "node", 0),
    ("node12", "node", 12),
    ("layout.3", "layout.", 3),
    ("7", "", 7),
    ("node01", "node", None),     # not a name the kernel prints
    ("node", "node", None),
    ("node-1", "node", None),
    ("node+1", "node", None),
    ("node 1", "node", None),
    ("node\u0663", "node", None),  # a non-ASCII digit
    ("cpu0", "node", None),
    ("00", "", None),
])
def test_parse_indexed_name(name, prefix, n):
    assert parse_indexed_name(name, prefix) == n
