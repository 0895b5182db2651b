"""The live target and fuzz against a tiny raw-protocol server (`tiny_server.py`): each
way a server can fail is a structured outcome; a server that cannot start is an error;
a failure that does not reproduce is not saved; descriptors stay flat."""

from __future__ import annotations

import os
import resource
import signal
import stat
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from dissectors.constants import Opcode
from dissectors.structs import (
    FuseAttrOut,
    FuseEntryOut,
    FuseGetattrIn,
    FuseInHeader,
    FuseInitIn,
    FuseInitOut,
    FuseName,
    FuseNames,
    FuseOutHeader,
)
from inspector.fuzz import Fuzzer
from inspector.target import Outcome, Refusal, StartError, Verdict, play
from inspector.target.live import LiveServer, names, with_copy
from inspector.exchange.trap import IoctlTrap
from traces import TraceWriter

TINY = str(Path(__file__).with_name("tiny_server.py"))
UNKNOWN = 9999
FUSETRACE = [sys.executable, "-m", "inspector.cli"]

pytestmark = pytest.mark.skipif(bool(IoctlTrap.available()),
                                reason=f"no seccomp trap: {IoctlTrap.available()}")


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    """INIT, LOOKUP a (node 2), GETATTR of it, and a request of an opcode nobody knows."""
    path = tmp_path / "t.fzt"
    with TraceWriter(path, {"source": "test"}) as out:
        out.request(bytes(FuseInHeader(opcode=Opcode.INIT, unique=2) / FuseInitIn(major=7, minor=45)))
        out.reply(bytes(FuseOutHeader(unique=2) / FuseInitOut(major=7, minor=45)))
        out.request(bytes(FuseInHeader(opcode=Opcode.LOOKUP, unique=4, nodeid=1) / FuseName(name=b"a")))
        out.reply(bytes(FuseOutHeader(unique=4) / FuseEntryOut(nodeid=2)))
        out.request(bytes(FuseInHeader(opcode=Opcode.GETATTR, unique=6, nodeid=2) / FuseGetattrIn()))
        out.reply(bytes(FuseOutHeader(unique=6) / FuseAttrOut()))
        out.request(bytes(FuseInHeader(opcode=UNKNOWN, unique=8, nodeid=1)))
        out.reply(bytes(FuseOutHeader(unique=8, error=-38)))
    (tmp_path / "mnt").mkdir()
    return path


def _tiny(tmp_path: Path, *on: str) -> list[str]:
    return [sys.executable, TINY, *(a for o in on for a in ("--on", o)), str(tmp_path / "mnt")]


@pytest.mark.parametrize("action, expect", [
    ("abort", Outcome(Verdict.KILLED, Opcode.GETATTR, signal.SIGABRT)),
    ("exit3", Outcome(Verdict.EXITED, Opcode.GETATTR, 3)),
    ("hang", Outcome(Verdict.HUNG, Opcode.GETATTR)),
    ("errno", Outcome(Verdict.REFUSED, Opcode.GETATTR, refusal=Refusal.ERRNO)),
    ("short", Outcome(Verdict.REFUSED, Opcode.GETATTR, refusal=Refusal.SIZE)),
    ("badlen", Outcome(Verdict.REFUSED, Opcode.GETATTR, refusal=Refusal.LENGTH)),
])
def test_each_failure_is_a_structured_outcome(trace: Path, tmp_path: Path, action: str,
                                              expect: Outcome) -> None:
    got = play(trace, _tiny(tmp_path, f"GETATTR={action}"), timeout=0.5)
    assert got is not None and got.key() == expect.key()
    assert got.record == 4  # the GETATTR request's record


def test_a_slow_reply_is_a_hang_only_under_a_short_timeout(trace: Path, tmp_path: Path) -> None:
    server = _tiny(tmp_path, "GETATTR=slow")
    assert play(trace, server, timeout=0.3).verdict is Verdict.HUNG  # type: ignore[union-attr]
    assert play(trace, server, timeout=5) is None


@pytest.mark.parametrize("server", [
    [sys.executable, "-c", "import sys; sys.exit(1)"],
    ["/nonexistent/server"],
    [sys.executable, TINY, "--bogus"],
])
def test_a_server_that_cannot_start_is_an_error(trace: Path, tmp_path: Path,
                                                server: list[str]) -> None:
    argv = [*server, str(tmp_path / "mnt")]
    with pytest.raises(StartError):
        play(trace, argv)
    done = subprocess.run([*FUSETRACE, "fuzz", str(trace), "--seconds", "5", "-o",
                           str(tmp_path / "out"), "--", *argv],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == "" and done.stderr.startswith("fusetrace: error:")
    assert "finding" not in done.stderr


def test_a_bad_command_line_is_an_error(trace: Path, tmp_path: Path) -> None:
    for extra in (["--seconds", "0"], ["--jobs", "0"], ["--fresh", "/not/an/argument"]):
        done = subprocess.run([*FUSETRACE, "fuzz", str(trace), *extra, "--",
                               *_tiny(tmp_path)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and done.stderr.startswith("fusetrace: error:"), extra


def test_a_finding_on_an_opcode_nobody_knows_is_saved(trace: Path, tmp_path: Path) -> None:
    fz = Fuzzer(trace, _tiny(tmp_path, f"{UNKNOWN}=abort"), tmp_path / "out", seed=1)
    found = fz.run(60, max_tries=5)
    assert [f.outcome.key() for f in found] == [("killed", UNKNOWN, signal.SIGABRT, "")]
    assert f"OP{UNKNOWN}" in found[0].trace.with_suffix(".txt").read_text()


def test_a_failure_that_does_not_reproduce_is_not_saved(trace: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINY_ONCE", str(tmp_path / "once"))
    fz = Fuzzer(trace, _tiny(tmp_path, "GETATTR=once-abort"), tmp_path / "out", seed=1)
    assert fz.run(60, max_tries=20) == []
    assert fz.stats.unconfirmed["killed"] == 1
    assert not list((tmp_path / "out").iterdir())


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_descriptors_stay_flat_across_tries_and_restarts(trace: Path, tmp_path: Path) -> None:
    fz = Fuzzer(trace, _tiny(tmp_path, "GETATTR=exit3"), tmp_path / "out", seed=2)
    fz.run(60, max_tries=30)  # the first failure is saved, and its checks run
    before = _fds()
    fz.run(120, max_tries=200)
    assert fz.stats.restarts >= 20
    assert _fds() == before


def test_fuzz_runs_under_48_descriptors_and_counts_its_tries(trace: Path, tmp_path: Path) -> None:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))
    done = subprocess.run([*FUSETRACE, "fuzz", str(trace), "--tries", "400", "--seed", "3",
                           "--seconds", "280",
                           "-o", str(tmp_path / "out"), "--", *_tiny(tmp_path, "GETATTR=exit3")],
                          capture_output=True, text=True, timeout=300, preexec_fn=limit)
    assert done.returncode == 1, done.stderr
    assert "400 tries" in done.stderr and "1 exited" in done.stderr, done.stderr


def test_every_option_has_help() -> None:
    from inspector.cli import build_parser
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for action in sub.choices["fuzz"]._actions:
        if action.dest not in ("help", "server"):
            assert action.help, action.dest


def test_fresh_names_a_directory_as_an_argument_or_inside_one() -> None:
    argv = ["fuse-overlayfs", "-o", "lowerdir=/b/x/lower,upperdir=/b/x/upper", "/b/x", "/b/xy",
            "/a/b/x"]
    assert with_copy(argv, "/b/x", "/c") == [
        "fuse-overlayfs", "-o", "lowerdir=/c/lower,upperdir=/c/upper", "/c", "/b/xy", "/a/b/x"]
    assert names(argv, "/b/x/") and not names(["/b/xy"], "/b/x")


def test_repair_keeps_a_try_to_what_the_kernel_could_send() -> None:
    """A handle names its own file's node; a forgotten node is replaced by a held one of
    its type; a FORGET drops no more than the lookups held, and never a node with a file
    open on it; nothing to name: no try."""
    from dissectors.structs import FuseForgetIn, FuseReadIn

    live = LiveServer(["unused"])
    live.lookups = {9: 1, 10: 2}
    live.types.update({9: stat.S_IFREG, 10: stat.S_IFREG, 11: stat.S_IFREG})
    live.open = {5: (Opcode.OPEN, 9)}
    read = bytearray(bytes(FuseInHeader(opcode=Opcode.READ, unique=2, nodeid=10) / FuseReadIn(fh=5)))
    assert live.repair(Opcode.READ, read, lambda c: c[0])
    assert struct.unpack_from("<Q", read, 16)[0] == 9
    stale = bytearray(bytes(FuseInHeader(opcode=Opcode.GETATTR, unique=2, nodeid=11) / FuseGetattrIn()))
    assert live.repair(Opcode.GETATTR, stale, lambda c: c[-1])
    assert struct.unpack_from("<Q", stale, 16)[0] in (9, 10)
    forget = bytearray(bytes(FuseInHeader(opcode=Opcode.FORGET, unique=2, nodeid=10)
                             / FuseForgetIn(nlookup=7)))
    assert live.repair(Opcode.FORGET, forget, lambda c: c[0])
    assert struct.unpack_from("<Q", forget, 40)[0] == 2
    open_node = bytearray(bytes(FuseInHeader(opcode=Opcode.FORGET, unique=2, nodeid=9)
                                / FuseForgetIn(nlookup=1)))
    assert live.repair(Opcode.FORGET, open_node, lambda c: c[0])  # 9 has a file open
    assert struct.unpack_from("<Q", open_node, 16)[0] == 10
    live.open = {}
    assert not live.repair(Opcode.READ, read, lambda c: c[0])


def test_repair_adds_up_a_batch_forget_s_entries_for_one_node() -> None:
    from dissectors.structs import FuseBatchForgetIn, FuseForgetList, FuseForgetOne

    live = LiveServer(["unused"])
    live.lookups = {9: 1}
    batch = bytearray(bytes(FuseInHeader(opcode=Opcode.BATCH_FORGET, unique=2)
                            / FuseBatchForgetIn(count=2) / FuseForgetList(forgets=[
                                FuseForgetOne(nodeid=9, nlookup=1), FuseForgetOne(nodeid=9, nlookup=1)])))
    assert live.repair(Opcode.BATCH_FORGET, batch, lambda c: c[0])
    assert len(batch) == 64 and struct.unpack_from("<IIQQ", batch, 40) == (1, 0, 9, 1)  # one entry


def test_repair_names_directories_where_the_kernel_does() -> None:
    """A parent is a directory (a node id the server reused for a file is not taken for
    one); a directory is never renamed below itself."""
    from dissectors.structs import FuseRenameIn

    live = LiveServer(["unused"])
    live.lookups = {5: 1, 6: 1, 7: 1}
    live.types.update({5: stat.S_IFDIR, 6: stat.S_IFDIR, 7: stat.S_IFREG})
    live.parents = {5: 1, 6: 5}
    live.children = {(1, b"d"): 5, (5, b"e"): 6}
    lookup = bytearray(bytes(FuseInHeader(opcode=Opcode.LOOKUP, unique=2, nodeid=7) / FuseName(name=b"x")))
    assert live.repair(Opcode.LOOKUP, lookup, lambda c: c[0])
    assert struct.unpack_from("<Q", lookup, 16)[0] in (1, 5, 6)
    below = bytearray(bytes(FuseInHeader(opcode=Opcode.RENAME, unique=2, nodeid=1)
                            / FuseRenameIn(newdir=6) / FuseNames(name=b"d", name2=b"g")))
    assert not live.repair(Opcode.RENAME, below, lambda c: c[0])
    beside = bytearray(bytes(FuseInHeader(opcode=Opcode.RENAME, unique=2, nodeid=5)
                             / FuseRenameIn(newdir=1) / FuseNames(name=b"e", name2=b"g")))
    assert live.repair(Opcode.RENAME, beside, lambda c: c[0])


def test_repair_removes_only_names_the_kernel_holds_of_the_right_type() -> None:
    live = LiveServer(["unused"])
    live.lookups = {5: 1, 7: 1}
    live.types.update({5: stat.S_IFDIR, 7: stat.S_IFREG})
    live.children = {(1, b"d"): 5, (1, b"a"): 7}

    def remove(opcode: int, name: bytes) -> bool:
        raw = bytearray(bytes(FuseInHeader(opcode=opcode, unique=2, nodeid=1) / FuseName(name=name)))
        return live.repair(opcode, raw, lambda c: c[0])
    assert remove(Opcode.RMDIR, b"d") and remove(Opcode.UNLINK, b"a")
    assert not remove(Opcode.RMDIR, b"a") and not remove(Opcode.UNLINK, b"d")
    assert not remove(Opcode.UNLINK, b"unknown")


def test_readdirplus_entries_tell_their_types_and_a_forgotten_id_forgets_its_type() -> None:
    """Servers whose node ids are pointers hand a forgotten directory's id to a symlink:
    the type comes from the entry that hands the id out, and goes with its last lookup."""
    from dissectors.structs import FuseAttr, FuseDirent, FuseDirentplus, FuseDirentplusList
    from dissectors.structs import FuseForgetIn
    from inspector.target.live import _direntplus

    plus = bytes(FuseOutHeader(unique=4) / FuseDirentplusList(direntplus=[
        FuseDirentplus(entry_out=FuseEntryOut(nodeid=7, attr=FuseAttr(mode=0o40755)),
                       dirent=FuseDirent(ino=7, off=1, namelen=3, type=4, name=b"dir")),
        FuseDirentplus(entry_out=FuseEntryOut(nodeid=8, attr=FuseAttr(mode=0o120777)),
                       dirent=FuseDirent(ino=8, off=2, namelen=1, type=10, name=b"s"))]))
    assert [(n, name, stat.S_IFMT(m)) for n, name, m in _direntplus(plus)] == [
        (7, b"dir", stat.S_IFDIR), (8, b"s", stat.S_IFLNK)]
    live = LiveServer(["unused"])
    live.lookups, live.types[7] = {7: 1}, stat.S_IFDIR
    live._forget(Opcode.FORGET, bytes(FuseInHeader(opcode=Opcode.FORGET, nodeid=7)
                                      / FuseForgetIn(nlookup=1)))
    assert 7 not in live.types
