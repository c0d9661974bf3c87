"""Atomic writes: complete files with ordinary permissions, nothing left behind on failure."""

import os
import stat

import matplotlib.pyplot as plt
import pytest

from fedsim.files import atomic_write_bytes, atomic_write_text, save_figure_atomically


def test_atomic_write_gives_the_usual_permissions_and_replaces_whole_files(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a" / "x.txt", "first")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644          # not mkstemp's 0600
        atomic_write_bytes(path, b"second")
        assert path.read_bytes() == b"second"
    finally:
        os.umask(old)
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.txt"]   # no temporary files left


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = atomic_write_text(tmp_path / "x.txt", "old")

    with pytest.raises(TypeError):
        atomic_write_bytes(path, object())                          # write() raises inside the temporary file
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_an_interrupt_right_after_the_rename_stays_an_interrupt(tmp_path, monkeypatch):
    """Ctrl-C landing just after os.replace: the new file is in place and the KeyboardInterrupt (not a
    FileNotFoundError about the temporary, already renamed) reaches the caller."""
    real = os.replace

    def replace_then_interrupt(src, dst):
        real(src, dst)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", replace_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(tmp_path / "x.txt", "new")
    assert (tmp_path / "x.txt").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_figures_are_written_in_the_format_of_their_suffix(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    png = save_figure_atomically(fig, tmp_path / "f.png")
    svg = save_figure_atomically(fig, tmp_path / "f.svg")
    plt.close(fig)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in svg.read_bytes()[:400]
