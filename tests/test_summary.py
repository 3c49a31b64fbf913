"""Model report: totals against ../shared/REFERENCE.md, rows, CLI."""

import json
import subprocess
import sys
import time

import jax.numpy as jnp
import pytest

from cnn_jax import models, summary

IMAGENET = (1, 224, 224, 3)


def report(name, shape=IMAGENET, classes=1000, **fields):
  return summary.summarize(models.create_model(name, classes, **fields), shape)


# name, fields, GMACs at 224x224 (REFERENCE.md).
MACS = [
  ('vgg11', {}, 7.609),
  ('vgg13', {}, 11.308),
  ('vgg16', {}, 15.470),
  ('vgg19', {}, 19.632),
  ('resnet18', {}, 1.814),
  ('resnet34', {}, 3.664),
  ('resnet50', {'version': 'v1.5'}, 4.089),
  ('resnet50', {'version': 'v1'}, 3.858),
  ('resnet101', {'version': 'v1.5'}, 7.801),
  ('resnet101', {'version': 'v1'}, 7.570),
  ('resnet152', {'version': 'v1.5'}, 11.514),
  ('resnet152', {'version': 'v1'}, 11.282),
  ('googlenet_tv', {'aux_heads': False}, 1.498),
]


@pytest.mark.parametrize('name,fields,gmacs', MACS)
def test_macs_match_reference(name, fields, gmacs):
  assert report(name, **fields).macs / 1e9 == pytest.approx(gmacs, rel=0.01)


def test_v1_and_v1_5_differ_only_in_compute():
  v1, v15 = report('resnet50', version='v1'), report('resnet50')
  assert v1.params == v15.params == 25_557_032
  assert v1.macs < v15.macs


def test_vgg16_activations_and_where_they_sit():
  r = report('vgg16')
  assert r.activations == 15_237_608
  assert r.activation_bytes == 4 * 15_237_608
  blocks = r.by_block('activations')
  assert (blocks['block1'] + blocks['block2']) / r.activations > 0.7
  top = max(r.rows, key=lambda row: row.params)
  assert (top.name, top.params) == ('head/fc1', 25_088 * 4_096 + 4_096)
  assert top.params / r.params > 0.7
  text = r.to_text()
  assert 'block1 47.4%' in text and 'block2 23.7%' in text
  assert 'largest layer by parameters: head/fc1' in text


def test_vgg16_rows_and_receptive_fields():
  rows = {row.name: row for row in report('vgg16').rows}
  assert rows['input'].activations == 224 * 224 * 3
  assert rows['block1/conv1'].shape == (1, 224, 224, 64)
  assert rows['block1/conv1'].receptive_field == 3
  assert rows['block5/conv3'].receptive_field == 196
  assert rows['block5/pool'].shape == (1, 7, 7, 512)
  assert rows['block5/pool'].receptive_field == 212
  assert rows['head/fc1'].receptive_field is None  # global


def test_single_large_kernel_has_the_stacks_receptive_field():
  stacked = {r.name: r for r in report('vgg16', (1, 32, 32, 3), 10).rows}
  single = report('vgg16', (1, 32, 32, 3), 10, stacked_3x3=False)
  single = {r.name: r for r in single.rows}
  for block, last in (('block1', 'conv2'), ('block3', 'conv3')):
    rf = stacked[f'{block}/{last}'].receptive_field
    assert single[f'{block}/conv1'].receptive_field == rf
  # Three 3x3 convs of C channels: 27C^2 weights, one 7x7: 49C^2.
  c = 256
  assert stacked['block3/conv2'].params == 9 * c * c + c
  assert single['block4/conv1'].params == 49 * c * 2 * c + 2 * c


def test_googlenet_aux_heads_are_unused_rows():
  r = report('googlenet_tv')
  assert r.params == 13_004_888  # The sum of all rows, aux heads included.
  unused = sum(row.params for row in r.rows if row.kind == 'unused')
  assert unused == 13_004_888 - 6_624_904
  assert r.macs == report('googlenet_tv', aux_heads=False).macs


def test_reductions_cut_compute():
  with_1x1 = report('googlenet_tv', aux_heads=False)
  without = report('googlenet_tv', aux_heads=False, reductions=False)
  assert without.macs > 1.5 * with_1x1.macs


def test_cifar_resnet_rows():
  r = report('resnet20', (1, 32, 32, 3), 10)
  assert r.params == 269_722
  rows = {row.name: row for row in r.rows}
  assert rows['bn1'].kind == 'norm' and rows['bn1'].params == 32
  assert rows['layer3/block2/conv2'].shape == (1, 8, 8, 64)
  assert rows['head/gap'].shape == (1, 64)
  # Each 3x3 conv adds 2 * (product of earlier strides) pixels.
  assert rows['layer1/block2/conv2'].receptive_field == 3 + 6 * 2
  assert rows['layer2/block2/conv2'].receptive_field == 15 + 2 + 5 * 4
  assert rows['layer3/block2/conv2'].receptive_field == 37 + 4 + 5 * 8


def test_bfloat16_bytes():
  model = models.create_model('resnet20', 10)
  r = summary.summarize(model, (2, 32, 32, 3), jnp.bfloat16)
  assert r.dtype == 'bfloat16'
  assert r.activation_bytes == 2 * r.activations
  assert r.rows[0].activations == 2 * 32 * 32 * 3


def test_cli_json(capsys):
  summary.main(
    ['--model=resnet20', '--image_size=32', '--num_classes=10', '--json']
  )
  out = json.loads(capsys.readouterr().out)
  assert out['params'] == 269_722
  assert out['activations'] == sum(row['activations'] for row in out['rows'])
  assert out['macs'] == sum(row['macs'] for row in out['rows'])


def test_cli_table_and_fields(capsys):
  summary.main(['--model=resnet50', '--field=version=v1', '--num_classes=10'])
  text = capsys.readouterr().out
  assert text.startswith('resnet50: input (1, 224, 224, 3)')
  row = next(
    x for x in text.splitlines() if x.startswith('layer2/block0/conv1 ')
  )
  assert row.split()[1:3] == ['conv', '28x28x128']


def test_resnet152_cli_is_fast():
  # The bar: ResNet-152 in well under 20 s, from shapes alone.
  start = time.monotonic()
  out = subprocess.run(
    [sys.executable, '-m', 'cnn_jax.summary', '--model=resnet152',
     '--image_size=224', '--json'],
    capture_output=True, text=True, check=True, timeout=60,
  ).stdout  # fmt: skip
  assert '"params": 60192808' in out
  assert time.monotonic() - start < 20
