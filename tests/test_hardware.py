"""The hardware table, device detection and the dollars, energy and carbon arithmetic."""
import re
import types

import pytest

from trainer import hardware
from trainer.config import ConfigError

from conftest import tiny_config

NAMES = ['tpu-v2', 'tpu-v3', 'tpu-v4', 'tpu-v5e', 'tpu-v5p', 'tpu-v6e', 'a100-40gb', 'a100-80gb',
         'h100', 'h200', 'cpu']


def test_table_has_every_interface_name_with_a_source():
  assert list(hardware.TABLE) == NAMES
  for name, hw in hardware.TABLE.items():
    assert hw.power_w > 0 and hw.price_per_hour > 0 and hw.source, name
    if name != 'cpu':
      assert hw.peak_flops > 1e13 and hw.memory_bytes > 1e10, name
      tags = re.findall(r'\[[a-z0-9-]+\]', hw.source)
      assert tags, name
      for tag in tags:
        assert tag in hardware.__doc__, (name, tag)  # Every cited tag is in the sources list.
  # Per chip, per the vendors: a v3 chip is two devices of 16 GiB; H100 dense bf16 989 TFLOP/s.
  v3 = hardware.get('tpu-v3')
  assert (v3.peak_flops, v3.devices_per_chip, v3.memory_per_device) == (123e12, 2, 16 * 2**30)
  assert hardware.get('h100').peak_flops == 989e12


def test_unknown_hardware_lists_the_known_names():
  with pytest.raises(ConfigError, match='unknown hardware .tpu-v9.; known: tpu-v2, .*h200, cpu'):
    hardware.get('tpu-v9')


@pytest.mark.parametrize('platform,kind,name', [
    ('tpu', 'TPU v3', 'tpu-v3'), ('tpu', 'TPU v4', 'tpu-v4'), ('tpu', 'TPU v5 lite', 'tpu-v5e'),
    ('tpu', 'TPU v5', 'tpu-v5p'), ('tpu', 'TPU v6 lite', 'tpu-v6e'),
    ('gpu', 'NVIDIA A100-SXM4-80GB', 'a100-80gb'), ('gpu', 'NVIDIA A100-SXM4-40GB', 'a100-40gb'),
    ('gpu', 'NVIDIA H100 80GB HBM3', 'h100'), ('gpu', 'NVIDIA H200', 'h200'),
    ('cpu', 'cpu', 'cpu')])
def test_detect(platform, kind, name):
  assert hardware.detect(types.SimpleNamespace(platform=platform, device_kind=kind)) == name


def test_rates_from_table_and_overrides():
  cfg = tiny_config()
  rates = hardware.Rates.from_config(cfg.cost, hardware.get('h100'), chips=8)
  assert rates.dollars(2.0) == pytest.approx(8 * 11.06 * 2)
  assert rates.kwh(10.0) == pytest.approx(700 * 8 * 10 * 1.1 / 1000)
  assert rates.co2e_kg(10.0) == pytest.approx(rates.kwh(10.0) * 0.429)
  cfg.cost.price_per_chip_hour, cfg.cost.power_w, cfg.cost.chips = 3.5, 500.0, 16
  rates = hardware.Rates.from_config(cfg.cost, hardware.get('h100'), chips=8)
  assert (rates.chips, rates.price_per_chip_hour, rates.power_w) == (16, 3.5, 500.0)
  assert rates.dollars(1.0) == 56.0


@pytest.mark.parametrize('key,value,message', [
    ('cost.hardware', 'tpu-v9', "cost.hardware='tpu-v9': choose one of '', tpu-v2, tpu-v3"),
    ('cost.chips', -1, r'--config.cost.chips=-1: must be an integer in \[0, 2\*\*31\)'),
    ('cost.pue', 0.5, r'--config.cost.pue=0.5: must be a number in \[1, inf\)'),
    ('cost.kg_co2e_per_kwh', -0.1, r'kg_co2e_per_kwh=-0.1: must be a number in \[0, inf\)'),
    ('train.target_tokens', -5, '--config.train.target_tokens=-5'),
])
def test_cost_config_is_validated_before_compiling(key, value, message):
  from trainer import config
  cfg = tiny_config(**{key: value})
  with pytest.raises(ConfigError, match=message):
    config.validate(cfg, 8)
