"""The fusetrace pytest plugin, run by `pytester` on test files written here: record modes
and their precedence, recording through a real mount, replay without one, a failing replay
shown decoded, serve mode's closest recorded request, new_episodes and all."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from inspector.pytest_plugin import RecordMode, resolve_mode

from record_support import mount_test

pytest_plugins = ["pytester"]

SERVER = ("[sys.executable, '-m', 'inspector.passthroughfs', '{tmp}', '{mountpoint}', "
          "'--no-passthrough', *EXTRA]")
TEST_FILE = '''
import os, sys
from pathlib import Path
import pytest

EXTRA = os.environ.get("FT_EXTRA", "").split()
MORE = os.environ.get("FT_MORE") == "1"

@pytest.mark.fusetrace(%(marker)s)
def test_files(fusetrace):
    def workload(mnt: Path) -> int:
        (mnt / "d").mkdir()
        (mnt / "d" / "f").write_text("hello")
        assert (mnt / "d" / "f").read_text() == "hello"
        if MORE:
            os.path.exists(mnt / "missing")
        return os.stat(mnt / "d" / "f").st_size
    out = fusetrace.run(workload)
    print(f"ACTION={out.action} RESULT={out.result}")
'''
VALID = "(valid: none, once, new_episodes, all)"


def write_test(pytester: pytest.Pytester, marker: str) -> Path:
    return pytester.makepyfile(test_plugin_inner=TEST_FILE % {"marker": marker})


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """The inner session in its own process, as CI would run it."""
    return pytester.runpytest_subprocess("-s", "-p", "no:cacheprovider", *args, timeout=90)


def action(result: pytest.RunResult) -> str:
    found = re.findall(r"ACTION=([a-z ()]+?) RESULT=", result.stdout.str())
    assert len(found) == 1, result.stdout.str()
    return found[0]


# --- record modes, without mounting ------------------------------------------------------

def test_resolve_mode_precedence() -> None:
    assert resolve_mode("none", "once", "all") is RecordMode.NONE
    assert resolve_mode(None, "once", "all") is RecordMode.ONCE
    assert resolve_mode(None, None, "new_episodes") is RecordMode.NEW_EPISODES
    assert resolve_mode(None, None, "") is RecordMode.NONE


def test_an_invalid_mode_on_the_command_line_lists_the_valid_ones(pytester: pytest.Pytester) -> None:
    write_test(pytester, f"'x.fzt', server={SERVER}")
    result = run(pytester, "--fusetrace-record-mode=sometimes")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--fusetrace-record-mode: invalid fusetrace record mode "
                                 f"'sometimes' {VALID}*"])


def test_an_invalid_mode_in_the_ini_file_lists_the_valid_ones(pytester: pytest.Pytester) -> None:
    write_test(pytester, f"'x.fzt', server={SERVER}")
    pytester.makeini("[pytest]\nfusetrace_record_mode = twice\n")
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*ini option fusetrace_record_mode: invalid fusetrace record "
                                 f"mode 'twice' {VALID}*"])


def test_an_invalid_mode_in_the_marker_fails_that_test(pytester: pytest.Pytester) -> None:
    write_test(pytester, f"'x.fzt', server={SERVER}, record_mode='often'")
    result = run(pytester)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*record_mode=...): invalid fusetrace record mode 'often' "
                                 f"{VALID}*"])


def test_mode_none_fails_on_a_missing_trace(pytester: pytest.Pytester) -> None:
    write_test(pytester, f"'recorded/x.fzt', server={SERVER}")
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*recorded/x.fzt: no such trace, and fusetrace record mode "
                                 "'none' only replays; record it with "
                                 "--fusetrace-record-mode=once*"])
    assert not (pytester.path / "recorded").exists()


@pytest.mark.parametrize("option, marker, ini, expected", [
    ("none", "once", "all", "none"),
    (None, "once", "all", "once"),
    (None, None, "all", "all"),
    (None, None, None, "none"),
])
def test_command_line_beats_marker_beats_ini(pytester: pytest.Pytester, option: str | None,
                                             marker: str | None, ini: str | None,
                                             expected: str) -> None:
    mode = f", record_mode={marker!r}" if marker else ""
    pytester.makepyfile(test_mode=f'''
import pytest

@pytest.mark.fusetrace("x.fzt", server=["fs", "{{mountpoint}}"]{mode})
def test_mode(fusetrace):
    assert fusetrace.mode.value == {expected!r}
''')
    if ini:
        pytester.makeini(f"[pytest]\nfusetrace_record_mode = {ini}\n")
    result = run(pytester, *([f"--fusetrace-record-mode={option}"] if option else []))
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(["*marked fusetrace but never called fusetrace.run(workload)*"])


def test_the_marker_is_declared_with_help(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.fusetrace(path=None, *, server=None, "
                                 "record_mode=None, serve=False*"])


# --- with real mounts ----------------------------------------------------------------------

@mount_test
def test_once_records_through_a_mount_then_replays_without_one(pytester: pytest.Pytester) -> None:
    write_test(pytester, f"'recorded/files.fzt', server={SERVER}, record_mode='once'")
    first = run(pytester)
    first.assert_outcomes(passed=1)
    assert action(first) == "recorded"
    first.stdout.fnmatch_lines(["*- fusetrace -*",
                                "test_plugin_inner.py::test_files: recorded */recorded/files.fzt"])
    trace = pytester.path / "recorded" / "files.fzt"
    recorded = trace.read_bytes()
    second = run(pytester)
    second.assert_outcomes(passed=1)
    assert action(second) == "replayed"
    assert "RESULT=None" in second.stdout.str()  # the workload did not run
    assert trace.read_bytes() == recorded


@mount_test
def test_a_failing_replay_shows_the_first_differing_reply_decoded(pytester: pytest.Pytester,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    write_test(pytester, f"server={SERVER}")
    assert action(run(pytester, "--fusetrace-record-mode=once")) == "recorded"
    assert (pytester.path / "fusetrace-traces" / "test_plugin_inner" / "test_files.fzt").exists()
    monkeypatch.setenv("FT_EXTRA", "--misbehave wrong-size")
    result = run(pytester)
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert re.search(r"fusetrace replay of \S+test_files.fzt found \d+ differences? from the "
                     r"recorded session", out), out
    assert re.search(r"first difference, record \d+: reply: GETATTR ", out), out
    assert re.search(r"field +recorded +replayed", out), out
    assert re.search(r"≠ fuse_attr_out\.attr\.size +5 +6", out), out
    assert "Traceback" not in out


@mount_test
def test_serve_mode_names_the_closest_recorded_request(pytester: pytest.Pytester,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    write_test(pytester, f"'recorded/files.fzt', server={SERVER}, serve=True")
    assert action(run(pytester, "--fusetrace-record-mode=once")) == "recorded"
    again = run(pytester)
    again.assert_outcomes(passed=1)
    assert action(again) == "served and replayed"
    assert "RESULT=5" in again.stdout.str()  # the workload ran on the served trace
    monkeypatch.setenv("FT_MORE", "1")
    result = run(pytester)
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "the workload asked what the trace cannot answer (1 unmatched, answered EIO" in out
    assert "  LOOKUP nodeid=1 name='missing'" in out
    assert re.search(r"closest recorded: #\d+ LOOKUP nodeid=1 name='d'", out), out
    assert "name: 'missing' here, 'd' recorded" in out


@mount_test
def test_new_episodes_records_again_only_when_the_workload_outgrew_the_trace(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    write_test(pytester, f"'recorded/files.fzt', server={SERVER}, record_mode='new_episodes'")
    assert action(run(pytester)) == "recorded"
    trace = pytester.path / "recorded" / "files.fzt"
    recorded = trace.read_bytes()
    same = run(pytester)
    same.assert_outcomes(passed=1)
    assert action(same) == "served and replayed"
    assert trace.read_bytes() == recorded
    monkeypatch.setenv("FT_MORE", "1")
    more = run(pytester)
    more.assert_outcomes(passed=1)
    assert action(more).startswith("recorded again")
    assert trace.read_bytes() != recorded


@mount_test
def test_all_records_every_time(pytester: pytest.Pytester) -> None:
    write_test(pytester, f"'recorded/files.fzt', server={SERVER}")
    trace = pytester.path / "recorded" / "files.fzt"
    assert action(run(pytester, "--fusetrace-record-mode=all")) == "recorded"
    first = trace.read_bytes()
    assert action(run(pytester, "--fusetrace-record-mode=all")) == "recorded again"
    assert trace.read_bytes() != first  # new timestamps, new inode numbers


def test_the_plugin_is_registered_by_entry_point() -> None:
    from importlib.metadata import entry_points

    [ep] = [ep for ep in entry_points(group="pytest11") if ep.name == "fusetrace"]
    assert ep.value == "inspector.pytest_plugin"
    assert sys.modules.get("inspector.pytest_plugin") is not None  # loaded in this session
    assert os.path.basename(ep.load().__file__) == "pytest_plugin.py"
