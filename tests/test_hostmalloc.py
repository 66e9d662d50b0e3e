"""trainer/hostmalloc.py: when the glibc settings apply, and that they keep freed memory."""
import platform
import subprocess
import sys

import pytest

from trainer import cli, hostmalloc

GLIBC = platform.system() == 'Linux' and platform.libc_ver()[0] == 'glibc'


@pytest.mark.parametrize('env, expected', [
    ({'JAX_PLATFORMS': 'cpu'}, 'tuned'),
    ({'JAX_PLATFORMS': 'cpu', 'TRAINER_MALLOC': 'default'}, 'off'),
    ({'JAX_PLATFORMS': 'cpu', 'MALLOC_ARENA_MAX': '4'}, 'user settings'),
    ({'JAX_PLATFORMS': 'cpu', 'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}, 'user settings'),
    ({'TRAINER_MALLOC': 'tuned', 'MALLOC_ARENA_MAX': '4'}, 'tuned'),
])
def test_decision(env, expected):
  if not GLIBC:
    expected = 'off' if env.get('TRAINER_MALLOC') == 'default' else 'not glibc'
  assert hostmalloc.decide(env) == expected


def test_accelerator_hosts_are_left_alone(monkeypatch):
  monkeypatch.setattr(hostmalloc.glob, 'glob', lambda p: ['/dev/accel0'] if 'accel' in p else [])
  if GLIBC:
    assert hostmalloc.decide({}) == 'accelerator host'
    assert hostmalloc.decide({'JAX_PLATFORMS': 'cpu'}) == 'tuned'


# Touches 256 MiB from malloc, frees it, and prints resident MiB before, while held and after.
_PROBE = r'''
import ctypes, sys
from trainer import hostmalloc
print(hostmalloc.apply())
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
def rss():
  return int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20
n = 256 * 2**20
before = rss()
p = libc.malloc(n)
ctypes.memset(p, 1, n)
held = rss()
libc.free(p)
print(before, held, rss())
'''


def _probe(env: dict) -> tuple[str, float, float, float]:
  out = subprocess.run([sys.executable, '-c', _PROBE], capture_output=True, text=True, check=True,
                       env={'PATH': '/usr/bin:/bin', 'JAX_PLATFORMS': 'cpu', **env}).stdout
  decision, sizes = out.splitlines()
  return (decision, *map(float, sizes.split()))


@pytest.mark.skipif(not GLIBC, reason='glibc malloc settings')
def test_freed_memory_stays_for_reuse_only_when_tuned():
  decision, before, held, after = _probe({})
  assert decision == 'tuned' and held - before > 250  # The pages were really touched.
  assert after - before > 250  # Kept: the next step reuses them without faulting them in.
  decision, before, held, after = _probe({'TRAINER_MALLOC': 'default'})
  assert decision == 'off' and held - before > 250
  assert after - before < 10  # glibc's default unmaps a chunk that large when it is freed.


def test_the_command_applies_it_before_main(monkeypatch):
  calls = []
  monkeypatch.setattr(hostmalloc, 'apply', lambda: calls.append('apply') or 'tuned')
  monkeypatch.setattr(cli, '_run', lambda argv: calls.append('run') or (0, False))
  assert cli.entry() == 0 and calls == ['apply', 'run']


def test_lost_storage_exits_without_joining_writer_threads(monkeypatch):
  # CI once lost a pytest worker here: a flag left set by an earlier in-process storage
  # failure made a later entry() call os._exit. The decision now belongs to one call only.
  exits = []
  monkeypatch.setattr(hostmalloc, 'apply', lambda: 'tuned')
  monkeypatch.setattr(cli.os, '_exit', exits.append)
  monkeypatch.setattr(cli, '_run', lambda argv: (1, True))
  assert cli.entry() == 1 and exits == [1]
  monkeypatch.setattr(cli, '_run', lambda argv: (0, False))
  assert cli.entry() == 0 and exits == [1]


def test_a_bad_setting_is_one_line_and_exit_2(monkeypatch, capsys):
  monkeypatch.setenv('TRAINER_MALLOC', 'fast')
  monkeypatch.setattr(cli, '_run', lambda argv: pytest.fail('the verb ran despite the bad setting'))
  assert cli.entry() == 2
  err = capsys.readouterr().err
  assert err == "error: TRAINER_MALLOC='fast': use default (glibc's own) or tuned, or leave it unset\n"
  with pytest.raises(ValueError, match='TRAINER_MALLOC'):
    hostmalloc.decide({'TRAINER_MALLOC': 'Tuned'})
