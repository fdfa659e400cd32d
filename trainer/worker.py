"""python -m trainer.worker --spec SPEC.json: train one part of a chain, resumably.

Started again on the same spec, it continues from its newest complete checkpoint in the
work dir. Exit codes (runtime.workerfiles): 0 done, 75 stopped on request, 90 out of
memory, 91 non-finite loss, 1 anything else (error.json says what), 2 usage. Under
torchrun (train.gpus > 1) several of these train the part together, and rank 0 does all
the file work (trainer.distributed).

    Worker     the process: the part's lock, setup, then Training; how it ended
    Training   the loop over a built session: steps, the daemon's control between them,
               periodic checkpoints, and the end (final evaluation, checkpoint, result)
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import torch
from pydantic import ValidationError

from runtime import faults
from runtime.atomic import atomic_write_json
from runtime.curve import PlannedAfter
from runtime.lockfile import Locked, LockFile
from runtime.paths import WorkPaths
from runtime.spec import WorkerSpec, load_spec
from runtime.validation import describe
from runtime.workerfiles import (
    EXIT_DONE,
    EXIT_ERROR,
    EXIT_NONFINITE,
    EXIT_OOM,
    EXIT_STOPPED,
    ErrorReport,
    Phase,
    Result,
    write_model,
)
from trainer import checkpoint, device, distributed, setup
from trainer.data import Batches, evenly_spaced
from trainer.distributed import Ranks
from trainer.errors import BadInput, NonFiniteLoss
from trainer.evaluate import evaluate, mean_loss
from trainer.loop import StepResult
from trainer.metrics import Metrics
from trainer.mixture import MixedOrder
from trainer.saver import Saver
from trainer.setup import Session
from trainer.stopping import StopRequest
from trainer.workerfiles import WorkerFiles

log = logging.getLogger("worker")

PAUSE_POLL_S = 0.1
THROTTLE_POLL_S = 0.05


class AnotherWorker(Exception):
    """This part's work dir is locked by a live worker; touch nothing."""


class Worker:
    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.work = WorkPaths(spec.work_dir)
        self.ranks = distributed.from_env()
        self.stop = StopRequest(under_torchrun=self.ranks.on)
        self.files = WorkerFiles(
            self.work,
            spec.train.heartbeat_interval_s,
            main=self.ranks.main,
            launcher_pid=self.stop.launcher_pid,
            token_offset=spec.token_offset,
        )
        self.metrics = Metrics(self.work, spec.train.log_interval_steps)
        self.lock = LockFile(self.work.lock, role="worker")

    def run(self) -> int:
        """Setup, the loop, the end; the exit code."""
        try:
            self.claim()
            self.files.beat(force=True)
            session = setup.build(self.spec, self.ranks, self.work, self.files)
            self.spec = session.spec  # with the micro-batch the memory plan chose
            if self.ranks.main:
                self.metrics.open_tensorboard(self.spec.eval.tensorboard_dir if self.spec.eval else None)
            code = Training(self, session).run()
        finally:
            self.metrics.close()
        self.ranks.close()  # after a clean end only: with a failed peer it could block
        return code

    def claim(self) -> None:
        """Rank 0 takes the part's lock for the whole life of this process: one worker per part."""
        if not self.ranks.main:
            return
        self.work.root.mkdir(parents=True, exist_ok=True)
        try:
            self.lock.acquire()
        except Locked as e:
            raise AnotherWorker(
                f"another worker (pid {e.pid}) is already training {self.spec.part_id} in {self.work.root}"
            ) from None
        self.work.checkpoints.mkdir(exist_ok=True)
        if self.ranks.on:  # an earlier run's would hide this run's (first writer wins); the daemon removes them too
            self.work.exit.unlink(missing_ok=True)
            self.work.error.unlink(missing_ok=True)

    def report(self, report: ErrorReport) -> None:
        self.files.report_error(report, several_ranks=self.ranks.on)

    def report_exit(self, code: int) -> int:
        another_workers_dir = self.ranks.main and self.lock.fd is None
        if self.ranks.on and not another_workers_dir:
            self.files.report_exit(code, self.ranks.rank)
        return code


class Training:
    def __init__(self, worker: Worker, session: Session):
        self.spec = worker.spec
        self.work = worker.work
        self.ranks: Ranks = worker.ranks
        self.stop = worker.stop
        self.files = worker.files
        self.metrics = worker.metrics
        self.session = session
        self.trainer = session.trainer
        self.saver = Saver(
            self.spec,
            self.work,
            self.files,
            self.metrics,
            self.stop,
            session.model,
            session.optimizer,
            session.scaler,
            resumed_at=self.trainer.progress.step if session.resumed_from else None,
            sources=order.positions if isinstance(order := self.trainer.order, MixedOrder) else None,
        )
        self.checkpoints_done = 0
        """control.checkpoint requests honoured."""
        self.files.progress = self.heartbeat_fields

    def run(self) -> int:
        if self.trainer.progress.done:
            log.info("the final checkpoint exists already; reporting it")
            return self.together(lambda: self.finish(already_saved=True))
        self.loop()
        return self.together(self.finish if self.trainer.finished() else self.stop_warmly)

    # -- the loop -------------------------------------------------------------------------

    def loop(self) -> None:
        trainer = self.trainer
        self.files.set_phase(Phase.COMPILING if self.session.placement.compile else Phase.TRAINING)
        log.info(
            "training: %d steps, %d tokens from cursor %d",
            trainer.steps_total(),
            trainer.tokens_total(),
            trainer.progress.cursor,
        )
        # Only rank 0 reads control.json, pauses, saves and throttles; the others wait for its
        # word before each step. A step in progress on several ranks always runs to its end.
        abort = self.stop.requested if not self.ranks.on else lambda: False
        while not trainer.finished():
            plan = None
            if self.ranks.main:
                self.handle_control()
                plan = self.files.read_plan()
            # 0: stop; 1: train a step; 2: first move the curve to the new plan (every rank).
            go = self.ranks.share(0 if self.stop.requested() else 2 if plan else 1)
            if not go:
                return
            if go == 2:
                shared = self.ranks.share_object(plan.model_dump() if plan else None)
                trainer.rate.move(trainer.progress.global_tokens, PlannedAfter.model_validate(shared))
            result = trainer.step(abort)
            if result is None:
                return
            if self.ranks.main:
                self.after_step(result)
                faults.hold("step", self.spec.part_id, at=self.trainer.progress.step, until=self.held)

    def held(self) -> bool:
        """While a test holds the worker (runtime.faults.hold): alive, and a stop ends the hold."""
        self.files.beat()
        return self.stop.requested()

    def after_step(self, r: StepResult) -> None:
        if self.files.phase != Phase.TRAINING:
            self.files.phase = Phase.TRAINING  # the first step compiled the model
        p = self.trainer.progress
        self.metrics.step(r, p, self.files.write_failed)
        self.metrics.log_progress(p, self.trainer.steps_total(), r.loss, r.lr)
        self.files.beat()
        if self.saver.due(p.step) and not self.trainer.finished():
            self.saver.save(p)
            faults.hold("checkpoint", self.spec.part_id, until=self.held)
        self.throttle(r.seconds)

    def handle_control(self) -> None:
        c = self.files.read_control()
        self.honour_checkpoint_request()
        if c.pause and not self.stop.requested():
            self.pause()
        self.files.beat(force=self.files.unacknowledged)

    def honour_checkpoint_request(self) -> None:
        if self.files.control.checkpoint > self.checkpoints_done:
            self.checkpoints_done = self.files.control.checkpoint
            if self.saver.unsaved(self.trainer.progress):
                self.saver.save(self.trainer.progress)

    def pause(self) -> None:
        started = time.monotonic()
        log.info("paused: %s", self.files.control.reason or "requested")
        with self.files.phase_while(Phase.PAUSED):
            while self.files.read_control().pause and not self.stop.requested():
                self.honour_checkpoint_request()
                self.files.beat(force=self.files.unacknowledged)
                time.sleep(PAUSE_POLL_S)
        self.metrics.paused_seconds += time.monotonic() - started
        log.info("resumed after %.1fs paused", time.monotonic() - started)

    def throttle(self, step_seconds: float) -> None:
        """The guard's duty cycle: idle after a step in proportion to it, still responsive."""
        duty = self.files.read_control().duty_cycle
        if duty >= 1.0:
            return
        end = time.monotonic() + step_seconds * (1.0 - duty) / duty
        while (
            (left := end - time.monotonic()) > 0 and not self.stop.requested() and not self.files.read_control().pause
        ):
            self.files.beat()
            time.sleep(min(THROTTLE_POLL_S, left))

    def heartbeat_fields(self) -> dict:
        t, p, placement = self.trainer, self.trainer.progress, self.session.placement
        return dict(
            step=p.step,
            steps_total=t.steps_total(),
            part_tokens=p.part_tokens,
            part_tokens_total=t.tokens_total(),
            global_tokens=p.global_tokens,
            loss=p.loss,
            lr=self.metrics.last_lr,
            lr_factor=p.lr.last if p.lr else None,
            lr_phase=t.rate.curve.phase(p.global_tokens),
            tokens_per_s=self.metrics.tokens_per_s,
            last_checkpoint_step=self.saver.last_step,
            last_checkpoint_time=self.saver.last_time,
            device=str(placement.device),
            precision=placement.precision,
        )

    # -- the end ----------------------------------------------------------------------------

    def together(self, work: Callable[[], int]) -> int:
        """Rank 0 does `work` (save, evaluate, report) while the others wait; all then exit
        with rank 0's code (the others leaving early would make torchrun stop rank 0)."""
        code = work() if self.ranks.main else EXIT_DONE
        self.ranks.wait_for_main()
        return self.ranks.share(code)

    def stop_warmly(self) -> int:
        log.info("stopping (%s)", self.stop.reason)
        if self.saver.unsaved(self.trainer.progress):
            self.saver.save(self.trainer.progress)
        self.files.set_phase(Phase.DONE)
        return EXIT_STOPPED

    def finish(self, already_saved: bool = False) -> int:
        if already_saved:
            final = self.session.resumed_from
            val_loss = checkpoint.read_meta(final).val_loss
        else:
            evaluation = self.run_eval()
            own = (evaluation or {}).get("sets", {}).get(self.spec.stage)
            val_loss = own["loss"] if own else self.own_val_loss()
            final = self.saver.save(self.trainer.progress, done=True, val_loss=val_loss)
            if final is None:  # stopped while the disk was full: resumable, nothing damaged
                return EXIT_STOPPED
        p = self.trainer.progress
        write_model(
            self.work.result,
            Result(
                checkpoint=str(final.relative_to(self.work.root)),
                step=p.step,
                part_tokens=p.part_tokens,
                global_tokens=p.global_tokens,
                loss=p.loss,
                val_loss=val_loss,
                train_seconds=round(self.metrics.train_seconds, 3),
                paused_seconds=round(self.metrics.paused_seconds, 3),
            ),
            fault="result",
        )
        self.files.set_phase(Phase.DONE)
        log.info(
            "part done: %d steps, %d tokens, loss %s, val_loss %s", p.step, p.part_tokens, _fmt(p.loss), _fmt(val_loss)
        )
        return EXIT_DONE

    def own_val_loss(self) -> float | None:
        """The part's own validation loss (when no fuller evaluation was asked for)."""
        val, model = self.session.val, self.session.model
        if val is None:
            return None
        with self.files.phase_while(Phase.EVALUATING):
            windows = evenly_spaced(val.n_windows, self.spec.train.eval_windows)
            batches = Batches(val, model.config.block_size, self.session.placement.device)
            return mean_loss(model, self.session.placement, batches, windows, self.spec.train.micro_batch)

    def run_eval(self) -> dict | None:
        """The spec's evaluation (every stage so far and the next, fixed prompts) -> eval.json."""
        spec = self.spec.eval
        if spec is None or not spec.sets:
            return None
        with self.files.phase_while(Phase.EVALUATING):
            result = evaluate(self.session.model, self.session.placement, spec, self.spec.train.micro_batch)
        atomic_write_json(self.work.eval, result, fault="eval")
        self.metrics.evaluation(result["sets"], self.trainer.progress.global_tokens)
        log.info(
            "evaluation: %s",
            ", ".join(
                f"{n} {r['loss']:.4f}" + (f" ({r['bpb']:.4f} bits/byte)" if "bpb" in r else "")
                for n, r in result["sets"].items()
            ),
        )
        return result


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or (isinstance(e, RuntimeError) and "can't allocate memory" in str(e))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, type=Path, help="the part's resolved spec (JSON)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
    )
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
    worker.stop.install()
    return worker.report_exit(run(worker, spec))


def run(worker: Worker, spec: WorkerSpec) -> int:
    """The worker's run, with every way it can end turned into an exit code and a report."""
    try:
        return worker.run()
    except AnotherWorker as e:
        log.error("%s", e)  # no error.json: the work dir belongs to the other worker
        return EXIT_STOPPED  # not a failure: the daemon adopts the other worker next
    except BadInput as e:
        log.error("%s", e)
        worker.report(ErrorReport(kind="bad_input", message=str(e), retryable=False))
        return EXIT_ERROR
    except NonFiniteLoss as e:
        log.error("%s", e)
        worker.report(
            ErrorReport(
                kind="nonfinite", message=str(e), step=e.step, window_range=e.window_range, cursor=e.window_range[0]
            )
        )
        return EXIT_NONFINITE
    except Exception as e:
        if _is_oom(e):
            micro = worker.spec.train.micro_batch  # the one it ran with (the memory plan's)
            log.error("out of memory at micro_batch %d: %s", micro, str(e).splitlines()[0])
            worker.report(ErrorReport(kind="oom", message=str(e).splitlines()[0], micro_batch=micro))
            return EXIT_OOM
        log.error("worker failed:\n%s", traceback.format_exc())
        worker.report(ErrorReport(kind="error", message=f"{type(e).__name__}: {e}"))
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
