"""README.md's examples, run the way a new user runs them, so an edit that breaks one
fails here.

The user's first hour: `.ci/install` (here only its last step, `.ci/launcher`, writing the
`fusetrace` launcher into a private bin directory instead of /usr/local/bin, so the
launcher under test is this clone's), then every example block, in order, pasted into one
new shell, as root, in an empty home directory. How a block is treated depends on its
fence's language and on a directive in an HTML comment just above it:

- `sh` / `bash`: run as typed, all in one bash (`set -eo pipefail`: a failing command
  fails the test, naming the block). A line that starts `fusetrace browse` (the TUI) runs
  in a real terminal (tmux) until the trace's records show, then `q`; it must exit 0.
- `python`: fed to `fusetrace python -` (the project's interpreter) in the same directory.
- `<!-- readme-test: file NAME -->`: the block is saved as NAME there instead (the prose
  around it says to save it).
- `<!-- readme-test: skip REASON -->`: not run; REASON is required (a GUI, the install
  itself). Keep these rare.
- `text` (or another language that is not a command: `json`, `c` ...): output and
  formats, not run.
- A fence without a language, or an indented code block, is an error: say which it is.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from inspector.mounts import mount_entries
from inspector.testing import fuse_available, unmount

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SHELLS = {"sh", "bash"}
DIRECTIVE = re.compile(r"<!--\s*readme-test:\s*(\w+)\s*(.*?)\s*-->", re.S)
TUI_LINE = re.compile(r"^\s*fusetrace\s+browse\b")
#: a login shell's PATH on Debian (root), behind the launcher's directory
LOGIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Block:
    line: int  # 1-based line of the opening fence in README.md
    lang: str  # "sh", "python", "text" ...
    text: str
    action: str  # "run", "file", "skip", "show"
    arg: str = ""  # the file name, or why it is skipped


def blocks(markdown: str) -> list[Block]:
    """The README's code blocks with what the test does with each; ValueError for a block
    that breaks the rules above."""
    found: list[Block] = []
    directive: tuple[str, str] | None = None
    for tok in MarkdownIt("commonmark").parse(markdown):
        line = (tok.map[0] + 1) if tok.map else 0
        if tok.type == "html_block" and (m := DIRECTIVE.search(tok.content)):
            directive = (m.group(1), m.group(2))
            continue
        if tok.type == "code_block":
            raise ValueError(f"README.md:{line}: an indented code block: make it a fenced "
                             "block with a language (sh, python, or text for output)")
        if tok.type != "fence":
            directive = None  # a directive binds to the block right below it
            continue
        lang = tok.info.split()[0] if tok.info.strip() else ""
        if not lang:
            raise ValueError(f"README.md:{line}: a fence without a language: sh, python, "
                             "or text for output")
        action, arg = "run" if lang in SHELLS | {"python"} else "show", ""
        if directive is not None:
            action, arg = directive
            if action not in ("file", "skip") or not arg:
                raise ValueError(f"README.md:{line}: readme-test wants `file NAME` or "
                                 f"`skip REASON`, not {action!r} {arg!r}")
            directive = None
        found.append(Block(line, lang, tok.content, action, arg))
    return found


_EOF = "__README_EXAMPLE_EOF__"

_PREAMBLE = r"""set -Eeo pipefail
trap 'echo "README.md:$__block: this command failed (exit $?): $BASH_COMMAND" >&2' ERR
__readme_tui() {  # a TUI command line: in a terminal until it shows its records, then q
  # a tmux server of its own each time: a new one on the socket of one just killed can
  # meet it still dying ("server exited unexpectedly")
  local s="readme-$$-$SRANDOM" st="$TMPDIR/tui-status" i shown=
  rm -f "$st"
  tmux -L "$s" new-session -d -s "$s" -x 150 -y 40 -c "$PWD" "$1"$'\n'"echo \$? > '$st'; sleep 30"
  for i in $(seq 300); do
    tmux -L "$s" capture-pane -p -t "$s" 2>/dev/null | grep -q ' records' && { shown=1; break; }
    [ -s "$st" ] && break  # it ended by itself
    sleep 0.1
  done
  tmux -L "$s" send-keys -t "$s" q
  for i in $(seq 100); do [ -s "$st" ] && break; sleep 0.1; done
  tmux -L "$s" capture-pane -p -t "$s" > "$TMPDIR/tui-screen" 2>/dev/null || true
  tmux -L "$s" kill-server 2>/dev/null || true
  [ -n "$shown" ] && [ "$(cat "$st" 2>/dev/null)" = 0 ] || {
    echo "README.md:$__block: $1 did not show its records and quit cleanly (status $(cat "$st" 2>/dev/null || echo none)); the screen:" >&2
    grep -v '^$' "$TMPDIR/tui-screen" >&2; return 1; }
}
"""


def script(found: list[Block]) -> str:
    """One bash script: the blocks in README order, as a user pastes them."""
    parts = []
    for b in found:
        if b.action in ("skip", "show"):
            continue
        parts.append(f"__block={b.line}")
        if b.action == "file":
            parts.append(f"cat > {shlex.quote(b.arg)} <<'{_EOF}'\n{b.text}{_EOF}")
        elif b.lang == "python":
            parts.append(f"fusetrace python - <<'{_EOF}'\n{b.text}{_EOF}")
        else:
            parts.append(_shell_lines(b.text))
    return "\n".join(parts) + "\n"


def test_every_block_says_how_it_is_tested() -> None:
    """The rules hold for README.md as it is, and they catch what they should."""
    found = blocks(README.read_text())
    assert any(b.action == "run" and b.lang == "python" for b in found)
    assert any(b.action == "file" for b in found), "the pytest plugin example is a file"
    for b in found:
        if b.action == "skip":
            assert len(b.arg.split()) >= 3, f"README.md:{b.line}: say why it is not run"
    bad = {"```\nls\n```\n": "without a language", "Text:\n\n    ls\n": "indented",
           "<!-- readme-test: skip -->\n```sh\nls\n```\n": "wants",
           "<!-- readme-test: later x -->\n```sh\nls\n```\n": "wants"}
    for markdown, why in bad.items():
        with pytest.raises(ValueError, match=why):
            blocks(markdown)
    sample = blocks("<!-- readme-test: file t.py -->\n```python\nx = 1\n```\n\nprose\n\n"
                    "```sh\nfusetrace browse a.fzt\nls\n```\n```text\nout\n```\n")
    assert [(b.action, b.arg) for b in sample] == [("file", "t.py"), ("run", ""), ("show", "")]
    text = script(sample)
    assert "cat > t.py <<" in text and "__readme_tui 'fusetrace browse a.fzt'\nls\n" in text
    assert "\nout\n" not in text and _PREAMBLE not in text


def _unmount_under(root: Path) -> None:
    """Whatever the examples left mounted below `root`, deepest first."""
    prefix = str(root) + "/"
    for entry in sorted((e for e in mount_entries() if e.mountpoint.startswith(prefix)),
                        key=lambda e: -len(e.mountpoint)):
        unmount(entry.mountpoint)


def _shell_lines(text: str) -> str:
    """Shell text as the runner types it: TUI command lines go to a terminal."""
    return "\n".join(f"__readme_tui {shlex.quote(line)}" if TUI_LINE.match(line) else line
                     for line in text.splitlines())


def _as_a_new_user(tmp_path: Path, commands: str, name: str) -> str:
    """Run `commands` (bash, after the runner's preamble) as README command 1 left a new
    user: the launcher on PATH, a login shell's PATH otherwise, in an empty home below
    `tmp_path` (kept between calls). Fails with the end of the output unless it exits 0;
    returns the output. Whatever it left mounted or running is undone."""
    reason = fuse_available()
    if reason:
        pytest.skip(f"the README's examples run as root with FUSE: {reason}")
    if not (REPO / ".venv/bin/fusetrace").exists():
        pytest.skip("no .venv in this clone: run .ci/install (README command 1) first")
    home, bindir, tmp = tmp_path / "home", tmp_path / "bin", tmp_path / "tmp"
    if not bindir.exists():
        for d in (home, tmp):
            d.mkdir()
        subprocess.run(["bash", str(REPO / ".ci/launcher"), str(bindir)], check=True,
                       capture_output=True, timeout=60)
    (tmp_path / f"{name}.sh").write_text(_PREAMBLE + commands)
    # FUSETRACE_RUNDIR: the recorders' notes, and so `fusetrace cleanup`, stay the test's
    # own (a recorder of other work on this machine is none of the README's business)
    env = {"HOME": str(home), "PATH": f"{bindir}:{LOGIN_PATH}", "TMPDIR": str(tmp),
           "LANG": "C.UTF-8", "USER": "root", "SHELL": "/bin/bash", "TERM": "xterm-256color",
           "FUSETRACE_RUNDIR": str(tmp_path / "run")}
    log = tmp_path / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["bash", str(tmp_path / f"{name}.sh")], cwd=home, env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        status = proc.wait(timeout=800)
    finally:
        _unmount_under(tmp_path)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # servers an example left running
        except ProcessLookupError:
            pass
        proc.wait()
    output = log.read_text(errors="replace")
    tail = "\n".join(output.splitlines()[-60:])
    assert status == 0, f"{name}: a command failed (exit {status}); the last output:\n{tail}"
    assert not [e for e in mount_entries() if e.mountpoint.startswith(str(tmp_path))]
    return output


@pytest.mark.timeout(900)
def test_the_readme_examples_run_as_written(tmp_path: Path) -> None:
    _as_a_new_user(tmp_path, script(blocks(README.read_text())), "readme")


#: a hint line of `fusetrace demo`: "  browse it:    fusetrace browse demo.fzt"
HINT = re.compile(r"^  [a-z][a-z ]*: +(fusetrace .*)$", re.M)


@pytest.mark.timeout(300)
def test_the_demos_hints_run_as_printed(tmp_path: Path) -> None:
    """`fusetrace demo` ends with commands to look further: each runs as printed."""
    shown = _as_a_new_user(tmp_path, "fusetrace demo\n", "demo")
    hints = HINT.findall(shown)
    assert len(hints) >= 5 and any(TUI_LINE.match(h) for h in hints), shown[-2000:]
    _as_a_new_user(tmp_path, _shell_lines("\n".join(hints)) + "\n", "hints")


# --- the launcher .ci/install writes -------------------------------------------------------


def _launcher(clone: Path, bindir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(clone / ".ci/launcher"), str(bindir)], text=True,
                          capture_output=True, timeout=60)


def test_the_launcher_runs_this_clone_and_moves_with_a_reinstall(tmp_path: Path) -> None:
    """Written twice, it is the same launcher; written from another clone, it runs that
    one; a `fusetrace` it did not write is left alone."""
    if not (REPO / ".venv/bin/fusetrace").exists():
        pytest.skip("no .venv in this clone: run .ci/install first")
    bindir = tmp_path / "bin"
    for _ in range(2):
        assert _launcher(REPO, bindir).returncode == 0
    assert sorted(p.name for p in bindir.iterdir()) == ["fusetrace"]
    ran = subprocess.run([str(bindir / "fusetrace"), "python", "-c",
                          "import sys, inspector; print(sys.prefix, inspector.__file__)"],
                         capture_output=True, text=True, timeout=60, env={"PATH": LOGIN_PATH})
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == [str(REPO / ".venv"), str(REPO / "inspector/__init__.py")]

    other = tmp_path / "other-clone"
    (other / ".ci").mkdir(parents=True)
    (other / ".ci/launcher").write_bytes((REPO / ".ci/launcher").read_bytes())
    (other / ".venv/bin").mkdir(parents=True)
    (other / ".venv/bin/fusetrace").write_text("#!/bin/sh\necho other clone \"$@\"\n")
    (other / ".venv/bin/fusetrace").chmod(0o755)
    assert _launcher(other, bindir).returncode == 0
    assert subprocess.run([str(bindir / "fusetrace"), "x"], capture_output=True, text=True,
                          timeout=30).stdout == "other clone x\n"

    (other / ".venv/bin/fusetrace").unlink()
    gone = subprocess.run([str(bindir / "fusetrace")], capture_output=True, text=True, timeout=30)
    assert gone.returncode == 127 and "is gone: run .ci/install" in gone.stderr

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "fusetrace").write_text("#!/bin/sh\necho mine\n")
    refused = _launcher(REPO, foreign)
    assert refused.returncode == 1 and "is not ours" in refused.stderr
    assert (foreign / "fusetrace").read_text() == "#!/bin/sh\necho mine\n"


def test_fusetrace_python_is_the_projects_interpreter() -> None:
    """`fusetrace python` (how the README runs Python examples and the plugin) is the
    interpreter fusetrace runs in, with arguments passed untouched."""
    ran = subprocess.run([sys.executable, "-m", "inspector.cli", "python", "-c",
                          "import sys; print(sys.executable, sys.argv[1:])", "-h", "--x"],
                         capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == f"{sys.executable} ['-h', '--x']\n"
