"""The training loop: steps, epochs, evaluation, checkpoints, and how a run stops.

Exact resume: every random choice is a pure function of (seed, epoch, step or image index):
the data order and augmentation come from the loader seeded with (seed, epoch), and each
step's dropout seed is a hash of (seed, step) (pyalexnet.rng). A checkpoint holds the
parameters, the momentum buffers and the `TrainState`, so ``--resume`` continues with bit
for bit the same losses as a run that never stopped (on the numpy and emu backends).

Stopping: Ctrl-C finishes the current step, saves a checkpoint and exits (a second Ctrl-C
aborts at once). A NaN or infinite loss stops the run with a message naming the step and
leaves the last good checkpoint untouched (exit status 3).

Data parallel (a session with a World): every rank trains on its share of each batch; the
printed and logged loss and errors are those of the whole batch; rank 0 alone prints and
writes the checkpoint, metrics and pictures.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

from .. import checkpoint as ckpt
from ..data import describe_source
from ..evaluate import evaluate, format_result
from ..graphs import GraphedStep
from ..ops.softmax import count_errors, prepare_labels, topk_errors, topk_ranks
from ..progress import Progress, format_duration
from ..rng import step_seed
from .metrics import Averages, MetricsLog, draw_pictures
from .schedule import Schedule
from .stats import LayerStats, plot_layers

EXIT_NAN = 3
EXIT_INTERRUPTED = 130


class TrainingDiverged(RuntimeError):
    """The loss (or a parameter) became NaN or infinite."""


class Interrupts:
    """Turn the first Ctrl-C into a request to stop after the current step."""

    def __init__(self, progress):
        self.requested = False
        self.progress = progress
        self._old = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.progress.print("\nCtrl-C: stopping after this step and saving a checkpoint "
                            "(press Ctrl-C again to abort without saving)")

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread: plain KeyboardInterrupt handling
            self._old = None
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


class _NoMetrics:
    """What ranks other than 0 write for metrics: nothing."""

    def __init__(self, path):
        self.path = path

    def open(self, *args, **kwargs):
        pass

    log = flush = close = open


class Trainer:
    """Runs the epochs of a `Session` and writes its outputs into ``out``."""

    def __init__(self, session, out: Path, stream=None, max_steps=None, log_every=50):
        self.s = session
        self.opts, self.net, self.state = session.opts, session.net, session.state
        self.world = session.world
        self.main = self.world is None or self.world.is_main
        self.out = Path(out)
        self.stream = (stream or sys.stdout) if self.main else open(os.devnull, "w")
        self.max_steps = max_steps
        self.log_every = int(log_every)
        self.progress = Progress(self.stream, log_every=self.log_every)
        o = self.opts
        self.schedule = Schedule(o["schedule"], o["lr_steps"], o["plateau_patience"],
                                 o["max_lr_drops"], self.state.schedule_state,
                                 decay=float(o["lr_decay"]))
        self.num_classes = len(session.classes)
        self.last_saved_step = self.state.step if session.resumed else None
        self._in_update = False
        self.metrics = (MetricsLog if self.main else _NoMetrics)(self.out / "metrics.jsonl")
        self._graphs = {}  # input shape -> GraphedStep, with --cuda-graph
        self.stats = LayerStats(self.opts.get("stats_every"))

    # ---- checkpoints -------------------------------------------------------------------
    def save(self, elapsed):
        """Write the checkpoint, unless a parameter went NaN/inf (then the old one stays)."""
        params = self.net.state_dict()        # grouped single-device layout, NumPy
        velocities = self.net.optimizer_state()
        for name, a in list(params.items()) + list(velocities.items()):
            if not np.isfinite(a).all():
                raise TrainingDiverged(f"{name} holds NaN/inf values after step "
                                       f"{self.state.step}")
        meta = self.state.meta(
            elapsed, self.schedule.state, options=self.opts, num_classes=self.num_classes,
            classes=self.s.classes, class_names=self.s.class_names,
            towers=self.net.config.towers,
            ranks=1 if self.world is None else self.world.size,
            first_conv=self.first_conv_name(),
            rng={"kind": "pure function of (seed, epoch, step/index)",
                 "seed": int(self.opts["seed"]), "dropout_seed_of_step": "splitmix64(seed, step)"})
        path = self.out / ckpt.FILENAME
        if self.main:
            path = ckpt.save(path, params, velocities, meta)
        self.last_saved_step = self.state.step
        return path

    def first_conv_name(self):
        """The state_dict name of the first layer's weights with a 4-d (filter) shape."""
        for name, shape in self.net.config.param_shapes.items():
            if len(shape) == 4:
                return name
        return None

    # ---- one step ----------------------------------------------------------------------
    def _train_step(self, x, labels):
        """One step on fixed buffers; the host waits once, for the loss, before the update
        (a NaN loss never reaches the weights)."""
        be, st, o = self.s.backend, self.state, self.opts
        if self.world is not None:
            return self._distributed_step(x, labels)
        if o.get("cuda_graph"):
            return self._graph_step(x, labels)
        before = self.stats.before(self.net) if self.stats.due(st.step + 1) else None
        with self.net.repeated_step(tuple(x.shape)):
            lab = prepare_labels(be, labels)
            loss, logits = self.net.train_step_grads(x, lab, seed=step_seed(o["seed"], st.step),
                                                     sync=False)
            ranks = topk_ranks(be, logits, lab)
            loss = float(be.to_numpy(loss)[0])
            if not math.isfinite(loss):
                raise self._diverged(loss)
            self._in_update = True  # until the step counters match the parameters again
            self.net.sgd_step(st.lr, momentum=float(o["momentum"]),
                              weight_decay=float(o["weight_decay"]))
        if before is not None:  # outside the step's fixed buffers
            rec, warnings = self.stats.after(self.net, before, x, st.step + 1)
            self.metrics.log(**rec)
            for line in warnings:
                self.progress.print(line)
        e1, e5 = count_errors(be.to_numpy(ranks), ks=(1, min(5, self.num_classes)))
        return loss, int(e1), int(e5)

    def _diverged(self, loss):
        st = self.state
        return TrainingDiverged(f"the loss is {loss} at step {st.step + 1} (epoch "
                                f"{st.epoch + 1}, batch {st.batch + 1}, lr {st.lr:g})")

    def _graph_step(self, x, labels):
        """The same step as captured graphs (pyalexnet.graphs)."""
        st, o = self.state, self.opts
        graph = self._graphs.get(x.shape)
        if graph is None:
            graph = self._graphs[x.shape] = GraphedStep(self.net, x.shape)
        self._in_update = True
        loss, ranks = graph.run(x, labels, step_seed(o["seed"], st.step), st.lr,
                                float(o["momentum"]), float(o["weight_decay"]))
        if not math.isfinite(loss):  # the update was not replayed
            self._in_update = False
            raise self._diverged(loss)
        e1, e5 = count_errors(ranks, ks=(1, min(5, self.num_classes)))
        return loss, int(e1), int(e5)

    def _distributed_step(self, x, labels):
        """One step of this rank's share; loss and errors summed over the ranks."""
        be, st = self.s.backend, self.state
        self.world.step_started(st.step)
        lab = be.asarray(labels, dtype=np.int32)
        loss, logits = self.net.train_step_grads(x, lab, seed=step_seed(self.opts["seed"],
                                                                         st.step))
        loss = float(loss)
        e1, e5 = topk_errors(be, logits, lab, ks=(1, min(5, self.num_classes)))
        s = self.world.all_sum([loss * len(labels), e1, e5])  # the whole batch's
        loss, e1, e5 = float(s[0]) / self.net.engine.global_n, int(s[1]), int(s[2])
        if not math.isfinite(loss):
            raise self._diverged(loss)
        self._in_update = True  # until the step counters match the parameters again
        o = self.opts
        self.net.sgd_step(st.lr, momentum=float(o["momentum"]),
                          weight_decay=float(o["weight_decay"]))
        return loss, int(e1), int(e5)

    def _evaluate(self, ten_crop=False):
        return evaluate(self.net, self.s.loaders.get(train=False, ten_crop=ten_crop),
                        ten_crop=ten_crop)

    # ---- the run -----------------------------------------------------------------------
    def run(self):
        try:
            return self._run()
        finally:
            self.s.loaders.close()

    def _run(self):
        o, st, p = self.opts, self.state, self.progress
        t_start = time.monotonic()
        elapsed = lambda: st.elapsed_before + time.monotonic() - t_start  # noqa: E731
        self.metrics.open(st.step if self.last_saved_step is not None else None)
        if st.step == 0:
            self.metrics.log(kind="config", step=0, options=o, num_classes=self.num_classes,
                             params=int(self.net.num_params()), backend=self.s.backend.name)
        p.print(f"pyalexnet.train: {o['config']} ({self.net.num_params():,} parameters) on "
                f"{describe_source(o['source'])}: {len(self.s.train_set)} train / "
                f"{len(self.s.val_set)} held-out images, {self.num_classes} classes; backend "
                f"{self.s.backend.name}; output {self.out}")
        if st.step:
            p.print(f"resuming at step {st.step} (epoch {st.epoch + 1}, batch {st.batch}), "
                    f"lr {st.lr:g}")
        try:
            with Interrupts(p) as irq:
                try:
                    status, last_val = self._epochs(int(o["epochs"]), elapsed, irq)
                except KeyboardInterrupt:
                    p.close_line()
                    if self._in_update:
                        # Some tensors got this step's update and some did not: saving that
                        # would make a checkpoint no uninterrupted run ever passes through.
                        print("interrupted in the middle of a parameter update: not saving; "
                              f"the last checkpoint (step {self.last_saved_step}) is kept",
                              file=sys.stderr)
                        return EXIT_INTERRUPTED
                    status, last_val = "interrupted", None
            if status == "interrupted":
                path = self.save(elapsed())
                p.print(f"interrupted: saved {path} at step {st.step} (epoch {st.epoch + 1}, "
                        f"batch {st.batch}); continue with --resume {self.out}")
                self._draw_pictures()
                return EXIT_INTERRUPTED
            if status == "max_steps":
                path = self.save(elapsed())
                p.print(f"reached --max-steps {self.max_steps}: saved {path}")
            self._finish(last_val, elapsed)
            return 0
        except TrainingDiverged as e:
            p.close_line()
            saved = (f"the last good checkpoint is {self.out / ckpt.FILENAME} (step "
                     f"{self.last_saved_step})" if self.last_saved_step is not None
                     else "no checkpoint was written before it")
            print(f"error: training diverged: {e}. Stopped; {saved}. Try a smaller --lr or "
                  "--bias-init caffe.", file=sys.stderr)
            self.metrics.log(kind="diverged", step=st.step + 1, epoch=st.epoch, message=str(e))
            return EXIT_NAN
        finally:
            self.metrics.close()

    def _epochs(self, epochs, elapsed, irq):
        o, st, p = self.opts, self.state, self.progress
        last_val = None
        while st.epoch < epochs:
            if self.max_steps is not None and st.step >= self.max_steps:
                return "max_steps", last_val
            if o["schedule"] == "step":
                lr = self.schedule.lr_at_epoch_start(float(o["lr"]), st.epoch)
                if lr != st.lr and st.batch == 0:
                    p.print(f"epoch {st.epoch + 1}: lr {st.lr:g} -> {lr:g} (--lr-steps)")
                st.lr = lr
            loader = self.s.loaders.get(train=True)
            # mid-epoch resume: order and augmentation are functions of (seed, epoch, image),
            # so starting at the saved batch puts the run exactly where it stopped
            loader.set_epoch(st.epoch, start_batch=st.batch)
            batches = len(loader)
            if batches == 0:
                raise SystemExit(f"error: {loader.num_samples} training images make no full "
                                 f"batch of {o['batch_size']}; lower --batch-size or raise "
                                 "--limit-train")
            it = iter(loader)
            window, t_win, wait_win = Averages(), time.monotonic(), 0.0
            t_epoch = time.monotonic()
            while True:
                if self.max_steps is not None and st.step >= self.max_steps:
                    return "max_steps", last_val
                t0 = time.monotonic()
                try:
                    x, labels = next(it)
                except StopIteration:
                    break
                wait = time.monotonic() - t0
                st.data_wait += wait
                wait_win += wait
                loss, e1, e5 = self._train_step(x, labels)  # sets _in_update
                n = len(labels) if self.world is None else self.net.engine.global_n
                st.step += 1
                st.batch += 1
                st.epoch_sums.add(loss, n, e1, e5)
                self._in_update = False
                window.add(loss, n, e1, e5)
                now = time.monotonic()
                ips = window.n / max(1e-9, now - t_win)
                el, t1, t5 = st.epoch_sums.means()
                p.update(epoch=st.epoch, epochs=epochs, batch=st.batch, batches=batches,
                         step=st.step, images_per_s=ips, loss=el, top1=t1, top5=t5,
                         lr=st.lr, data_wait=st.data_wait, elapsed=elapsed())
                if st.step % self.log_every == 0:
                    wl, w1, w5 = window.means()
                    self.metrics.log(kind="train", epoch=st.epoch, step=st.step,
                                     x=st.epoch + st.batch / batches, loss=wl, top1=w1,
                                     top5=w5, lr=st.lr, images_per_s=ips, data_wait=wait_win,
                                     time=elapsed())
                    window, t_win, wait_win = Averages(), time.monotonic(), 0.0
                if irq.requested:
                    return "interrupted", last_val
            last_val = self._end_epoch(epochs, t_epoch, elapsed) or last_val
        return "done", last_val

    def _end_epoch(self, epochs, t_epoch, elapsed):
        """Evaluate (when due), log, adjust the lr, checkpoint; returns (step, val) or None."""
        o, st, p = self.opts, self.state, self.progress
        train_loss, train_top1, train_top5 = st.epoch_sums.means()
        rec = {"kind": "epoch", "epoch": st.epoch + 1, "step": st.step,
               "train_loss": train_loss, "train_top1": train_top1, "train_top5": train_top5,
               "lr": st.lr, "epoch_seconds": time.monotonic() - t_epoch}
        ee = int(o["eval_every"])
        val = None
        if ee and ((st.epoch + 1) % ee == 0 or st.epoch + 1 == epochs):
            val = self._evaluate()
            rec.update(val_loss=val["loss"], val_top1=val["top1"], val_top5=val["top5"])
        rec["time"] = elapsed()
        p.close_line()
        msg = (f"epoch {st.epoch + 1}/{epochs}: train loss {train_loss:.4f} "
               f"top-1 err {100 * train_top1:.1f}%")
        if val is not None:
            msg += (f" | held-out loss {val['loss']:.4f} top-1 err {100 * val['top1']:.2f}% "
                    f"top-5 err {100 * val['top5']:.2f}%")
        p.print(msg + f" | lr {st.lr:g} | {format_duration(elapsed())}")
        new_lr = self.schedule.after_epoch(st.lr, st.epoch + 1,
                                           None if val is None else val["top1"])
        if new_lr is not None and new_lr != st.lr:
            p.print(f"held-out error has not improved for {self.schedule.patience} "
                    f"evaluation(s): lr {st.lr:g} -> {new_lr:g}")
            st.lr = new_lr
        # Log before saving: a record newer than the checkpoint is dropped on resume.
        self.metrics.log(**rec)
        st.history.append(rec)
        st.epoch += 1
        st.batch = 0
        st.epoch_sums = Averages()
        self.save(elapsed())
        return None if val is None else (st.step, val)

    def _finish(self, last_val, elapsed):
        p, st = self.progress, self.state
        results = {"step": st.step, "epoch": st.epoch}
        if last_val is not None and last_val[0] == st.step:
            centre = last_val[1]  # measured after the last step already
        else:
            centre = self._evaluate()
        results["centre_crop"] = centre
        p.print(format_result(centre))
        if self.opts["ten_crop"]:
            ten = self._evaluate(ten_crop=True)
            results["ten_crop"] = ten
            p.print(format_result(ten))
        results["time"] = elapsed()
        results["data_wait"] = st.data_wait
        self.metrics.log(kind="final", **results)
        if self.main:
            (self.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        pics = self._draw_pictures()
        p.print(f"HELD-OUT TOP-1 ACCURACY: {100 * (1 - centre['top1']):.2f}% "
                f"({centre['images']} images, centre crop) after {st.step} steps in "
                f"{format_duration(elapsed())}; outputs in {self.out}"
                + (f" ({', '.join(x.name for x in pics)})" if pics else ""))
        return results

    def _draw_pictures(self):
        name = self.first_conv_name()
        try:
            # on every rank: with fc layers split over the ranks, state_dict is a collective
            filters = None if name is None else self.net.state_dict()[name]
            if not self.main:
                return []
            self.metrics.flush()
            drawn = draw_pictures(self.out, self.metrics.path,
                                  f"{self.opts['config']} - {self.out.name}", filters,
                                  towers=self.net.config.towers)
            layers = plot_layers(self.out / "layers.png", self.metrics.path)
            return drawn + ([layers] if layers else [])
        except Exception as e:  # pictures must never lose a finished run
            self.progress.print(f"warning: could not draw the pictures: {type(e).__name__}: {e}")
            return []
