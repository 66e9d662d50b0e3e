"""trainer report: the summary table and PNG plots of a real run's workdir."""

import pytest

from trainer import cli, metrics, report

PNG = b'\x89PNG\r\n\x1a\n'


def test_report_of_a_tiny_run(tiny_workdir, capsys):
  workdir, _ = tiny_workdir
  records = metrics.read_records(str(workdir))
  s = report.summary(records)
  last = records[-1]
  assert s['tokens'] == 4 * 8 * 64 and s['train_loss'] == last['loss']
  assert s['eval_loss'] == last['eval_loss'] and s['dollars'] == last['dollars']
  assert s['mfu'] == pytest.approx(sorted(r['mfu'] for r in records[1:])[1])  # Median of 3.
  assert s['overheads_s']['compile'] == last['time_compile_s']

  assert cli.main(['report', str(workdir)]) == 0
  out = capsys.readouterr().out
  for label in ('tokens      2,048', 'goodput', 'MFU', 'dollars', 'kWh', 'CO2e',
                f"train loss  {last['loss']:.4f}", f"val loss    {last['eval_loss']:.4f}"):
    assert label in out, label
  for name in report.PLOTS:
    data = (workdir / 'plots' / name).read_bytes()
    assert data.startswith(PNG) and len(data) > 10_000, name


def test_report_bad_workdir(tmp_path, capsys):
  assert cli.main(['report', str(tmp_path / 'missing')]) == 2
  assert 'no such directory' in capsys.readouterr().err
  assert cli.main(['report', str(tmp_path)]) == 2
  assert 'has no metrics.jsonl records' in capsys.readouterr().err
