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


def test_public_names_resolve():
    import seganypet

    for name in seganypet.__all__:
        assert getattr(seganypet, name) is not None


def test_readme_commands_and_ci_agree():
    """.ci/run runs the README's test command; the README keeps exactly two set-up commands."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    assert readme.count("<!-- main-command -->") == 1
    assert readme.count("<!-- test-command -->") == 1
    out = subprocess.run(
        ["awk", "/<!-- test-command -->/{f=1;next} f&&/^```/{if(s)exit; s=1; next} f&&s{print}", "README.md"],
        capture_output=True,
        text=True,
        cwd=root,
    )
    assert "pytest" in out.stdout and "torch==2.13.0" in out.stdout
    assert "awk" in (root / ".ci" / "run").read_text()
