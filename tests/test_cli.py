import subprocess
import sys

from seganypet import __version__
from seganypet.cli import main


def test_version(capsys):
    try:
        main(["--version"])
    except SystemExit as e:
        assert e.code == 0
    assert __version__ in capsys.readouterr().out


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "seganypet", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "seganypet" in out.stdout


def test_unknown_command_exits_2():
    out = subprocess.run([sys.executable, "-m", "seganypet", "nonsense"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
