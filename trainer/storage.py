"""User paths, local or on object storage (``gs://``, ``s3://``), through ``etils.epath``.

Every file a user names (workdir, data, export and prepare directories) is read and
written here; local temporary files are not. Object stores have no rename, no append
and no directories, so three choices are made here (docs/design.md says why):

- publish: a directory goes up file by file and its manifest (the file readers check
  for, e.g. ``stats.json``) last; without the manifest it is not finished.
- append: ``Appendable`` keeps the whole text in memory and rewrites the object (one
  atomic PUT) at most every ``FLUSH_S`` seconds, on ``flush()`` and on close.
- probe: ``probe`` writes, reads back and deletes one small object; it never creates a
  bucket, so a missing bucket fails here, before anything compiles.
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import tempfile
import time

from etils import epath

from trainer.config import ConfigError

# gcsfs logs each failed retry with a traceback and a bucket-type probe as a warning;
# the errors that matter reach the user as one StorageError line instead.
logging.getLogger('gcsfs').setLevel(logging.CRITICAL)


def _without_traceback(record: logging.LogRecord) -> bool:
  record.exc_info, record.exc_text = None, None
  return True


# Orbax logs a failed background write with its whole traceback before it re-raises the
# error to the caller, who reports it in one line; its log keeps the message line alone.
logging.getLogger('absl').addFilter(_without_traceback)

FLUSH_S = 5.0  # GCS allows about one write per second to one object name.


class StorageError(RuntimeError):
  """Storage failed while running (a lost bucket, a network outage); the CLI exits 1."""


class UnusableError(ConfigError):
  """A user path that cannot be used at all (no bucket, no permission); the CLI exits 2."""


def is_remote(path) -> bool:
  return '://' in str(path)


def _p(path) -> epath.Path:
  return epath.Path(path)


def absolute(path: str) -> str:
  """Local paths made absolute; URLs untouched (os.path.abspath turns gs://b into ./gs:/b)."""
  return str(path) if is_remote(path) else os.path.abspath(path)


def join(path, *parts) -> str:
  return str(_p(path).joinpath(*parts)) if is_remote(path) else os.path.join(path, *parts)


def exists(path) -> bool:
  return _p(path).exists()


def isdir(path) -> bool:
  return _p(path).is_dir()


def isfile(path) -> bool:
  p = _p(path)
  return p.exists() and not p.is_dir()


def listdir(path) -> list[str]:
  """Names in a directory, sorted; empty if there is none."""
  p = _p(path)
  return sorted(c.name for c in p.iterdir()) if p.is_dir() else []


def read_text(path) -> str:
  return _p(path).read_text()


def read_bytes(path) -> bytes:
  return _p(path).read_bytes()


def write_bytes(path, data: bytes):
  """Whole-file write: one PUT on object stores (atomic there), temp file + rename locally."""
  if is_remote(path):
    _p(path).write_bytes(data)
    return
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'wb') as f:
    f.write(data)
  os.replace(tmp, path)


def write_text(path, text: str):
  write_bytes(path, text.encode())


def remove(path):
  """Deletes a file; a missing one is fine."""
  _p(path).unlink(missing_ok=True)


def rmtree(path):
  p = _p(path)
  if p.exists():
    p.rmtree()


def makedirs(path):
  """Creates a local directory; a no-op on object stores (gcsfs would create a missing bucket)."""
  if not is_remote(path):
    os.makedirs(path, exist_ok=True)


def first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f'{type(e).__name__}: {text[0] if text else ""}'[:300]


def probe(directory: str, name: str):
  """Proves ``directory`` takes writes: write, read back, delete one file named ``name``."""
  target = join(directory, name)
  try:
    makedirs(directory)
    write_text(target, 'ok')
    ok = read_text(target) == 'ok'
    remove(target)
  except Exception as e:  # OSError locally; gcsfs, aiohttp and google-auth raise their own.
    reason = getattr(e, 'strerror', None) or first_line(e)
    if is_remote(directory) and isinstance(e, FileNotFoundError):
      reason = 'no such bucket'  # gcsfs names only the request URL.
    fix = ('check that the bucket exists and that you may write to it' if is_remote(directory)
           else 'choose a directory you can write to')
    raise UnusableError(f'{directory} is not writable ({reason}); {fix}') from None
  if not ok:
    raise UnusableError(f'{directory}: a file written there read back different; check the storage')


def upload_dir(local_dir: str, dest: str, last: tuple[str, ...] = ()):
  """Copies a local tree to ``dest``, the files named in ``last`` (relative) after all others."""
  files = []
  for root, _, names in os.walk(local_dir):
    files += [os.path.relpath(os.path.join(root, n), local_dir) for n in names]
  files.sort(key=lambda f: (f in last, f))
  for rel in files:
    with open(os.path.join(local_dir, rel), 'rb') as f:
      data = f.read()
    if is_remote(dest):
      _p(join(dest, rel)).write_bytes(data)
    else:
      os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
      write_bytes(os.path.join(dest, rel), data)


@contextlib.contextmanager
def local_copy(path: str):
  """A local file name holding ``path``'s bytes (a download for URLs, ``path`` itself locally)."""
  if not is_remote(path):
    yield path
    return
  with tempfile.TemporaryDirectory() as tmp:
    local = os.path.join(tmp, _p(path).name)
    with open(local, 'wb') as f:
      f.write(read_bytes(path))
    yield local


def local_dir(path: str) -> str:
  """A local directory holding ``path``'s tree: ``path`` itself, or a download of a URL.

  For readers that open files by local name (array_record's C++ reader cannot open
  gs:// names); the copy lives in a temporary folder removed at exit.
  """
  if not is_remote(path):
    return path
  local = tempfile.mkdtemp(prefix='trainer-data-')
  atexit.register(shutil.rmtree, local, ignore_errors=True)
  pending = [(_p(path), local)]
  while pending:
    remote, target = pending.pop()
    for child in remote.iterdir():
      if child.is_dir():
        os.makedirs(os.path.join(target, child.name), exist_ok=True)
        pending.append((child, os.path.join(target, child.name)))
      else:
        with open(os.path.join(target, child.name), 'wb') as f:
          f.write(child.read_bytes())
  return local


class Appendable:
  """A text file that grows at its end: appended in place locally, rewritten whole on object stores.

  Object stores cannot append, so the text is held in memory (what the file held when
  opened, plus every line since) and the object is replaced, at most every ``FLUSH_S``
  seconds, on ``flush()`` and on ``close()``.
  """

  def __init__(self, path: str):
    self.path, self.remote = path, is_remote(path)
    self.lines, self.dirty, self.flushed_at = [], False, time.monotonic()
    if self.remote and exists(path):
      self.lines = [read_text(path)]

  def append(self, text: str, flush: bool = False):
    if not self.remote:
      with open(self.path, 'a') as f:
        f.write(text)
      return
    self.lines.append(text)
    self.dirty = True
    if flush or time.monotonic() - self.flushed_at >= FLUSH_S:
      self.flush()

  def flush(self):
    if self.remote and self.dirty:
      try:
        _p(self.path).write_text(''.join(self.lines))
      except Exception as e:
        raise StorageError(f'{self.path}: cannot write ({first_line(e)})') from None
      self.lines = [''.join(self.lines)]
      self.dirty, self.flushed_at = False, time.monotonic()

  def close(self):
    self.flush()


class MirroredDir:
  """A local temp directory whose files are copied to ``dest`` on ``sync()`` (for writers that
  need a local path, like tensorboardX, whose own GCS writer fails); ``dest`` itself if local."""

  def __init__(self, dest: str):
    self.dest, self.remote = dest, is_remote(dest)
    self.local = tempfile.mkdtemp(prefix='trainer-mirror-') if self.remote else dest
    self.sizes, self.synced_at = {}, time.monotonic()

  def sync(self, force: bool = False):
    """Uploads files that changed since the last sync (throttled to every FLUSH_S unless forced)."""
    if not self.remote or (not force and time.monotonic() - self.synced_at < FLUSH_S):
      return
    self.synced_at = time.monotonic()
    for name in sorted(os.listdir(self.local)):
      local = os.path.join(self.local, name)
      size = os.path.getsize(local)
      if os.path.isfile(local) and self.sizes.get(name) != size:
        try:
          with open(local, 'rb') as f:
            _p(join(self.dest, name)).write_bytes(f.read())
        except Exception as e:
          raise StorageError(f'{join(self.dest, name)}: cannot write ({first_line(e)})') from None
        self.sizes[name] = size

  def close(self):
    try:
      self.sync(force=True)
    finally:
      if self.remote:
        shutil.rmtree(self.local, ignore_errors=True)
