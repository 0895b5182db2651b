"""Compressed traces: the same records as the plain trace through every reader, frames
that plain `zstd -d` reads, cuts and bad frames that end the readable part cleanly, a
killed writer that loses nothing (its spool is read on), and `compress`/`decompress`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from traces import TraceIndex, TraceReadError, TraceReader, TraceWriter, compressed, opening
from trace_helpers import HEADER, in_header, out_header

REPO = Path(__file__).resolve().parents[2]
FIXED = {**HEADER, "tool": "test", "created": 1}


def _write(path: Path, count: int) -> None:
    with TraceWriter(path, FIXED) as w:
        for i in range(count):
            w.request(in_header(1, 2 * i + 2, i % 7, b"name-%d\0" % i), ts=1000 + 10 * i)
            w.reply(out_header(2 * i + 2, -2 if i % 3 else 0, bytes(i % 50)), ts=1005 + 10 * i)


@pytest.fixture
def pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """The same session written plain and compressed, in many small frames."""
    monkeypatch.setattr(compressed, "FRAME_BYTES", 4096)
    plain, packed = tmp_path / "t.fzt", tmp_path / "t.fzt.zst"
    _write(plain, 3000)
    _write(packed, 3000)
    return plain, packed


def _frames(path: Path) -> compressed.FrameTable:
    fd = os.open(path, os.O_RDONLY)
    table = compressed.FrameTable(fd, str(path))
    table.walk()
    return table


def _records(path: Path) -> tuple[list[tuple[int, int, int, bytes | None]], str | None]:
    with TraceReader(path) as reader:
        got = [(r.offset, r.kind, r.ts, r.raw) for r in reader]
        return got, reader.tail


def test_same_records_and_offsets_as_the_plain_trace(pair: tuple[Path, Path]) -> None:
    plain, packed = pair
    assert packed.stat().st_size < plain.stat().st_size / 3
    assert _records(packed) == _records(plain)
    table = _frames(packed)
    assert len(table.file_at) > 20 and table.plain_end == plain.stat().st_size
    os.close(table.fd)
    with TraceIndex.open(plain) as a, TraceIndex.open(packed) as b:
        assert len(a) == len(b) == 6000
        for i in (0, 1, 2999, 4321, 5999, 17):
            assert a.row(i) == b.row(i) and a.record(i) == b.record(i)
    with TraceIndex.open(packed) as again:
        assert again.source == "cache" and again.record(5000) == TraceIndex.open(plain).record(5000)


@pytest.mark.skipif(shutil.which("zstd") is None, reason="no zstd command")
def test_plain_zstd_decompresses_it(pair: tuple[Path, Path], tmp_path: Path) -> None:
    plain, packed = pair
    out = tmp_path / "out.fzt"
    subprocess.run(["zstd", "-q", "-d", str(packed), "-o", str(out)], check=True)
    assert out.read_bytes() == plain.read_bytes()


def test_cut_anywhere_reads_to_the_last_whole_frame(pair: tuple[Path, Path],
                                                    tmp_path: Path) -> None:
    plain, packed = pair
    whole, _ = _records(plain)
    data = packed.read_bytes()
    table = _frames(packed)
    os.close(table.fd)
    cut = tmp_path / "cut.fzt.zst"
    for k in (1, 2, 7, len(table.file_at) - 1):
        for at in (table.file_at[k] - 19, table.file_at[k] - 1, table.file_at[k] + 5,
                   table.file_at[k] + table.sizes[k] - 1):
            cut.write_bytes(data[:at])
            got, tail = _records(cut)
            readable = table.plain_at[k]  # frames before k are whole
            ends = [r[0] for r in whole[1:]] + [plain.stat().st_size]
            assert got == [r for r, end in zip(whole, ends) if end <= readable]
            assert tail is not None and "cut short" in tail, tail
            with TraceIndex.open(cut, cache_dir=tmp_path) as idx:
                assert len(idx) == len(got) and idx.tail == tail
            os.unlink(str(cut) + ".idx")


def test_a_bad_frame_ends_the_readable_part(pair: tuple[Path, Path], tmp_path: Path) -> None:
    plain, packed = pair
    whole, _ = _records(plain)
    table = _frames(packed)
    os.close(table.fd)
    data = bytearray(packed.read_bytes())
    k = 5
    data[table.file_at[k] + table.sizes[k] // 2] ^= 0x55
    bad = tmp_path / "bad.fzt.zst"
    bad.write_bytes(bytes(data))
    got, tail = _records(bad)
    assert tail is not None and f"bad frame {k}" in tail
    ends = [r[0] for r in whole[1:]] + [plain.stat().st_size]
    assert got == [r for r, end in zip(whole, ends) if end <= table.plain_at[k]]


@pytest.mark.parametrize("head", [b"", b"\x28\xb5\x2f\xfd" + bytes(20),
                                  compressed.marker(10 ** 6, 5) + b"x" * 100,
                                  b"\x5e\x2a\x4d\x18" + bytes(30)])
def test_not_a_compressed_trace_is_one_error(tmp_path: Path, head: bytes) -> None:
    path = tmp_path / "x.fzt.zst"
    path.write_bytes(head)
    with pytest.raises(TraceReadError) as exc:
        TraceReader(path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


_WRITER = textwrap.dedent("""
    import os, sys, time
    from traces import TraceWriter, compressed
    compressed.FRAME_SECONDS = 0.2
    w = TraceWriter(sys.argv[1], {})
    for i in range(500):
        w.event("note", n=i)
    time.sleep(0.6)  # the first 500 reach the disk as a frame
    for i in range(500, 600):
        w.event("note", n=i)
    print("ready", flush=True)
    time.sleep(60)
""")


def test_a_killed_writer_loses_nothing_it_appended(tmp_path: Path) -> None:
    """What the compressor had not framed yet is in the spool beside the trace, which
    readers read on from: every record, in order, and a clean end."""
    path = tmp_path / "live.fzt.zst"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        with TraceReader(path) as reader:  # a live trace: read while it is being written
            seen = [r.meta["n"] for r in reader]
        assert seen == list(range(600))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert Path(f"{path}.spool").exists()
        with TraceReader(path) as reader:
            after = [r.meta["n"] for r in reader]
            assert reader.tail is None and reader.holes == []
        assert after == list(range(600))
        with TraceIndex.open(path, cache_dir=tmp_path) as idx:
            assert len(idx) == 600 and idx.record(599).meta["n"] == 599
        opening.decompress_file(str(path), str(tmp_path / "plain.fzt"))  # the spool too
        with TraceReader(tmp_path / "plain.fzt") as reader:
            assert [r.meta["n"] for r in reader] == list(range(600))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


_PING_PONG = textwrap.dedent("""
    import queue, sys, threading
    from traces import TraceWriter
    w = TraceWriter(sys.argv[1], {})
    asked = queue.Queue()
    def server():  # answers each request from its own thread, after it was recorded
        while True:
            n = asked.get()
            w.reply(n.to_bytes(8, "little"), ts=n)
            if n % 200 == 0:
                print(n, flush=True)
    threading.Thread(target=server, daemon=True).start()
    n = 0
    while True:
        w.request(n.to_bytes(8, "little"), ts=n)
        asked.put(n)
        n += 1
""")


def test_a_killed_writer_keeps_every_reply_after_its_request(tmp_path: Path) -> None:
    """Two threads, each reply appended only after its request was: after `kill -9` the
    compressed trace holds every pair answered, each request before its reply."""
    path = tmp_path / "order.fzt.zst"
    proc = subprocess.Popen([sys.executable, "-c", _PING_PONG, str(path)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        answered = 0
        while answered < 20_000:
            line = proc.stdout.readline()
            assert line, "writer died early"
            answered = int(line)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    with TraceReader(path) as reader:
        records = [(r.kind.name, int.from_bytes(r.raw or b"", "little")) for r in reader]
        assert reader.tail is None
    where = {record: i for i, record in enumerate(records)}
    for n in range(answered + 1):
        assert where[("REQUEST", n)] < where[("REPLY", n)]
    for kind in ("REQUEST", "REPLY"):
        numbers = [n for k, n in records if k == kind]
        assert numbers == list(range(len(numbers)))


def test_the_spool_stays_small_whatever_the_trace_s_size(tmp_path: Path) -> None:
    """What is framed is punched out of the spool: 32 MiB of records that do not
    compress leave it a few MiB big (what is allocated ahead and not framed yet)."""
    path = tmp_path / "big.fzt.zst"
    with TraceWriter(path, {}) as w:
        for i in range(8192):
            w.request(os.urandom(4096), ts=i)
        w.settle()
        spool = Path(f"{path}.spool").stat()
        assert spool.st_size > 32 << 20 and spool.st_blocks * 512 < 8 << 20
    assert len(_records(path)[0]) == 8192


def test_a_clean_close_leaves_no_spool(tmp_path: Path) -> None:
    path = tmp_path / "t.fzt.zst"
    _write(path, 10)
    assert [p.name for p in tmp_path.iterdir()] == ["t.fzt.zst"]
    assert len(_records(path)[0]) == 20


def test_poll_follows_a_growing_compressed_trace(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compressed, "FRAME_SECONDS", 0.05)
    path = tmp_path / "grow.fzt.zst"
    with TraceWriter(path, {}) as w:
        w.event("note", n=0)
        deadline = time.monotonic() + 10
        reader = TraceReader(path) if _wait_frames(path, 1, deadline) else None
        assert reader is not None and [r.meta["n"] for r in reader] == [0]
        w.event("note", n=1)
        w.event("note", n=2)
        assert _wait_frames(path, 2, deadline)
        assert [r.meta["n"] for r in reader.poll()] == [1, 2]
        reader.close()


def _wait_frames(path: Path, count: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        table = _frames(path)
        os.close(table.fd)
        if len(table.file_at) >= count:
            return True
        time.sleep(0.02)
    return False


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "inspector.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_compress_and_decompress_commands(pair: tuple[Path, Path], tmp_path: Path) -> None:
    plain, ours = pair
    cut = tmp_path / "cut.fzt.zst"  # many small frames: a cut keeps the ones before it
    cut.write_bytes(ours.read_bytes()[:-10])
    ours.unlink()
    done = _cli("compress", str(plain))
    assert done.returncode == 0 and done.stderr.startswith(f"fusetrace: wrote {plain}.zst: ")
    packed = Path(str(plain) + ".zst")
    assert _records(packed) == _records(plain)
    again = _cli("compress", str(plain))
    assert again.returncode == 2 and "exists" in again.stderr
    out = tmp_path / "back.fzt"
    done = _cli("decompress", "-o", str(out), str(packed))
    assert done.returncode == 0 and out.read_bytes() == plain.read_bytes()
    done = _cli("decompress", str(cut))
    assert done.returncode == 3 and "cut short" in done.stderr  # the damaged-trace rule
    assert plain.read_bytes().startswith((tmp_path / "cut.fzt").read_bytes())
    (tmp_path / "cut.fzt").unlink()
    cut.write_bytes(packed.read_bytes()[:-10])  # one frame, cut: nothing to keep
    done = _cli("decompress", str(cut))
    assert done.returncode == 2 and "nothing readable" in done.stderr, done.stderr
    assert not (tmp_path / "cut.fzt").exists()
    cut.unlink()
    for args in (("decompress", str(plain)), ("compress", str(packed)),
                 ("compress", str(tmp_path / "missing.fzt"))):
        done = _cli(*args)
        assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr
    assert sorted(p.name for p in tmp_path.glob(".*")) == []
