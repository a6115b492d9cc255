"""atomic_save_dir on its own (no models): saving into the current working directory, the one-step exchange of the
folder, the two-rename fallback, and recovery from the leftovers of an interrupted earlier save."""

import errno
import os
import shutil

import pytest

from hf_eenet import bank
from hf_eenet.bank import atomic_save_dir


def writer(files):
    def write(tmp):
        for name, text in files.items():
            path = os.path.join(tmp, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)

    return write


def make_folder(path, files):
    path.mkdir(exist_ok=True)
    writer(files)(str(path))


def read(path):
    return path.read_text()


OLD = {"config.json": "old config", "model.safetensors": "old weights", "tokenizer.json": "tok"}
NEW = {"config.json": "new config", "model.safetensors": "new weights"}


def check_new_state(target):
    assert read(target / "config.json") == "new config" and read(target / "model.safetensors") == "new weights"
    assert read(target / "tokenizer.json") == "tok", "files the write did not produce are kept"


def exchange_supported(tmp_path):
    a, b = tmp_path / "probe_a", tmp_path / "probe_b"
    a.mkdir(), b.mkdir()
    (a / "x").write_text("a")
    try:
        ok = bank._exchange(str(a), str(b))
    finally:
        for p in (a, b):
            for f in p.iterdir():
                f.unlink()
            p.rmdir()
    return ok


# ----------------------------------------------------------------------------------------------- saving into the cwd
@pytest.mark.parametrize("where", ["target", "subfolder"])
def test_saving_into_the_cwd_keeps_the_cwd(tmp_path, where):
    target = tmp_path / "m"
    make_folder(target, OLD)
    (target / "sub").mkdir()
    (target / "sub" / "keep.txt").write_text("k")
    cwd = os.getcwd()
    try:
        os.chdir(target if where == "target" else target / "sub")
        inode = os.stat(".").st_ino
        atomic_save_dir("." if where == "target" else "..", writer(NEW))
        here = os.getcwd()  # FileNotFoundError when the folder was swapped away
        assert os.stat(".").st_ino == inode
        assert os.path.realpath(here) == os.path.realpath(target if where == "target" else target / "sub")
    finally:
        os.chdir(cwd)
    check_new_state(target)
    assert read(target / "sub" / "keep.txt") == "k"
    assert sorted(os.listdir(tmp_path)) == ["m"]
    assert not [e for e in os.listdir(target) if e.startswith(".")], "no temporary folder left inside"


def test_saving_into_the_cwd_with_a_failing_write_leaves_the_folder_untouched(tmp_path):
    target = tmp_path / "m"
    make_folder(target, OLD)

    def boom(tmp):
        writer(NEW)(tmp)
        raise OSError("disk full (simulated)")

    cwd = os.getcwd()
    try:
        os.chdir(target)
        with pytest.raises(OSError, match="disk full"):
            atomic_save_dir(".", boom)
        os.getcwd()
    finally:
        os.chdir(cwd)
    assert {p.name: read(p) for p in target.iterdir()} == OLD


def fail_replacing(monkeypatch, name):
    """``os.replace`` onto a file called ``name`` raises (a kill or I/O error while a save moves its files in)."""
    real = os.replace

    def replace(src, dst, *a, **kw):
        if os.path.basename(dst) == name:
            raise OSError(errno.EIO, "I/O error (simulated)")
        return real(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", replace)


def interrupted_save(target, files, monkeypatch):
    """Save ``files`` into ``target`` from inside it (the cwd), interrupted after the commit (before config.json)."""
    monkeypatch.chdir(target)
    with monkeypatch.context() as m:
        fail_replacing(m, "config.json")
        with pytest.raises(OSError, match="simulated"):
            atomic_save_dir(".", writer(files))


def test_an_interrupted_move_into_the_cwd_is_finished_by_the_next_load_or_save(tmp_path, monkeypatch):
    """A save into the cwd moves its files in one by one after its commit point: interrupted there, the folder holds
    new weights beside the old config; finish_interrupted_save (run by from_pretrained) or the next save moves the
    rest in, so the folder is the complete new save, not a mix."""
    for then in ("finish", "save"):
        target = tmp_path / then
        make_folder(target, OLD)
        interrupted_save(target, NEW, monkeypatch)
        assert read(target / "model.safetensors") == "new weights" and read(target / "config.json") == "old config"
        leftovers = [e for e in os.listdir(target) if e.startswith(".saving-")]
        assert len(leftovers) == 1 and os.path.isfile(target / leftovers[0] / bank.COMMIT_FILE)
        if then == "finish":
            assert bank.finish_interrupted_save(target) is True
            check_new_state(target)
            assert bank.finish_interrupted_save(target) is False  # nothing left to finish
            # the config.json it replaced, for a loader that read it before (until the next save)
            assert bank.read_finished_record(target)[:2] == ("old config", "new config")
            assert [e for e in os.listdir(target) if e.startswith(".")] == [bank.FINISHED_FILE]
        else:  # the next save finishes the interrupted one first, then writes its own
            atomic_save_dir(".", writer({"config.json": "third config", "model.safetensors": "third weights"}))
            assert read(target / "config.json") == "third config" and read(target / "tokenizer.json") == "tok"
            assert not [e for e in os.listdir(target) if e.startswith(".")], "no temporary folder left inside"
        monkeypatch.chdir(tmp_path)


def test_an_interruption_before_the_commit_leaves_the_old_folder_and_nothing_to_finish(tmp_path, monkeypatch):
    target = tmp_path / "m"
    make_folder(target, OLD)
    monkeypatch.chdir(target)

    def boom(tmp):
        writer(NEW)(tmp)
        raise KeyboardInterrupt  # a kill while writing: no commit

    monkeypatch.setattr(shutil, "rmtree", lambda *a, **k: None)  # as if the process died here
    with pytest.raises(KeyboardInterrupt):
        atomic_save_dir(".", boom)
    monkeypatch.undo()
    monkeypatch.chdir(target)
    assert [e for e in os.listdir(target) if e.startswith(".saving-")], "the unfinished folder is still there"
    assert bank.finish_interrupted_save(target) is False  # not committed: a load leaves it to the next save
    assert {p.name: read(p) for p in target.iterdir() if p.is_file()} == OLD
    atomic_save_dir(".", writer(NEW))  # the next save removes it and saves
    check_new_state(target)
    assert not [e for e in os.listdir(target) if e.startswith(".")]
    monkeypatch.chdir(tmp_path)


# ------------------------------------------------------------------------------------------------- the swap itself
def test_exchange_swaps_in_one_step_and_leaves_no_temporary_folder(tmp_path, monkeypatch):
    # CI runs on Linux (glibc >= 2.28, ext4/tmpfs/overlayfs): the exchange must be there, not silently skipped
    assert exchange_supported(tmp_path), "renameat2(RENAME_EXCHANGE) unavailable: the fallback is what runs here"
    target = tmp_path / "m"
    make_folder(target, OLD)
    real_exchange, seen = bank._exchange, []

    def exchange(a, b):
        seen.append(read(target / "config.json"))
        assert real_exchange(a, b) is True
        seen.append(read(target / "config.json"))  # the target is never missing: it is the new folder already
        return True

    def no_rename(*a, **k):
        raise AssertionError("the swap must not go through two renames")

    monkeypatch.setattr(bank, "_exchange", exchange)
    monkeypatch.setattr(os, "rename", no_rename)
    atomic_save_dir(target, writer(NEW))
    monkeypatch.undo()
    assert seen == ["old config", "new config"]
    check_new_state(target)
    assert sorted(os.listdir(tmp_path)) == ["m"]


def test_fallback_without_exchange_still_swaps(tmp_path, monkeypatch):
    target = tmp_path / "m"
    make_folder(target, OLD)
    renames = []
    real_rename = os.rename

    def rename(a, b):
        renames.append((os.path.basename(a), os.path.basename(b)))
        return real_rename(a, b)

    monkeypatch.setattr(bank, "_exchange", lambda a, b: False)
    monkeypatch.setattr(os, "rename", rename)
    atomic_save_dir(target, writer(NEW))
    monkeypatch.undo()
    check_new_state(target)
    assert len(renames) == 2 and renames[0][0] == "m" and renames[1][1] == "m"
    assert sorted(os.listdir(tmp_path)) == ["m"]


def test_exchange_reports_unsupported_as_false(monkeypatch):
    """ENOSYS / EINVAL / ENOTSUP from renameat2 mean "no exchange here": the caller falls back to two renames."""
    calls = []

    class FakeRenameat2:
        def __call__(self, *args):
            calls.append(args)
            return -1

    for code, expect in [(errno.ENOSYS, False), (errno.EINVAL, False), (errno.ENOTSUP, False), (errno.ENOENT, None)]:
        monkeypatch.setattr(bank, "_renameat2_fn", FakeRenameat2())
        import ctypes

        monkeypatch.setattr(ctypes, "get_errno", lambda code=code: code)
        if expect is None:
            with pytest.raises(FileNotFoundError):
                bank._exchange("/nonexistent/a", "/nonexistent/b")
        else:
            assert bank._exchange("a", "b") is expect
    monkeypatch.setattr(bank, "_renameat2_fn", None)  # no renameat2 symbol at all (old glibc, not Linux)
    assert bank._exchange("a", "b") is False


def test_exchange_refused_busy_replaces_files_in_place(tmp_path, monkeypatch):
    """A mount point cannot be exchanged (EBUSY): the files are replaced one by one instead."""
    target = tmp_path / "m"
    make_folder(target, {**OLD, "model-00002-of-00002.safetensors": "stale"})

    def busy(a, b):
        raise OSError(errno.EBUSY, "busy (simulated)", a)

    monkeypatch.setattr(bank, "_exchange", busy)
    inode = os.stat(target).st_ino
    atomic_save_dir(target, writer(NEW))
    check_new_state(target)
    assert os.stat(target).st_ino == inode and not (target / "model-00002-of-00002.safetensors").exists()
    assert sorted(os.listdir(tmp_path)) == ["m"] and not [e for e in os.listdir(target) if e.startswith(".")]


@pytest.mark.parametrize("how", ["ismount", "bind_mount"])
def test_a_mount_point_keeps_its_folders_and_is_written_once(tmp_path, monkeypatch, how):
    """A mount point (a container's volume as output_dir): a temporary folder beside it cannot be renamed in (EXDEV;
    a sub-folder such as checkpoint-5 was deleted, then the save failed). One ``os.path.ismount`` sees is written
    from inside; a bind mount of the same filesystem (ismount says no, the exchange is refused, renames across it
    fail with EXDEV) gets the finished files copied in. Either way ``write`` runs once (a caller's state_dict is
    consumed by the first write), sub-folders survive, and a scheduler save keeps the model's weights."""
    target = tmp_path / "m"
    make_folder(target, {**OLD, "checkpoint-5/optimizer.pt": "resume", "model-00002-of-00002.safetensors": "stale",
                         "extra": "a file"})
    real_ismount, real_replace = os.path.ismount, os.replace
    if how == "ismount":
        monkeypatch.setattr(os.path, "ismount", lambda p: os.path.realpath(p) == str(target) or real_ismount(p))
    else:
        def refused(a, b):
            raise OSError(errno.EBUSY, "busy (simulated)", a)

        def no_rename_across(src, dst):  # the kernel refuses renames across a mount's boundary
            inside = [str(p).startswith(str(target) + os.sep) for p in (src, dst)]
            if inside[0] != inside[1]:
                raise OSError(errno.EXDEV, "cross-device link (simulated)", src)
            return real_replace(src, dst)

        monkeypatch.setattr(bank, "_exchange", refused)
        monkeypatch.setattr(os, "replace", no_rename_across)
    calls = []

    def once(files):
        write = writer(files)
        return lambda tmp: (calls.append(tmp), write(tmp)) if not calls else pytest.fail("write ran twice")

    untouched = os.stat(target / "tokenizer.json").st_ino  # an entry the save does not produce (a log still open)
    atomic_save_dir(target, once(NEW))
    check_new_state(target)
    assert os.stat(target / "tokenizer.json").st_ino == untouched, "entries write did not produce stay in place"
    assert read(target / "checkpoint-5" / "optimizer.pt") == "resume"
    assert not (target / "model-00002-of-00002.safetensors").exists()  # a model save replaces the weights
    calls.clear()
    atomic_save_dir(target, once({"eenet_scheduler.json": "s", "checkpoint-5/optimizer.pt": "new",
                                  "extra/inner": "a folder now"}), replaces_weights=False)
    assert read(target / "model.safetensors") == "new weights" and read(target / "eenet_scheduler.json") == "s"
    assert read(target / "checkpoint-5" / "optimizer.pt") == "new"  # a replaced sub-folder
    assert read(target / "extra" / "inner") == "a folder now"  # a file replaced by a folder
    assert sorted(os.listdir(tmp_path)) == ["m"] and not [e for e in os.listdir(target) if e.startswith(".")]


def test_a_folder_holding_a_mount_is_saved_inside_and_cleanups_never_enter_a_mount(tmp_path, monkeypatch):
    """A volume mounted inside the folder (``/proc/self/mountinfo`` lists it; ``os.path.ismount`` misses bind
    mounts): a swap would move it away with the old folder and the clean-up would empty it. The folder is saved into
    from inside (the volume untouched), and removing a folder that holds a mount leaves the mount's files."""
    target = tmp_path / "m"
    make_folder(target, {**OLD, "data/precious.txt": "volume"})
    volume = str(target / "data")
    monkeypatch.setattr(bank, "_mount_points", lambda: {"/", volume})
    inside, real_inside = [], bank._save_inside
    monkeypatch.setattr(bank, "_save_inside", lambda *a: inside.append(a[0]) or real_inside(*a))
    atomic_save_dir(target, writer(NEW))
    assert inside == [str(target)] and read(target / "data" / "precious.txt") == "volume"
    check_new_state(target)
    bank._remove_tree(str(target))
    assert read(target / "data" / "precious.txt") == "volume"  # the mount and its files stay
    assert sorted(os.listdir(target)) == ["data"]  # everything else went


def test_mounts_at_entries_the_save_writes_are_merged_into_or_rewritten_in_place(tmp_path, monkeypatch):
    """A volume mounted at a sub-folder the save writes (checkpoint-5) and a file bind-mounted at a file it writes
    (tokenizer.json) cannot be renamed (EBUSY): found before anything moves, the folder is merged into and the file
    rewritten in place (renaming them failed halfway, leaving new weights beside the old config)."""
    target = tmp_path / "m"
    make_folder(target, {**OLD, "checkpoint-5/optimizer.pt": "old", "checkpoint-5/keep.txt": "volume"})
    mounted = {str(target / "checkpoint-5"), str(target / "tokenizer.json")}
    monkeypatch.setattr(bank, "_mount_points", lambda: {"/", *mounted})
    real_rename, real_replace = os.rename, os.replace

    def busy_on_mounts(real):
        def call(src, dst):  # a rename of the mount point itself (not of a link to it) is refused
            named = {os.path.join(os.path.realpath(os.path.dirname(p)), os.path.basename(p)) for p in (src, dst)}
            if named & mounted:
                raise OSError(errno.EBUSY, "mount point (simulated)", src)
            return real(src, dst)
        return call

    monkeypatch.setattr(os, "rename", busy_on_mounts(real_rename))
    monkeypatch.setattr(os, "replace", busy_on_mounts(real_replace))
    atomic_save_dir(target, writer({**NEW, "checkpoint-5/optimizer.pt": "new", "tokenizer.json": "new tok"}))
    assert read(target / "config.json") == "new config" and read(target / "model.safetensors") == "new weights"
    assert read(target / "checkpoint-5" / "optimizer.pt") == "new" and read(target / "tokenizer.json") == "new tok"
    assert read(target / "checkpoint-5" / "keep.txt") == "volume"
    with pytest.raises(OSError, match="cannot change from a file to a folder"):  # refused before anything moves
        atomic_save_dir(target, writer({"config.json": "newer", "model.safetensors": "w",
                                        "tokenizer.json/x": "a folder"}))
    assert read(target / "config.json") == "new config"
    os.symlink(target / "checkpoint-5", target / "link")  # a link to a mount is replaced as a link, not followed
    atomic_save_dir(target, writer({"model.safetensors": "w", "link/inner": "a folder"}))
    assert not os.path.islink(target / "link") and read(target / "link" / "inner") == "a folder"
    assert read(target / "checkpoint-5" / "keep.txt") == "volume"


def test_leftovers_holding_a_mount_are_cleaned_up_without_entering_it(tmp_path, monkeypatch):
    target = tmp_path / "m"
    make_folder(target, OLD)
    leftover = tmp_path / ".m.old-abcd1234"  # a backup an interrupted earlier save left beside the folder
    make_folder(leftover, {"config.json": "older", "data/precious.txt": "volume"})
    monkeypatch.setattr(bank, "_mount_points", lambda: {"/", str(leftover / "data")})
    atomic_save_dir(target, writer(NEW))
    check_new_state(target)
    assert read(leftover / "data" / "precious.txt") == "volume" and not (leftover / "config.json").exists()


def test_mountinfo_is_parsed_with_its_escapes():
    line = r"36 35 98:0 /mnt1 /mnt/my\040data\011x rw,noatime master:1 - ext3 /dev/root rw"
    assert bank._parse_mountinfo(line + "\n") == {"/mnt/my data\tx"}
    assert ("/" in bank._mount_points()) == os.path.exists("/proc/self/mountinfo")  # Linux: the root is listed


def test_saving_inside_a_folder_creates_its_temporary_folder_under_the_folder_lock(tmp_path):
    """Inside a folder (cwd, mount point) the clean-up of leftovers and the creation + marking of the save's own
    temporary folder happen under a lock on the folder, as beside it: a concurrent save's clean-up cannot remove a
    temporary folder created but not yet marked."""
    import threading

    target = tmp_path / "m"
    make_folder(target, OLD)
    guard = bank._lock_folder(str(target))  # another save of this folder is between its clean-up and its mark
    assert guard is not None
    done = threading.Event()
    worker = threading.Thread(target=lambda: (bank._save_inside(str(target), writer(NEW)), done.set()))
    worker.start()
    try:
        assert not done.wait(0.5) and not [e for e in os.listdir(target) if e.startswith(".saving-")]
    finally:
        os.close(guard)
    worker.join(30)
    assert done.is_set()
    check_new_state(target)


# ------------------------------------------------------------------------- leftovers of an interrupted earlier save
def test_killed_between_the_two_renames_restores_the_old_folder_then_saves(tmp_path):
    """The fallback was killed after ``target -> .m.old-*`` and before ``.m.saving-* -> target``."""
    target = tmp_path / "m"
    make_folder(tmp_path / ".m.old-x1x2x3x4", OLD)
    make_folder(tmp_path / ".m.saving-y1y2y3y4", {"config.json": "half-finished"})
    seen = []

    def write(tmp):
        seen.append(sorted(os.listdir(target)))  # the old folder is back before the new save is written
        writer(NEW)(tmp)

    atomic_save_dir(target, write)
    assert seen == [sorted(OLD)]
    check_new_state(target)
    assert sorted(os.listdir(tmp_path)) == ["m"]


def test_leftover_temporary_folders_are_removed_and_nothing_else(tmp_path):
    target = tmp_path / "m"
    make_folder(target, OLD)
    for name in [".m.saving-abc12345", ".m.saving-x_x_x_x_", ".m.old-q1w2e3r4"]:  # mkdtemp's 8-character suffixes
        make_folder(tmp_path / name, {"config.json": "leftover"})
    # not ours: other names, other suffixes (a hand-named ".m.old-v1" backup is never taken for a leftover)
    others = [".m2.saving-x1234567", "m.saving-x1234567", ".m.saving-", ".n.old-x1234567", ".m.old-x1234567.bak",
              ".m.old-v1", ".m.saving-abc123", ".m.saving-ABCD1234", "m"]
    for name in others[:-1]:
        make_folder(tmp_path / name, {"f": "keep"})
    (tmp_path / ".m.old-file").write_text("a file, not one of our folders")
    atomic_save_dir(target, writer(NEW))
    check_new_state(target)
    assert sorted(os.listdir(tmp_path)) == sorted(others + [".m.old-file"])
    assert all(read(tmp_path / n / "f") == "keep" for n in others[:-1])


@pytest.mark.parametrize("inside", [False, True])
def test_a_save_killed_inside_a_nested_save_leaves_nothing_after_the_next_save(tmp_path, monkeypatch, inside):
    """EENetTrainer._save runs model.save_pretrained (an atomic save) on its own temporary folder: a kill while the
    inner save writes leaves both temporary folders (the inner one named after the outer one); the next save of the
    folder removes both, beside it and (``inside``: a folder saved from inside, e.g. a mount point) in it."""
    import subprocess
    import sys
    import textwrap

    target = tmp_path / "m"
    make_folder(target, OLD)
    script = textwrap.dedent(f"""
        import os
        from hf_eenet import bank
        from hf_eenet.bank import atomic_save_dir
        if {inside!r}:
            bank._mounts_at_or_below = lambda path: os.path.basename(path) == "m"
        def inner(tmp):
            open(os.path.join(tmp, "model.safetensors"), "w").write("half")
            os._exit(9)  # killed while the weights are written
        atomic_save_dir({str(target)!r}, lambda tmp: atomic_save_dir(tmp, inner))
    """)
    assert subprocess.run([sys.executable, "-c", script]).returncode == 9
    where = target if inside else tmp_path
    left = [e for e in os.listdir(where) if e.startswith(("..", ".m.", ".saving-"))]
    assert any(e.startswith("..") for e in left) and len(left) == 2  # the outer and the inner temporary folder
    if inside:
        monkeypatch.setattr(bank, "_mounts_at_or_below", lambda path: os.path.basename(path) == "m")
    atomic_save_dir(target, writer(NEW))
    check_new_state(target)
    assert sorted(os.listdir(tmp_path)) == ["m"]
    assert sorted(os.listdir(target)) == sorted(set(OLD) | set(NEW))


@pytest.mark.parametrize("exchange", [True, False])
def test_a_nested_save_hands_its_lock_to_the_outer_save_that_goes_on_writing(tmp_path, monkeypatch, exchange):
    """The inner save swaps a new folder in under the outer save's temporary folder: that path stays marked in use
    (a concurrent save's clean-up must not take it for a leftover) until the outer save ends; no descriptor leaks."""
    if not exchange:  # the two-rename fallback
        monkeypatch.setattr(bank, "_exchange", lambda a, b: False)
    target = tmp_path / "m"
    make_folder(target, OLD)
    seen = []

    def outer(tmp):
        atomic_save_dir(tmp, writer({"model.safetensors": "new weights"}))
        seen.append((bank._in_use(tmp), bank._leftovers(str(tmp_path), ".m.saving-")))
        writer({"config.json": "new config"})(tmp)

    fds = len(os.listdir("/proc/self/fd"))
    atomic_save_dir(target, outer)
    assert seen == [(True, [])]
    check_new_state(target)
    assert sorted(os.listdir(tmp_path)) == ["m"] and not bank._HELD
    assert len(os.listdir("/proc/self/fd")) == fds


def test_a_leftover_old_folder_beside_an_existing_target_is_not_restored(tmp_path):
    target = tmp_path / "m"
    make_folder(target, OLD)
    make_folder(tmp_path / ".m.old-x1x2x3x4", {"config.json": "older"})
    atomic_save_dir(target, writer(NEW))
    check_new_state(target)
    assert sorted(os.listdir(tmp_path)) == ["m"]


def test_a_folder_in_use_by_a_running_save_is_not_removed(tmp_path):
    """Another process saving the same folder holds a lock on its temporary folder: a second save leaves it."""
    probe = bank._hold(str(tmp_path))
    assert probe is not None, "flock unavailable here"
    os.close(probe)
    target = tmp_path / "m"
    make_folder(target, OLD)
    busy = tmp_path / ".m.saving-busy1234"
    busy.mkdir()
    fd = bank._hold(str(busy))
    try:
        atomic_save_dir(target, writer(NEW))
    finally:
        os.close(fd)
    assert busy.is_dir()
    atomic_save_dir(target, writer(NEW))
    assert sorted(os.listdir(tmp_path)) == ["m"]


def test_first_save_into_a_missing_folder(tmp_path):
    atomic_save_dir(tmp_path / "a" / "m", writer(NEW))
    assert read(tmp_path / "a" / "m" / "config.json") == "new config"
    assert os.listdir(tmp_path / "a") == ["m"]


def test_concurrent_saves_of_one_folder_never_remove_each_others_temporary_folder(tmp_path, monkeypatch):
    """Save A has created its temporary folder but not yet marked it in use when save B of the same folder starts
    (a thread: flock is per open file, so threads exclude each other as processes do). B's clean-up of leftovers
    must not remove A's folder: creating and marking it is one step under the parent folder's lock, so B waits."""
    import threading

    real_hold = bank._hold
    target = tmp_path / "m"
    make_folder(target, OLD)
    other, errors = [], []

    def save_b():
        try:
            atomic_save_dir(target, writer({"config.json": "b", "model.safetensors": "w-b"}))
        except Exception as err:  # noqa: BLE001 - asserted below
            errors.append(repr(err))

    def hold_after_b_tried(path):  # A, between mkdtemp and marking its folder: B starts and gets 0.3 s
        if not other:
            other.append(threading.Thread(target=save_b))
            other[0].start()
            other[0].join(timeout=0.3)
        return real_hold(path)

    def write_a(tmp):
        assert os.path.isdir(tmp), "save B removed save A's temporary folder"
        writer({"config.json": "a", "model.safetensors": "w-a"})(tmp)

    monkeypatch.setattr(bank, "_hold", hold_after_b_tried)
    atomic_save_dir(target, write_a)
    other[0].join()
    assert errors == []
    cfg = read(target / "config.json")
    assert cfg in ("a", "b") and read(target / "model.safetensors") == "w-" + cfg  # one save's files, not a mix
    assert sorted(os.listdir(tmp_path)) == ["m"]


def test_a_committed_save_that_cannot_be_finished_does_not_block_the_next_save(tmp_path, monkeypatch):
    target = tmp_path / "m"
    make_folder(target, OLD)
    monkeypatch.chdir(target)
    with monkeypatch.context() as m:
        fail_replacing(m, "config.json")
        with pytest.raises(OSError, match="simulated") as err:
            atomic_save_dir(".", writer(NEW))
    assert any("next save of the folder or from_pretrained of it finishes" in n for n in err.value.__notes__)

    def cannot(path, target, *args):
        raise OSError(errno.EIO, "still failing (simulated)")

    monkeypatch.setattr(bank, "_finish_one", cannot)

    def write_fails(tmp):
        raise OSError(errno.ENOSPC, "disk full (simulated)")

    with pytest.warns(RuntimeWarning, match=r"could not be finished"), pytest.raises(OSError, match="disk full"):
        atomic_save_dir(".", write_fails)  # fails before its commit: the committed one is kept, to finish later
    assert [e for e in os.listdir(target) if e.startswith(".saving-")]
    with pytest.warns(RuntimeWarning, match=r"could not be finished \(.*still failing"):
        atomic_save_dir(".", writer({"config.json": "third config", "model.safetensors": "third weights"}))
    assert read(target / "config.json") == "third config" and read(target / "model.safetensors") == "third weights"
    assert not [e for e in os.listdir(target) if e.startswith(".")]
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("finisher_cwd", ["sub", "elsewhere"])
def test_finishing_a_merge_keeps_what_it_had_moved_in(tmp_path, monkeypatch, finisher_cwd):
    """A sub-folder holding the cwd is merged into, not replaced; a save interrupted halfway through that merge is
    finished by merging again (the weights already moved in stay), wherever the finisher runs."""
    target = tmp_path / "m"
    make_folder(target, {**OLD, "sub/config.json": "old sub config", "sub/model.safetensors": "old sub w"})
    monkeypatch.chdir(target / "sub")
    with monkeypatch.context() as m:
        fail_replacing(m, "config.json")  # sub/model.safetensors moves in, sub/config.json fails
        with pytest.raises(OSError, match="simulated"):
            atomic_save_dir("..", writer({**NEW, "sub/config.json": "new sub config", "sub/model.safetensors": "new sub w"}))
    assert read(target / "sub" / "model.safetensors") == "new sub w" and read(target / "sub" / "config.json") == \
        "old sub config"
    monkeypatch.chdir(target / "sub" if finisher_cwd == "sub" else tmp_path)
    assert bank.finish_interrupted_save(target) is True
    assert read(target / "sub" / "model.safetensors") == "new sub w" and read(target / "sub" / "config.json") == \
        "new sub config"
    check_new_state(target)
    monkeypatch.chdir(tmp_path)


def test_a_load_never_finishes_where_no_lock_tells_a_running_save_from_an_interrupted_one(tmp_path, monkeypatch):
    target = tmp_path / "m"
    make_folder(target, OLD)
    interrupted_save(target, NEW, monkeypatch)
    monkeypatch.chdir(tmp_path)
    with monkeypatch.context() as m:
        m.setattr(bank, "_lock_folder", lambda path: None)  # no fcntl / a filesystem without flock
        with pytest.warns(RuntimeWarning, match=r"no file lock can be taken .*force=True"):
            assert bank.finish_interrupted_save(target) is False
        assert read(target / "config.json") == "old config"
        assert bank.finish_interrupted_save(target, force=True) is True  # the user knows no save is running
    check_new_state(target)


def test_a_finished_save_drops_its_commit_before_unlocking(tmp_path, monkeypatch):
    """Between the unlock and the removal of a save's temporary folder a loader may look in: the manifest is gone
    by then, so the loader never takes a save that ended for one that was interrupted."""
    target = tmp_path / "m"
    make_folder(target, OLD)
    monkeypatch.chdir(target)
    seen, real = [], bank._release

    def release(tmp, *a, **kw):
        seen.append(os.path.exists(os.path.join(tmp, bank.COMMIT_FILE)))
        return real(tmp, *a, **kw)

    monkeypatch.setattr(bank, "_release", release)
    atomic_save_dir(".", writer(NEW))
    assert seen == [False]
    check_new_state(target)
    monkeypatch.chdir(tmp_path)


def test_the_newest_commit_is_finished_and_older_ones_dropped(tmp_path, monkeypatch):
    """Two committed leftovers (a save killed between its commit and removing an older one it could not finish): the
    newest is the folder's state, the older is never applied over it; the record keeps the config before both."""
    target = tmp_path / "m"
    make_folder(target, OLD)
    interrupted_save(target, {"config.json": "v1", "model.safetensors": "w1"}, monkeypatch)
    first = [e for e in os.listdir(target) if e.startswith(".saving-")]
    real = bank._finish_or_remove_inside
    monkeypatch.setattr(bank, "_finish_or_remove_inside", lambda target: [])  # the kill: nothing finished/removed
    interrupted_save(target, {"config.json": "v2", "model.safetensors": "w2"}, monkeypatch)
    monkeypatch.setattr(bank, "_finish_or_remove_inside", real)
    os.utime(target / first[0], (4e9, 4e9))  # folder times mislead (moves, coarse clocks): the commit's own time counts
    monkeypatch.chdir(tmp_path)
    assert len([e for e in os.listdir(target) if e.startswith(".saving-")]) == 2
    assert bank.finish_interrupted_save(target) is True
    assert read(target / "config.json") == "v2" and read(target / "model.safetensors") == "w2"
    assert bank.read_finished_record(target)[:2] == ("old config", "v2")
    assert bank.finish_interrupted_save(target) is False
    assert [e for e in os.listdir(target) if e.startswith(".")] == [bank.FINISHED_FILE]


def test_a_removal_cut_short_never_leaves_a_save_to_finish_again(tmp_path, monkeypatch):
    """An obsolete commit is uncommitted before its folder is removed: a kill during the removal leaves no manifest
    over a half-deleted save, which a later finish would install over the newest one."""
    target = tmp_path / "m"
    make_folder(target, OLD)
    interrupted_save(target, {"config.json": "v1", "model.safetensors": "w1"}, monkeypatch)
    real = bank._finish_or_remove_inside
    monkeypatch.setattr(bank, "_finish_or_remove_inside", lambda target: [])
    interrupted_save(target, {"config.json": "v2", "model.safetensors": "w2"}, monkeypatch)
    monkeypatch.setattr(bank, "_finish_or_remove_inside", real)
    monkeypatch.chdir(tmp_path)
    with monkeypatch.context() as m:
        m.setattr(bank.shutil, "rmtree", lambda *a, **k: None)  # the removals are cut short (a kill)
        assert bank.finish_interrupted_save(target) is True
    assert len([e for e in os.listdir(target) if e.startswith(".saving-")]) == 2  # both still there, uncommitted
    assert bank.finish_interrupted_save(target) is False
    assert read(target / "config.json") == "v2" and read(target / "model.safetensors") == "w2"


def test_a_save_from_elsewhere_finishes_an_interrupted_one_first_and_drops_the_record(tmp_path, monkeypatch):
    """A save of other files (a scheduler into the model folder: weights kept) swapped in from another cwd would
    carry the mix (new weights, old config) over and drop the journal: it finishes it first; the record of a
    finish is not carried into the new folder."""
    target = tmp_path / "m"
    make_folder(target, OLD)
    interrupted_save(target, NEW, monkeypatch)
    monkeypatch.chdir(tmp_path)
    atomic_save_dir(target, writer({"scheduler.json": "s"}), replaces_weights=False)
    check_new_state(target)
    assert read(target / "scheduler.json") == "s"
    assert not [e for e in os.listdir(target) if e.startswith(".")], "journal finished, record not carried over"


def test_resuming_a_merge_two_levels_deep_with_sharded_weights(tmp_path, monkeypatch):
    """cwd two folders deep (a/b) is merged at both levels; the finish merges again at both, and drops the stale
    single weights file the new sharded ones replace, as the uninterrupted save does."""
    target = tmp_path / "m"
    make_folder(target, {**OLD, "a/b/model.safetensors": "old b w", "a/b/config.json": "old b config"})
    new = {**NEW, "a/b/model-00001-of-00002.safetensors": "s1", "a/b/model-00002-of-00002.safetensors": "s2",
           "a/b/config.json": "new b config"}
    monkeypatch.chdir(target / "a" / "b")
    with monkeypatch.context() as m:
        fail_replacing(m, "config.json")
        with pytest.raises(OSError, match="simulated"):
            atomic_save_dir("../..", writer(new))
    monkeypatch.chdir(tmp_path)
    assert bank.finish_interrupted_save(target) is True
    assert sorted(os.listdir(target / "a" / "b")) == ["config.json", "model-00001-of-00002.safetensors",
                                                       "model-00002-of-00002.safetensors"]
    assert read(target / "a" / "b" / "config.json") == "new b config"
    check_new_state(target)


def test_leftovers_of_saved_sub_folders_are_mended_before_an_upload_and_never_uploaded(tmp_path):
    """``recover_leftovers_in`` (EENetTrainer.push_to_hub runs it on output_dir): a checkpoint killed between the two
    renames gets its old folder back, a killed checkpoint write is removed; a running save's folder, other names and
    the sub-folders themselves stay. ``SAVE_LEFTOVER_PATTERNS`` skips all of them in an upload, at any depth."""
    import fnmatch

    out = tmp_path / "out"
    out.mkdir()
    make_folder(out / "checkpoint-2", OLD)
    make_folder(out / ".checkpoint-2.saving-a1b2c3d4", {"model.safetensors": "half"})
    make_folder(out / ".checkpoint-3.old-q1w2e3r4", OLD)  # killed between the renames: checkpoint-3 missing
    make_folder(out / ".checkpoint-3.saving-y1y2y3y4", NEW)
    make_folder(out / ".checkpoint-4.saving-busy1234", {"model.safetensors": "being written"})
    make_folder(out / ".notes.old-v1", {"f": "keep"})  # a hand-named backup
    fd = bank._hold(str(out / ".checkpoint-4.saving-busy1234"))
    try:
        assert bank.recover_leftovers_in(out) == ["checkpoint-2", "checkpoint-3", "checkpoint-4"]
    finally:
        if fd is not None:
            os.close(fd)
    assert sorted(os.listdir(out)) == [".checkpoint-4.saving-busy1234", ".notes.old-v1", "checkpoint-2",
                                       "checkpoint-3"]
    assert read(out / "checkpoint-3" / "config.json") == OLD["config.json"]
    assert bank.recover_leftovers_in(out / "checkpoint-2") == [] and bank.recover_leftovers_in(tmp_path / "no") == []
    skipped = [".checkpoint-4.saving-busy1234/model.safetensors", "sub/.m.old-q1w2e3r4/config.json",
               ".saving-abcd1234/config.json", ".eenet-finished.json", "a/.eenet-commit.json",
               ".m.moving-abcd1234/x"]
    kept = ["model.safetensors", "checkpoint-2/config.json", "notes/a.old-file", "README.md"]
    for path in skipped + kept:
        assert any(fnmatch.fnmatch(path, p) for p in bank.SAVE_LEFTOVER_PATTERNS) == (path in skipped), path


@pytest.mark.parametrize("inside", [False, True])
def test_a_save_that_writes_no_weights_keeps_the_old_ones(tmp_path, monkeypatch, inside):
    """A save that wrote no weight files of its own keeps the folder's weights, as the stock save into the folder
    would: the stock save on a rank other than 0 writes nothing (swapped in, the folder lost its weights and no longer
    loaded: review 84), a PEFT adapter writes adapter_model*, a variant= save model.<variant>.safetensors (review 85).
    A save that writes weights still drops the old ones (the new ones replace them)."""
    target = tmp_path / "m"
    make_folder(target, OLD)
    if inside:  # the journal path (a mount point / the working directory)
        monkeypatch.setattr(bank, "_mount_points", lambda: {"/", str(target)})
    atomic_save_dir(target, writer({"pipeline_eenet.py": "code"}))
    assert read(target / "model.safetensors") == OLD["model.safetensors"] and read(target / "pipeline_eenet.py") == "code"
    atomic_save_dir(target, writer({"adapter_model.safetensors": "lora", "adapter_config.json": "{}"}))  # PEFT
    assert read(target / "adapter_model.safetensors") == "lora" and read(target / "model.safetensors") == "old weights"
    atomic_save_dir(target, writer({"model.fp16.safetensors": "half", "config.json": "c"}))  # variant="fp16"
    assert read(target / "model.fp16.safetensors") == "half" and read(target / "model.safetensors") == "old weights"
    # the same variant sharded (review 86): its old single file goes (it loads before an index), the plain one stays
    # (the variant's index, model.safetensors.index.fp16.json, is no plain weight file: it dropped them before)
    atomic_save_dir(target, writer({"model.fp16-00001-of-00002.safetensors": "h1",
                                    "model.fp16-00002-of-00002.safetensors": "h2",
                                    "model.safetensors.index.fp16.json": "{}"}))
    assert not (target / "model.fp16.safetensors").exists() and read(target / "model.safetensors") == "old weights"
    atomic_save_dir(target, writer({"model-00001-of-00002.safetensors": "a", "model-00002-of-00002.safetensors": "b",
                                    "model.safetensors.index.json": "{}"}))  # sharded weights replace the old ones
    assert not (target / "model.safetensors").exists() and read(target / "model-00001-of-00002.safetensors") == "a"
    assert read(target / "model.fp16-00001-of-00002.safetensors") == "h1"  # another variant: kept
    atomic_save_dir(target, writer({"model.safetensors": "one"}))  # and unsharded again: the shards and index go
    assert sorted(p.name for p in target.iterdir() if p.name.startswith("model")) == [
        "model.fp16-00001-of-00002.safetensors", "model.fp16-00002-of-00002.safetensors", "model.safetensors",
        "model.safetensors.index.fp16.json"]
    # a variant with a dot in its name (transformers inserts any string), and files transformers does not write
    # under those stems (model.bin of CTranslate2 / fastText repos): review 87
    (target / "model.bin").write_text("not ours")
    atomic_save_dir(target, writer({"model.v1.1.safetensors": "v"}))
    atomic_save_dir(target, writer({"model.v1.1-00001-of-00002.safetensors": "v1", "model.safetensors.index.v1.1.json":
                                    "{}", "model.safetensors": "two"}))
    assert not (target / "model.v1.1.safetensors").exists() and read(target / "model.bin") == "not ours"
    assert read(target / "model.fp16-00001-of-00002.safetensors") == "h1"


def test_finishing_an_older_manifest_keeps_weights_its_save_did_not_write(tmp_path):
    """A committed save whose manifest says replaces_weights (as b0c1e05 wrote for an adapter save) is finished with
    today's rule: the weights it did not write stay (review 86: the finish dropped model.safetensors)."""
    target = tmp_path / "m"
    make_folder(target, OLD)
    leftover = target / ".saving-ab12cd34"  # (a tempfile.mkdtemp suffix)
    leftover.mkdir()
    (leftover / "adapter_model.safetensors").write_text("lora")
    bank._commit(str(leftover), ["adapter_model.safetensors"], (), True)
    bank.finish_interrupted_save(str(target), force=True)
    assert read(target / "adapter_model.safetensors") == "lora" and read(target / "model.safetensors") == "old weights"
    assert not leftover.exists()
    # a variant save's manifest as f77e04d wrote it (replaces_weights False): its old single file still goes
    (target / "model.fp16.safetensors").write_text("old half")
    leftover = target / ".saving-cd34ef56"
    leftover.mkdir()
    (leftover / "model.fp16-00001-of-00001.safetensors").write_text("new half")
    bank._commit(str(leftover), ["model.fp16-00001-of-00001.safetensors"], (), False)
    bank.finish_interrupted_save(str(target), force=True)
    assert not (target / "model.fp16.safetensors").exists() and read(target / "model.safetensors") == "old weights"
