"""dnumafs play without a mount: the scenario file's checks (every error names its line and
step), the [[step]] header lines, the trace's form, and the marked_pages file over a model."""
from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from files_helpers import ML, Tree, boot

from dnumafs import cli, play
from dnumafs.mm.constants import PG_LOOKUP_NODE

SCENARIOS = Path(__file__).resolve().parent.parent / "examples" / "scenarios"


def error(text: str) -> str:
    with pytest.raises(play.ScenarioError) as e:
        play.parse(text, "s.toml")
    return str(e.value)


GOOD = """\
title = "t"
seed = 3
[machine]
mount = ["--nodes", "2"]

[[step]]
at = 0
do = "stripe"
first = 0
last = 2
pfns = 256

[[step]]   # a comment
at = 1.5
do = "hugepages"
count = 4
"""


def test_a_good_scenario_parses_whole():
    sc = play.parse(GOOD, "s.toml")
    assert (sc.title, sc.seed, sc.mount) == ("t", 3, ("--nodes", "2"))
    assert [(s.number, s.line, s.at, s.do, dict(s.args)) for s in sc.steps] == [
        (1, 6, Decimal(0), "stripe", {"first": 0, "last": 2, "pfns": 256}),
        (2, 13, Decimal("1.5"), "hugepages", {"count": 4}),
    ]


@pytest.mark.parametrize("step, message", [
    ('do = "fly"', '(fly): unknown step "fly" (one of: ranges, '),
    ('at = 1', '(?): missing key "do"'),
    ('do = "all-to"', '(all-to): missing key "at"'),
    ('at = 0\ndo = "all-to"', '(all-to): missing key "node"'),
    ('at = 0\ndo = "all-to"\nnode = "2"', '(all-to): node = "2": must be an integer'),
    ('at = 0\ndo = "all-to"\nnode = true', "node = true: must be an integer"),
    ('at = 0\ndo = "all-to"\nnode = -1', "node = -1: must be at least 0"),
    ('at = 0\ndo = "all-to"\nnode = 1\nnodes = 2', 'unknown key "nodes" (a all-to step '
                                                   "takes: node)"),
    ('at = 0\ndo = "stripe"\nfirst = 2\nlast = 1\npfns = 8', "(stripe): first is above last"),
    ('at = 0\ndo = "stripe"\nfirst = 0\nlast = 1\npfns = 0', "pfns = 0: must be at least 1"),
    ('at = -1\ndo = "wait"', "at = -1: must be a number of seconds from 0 to 86400 (a day"),
    ('at = 86400.5\ndo = "wait"', "at = 86400.5: must be a number of seconds from 0 to "),
    ('at = 1e9\ndo = "wait"', "at = 1000000000.0: must be a number of seconds from 0 to "),
    ('at = 0.1234567891\ndo = "wait"', "at = 0.1234567891: more than 9 decimal places"),
    ('at = nan\ndo = "wait"', "at = nan: must be a number"),
    ('at = "1"\ndo = "wait"', 'at = "1": must be a number'),
    ('at = 0\ndo = "block"\nblock = 1\nstate = "up"', 'state = "up": must be one of '
                                                      '"offline", "online"'),
    ('at = 0\ndo = "ranges"\nranges = [[3, 1, 0]]', "[3, 1, 0]: start is above end"),
    ('at = 0\ndo = "ranges"\nranges = [[0, 1]]', "[0, 1] is not [start, end, node]"),
    ('at = 0\ndo = "ranges"\nranges = []', "must be a non-empty list"),
    ('at = 0\ndo = "distance"\nnode = 0\nrow = [10, "20"]', 'row = [10, "20"]: must be a '
                                                            "non-empty list of integers"),
    ('at = 0\ndo = "workload"\ncommands = ["task a cpu 0", ""]', "none empty"),
    ('at = 0\ndo = "workload"\ncommands = 3', "must be a string or a non-empty list"),
])
def test_a_bad_step_is_named_by_its_line(step, message):
    # one good step first: the bad one is step 2, at the line of its header
    text = f"[[step]]\nat = 0\ndo = \"wait\"\n\n[[step]]\n{step}\n"
    assert error(text).startswith("s.toml:5: step 2 (")
    assert message in error(text)


@pytest.mark.parametrize("step, message", [
    ('at = true\ndo = "wait"', "s.toml:1: step 1 (wait): at = true: must be a number"),
    ('at = 1970-01-01\ndo = "wait"', "s.toml:1: step 1 (wait): at = 1970-01-01: must be"),
    ('at = 1979-05-27T07:32:00\ndo = "wait"', "at = 1979-05-27T07:32:00: must be"),
    ('at = 0\ndo = ["wait"]', 's.toml:1: step 1 (["wait"]): unknown step ["wait"] (one of'),
    ('at = 0\ndo = "drop-caches"\nmode = "0"', '(drop-caches): mode = "0": must be an integer'),
    ('at = 0\ndo = "drop-caches"\nmode = {a = 1}', "mode = {a = 1}: must be an integer"),
    ('at = inf\ndo = "wait"', "at = inf: must be a number"),
])
def test_values_are_told_as_toml_writes_them(step, message):
    assert message in error(f"[[step]]\n{step}\n")


def test_times_never_go_back():
    text = '[[step]]\nat = 2\ndo = "wait"\n[[step]]\nat = 1.5\ndo = "wait"\n'
    assert error(text) == "s.toml:4: step 2 (wait): at = 1.5 is before the step before (2)"


def test_the_whole_file_is_checked_before_anything_runs():
    """A typo at the last step refuses the scenario, whatever comes before it."""
    steps = "".join(f'[[step]]\nat = {i}\ndo = "drop-caches"\nmode = 1\n' for i in range(9))
    assert error(steps + '[[step]]\nat = 9\ndo = "drop-caches"\nmod = 1\n').startswith(
        's.toml:37: step 10 (drop-caches): unknown key "mod"')


@pytest.mark.parametrize("text, message", [
    ('[[step]]\nat = 0\ndo = = "wait"\n', "s.toml:3: Invalid value"),
    ('speed = 2\n[[step]]\nat = 0\ndo = "wait"\n', 's.toml: unknown key "speed"'),
    ('seed = "1"\n[[step]]\nat = 0\ndo = "wait"\n', "s.toml: seed must be an integer"),
    ('seed = -1\n[[step]]\nat = 0\ndo = "wait"\n', "s.toml: seed must be from 0 to "),
    ('seed = 18446744073709551616\n[[step]]\nat = 0\ndo = "wait"\n',
     "s.toml: seed must be from 0 to 18446744073709551615"),
    ('[machine]\nmount = "--nodes 2"\n[[step]]\nat = 0\ndo = "wait"\n',
     "s.toml: machine.mount must be a list of strings"),
    ('[machine]\nmem = "1G"\n[[step]]\nat = 0\ndo = "wait"\n', "s.toml: unknown key machine.mem"),
    ('title = "nothing"\n', "s.toml: no [[step]]: nothing to play"),
    ('step = [{at = 0, do = "wait"}]\n', "s.toml: write each step as a [[step]] table"),
    ('[step]\nat = 0\ndo = "wait"\n', "s.toml: step must be an array of tables"),
])
def test_a_bad_file_is_refused(text, message):
    assert error(text).startswith(message)


def test_step_headers_inside_strings_and_comments_are_not_steps():
    text = ('a = """\n[[step]]\n"""\nb = \'\'\'\n[[step]]\n\'\'\'\n'
            'c = "[[step]]" # [[step]]\n# [[step]]\nd = """ \\""" [[step]] """\n'
            '[[step]]\n  [[ step ]] # two\n')
    assert play.step_header_lines(text) == [10, 11]


def test_every_example_parses_and_names_its_machine():
    files = sorted(SCENARIOS.glob("*.toml"))
    assert len(files) >= 6
    for path in files:
        sc = play.load(str(path))
        assert sc.title and sc.steps, path
        assert isinstance(sc.mount, tuple)


def test_a_missing_file_is_an_error_with_its_errno(tmp_path):
    with pytest.raises(play.ScenarioError) as e:
        play.load(str(tmp_path / "none.toml"))
    assert str(e.value) == f"{tmp_path / 'none.toml'}: No such file or directory (ENOENT)"


def test_trace_line_is_sorted_json_of_the_step_and_figures():
    line = play.trace_line(2, 14, Decimal("0.5"), "all-to", {"node": 2},
                           {"nodes": {"10": {"cpus": ""}, "2": {"cpus": "0-1"}},
                            "moved_pages": 7})
    assert line.endswith("\n") and "\n" not in line[:-1]
    assert json.loads(line) == {"step": 2, "line": 14, "at": 0.5, "do": "all-to",
                                "args": {"node": 2}, "moved_pages": 7,
                                "nodes": {"10": {"cpus": ""}, "2": {"cpus": "0-1"}}}
    assert line == json.dumps(json.loads(line), sort_keys=True) + "\n"


# --- debugfs dnumafs/marked_pages -------------------------------------------------------------

def marked_file(t: Tree) -> dict[int, int]:
    return {int(nid): int(n) for nid, n in
            (line.split() for line in t.read("/sys/kernel/debug/dnumafs/marked_pages")
             .splitlines())}


def flag_counts(t: Tree) -> dict[int, int]:
    m = t.m
    marked = (m.page_flags & PG_LOOKUP_NODE) != 0
    nids, counts = np.unique(m.page_node[marked], return_counts=True)
    return dict(zip(nids.tolist(), counts.tolist(), strict=True))


def test_marked_pages_count_the_pages_a_commit_marked_and_drain_as_they_are_freed():
    t = Tree(boot(nodes=2, mem=64 << 20, cpus=4, possible_nodes=4))
    assert t.read("/sys/kernel/debug/dnumafs/marked_pages") == ""
    half = t.m.max_pfn // 2
    for name, value in (("start", half), ("end", t.m.max_pfn - 1), ("node", 2),
                        ("commit", 1)):
        assert t.write(f"{ML}/{name}", f"{value}\n") is None
    marked = marked_file(t)
    # every allocated page of node 1 in the range was marked: the commit's own count of them
    bail = int(t.read(f"{ML}/stats/transplant-bail-page-not-buddy"))
    assert list(marked) == [1] and marked[1] == bail > 0
    assert marked == flag_counts(t)
    on_free = int(t.read(f"{ML}/stats/transplant-on-free"))
    assert t.write("/proc/sys/vm/drop_caches", "3\n") is None
    freed = int(t.read(f"{ML}/stats/transplant-on-free")) - on_free
    assert freed > 0
    assert marked_file(t) == flag_counts(t) == {1: marked[1] - freed}
    assert t.m.check() == []


def test_a_day_of_model_time_is_the_most_a_scenario_plays():
    sc = play.parse('[[step]]\nat = 86400\ndo = "wait"\n', "s.toml")
    assert sc.steps[-1].at == play.AT_MAX == 86400


@pytest.mark.parametrize("speed", ["1e-300", "0.0009", "-1", "nan", "-inf", "fast"])
def test_an_unusable_speed_is_refused_up_front(speed, capsys):
    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args(["play", "mnt", "s.toml", "--speed", speed])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument --speed" in err and "Traceback" not in err


@pytest.mark.parametrize("speed, value", [("0", 0.0), ("inf", float("inf")), ("0.001", 0.001),
                                          ("1e300", 1e300)])
def test_a_usable_speed_is_taken(speed, value):
    assert cli.build_parser().parse_args(["play", "mnt", "s.toml", "--speed", speed]
                                         ).speed == value


def test_a_long_wait_is_slept_in_bounded_pieces(monkeypatch):
    """A day's step at the slowest speed: time.sleep is never asked for more than SLEEP_MAX
    (a sleep too long for it is an OverflowError), and the wait ends when it should."""
    now = [0.0]
    asked: list[float] = []

    def sleep(s: float) -> None:
        asked.append(s)
        now[0] += s
    monkeypatch.setattr(play.time, "sleep", sleep)
    monkeypatch.setattr(play.time, "monotonic", lambda: now[0])
    sc = play.parse('[[step]]\nat = 0\ndo = "wait"\n', "s.toml")
    player = play.Player(None, sc, 0, play.SPEED_MIN)  # type: ignore[arg-type]
    player._sleep_until(0.0, Decimal(play.AT_MAX))
    assert max(asked) <= play.SLEEP_MAX
    assert now[0] == pytest.approx(play.AT_MAX / play.SPEED_MIN)
