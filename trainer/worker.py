"""python -m trainer.worker --spec SPEC.json: train one part of a chain, resumably.

Started again on the same spec, it continues from its newest complete checkpoint in the
work dir. Exit codes (runtime.workerfiles): 0 done, 75 stopped on request, 90 out of
memory, 91 non-finite loss, 1 anything else (error.json says what), 2 usage. Under
torchrun (train.gpus > 1) several of these train the part together, and rank 0 does all
the file work (trainer.distributed).
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import sys
import time
import traceback
from pathlib import Path

import psutil
import torch
from pydantic import ValidationError

from model.config import ConfigError, config_from_dict
from model.gpt import GPT
from runtime.atomic import append_line, atomic_write_json, publish_once
from runtime.checkpoint import CheckpointMeta
from runtime.lockfile import LockFile, Locked
from runtime.paths import WorkPaths
from runtime.spec import WorkerSpec, load_spec
from runtime.validation import describe
from runtime.workerfiles import (
    EXIT_DONE, EXIT_ERROR, EXIT_NONFINITE, EXIT_OOM, EXIT_STOPPED,
    Control, ErrorReport, ExitReport, Heartbeat, Result, read_model, write_model,
)
from trainer import checkpoint, device, distributed, optim, resume
from trainer.data import Batches, WindowOrder, derive_seed, evenly_spaced
from trainer.disk import checkpoint_bytes, free_bytes
from trainer.errors import BadInput, NonFiniteLoss
from trainer.evaluate import evaluate, mean_loss
from trainer.loop import Progress, StepResult, Trainer
from trainer.tokenfile import check_windows, open_part

log = logging.getLogger("worker")


class AnotherWorker(Exception):
    """This part's work dir is locked by a live worker; touch nothing."""


class Worker:
    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.work = WorkPaths(spec.work_dir)
        self.ranks = distributed.from_env()
        self.stop_reason: str | None = None
        # Under torchrun the parent is torchrun's agent, and the daemon is the agent's parent.
        self.launcher_pid = os.getppid() if self.ranks.on else None
        # The daemon's pid from its environment (orchestrator.part.process), else the parent.
        self.parent_pid = int(os.environ.get("ORCHESTRATOR_DAEMON_PID")
                              or (_parent_of(os.getppid()) if self.ranks.on else os.getppid()))
        self.last_parent_check = 0.0
        self.control = Control()
        self._control_stamp: tuple[int, int] | None = None
        self.checkpoints_done = 0  # control.checkpoint requests honoured
        self.phase = "starting"
        self.last_beat = 0.0
        self.last_note = 0.0
        self.last_ckpt: tuple[int, float] | None = None  # (step, time)
        self.paused_seconds = 0.0
        self.train_seconds = 0.0  # inside optimizer steps, this run only
        self.tokens_per_s: float | None = None
        self.last_lr: float | None = None
        self.trainer: Trainer | None = None
        self.resumed_from: Path | None = None
        self.disk_reason: str | None = None  # set while a checkpoint waits for disk space
        self.last_write_warning = 0.0
        self.acked_seq = 0  # the control seq last echoed in a heartbeat
        self.started = time.time()
        self.lock = LockFile(self.work.lock)
        self.tb = None  # a TensorBoard SummaryWriter, when the schedule asks for one

    # -- signals and stopping ----------------------------------------------------

    def install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, _frame) -> None:
        self.stop_reason = signal.Signals(signum).name  # only record; the loop acts

    def should_stop(self) -> bool:
        if self.stop_reason is None and self.orphaned():
            self.stop_reason = "the daemon went away"  # orphaned: checkpoint and exit
        return self.stop_reason is not None

    def orphaned(self) -> bool:
        if self.launcher_pid is None:
            return os.getppid() != self.parent_pid
        now = time.monotonic()  # a /proc read: once a second is plenty
        if now - self.last_parent_check < 1.0:
            return False
        self.last_parent_check = now
        return os.getppid() != self.launcher_pid or _parent_of(self.launcher_pid) != self.parent_pid

    # -- the part ------------------------------------------------------------------

    def run(self) -> int:
        spec, train, ranks = self.spec, self.spec.train, self.ranks
        if ranks.main:
            self.work.root.mkdir(parents=True, exist_ok=True)
            try:
                self.lock.acquire()  # one worker per part, for the whole life of this process
            except Locked as e:
                raise AnotherWorker(f"another worker (pid {e.pid}) is already training {spec.part_id} "
                                    f"in {self.work.root}") from None
            self.work.checkpoints.mkdir(exist_ok=True)
            if ranks.on:  # an earlier run's would hide this run's (first writer wins); the daemon removes them too
                self.work.exit.unlink(missing_ok=True)
                self.work.error.unlink(missing_ok=True)
        self.beat(force=True)

        self.placement = device.choose(train, ranks.local_rank if ranks.on else None)
        ranks.start(self.placement.device)
        log.info("part %s on %s%s", spec.part_id, self.placement.describe(),
                 f", rank {ranks.rank} of {ranks.world}" if ranks.on else "")
        self.phase = "loading"
        cfg = self._model_config()
        part = self._open(spec.data.manifest, spec.data.part, cfg)
        self.val = self._open(spec.val.manifest, spec.val.part, cfg) if spec.val and train.eval_windows else None
        self.beat(force=True)

        torch.manual_seed(derive_seed(train.seed, "init"))  # the chain's initial weights
        self.raw_model = GPT(cfg).to(self.placement.device)
        self.optimizer = optim.build(self.raw_model, train, self.placement.device)
        self.scaler = torch.amp.GradScaler(self.placement.device.type, enabled=self.placement.use_scaler)
        found = resume.find(self.work) if ranks.main else None  # rank 0 alone may quarantine
        found = ranks.share_path(str(found) if found else None)
        start = resume.restore(spec, Path(found) if found else None, self.raw_model, self.optimizer, self.scaler,
                               self.placement.device)
        progress, self.resumed_from = start.progress, start.resumed_from
        if ranks.main:
            resume.truncate_metrics(self.work, progress.step)
        if self.resumed_from:
            self.last_ckpt = (progress.step, time.time())
        self.beat(force=True)

        model = self.raw_model
        if self.placement.compile:
            model = torch.compile(self.raw_model)
        model = ranks.wrap(model, self.placement.device)
        order = WindowOrder(part.n_windows, spec.epochs, train.seed, spec.part_id, spec.skip_windows)
        batches = Batches(part, cfg.block_size, self.placement.device)
        self.trainer = Trainer(spec, self.placement, model, self.optimizer, self.scaler, order, batches, progress,
                               ranks)
        self.tb = self.open_tensorboard() if ranks.main else None
        if progress.done:
            log.info("the final checkpoint exists already; reporting it")
            return self.together(lambda: self._finish(already_saved=True))
        return self._train()

    def together(self, work) -> int:
        """Rank 0 does `work` (save, evaluate, report) while the others wait; all then exit
        with rank 0's code (the others leaving early would make torchrun stop rank 0)."""
        code = work() if self.ranks.main else EXIT_DONE
        self.ranks.wait_for_main()
        return self.ranks.share(code)

    def run_and_close(self) -> int:
        try:
            code = self.run()
        finally:
            if self.tb:
                self.tb.close()
        self.ranks.close()  # after a clean end only: with a failed peer it could block
        return code

    def _model_config(self):
        try:
            return config_from_dict(self.spec.model)
        except ConfigError as e:
            raise BadInput(f"spec: {e}") from None

    def _open(self, manifest: Path, name: str, cfg):
        part = open_part(manifest, name)
        tok = part.manifest.tokenizer
        if self.spec.tokenizer_sha256 and tok.sha256 != self.spec.tokenizer_sha256:
            raise BadInput(f"{manifest}: made with a different tokenizer (sha256 {tok.sha256[:12]}..., "
                           f"the schedule's is {self.spec.tokenizer_sha256[:12]}...); prepare it again")
        if tok.vocab_size > cfg.vocab_size:
            raise BadInput(f"{manifest}: tokenizer vocabulary {tok.vocab_size} exceeds model.vocab_size "
                           f"{cfg.vocab_size}; raise vocab_size or use the matching tokenizer")
        check_windows(part, cfg.block_size)
        return part

    def _train(self) -> int:
        trainer, train = self.trainer, self.spec.train
        self.phase = "compiling" if self.placement.compile else "training"
        self.beat(force=True)
        log.info("training: %d steps, %d tokens from cursor %d", trainer.steps_total(), trainer.tokens_total(),
                 trainer.progress.cursor)
        # Only rank 0 reads control.json, pauses, saves and throttles; the others wait for its
        # word before each step. A step in progress on several ranks always runs to its end.
        abort = self.should_stop if not self.ranks.on else lambda: False
        while not trainer.finished():
            if self.ranks.main:
                self.handle_control()
            if not self.ranks.share(not self.should_stop()):
                break
            result = trainer.step(abort)
            if result is None:
                break
            if not self.ranks.main:
                continue
            self.phase = "training"
            self.after_step(result)
            if time.time() - self._last_ckpt_time() >= train.checkpoint_interval_s and not trainer.finished():
                self.save()
            self.throttle(result.seconds)
        if not trainer.finished():
            return self.together(self._stop)
        return self.together(self._finish)

    def _stop(self) -> int:
        log.info("stopping (%s)", self.stop_reason)
        if self.unsaved():
            self.save()
        self.phase = "done"
        self.beat(force=True)
        return EXIT_STOPPED

    def _finish(self, already_saved: bool = False) -> int:
        trainer = self.trainer
        if already_saved:
            final = self.resumed_from
            val_loss = checkpoint.read_meta(final).val_loss
        else:
            evaluation = self.run_eval()
            own = (evaluation or {}).get("sets", {}).get(self.spec.stage)
            val_loss = own["loss"] if own else self.evaluate()
            final = self.save(done=True, val_loss=val_loss)
            if final is None:  # stopped while the disk was full: resumable, nothing damaged
                return EXIT_STOPPED
        p = trainer.progress
        result = Result(
            checkpoint=str(final.relative_to(self.work.root)), step=p.step, part_tokens=p.part_tokens,
            global_tokens=p.global_tokens, loss=p.loss, val_loss=val_loss,
            train_seconds=round(self.train_seconds, 3), paused_seconds=round(self.paused_seconds, 3),
        )
        write_model(self.work.result, result, fault="result")
        self.phase = "done"
        self.beat(force=True)
        log.info("part done: %d steps, %d tokens, loss %s, val_loss %s", p.step, p.part_tokens,
                 _fmt(p.loss), _fmt(val_loss))
        return EXIT_DONE

    def evaluate(self) -> float | None:
        """The part's own validation loss (when no fuller evaluation was asked for)."""
        if self.val is None:
            return None
        self.phase = "evaluating"
        self.beat(force=True)
        windows = evenly_spaced(self.val.n_windows, self.spec.train.eval_windows)
        batches = Batches(self.val, self.raw_model.config.block_size, self.placement.device)
        return mean_loss(self.raw_model, self.placement, batches, windows, self.spec.train.micro_batch)

    def run_eval(self) -> dict | None:
        """The spec's evaluation (every stage so far and the next, fixed prompts) -> eval.json."""
        spec = self.spec.eval
        if spec is None or not spec.sets:
            return None
        self.phase = "evaluating"
        self.beat(force=True)
        result = evaluate(self.raw_model, self.placement, spec, self.spec.train.micro_batch)
        atomic_write_json(self.work.eval, result, fault="eval")
        if self.tb:
            for name, r in result["sets"].items():
                self.tb.add_scalar(f"val/{name}", r["loss"], self.trainer.progress.global_tokens)
        log.info("evaluation: %s", ", ".join(f"{n} {r['loss']:.4f}" for n, r in result["sets"].items()))
        return result

    def open_tensorboard(self):
        folder = self.spec.eval.tensorboard_dir if self.spec.eval else None
        if folder is None:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.warning("eval.tensorboard is on, but the tensorboard package is not installed "
                        "(pip install tensorboard); no TensorBoard logs")
            return None
        return SummaryWriter(log_dir=str(folder))

    # -- between steps -------------------------------------------------------------

    def after_step(self, r: StepResult) -> None:
        p = self.trainer.progress
        rate = r.tokens / max(r.seconds, 1e-9)
        self.tokens_per_s = rate if self.tokens_per_s is None else 0.9 * self.tokens_per_s + 0.1 * rate
        self.last_lr = r.lr
        self.train_seconds += r.seconds
        if self.tb:
            for name, value in (("loss", r.loss), ("lr", r.lr), ("grad_norm", r.grad_norm), ("tokens_per_s", rate)):
                self.tb.add_scalar(f"train/{name}", value, p.global_tokens)
        if p.step % self.spec.train.log_interval_steps == 0:
            line = {"step": p.step, "part_tokens": p.part_tokens, "global_tokens": p.global_tokens,
                    "loss": r.loss, "lr": r.lr, "grad_norm": r.grad_norm, "step_ms": round(r.seconds * 1000, 2),
                    "tokens_per_s": round(rate, 1), "time": round(time.time(), 3)}
            try:
                append_line(self.work.metrics, json.dumps(line), sync=False, fault="metrics")
            except OSError as e:  # a full disk loses a metrics line, not the training
                self._write_failed("metrics.jsonl", e)
        now = time.time()
        if now - self.last_note >= 10:
            self.last_note = now
            log.info("step %d/%d  loss %.4f  lr %.2e  %.0f tok/s", p.step, self.trainer.steps_total(), r.loss,
                     r.lr, self.tokens_per_s)
        self.beat()

    def read_control(self) -> Control:
        try:
            st = os.stat(self.work.control)
        except FileNotFoundError:
            return self.control
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._control_stamp:
            self._control_stamp = stamp
            self.control = read_model(self.work.control, Control) or self.control
        return self.control

    def unsaved(self) -> bool:
        """Has the part trained steps that no checkpoint holds yet?"""
        return self.trainer.progress.step > (self.last_ckpt[0] if self.last_ckpt else 0)

    def honour_checkpoint_request(self) -> None:
        if self.control.checkpoint > self.checkpoints_done:
            self.checkpoints_done = self.control.checkpoint
            if self.unsaved():
                self.save()

    def handle_control(self) -> None:
        c = self.read_control()
        self.honour_checkpoint_request()
        if c.pause and not self.should_stop():
            self.pause()
        self.beat(force=self.control.seq != self.acked_seq)

    def pause(self) -> None:
        started = time.monotonic()
        log.info("paused: %s", self.control.reason or "requested")
        self.phase = "paused"
        self.beat(force=True)
        while self.read_control().pause and not self.should_stop():
            self.honour_checkpoint_request()
            self.beat(force=self.control.seq != self.acked_seq)
            time.sleep(0.1)
        self.paused_seconds += time.monotonic() - started
        self.phase = "training"
        log.info("resumed after %.1fs paused", time.monotonic() - started)

    def throttle(self, step_seconds: float) -> None:
        """The guard's duty cycle: idle after a step in proportion to it, still responsive."""
        duty = self.read_control().duty_cycle
        if duty >= 1.0:
            return
        end = time.monotonic() + step_seconds * (1.0 - duty) / duty
        while (left := end - time.monotonic()) > 0 and not self.should_stop() and not self.read_control().pause:
            self.beat()
            time.sleep(min(0.05, left))

    def wait_for_disk(self) -> bool:
        """Hold until a checkpoint fits (twice its size plus the margin); never start one that
        might not. False if asked to stop meanwhile: then nothing is saved or damaged."""
        need = 2 * checkpoint_bytes(self.work.checkpoints, self.raw_model) + int(self.spec.disk_margin_gb * 2**30)
        free, mount = free_bytes(self.work.checkpoints, self.spec.sensor_file)
        if free >= need:
            return True
        started = time.monotonic()
        reason = (f"disk full: {free / 2**30:.2f} GB free on {mount}, a checkpoint needs {need / 2**30:.2f} GB "
                  f"(twice its size plus {self.spec.disk_margin_gb:g} GB); free space there")
        log.warning("%s", reason)
        self.phase, before = "paused", self.phase
        self.disk_reason = reason
        while free_bytes(self.work.checkpoints, self.spec.sensor_file)[0] < need:
            if self.should_stop():
                break
            self.beat()
            time.sleep(0.2)
        self.disk_reason = None
        self.phase = before
        self.paused_seconds += time.monotonic() - started
        self.beat(force=True)
        return not self.should_stop() or free_bytes(self.work.checkpoints, self.spec.sensor_file)[0] >= need

    def save(self, done: bool = False, val_loss: float | None = None) -> Path | None:
        """Write a checkpoint; None if asked to stop while the disk was full (nothing saved)."""
        for attempt in range(1, 4):
            if not self.wait_for_disk():
                log.warning("stopping without a checkpoint: the disk is still full")
                return None
            try:
                return self._save(done, val_loss)
            except OSError as e:
                if e.errno not in (errno.ENOSPC, errno.EDQUOT) or attempt == 3:
                    raise
                log.warning("the disk filled up during the checkpoint (%s); the partial one is removed, "
                            "waiting for space", e.strerror)
        return None

    def _save(self, done: bool, val_loss: float | None) -> Path:
        p = self.trainer.progress
        self.phase, before = "saving", self.phase
        self.beat(force=True)
        started = time.monotonic()
        rng = checkpoint.rng_state()
        meta = CheckpointMeta(
            part_id=self.spec.part_id, stage=self.spec.stage, step=p.step, cursor=p.cursor,
            part_tokens=p.part_tokens, global_tokens=p.global_tokens, done=done,
            model=self.raw_model.config.to_dict(), tokenizer_sha256=self.spec.tokenizer_sha256,
            micro_batch=self.spec.train.micro_batch, grad_accum=self.spec.train.grad_accum,
            lr_scale=self.spec.lr_scale, loss=p.loss, val_loss=val_loss,
            rng_python=rng["python"], rng_numpy=rng["numpy"],
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        path = checkpoint.save(self.work.checkpoints, p.step, model=self.raw_model, optimizer=self.optimizer,
                               scaler=self.scaler, meta=meta)
        checkpoint.prune(self.work.checkpoints, self.spec.train.keep_checkpoints)
        self.last_ckpt = (p.step, time.time())
        self.phase = before
        log.info("checkpoint %s written in %.2fs", path.name, time.monotonic() - started)
        self.beat(force=True)
        return path

    def _last_ckpt_time(self) -> float:
        return self.last_ckpt[1] if self.last_ckpt else self.started

    def beat(self, force: bool = False) -> None:
        if not self.ranks.main:
            return
        now = time.time()
        if not force and now - self.last_beat < self.spec.train.heartbeat_interval_s:
            return
        self.last_beat = now
        t = self.trainer
        p = t.progress if t else Progress(global_tokens=self.spec.token_offset)
        placement = getattr(self, "placement", None)
        self.acked_seq = self.control.seq
        try:
            self._write_heartbeat(now, p, t, placement)
        except OSError as e:  # a full disk: the daemon waits, the training goes on
            self._write_failed("heartbeat.json", e)

    def _write_failed(self, what: str, e: OSError) -> None:
        if time.time() - self.last_write_warning > 60:
            self.last_write_warning = time.time()
            log.warning("cannot write %s: %s", what, e.strerror)

    def _write_heartbeat(self, now, p, t, placement) -> None:
        write_model(self.work.heartbeat, Heartbeat(
            pid=os.getpid(), launcher_pid=self.launcher_pid, time=now, phase=self.phase, step=p.step,
            steps_total=t.steps_total() if t else 0, part_tokens=p.part_tokens,
            part_tokens_total=t.tokens_total() if t else 0, global_tokens=p.global_tokens,
            loss=p.loss, lr=self.last_lr, tokens_per_s=self.tokens_per_s,
            paused_reason=(self.disk_reason or self.control.reason) if self.phase == "paused" else None,
            control_seq=self.control.seq,
            last_checkpoint_step=self.last_ckpt[0] if self.last_ckpt else None,
            last_checkpoint_time=self.last_ckpt[1] if self.last_ckpt else None,
            device=str(placement.device) if placement else None,
            precision=placement.precision if placement else None, duty_cycle=self.control.duty_cycle,
        ), fault="heartbeat")

    def report(self, report: ErrorReport) -> None:
        try:
            if self.ranks.on:  # the first rank to fail names the cause; the others fail after it
                publish_once(self.work.error, report.model_dump_json(indent=2))
            else:
                write_model(self.work.error, report)
        except OSError as e:  # the work dir itself may be the problem
            log.error("could not write %s: %s", self.work.error, e)

    def report_exit(self, code: int) -> int:
        """Under torchrun the daemon sees torchrun's exit code (1 for any failure), so the
        first rank to end says its own in exit.json."""
        another_workers_dir = self.ranks.main and self.lock.fd is None
        if self.ranks.on and not another_workers_dir:
            try:
                publish_once(self.work.exit, ExitReport(code=code, rank=self.ranks.rank).model_dump_json())
            except OSError as e:
                log.error("could not write %s: %s", self.work.exit, e)
        return code


def _parent_of(pid: int) -> int:
    """The parent of process `pid` (0 once it is gone)."""
    try:
        return psutil.Process(pid).ppid()
    except psutil.Error:
        return 0


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "can't allocate memory" in str(e)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, type=Path, help="the part's resolved spec (JSON)")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%Y-%m-%d %H:%M:%S")
    device.set_interop_threads()
    try:
        spec = load_spec(args.spec)
    except FileNotFoundError:
        log.error("%s: no such spec file", args.spec)
        return EXIT_ERROR
    except ValidationError as e:
        log.error("%s: invalid spec:\n  %s", args.spec, "\n  ".join(describe(e, WorkerSpec)))
        return EXIT_ERROR
    except ValueError as e:
        log.error("%s: not valid JSON: %s", args.spec, e)
        return EXIT_ERROR

    worker = Worker(spec)
    if not worker.ranks.main:  # the same lines from every rank would only repeat rank 0's
        logging.getLogger().setLevel(logging.WARNING)
    worker.install_signals()
    return worker.report_exit(run(worker, spec))


def run(worker: Worker, spec: WorkerSpec) -> int:
    try:
        return worker.run_and_close()
    except AnotherWorker as e:
        log.error("%s", e)  # no error.json: the work dir belongs to the other worker
        return EXIT_STOPPED  # not a failure: the daemon adopts the other worker next
    except BadInput as e:
        log.error("%s", e)
        worker.report(ErrorReport(kind="bad_input", message=str(e), retryable=False))
        return EXIT_ERROR
    except NonFiniteLoss as e:
        log.error("%s", e)
        worker.report(ErrorReport(kind="nonfinite", message=str(e), step=e.step, window_range=e.window_range,
                                  cursor=e.window_range[0]))
        return EXIT_NONFINITE
    except Exception as e:
        if _is_oom(e):
            log.error("out of memory at micro_batch %d: %s", spec.train.micro_batch, str(e).splitlines()[0])
            worker.report(ErrorReport(kind="oom", message=str(e).splitlines()[0], micro_batch=spec.train.micro_batch))
            return EXIT_OOM
        log.error("worker failed:\n%s", traceback.format_exc())
        worker.report(ErrorReport(kind="error", message=f"{type(e).__name__}: {e}"))
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
