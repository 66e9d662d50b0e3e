"""MODEL_CARD.md and DATA_CARD.md rendered from a real run's workdir."""
import json
import math

from trainer import cards, metrics


def test_cards_from_a_tiny_run(tiny_workdir, tmp_path):
  workdir, cfg = tiny_workdir
  last = metrics.read_records(str(workdir))[-1]
  paths = cards.write(str(tmp_path / 'export'), str(workdir), cfg)
  assert [p.rsplit('/', 1)[1] for p in paths] == ['MODEL_CARD.md', 'DATA_CARD.md']
  card = (tmp_path / 'export' / 'MODEL_CARD.md').read_text()
  for text in ('| parameters | 120,640 |', '| layers | 2 |', '| tokens seen | 2,048 |',
               '| hardware | cpu |', '| chips | 1 |', f"{last['eval_loss']:.4f}",
               f"perplexity {math.exp(last['eval_loss']):,.2f}", '## Intended use',
               '## Limitations', '$3.0/chip-hour, 250.0 W/chip', 'chip-hours', 'CO2e'):
    assert text in card, text
  data = (tmp_path / 'export' / 'DATA_CARD.md').read_text()
  assert 'Python standard library' in data and 'no cleaning statistics' in data


def test_data_card_renders_cleaning_statistics(tiny_workdir, tmp_path):
  workdir, cfg = tiny_workdir
  cfg = cfg.copy_and_resolve_references()
  data_dir = tmp_path / 'data'
  data_dir.mkdir()
  stats = {'documents': {'read': 1000, 'kept': 900}, 'dedup': {'near_duplicates': 42},
           'tokens': {'train': 123456}}
  (data_dir / 'stats.json').write_text(json.dumps(stats))
  cfg.data.path = str(data_dir)
  text = cards.data_card(str(workdir), cfg)
  for row in ('| documents.read | 1000 |', '| documents.kept | 900 |',
              '| dedup.near_duplicates | 42 |', '| tokens.train | 123456 |', str(data_dir)):
    assert row in text, row
