"""Every command that writes, walked with hostile output targets: an unrelated directory,
``.``, the input itself, symlinks to either, a read-only place, a full disk. Whatever the
command answers, nothing that existed before may be lost or changed; a refused target is a
one-line error with exit code 2, said before any work (no model is loaded: these run in
well under a second each)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from editalign.cli import main
from editalign.outputs import (
    LOCK,
    MARKER,
    OutputError,
    RunLock,
    atomic_open,
    claim_dir,
    lock_scope,
    mark_dir,
    read_done,
    write_done,
)
from editalign.train.cli import claim_output_dir

PAIRS = [{"id": "a", "prompt": "Say hi.", "original": "hello there friend",
          "revised": "hi there friend"},
         {"id": "b", "prompt": "Count.", "original": "one two four", "revised": "one two three"}]

# Each command that writes: its argv for an output target, what the target is (a file or
# a directory) and which of its inputs the "input" targets point at.
COMMANDS: dict[str, tuple[list[str], str, str]] = {
    "label": (["label", "--data", "in.jsonl", "--model", "tiny", "--out"], "dir", "in.jsonl"),
    "score": (["score", "--reward-model", "rm", "--data", "in.jsonl", "--out"], "dir",
              "in.jsonl"),
    "eval winrate": (["eval", "winrate", "--policy", "tiny", "--reference", "tiny",
                      "--prompts", "prompts.jsonl", "--out"], "file", "prompts.jsonl"),
    "eval winrate samples": (["eval", "winrate", "--policy", "tiny", "--reference", "tiny",
                              "--prompts", "prompts.jsonl", "--samples-out"], "file",
                             "prompts.jsonl"),
    "eval qe": (["eval", "qe", "--reward-model", "rm", "--data", "in.jsonl", "--dev",
                 "in.jsonl", "--out"], "dir", "in.jsonl"),
    "bench init": (["bench", "init", "--smoke", "--out"], "dir", "in.jsonl"),
    "bench run": (["bench", "run", "--bench", "benchdir", "--out"], "dir", "benchdir"),
    "loop": (["loop", "--out"], "dir", "in.jsonl"),
    "sample": (["sample", "--model", "tiny", "--prompts", "prompts.jsonl", "--out"], "file",
               "prompts.jsonl"),
    "revise": (["revise", "--data", "in.jsonl", "--api-base", "http://127.0.0.1:9/v1",
                "--model", "m", "--out"], "file", "in.jsonl"),
    "revise dropped": (["revise", "--data", "in.jsonl", "--api-base", "http://127.0.0.1:9/v1",
                        "--model", "m", "--out", "kept.jsonl", "--dropped"], "file",
                       "in.jsonl"),
    "annotate export": (["annotate", "--data", "in.jsonl", "--export", "--out"], "file",
                        "in.jsonl"),
    "train figa": (["train", "figa", "--model", "tiny", "--data", "in.jsonl", "--max_steps",
                    "1", "--output_dir"], "dir", "in.jsonl"),
    "train ppo": (["train", "ppo", "--model", "tiny", "--prompts", "prompts.jsonl",
                   "--reward_model", "rm", "--output_dir"], "dir", "prompts.jsonl"),
}


def _snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root``: a file's hash, a link's target, ``dir`` for a directory."""
    found = {}
    for path in sorted(root.rglob("*")):
        key = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[key] = "-> " + os.readlink(path)
        elif path.is_dir():
            found[key] = "dir"
        else:
            found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A working directory with the inputs, an unrelated directory and symlinks."""
    root = tmp_path / "work"
    root.mkdir()
    (root / "in.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    (root / "prompts.jsonl").write_text('{"id": "p0", "prompt": "Say hi."}\n')
    (root / "real").mkdir()
    (root / "real" / "thesis.txt").write_text("years of work\n")
    (root / "benchdir").mkdir()
    (root / "benchdir" / "config.json").write_text("{}\n")
    (root / "link-dir").symlink_to("real")
    monkeypatch.chdir(root)
    return root


def _hostile(kind: str, input_name: str) -> dict[str, str]:
    """The hostile targets for a command (relative to the working directory)."""
    (Path("link-input")).unlink(missing_ok=True)
    Path("link-input").symlink_to(input_name)
    return {"unrelated directory": "real", "current directory": ".", "the input": input_name,
            "symlink to the input": "link-input", "symlink to a directory": "link-dir"}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_hostile_targets_are_refused_and_nothing_is_lost(command, work, capsys):
    argv, kind, input_name = COMMANDS[command]
    targets = _hostile(kind, input_name)
    for name, target in targets.items():
        before = _snapshot(work)
        started = time.perf_counter()
        code = main([*argv, target])
        err = capsys.readouterr().err.strip()
        assert _snapshot(work) == before, f"{command} --out {target} ({name}) changed files"
        assert code == 2, f"{command} with {name}: exit {code}, stderr {err!r}"
        flag = argv[-1]
        last = err.splitlines()[-1]
        assert f"editalign {command.split()[0]}: error: {flag} " in last, (name, err)
        # refused before any model or data set loaded
        assert time.perf_counter() - started < 20, (command, name)


def _mount_tmpfs(path: Path, size: str) -> bool:
    """A small tmpfs at ``path`` (root on Linux, where mounting is allowed); else False."""
    if sys.platform != "linux" or os.geteuid() != 0 or not shutil.which("mount"):
        return False
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True)
    return done.returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def read_only_dir(work):
    """A read-only directory with a file in it: a read-only mount where this process may
    mount one (as root, permissions alone do not stop writes), else a 0555 directory."""
    place = work / "ro"
    if _mount_tmpfs(place, "1m"):
        (place / "notes.txt").write_text("keep\n")
        remount = subprocess.run(["mount", "-o", "remount,ro", str(place)],
                                 capture_output=True)
        if remount.returncode != 0:
            _umount(place)
            pytest.skip("cannot remount the tmpfs read-only here")
        yield place
        _umount(place)
        return
    if os.geteuid() == 0:
        pytest.skip("root writes into 0555 directories and no read-only mount is possible")
    place.mkdir()
    (place / "notes.txt").write_text("keep\n")
    place.chmod(0o555)
    yield place
    place.chmod(0o755)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_read_only_place_is_refused_before_any_work(command, read_only_dir, work, capsys):
    argv, kind, _ = COMMANDS[command]
    before = _snapshot(work)
    for target in ("ro/out" + ("" if kind == "dir" else ".jsonl"), "ro"):
        code = main([*argv, target])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert code == 2, (command, target, err)
        assert argv[-1] in err, err
    assert _snapshot(work) == before


@pytest.fixture
def full_disk(work):
    """A small filesystem filled to the last byte, holding an earlier output."""
    place = work / "full"
    if not _mount_tmpfs(place, "256k"):
        pytest.skip("no small filesystem can be mounted here (needs root on Linux)")
    try:
        (place / "edits.jsonl").write_text('{"earlier": "export"}\n')
        with contextlib.suppress(OSError), open(place / "filler", "wb") as handle:
            while True:
                handle.write(b"x" * 4096)
                handle.flush()
        yield place
    finally:
        _umount(place)


def test_a_full_disk_is_said_and_the_earlier_file_survives(full_disk, work, capsys):
    before = (full_disk / "edits.jsonl").read_bytes()
    with pytest.raises(OutputError, match="no space left on device while writing"), \
            atomic_open(full_disk / "edits.jsonl") as handle:
        handle.write("x" * 100_000)
    assert (full_disk / "edits.jsonl").read_bytes() == before
    # The command: annotate's export onto the full disk (its database elsewhere).
    code = main(["annotate", "--data", "in.jsonl", "--db", "items.sqlite", "--export",
                 "--out", str(full_disk / "edits.jsonl")])
    assert code in (0, 2)  # nothing annotated: the export may fit (an empty file)
    code = main(["label", "--data", "in.jsonl", "--model", "tiny", "--out",
                 str(full_disk / "labels")])
    err = capsys.readouterr().err
    assert code == 2 and "no space left on device" in err, err
    assert (full_disk / "edits.jsonl").read_bytes() in (before, b"")
    assert not any(p.name.startswith(".labels.") for p in full_disk.iterdir())


# --------------------------------------------------------------------------- label


def test_label_replaces_only_its_own_output_and_keeps_a_symlink(work, capsys):
    umask = os.umask(0o022)
    os.umask(umask)
    assert main(["label", "--data", "in.jsonl", "--model", "tiny", "--out", "labels"]) == 0
    assert json.loads((work / "labels" / MARKER).read_text())["command"] == "label"
    assert (work / "labels").stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700
    (work / "link-labels").symlink_to("labels")
    assert main(["label", "--data", "in.jsonl", "--model", "tiny", "--out", "link-labels"]) == 0
    assert (work / "link-labels").is_symlink() and (work / "labels" / "stats.json").is_file()
    # an earlier label output with another marker is no label output
    (work / "labels" / MARKER).write_text(json.dumps({"command": "score"}))
    assert main(["label", "--data", "in.jsonl", "--model", "tiny", "--out", "labels"]) == 2
    assert "the output of `editalign score`" in capsys.readouterr().err


def test_label_says_a_missing_data_file_before_loading_anything(work, capsys):
    started = time.perf_counter()
    code = main(["label", "--data", "nope.jsonl", "--model", "no-such-model", "--out", "o"])
    assert code == 2 and "--data nope.jsonl: no such file" in capsys.readouterr().err
    assert time.perf_counter() - started < 5 and not (work / "o").exists()


# --------------------------------------------------------------------------- locks


HOLD = textwrap.dedent("""
    import sys, time
    from editalign.outputs import RunLock
    RunLock(sys.argv[1], what="out", command="bench run").acquire()
    print("held", flush=True)
    time.sleep(60)
""")


@contextlib.contextmanager
def _held_elsewhere(lock: Path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE,
                            env=env, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_a_second_run_into_a_locked_directory_is_refused_with_the_holders_pid(work, capsys):
    out = work / "run"
    out.mkdir()
    with _held_elsewhere(out / LOCK) as pid:
        code = main(["bench", "run", "--bench", "benchdir", "--out", "run"])
        err = capsys.readouterr().err
        assert code == 2 and f"in use by another `editalign bench run` run (PID {pid})" in err
        with pytest.raises(OutputError, match=f"PID {pid}"):
            claim_dir(out, flag="--output_dir", command="train")


def test_the_other_processes_of_a_launched_train_run_check_but_do_not_lock(work, monkeypatch):
    """torchrun / accelerate launch: every rank parses the command line; rank 0 holds the
    lock and the others must not refuse their own run as "in use" (they did, which broke
    every multi-process `editalign train`), while a directory that is not ours still is."""
    out = work / "run"
    out.mkdir()
    with _held_elsewhere(out / LOCK) as pid:
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(OutputError, match=f"PID {pid}"):
            claim_output_dir(str(out), inputs={})
        monkeypatch.setenv("RANK", "1")
        assert claim_output_dir(str(out), inputs={}) == out.resolve()
        assert int((out / LOCK).read_text()) == pid  # the holder's lock, untouched
        (out / "notes.txt").write_text("mine")
        with pytest.raises(OutputError, match="already holds files"):
            claim_output_dir(str(out), inputs={})


def test_a_stale_lock_of_a_dead_run_is_taken_over_with_a_warning(work, caplog):
    out = work / "run"
    with _held_elsewhere(out / LOCK) as pid:
        pass  # killed: the kernel released its lock, its PID stays in the file
    assert (out / LOCK).read_text().strip() == str(pid)
    with lock_scope():
        claim_dir(out, flag="--out", command="bench run")
        assert (out / LOCK).read_text().strip() == str(os.getpid())
    assert f"taking over the lock of PID {pid}" in caplog.text
    assert (out / LOCK).read_text() == ""  # released in order: not stale


def test_a_lock_is_exclusive_within_one_process_too(tmp_path):
    first = RunLock(tmp_path / LOCK, what="x", command="loop").acquire()
    with pytest.raises(OutputError, match=f"PID {os.getpid()}"):
        RunLock(tmp_path / LOCK, what="x", command="loop").acquire()
    first.release()
    RunLock(tmp_path / LOCK, what="x", command="loop").acquire().release()


SHARD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from editalign.bench.runner import claim_run_dir
    claim_run_dir(Path(sys.argv[1]), None, [int(s) for s in sys.argv[2].split(",")])
    print("held", flush=True)
    time.sleep(60)
""")


def test_seed_shards_of_one_bench_run_output_run_at_once_and_a_shared_seed_is_refused(
        work, capsys):
    """`bench run --seeds 0,2,...` beside `--seeds 1,3,...` into one --out (the seeds sharded
    over processes, as benchmarks/bench_grounded.py --jobs does): each holds its own seeds'
    directories alone and --out shared; a run that shares a seed, or a one-seed run (which
    writes --out itself), is refused naming the holder."""
    from editalign.bench.runner import claim_run_dir

    out = work / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    shard = subprocess.Popen([sys.executable, "-c", SHARD, str(out), "1,3"],
                             stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert shard.stdout is not None and shard.stdout.readline().strip() == "held"
        with lock_scope():  # the other shard: it runs
            assert claim_run_dir(out, work / "benchdir", [0, 2]) == out.resolve()
            assert (out / "seed0" / LOCK).read_text().strip() == str(os.getpid())
        with lock_scope(), pytest.raises(OutputError, match=rf"--out {out} \(seed 3\) is in "
                                         rf"use by .* \(PID {shard.pid}\)"):
            claim_run_dir(out, work / "benchdir", [2, 3])
        assert not (out / "seed2").exists()  # the refused run left nothing behind
        with lock_scope(), pytest.raises(OutputError, match=f"PID {shard.pid}"):
            claim_run_dir(out, work / "benchdir", [0])
        assert main(["bench", "run", "--bench", "benchdir", "--out", "run",
                     "--seeds", "1,4"]) == 2
        assert f"--out run (seed 1) is in use by another `editalign bench run` run (PID " \
            f"{shard.pid})" in capsys.readouterr().err
    finally:
        shard.kill()
        shard.wait()
    with lock_scope():  # the shard is gone: a one-seed run takes --out alone again
        claim_run_dir(out, work / "benchdir", [0])


def test_bench_run_without_a_config_claims_its_output_for_the_default_seed(work):
    from editalign.bench.runner import run_benchmark

    # No config: the defaults (one seed) claim --out, then the empty bench is said.
    with lock_scope(), pytest.raises(ValueError, match=r"pairs\.train\.jsonl: no such file"):
        run_benchmark(work / "benchdir", work / "run")
    assert not (work / "run" / "seed0").exists()


def test_a_shared_lock_admits_shared_holders_and_is_emptied_by_the_last(tmp_path):
    path = tmp_path / LOCK
    first = RunLock(path, what="x", command="bench run", shared=True).acquire()
    second = RunLock(path, what="x", command="bench run", shared=True).acquire()
    with pytest.raises(OutputError, match=f"PID {os.getpid()}"):
        RunLock(path, what="x", command="bench run").acquire()
    first.release()
    assert path.read_text().strip() == str(os.getpid())  # the other holder is still named
    second.release()
    assert path.read_text() == ""  # released in order by the last holder: not stale
    RunLock(path, what="x", command="bench run").acquire().release()


# --------------------------------------------------------------------------- done markers


def test_a_done_marker_made_with_other_settings_is_refused(tmp_path):
    marker = tmp_path / "train_done.json"
    write_done(marker, {"max_steps": 2, "extra": {"figa": ["--gamma", "1"]}}, {"seconds": 1.5})
    assert read_done(marker, {"max_steps": 2, "extra": {"figa": ["--gamma", "1"]}}) == \
        {"seconds": 1.5}
    with pytest.raises(OutputError, match=r"max_steps=2 then, 3 now"):
        read_done(marker, {"max_steps": 3, "extra": {"figa": ["--gamma", "1"]}})
    with pytest.raises(OutputError, match=r"extra.figa="):
        read_done(marker, {"max_steps": 2, "extra": {"figa": ["--gamma", "0"]}})
    marker.write_text('{"method": "figa", "seconds": 1}')  # before settings were recorded
    with pytest.raises(OutputError, match="did not record its settings"):
        read_done(marker, {"max_steps": 2})


def test_bench_run_refuses_a_rerun_with_other_settings_before_any_work(work):
    from editalign.bench.results import EVAL_DONE, TRAIN_DONE
    from editalign.bench.runner import (
        RunConfig,
        eval_settings,
        run_benchmark,
        train_settings,
    )

    done = RunConfig(methods=["sft"], max_steps=2)
    mark_dir(work / "run", "bench run")  # what an earlier `bench run` left
    write_done(work / "run" / "sft" / TRAIN_DONE, train_settings(done), {"seconds": 1.0})
    write_done(work / "run" / "sft" / EVAL_DONE, eval_settings(done), {"method": "sft"})
    before = _snapshot(work)
    with lock_scope(), pytest.raises(OutputError, match=r"other settings \(learning_rate="
                                                       r"null then, 0.5 now\)"):
        run_benchmark(work / "benchdir", work / "run",
                      RunConfig(methods=["sft"], max_steps=3, learning_rate=0.5))
    after = _snapshot(work)
    assert {k: v for k, v in after.items() if LOCK not in k} == before


def test_a_stage_trained_before_the_tuned_table_changed_is_not_reused(tmp_path,
                                                                          monkeypatch):
    from dataclasses import replace

    from editalign.bench.results import TRAIN_DONE
    from editalign.bench.runner import RunConfig, eval_settings, train_settings
    from editalign.bench.tuned import TUNED

    config = RunConfig(methods=["figa"], task="grounded")
    marker = tmp_path / "figa" / TRAIN_DONE
    write_done(marker, train_settings(config), {"seconds": 1.0})
    assert read_done(marker, train_settings(config)) == {"seconds": 1.0}
    # The code's table moves on (a new tuning result); the run's own fields are unchanged.
    rates = {**TUNED["grounded"].learning_rates, "figa": 1e-3}
    monkeypatch.setitem(TUNED, "grounded", replace(TUNED["grounded"], learning_rates=rates))
    with pytest.raises(OutputError, match=r"tuned_settings.learning_rates.figa=0.0003 then, "
                                          r"0.001 now"):
        read_done(marker, train_settings(config))
    assert eval_settings(config)["tuned_settings"] == train_settings(config)["tuned_settings"]


# --------------------------------------------------------------------------- inputs


def test_annotate_export_and_revise_onto_their_input_are_refused(work, capsys):
    before = (work / "in.jsonl").read_bytes()
    assert main(["annotate", "--data", "in.jsonl", "--export", "--out", "in.jsonl"]) == 2
    assert "is the input (--data in.jsonl)" in capsys.readouterr().err
    assert main(["revise", "--data", "in.jsonl", "--api-base", "http://127.0.0.1:9/v1",
                 "--model", "m", "--out", "./in.jsonl"]) == 2
    assert "is the input (--data in.jsonl)" in capsys.readouterr().err
    assert main(["revise", "--data", "in.jsonl", "--api-base", "http://127.0.0.1:9/v1",
                 "--model", "m", "--out", "a.jsonl", "--dropped", "a.jsonl"]) == 2
    assert "--dropped a.jsonl is the same file as --out a.jsonl" in capsys.readouterr().err
    assert (work / "in.jsonl").read_bytes() == before
    assert not (work / "in.annotate.sqlite").exists()


def test_atomic_writes_keep_a_symlink_and_the_files_permissions(tmp_path):
    from editalign.data.jsonl import write_jsonl

    real = tmp_path / "real.jsonl"
    real.write_text("old\n")
    real.chmod(0o640)
    link = tmp_path / "link.jsonl"
    link.symlink_to(real.name)
    write_jsonl(link, [{"a": 1}])
    assert link.is_symlink() and json.loads(real.read_text()) == {"a": 1}
    assert real.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_non_finite_numbers_are_refused_at_parse_time(work, capsys):
    code = main(["revise", "--data", "in.jsonl", "--api-base", "http://127.0.0.1:9/v1",
                 "--model", "m", "--out", "o.jsonl", "--max-edit-ratio", "nan"])
    assert code == 2 and "--max-edit-ratio nan: expected a finite number" in \
        capsys.readouterr().err
    code = main(["revise", "--data", "in.jsonl", "--api-base", "http://127.0.0.1:9/v1",
                 "--model", "m", "--out", "o.jsonl", "--timeout", "inf"])
    assert code == 2 and "--timeout inf" in capsys.readouterr().err
    code = main(["train", "figa", "--model", "tiny", "--data", "in.jsonl", "--output_dir",
                 "t", "--learning_rate", "nan"])
    assert code == 2 and "--learning_rate nan: expected a finite number" in \
        capsys.readouterr().err
    assert not (work / "t").exists() and not (work / "o.jsonl").exists()


# --------------------------------------------------------------------------- loop


def test_loop_checks_train_options_before_any_stage_and_a_fix_of_an_unrun_stage_proceeds(
        tmp_path):
    from editalign.loop import ConfigError, Loop, resolve_config

    calls = []
    user = {"policy": "tiny", "prompts": str(tmp_path / "p.jsonl"), "out": str(tmp_path / "o"),
            "revise": {"reviser": "api", "api_base": "http://127.0.0.1:9/v1", "model": "m"},
            "train": {"method": "figa", "args": {"max_stepz": 5}}}
    loop = Loop(resolve_config(user), runner=lambda argv, log: calls.append(argv) or 0)
    with pytest.raises(ConfigError, match=r"train\.args: editalign train figa refuses them: "
                                          r".*max_stepz"):
        loop.run_all()
    assert calls == [] and not (tmp_path / "o").exists()  # nothing ran, nothing written
    # A run that got as far as label (sample, revise paid for) with other train args: the
    # corrected train stage applies; a change to a stage that ran is refused.
    out = tmp_path / "o"
    out.mkdir()
    (out / "loop_config.json").write_text(json.dumps(resolve_config(user)))
    (out / "round1").mkdir()
    for stage in ("sample", "revise", "label"):
        (out / "round1" / f"{stage}.done").write_text("{}")
    fixed = {**user, "train": {"method": "figa", "args": {"max_steps": 5}}}
    Loop(resolve_config(fixed))._check_config()
    changed = {**fixed, "revise": {**user["revise"], "max_edit_ratio": 0.3}}
    with pytest.raises(ConfigError, match="another 'revise'"):
        Loop(resolve_config(changed))._check_config()


# --------------------------------------------------------------------------- bounded rows


def test_label_reads_at_most_a_bounded_number_of_characters_and_keeps_the_same_tokens():
    from editalign.data.labeling import (
        LabelingConfig,
        bound_characters,
        char_budget,
        label_pair,
        label_pairs,
    )
    from editalign.data.pairs import EditPair
    from editalign.models import load_tokenizer

    tokenizer = load_tokenizer("tiny")
    huge = "alpha beta gamma delta " * 20_000  # 460k characters
    pair = EditPair(prompt="Write.", original="one two " + huge, revised="one three " + huge,
                    id="huge")
    for truncation in ("keep_start", "keep_end"):
        config = LabelingConfig(max_length=64, truncation=truncation)
        budget = char_budget(tokenizer, config)
        assert budget is not None and budget < len(huge)
        bounded = bound_characters(pair, budget, truncation)
        assert len(bounded.original) == budget and bounded.meta["cut_characters"] > 0
        whole, cut = label_pair(pair, tokenizer, config), label_pair(bounded, tokenizer, config)
        for side in ("original", "revised"):  # what truncation keeps is unchanged by the cut
            assert getattr(whole, side).input_ids == getattr(cut, side).input_ids
            assert getattr(whole, side).labels == getattr(cut, side).labels
        _, stats = label_pairs([pair], tokenizer, config)
        assert stats.cut_pairs == 1 and stats.cut_characters == bounded.meta["cut_characters"]
        assert "characters of 1 pairs cut before tokenizing" in stats.summary()
    assert bound_characters(pair, None, "keep_start") is pair  # no limit: nothing cut


def test_a_pair_whose_every_edit_lies_past_max_length_is_counted_and_warned():
    from editalign.data.labeling import LabelingConfig, check_labeled, label_pairs
    from editalign.data.pairs import EditPair
    from editalign.models import load_tokenizer

    tokenizer = load_tokenizer("tiny")
    text = " ".join(f"w{i}" for i in range(200))
    pairs = [EditPair(prompt="p", original=text + " end", revised=text + " fin", id="late"),
             EditPair(prompt="p", original="a b c", revised="a x c", id="early")]
    config = LabelingConfig(max_length=32)
    _, stats = label_pairs(pairs, tokenizer, config)
    assert stats.edit_truncated_away == 1
    assert stats.to_dict()["edit_truncated_away"] == 1
    warning = check_labeled(stats, config, "pairs.jsonl")
    assert warning is not None and "1 of 2 pairs have every edit past the 32-token limit" in \
        warning


# --------------------------------------------------------------------------- small ones


def test_the_reviser_records_the_model_that_answered_and_warns_on_a_mismatch(caplog):
    import httpx

    from editalign.data.pairs import EditPair
    from editalign.llm.client import ChatClient, ClientConfig
    from editalign.revise.prompts import load_template
    from editalign.revise.reviser import revise_pairs

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"model": "small-fallback", "choices": [
            {"message": {"content": "It is Paris."}, "finish_reason": "stop"}]})

    config = ClientConfig("http://mock/v1", "big-model", backoff_base=0.01)
    result = revise_pairs([EditPair("Capital?", "It is Berlin.", "It is Berlin.", "a")],
                          lambda: ChatClient(config, None,
                                             transport=httpx.MockTransport(handle)),
                          load_template("minimal"))
    revise = result.kept[0].meta["revise"]
    assert revise["model"] == "small-fallback" and revise["requested_model"] == "big-model"
    assert "'small-fallback' answered, not the requested 'big-model'" in caplog.text


def test_bench_config_takes_the_options_own_names(work, tmp_path):
    from editalign.commands import COMMANDS

    cfg = tmp_path / "bench.yaml"
    cfg.write_text("max_steps: 3\nbatch-size: 2\nrun_eval_limit: 5\n")
    args = COMMANDS.parse(["bench", "run", "--config", str(cfg), "--out", "o"])
    assert (args.run_max_steps, args.run_eval_limit, args.batch_size) == (3, 5, 2)


@pytest.mark.parametrize("sigint", ["default", "ignored"])
def test_revise_on_sigterm_says_what_is_cached_and_how_to_resume(work, tmp_path, sigint):
    """``ignored``: a background job of a shell script (``editalign revise … &``) inherits
    SIGINT ignored; SIGTERM must still stop it (it hung, when SIGTERM went through SIGINT)."""
    import signal
    import socket

    silent = socket.socket()  # accepts connections, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "editalign.cli", "revise", "--data", "in.jsonl", "--api-base",
         f"http://127.0.0.1:{port}/v1", "--model", "m", "--out", "o.jsonl", "--cache",
         str(tmp_path / "cache.sqlite"), "--timeout", "120", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        if sigint == "ignored" else None)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("revising"):
                break
        silent.accept()  # the first request is in flight
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)  # a run that ignores SIGTERM fails, not hangs
        assert proc.returncode == 130, rest
        assert "interrupted: 0 answers are in" in rest and "rerun the same command" in rest
    finally:
        proc.kill()
        silent.close()
