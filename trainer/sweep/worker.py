"""One ``trainer sweep`` process: claims points, runs them K at a time, reports, prunes, stops."""
from __future__ import annotations

import dataclasses
import datetime
import math
import os
import signal
import subprocess
import sys
import time

from etils import epath

from trainer.sweep import budget as budget_lib
from trainer.sweep import runner, spec


def say(message: str):
  print(f'sweep: {message}', file=sys.stderr, flush=True)


@dataclasses.dataclass
class Child:
  """A point being run by this worker."""
  point: spec.Point
  trial_id: int
  proc: subprocess.Popen
  workdir: str
  steps: int
  log: object = None
  reported: set = dataclasses.field(default_factory=set)
  pruning: bool = False


class Stop(Exception):
  """SIGTERM or Ctrl-C reached the sweep process."""


class Worker:
  """Schedules the sweep's points on one machine until none is left to run here or elsewhere."""

  def __init__(self, sweep: spec.Sweep, opts: runner.Options, study, planned: list[spec.Point]):
    self.sweep, self.opts, self.study = sweep, opts, study
    self.optuna = runner.optuna_module()
    self.planned = planned
    self.children: dict[int, Child] = {}
    self.launched: set[str] = set()   # Each point at most once per invocation.
    self.recorded: dict[str, tuple] = {}  # TPE points from trials: (params, distributions).
    self.repeats = 0                      # TPE draws in a row that named an existing point.
    self.budget = (budget_lib.Budget(opts.budget, runner.cpu_host())
                   if opts.budget is not None else None)

  def workdir(self, point: spec.Point) -> str:
    return os.path.join(self.opts.workdir, point.name)

  # --- claiming -------------------------------------------------------------------------------
  def _template(self, point: spec.Point, params=None, dists=None):
    """A RUNNING trial for ``point``: TPE points keep Optuna params, planned ones a user attr."""
    if dists is None and point.name in self.recorded:  # A TPE point again, as first drawn.
      params, dists = self.recorded[point.name]
    return self.optuna.trial.FrozenTrial(
        number=-1, state=self.optuna.trial.TrialState.RUNNING, value=None,
        datetime_start=datetime.datetime.now(), datetime_complete=None, params=params or {},
        distributions=dists or {}, user_attrs={'name': point.name, 'overrides': point.overrides},
        system_attrs={}, intermediate_values={}, trial_id=-1)

  def claim(self, point: spec.Point, params=None, dists=None) -> int | None:
    """A RUNNING trial for ``point`` that this worker owns, or None if another worker has it."""
    storage = self.study._storage
    trial_id = storage.create_new_trial(self.study._study_id, self._template(point, params, dists))
    storage.record_heartbeat(trial_id)  # A trial without heartbeats is never found stale.
    return trial_id if self._keep(trial_id, point.name) else None

  def _keep(self, trial_id: int, name: str) -> bool:
    """Lowest trial number wins; with TPE, also only ``count`` distinct points."""
    mine = self.study._storage.get_trial(trial_id)
    trials = self.study.get_trials(deepcopy=False)
    earlier = [t for t in trials if t.number < mine.number and runner.is_live(t)
               and t.user_attrs.get('status') != 'duplicate']
    taken = any(t.user_attrs.get('name') == name for t in earlier)
    surplus = (self.sweep.sampler == 'tpe' and
               len({t.user_attrs.get('name') for t in earlier} - {name}) >= self.sweep.count)
    if taken or surplus:
      self._finish(trial_id, 'FAIL', status='duplicate')
      return False
    return True

  def _finish(self, trial_id: int, state: str, value=None, status: str = '', reason: str = ''):
    storage = self.study._storage
    if status:
      storage.set_trial_user_attr(trial_id, 'status', status)
    if reason:
      storage.set_trial_user_attr(trial_id, 'reason', reason)
    trial = self.optuna.trial.Trial(self.study, trial_id)
    self.study.tell(trial, value if state == 'COMPLETE' else None,
                    state=self.optuna.trial.TrialState[state], skip_if_finished=True)

  # --- what is left ---------------------------------------------------------------------------
  def known_points(self, groups: dict) -> list[spec.Point]:
    """Planned points, then (TPE) points that only trials name, e.g. a killed worker's."""
    names = {p.name for p in self.planned}
    extra = []
    for name, trials in groups.items():
      if name not in names:
        first = trials[0]
        self.recorded[name] = (dict(first.params), dict(first.distributions))
        extra.append(spec.Point(name, overrides_of(first)))
    return self.planned + extra

  def todo(self, groups: dict) -> list[spec.Point]:
    out = []
    for point in self.known_points(groups):
      trials = groups.get(point.name, [])
      live = [t for t in trials if runner.is_live(t) and
              not (self.opts.retry_failed and t.user_attrs.get('status') == 'failed')]
      if not live and point.name not in self.launched:
        out.append(point)
    return out

  def _tpe_room(self, groups: dict) -> bool:
    if self.sweep.sampler != 'tpe' or self.repeats > 20:
      return False  # 20 draws in a row of points that exist: the space has no more.
    live = {n for n, ts in groups.items() if any(runner.is_live(t) for t in ts)}
    return len(live) < self.sweep.count

  def _ask_tpe(self) -> tuple[spec.Point, int] | None:
    """A new TPE point, claimed; None if its name is taken or the count is reached."""
    dists = runner.distributions(self.sweep.space)
    trial = self.study.ask(fixed_distributions=dists)
    draws = {k: spec.round_draw(trial.params[k]) for k in self.sweep.space}
    seed = {'seed': self.sweep.seeds[0]} if self.sweep.seeds else {}
    point = spec.make_point(self.sweep, {**draws, **seed})
    self.study._storage.set_trial_user_attr(trial._trial_id, 'name', point.name)
    self.study._storage.set_trial_user_attr(trial._trial_id, 'overrides', point.overrides)
    self.study._storage.record_heartbeat(trial._trial_id)
    if not self._keep(trial._trial_id, point.name):
      return None
    return point, trial._trial_id

  # --- the loop -------------------------------------------------------------------------------
  def run(self) -> int:
    previous = signal.signal(signal.SIGTERM, self._on_term)
    try:
      if self.opts.check_fit:
        self.check_fit()
      while self.step():
        time.sleep(self.opts.poll_s)
    except (Stop, KeyboardInterrupt):
      self.stop_children()
      return 1
    finally:
      signal.signal(signal.SIGTERM, previous)
    return 0

  def _on_term(self, signum, frame):
    raise Stop()

  def step(self) -> bool:
    """One pass: heartbeats, stale trials, children, launches. False when all is done."""
    storage = self.study._storage
    for trial_id in self.children:
      storage.record_heartbeat(trial_id)
    self.optuna.storages.fail_stale_trials(self.study)
    self.watch()
    groups = runner.group_by_name(self.study.get_trials(deepcopy=False))
    todo = [] if self.budget and self.budget.stopped else self.todo(groups)
    tpe_room = not (self.budget and self.budget.stopped) and self._tpe_room(groups)
    while len(self.children) < self.opts.parallel and (todo or tpe_room):
      if todo:
        point, trial_id = todo.pop(0), None
      else:
        got = self._ask_tpe()
        groups = runner.group_by_name(self.study.get_trials(deepcopy=False))
        tpe_room = self._tpe_room(groups)
        self.repeats = self.repeats + 1 if got is None else 0
        if got is None:
          continue
        point, trial_id = got
      if not self.start(point, trial_id):
        self.skip_over_budget(todo)
        todo, tpe_room = [], False
    others = any(t.state.name == 'RUNNING' and t._trial_id not in self.children
                 for ts in groups.values() for t in ts)
    return bool(self.children or others or
                (not (self.budget and self.budget.stopped) and (self.todo(groups) or
                                                                 self._tpe_room(groups))))

  def skip_over_budget(self, points: list[spec.Point]):
    """Marks points the budget leaves unlaunched: skipped now, run again by a later sweep."""
    for point in points:
      self.launched.add(point.name)
      trial_id = self.claim(point)
      if trial_id is not None:
        self._finish(trial_id, 'FAIL', status='over_budget', reason=self.budget.stopped)

  def records_by_dir(self) -> dict:
    groups = runner.group_by_name(self.study.get_trials(deepcopy=False))
    return {self.workdir(p): runner.read_records(self.workdir(p))
            for p in self.known_points(groups)}

  def start(self, point: spec.Point, trial_id: int | None) -> bool:
    """Claims (unless claimed) and launches ``point``; False once the budget stops launches."""
    self.launched.add(point.name)
    cfg = spec.point_config(self.sweep, point)
    if self.budget:
      running = [c.workdir for c in self.children.values()]
      reason = self.budget.check(cfg, point.name, self.records_by_dir(), running)
      if reason:
        if trial_id is not None:
          self._finish(trial_id, 'FAIL', status='over_budget', reason=reason)
        else:
          self.skip_over_budget([point])
        say(f'{reason}; launching no more points (the report lists them as skipped)')
        return False
    if trial_id is None:
      trial_id = self.claim(point)
      if trial_id is None:
        return True
    workdir = self.workdir(point)
    value = runner.finished(workdir, cfg.train.steps, self.sweep.objective)
    if value is not None:  # Trained before the sweep was killed; nothing left to run.
      self._finish(trial_id, 'COMPLETE', value)
      say(f'{point.name}: already finished in {workdir}')
      return True
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    args = spec.train_args(self.sweep, point, workdir)
    log = open(os.path.join(workdir, 'train.log'), 'a') if '://' not in workdir else None
    proc = subprocess.Popen(runner.command(self.opts, args), stdout=log, stderr=subprocess.STDOUT,
                            env=runner.point_env(self.opts), preexec_fn=runner._die_with_parent)
    self.children[trial_id] = Child(point, trial_id, proc, workdir, cfg.train.steps, log)
    say(f'{point.name}: started (trial {trial_id}, pid {proc.pid}): '
        f'{runner.shown_command(self.opts, args)}')
    return True

  def watch(self):
    """Reports each child's objective values, prunes losers, records the ones that ended."""
    for trial_id, child in list(self.children.items()):
      records = runner.read_records(child.workdir)
      trial = self.optuna.trial.Trial(self.study, trial_id)
      for r in records:
        value = r.get(self.sweep.objective)
        if value is None or r['step'] in child.reported or not math.isfinite(value):
          continue
        trial.report(float(value), r['step'])
        child.reported.add(r['step'])
        # Decide at each step in turn: pruners compare values at the same step.
        if self.opts.prune and not child.pruning and child.proc.poll() is None \
            and trial.should_prune():
          child.proc.send_signal(signal.SIGTERM)  # trainer train saves a checkpoint, exits 0.
          child.pruning = True
          say(f'{child.point.name}: pruned at step {r["step"]}; stopping it (SIGTERM)')
      if child.proc.poll() is not None:
        self.ended(child, records)

  def ended(self, child: Child, records: list[dict]):
    code = child.proc.returncode
    if child.log:
      child.log.close()
    value = runner.finished(child.workdir, child.steps, self.sweep.objective)
    if child.pruning:
      self._finish(child.trial_id, 'PRUNED')
    elif value is not None and (code == 0 or self.opts.launcher == 'slurm'):
      self._finish(child.trial_id, 'COMPLETE', value)
      say(f'{child.point.name}: done, {self.sweep.objective} {value:.4f}')
    elif code == 0 and self.opts.launcher == 'slurm':
      return  # Submitted: the job writes metrics.jsonl; keep watching.
    elif code == 0:  # Stopped early by a SIGTERM from outside: the next sweep resumes it.
      step = records[-1]['step'] if records else 0
      self._finish(child.trial_id, 'FAIL', reason=f'stopped at step {step}')
      say(f'{child.point.name}: stopped at step {step}; run the sweep again to resume it')
    else:
      reason = f'exit {code}: {last_line(child.workdir)}'
      self._finish(child.trial_id, 'FAIL', status='failed', reason=reason)
      say(f'{child.point.name}: failed ({reason})')
    del self.children[child.trial_id]

  def stop_children(self):
    """SIGTERM to every point (each saves a checkpoint); their trials are left to be resumed."""
    for child in self.children.values():
      if child.proc.poll() is None:
        child.proc.send_signal(signal.SIGTERM)
    for child in self.children.values():
      try:
        child.proc.wait(timeout=120)
      except subprocess.TimeoutExpired:
        child.proc.kill()
      self._finish(child.trial_id, 'FAIL', reason='sweep stopped')
    say(f'stopped; {len(self.children)} running point(s) saved; run the same command to go on')
    self.children.clear()

  def check_fit(self):
    """Compiles every unclaimed planned point for the topology; marks misfits skipped."""
    groups = runner.group_by_name(self.study.get_trials(deepcopy=False))
    for point in self.todo(groups):
      fits, reason = runner.compile_fit(self.sweep, point, self.opts.topology)
      if fits:
        continue
      trial_id = self.claim(point)
      if trial_id is not None:
        self._finish(trial_id, 'FAIL', status='skipped', reason=reason)
        say(f'{point.name}: skipped, {reason}')


def overrides_of(trial) -> dict:
  """A trial's point overrides: recorded by us, or (TPE) its params as drawn and rounded."""
  if 'overrides' in trial.user_attrs:
    return dict(trial.user_attrs['overrides'])
  return {k: spec.round_draw(v) for k, v in trial.params.items()}


def last_line(workdir: str) -> str:
  path = os.path.join(workdir, 'train.log')
  if not os.path.exists(path):
    return 'no log'
  with open(path, errors='replace') as f:
    lines = [l.strip() for l in f.read()[-4000:].splitlines() if l.strip()]
  return lines[-1][:300] if lines else 'no output'
