"""pytest plugin: FUSE sessions recorded once and replayed in CI, like vcrpy cassettes.

    @pytest.mark.fusetrace("traces/listing.fzt",
                           server=[sys.executable, "myfs.py", "{tmp}", "{mountpoint}"])
    def test_listing(fusetrace):
        def workload(mnt: Path) -> None:
            (mnt / "f").write_text("hi")
            assert os.listdir(mnt) == ["f"]
        fusetrace.run(workload)

Recording mounts the server under `fusetrace record` and runs the workload through the
mount (needs FUSE mounts: root, or fusermount3). Replaying runs the recorded requests
against the server with nothing mounted (`inspector.replay`) and fails the test with the
first differing reply, decoded, both sides. With `serve=True` the workload also runs
against the trace mounted as a mock filesystem (`fusetrace serve`), and a request the
trace cannot answer fails the test with the closest recorded request.

Record modes (`RecordMode`), chosen by the command line (`--fusetrace-record-mode`), else
the marker (`record_mode=`), else the ini option `fusetrace_record_mode`, else `none`:
- none: replay only; a missing trace fails the test;
- once: record when the trace is missing, else replay;
- new_episodes: record when missing; else run the workload on the served trace first, and
  record again (the whole session: a FUSE session cannot be extended piecewise) when it
  asks anything the trace cannot answer; replay otherwise;
- all: record every time.

Server command lines take `{mountpoint}` (a fresh empty directory) and `{tmp}` (another
one, e.g. a passthrough server's source, so every run starts from the same state).
"""

from __future__ import annotations

import enum
import json
import os
import re
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

MARKER = "fusetrace"
INI_MODE = "fusetrace_record_mode"
#: Default folder of traces, beside the test file. Not `traces/`: with `python -m pytest`
#: the test's folder is on sys.path, and a `traces/` there shadows fusetrace's package.
TRACE_DIR = "fusetrace-traces"


class RecordMode(str, enum.Enum):
    NONE = "none"
    ONCE = "once"
    NEW_EPISODES = "new_episodes"
    ALL = "all"

    @classmethod
    def parse(cls, value: object, where: str) -> RecordMode:
        """A mode from its name; anything else fails loudly, listing the valid names."""
        try:
            return cls(value)
        except ValueError:
            valid = ", ".join(m.value for m in cls)
            raise pytest.UsageError(f"{where}: invalid fusetrace record mode {value!r} "
                                    f"(valid: {valid})") from None


class FusetraceWarning(pytest.PytestWarning):
    """A test marked `fusetrace` that never ran its workload."""


def resolve_mode(command_line: str | None, marker: str | None, ini: str | None) -> RecordMode:
    """Command line > marker > ini > `none`."""
    for value, where in ((command_line, "--fusetrace-record-mode"),
                         (marker, "@pytest.mark.fusetrace(record_mode=...)"),
                         (ini, f"ini option {INI_MODE}")):
        if value:
            return RecordMode.parse(value, where)
    return RecordMode.NONE


# --- hooks --------------------------------------------------------------------------------

def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fusetrace", "FUSE session record/replay (fusetrace)")
    group.addoption("--fusetrace-record-mode", dest="fusetrace_record_mode", default=None,
                    metavar="MODE",
                    help="none (replay only), once (record missing traces), new_episodes "
                         "(re-record traces the workload outgrew), all (always record); "
                         "overrides the marker's record_mode and the ini option")
    parser.addini(INI_MODE, "default fusetrace record mode (none, once, new_episodes, all)",
                  default="")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "fusetrace(path=None, *, server=None, record_mode=None, serve=False, masks=(), "
        "timeout=10.0, snaplen=0): record this test's FUSE workload into the trace at path "
        "(relative to the test file; default fusetrace-traces/MODULE/TEST.fzt) or replay it against "
        "server (argv with {mountpoint} and {tmp}); serve=True also runs the workload on the "
        "trace mounted as a mock filesystem")
    for value, where in ((config.getoption("fusetrace_record_mode"), "--fusetrace-record-mode"),
                         (config.getini(INI_MODE), f"ini option {INI_MODE}")):
        if value:
            RecordMode.parse(value, where)  # fail at start-up, not in every test
    config.stash[_ACTIONS] = []


_ACTIONS = pytest.StashKey[list[tuple[str, str]]]()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    actions = config.stash.get(_ACTIONS, [])
    recorded = [(node, what) for node, what in actions if what.startswith("recorded")]
    if recorded:
        terminalreporter.write_sep("-", "fusetrace")
        for node, what in recorded:
            terminalreporter.write_line(f"{node}: {what}")


@pytest.fixture
def fusetrace(request: pytest.FixtureRequest,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cassette]:
    """The test's trace and its `run(workload)`: records or replays per the record mode."""
    marker = request.node.get_closest_marker(MARKER)
    if marker is None:
        raise pytest.UsageError(f"{request.node.nodeid}: the fusetrace fixture needs "
                                "@pytest.mark.fusetrace(...)")
    options = MarkerOptions.of(marker, request.node)
    mode = resolve_mode(request.config.getoption("fusetrace_record_mode"), options.record_mode,
                        request.config.getini(INI_MODE))
    cassette = Cassette(options, mode, tmp_path_factory, request.node.nodeid,
                        request.config.stash[_ACTIONS])
    yield cassette
    if not cassette.called:
        warnings.warn(FusetraceWarning(f"{request.node.nodeid} is marked fusetrace but never "
                                       "called fusetrace.run(workload)"))


# --- the marker ---------------------------------------------------------------------------

@dataclass
class MarkerOptions:
    path: Path
    server: list[str] | None
    record_mode: str | None
    serve: bool
    masks: list[str]
    timeout: float
    snaplen: int

    @classmethod
    def of(cls, marker: pytest.Mark, node: pytest.Item) -> MarkerOptions:
        kwargs = dict(marker.kwargs)
        known = {"path", "server", "record_mode", "serve", "masks", "timeout", "snaplen"}
        unknown = set(kwargs) - known
        if unknown or len(marker.args) > 1:
            raise pytest.UsageError(f"{node.nodeid}: @pytest.mark.fusetrace takes a path and "
                                    f"{', '.join(sorted(known - {'path'}))}; got "
                                    f"{sorted(unknown) or marker.args}")
        path = marker.args[0] if marker.args else kwargs.get("path")
        base = node.path.parent
        trace = Path(path) if path else Path(TRACE_DIR) / node.path.stem / f"{_slug(node.name)}.fzt"
        server = kwargs.get("server")
        if server is not None and (isinstance(server, str) or not all(
                isinstance(a, (str, os.PathLike)) for a in server)):
            raise pytest.UsageError(f"{node.nodeid}: fusetrace server= wants a list of "
                                    "arguments, e.g. [sys.executable, 'fs.py', '{mountpoint}']")
        return cls(path=trace if trace.is_absolute() else base / trace,
                   server=[os.fspath(a) for a in server] if server is not None else None,
                   record_mode=kwargs.get("record_mode"), serve=bool(kwargs.get("serve")),
                   masks=list(kwargs.get("masks", ())), timeout=float(kwargs.get("timeout", 10.0)),
                   snaplen=int(kwargs.get("snaplen", 0)))


def _slug(name: str) -> str:
    """A test name (parameters included) as a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "test"


# --- one test's trace -----------------------------------------------------------------------

@dataclass
class Outcome:
    """What `run` did: `action` is "recorded", "replayed" or "served and replayed" …"""

    action: str
    result: Any = None  # what the workload returned, when it ran
    replay: Any = None  # the ReplayReport, when the server was replayed
    serve: dict[str, Any] | None = None  # the serve report, when the workload was served


@dataclass
class Cassette:
    options: MarkerOptions
    mode: RecordMode
    tmp_factory: pytest.TempPathFactory
    nodeid: str
    actions: list[tuple[str, str]]
    called: bool = field(default=False)

    @property
    def path(self) -> Path:
        return self.options.path

    def run(self, workload: Callable[[Path], Any]) -> Outcome:
        """Record or replay per the mode; fails the test (pytest.fail) on a difference."""
        self.called = True
        exists = self.path.exists()
        if self.mode is RecordMode.ALL or not exists and self.mode is not RecordMode.NONE:
            outcome = self._record(workload, "recorded" if not exists else "recorded again")
        elif not exists:
            pytest.fail(f"{self.path}: no such trace, and fusetrace record mode 'none' only "
                        "replays; record it with --fusetrace-record-mode=once", pytrace=False)
        elif self.mode is RecordMode.NEW_EPISODES:
            outcome = self._new_episodes(workload)
        else:
            outcome = self._replay(workload)
        self.actions.append((self.nodeid, f"{outcome.action} {self.path}"))
        return outcome

    def _new_episodes(self, workload: Callable[[Path], Any]) -> Outcome:
        served = self._serve(workload, fail=False)
        if served.serve and served.serve["ok"]:
            return self._replay(None, served)
        return self._record(workload, "recorded again (the workload asked what the trace "
                                      "could not answer)")

    def _replay(self, workload: Callable[[Path], Any] | None,
                served: Outcome | None = None) -> Outcome:
        if served is None and self.options.serve and workload is not None:
            served = self._serve(workload, fail=True)
        outcome = served or Outcome("replayed")
        if self.options.server is None:
            if served is None:
                pytest.fail(f"{self.nodeid}: nothing to replay: @pytest.mark.fusetrace needs "
                            "server=[...] (or serve=True)", pytrace=False)
            return outcome
        from inspector.replay import Masks, replay

        argv, mnt = self._server_argv()
        try:
            masks = Masks(self.options.masks)
        except ValueError as exc:
            raise pytest.UsageError(f"{self.nodeid}: fusetrace masks: {exc}") from None
        report = replay(self.path, argv, masks=masks, timeout=self.options.timeout,
                        mountpoint=str(mnt))
        outcome.replay = report
        outcome.action = "served and replayed" if served else "replayed"
        if not report.ok:
            pytest.fail(_replay_failure(self.path, report), pytrace=False)
        return outcome

    # --- with a mount ---------------------------------------------------------------------

    def _record(self, workload: Callable[[Path], Any], action: str) -> Outcome:
        from inspector.running import recorded_server

        if self.options.server is None:
            pytest.fail(f"{self.nodeid}: cannot record {self.path}: @pytest.mark.fusetrace "
                        "needs server=[...]", pytrace=False)
        argv, mnt = self._server_argv()
        partial = self.tmp_factory.mktemp("fusetrace-record") / self.path.name
        options = ("-s", str(self.options.snaplen), "--mountpoint", str(mnt))
        try:
            with recorded_server(argv, mnt, partial, *options) as rec:
                result = workload(mnt)
                status = rec.unmount_and_wait()
        except RuntimeError as exc:  # the mount never appeared: say why, not where
            pytest.fail(f"{self.nodeid}: recording {self.path} failed: {exc}", pytrace=False)
        if status != 0:
            pytest.fail(f"{self.nodeid}: fusetrace record exited with {status}:\n"
                        f"{rec.output()}", pytrace=False)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(partial, self.path)
        return Outcome(action, result)

    def _serve(self, workload: Callable[[Path], Any], fail: bool) -> Outcome:
        from inspector.running import mounted_server

        mnt = self.tmp_factory.mktemp("fusetrace-serve")
        report_path = mnt.parent / f"{mnt.name}.json"
        argv = [sys.executable, "-P", "-m", "inspector.cli", "serve", "-q", "--report",
                str(report_path), str(self.path), str(mnt)]
        result, error = None, None
        try:
            with mounted_server(argv, mnt) as server:
                try:
                    result = workload(mnt)
                except Exception as exc:  # judged once the report says what was missing
                    error = exc
        except RuntimeError as exc:
            pytest.fail(f"{self.nodeid}: serving {self.path} failed: {exc}", pytrace=False)
        if not report_path.exists():
            pytest.fail(f"{self.nodeid}: fusetrace serve {self.path} ended with "
                        f"{server.proc.returncode}:\n{server.stderr()}", pytrace=False)
        report = json.loads(report_path.read_text())
        if fail and not report["ok"]:
            why = f"\nthe workload then failed: {error!r}" if error is not None else ""
            pytest.fail(_serve_failure(self.path, report) + why, pytrace=False)
        if error is not None and report["ok"]:
            raise error
        return Outcome("served", result, serve=report)

    def _server_argv(self) -> tuple[list[str], Path]:
        """The server's argv with fresh directories for {mountpoint} and {tmp}."""
        assert self.options.server is not None
        mnt = self.tmp_factory.mktemp("fusetrace-mnt")
        tmp = self.tmp_factory.mktemp("fusetrace-tmp")
        argv = [a.replace("{mountpoint}", str(mnt)).replace("{tmp}", str(tmp))
                for a in self.options.server]
        if str(mnt) not in argv:
            raise pytest.UsageError(f"{self.nodeid}: fusetrace server= must name the "
                                    "mountpoint as its own argument '{mountpoint}'")
        return argv, mnt


def _replay_failure(path: Path, report: Any) -> str:
    head = f"fusetrace replay of {path} "
    if report.error:
        head += f"failed: {report.error}"
    else:
        n = len(report.differences)
        head += f"found {n} difference{'s' if n > 1 else ''} from the recorded session"
    lines = [head, "", report.first_difference_text()]
    if report.server_log:
        lines += ["", "server output (end):", report.server_log]
    return "\n".join(lines)


def _serve_failure(path: Path, report: dict[str, Any]) -> str:
    lines = [f"fusetrace serve of {path}: the workload asked what the trace cannot answer "
             f"({report['unmatched']} unmatched, answered {report['miss_errno']}; "
             f"{sum(report['cut'].values())} with data cut by the snap length)"]
    for miss in report["misses"]:
        count = f"  (×{miss['count']})" if miss["count"] > 1 else ""
        lines.append(f"  {miss['request']}{count}")
        if miss["note"]:
            lines.append(f"    {miss['note']}")
        if miss["closest"]:
            lines.append(f"    closest recorded: {miss['closest']}")
            lines += [f"      {d}" for d in miss["differs"]]
    return "\n".join(lines)
