"""Ctrl-C and errors at the command line: one line, the right exit code, nothing lost."""

import os
import signal
import subprocess
import sys
import time

import pytest


# Each command on inputs that do not exist: start-up (imports, arguments) is all it does before
# failing, so the signal lands during the imports or the command's own first line for every delay.
COMMANDS = {
    "train": lambda t: ["train", "--no-progress", f"out={t / 'r'}", f"train_manifest={t / 'none.jsonl'}",
                        f"store={t / 'store'}"],
    "embed": lambda t: ["embed", "--captions", str(t / "none.jsonl"), "--out", str(t / "store")],
    "eval": lambda t: ["eval", "--checkpoint", str(t / "none"), "--data", str(t / "none.jsonl")],
    "search": lambda t: ["search", "--index", str(t / "none"), "--checkpoint", str(t / "none"), "a cat"],
}


@pytest.mark.slow
@pytest.mark.parametrize("command, after_s", [("train", 0.4), ("train", 1.0), ("train", 2.5), ("embed", 1.0),
                                              ("eval", 1.0), ("search", 1.0)])
def test_ctrl_c_at_start_up_is_one_line(tmp_path, command, after_s):
    p = subprocess.Popen([sys.executable, "-m", "flameclip.cli", *COMMANDS[command](tmp_path)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1"),
                         # background jobs start with SIGINT ignored; a terminal's Ctrl-C is what is tested
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(after_s)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    # 130 from our handler; rarely the interpreter re-raises the signal at exit (-SIGINT) after it
    if p.returncode in (130, -signal.SIGINT):
        assert lines == [lines[0]] and "interrupted" in lines[0], err
    else:  # it got to its own error first: still one line, naming the missing file
        assert p.returncode == 2 and len(lines) == 1 and "none" in lines[0], err
    assert "Traceback" not in err


def test_ctrl_c_that_python_drops_in_a_callback_still_stops_the_command(monkeypatch, tmp_path, capsys):
    # A Ctrl-C landing in a weakref callback during the imports is dropped by Python ("Exception
    # ignored in ..."); the command must still stop with its one line, not go on to its own error.
    import weakref

    from flameclip import cli

    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # restored after the test
    real = cli.build_parser

    def parser_after_a_dropped_ctrl_c():
        def callback(_):
            raise KeyboardInterrupt

        class Module:
            pass

        obj = Module()
        ref = weakref.ref(obj, callback)
        del obj  # the callback runs here, and Python drops its KeyboardInterrupt
        assert ref() is None
        return real()

    monkeypatch.setattr(cli, "build_parser", parser_after_a_dropped_ctrl_c)
    rc = cli.main(COMMANDS["embed"](tmp_path))
    err = capsys.readouterr().err
    assert rc == 130 and "interrupted" in err and "Exception ignored" not in err, err
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1


def test_ctrl_c_that_an_import_turns_into_another_error_still_stops_with_one_line(monkeypatch, tmp_path, capsys):
    # A Ctrl-C inside a C extension's import can leave it half-loaded, and the next import of it
    # fails with an ImportError ("cannot load module more than once per process"), which the
    # error line's own imports would hit again. It is the user's Ctrl-C: one "interrupted" line.
    from flameclip import cli

    def parser_hit_mid_import():
        try:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, handled by the command's own handler
            time.sleep(1)
        except KeyboardInterrupt:
            pass  # what the half-loaded extension's import does with it
        raise ImportError("cannot load module more than once per process")

    monkeypatch.setattr(cli, "build_parser", parser_hit_mid_import)
    # As in a fresh `flameclip` process: Python's own Ctrl-C handler (earlier tests may leave another).
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        rc = cli.main(COMMANDS["embed"](tmp_path))
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    finally:
        signal.signal(signal.SIGINT, outer)
    err = capsys.readouterr().err
    assert rc == 130 and "interrupted" in err and "ImportError" not in err, err
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1


def test_an_error_line_survives_a_library_that_cannot_be_imported(monkeypatch, capsys):
    from flameclip import cli

    def broken(_):
        raise ImportError("cannot load module more than once per process")

    monkeypatch.setattr(cli, "_known_line", broken)
    line = cli._one_line(ValueError("bad value"))
    assert line.startswith("ValueError: bad value") and "\n" not in line
